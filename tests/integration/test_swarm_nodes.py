"""The multi-node test harness itself (tests/integration/swarm_nodes.py), on a real swarm of
two real engines on this machine: what a platform engineer sees with `docker node ls`,
what a node's pull from the platform registry needs (the platform CA, the pull account, and
no insecure-registries), and placement by node labels and by GPUs as generic resources.

The GPU is SIMULATED: the `gpu` node advertises NVIDIA-GPU=GPU-sim-0 through its
daemon.json's node-generic-resources; no device is handed to any container here.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import time

import docker
import pytest
from docker.types import EndpointSpec, Resources, ServiceMode

from hubstack import swarm_stack
from hubstack.cli import main
from hubstack.config import parse_config
from hubstack.hub.container_spec import USER_LABEL
from hubstack.nodes import format_nodes, node_rows
from tests.conftest import SESSION_ID
from tests.integration.swarm_nodes import GPU_RESOURCE, LABEL_GPU, LABEL_SPARK

pytestmark = pytest.mark.integration


def test_two_nodes_form_one_swarm_with_their_labels_and_the_gpu_resource(swarm):
    nodes = {n.attrs["Description"]["Hostname"]: n.attrs for n in swarm.manager.client.nodes.list()}
    assert sorted(nodes) == ["gpu", "spark"]
    assert all(n["Status"]["State"] == "ready" for n in nodes.values())
    assert nodes["gpu"]["Spec"]["Role"] == "manager"
    assert nodes["gpu"]["ManagerStatus"]["Leader"] is True
    assert nodes["spark"]["Spec"]["Role"] == "worker"
    assert nodes["gpu"]["Spec"]["Labels"] == {LABEL_GPU: "true"}
    assert nodes["spark"]["Spec"]["Labels"] == {LABEL_SPARK: "true"}
    # Each node is reached at its own address, not the host's.
    assert nodes["gpu"]["Status"]["Addr"] == swarm.node("gpu").address
    assert nodes["spark"]["Status"]["Addr"] == swarm.node("spark").address
    gpus = nodes["gpu"]["Description"]["Resources"].get("GenericResources") or []
    assert gpus == [{"NamedResourceSpec": {"Kind": GPU_RESOURCE, "Value": "GPU-sim-0"}}]
    assert not nodes["spark"]["Description"]["Resources"].get("GenericResources")
    # The host engine is no part of it.
    assert swarm.manager.client.info()["Swarm"]["Nodes"] == 2


def test_a_node_pulls_from_the_registry_over_tls_with_the_pull_account(swarm, swarm_registry):
    spark = swarm.node("spark").client
    address = swarm_registry.pull_address
    # Trusted through certs.d only: the registry is not an insecure registry for the node.
    registry_config = spark.info()["RegistryConfig"]
    assert registry_config["IndexConfigs"].get(address, {}).get("Secure", True) is True
    assert registry_config["InsecureRegistryCIDRs"] == ["127.0.0.0/8"]

    with pytest.raises(docker.errors.APIError, match="no basic auth credentials"):
        spark.images.pull(swarm_registry.image)

    image = spark.images.pull(swarm_registry.image, auth_config=swarm_registry.pull_auth)
    assert image.labels["io.hubstack.test"] == "swarm-tiny"


def test_a_node_without_the_platform_ca_refuses_the_registry(swarm, swarm_registry):
    node = swarm.node("spark")
    certs = node.etc_docker / "certs.d" / swarm_registry.pull_address
    aside = certs.with_name(certs.name + ".aside")
    shutil.move(certs, aside)
    try:
        with pytest.raises(docker.errors.APIError, match="certificate signed by unknown authority"):
            node.client.images.pull(swarm_registry.image, auth_config=swarm_registry.pull_auth)
    finally:
        shutil.move(aside, certs)


def _wait_task(client, service, timeout: float = 90) -> dict:
    """The service's task once it runs, or once the scheduler says why it cannot."""
    deadline = time.monotonic() + timeout
    while True:
        tasks = service.tasks()
        for task in tasks:
            state, err = task["Status"]["State"], task["Status"].get("Err", "")
            if state == "running" or (state == "pending" and err):
                return task
            if state in ("failed", "rejected"):
                raise AssertionError(f"{service.name}: task {state}: {task['Status']}")
        if time.monotonic() > deadline:
            raise AssertionError(f"{service.name}: no running task in {timeout}s: {tasks}")
        time.sleep(0.5)


def test_placement_by_node_label_and_by_a_free_gpu(swarm, swarm_registry):
    manager = swarm.manager.client
    # What `docker service create --with-registry-auth` does: the manager passes the
    # pull account to whichever node the task lands on.
    manager.login(
        username=swarm_registry.pull_auth["username"],
        password=swarm_registry.pull_auth["password"],
        registry=swarm_registry.pull_address,
    )
    hostname = {n.node_id: n.name for n in swarm.nodes}
    created = []

    def service(name, analyst, **kw):
        svc = manager.services.create(
            swarm_registry.image,
            command=["sleep", "infinity"],
            init=True,  # sleep as PID 1 ignores SIGTERM: each stop would wait 10 s
            name=f"hubtest-{SESSION_ID}-{name}",
            mode=ServiceMode("replicated", 1),
            endpoint_spec=EndpointSpec(mode="dnsrr"),
            container_labels={USER_LABEL: analyst},
            **kw,
        )
        created.append(svc)
        return svc

    try:
        gpu_reservation = Resources(generic_resources={GPU_RESOURCE: 1})
        spark_task = _wait_task(
            manager, service("spark", "bob", constraints=[f"node.labels.{LABEL_SPARK}==true"])
        )
        first = _wait_task(manager, service("gpu-1", "alice", resources=gpu_reservation))
        second = _wait_task(manager, service("gpu-2", "carol", resources=gpu_reservation))

        assert spark_task["Status"]["State"] == "running"
        assert hostname[spark_task["NodeID"]] == "spark"
        # The GPU task runs on the GPU node, and is told which GPU Swarm gave it.
        assert first["Status"]["State"] == "running"
        assert hostname[first["NodeID"]] == "gpu"
        container = swarm.node("gpu").client.containers.get(
            first["Status"]["ContainerStatus"]["ContainerID"]
        )
        assert f"DOCKER_RESOURCE_{GPU_RESOURCE}=GPU-sim-0" in container.attrs["Config"]["Env"]
        # The node's engine adds no-new-privileges to every container (its daemon.json):
        # a service cannot ask for it itself.
        status = container.exec_run(["cat", "/proc/self/status"]).output.decode()
        assert "NoNewPrivs:\t1" in status
        # One GPU, two asks: the second waits, and the scheduler says why.
        assert second["Status"]["State"] == "pending"
        assert "insufficient resources" in second["Status"]["Err"]

        # `hubstack nodes` shows who runs where, the waiting one nowhere. GPUs used are what
        # the hub hands out (its GPU servers' labels: hubstack.hub.swarm_gpu), not Swarm's
        # reservations, which the platform no longer makes: none here (test_swarm_spawner.py
        # checks a GPU the hub handed out).
        rows = {r.name: r for r in node_rows(parse_config({}), manager)}
        assert (rows["gpu"].gpus_total, rows["gpu"].gpus_used) == (1, 0)
        assert rows["gpu"].analysts == ["alice"] and rows["spark"].analysts == ["bob"]
        table = format_nodes(list(rows.values()))
        assert table[0].split() == [
            *("NODE", "ROLE", "STATE", "AVAILABILITY", "ADDRESS", "GPUS", "LABELS", "ANALYSTS")
        ]
        gpu_line = next(line for line in table if line.startswith("gpu "))
        assert "1 free of 1" in gpu_line and "hubstack.gpu=true" in gpu_line
    finally:
        for svc in created:
            svc.remove()


def test_hubstack_nodes_labels_a_node_and_lists_it(swarm, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", swarm.manager.socket)
    assert main(["nodes", "label", "spark", "site.room=lab2"]) == 0
    assert "spark: labels hubstack.spark=true, site.room=lab2" in capsys.readouterr().out
    try:
        assert main(["nodes"]) == 0
        out = capsys.readouterr().out
        spark_line = next(line for line in out.splitlines() if line.startswith("spark "))
        assert "worker" in spark_line and swarm.node("spark").address in spark_line
        assert "hubstack.spark=true,site.room=lab2" in spark_line
        # Mistakes are named, and change nothing.
        assert main(["nodes", "label", "nosuch", "a=b"]) == 2
        assert "no node 'nosuch' in this swarm (nodes: gpu, spark)" in capsys.readouterr().err
        assert main(["nodes", "label", "spark", "Bad Key=1"]) == 2
        assert "node label 'Bad Key'" in capsys.readouterr().err
    finally:
        assert main(["nodes", "label", "spark", "--remove", "site.room"]) == 0
    labels = swarm.manager.client.nodes.get(swarm.node("spark").node_id).attrs["Spec"]["Labels"]
    assert labels == {LABEL_SPARK: "true"}


def test_join_command_joins_a_new_node_that_then_pulls_with_the_platform_ca(
    swarm, swarm_registry, monkeypatch, capsys
):
    monkeypatch.setenv("DOCKER_HOST", swarm.manager.socket)
    assert main(["-c", str(swarm_registry.cfg.path), "nodes", "join-command"]) == 0
    script = capsys.readouterr().out
    with swarm.extra_node("late") as node:
        # Run as root on the new node: in its mount namespace (its own /etc/docker), with
        # the docker CLI talking to its engine.
        ran = subprocess.run(
            ["nsenter", "-t", str(node.process.pid), "-m", "-n", "-u", "sh", "-s"],
            input=script,
            env={**os.environ, "DOCKER_HOST": node.socket},
            capture_output=True,
            text=True,
        )
        assert ran.returncode == 0, ran.stdout + ran.stderr
        assert "This node joined a swarm as a worker" in ran.stdout
        assert node.client.info()["Swarm"]["LocalNodeState"] == "active"
        ca = node.etc_docker / "certs.d" / swarm_registry.pull_address / "ca.crt"
        assert ca.read_text() == swarm_registry.ca_file.read_text()
        image = node.client.images.pull(swarm_registry.image, auth_config=swarm_registry.pull_auth)
        assert image.labels["io.hubstack.test"] == "swarm-tiny"
    names = [n.attrs["Description"]["Hostname"] for n in swarm.manager.client.nodes.list()]
    assert sorted(names) == ["gpu", "spark"]  # gone again, for the tests after this one


def _reaches(container, host: str, wait: float = 0) -> bool:
    """Whether CONTAINER gets an answer from HOST, trying for WAIT seconds (a new attachment
    takes about a second to carry): a refused TCP connection is one; a timeout (1 s: the
    nodes share one machine) is none. bash's /dev/tcp: the tiny image has neither nc nor
    python."""
    probe = f'timeout 1 bash -c "echo > /dev/tcp/{host}/9" 2>&1'
    deadline = time.monotonic() + wait
    while True:
        out = container.exec_run(["bash", "-c", probe]).output.decode()
        if "Connection refused" in out:
            return True
        if time.monotonic() > deadline:
            return False
        time.sleep(0.3)


def test_a_plain_container_joins_an_analysts_overlay_a_task_cannot(swarm, swarm_registry):
    """docs/multi-node.md, "One network per analyst": the hub must be a plain container to
    join each analyst's attachable overlay at start (a task container cannot:
    moby/moby#39391), and then two analysts' servers stay apart."""
    manager, spark = swarm.manager.client, swarm.node("spark").client
    manager.login(
        username=swarm_registry.pull_auth["username"],
        password=swarm_registry.pull_auth["password"],
        registry=swarm_registry.pull_address,
    )
    prefix = f"hubtest-{SESSION_ID}-net"
    networks, services, containers = [], [], []

    def server(name, constraint):
        net = manager.networks.create(f"{prefix}-{name}", driver="overlay", attachable=True)
        networks.append(net)
        services.append(
            manager.services.create(
                swarm_registry.image,
                command=["sleep", "infinity"],
                init=True,
                name=f"{prefix}-srv-{name}",
                mode=ServiceMode("replicated", 1),
                endpoint_spec=EndpointSpec(mode="dnsrr"),
                networks=[net.name],
                constraints=[constraint],
            )
        )
        return net

    def running(svc, node):
        task = _wait_task(manager, svc)
        address = manager.api.inspect_task(task["ID"])["NetworksAttachments"][0]["Addresses"][0]
        container = node.containers.get(task["Status"]["ContainerStatus"]["ContainerID"])
        return container, address.split("/")[0]

    try:
        on_spark = f"node.labels.{LABEL_SPARK}==true"
        net_a, net_b = server("a", on_spark), server("b", on_spark)
        server("hub", "node.role==manager")  # the hub as the stack runs it now
        (task_a, address_a), (task_b, address_b), (hub_task, _) = (
            running(svc, node) for svc, node in zip(services, (spark, spark, manager), strict=True)
        )
        with pytest.raises(docker.errors.APIError, match=f"network {net_a.id} not found"):
            net_a.connect(hub_task.id)

        manager.images.pull(swarm_registry.image, auth_config=swarm_registry.pull_auth)
        hub = manager.containers.run(
            swarm_registry.image,
            ["sleep", "infinity"],
            init=True,
            detach=True,
            name=f"{prefix}-plainhub",
        )
        containers.append(hub)
        net_a.connect(hub, aliases=["hub"])
        assert _reaches(hub, f"{prefix}-srv-a", wait=10)  # by the service's name, on the worker
        assert _reaches(task_a, "hub", wait=10)
        assert not _reaches(task_a, address_b)
        net_b.connect(hub, aliases=["hub"])
        assert _reaches(hub, address_b, wait=10)
        assert not _reaches(task_a, address_b)  # not through the hub either
        assert not _reaches(task_b, address_a)
        net_a.disconnect(hub)
        assert not _reaches(hub, address_a)
    finally:
        for container in containers:
            container.remove(force=True)
        for svc in services:
            svc.remove()
        for net in networks:  # once the removed services' tasks have left it
            swarm_stack.remove_network(manager.api, net.id)

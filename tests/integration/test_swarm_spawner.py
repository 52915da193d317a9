"""The Swarm spawner (hubstack.hub.swarm_spawner) on the real two-node swarm of
tests/integration/swarm_nodes.py: where analysts' servers land, the refusal when no GPU is
free, a drained node, the analyst's home (a local volume, pinning them to its node, or a
shared one that follows them), and a Spark profile's cluster as services.

How it is driven: the spawner class's own start/poll/stop, called as JupyterHub calls them,
against the manager's engine, with the analyst's identity as a login's auth state would
give it. JupyterHub itself is not in this module (test_swarm_stack.py runs one, with
`hubstack up`, and a real server on the worker behind it), but the hub's container is, as
in production: a plain container on the manager (the tiny image, `sleep infinity`), which
the spawner connects to each analyst's network as `hub` and disconnects at the stop. The
route the spawner waits for is probed from inside that container (the test process is not
on the overlays). The server is the
harness's tiny image (the platform's base root plus a label, pushed to the harness's TLS
registry) running `sleep infinity`, not the notebook image: what is checked is where the
task runs, as whom, and what the analyst is told; not a notebook answering.

The GPU is SIMULATED: the `gpu` node advertises one NVIDIA-GPU generic resource
(GPU-sim-0) in its daemon.json; the hub hands it out (hubstack.hub.swarm_gpu) and names it
in NVIDIA_VISIBLE_DEVICES; no device is handed to any container here (that needs the
NVIDIA container runtime on a real GPU node).

NFS is not here either: this kernel has no NFS client. The shared-home test binds a folder
every node sees at the same path instead (see its docstring for what that does and does
not check).
"""

from __future__ import annotations

import ast
import asyncio
import contextlib
import io
import os
import shutil
import ssl
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path
from types import SimpleNamespace

import docker
import pytest
from tornado import web

from hubstack.cli import main
from hubstack.config import parse_config
from hubstack.hub import swarm_gpu
from hubstack.hub.container_spec import USER_LABEL, image_account_files
from hubstack.hub.swarm_gpu import LABEL_GPU_NODE, LABEL_GPUS
from hubstack.hub.swarm_spawner import HubstackSwarmSpawner
from hubstack.images import user as user_images
from hubstack.images.build import push_image
from hubstack.nodes import node_rows
from hubstack.registry import USERS, RegistryClient, registry_certificate, registry_container_spec
from hubstack.spark import EXECUTOR_IMAGE
from hubstack.spark_cluster import CLUSTER_LABEL
from tests.conftest import SESSION_ID, TEST_TAG, free_port
from tests.integration.swarm_nodes import TINY_IMAGE

pytestmark = pytest.mark.integration

IDENTS = {
    "alice": {"uid": 23401, "gid": 23401, "groups": [23401], "home": "/home/alice"},
    "bob": {"uid": 23402, "gid": 23402, "groups": [23402], "home": "/home/bob"},
    "carol": {"uid": 23403, "gid": 23403, "groups": [23403], "home": "/home/carol"},
    "dave": {"uid": 23404, "gid": 23404, "groups": [23404], "home": "/home/dave"},
    "erin": {"uid": 23405, "gid": 23405, "groups": [23405], "home": "/home/erin"},
    "frank": {"uid": 23406, "gid": 23406, "groups": [23406], "home": "/home/frank"},
}


@pytest.fixture(scope="module")
def hub_cfg(swarm_registry):
    """The platform config as the hub sees it (hubstack.stack.hub_config): the registry is
    the read-only TLS instance, its one account the pull account; two profiles on the tiny
    image: default and GPU."""
    cfg = swarm_registry.cfg
    data = cfg.model_dump(mode="json", exclude={"path"})
    data["registry"]["address"] = cfg.registry.pull_address
    data["registry"]["credentials_file"] = str(cfg.registry_pull_credentials_file)
    data["hub"]["notebook_image_tag"] = cfg.images.tag
    data["cluster"]["mode"] = "swarm"
    data["profiles"] = [
        {"name": "default", "display_name": "Default", "image": TINY_IMAGE},
        {"name": "gpu", "display_name": "GPU", "image": TINY_IMAGE, "gpus": 1},
        # The server runs the executor image too (built FROM notebook, so it holds the
        # notebook's pyspark): one 2.3 GB image on the Spark node, not two.
        {"name": "spark", "display_name": "Spark", "image": EXECUTOR_IMAGE, "spark": True},
    ]
    # One worker: each is a JVM more to start (and its executor another) on CI's 2 cores;
    # more workers are more services of the same spec (tests/unit/test_swarm_spark.py).
    data["spark"] = {"workers": 1}
    return parse_config(data)


@pytest.fixture(scope="module")
def spark_executor(swarm, swarm_registry, hierarchy, registry, docker_client):
    """The session's spark-executor image in the harness's TLS registry: its layers copied
    from the session registry as stored (no gzip), then the host engine's push of what is
    left (config and manifest). Its accounts are read once on the host engine, where the
    image is, as the hub reads them on its own node. The tag and the nodes' copies go after."""
    cfg = swarm_registry.cfg
    started = time.monotonic()
    layers, size = RegistryClient(cfg).copy_layers(
        registry, EXECUTOR_IMAGE, TEST_TAG, EXECUTOR_IMAGE
    )
    repo = cfg.image_repository(EXECUTOR_IMAGE)
    image = docker_client.images.get(hierarchy[EXECUTOR_IMAGE]["image_id"])
    image.tag(repo, cfg.images.tag)
    pulled = f"{cfg.pull_repository(EXECUTOR_IMAGE)}@"
    try:
        digest = push_image(cfg, docker_client, EXECUTOR_IMAGE, progress=lambda _: None)
        print(
            f"[swarm spark] {layers} layers ({size / 1e9:.2f} GB) copied, pushed in "
            f"{time.monotonic() - started:.1f}s"
        )
        pulled += digest
        # Pulled by the Spark node here, where its time shows on its own: a start would
        # wait for it (a notebook node's first pull of a version, not what is tested).
        started = time.monotonic()
        swarm.node("spark").client.images.pull(pulled, auth_config=swarm_registry.pull_auth)
        size = swarm.node("spark").client.images.get(pulled).attrs["Size"]
        print(
            f"[swarm spark] pulled by the spark node in {time.monotonic() - started:.1f}s "
            f"({size / 1e9:.2f} GB on its disk until the module ends)"
        )
        seen = docker_client.containers.create(image.id, command=["true"])
        try:
            image_account_files(docker_client.api, seen.id, pulled)
        finally:
            seen.remove(force=True)
        yield pulled
    finally:
        started = time.monotonic()
        # The tag only: the image is the session's.
        docker_client.images.remove(f"{repo}:{cfg.images.tag}")
        for node in swarm.nodes:
            # This module's services are gone, but their containers stay on the node a while
            # (about 25 s), and an image a container holds is only untagged.
            for c in node.client.containers.list(all=True, filters={"ancestor": pulled}):
                with contextlib.suppress(docker.errors.APIError):
                    c.remove(force=True)
            with contextlib.suppress(docker.errors.ImageNotFound):
                node.client.images.remove(pulled, force=True)
                node.client.images.get(pulled)
                print(f"[swarm spark] the image is still on {node.name}: its containers held it")
        print(f"[swarm spark] image removed from the nodes in {time.monotonic() - started:.1f}s")


def _remove_volumes(swarm, keep=lambda volume: False, timeout: float = 60, **filters) -> None:
    """Remove the volumes FILTERS select on every node (but those KEEP says), once the nodes
    have removed the containers that held them (a stopped service's go a moment later)."""
    deadline = time.monotonic() + timeout
    for node in swarm.nodes:
        for volume in node.client.volumes.list(filters=filters):
            while not keep(volume):
                try:
                    volume.remove()
                    break
                except docker.errors.APIError:
                    if time.monotonic() > deadline:
                        held = [c.name for c in node.client.containers.list(all=True)]
                        raise AssertionError(
                            f"{volume.name} in use on {node.name}: {held}"
                        ) from None
                    time.sleep(0.5)


@pytest.fixture(scope="module", autouse=True)
def home_volumes(swarm):
    """The analysts' home volumes this module's servers made: a stop keeps them, so they are
    removed here, once, after the nodes have removed the containers that held them."""
    yield
    _remove_volumes(swarm, label=USER_LABEL)


@pytest.fixture(scope="module")
def hub_container(swarm, swarm_registry):
    """The hub's container as `hubstack up` runs it: a plain container on the manager (here
    the tiny image, `sleep infinity`), on no analyst's network until a start connects it.
    Removed afterwards."""
    manager = swarm.manager.client
    manager.images.pull(swarm_registry.image, auth_config=swarm_registry.pull_auth)
    container = manager.containers.run(
        swarm_registry.image,
        ["sleep", "infinity"],
        name=f"hubtest-swarm-spawner-hub-{SESSION_ID}",
        detach=True,
        init=True,
    )
    try:
        yield container
    finally:
        container.remove(force=True)


def _route_from(container):
    """HubstackSwarmSpawner._routed, run in the hub's container: a connection, or a
    refusal (the server is `sleep infinity`: nothing listens), means a route."""

    def routed(self) -> bool:
        probe = f"exec 3<>/dev/tcp/{self.service_name}/{self.port}"
        result = container.exec_run(["timeout", "3", "bash", "-c", probe])
        return result.exit_code == 0 or b"Connection refused" in result.output

    return routed


@pytest.fixture
def spawners(swarm, hub_cfg, hub_container, monkeypatch):
    """spawn(name, profile) -> a started analyst's spawner, with the hub's container; all
    are stopped afterwards, and nothing of theirs (services, configs, networks) is left on
    the swarm, nor the hub on any analyst's network."""
    api = docker.APIClient(base_url=swarm.manager.socket, version="auto", timeout=120)
    monkeypatch.setattr(HubstackSwarmSpawner, "_client", api)
    monkeypatch.setattr(HubstackSwarmSpawner, "_routed", _route_from(hub_container))
    made: list[HubstackSwarmSpawner] = []

    def make(name: str, profile: str, cfg=None) -> HubstackSwarmSpawner:
        async def auth_state():
            return IDENTS[name]

        s = HubstackSwarmSpawner(
            platform=cfg or hub_cfg, cmd=["sleep", "infinity"], hub_container=hub_container.name
        )
        s.user = SimpleNamespace(
            name=name, url=f"/user/{name}/", groups=[], get_auth_state=auth_state, id=1
        )
        s.hub = SimpleNamespace(
            api_url="http://hub:8081/hub/api",
            base_url="/hub/",
            url="http://hub:8081/hub/",
            public_host="",
        )
        s.user_options = {"profile": profile}
        made.append(s)
        return s

    yield make
    for s in made:
        _run(s.stop())
    prefix = f"{hub_cfg.hub.network}-nb-"
    deadline = time.monotonic() + 30
    while True:
        left = [x["Spec"]["Name"] for x in api.services() if x["Spec"]["Name"].startswith(prefix)]
        left += [c["Spec"]["Name"] for c in api.configs() if c["Spec"]["Name"].startswith(prefix)]
        users = f"{hub_cfg.hub.network}-user-"
        left += [n["Name"] for n in api.networks() if n["Name"].startswith(users)]
        hub_container.reload()
        left += [n for n in hub_container.attrs["NetworkSettings"]["Networks"] if n != "bridge"]
        if not left or time.monotonic() > deadline:
            break
        time.sleep(0.5)
    api.close()
    assert not left, f"left on the swarm: {left}"


def _run(coro):
    return asyncio.run(coro)


def _container(swarm, spawner) -> docker.models.containers.Container:
    node = swarm.node(spawner.node_name).client
    service = f"com.docker.swarm.service.name={spawner.service_name}"
    (found,) = node.containers.list(filters={"label": service})
    return found


def _write_notes(container, text: str) -> list[str]:
    """Write TEXT to ~/notes.txt in the server; the owner, mode and path of the home and
    the file, as `stat` shows them."""
    write = f"echo {text} > ~/notes.txt && stat -c '%u:%g %a %n' ~ ~/notes.txt"
    result = container.exec_run(["sh", "-c", write])
    assert result.exit_code == 0, result.output
    return result.output.decode().split("\n")[:2]


def _task(api: docker.APIClient, service: str) -> tuple[str, str]:
    """(ID, state) of SERVICE's one task."""
    (task,) = api.tasks(filters={"service": service})
    return task["ID"], task["Status"]["State"]


def _attached(api: docker.APIClient, service: str) -> list[str]:
    (task,) = api.tasks(filters={"service": service})
    return [a["Network"]["Spec"]["Name"] for a in task.get("NetworksAttachments") or []]


def _still_running(api: docker.APIClient, service: str, task_id: str, seconds: float) -> None:
    """SERVICE's one task is TASK_ID and running for SECONDS (Swarm's constraint enforcer
    rejects at once: 'assigned node no longer meets constraints')."""
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        assert _task(api, service) == (task_id, "running"), api.tasks(filters={"service": service})
        time.sleep(0.25)


def test_a_gpu_analyst_lands_on_the_gpu_node_a_default_one_does_not(
    swarm, spawners, hub_container, monkeypatch, capsys
):
    """The hub hands the GPU out: alice's GPU server is pinned to the GPU node, on her own
    network with the hub, told its GPU in NVIDIA_VISIBLE_DEVICES, and reserves no Swarm
    generic resource, so what made Swarm reject GPU tasks (swarmkit's constraint enforcer
    at any update of their node: a label change, another analyst's network reaching the
    node) leaves it running."""
    alice, bob = spawners("alice", "gpu"), spawners("bob", "default")
    started = time.monotonic()
    assert _run(alice.start()) == (alice.service_name, 8888)
    print(f"[swarm spawner] a GPU start in {time.monotonic() - started:.1f}s")
    assert alice.node_name == "gpu"
    assert _run(alice.poll()) is None
    assert alice.get_state()["swarm_node"] == "gpu"

    # The service: pinned to the GPU node, labelled with its GPU, no generic resource.
    api = alice.client
    gpu_node = swarm.node("gpu")
    spec = api.inspect_service(alice.service_name)["Spec"]
    assert f"node.id=={gpu_node.node_id}" in spec["TaskTemplate"]["Placement"]["Constraints"]
    assert "node.labels.hubstack.gpu==true" in spec["TaskTemplate"]["Placement"]["Constraints"]
    assert spec["Labels"][LABEL_GPUS] == "GPU-sim-0"
    assert spec["Labels"][LABEL_GPU_NODE] == gpu_node.node_id
    reservations = spec["TaskTemplate"]["Resources"].get("Reservations") or {}
    assert not reservations.get("GenericResources")
    # On her own network, with the hub's container (as `hub`), and no one else's.
    assert _attached(api, alice.service_name) == [alice.user_network]
    hub_container.reload()
    hub_nets = hub_container.attrs["NetworkSettings"]["Networks"]
    assert "hub" in (hub_nets[alice.user_network].get("Aliases") or [])

    # On the node: the analyst's UID:GID and name (the passwd config), no capabilities,
    # no-new-privileges (the node's daemon.json), and the GPU the hub handed out.
    c = _container(swarm, alice)
    assert c.exec_run(["id", "-un"]).output.decode().strip() == "alice"
    assert c.exec_run(["id", "-u"]).output.decode().strip() == "23401"
    assert c.exec_run(["sh", "-c", "echo ~"]).output.decode().strip() == "/home/alice"
    status = c.exec_run(["cat", "/proc/1/status"]).output.decode()
    assert "CapEff:\t0000000000000000" in status and "NoNewPrivs:\t1" in status
    env = c.attrs["Config"]["Env"]
    assert "NVIDIA_VISIBLE_DEVICES=GPU-sim-0" in env and "CUDA_VISIBLE_DEVICES=0" in env
    assert not any(e.startswith("DOCKER_RESOURCE_") for e in env)  # nothing from Swarm
    assert not any("docker.sock" in m["Source"] for m in c.attrs["Mounts"])

    # What made Swarm reject a GPU task: an update of its node. A label change...
    task_id, _ = _task(api, alice.service_name)
    monkeypatch.setenv("DOCKER_HOST", swarm.manager.socket)
    assert main(["nodes", "label", "gpu", "site.room=lab1"]) == 0
    try:
        _still_running(api, alice.service_name, task_id, 3)
    finally:
        assert main(["nodes", "label", "gpu", "--remove", "site.room"]) == 0
    capsys.readouterr()
    # ... and another analyst's network reaching the GPU node (the hub's container, on the
    # manager, joins bob's network at his start).
    assert _run(bob.start()) == (bob.service_name, 8888)
    assert bob.node_name == "spark"  # the default profile keeps off GPU nodes
    assert _attached(api, bob.service_name) == [bob.user_network]
    _still_running(api, alice.service_name, task_id, 3)
    assert _run(alice.poll()) is None and _run(bob.poll()) is None
    bob_env = _container(swarm, bob).attrs["Config"]["Env"]
    assert not any(e.startswith(("NVIDIA_", "DOCKER_RESOURCE_")) for e in bob_env)

    # `hubstack nodes` shows who runs where, and alice's GPU taken (from the labels).
    rows = {r.name: r for r in node_rows(alice.cfg, swarm.manager.client)}
    assert rows["gpu"].analysts == ["alice"] and rows["spark"].analysts == ["bob"]
    assert (rows["gpu"].gpus_total, rows["gpu"].gpus_used) == (1, 1)
    # `hubstack gpus` says which GPU, held by whom.
    gpus = swarm_gpu.format_gpu_status(alice.cfg, api)
    assert gpus[0] == "GPUs: 1 on 1 node(s) of the swarm, 1 busy", gpus
    assert f"    GPU GPU-sim-0: alice ({alice.service_name}, running)" in gpus, gpus

    # Stopped: the service and its configs are gone, and poll says so.
    _run(bob.stop())
    assert _run(bob.poll()) == 0


def test_two_gpu_spawns_for_one_gpu_give_one_server_and_one_clear_refusal(swarm, spawners):
    alice, carol = spawners("alice", "gpu"), spawners("carol", "gpu")
    _run(alice.start())
    assert alice.node_name == "gpu"
    started = time.monotonic()
    with pytest.raises(web.HTTPError) as refused:
        _run(carol.start())
    took = time.monotonic() - started
    assert refused.value.status_code == 409
    assert refused.value.log_message == (
        "the profile 'GPU' (gpu) needs 1 GPU, and every GPU is taken: 1 of 1 busy on the "
        "nodes it may use (gpu). Try again when another analyst's GPU server stops, or "
        "choose another profile"
    )
    assert took < 5, f"the refusal took {took:.1f}s"
    # Refused before anything of carol's existed: no service, no network, no hub on one.
    manager = swarm.manager.client
    assert not manager.services.list(filters={"name": carol.service_name})
    assert not manager.networks.list(names=[carol.user_network])
    assert _run(carol.poll()) == 0
    # Once alice stops, the GPU is carol's.
    _run(alice.stop())
    _run(carol.start())
    assert carol.node_name == "gpu"
    spec = manager.api.inspect_service(carol.service_name)["Spec"]
    assert spec["Labels"][LABEL_GPUS] == "GPU-sim-0"


def test_a_drained_node_takes_no_new_server(swarm, spawners, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", swarm.manager.socket)
    assert main(["nodes", "drain", "spark"]) == 0
    try:
        assert capsys.readouterr().out == "spark: active -> drain\n"
        assert main(["nodes"]) == 0
        line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("spark "))
        assert " drain " in line
        bob = spawners("bob", "default")
        with pytest.raises(web.HTTPError) as refused:
            _run(bob.start())
        assert refused.value.status_code == 409
        assert "the profile 'Default' (default) cannot start now" in refused.value.log_message
        assert "node.labels.hubstack.gpu!=true" in refused.value.log_message
    finally:
        assert main(["nodes", "activate", "spark"]) == 0
    assert capsys.readouterr().out == "spark: drain -> active\n"
    bob = spawners("bob", "default")
    _run(bob.start())
    assert bob.node_name == "spark"


def test_drain_names_an_unknown_node_and_needs_a_manager(swarm, monkeypatch, capsys):
    monkeypatch.setenv("DOCKER_HOST", swarm.manager.socket)
    assert main(["nodes", "drain", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert "no node 'nosuch' in this swarm (nodes: gpu, spark)" in err
    monkeypatch.setenv("DOCKER_HOST", swarm.node("spark").socket)
    assert main(["nodes", "activate", "spark"]) == 2
    assert "this engine is not a Swarm manager (swarm state: active)" in capsys.readouterr().err


def test_a_home_is_the_analysts_own_and_outlives_a_stop_on_its_node(swarm, spawners):
    """A local home volume: made the analyst's by the root task, written by their server as
    their UID:GID, kept by stop, found again at the next start on the same node; a profile
    that cannot run on that node is refused, naming it and NFS homes."""
    dave = spawners("dave", "default")
    started = time.monotonic()
    _run(dave.start())
    print(f"[swarm spawner] start with a new home in {time.monotonic() - started:.1f}s")
    assert dave.node_name == "spark"
    assert dave.home_node["name"] == "spark"
    c = _container(swarm, dave)
    assert _write_notes(c, "kept") == [
        "23404:23404 700 /home/dave",
        "23404:23404 644 /home/dave/notes.txt",
    ]
    # The task that prepared it is gone; the volume stays on the node after the stop.
    manager = swarm.manager.client
    assert not manager.services.list(filters={"name": dave.home_job_name})
    _run(dave.stop())
    # As JupyterHub does after a stop: clear the state, keep what get_state still gives.
    dave.clear_state()
    state = dave.get_state()
    assert state["swarm_home_node"]["name"] == "spark"
    spark = swarm.node("spark").client
    volume = spark.volumes.get(f"{dave.cfg.hub.network}-home-dave")
    assert volume.attrs["Labels"][USER_LABEL] == "dave"

    again = spawners("dave", "default")
    again.load_state(state)
    started = time.monotonic()
    _run(again.start())
    print(f"[swarm spawner] start with a kept home in {time.monotonic() - started:.1f}s")
    assert again.node_name == "spark"
    result = _container(swarm, again).exec_run(["cat", "/home/dave/notes.txt"])
    assert result.output == b"kept\n"
    _run(again.stop())

    # Her home is on spark; the GPU profile runs only on GPU nodes: refused at once.
    gpu = spawners("dave", "gpu")
    gpu.load_state(state)
    with pytest.raises(web.HTTPError) as refused:
        _run(gpu.start())
    assert refused.value.status_code == 409
    message = refused.value.log_message
    assert message.startswith(
        "the profile 'GPU' (gpu) cannot start on node 'spark', where your home is: it needs "
        "node.labels.hubstack.gpu==true, which node spark does not meet."
    )
    assert "cluster.home_volume" in message
    assert not manager.services.list(filters={"name": gpu.service_name})


@pytest.fixture
def shared_homes(swarm, hub_cfg):
    """(config, folder): cluster.home_volume as a bind of FOLDER, a folder of the host's file
    system that every node of the harness sees at the same path, as every node of a real
    cluster sees a shared file system (NFS, CephFS, ...) mounted at the same path. The
    analysts' volumes, the job's volume of all homes and the folder are removed afterwards.
    Ask for it before `spawners`, so that it is torn down after every server is stopped."""
    root = Path(tempfile.mkdtemp(prefix="hubtest-swarm13h-homes-"))
    os.chmod(root, 0o755)  # owned by root, as the docs ask
    data = hub_cfg.model_dump(mode="json", exclude={"path"})
    opts = {"type": "none", "o": "bind", "device": str(root)}
    data["cluster"]["home_volume"] = {"driver": "local", "driver_opts": opts}
    cfg = parse_config(data)
    try:
        yield cfg, root
    finally:
        # Only the volumes bound to ROOT: the analysts' (their folders) and the job's (ROOT).
        def elsewhere(volume) -> bool:
            device = (volume.attrs.get("Options") or {}).get("device", "")
            return device != str(root) and not device.startswith(f"{root}/")

        t = time.monotonic()
        try:
            _remove_volumes(swarm, keep=elsewhere, driver="local")
        finally:
            shutil.rmtree(root)
        print(f"[swarm spawner] shared homes removed in {time.monotonic() - t:.1f}s")


def test_a_shared_home_follows_the_analyst_to_another_node(swarm, shared_homes, spawners):
    """A home on shared storage (cluster.home_volume) is the same on whichever node the
    server lands, keeps the analyst's UID:GID, and does not pin them to a node.

    This stands in for NFS homes: this kernel has no NFS client (no `nfs` in
    /proc/filesystems, no loadable modules), so no NFS volume can be mounted here. The
    harness's nodes share the host's file system, so the config binds one of its folders
    (local driver, `type: none, o: bind, device: FOLDER`) where a real cluster would give
    NFS options. What this checks is the spawner's whole shared-home path, the same for
    both: the job mounting the folder of all homes and making NAME/ the analyst's (UID:GID,
    0700), the server's volume of NAME/ on each node, no home node kept, the analyst's
    data read back on another node, and its owner on the shared folder. What it does not
    check: an NFS mount itself (its options, root squashing, locking, a server away)."""
    cfg, root = shared_homes
    # alice's local home from before the platform's homes were shared (the earlier tests
    # of this module leave one on the gpu node): it must not stand in for her shared one.
    gpu_node = swarm.node("gpu").client
    with contextlib.suppress(docker.errors.APIError):
        gpu_node.volumes.create(f"{cfg.hub.network}-home-alice", labels={USER_LABEL: "alice"})

    started = time.monotonic()
    alice = spawners("alice", "default", cfg)
    _run(alice.start())
    assert alice.node_name == "spark"  # the default profile keeps off GPU nodes
    assert not alice.home_node  # a shared home pins no one
    c = _container(swarm, alice)
    assert _write_notes(c, "shared") == [
        "23401:23401 700 /home/alice",
        "23401:23401 644 /home/alice/notes.txt",
    ]
    _run(alice.stop())
    alice.clear_state()  # as JupyterHub does after a stop
    state = alice.get_state()
    assert "swarm_home_node" not in state

    on_gpu = spawners("alice", "gpu", cfg)
    on_gpu.load_state(state)
    _run(on_gpu.start())
    assert on_gpu.node_name == "gpu"  # another node: her home is not pinned
    result = _container(swarm, on_gpu).exec_run(["cat", "/home/alice/notes.txt"])
    assert result.output == b"shared\n"
    # On the shared folder itself: NAME/ and what she wrote are hers.
    home = (root / "alice").stat()
    assert (home.st_uid, home.st_gid, home.st_mode & 0o777) == (23401, 23401, 0o700)
    notes = (root / "alice" / "notes.txt").stat()
    assert (notes.st_uid, notes.st_gid) == (23401, 23401)
    _run(on_gpu.stop())
    print(f"[swarm spawner] a shared home on two nodes in {time.monotonic() - started:.1f}s")


SPARK_JOB = """
import os, socket
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
print("MASTER", spark.sparkContext.master)
ran = spark.sparkContext.parallelize(range(2), 2).map(
    lambda _: (os.getuid(), os.getgid(), socket.gethostname())
).collect()
print("RAN", sorted(set(ran)))
spark.stop()
"""


def test_a_spark_analysts_cluster_runs_as_services_on_the_spark_node(
    swarm, spawners, spark_executor
):
    """A Spark profile start: the master and the worker's service on the Spark node, on
    the analyst's own overlay network with their server; a job from the server (its Spark
    session as the spawner set it up, through the master's service name) runs on the
    workers as the analyst; after the stop nothing of the cluster is left."""
    erin = spawners("erin", "spark")
    started = time.monotonic()
    _run(erin.start())
    print(f"[swarm spark] start with a cluster in {time.monotonic() - started:.1f}s")
    manager = swarm.manager.client.api
    server = erin.service_name
    cluster = manager.services(filters={"label": f"{CLUSTER_LABEL}={server}"})
    names = sorted(s["Spec"]["Name"] for s in cluster)
    assert names == [f"{server}-spark-master", f"{server}-spark-worker-1"]
    spark_node = swarm.node("spark")
    net = erin.spark_network
    for name in names:
        (task,) = manager.tasks(filters={"service": name})
        assert task["NodeID"] == spark_node.node_id, name
        # On the analyst's own network only: not the one the hub reaches servers on.
        attached = [a["Network"]["Spec"]["Name"] for a in task["NetworksAttachments"]]
        assert attached == [net], name
        (c,) = spark_node.client.containers.list(
            filters={"label": f"com.docker.swarm.service.name={name}"}
        )
        assert c.attrs["Config"]["User"] == "23405:23405"
        assert c.attrs["Config"]["Image"] == spark_executor
    (server_task,) = manager.tasks(filters={"service": server})
    attached = [a["Network"]["Spec"]["Name"] for a in server_task["NetworksAttachments"]]
    assert net in attached

    started = time.monotonic()
    result = _container(swarm, erin).exec_run(["python", "-c", SPARK_JOB])
    out = result.output.decode(errors="replace")
    assert result.exit_code == 0, out[-3000:]
    assert f"MASTER spark://{server}-spark-master:7077" in out
    ran = next(line for line in out.splitlines() if line.startswith("RAN "))
    # Every task on the worker (its host name is its service's), as erin's UID:GID.
    assert ast.literal_eval(ran[4:]) == [(23405, 23405, f"{server}-spark-worker-1")], ran

    print(f"[swarm spark] the job ran in {time.monotonic() - started:.1f}s")
    started = time.monotonic()
    _run(erin.stop())
    print(f"[swarm spark] stop in {time.monotonic() - started:.1f}s")
    assert not manager.services(filters={"label": f"{CLUSTER_LABEL}={server}"})
    assert not [s for s in manager.secrets() if "-erin-spark-" in s["Spec"]["Name"]]
    assert not manager.networks(names=[net])


OWN_PACKAGE = "cowsay==6.1"
"""The single-host per-user image tests' package (tests/integration/test_user_images.py)."""
PKGS_IMAGE = "swarm-pkgs"


@pytest.fixture(scope="module")
def own_packages(swarm, swarm_registry, hub_cfg, hierarchy, registry, docker_client):
    """What an analyst's packages need on the test swarm, as swarm mode runs it: the
    per-user images' instance on the nodes' segment over TLS (the platform CA's certificate,
    which every node trusts under certs.d, as the read-only instance), and a profile whose
    image is the session's python image plus a wheelhouse. The test swarm's nodes reach
    no package index (no route out, no resolver): like an air-gapped site with a mirror,
    the parent's pip finds OWN_PACKAGE in /srv/wheels (PIP_NO_INDEX, PIP_FIND_LINKS), so
    the per-user build on the manager runs pip as on a site with a mirror. Yields the
    config (as the hub's, with users_address and the profile `own`)."""
    started = time.monotonic()
    data = hub_cfg.model_dump(mode="json", exclude={"path"})
    data["registry"]["users_address"] = f"{swarm.host_address}:{free_port()}"
    data["profiles"] = [{"name": "own", "display_name": "Own", "image": PKGS_IMAGE}]
    cfg = parse_config(data)
    name = f"hubtest-swarm-registry-users-{SESSION_ID}"
    users = docker_client.containers.run(
        **registry_container_spec(
            cfg, name=name, volume=name, role=USERS, certificate=registry_certificate(cfg, USERS)
        )
    )
    push_cfg = swarm_registry.cfg
    repo = push_cfg.image_repository(PKGS_IMAGE)
    ref = f"{repo}:{push_cfg.images.tag}"
    try:
        RegistryClient(cfg, role=USERS).wait_ready(60)
        for node in swarm.nodes:
            node.install_ca(cfg.registry.users_address, cfg.tls_ca_cert_file)
        parent = hierarchy["python"]["image_id"]
        dockerfile = (
            f"FROM {parent}\nUSER root\n"
            "RUN /opt/venv/bin/pip download --no-deps --dest /srv/wheels "
            f"{OWN_PACKAGE} && cp -r /usr/share/hubstack/lock/python "
            f"/usr/share/hubstack/lock/{PKGS_IMAGE}\n"
            "ENV PIP_NO_INDEX=1 PIP_FIND_LINKS=/srv/wheels\nUSER 1000:100\n"
        )
        docker_client.images.build(
            fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True, pull=False
        )
        # The python image's layers as stored, then the engine's push of the wheelhouse.
        RegistryClient(push_cfg).copy_layers(registry, "python", TEST_TAG, PKGS_IMAGE)
        push_image(push_cfg, docker_client, PKGS_IMAGE, progress=lambda _: None)
        print(f"[swarm own] users registry and parent ready in {time.monotonic() - started:.1f}s")
        yield cfg
    finally:
        users.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(name).remove(force=True)
        with contextlib.suppress(docker.errors.ImageNotFound):
            docker_client.images.remove(ref)
        user_images.clear_env(cfg, "frank")


def _timed_progress(monkeypatch) -> list[tuple[float, str]]:
    """Each progress message of the starts that follow, with the time it was emitted."""
    marks: list[tuple[float, str]] = []
    new = HubstackSwarmSpawner._new_progress

    def timed(self):
        progress = new(self)
        emit = progress.emit

        def stamped(percent: int, message: str) -> None:
            marks.append((time.monotonic(), message))
            emit(percent, message)

        progress.emit = stamped  # type: ignore[method-assign]
        return progress

    monkeypatch.setattr(HubstackSwarmSpawner, "_new_progress", timed)
    return marks


def test_own_packages_start_on_a_worker_from_the_users_registry(
    swarm, own_packages, spawners, monkeypatch
):
    """frank has a package of his own: the hub builds his per-user image on the manager's
    engine (the progress lines of one host), pushes it to registry-users, and his server's
    service runs it by digest on the worker, which pulls it with the users account the
    service carries (without it, that registry refuses the worker). The package imports in
    his server, as his UID."""
    cfg = own_packages
    user_images.save_env(cfg, "frank", user_images.UserEnv(pip=(OWN_PACKAGE,)))
    frank = spawners("frank", "own", cfg)
    marks = _timed_progress(monkeypatch)
    started = time.monotonic()
    _run(frank.start())
    print(f"[swarm own] start with a per-user build in {time.monotonic() - started:.1f}s")
    for at, message in marks:  # where the time went (docs/multi-node.md)
        if not message.startswith("Building your image: "):
            print(f"[swarm own]   +{at - started:5.1f}s {message[:100]}")
    messages = [message for _, message in marks]
    assert any(m.startswith("Building your image: step") for m in messages), messages
    assert any(m.startswith("Your image: ") for m in messages), messages
    # Built on the manager (the gpu node), run on the worker.
    assert frank.node_name == "spark"
    image = frank.image
    assert image.startswith(f"{cfg.registry.users_address}/{cfg.images.namespace}/user/frank@")
    labels = swarm.manager.client.images.get(image).labels
    assert labels[user_images.LABEL_USER] == "frank"
    c = _container(swarm, frank)
    assert c.attrs["Config"]["Image"] == image
    out = c.exec_run(["python", "-c", "import cowsay, os; print(cowsay.__name__, os.getuid())"])
    assert out.output.decode().strip() == "cowsay 23406", out.output
    assert c.exec_run(["id", "-un"]).output.decode().strip() == "frank"
    # The worker has it from registry-users, over TLS, which refuses a request without
    # the users account: the service carried it.
    assert swarm.node("spark").client.images.get(image)
    repo, digest = image.split("/", 1)[1].split("@")
    url = f"https://{cfg.registry.users_address}/v2/{repo}/manifests/{digest}"
    context = ssl.create_default_context(cafile=str(cfg.tls_ca_cert_file))
    with pytest.raises(urllib.error.HTTPError) as anonymous:
        urllib.request.urlopen(url, context=context, timeout=10)
    assert anonymous.value.code == 401
    started = time.monotonic()
    _run(frank.stop())
    print(f"[swarm own] stop in {time.monotonic() - started:.1f}s")

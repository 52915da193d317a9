"""`hubstack up` with cluster.mode: swarm on the real two-node swarm of
tests/integration/swarm_nodes.py: the platform deployed as a Swarm stack (hubstack.swarm_stack)
against the manager (the `gpu` node's engine), with a real JupyterHub.

How `up` runs: as on a manager, inside the `gpu` node's network namespace with DOCKER_HOST its
engine's socket, so its loopback is the manager's and the push instance is reached there, as
a real `up` on a manager pushes (docs/multi-node.md). It runs with --no-build: a build on
the node's engine would start cold (the node shares no layer cache with the host's). The
stack's registry volume is seeded before `up` with the session registry's layers (the hub's
and the server's repositories with their tags and blobs, copied: no gzip push;
hubstack_e2e.seed_registry_volume), so `up` finds every image it
needs in its registry and pushes nothing; the node's engine gets the base and registry images
from the host's (`docker save` / `load`: Swarm runs the registries from the engine's own image).

What runs here: the three registry instances on the manager, the read-only one serving HTTPS
with the platform CA's certificate; an image pushed on the manager's loopback with the push
account and pulled by the worker over TLS with the pull account; the hub as a plain container
on the manager (restart unless-stopped, on the stack's overlay as `hub`, its port published,
its secrets the state dir's files read-only); two analysts logging in, their servers landing
on the worker, each on the analyst's own overlay with the hub, answering through the hub's
proxy, neither reaching the other's; writing in her home as her UID:GID; `down`.

The server image is the hub image plus jupyter_server (SERVER_DOCKERFILE): the smallest that
runs `jupyterhub-singleuser`, built once on the session's hub image, so only its one layer is
new. Not the notebook image: the worker would pull its 2.3 GB (about a minute on 2 cores),
and what is checked here is where the server runs, as whom, and that the hub reaches it, not
the notebook's contents (tests/integration/test_hub.py checks those on one host).
"""

from __future__ import annotations

import contextlib
import io
import os
import ssl
import subprocess
import time
import urllib.error
import urllib.request

import docker
import pytest

from hubstack.backup import volume_name
from hubstack.engine import project_name
from hubstack.hub import swarm_gpu
from hubstack.images.build import push_image
from hubstack.registry import PULL, PUSH, auth_config, registry_certificate
from tests.conftest import (
    SESSION_ID,
    SESSION_REGISTRY_VOLUME,
    TEST_TAG,
    config_data,
    free_port,
    write_config,
)
from tests.integration.hubstack_e2e import add_user, logged_in_clients, seed_registry_volume
from tests.integration.swarm_nodes import TINY_IMAGE, on_manager, running_tasks, wait_until

pytestmark = pytest.mark.integration

SERVER_IMAGE = "swarm-server"
SERVER_DOCKERFILE = """FROM {hub}
LABEL io.hubstack.test=swarm-server
# jupyterhub-singleuser's one missing part in the hub image (the notebook image's version).
RUN pip install --no-cache-dir jupyter-server==2.21.1
"""
ANALYSTS = {
    "alice": ("alice-pw-5c1d", 23411, 23411, []),
    "bob": ("bob-pw-7e2a", 23412, 23412, []),
}
# Where a probe's TCP connect ends, from inside a container: `refused` (a route: nothing
# listens on the port), `timeout` (no route), or the error (a name that does not resolve).
PROBE = """import socket, sys
s = socket.socket(); s.settimeout(3)
try:
    s.connect((sys.argv[1], int(sys.argv[2]))); print("open")
except ConnectionRefusedError:
    print("refused")
except TimeoutError:
    print("timeout")
except OSError as e:
    print(type(e).__name__)
"""


@pytest.fixture(scope="module")
def server_image(platform_config, hierarchy, docker_client):
    """SERVER_DOCKERFILE built on the session's hub image and pushed to the session registry
    (only its own layer is new there); its tag on this engine is removed afterwards."""
    cfg = platform_config
    ref = cfg.image_ref(SERVER_IMAGE, TEST_TAG)
    started = time.monotonic()
    dockerfile = SERVER_DOCKERFILE.format(hub=hierarchy["hub"]["ref"])
    docker_client.images.build(fileobj=io.BytesIO(dockerfile.encode()), tag=ref, rm=True)
    try:
        push_image(cfg, docker_client, SERVER_IMAGE, TEST_TAG, progress=lambda _: None)
        print(f"[swarm hub] server image built and pushed in {time.monotonic() - started:.1f}s")
        yield ref
    finally:
        docker_client.images.remove(ref)


@pytest.fixture(scope="module")
def deployed(swarm, platform_config, server_image, docker_client, tmp_path_factory):
    """`hubstack up` on the manager; `hubstack down` and every volume it left afterwards
    (the nodes' data roots, with the images they pulled, go with the session's swarm)."""
    gpu = swarm.node("gpu")
    state = tmp_path_factory.mktemp("swarm-stack")
    name = f"hubtest-swarm13f-{SESSION_ID}"
    config = state / "hubstack.yaml"
    cfg = write_config(
        config,
        config_data(
            state,
            free_port(),
            registry={"pull_address": f"{gpu.address}:{free_port()}"},
            images={"namespace": name, "tag": TEST_TAG},
            hub={
                "network": name,
                "port": free_port(),
                "host": gpu.address,  # where its task publishes it, in host mode
                "notebook_image_tag": TEST_TAG,
                # Plain HTTP on the harness's private segment, which only this host reaches.
                "tls": {"insecure_ok": True},
            },
            cluster={"mode": "swarm"},
            profiles=[{"name": "default", "display_name": "Default", "image": SERVER_IMAGE}],
        ),
    )
    for user, (pw, uid, gid, groups) in ANALYSTS.items():
        add_user(cfg, user, pw, uid, gid, groups)
    started = time.monotonic()
    # As docs/multi-node.md's step 5 on every node (the manager too): the platform CA for the
    # read-only instance's address; `up` issues the same CA's certificate for it.
    registry_certificate(cfg, PULL)
    for node in swarm.nodes:
        node.install_ca(cfg.registry.pull_address, cfg.tls_ca_cert_file)
    save = subprocess.Popen(
        ["docker", "save", cfg.base.image, cfg.registry.image], stdout=subprocess.PIPE
    )
    subprocess.run(["docker", "-H", gpu.socket, "load", "-q"], stdin=save.stdout, check=True)
    assert save.wait() == 0
    assert seed_registry_volume(
        docker_client,
        cfg,
        SESSION_REGISTRY_VOLUME,
        platform_config.images.namespace,
        target_client=gpu.client,
        names=[cfg.hub.image, SERVER_IMAGE],
    )
    api = docker.APIClient(base_url=gpu.socket, version="auto", timeout=120)
    try:
        loaded = time.monotonic()
        up = on_manager(gpu, config, "up", "--no-build")
        print(up.stdout)
        print(
            f"[swarm hub] base and registry images loaded and the registry seeded in "
            f"{loaded - started:.1f}s, `up` in {time.monotonic() - loaded:.1f}s"
        )
        assert up.returncode == 0, f"hubstack up failed:\n{up.stdout}\n{up.stderr}"
        yield cfg, config, api, up.stdout
    finally:
        down = on_manager(gpu, config, "down")
        print(down.stdout, down.stderr)
        project = project_name(cfg)
        wait_until(
            "the stack's services, secrets and networks removed",
            lambda: (
                not [s for s in api.services() if s["Spec"]["Name"].startswith(f"{name}")]
                and not [x for x in api.secrets() if x["Spec"]["Name"].startswith(f"{project}_")]
                and not api.networks(filters={"name": name})
            ),
            timeout=90,
        )
        for node in swarm.nodes:
            for volume in node.client.volumes.list():
                if volume.name.startswith(f"{project}_") or volume.name.startswith(f"{name}-"):
                    wait_until(f"{volume.name} removed", lambda v=volume: _removed(v), timeout=60)
            # What the nodes pulled from the stack's registry (the hub and server images).
            for image in node.client.images.list():
                names = image.tags + (image.attrs.get("RepoDigests") or [])
                if any(n.startswith(f"{cfg.registry.pull_address}/") for n in names):
                    with contextlib.suppress(docker.errors.APIError):
                        node.client.images.remove(image.id, force=True)
        api.close()


def _removed(volume) -> bool:
    try:
        volume.remove(force=True)
    except docker.errors.NotFound:
        return True
    except docker.errors.APIError:
        return False  # still held by a container the node is removing
    return True


def test_up_deploys_the_stack_with_a_stage_line_each(deployed):
    cfg, _, _, out = deployed
    stages = [line.split("]")[0] + "]" for line in out.splitlines() if line.startswith("[up ")]
    assert stages == [f"[up {i}/9]" for i in range(1, 10)], out
    assert "this engine is a Swarm manager" in out
    # Everything was in the stack's registry already: nothing pushed, no gzip.
    assert "pushing" not in out, out
    assert "hubstack is up in" in out and f"(Swarm stack {project_name(cfg)})" in out


def test_the_registries_run_on_the_manager_and_nodes_pull_over_tls(
    swarm, swarm_registry, deployed, docker_client
):
    cfg, _, api, _ = deployed
    name = cfg.hub.network
    gpu, spark = swarm.node("gpu"), swarm.node("spark")
    for service in ("registry", "registry-pull", "registry-users"):
        (task,) = running_tasks(api, f"{name}_{service}")
        assert task["NodeID"] == gpu.node_id, service

    # HTTPS with the platform CA's certificate, and the pull account asked for.
    context = ssl.create_default_context(cafile=str(cfg.tls_ca_cert_file))
    with pytest.raises(urllib.error.HTTPError) as unauthorized:
        urllib.request.urlopen(f"https://{cfg.registry.pull_address}/v2/", context=context)
    assert unauthorized.value.code == 401

    # Pushed on the manager's own loopback with the push account (as `up` pushes on the
    # hub's host), pulled by the worker over TLS with the pull account.
    tiny = gpu.client.images.pull(swarm_registry.image, auth_config=swarm_registry.pull_auth)
    ref = f"{cfg.image_repository(TINY_IMAGE)}:{cfg.images.tag}"
    tiny.tag(ref)
    gpu.client.images.push(ref, auth_config=auth_config(cfg, PUSH))
    pulled = spark.client.images.pull(
        f"{cfg.pull_repository(TINY_IMAGE)}:{cfg.images.tag}", auth_config=auth_config(cfg, PULL)
    )
    assert pulled.labels["io.hubstack.test"] == "swarm-tiny"
    # The read-only instance refuses a push, even with the push account.
    ro = f"{cfg.pull_repository(TINY_IMAGE)}:readonly"
    tiny.tag(ro)
    out = gpu.client.images.push(ro, auth_config=auth_config(cfg, PUSH))
    assert "error" in out.lower()


def test_the_hub_is_a_plain_container_on_the_manager(swarm, deployed):
    cfg, _, api, _ = deployed
    name = cfg.hub.network
    project = project_name(cfg)
    assert not api.services(filters={"name": f"{project}_hub"})  # no stack service
    hub = api.inspect_container(f"{project}-hub")
    assert hub["Config"]["Image"].startswith(f"{cfg.registry.pull_address}/")
    assert hub["HostConfig"]["RestartPolicy"]["Name"] == "unless-stopped"
    wait_until(
        "the hub's container healthy",
        lambda: api.inspect_container(f"{project}-hub")["State"]["Health"]["Status"] == "healthy",
        timeout=30,
    )
    # On the stack's overlay as `hub` (and on docker_gwbridge, for its published port).
    nets = hub["NetworkSettings"]["Networks"]
    assert "hub" in nets[name]["Aliases"] and set(nets) <= {name, "docker_gwbridge"}
    assert hub["HostConfig"]["PortBindings"]["8000/tcp"] == [
        {"HostIp": swarm.node("gpu").address, "HostPort": str(cfg.hub.port)}
    ]
    mounts = {m["Destination"]: m for m in hub["Mounts"]}
    # Its database in the volume the stack's hub service had; secrets as on one host: the
    # state dir's files, read-only, no Swarm secret.
    assert mounts["/srv/jupyterhub"]["Name"] == volume_name(cfg, "hub-data")
    cookie = mounts["/run/secrets/cookie_secret"]
    assert cookie["Source"].startswith(str(cfg.state_dir)) and cookie["RW"] is False
    assert not [x for x in api.secrets() if "cookie" in x["Spec"]["Name"]]


def test_the_hubs_registry_calls_reach_the_read_only_instance_over_tls(swarm, deployed):
    cfg, _, _, _ = deployed
    hub = swarm.node("gpu").client.containers.get(f"{project_name(cfg)}-hub")
    # The hub's own RegistryClient, in its container, with its copy of the config.
    code = (
        "from hubstack.config import load_config; from hubstack.registry import RegistryClient;"
        "r = RegistryClient(load_config('/etc/hubstack/hubstack.yaml'));"
        f"print(r.base_url, r.digest({cfg.hub.image!r}, {cfg.images.tag!r}))"
    )
    rc, out = hub.exec_run(["python3", "-c", code])
    assert rc == 0, out.decode()
    url, digest = out.decode().split()
    assert url == f"https://{cfg.registry.pull_address}/v2"
    assert digest.startswith("sha256:")


def _probe(container, host: str, port: int = 9) -> str:
    rc, out = container.exec_run(["python3", "-c", PROBE, host, str(port)])
    return out.decode().strip().splitlines()[-1]


def _address(api: docker.APIClient, service: str, network: str) -> str:
    (task,) = running_tasks(api, service)
    (attached,) = [
        a for a in task["NetworksAttachments"] if a["Network"]["Spec"]["Name"] == network
    ]
    return attached["Addresses"][0].split("/")[0]


def test_two_analysts_servers_run_on_the_worker_behind_the_hub_each_on_its_own_network(
    swarm, deployed
):
    cfg, config, api, _ = deployed
    spark, gpu = swarm.node("spark"), swarm.node("gpu")
    clients = logged_in_clients(cfg, ANALYSTS)
    alice, bob = clients["alice"], clients["bob"]
    started = time.monotonic()
    events = alice.start("default")
    print(f"[swarm hub] alice's server ready in {time.monotonic() - started:.1f}s")
    assert any("spark" in (e.get("message") or "") for e in events), events
    started = time.monotonic()
    bob.start("default")
    print(f"[swarm hub] bob's server ready in {time.monotonic() - started:.1f}s")
    service = f"{cfg.hub.network}-nb-alice"
    (task,) = running_tasks(api, service)
    assert task["NodeID"] == spark.node_id  # the default profile keeps off the GPU node

    # Through the hub's proxy, with their tokens: both servers on the worker answer.
    for c in (alice, bob):
        status = c.api("GET", f"/user/{c.name}/api/status")
        assert status.status_code == 200, status.text
    # A file she saves lands in her home volume on the worker, as her UID:GID.
    saved = alice.api(
        "PUT",
        "/user/alice/api/contents/notes.txt",
        json={"type": "file", "format": "text", "content": "on the worker"},
    )
    assert saved.status_code in (200, 201), saved.text
    home = spark.client.volumes.get(f"{cfg.hub.network}-home-alice")
    written = os.stat(os.path.join(home.attrs["Mountpoint"], "notes.txt"))
    assert (written.st_uid, written.st_gid) == (23411, 23411)

    # Each server is on its analyst's own overlay only, with the hub; neither reaches the
    # other's, by name or by address (timeout: no route), and the hub reaches both.
    nets = {u: f"{cfg.hub.network}-user-{u}" for u in ANALYSTS}
    servers = {
        u: spark.client.containers.list(
            filters={"label": f"com.docker.swarm.service.name={cfg.hub.network}-nb-{u}"}
        )[0]
        for u in ANALYSTS
    }
    for u, container in servers.items():
        assert set(container.attrs["NetworkSettings"]["Networks"]) <= {nets[u], "docker_gwbridge"}
    address = {u: _address(api, f"{cfg.hub.network}-nb-{u}", nets[u]) for u in ANALYSTS}
    assert _probe(servers["alice"], address["alice"]) == "refused"  # the probe itself works
    assert _probe(servers["alice"], "hub", 8081) == "open"
    assert _probe(servers["alice"], address["bob"]) == "timeout"
    assert _probe(servers["alice"], f"{cfg.hub.network}-nb-bob") == "gaierror"
    assert _probe(servers["bob"], address["alice"]) == "timeout"
    hub = gpu.client.containers.get(f"{project_name(cfg)}-hub")
    for u in ANALYSTS:
        assert _probe(hub, f"{cfg.hub.network}-nb-{u}") == "refused", u

    # `hubstack status` on the manager: the hub's container, and the servers.
    status = on_manager(gpu, config, "status")
    assert status.returncode == 0, status.stderr
    assert f"{project_name(cfg)}-hub" in status.stdout and "running (healthy)" in status.stdout
    lines = status.stdout.splitlines()
    listed = lines.index("notebook servers: 2 (`hubstack nodes` shows where)")
    assert sorted(line.split()[0] for line in lines[listed + 1 : listed + 3]) == ["alice", "bob"]
    # Then the swarm's GPUs, as `hubstack gpus` shows them: the GPU node's simulated one.
    assert lines[listed + 3 :] == ["", *swarm_gpu.format_gpu_status(cfg, api)], status.stdout
    assert "GPUs: 1 on 1 node(s) of the swarm" in status.stdout

    for c in (alice, bob):
        c.stop()
    wait_until("alice's service removed", lambda: not api.services(filters={"name": service}))
    # Her network goes with her server (the hub taken off it first).
    wait_until(
        "the analysts' networks removed",
        lambda: not any(api.networks(names=[n]) for n in nets.values()),
    )
    hub.reload()
    assert not set(hub.attrs["NetworkSettings"]["Networks"]) & set(nets.values())


def test_down_removes_the_stack_and_keeps_its_volumes(swarm, deployed):
    cfg, config, api, _ = deployed
    gpu = swarm.node("gpu")
    project = project_name(cfg)
    down = on_manager(gpu, config, "down")
    assert down.returncode == 0, down.stderr
    assert f"removed the hub's container {project}-hub" in down.stdout
    assert f"removed the stack {project}" in down.stdout
    assert not gpu.client.containers.list(all=True, filters={"name": f"{project}-hub"})
    assert "data kept" in down.stdout
    assert not [s for s in api.services() if s["Spec"]["Name"].startswith(f"{project}_")]
    kept = {v.name for v in gpu.client.volumes.list()}
    assert {volume_name(cfg, "hub-data"), volume_name(cfg, "registry-data")} <= kept
    homes = {v.name for v in swarm.node("spark").client.volumes.list()}
    assert f"{cfg.hub.network}-home-alice" in homes
    # A second down finds nothing to stop.
    again = on_manager(gpu, config, "down")
    assert "nothing to stop" in again.stdout, again.stdout

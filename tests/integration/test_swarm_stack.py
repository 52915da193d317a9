"""The platform deployed as a Swarm stack (hubstack.swarm_stack) on the real two-node swarm
of tests/integration/swarm_nodes.py: the compose files rendered for Swarm and deployed
with `docker stack deploy` against the manager (the `gpu` node's engine).

What runs here: the three registry instances, placed on the manager, the read-only one
serving HTTPS with the platform CA's certificate; an image pushed on the manager's
loopback with the push account and pulled by the worker over TLS with the pull account;
the hub service (placed on managers, on the platform and servers overlays, with its
secrets as Swarm secrets named by content). The hub's own task is not started here: its
image (the built hierarchy's hub) is not loaded onto the node (docs/multi-node.md says
what is left for the hub on a swarm).

The node's engine gets the registry image from the host's (`docker save` / `load`, as
`hubstack nodes bundle` is planned to carry it to an air-gapped node).
"""

from __future__ import annotations

import ssl
import subprocess
import time
import urllib.error
import urllib.request

import docker
import pytest

from hubstack import stack, swarm_stack
from hubstack.registry import PULL, PUSH, auth_config
from tests.conftest import SESSION_ID, TEST_TAG, config_data, free_port, write_config
from tests.integration.hubstack_e2e import add_user
from tests.integration.swarm_nodes import TINY_IMAGE

pytestmark = pytest.mark.integration

SERVER_IMAGE = "swarm-server"
ANALYSTS = {"alice": ("alice-pw-5c1d", 23411, 23411, [])}


def _wait(what: str, check, timeout: float = 120):
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


def _running_tasks(api: docker.APIClient, service: str) -> list[dict]:
    return [
        t
        for t in api.tasks(filters={"service": service, "desired-state": "running"})
        if t["Status"]["State"] == "running"
    ]


@pytest.fixture(scope="module")
def deployed(swarm, swarm_registry, docker_client, tmp_path_factory, monkeypatch_module):
    """The stack deployed on the swarm for this module; removed afterwards, with everything
    it made (services, secrets, networks; the volumes go with the node's data root)."""
    gpu = swarm.node("gpu")
    state = tmp_path_factory.mktemp("swarm-stack")
    name = f"hubtest-swarm13c-{SESSION_ID}"
    cfg = write_config(
        state / "hubstack.yaml",
        config_data(
            state,
            free_port(),
            registry={"pull_address": f"{gpu.address}:{free_port()}"},
            images={"namespace": name},
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
    monkeypatch_module.setenv("DOCKER_HOST", gpu.socket)
    monkeypatch_module.delenv("COMPOSE_PROJECT_NAME", raising=False)
    stack.ensure_secrets(cfg)
    stack.render_env(cfg)
    path = swarm_stack.render(cfg, stack.compose_model(cfg))
    started = time.monotonic()
    gpu.client.images.load(docker_client.images.get(cfg.registry.image).save(named=True))
    for node in swarm.nodes:
        node.install_ca(cfg.registry.pull_address, cfg.tls_ca_cert_file)
    api = docker.APIClient(base_url=gpu.socket, version="auto", timeout=120)
    try:
        swarm_stack.deploy(cfg, path)
        for service in ("registry", "registry-pull", "registry-users"):
            _wait(f"{service} running", lambda s=service: _running_tasks(api, f"{name}_{s}"))
        print(f"[swarm stack] registries up in {time.monotonic() - started:.1f}s")
        yield cfg, api
    finally:
        subprocess.run(["docker", "stack", "rm", name], capture_output=True, check=False)
        _wait(
            "the stack's services and secrets removed",
            lambda: (
                not [s for s in api.services() if s["Spec"]["Name"].startswith(f"{name}_")]
                and not [x for x in api.secrets() if x["Spec"]["Name"].startswith(f"{name}_")]
            ),
            timeout=60,
        )
        api.close()


@pytest.fixture(scope="module")
def monkeypatch_module():
    with pytest.MonkeyPatch.context() as mp:
        yield mp


def test_the_registries_run_on_the_manager_and_nodes_pull_over_tls(
    swarm, swarm_registry, deployed, docker_client
):
    cfg, api = deployed
    name = cfg.hub.network
    gpu, spark = swarm.node("gpu"), swarm.node("spark")
    for service in ("registry", "registry-pull", "registry-users"):
        (task,) = _running_tasks(api, f"{name}_{service}")
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


def test_the_hub_service_is_placed_on_managers_with_swarm_secrets_and_both_networks(deployed):
    cfg, api = deployed
    name = cfg.hub.network
    (hub,) = api.services(filters={"name": f"{name}_hub"})
    spec = hub["Spec"]["TaskTemplate"]
    assert spec["Placement"]["Constraints"] == ["node.role==manager"]
    assert spec["ContainerSpec"]["Image"].startswith(f"{cfg.registry.pull_address}/")
    secrets = {s["File"]["Name"]: s["SecretName"] for s in spec["ContainerSpec"]["Secrets"]}
    assert set(secrets) >= {
        "/run/secrets/cookie_secret",
        "/run/secrets/proxy_token",
        "/run/secrets/registry_pull_credentials",
    }
    assert all(
        n.startswith(f"{name}_") and len(n.rsplit("_", 1)[1]) == 12 for n in secrets.values()
    )
    networks = {api.inspect_network(n["Target"])["Name"] for n in spec["Networks"]}
    assert networks == {name, f"{name}-servers"}
    servers = api.inspect_network(f"{name}-servers")
    assert servers["Driver"] == "overlay" and servers["Attachable"] is True
    # Published on the node it runs on (mode host), at hub.port, as single mode publishes it.
    (port,) = hub["Spec"]["EndpointSpec"]["Ports"]
    assert (port["PublishedPort"], port["PublishMode"]) == (cfg.hub.port, "host")

"""hubstack.swarm_stack: the compose files as a Swarm stack file, rendered with the real
`docker compose config` and checked by the docker CLI's own stack loader
(`docker stack config`, which needs no engine). Deployed on a real swarm in
tests/integration/test_swarm_stack.py."""

from __future__ import annotations

import subprocess

import pytest
import requests
import yaml

from hubstack import spark_cluster, stack, swarm_stack
from hubstack.config import parse_config
from hubstack.engine import PLATFORM_LABEL
from hubstack.errors import CommandError
from hubstack.registry import Credentials, RegistryClient


@pytest.fixture
def swarm_cfg(tmp_path):
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "registry": {"address": "127.0.0.1:25990", "pull_address": "10.1.2.3:25991"},
            "cluster": {"mode": "swarm"},
        }
    )
    stack.ensure_secrets(cfg)
    stack.render_env(cfg)
    return cfg


def test_the_stack_file_is_the_compose_files_with_what_swarm_needs(swarm_cfg, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/manager/docker.sock")
    path = swarm_stack.render(swarm_cfg, stack.compose_model(swarm_cfg))
    assert path == swarm_cfg.state_dir / "hub" / "stack.yaml"
    data = yaml.safe_load(path.read_text())
    services = data["services"]
    assert sorted(services) == ["hub", "registry", "registry-pull", "registry-users"]
    for name, s in services.items():
        assert s["deploy"]["placement"]["constraints"] == ["node.role==manager"], name
        assert s["deploy"]["endpoint_mode"] == "dnsrr", name
        assert not {"depends_on", "container_name", "restart", "tmpfs"} & set(s), name
        assert all(p["mode"] == "host" and "host_ip" not in p for p in s["ports"]), name
    hub = services["hub"]
    assert hub["image"] == "10.1.2.3:25991/hubstack/hub:latest"
    # Published where single mode publishes it (on the node the hub runs on).
    assert hub["ports"] == [{"target": 8000, "published": 8000, "protocol": "tcp", "mode": "host"}]
    # The hub's engine is the manager's that `up` talks to; its tmpfs mounts stay.
    socket = next(v for v in hub["volumes"] if v["target"] == "/var/run/docker.sock")
    assert socket["source"] == "/run/manager/docker.sock"
    tmpfs = [v["target"] for v in hub["volumes"] if v["type"] == "tmpfs"]
    assert "/run/jupyterhub" in tmpfs
    # The servers' overlay: the hub is on it (as `hub`), the registries are not.
    assert data["networks"] == {
        "hubstack": {"name": "hubstack", "driver": "overlay", "attachable": True},
        "servers": {"name": "hubstack-servers", "driver": "overlay", "attachable": True},
    }
    assert hub["networks"] == {"hubstack": {"aliases": ["hub"]}, "servers": {"aliases": ["hub"]}}
    assert all("servers" not in s["networks"] for n, s in services.items() if n != "hub")
    # Secrets: Swarm secrets named by their content, from the same files.
    cookie = data["secrets"]["cookie_secret"]
    content = (swarm_cfg.secrets_dir / "jupyterhub-cookie-secret").read_bytes()
    assert cookie["name"] == swarm_stack.secret_name("hubstack", "cookie_secret", content)
    assert cookie["file"] == str(swarm_cfg.secrets_dir / "jupyterhub-cookie-secret")
    # Readable by the service's root only: JupyterHub refuses a world-readable cookie secret.
    assert all(ref["mode"] == 0o400 for s in services.values() for ref in s.get("secrets", []))
    # The read-only registry serves TLS with the platform CA's certificate, as Swarm secrets.
    pull = services["registry-pull"]
    assert pull["ports"][0]["published"] == 25991
    assert pull["environment"]["REGISTRY_HTTP_TLS_CERTIFICATE"].endswith("registry.pem")
    assert {s["source"] for s in pull["secrets"]} == {"registry_tls_cert", "registry_tls_key"}
    assert data["secrets"]["registry_tls_cert"]["file"] == str(swarm_cfg.registry_tls_cert_file)
    # The docker CLI's stack loader takes it as it is.
    checked = subprocess.run(
        ["docker", "stack", "config", "-c", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr


def test_a_changed_secret_is_a_new_swarm_secret(swarm_cfg):
    one = swarm_stack.secret_name("hubstack", "proxy_token", b"a")
    assert one.startswith("hubstack_proxy_token_") and len(one) == len("hubstack_proxy_token_") + 12
    assert swarm_stack.secret_name("hubstack", "proxy_token", b"b") != one
    long = swarm_stack.secret_name("hubtest-swarm13c-4de749e9", "registry_users_credentials", b"")
    assert len(long) == 64 and long.startswith("hubtest-swarm13c-4de749e9_registry_users_cred")


def test_the_hub_needs_a_local_manager_socket():
    assert swarm_stack.engine_socket("") == "/var/run/docker.sock"
    assert swarm_stack.engine_socket("unix:///tmp/x/docker.sock") == "/tmp/x/docker.sock"
    with pytest.raises(CommandError, match="DOCKER_HOST=tcp://10.0.0.1:2376: swarm mode"):
        swarm_stack.engine_socket("tcp://10.0.0.1:2376")


def test_up_deploys_the_registries_first_from_a_stack_of_their_own(swarm_cfg):
    path = swarm_stack.render(swarm_cfg, stack.compose_model(swarm_cfg))
    full = yaml.safe_load(path.read_text())
    registries = yaml.safe_load(swarm_stack.registries_file(swarm_cfg).read_text())
    assert sorted(registries["services"]) == ["registry", "registry-pull", "registry-users"]
    # The same services as the whole stack's: its deploy leaves them running as they are.
    for name, service in registries["services"].items():
        assert service == full["services"][name], name
    # Only the secrets they use (a deploy creates every secret its file declares).
    assert set(registries["secrets"]) == {"registry_tls_cert", "registry_tls_key"}
    assert registries["networks"] == full["networks"]
    checked = subprocess.run(
        ["docker", "stack", "config", "-c", str(swarm_stack.registries_file(swarm_cfg))],
        capture_output=True,
        text=True,
    )
    assert checked.returncode == 0, checked.stderr


def test_the_hub_calls_the_read_only_registry_over_tls_trusting_the_platform_ca(swarm_cfg):
    # The stack mounts the platform CA where the hub's copy of the config looks for it.
    path = swarm_stack.render(swarm_cfg, stack.compose_model(swarm_cfg))
    data = yaml.safe_load(path.read_text())
    assert data["secrets"]["platform_ca"]["file"] == str(swarm_cfg.tls_ca_cert_file)
    ca = [s for s in data["services"]["hub"]["secrets"] if s["source"] == "platform_ca"]
    assert ca == [{"source": "platform_ca", "target": swarm_stack.HUB_PLATFORM_CA, "mode": 0o400}]
    inside = parse_config(stack.hub_config(swarm_cfg))
    assert str(inside.tls_ca_cert_file) == swarm_stack.HUB_PLATFORM_CA
    # Its own API calls go where every node pulls: pull_address, over https.
    client = RegistryClient(inside, credentials=Credentials("hubstack-pull", "x"))
    assert client.base_url == "https://10.1.2.3:25991/v2"
    assert client.session.verify == swarm_stack.HUB_PLATFORM_CA
    # The push instance on the manager's loopback stays plain HTTP, as on one host.
    assert RegistryClient(swarm_cfg).base_url == "http://127.0.0.1:25990/v2"
    # One host: the hub reaches the read-only instance by its service name, plain HTTP.
    single = parse_config({**swarm_cfg.model_dump(mode="json"), "cluster": {"mode": "single"}})
    assert parse_config(stack.hub_config(single)).registry_api_address == "registry-pull:5000"


def test_the_platform_ca_is_used_even_where_requests_ca_bundle_is_set(swarm_cfg, monkeypatch):
    """Our images set REQUESTS_CA_BUNDLE, which requests lets override a session's verify:
    the registry client must pass the platform CA with each request."""
    monkeypatch.setenv("REQUESTS_CA_BUNDLE", "/nonexistent/bundle.pem")
    seen = {}

    def request(method, url, **kw):
        seen.update(kw)
        raise requests.ConnectionError("stop here")

    inside = parse_config(stack.hub_config(swarm_cfg))
    client = RegistryClient(inside, credentials=Credentials("hubstack-pull", "x"))
    monkeypatch.setattr(client.session, "request", request)
    assert not client.ping()
    assert seen["verify"] == swarm_stack.HUB_PLATFORM_CA


class RecordingSwarm:
    """The few manager API calls `hubstack down` makes, over fixed objects; records removals.
    (The real stack's down is tested on the harness in test_swarm_stack.py, without Spark.)"""

    def __init__(self, net: str):
        spark = {spark_cluster.COMPONENT_KEY: spark_cluster.COMPONENT_VALUE}
        mine = {PLATFORM_LABEL: net}
        self.objects = {
            "service": [
                {"ID": "s1", "Spec": {"Name": f"{net}-nb-alice", "Labels": mine}},
                {"ID": "s2", "Spec": {"Name": f"{net}-nb-alice-home", "Labels": mine}},
                {"ID": "s3", "Spec": {"Name": f"{net}-nb-alice-spark-master",
                                      "Labels": {**mine, **spark}}},
            ],
            "secret": [
                {"ID": "x1", "Spec": {"Name": f"{net}-nb-alice-spark-abc"}},
                {"ID": "x2", "Spec": {"Name": "someone-elses"}},
            ],
            "network": [
                {"Id": "n1", "Name": f"{net}-user-alice", "Labels": mine},
                {"Id": "n2", "Name": "other-platform-user-bob",
                 "Labels": {PLATFORM_LABEL: "other"}},
            ],
            "config": [{"ID": "c1", "Spec": {"Name": f"{net}-nb-alice-passwd-1"}}],
        }  # fmt: skip
        self.removed: list[str] = []

    def services(self, filters=None):
        return self.objects["service"]

    def secrets(self, filters=None):
        return self.objects["secret"]

    def networks(self, filters=None, names=None):
        return self.objects["network"]

    def configs(self, filters=None):
        return self.objects["config"]

    def remove_service(self, oid):
        self.removed.append(oid)

    remove_secret = remove_network = remove_config = remove_service


def test_down_removes_the_analysts_spark_secrets_and_networks_and_names_only_servers(swarm_cfg):
    api = RecordingSwarm(swarm_cfg.hub.network)
    lines = swarm_stack.stop_servers(swarm_cfg, api)
    assert lines == [f"stopped {swarm_cfg.hub.network}-nb-alice"]
    assert sorted(api.removed) == ["c1", "n1", "s1", "s2", "s3", "x1"]
    servers = [s["Spec"]["Name"] for s in api.services() if swarm_stack.is_server(s)]
    assert servers == [f"{swarm_cfg.hub.network}-nb-alice"]

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
    path = swarm_stack.render(swarm_cfg, stack.compose_model(swarm_cfg), "node-up-runs-on")
    assert path == swarm_cfg.state_dir / "hub" / "stack.yaml"
    data = yaml.safe_load(path.read_text())
    services = data["services"]
    # The hub is no service of the stack: a plain container beside it (hub_container_spec).
    assert sorted(services) == ["registry", "registry-pull", "registry-users"]
    for name, s in services.items():
        # On the manager `up` runs on (their storage is a local volume there, the push
        # instance on its loopback), not on whichever manager Swarm picks.
        assert s["deploy"]["placement"]["constraints"] == [
            "node.role==manager",
            "node.id==node-up-runs-on",
        ], name
        assert s["deploy"]["endpoint_mode"] == "dnsrr", name
        assert not {"depends_on", "container_name", "restart", "tmpfs"} & set(s), name
        assert all(p["mode"] == "host" and "host_ip" not in p for p in s["ports"]), name
    # One overlay, attachable: the hub's container joins it. No network shared by servers:
    # each analyst's is their own (the spawner's).
    assert data["networks"] == {
        "hubstack": {"name": "hubstack", "driver": "overlay", "attachable": True}
    }
    # Secrets: Swarm secrets named by their content, from the same files; only those the
    # services use (the hub's are files in its container).
    assert set(data["secrets"]) == {"registry_tls_cert", "registry_tls_key"}
    cert = data["secrets"]["registry_tls_cert"]
    content = swarm_cfg.registry_tls_cert_file.read_bytes()
    assert cert["name"] == swarm_stack.secret_name("hubstack", "registry_tls_cert", content)
    # Readable by the service's root only.
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


def test_the_hub_is_a_plain_container_made_from_its_compose_service(swarm_cfg, monkeypatch):
    monkeypatch.setenv("DOCKER_HOST", "unix:///run/manager/docker.sock")
    model = stack.compose_model(swarm_cfg)
    swarm_stack.render(swarm_cfg, model)
    hub = swarm_stack.hub_container_spec(swarm_cfg, model, swarm_stack.engine_socket())
    assert hub.name == "hubstack-hub"
    # Pulled by the manager from the read-only instance, as every node pulls.
    assert hub.image == "10.1.2.3:25991/hubstack/hub:latest"
    # Published as single mode publishes it: on hub.host, at hub.port.
    assert hub.ports == {"8000/tcp": ("127.0.0.1", 8000)}
    # On the platform's overlay as `hub` (the registries' names); analysts' networks are
    # joined by the spawner at each start.
    assert hub.networks == {"hubstack": ["hub"]}
    # The spawner learns its own container from the environment `up` sets.
    assert hub.environment[swarm_stack.HUB_CONTAINER_ENV] == "hubstack-hub"
    mounts = {m["target"]: m for m in hub.mounts}
    # The manager's engine, the database in the volume the stack's hub had.
    assert mounts["/var/run/docker.sock"]["source"] == "/run/manager/docker.sock"
    assert mounts["/srv/jupyterhub"] == {
        "type": "volume", "source": "hubstack_hub-data", "target": "/srv/jupyterhub",
        "read_only": False,
    }  # fmt: skip
    # Secrets as compose mounts them on one host: the 0600 files, read-only.
    cookie = mounts["/run/secrets/cookie_secret"]
    assert cookie["source"] == str(swarm_cfg.secrets_dir / "jupyterhub-cookie-secret")
    assert cookie["read_only"] is True
    assert (swarm_cfg.secrets_dir / "jupyterhub-cookie-secret").stat().st_mode & 0o077 == 0
    for key in ("proxy_token", "crypt_key", "registry_pull_credentials"):
        assert mounts[f"/run/secrets/{key}"]["read_only"] is True, key
    assert "/run/jupyterhub" in hub.tmpfs
    assert hub.healthcheck["interval"] == 2 * 10**9 and hub.healthcheck["retries"] == 60
    assert swarm_stack.nanoseconds("1m30s") == 90 * 10**9
    with pytest.raises(CommandError, match="not a duration"):
        swarm_stack.nanoseconds("soon")


def test_the_hub_calls_the_read_only_registry_over_tls_trusting_the_platform_ca(swarm_cfg):
    # The hub's container has the platform CA where its copy of the config looks for it.
    model = stack.compose_model(swarm_cfg)
    swarm_stack.render(swarm_cfg, model)
    hub = swarm_stack.hub_container_spec(swarm_cfg, model)
    ca = [m for m in hub.mounts if m["target"] == swarm_stack.HUB_PLATFORM_CA]
    assert ca == [
        {"type": "bind", "source": str(swarm_cfg.tls_ca_cert_file),
         "target": swarm_stack.HUB_PLATFORM_CA, "read_only": True}
    ]  # fmt: skip
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

    def networks(self, filters=None, names=None, ids=None):
        return [n for n in self.objects["network"] if n["Id"] not in self.removed]

    def configs(self, filters=None):
        return self.objects["config"]

    def remove_service(self, oid):
        self.removed.append(oid)

    remove_secret = remove_network = remove_config = remove_service

    def disconnect_container_from_network(self, container, net, force=False):
        self.removed.append(f"{container} off {net}")


def test_down_removes_the_analysts_spark_secrets_and_networks_and_names_only_servers(swarm_cfg):
    api = RecordingSwarm(swarm_cfg.hub.network)
    lines = swarm_stack.stop_servers(swarm_cfg, api)
    assert lines == [f"stopped {swarm_cfg.hub.network}-nb-alice"]
    assert sorted(api.removed) == ["c1", "hubstack-hub off n1", "n1", "s1", "s2", "s3", "x1"]
    # The hub's container off the analyst's network before it goes (its attachment counts
    # as a task on it), after the services.
    order = api.removed
    assert order.index("s1") < order.index("hubstack-hub off n1") < order.index("n1")
    servers = [s["Spec"]["Name"] for s in api.services() if swarm_stack.is_server(s)]
    assert servers == [f"{swarm_cfg.hub.network}-nb-alice"]

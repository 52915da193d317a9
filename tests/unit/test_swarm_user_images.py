"""Per-user images in swarm mode: the Swarm spawner takes the single-host path
(HubstackSpawner._user_image) and runs what it gives, the server's service and a Spark
profile's cluster alike; each service carries the account of its own image's registry only;
the per-user images' instance serves TLS to every node, which trusts it as the read-only
one. The real build, push and pull on a worker run in
tests/integration/test_swarm_spawner.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import pytest
import yaml
from tornado import web

from hubstack import nodes, stack, swarm_stack
from hubstack.config import parse_config
from hubstack.hub import service_spec
from hubstack.hub.swarm_spawner import HubstackSwarmSpawner
from hubstack.images import user as user_images
from hubstack.registry import (
    PULL,
    USERS,
    RegistryClient,
    auth_config,
    node_ca_paths,
    registry_certificate,
    serves_tls,
)
from hubstack.tls import certificate_names

IDENT = {"uid": 23456, "gid": 23456, "groups": [23456], "home": "/home/alice"}
PULL_ADDRESS = "10.1.2.3:25991"
USERS_ADDRESS = "10.1.2.3:25992"
BLESSED = f"{PULL_ADDRESS}/hubstack/notebook@sha256:" + "a" * 64
OWN = f"{USERS_ADDRESS}/hubstack/user/alice@sha256:" + "b" * 64


def swarm_cfg(tmp_path, **extra):
    data = {
        "state_dir": str(tmp_path),
        "registry": {
            "address": "127.0.0.1:25990",
            "pull_address": PULL_ADDRESS,
            "users_address": USERS_ADDRESS,
        },
        "cluster": {"mode": "swarm"},
        "hub": {"network": "hs"},
    }
    for key, value in extra.items():
        data[key] = {**data.get(key, {}), **value}
    return parse_config(data)


class Manager:
    """The manager API calls a start makes before its service; records them."""

    def __init__(self):
        self.calls: list[tuple] = []

    def login(self, username, password, registry):
        self.calls.append(("login", username, registry))

    def __getattr__(self, name):
        def record(*args, **kw):
            self.calls.append((name, args))
            return []

        return record


def spawner(monkeypatch, cfg, manager: Manager, options: dict | None = None):
    monkeypatch.setattr(HubstackSwarmSpawner, "_client", manager)
    monkeypatch.setattr(HubstackSwarmSpawner, "_logged_in", set())
    s = HubstackSwarmSpawner(platform=cfg, cmd=["sleep", "infinity"])
    s.user = SimpleNamespace(name="alice", url="/user/alice/", groups=[], id=1)
    s.hub = SimpleNamespace(
        api_url="http://hub:8081/hub/api",
        base_url="/hub/",
        url="http://hub:8081/hub/",
        public_host="",
    )
    s.user_options = {"profile": "default", **(options or {})}

    async def identity(self):
        return dict(IDENT)

    async def resolve(self, ref):
        return BLESSED

    monkeypatch.setattr(HubstackSwarmSpawner, "_identity", identity)
    monkeypatch.setattr(HubstackSwarmSpawner, "_resolve_digest", resolve)
    return s


def test_a_refused_spec_is_a_400_with_the_plain_option_before_anything_on_the_swarm(
    tmp_path, monkeypatch
):
    cfg = swarm_cfg(tmp_path)
    path = user_images.env_file(cfg, "alice")
    path.parent.mkdir(parents=True)
    path.write_text("pip: ['--index-url https://evil.example/simple']\n")
    manager = Manager()
    s = spawner(monkeypatch, cfg, manager)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(s.start())
    assert refused.value.status_code == 400
    assert refused.value.log_message.startswith("your packages are refused: ")
    assert "pip options" in refused.value.log_message
    assert "Start without my own packages" in refused.value.log_message
    assert manager.calls == []  # no login, config, service or network


def test_a_hostile_form_is_refused_and_nothing_is_written(tmp_path, monkeypatch):
    cfg = swarm_cfg(tmp_path, user_images={"form": True})
    manager = Manager()
    s = spawner(monkeypatch, cfg, manager, {"packages": "cowsay==6.1\n--index-url https://x"})
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(s.start())
    assert refused.value.status_code == 400
    assert not user_images.env_file(cfg, "alice").exists()
    assert manager.calls == []


class Stop(Exception):
    """Ends a start once its service request is made (the test reads that request)."""


def _until_the_request(monkeypatch, seen: dict) -> None:
    def accounts(self, image):
        seen.setdefault("accounts_of", []).append(image)
        return "", ""

    async def prepare_home(self, profile, request, home):
        seen["request"] = request
        raise Stop

    monkeypatch.setattr(HubstackSwarmSpawner, "_read_image_accounts", accounts)
    monkeypatch.setattr(HubstackSwarmSpawner, "_ensure_configs", lambda self, configs: [])
    monkeypatch.setattr(HubstackSwarmSpawner, "_remove_configs", lambda self, keep=None: None)
    monkeypatch.setattr(HubstackSwarmSpawner, "_prepare_home", prepare_home)


@pytest.mark.parametrize("plain", [False, True])
def test_the_server_runs_the_per_user_image_with_the_users_account(tmp_path, monkeypatch, plain):
    """The single-host path gives the image (here: stands in for the build); the service
    runs it by digest, and the manager's client is logged in to registry-users with the
    users account, which create_service then sends for that image's registry alone.
    `plain: true` starts on the profile's image, with the pull account."""
    cfg = swarm_cfg(tmp_path)
    user_images.save_env(cfg, "alice", user_images.UserEnv(pip=("cowsay==6.1",)))
    asked: list[tuple] = []

    async def own_image(self, profile, tag):
        asked.append((profile.name, tag, self.image))
        return None if self._options().plain else OWN

    monkeypatch.setattr(HubstackSwarmSpawner, "_user_image", own_image)
    seen: dict = {}
    _until_the_request(monkeypatch, seen)
    manager = Manager()
    s = spawner(monkeypatch, cfg, manager, {"plain": True} if plain else {})
    with pytest.raises(Stop):
        asyncio.run(s.start())
    # Asked with the profile's image resolved first: the parent it is built FROM.
    assert asked == [("default", cfg.hub.notebook_image_tag, BLESSED)]
    # (In the hub's copy of the config the blessed images' account is the pull account.)
    image, account, address = (
        (BLESSED, auth_config(cfg)["username"], PULL_ADDRESS)
        if plain
        else (OWN, cfg.registry.users_username, USERS_ADDRESS)
    )
    assert seen["request"].image == image
    spec = service_spec.service_spec(seen["request"])
    assert spec["task_template"]["ContainerSpec"]["Image"] == image
    assert seen["accounts_of"] == [image]
    assert manager.calls[0] == ("login", account, address)


def test_a_spark_cluster_runs_the_per_user_image_and_resolves_no_executor(tmp_path, monkeypatch):
    cfg = swarm_cfg(tmp_path)
    manager = Manager()
    s = spawner(monkeypatch, cfg, manager)
    s._ident = dict(IDENT)
    resolved: list[str] = []

    async def resolve(self, ref):
        resolved.append(ref)
        return BLESSED

    async def no_cores(self):
        return None

    monkeypatch.setattr(HubstackSwarmSpawner, "_resolve_digest", resolve)
    monkeypatch.setattr(HubstackSwarmSpawner, "_reserve_spark_cores", no_cores)
    monkeypatch.setattr(HubstackSwarmSpawner, "_read_image_accounts", lambda self, i: ("", ""))
    monkeypatch.setattr(
        HubstackSwarmSpawner, "_ensure_configs", lambda self, configs: [("id", c) for c in configs]
    )
    monkeypatch.setattr(HubstackSwarmSpawner, "_ensure_secret", lambda self, secret: "sid")
    request = service_spec.ServiceRequest(
        name="hs-nb-alice",
        image=OWN,
        user_name="alice",
        profile_name="spark",
        ident=dict(IDENT),
        command=["jupyterhub-singleuser"],
        env={},
        labels={},
        cpu_limit=1.0,
        mem_limit="1G",
        reservation_fraction=0.25,
        pids_limit=512,
        constraints=[],
        networks=["hs-user-alice"],
    )
    profile = cfg.profile("spark")
    server, cluster = asyncio.run(s._spark_requests(profile, request, "stable", OWN))
    assert server.image == OWN
    assert cluster and all(req.image == OWN for req in cluster)
    assert resolved == []  # no spark-executor looked up: the analyst's image is FROM it
    assert ("login", cfg.registry.users_username, USERS_ADDRESS) in manager.calls


def test_every_node_trusts_one_certificate_for_both_instances_it_pulls_from(tmp_path):
    cfg = swarm_cfg(
        tmp_path, registry={"pull_address": "10.1.2.3:25991", "users_address": "r.example:5002"}
    )
    assert serves_tls(cfg, cfg.registry.pull_address) and serves_tls(cfg, "r.example:5002")
    assert not serves_tls(cfg, cfg.registry.address)  # the push instance: the manager's loopback
    issued = registry_certificate(cfg, USERS)
    assert certificate_names(issued.certificate) == {"10.1.2.3", "r.example"}
    assert not registry_certificate(cfg, PULL).reissued  # the same one serves both
    assert node_ca_paths(cfg) == [
        "/etc/docker/certs.d/10.1.2.3:25991/ca.crt",
        "/etc/docker/certs.d/r.example:5002/ca.crt",
    ]
    # On one host nothing changes: plain HTTP on loopback, one name per certificate.
    single = parse_config({"state_dir": str(tmp_path / "one")})
    assert not serves_tls(single, single.registry.users_address)
    # The hub's client for the users instance: its address over TLS with the platform CA.
    hub = parse_config(stack.hub_config(cfg))
    users = RegistryClient(hub, credentials=None, role=USERS)
    assert users.base_url == "https://r.example:5002/v2"
    assert users.session.verify == swarm_stack.HUB_PLATFORM_CA
    assert auth_config(hub, USERS)["serveraddress"] == "r.example:5002"


def test_the_stack_serves_the_users_instance_over_tls_like_the_read_only_one(tmp_path):
    cfg = swarm_cfg(tmp_path)
    stack.ensure_secrets(cfg)
    stack.render_env(cfg)
    path = swarm_stack.render(cfg, stack.compose_model(cfg), "node-1")
    services = yaml.safe_load(path.read_text())["services"]
    for name in ("registry-pull", "registry-users"):
        s = services[name]
        assert s["environment"]["REGISTRY_HTTP_TLS_CERTIFICATE"].endswith("registry.pem"), name
        assert {r["source"] for r in s["secrets"]} >= {"registry_tls_cert", "registry_tls_key"}
    assert "REGISTRY_HTTP_TLS_CERTIFICATE" not in (services["registry"].get("environment") or {})


def test_a_joining_node_trusts_both_instances(tmp_path):
    cfg = swarm_cfg(tmp_path)

    class Client:
        api = None
        swarm = SimpleNamespace(reload=lambda: None, attrs={"JoinTokens": {"Worker": "TOKEN"}})

        def info(self):
            return {"Swarm": {"ControlAvailable": True, "RemoteManagers": [{"Addr": "m:2377"}]}}

    script = nodes.join_script(cfg, Client())
    for ca in node_ca_paths(cfg):
        assert f"cat > '{ca}' <<'HUBSTACK_CA'" in script
    assert script.count("BEGIN CERTIFICATE") == 2
    assert "docker swarm join --token 'TOKEN' 'm:2377'" in script


def test_up_warns_when_the_users_instance_is_the_managers_loopback(tmp_path):
    assert stack.users_address_warning(swarm_cfg(tmp_path)) is None
    loopback = swarm_cfg(tmp_path, registry={"users_address": "127.0.0.1:25992"})
    warning = stack.users_address_warning(loopback)
    assert warning is not None
    assert "registry.users_address 127.0.0.1:25992 is this manager's loopback" in warning
    assert PULL_ADDRESS in warning

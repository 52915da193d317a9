"""Registry roles: a push account for the builder, a pull-only account for the hub and the
nodes, a users account for the hub's per-user images, each generated once with mode 0600,
each instance's htpasswd holding only its own."""

from __future__ import annotations

import json
import stat

import bcrypt
import pytest
import yaml

from hubstack.config import ConfigError, parse_config
from hubstack.errors import CommandError
from hubstack.registry import (
    HTPASSWD_ROUNDS,
    PULL,
    PULL_INSTANCE_ENV,
    PUSH,
    USERS,
    Credentials,
    RegistryClient,
    auth_config,
    htpasswd_file,
    load_credentials,
    node_ca_path,
    registry_certificate,
    registry_container_spec,
    role_of,
)
from hubstack.stack import compose_env, ensure_secrets, hub_config
from hubstack.tls import certificate_names, platform_ca


def make_cfg(tmp_path, **registry):
    return parse_config({"state_dir": str(tmp_path), "registry": registry})


def mode(path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def test_first_run_makes_two_private_accounts_each_instance_knowing_only_its_own(tmp_path):
    cfg = make_cfg(tmp_path)
    ensure_secrets(cfg)
    push, pull = load_credentials(cfg, role=PUSH), load_credentials(cfg, role=PULL)
    assert (push.username, pull.username) == ("hubstack", "hubstack-pull")
    assert push.password != pull.password
    for path in (
        cfg.registry_credentials_file,
        cfg.registry_pull_credentials_file,
        htpasswd_file(cfg, PUSH),
        htpasswd_file(cfg, PULL),
    ):
        assert mode(path) == 0o600, path
    for role, creds, other in ((PUSH, push, pull), (PULL, pull, push)):
        lines = htpasswd_file(cfg, role).read_text().splitlines()
        assert len(lines) == 1
        user, _, hashed = lines[0].partition(":")
        assert user == creds.username
        # The cheapest bcrypt cost: the registry checks it at every request.
        assert hashed.startswith(f"$2b${HTPASSWD_ROUNDS:02d}$"), hashed
        assert bcrypt.checkpw(creds.password.encode(), hashed.encode())
        assert user != other.username


def test_up_on_an_install_from_before_the_pull_role_adds_it_and_keeps_the_push_account(
    tmp_path,
):
    cfg = make_cfg(tmp_path)
    # What an older `hubstack up` left: the push account and its htpasswd, nothing else.
    old = {"username": "hubstack", "password": "the-old-push-password"}
    cfg.secrets_dir.mkdir(mode=0o700)
    cfg.registry_credentials_file.write_text(json.dumps(old))
    cfg.registry_credentials_file.chmod(0o600)
    old_htpasswd = htpasswd_file(cfg, PUSH).read_text()
    assert not cfg.registry_pull_credentials_file.exists()

    ensure_secrets(cfg)
    assert json.loads(cfg.registry_credentials_file.read_text()) == old
    assert htpasswd_file(cfg, PUSH).read_text() == old_htpasswd  # not even re-hashed
    pull = load_credentials(cfg, role=PULL)
    assert pull.username == "hubstack-pull" and mode(cfg.registry_pull_credentials_file) == 0o600
    # A second `up` changes nothing.
    before = cfg.registry_pull_credentials_file.read_text()
    ensure_secrets(cfg)
    assert cfg.registry_pull_credentials_file.read_text() == before


def test_each_role_authenticates_at_its_own_address(tmp_path):
    cfg = make_cfg(tmp_path, address="127.0.0.1:6100")
    assert auth_config(cfg, PUSH)["serveraddress"] == "127.0.0.1:6100"
    pull = auth_config(cfg, PULL)
    assert pull["serveraddress"] == "127.0.0.1:6101"
    assert pull["username"] == "hubstack-pull"


def test_the_hub_gets_only_the_pull_account_and_the_read_only_address(tmp_path):
    cfg = make_cfg(tmp_path, pull_address="127.0.0.1:7001")
    ensure_secrets(cfg)
    hub = hub_config(cfg)
    assert hub["registry"]["address"] == "127.0.0.1:7001"
    assert hub["registry"]["credentials_file"] == "/run/secrets/registry_pull_credentials"
    env = compose_env(cfg)
    assert env["HUBSTACK_REGISTRY_PULL_CREDENTIALS"] == str(cfg.registry_pull_credentials_file)
    assert env["HUBSTACK_REGISTRY_PULL_ADDRESS"] == "127.0.0.1:7001"
    assert str(cfg.registry_credentials_file) not in env.values()
    # Everything the hub names, resolves and pulls is under the read-only address.
    in_hub = parse_config(hub)
    assert in_hub.image_ref("notebook").startswith("127.0.0.1:7001/")
    assert auth_config(in_hub)["serveraddress"] == "127.0.0.1:7001"
    # The hub's own API calls reach the instances by service name: inside its container
    # the published 127.0.0.1 addresses are its own loopback.
    creds = Credentials("u", "p")
    assert RegistryClient(in_hub, creds).address == "registry-pull:5000"
    assert RegistryClient(in_hub, creds, role=USERS).address == "registry-users:5000"
    assert RegistryClient(cfg, creds, role=USERS).address == cfg.registry.users_address


def test_the_pull_instance_is_read_only_on_shared_storage(tmp_path):
    cfg = make_cfg(tmp_path)
    push = registry_container_spec(cfg, "r", "vol", PUSH)
    pull = registry_container_spec(cfg, "r-pull", "vol", PULL)
    assert push["ports"]["5000/tcp"] == ("127.0.0.1", 5000)
    assert pull["ports"]["5000/tcp"] == ("127.0.0.1", 5001)
    assert pull["volumes"]["vol"]["mode"] == "ro" and push["volumes"]["vol"]["mode"] == "rw"
    assert pull["environment"] == PULL_INSTANCE_ENV and not push["environment"]
    config_file = str(cfg.source_root / "registry" / "config.yml")
    assert config_file in push["volumes"] and config_file in pull["volumes"]  # one declaration
    assert str(htpasswd_file(cfg, PULL)) in pull["volumes"]
    assert str(htpasswd_file(cfg, PUSH)) not in pull["volumes"]


def test_compose_gives_the_pull_instance_the_same_overrides(tmp_path):
    compose = yaml.safe_load((make_cfg(tmp_path).source_root / "compose/compose.yaml").read_text())
    service = compose["services"]["registry-pull"]
    assert service["environment"] == PULL_INSTANCE_ENV
    assert "registry-data:/var/lib/registry:ro" in service["volumes"]
    assert "registry_pull_credentials" in compose["services"]["hub"]["secrets"]
    assert "registry_credentials" not in compose["secrets"]


def test_pull_address_defaults_to_the_next_port_and_must_differ(tmp_path):
    assert make_cfg(tmp_path, address="10.1.2.3:6000").registry.pull_address == "10.1.2.3:6001"
    same = make_cfg(tmp_path, address="127.0.0.1:6000", pull_address="127.0.0.1:6000")
    with pytest.raises(CommandError, match="registry.pull_address: must differ from"):
        compose_env(same)  # `hubstack up` starts both instances: they need two ports
    with pytest.raises(ConfigError, match="registry.pull_address: must be host:port"):
        make_cfg(tmp_path, pull_address="nowhere")


def test_the_hub_sees_the_users_folder_but_not_the_secrets_in_it(tmp_path):
    # Default layout: users.yaml beside secrets/ in state_dir, so the hub's users mount would
    # show every secret; an empty tmpfs covers that folder in the hub.
    cfg = make_cfg(tmp_path)
    env = compose_env(cfg)
    assert env["HUBSTACK_USERS_DIR"] == str(tmp_path)
    assert env["HUBSTACK_HUB_HIDDEN_SECRETS"] == "/etc/hubstack/users/secrets"
    elsewhere = parse_config(
        {"state_dir": str(tmp_path), "hub": {"users_file": str(tmp_path / "u" / "users.yaml")}}
    )
    assert compose_env(elsewhere)["HUBSTACK_HUB_HIDDEN_SECRETS"] == "/run/hubstack-nothing-hidden"
    for bad, says in (
        ({"hub": {"users_file": str(tmp_path / "secrets" / "users.yaml")}}, "inside the secrets"),
        ({"ci": {"token_file": str(tmp_path / "ci-token")}}, "keep secrets in"),
        ({"registry": {"credentials_file": str(tmp_path / "r.json")}}, "keep secrets in"),
    ):
        with pytest.raises(CommandError, match=says):
            compose_env(parse_config({"state_dir": str(tmp_path), **bad}))


def test_the_users_instance_has_its_own_account_storage_and_port(tmp_path):
    cfg = make_cfg(tmp_path, address="127.0.0.1:6200")
    ensure_secrets(cfg)
    users = load_credentials(cfg, role=USERS)
    assert users.username == "hubstack-users"
    assert users.password not in {load_credentials(cfg, role=r).password for r in (PUSH, PULL)}
    assert mode(cfg.registry_users_credentials_file) == 0o600
    assert mode(htpasswd_file(cfg, USERS)) == 0o600
    lines = htpasswd_file(cfg, USERS).read_text().splitlines()
    assert len(lines) == 1 and lines[0].startswith("hubstack-users:")
    assert auth_config(cfg, USERS)["serveraddress"] == "127.0.0.1:6202"  # port + 2
    spec = registry_container_spec(cfg, "r-users", "users-vol", USERS)
    assert spec["ports"]["5000/tcp"] == ("127.0.0.1", 6202)
    assert spec["volumes"]["users-vol"]["mode"] == "rw" and not spec["environment"]
    assert str(cfg.source_root / "registry" / "config.yml") in spec["volumes"]
    assert str(htpasswd_file(cfg, USERS)) in spec["volumes"]
    assert str(htpasswd_file(cfg, PUSH)) not in spec["volumes"]


def test_up_on_an_install_from_before_the_users_role_adds_it_and_keeps_the_others(tmp_path):
    cfg = make_cfg(tmp_path)
    for role in (PUSH, PULL):
        load_credentials(cfg, role=role)
    kept = (cfg.registry_credentials_file, cfg.registry_pull_credentials_file)
    before = {f: f.read_text() for f in kept}
    assert not cfg.registry_users_credentials_file.exists()
    ensure_secrets(cfg)
    assert {f: f.read_text() for f in before} == before
    assert load_credentials(cfg, create=False, role=USERS).username == "hubstack-users"


def test_the_hub_pushes_per_user_images_only_to_the_users_instance(tmp_path):
    cfg = make_cfg(tmp_path, pull_address="127.0.0.1:7001", users_address="127.0.0.1:7002")
    ensure_secrets(cfg)
    hub = hub_config(cfg)
    assert hub["registry"]["users_credentials_file"] == "/run/secrets/registry_users_credentials"
    env = compose_env(cfg)
    assert env["HUBSTACK_REGISTRY_USERS_ADDRESS"] == "127.0.0.1:7002"
    assert env["HUBSTACK_REGISTRY_USERS_CREDENTIALS"] == str(cfg.registry_users_credentials_file)
    in_hub = parse_config(hub)
    own = in_hub.user_image_repository("user/alice")
    assert own == "127.0.0.1:7002/hubstack/user/alice"
    assert role_of(in_hub, f"{own}:abc") == USERS
    assert auth_config(in_hub, role_of(in_hub, f"{own}:abc"))["serveraddress"] == "127.0.0.1:7002"
    # The blessed images stay under the read-only address and its pull account.
    assert role_of(in_hub, in_hub.image_ref("notebook")) == PUSH
    assert auth_config(in_hub)["serveraddress"] == "127.0.0.1:7001"


def test_compose_runs_the_users_instance_on_its_own_volume_and_gives_the_hub_its_account(
    tmp_path,
):
    compose = yaml.safe_load((make_cfg(tmp_path).source_root / "compose/compose.yaml").read_text())
    service = compose["services"]["registry-users"]
    assert "registry-users-data:/var/lib/registry" in service["volumes"]
    assert not any("registry-data:" in v for v in service["volumes"])
    assert "../registry/config.yml:/etc/docker/registry/config.yml:ro" in service["volumes"]
    assert any("registry-users.htpasswd:/auth/htpasswd" in v for v in service["volumes"])
    assert "registry_users_credentials" in compose["services"]["hub"]["secrets"]
    assert "registry-users" in compose["services"]["hub"]["depends_on"]


def test_users_address_must_differ_from_the_other_instances(tmp_path):
    for clash in ("127.0.0.1:6000", "127.0.0.1:6001"):
        cfg = make_cfg(tmp_path, address="127.0.0.1:6000", users_address=clash)
        with pytest.raises(CommandError, match="registry.users_address: must differ"):
            compose_env(cfg)
    with pytest.raises(ConfigError, match="registry.users_address: must be host:port"):
        make_cfg(tmp_path, users_address="nowhere")


def test_nodes_get_a_tls_pull_instance_with_a_certificate_from_the_platform_ca(tmp_path):
    cfg = make_cfg(tmp_path, pull_address="10.20.0.5:5001")
    issued = registry_certificate(cfg)
    assert issued.reissued and certificate_names(issued.certificate) == {"10.20.0.5"}
    assert issued.certificate.issuer == platform_ca(cfg).certificate.subject
    assert mode(issued.key_file) == 0o600 and issued.key_file.parent == cfg.secrets_dir
    # Kept while it fits: nodes trust the CA, but a restart should not churn certificates.
    assert not registry_certificate(cfg).reissued
    assert node_ca_path(cfg) == "/etc/docker/certs.d/10.20.0.5:5001/ca.crt"

    spec = registry_container_spec(cfg, "r-pull", "vol", PULL, certificate=issued)
    # Published on the nodes' address itself, HTTPS only, with the chain and key read-only.
    assert spec["ports"]["5000/tcp"] == ("10.20.0.5", 5001)
    env = spec["environment"]
    assert env["REGISTRY_HTTP_TLS_CERTIFICATE"].startswith("/etc/docker/registry/tls/")
    assert spec["volumes"][str(issued.cert_file)] == {
        "bind": env["REGISTRY_HTTP_TLS_CERTIFICATE"],
        "mode": "ro",
    }
    assert spec["volumes"][str(issued.key_file)] == {
        "bind": env["REGISTRY_HTTP_TLS_KEY"],
        "mode": "ro",
    }
    assert PULL_INSTANCE_ENV.items() <= env.items()
    # The module's constant is not changed by the TLS settings of one spec.
    assert "REGISTRY_HTTP_TLS_KEY" not in PULL_INSTANCE_ENV


def test_a_registry_named_by_dns_is_published_on_every_address(tmp_path):
    cfg = make_cfg(tmp_path, pull_address="registry.example.org:5001")
    spec = registry_container_spec(cfg, "r-pull", "vol", PULL)
    assert spec["ports"]["5000/tcp"] == ("0.0.0.0", 5001)
    assert certificate_names(registry_certificate(cfg).certificate) == {"registry.example.org"}

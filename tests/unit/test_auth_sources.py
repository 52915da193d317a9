"""auth: the config section (errors name the key), LDAP entries mapped to POSIX records,
the order in which the login form asks its sources, the clear refusals, the accounts
table and `hubstack users list`'s SOURCE column.

The LDAP server itself is exercised for real in tests/integration/test_auth_ldap.py;
here a directory that never answers is a real socket that accepts and stays silent."""

from __future__ import annotations

import asyncio
import io
import os
import socket
import ssl
import threading
from pathlib import Path

import pytest
import yaml
from traitlets.config import Config

from hubstack.cli import main
from hubstack.config import ConfigError, load_config, parse_config
from hubstack.hub import setup
from hubstack.hub.accounts import AccountsTable, accounts_table_for, lookup_account
from hubstack.hub.auth import HubstackAuthenticator
from hubstack.hub.ldap import (
    POSIX_GROUPS,
    DirectoryUnavailable,
    LDAPSource,
    NotInAllowedGroup,
    UnusableAccount,
    authenticator_settings,
    check_home,
    record_from_entry,
)
from hubstack.hub.sources import FileSource, LoginRefused, PasswordSource
from hubstack.hub.users import UserRecord, UsersFile
from hubstack.stack import compose_env, hub_config

CA_PEM = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
TEMPLATE = "uid={username},ou=people,dc=example,dc=org"


def ldap_config(tmp_path, **ldap) -> dict:
    section = {"server": "ldap.example.org", "bind_dn_templates": [TEMPLATE], **ldap}
    auth = {"sources": ["file", "ldap"], "ldap": section}
    return {"state_dir": str(tmp_path / "state"), "auth": auth}


def error_of(data, path="<config>") -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data, path)
    return str(e.value)


# ------------------------------------------------------------------- config


def test_defaults_are_the_users_file_alone():
    cfg = parse_config({})
    assert cfg.auth.sources == ["file"] and cfg.auth.ldap is None


def test_a_minimal_ldap_config_gets_ldaps_on_636(tmp_path):
    ldap = parse_config(ldap_config(tmp_path)).auth.ldap
    assert ldap.tls == "ldaps" and ldap.server_port == 636
    assert parse_config(ldap_config(tmp_path, tls="starttls")).auth.ldap.server_port == 389


@pytest.mark.parametrize(
    "auth, key, words",
    [
        ({"sources": []}, "auth.sources", "at least one"),
        ({"sources": ["file", "file"]}, "auth.sources", "more than once"),
        ({"sources": ["kerberos"]}, "auth.sources.0", "'file', 'ldap' or 'oidc'"),
        ({"sources": ["file", "ldap"]}, "auth", "auth.ldap is not set"),
        ({"ldap": {"bind_dn_templates": [TEMPLATE]}}, "auth.ldap.server", "Field required"),
        ({"ldap": {"server": "x", "bind_dn_templates": [TEMPLATE], "tls": "plain"}},
         "auth.ldap", "insecure_plain"),
        ({"ldap": {"server": "x", "tls": "none", "bind_dn_templates": [TEMPLATE]}},
         "auth.ldap.tls", "'ldaps', 'starttls' or 'plain'"),
        ({"ldap": {"server": "x"}}, "auth.ldap", "either bind_dn_templates"),
        ({"ldap": {"server": "x", "bind_dn_templates": [TEMPLATE], "lookup_dn": True}},
         "auth.ldap", "not both"),
        ({"ldap": {"server": "x", "lookup_dn": True}}, "auth.ldap", "user_search_base"),
        ({"ldap": {"server": "x", "bind_dn_templates": ["uid=bob,dc=x"]}},
         "auth.ldap.bind_dn_templates", "{username}"),
        ({"ldap": {"server": "x", "lookup_dn": True, "user_search_base": "dc=x",
                   "search_user_dn": "cn=hub,dc=x"}}, "auth.ldap", "search_password_file"),
        ({"ldap": {"server": "x", "bind_dn_templates": [TEMPLATE],
                   "attributes": {"uid_number": "uid)(x"}}},
         "auth.ldap.attributes.uid_number", "LDAP attribute name"),
        ({"ldap": {"server": "x", "bind_dn_templates": [TEMPLATE], "port": 0}},
         "auth.ldap.port", "greater than or equal to 1"),
        ({"ldap": {"server": "x", "bind_dn_templates": [TEMPLATE], "bind_password": "pw"}},
         "auth.ldap.bind_password", "unknown key"),
    ],
)  # fmt: skip
def test_bad_auth_config_is_refused_naming_the_key(auth, key, words):
    message = error_of({"auth": auth}, "hub.yaml")
    assert message.startswith(f"hub.yaml: {key}: "), message
    assert words in message


def test_the_ca_file_must_exist_and_hold_a_certificate(tmp_path):
    missing = error_of(ldap_config(tmp_path, ca_file=str(tmp_path / "nope.pem")))
    assert "auth.ldap.ca_file: file" in missing and "does not exist" in missing
    (tmp_path / "junk.pem").write_text("not a certificate")
    assert "holds no PEM certificate" in error_of(
        ldap_config(tmp_path, ca_file=str(tmp_path / "junk.pem"))
    )
    (tmp_path / "ca.pem").write_text(CA_PEM)
    assert parse_config(ldap_config(tmp_path, ca_file=str(tmp_path / "ca.pem"))).auth.ldap.ca_file


def test_the_search_password_is_a_private_file_never_inline(tmp_path):
    secret = tmp_path / "ldap-pw"
    search = {
        "bind_dn_templates": [],
        "lookup_dn": True,
        "user_search_base": "ou=people,dc=example,dc=org",
        "search_user_dn": "cn=hub,dc=example,dc=org",
        "search_password_file": str(secret),
    }
    assert "does not exist" in error_of(ldap_config(tmp_path, **search))
    secret.write_text("s3cret\n")
    secret.chmod(0o644)
    message = error_of(ldap_config(tmp_path, **search))
    assert "auth.ldap.search_password_file" in message and "chmod 600" in message
    assert "s3cret" not in message
    secret.chmod(0o600)
    secret.write_text("\n")
    assert "is empty" in error_of(ldap_config(tmp_path, **search))
    secret.write_text("s3cret\n")
    cfg = parse_config(ldap_config(tmp_path, **search))
    settings = authenticator_settings(cfg.auth.ldap)
    assert settings["lookup_dn"] and settings["lookup_dn_search_password"] == "s3cret"
    assert settings["lookup_dn_search_user"] == "cn=hub,dc=example,dc=org"
    assert "bind_dn_template" not in settings


def test_relative_ldap_paths_are_relative_to_the_config_file(tmp_path):
    (tmp_path / "ca.pem").write_text(CA_PEM)
    path = tmp_path / "hubstack.yaml"
    path.write_text(yaml.safe_dump(ldap_config(tmp_path, ca_file="ca.pem")))
    assert load_config(path).auth.ldap.ca_file == tmp_path / "ca.pem"


def test_tls_modes_map_to_ldapauthenticator_and_always_check_the_certificate(tmp_path):
    (tmp_path / "ca.pem").write_text(CA_PEM)
    for tls, strategy in (("ldaps", "on_connect"), ("starttls", "before_bind")):
        cfg = parse_config(ldap_config(tmp_path, tls=tls, ca_file=str(tmp_path / "ca.pem")))
        settings = authenticator_settings(cfg.auth.ldap)
        assert settings["tls_strategy"] == strategy
        assert settings["tls_kwargs"]["validate"] == ssl.CERT_REQUIRED
        assert settings["tls_kwargs"]["ca_certs_file"] == str(tmp_path / "ca.pem")
        assert settings["bind_dn_template"] == [TEMPLATE]
    plain = parse_config(ldap_config(tmp_path, tls="plain", insecure_plain=True))
    assert authenticator_settings(plain.auth.ldap)["tls_strategy"] == "insecure"


def test_the_hub_gets_the_ca_and_password_mounted_not_the_host_paths(tmp_path):
    (tmp_path / "ca.pem").write_text(CA_PEM)
    secret = tmp_path / "pw"
    secret.write_text("pw\n")
    secret.chmod(0o600)
    cfg = parse_config(
        ldap_config(
            tmp_path,
            ca_file=str(tmp_path / "ca.pem"),
            bind_dn_templates=[],
            lookup_dn=True,
            user_search_base="dc=x",
            search_user_dn="cn=hub,dc=x",
            search_password_file=str(secret),
        )
    )
    ldap = hub_config(cfg)["auth"]["ldap"]
    assert ldap["ca_file"] == "/etc/hubstack/ldap-ca.pem"
    assert ldap["search_password_file"] == "/run/secrets/ldap_search_password"
    env = compose_env(cfg)
    assert env["HUBSTACK_LDAP_CA"] == str(tmp_path / "ca.pem")
    assert env["HUBSTACK_LDAP_SEARCH_PASSWORD"] == str(secret)
    plain = compose_env(parse_config({"state_dir": str(tmp_path / "s2")}))
    assert plain["HUBSTACK_LDAP_CA"] == plain["HUBSTACK_LDAP_SEARCH_PASSWORD"] == "/dev/null"


def test_the_hub_config_wires_the_sources(tmp_path):
    c = Config()
    cfg = parse_config(ldap_config(tmp_path, allowed_groups=["cn=analysts,dc=x"]))
    setup.configure_auth(c, cfg)
    assert c.HubstackAuthenticator.sources == ["file", "ldap"]
    assert c.HubstackAuthenticator.manage_groups is True
    assert c.HubstackLDAPAuthenticator.server_address == "ldap.example.org"
    assert c.HubstackLDAPAuthenticator.allowed_groups == ["cn=analysts,dc=x"]
    auth = HubstackAuthenticator(config=c)
    ldap = auth.source("ldap")
    assert isinstance(ldap, LDAPSource)
    assert ldap.authenticator.server_port == 636
    assert ldap.authenticator.auth_state_attributes == ["uidNumber", "gidNumber", "uid"]
    file_only = Config()
    setup.configure_auth(file_only, parse_config({}))
    assert "manage_groups" not in file_only.HubstackAuthenticator


# ------------------------------------------------------------------- mapping


def entry(**attrs) -> dict:
    base = {"uid": ["carol"], "uidNumber": [30001], "gidNumber": [30001]}
    base.update(attrs)
    return base


def test_an_entry_gives_uid_gid_groups_and_group_names():
    rec = record_from_entry(
        "carol",
        entry(**{POSIX_GROUPS: [("analysts", 31000), ("carol", 30001), ("spark", "31001")]}),
    )
    assert (rec.uid, rec.gid, rec.groups) == (30001, 30001, (31000, 31001))
    assert rec.group_names == ("analysts", "carol", "spark")
    assert rec.source == "ldap" and rec.home == "/home/carol" and not rec.admin


def test_numbers_may_come_as_text():
    rec = record_from_entry("carol", entry(uidNumber=["30002"], gidNumber=["30003"]))
    assert (rec.uid, rec.gid) == (30002, 30003)


def test_attribute_names_are_case_insensitive_as_in_ldap():
    rec = record_from_entry("carol", entry(), uid_attribute="uidnumber", gid_attribute="GIDNUMBER")
    assert (rec.uid, rec.gid) == (30001, 30001)


@pytest.mark.parametrize(
    "attrs, words",
    [
        ({"uidNumber": [500]}, "uidNumber: 500 is below the minimum 1000"),
        ({"gidNumber": [0]}, "gidNumber: 0 (root) is not allowed"),
        ({"uidNumber": [65534]}, "uidNumber: 65534 is nobody"),
        ({"uidNumber": []}, "no single uidNumber"),
        ({"gidNumber": [30001, 30002]}, "no single gidNumber"),
        ({"uidNumber": ["x"]}, "must be an integer"),
    ],
)
def test_an_entry_outside_the_id_rules_is_refused_naming_the_attribute(attrs, words):
    with pytest.raises(ValueError) as e:
        record_from_entry("carol", entry(**attrs))
    assert words in str(e.value)


def test_a_low_group_is_a_jupyterhub_group_but_never_a_supplementary_gid():
    rec = record_from_entry("carol", entry(**{POSIX_GROUPS: [("docker", 999), ("ok", 31000)]}))
    assert rec.groups == (31000,) and rec.group_names == ("docker", "ok")


def test_home_is_the_directorys_only_when_asked():
    attrs = entry(homeDirectory=["/srv/home/carol"])
    assert record_from_entry("carol", attrs).home == "/home/carol"
    assert record_from_entry("carol", attrs, use_home=True).home == "/srv/home/carol"
    with pytest.raises(ValueError, match="system folder"):
        record_from_entry("carol", entry(homeDirectory=["/etc/carol"]), use_home=True)


@pytest.mark.parametrize("bad", ["relative", "/", "/home/../etc", "/home//x", "/usr/x", None])
def test_bad_home_paths_are_refused(bad):
    with pytest.raises(ValueError):
        check_home(bad)


# ------------------------------------------------------------------- sources


class FakeDirectory(PasswordSource):
    """A stand-in directory for the order of sources (the real one: test_auth_ldap.py)."""

    name = "ldap"
    answers: dict = {}
    asked: list = []

    async def verify(self, name, password):
        type(self).asked.append(name)
        answer = self.answers.get((name, password))
        if isinstance(answer, Exception):
            raise answer
        return answer


@pytest.fixture
def hub_auth(tmp_path):
    users = UsersFile(tmp_path / "users.yaml")
    users.add("admin", 1000, 1000, admin=True, password="admin-pw")
    users.add("svc", 1500, 1500, password="svc-pw")
    FakeDirectory.asked = []
    FakeDirectory.answers = {
        ("carol", "carol-pw"): UserRecord(
            "carol", 30001, 30001, (31000,), source="ldap", group_names=("analysts",)
        ),
        ("admin", "directory-admin-pw"): UserRecord("admin", 30009, 30009, source="ldap"),
        ("dan", "dan-pw"): NotInAllowedGroup("dan", ["analysts"]),
        ("eve", "eve-pw"): UserRecord("eve", 1500, 1500, source="ldap"),
    }
    auth = HubstackAuthenticator(
        sources=["file", "ldap"],
        source_classes={"file": FileSource, "ldap": FakeDirectory},
        users_file=str(users.path),
        accounts_file=str(tmp_path / "accounts" / "accounts.yaml"),
    )
    return auth, tmp_path


def login(auth, name, password):
    return asyncio.run(auth.authenticate(None, {"username": name, "password": password}))


def test_a_users_file_account_is_checked_against_the_file_only(hub_auth):
    auth, _ = hub_auth
    model = login(auth, "admin", "admin-pw")
    assert model["admin"] is True and model["groups"] is None
    assert model["auth_state"]["source"] == "file"
    # The directory's "admin" cannot take the local admin's name, whatever its password.
    assert login(auth, "admin", "directory-admin-pw") is None
    assert FakeDirectory.asked == []


def test_other_names_go_to_the_directory_and_are_remembered(hub_auth):
    auth, tmp = hub_auth
    model = login(auth, "carol", "carol-pw")
    assert model["name"] == "carol" and model["admin"] is False
    assert model["groups"] == ["analysts"]
    assert model["auth_state"] == {
        "uid": 30001,
        "gid": 30001,
        "groups": [31000],
        "home": "/home/carol",
        "source": "ldap",
        "group_names": ["analysts"],
    }
    table = AccountsTable(tmp / "accounts" / "accounts.yaml")
    assert table.get("carol") == FakeDirectory.answers[("carol", "carol-pw")]
    assert oct(table.path.stat().st_mode & 0o777) == "0o600"
    assert login(auth, "carol", "wrong") is None


def test_a_refusal_with_a_reason_reaches_the_login_page(hub_auth):
    auth, _ = hub_auth
    with pytest.raises(NotInAllowedGroup) as e:
        login(auth, "dan", "dan-pw")
    assert e.value.status_code == 403
    assert "not in a group allowed to use this hub (analysts)" in e.value.get_message()


def test_a_directory_uid_that_a_users_file_account_has_is_refused(hub_auth):
    auth, _ = hub_auth
    with pytest.raises(LoginRefused) as e:
        login(auth, "eve", "eve-pw")
    assert e.value.status_code == 403 and "UID 1500" in e.value.get_message()


def test_the_order_of_directory_sources_is_kept(tmp_path):
    class First(FakeDirectory):
        name = "first"

        async def verify(self, name, password):
            type(self).asked.append("first")
            raise DirectoryUnavailable("first.example.org:636")

    class Second(FakeDirectory):
        name = "second"

        async def verify(self, name, password):
            type(self).asked.append("second")
            return UserRecord(name, 30005, 30005, source="second")

    FakeDirectory.asked = []
    auth = HubstackAuthenticator(
        sources=["first", "second"], source_classes={"first": First, "second": Second}
    )
    assert login(auth, "zoe", "pw")["auth_state"]["source"] == "second"
    assert FakeDirectory.asked == ["first", "second"]
    # Only the first: its refusal is the answer.
    auth = HubstackAuthenticator(sources=["first"], source_classes={"first": First})
    with pytest.raises(DirectoryUnavailable):
        login(auth, "zoe", "pw")


def test_refresh_keeps_directory_accounts_and_drops_removed_file_accounts(hub_auth):
    auth, tmp = hub_auth

    class User:
        def __init__(self, name, state):
            self.name, self._state = name, state

        async def get_auth_state(self):
            return self._state

    assert asyncio.run(auth.refresh_user(User("carol", {"source": "ldap", "uid": 30001})))
    refreshed = asyncio.run(auth.refresh_user(User("svc", {"source": "file"})))
    assert refreshed["groups"] is None and refreshed["auth_state"]["uid"] == 1500
    UsersFile(tmp / "users.yaml").remove("svc")
    assert asyncio.run(auth.refresh_user(User("svc", {"source": "file"}))) is False
    # Directory no longer listed: its accounts' sessions end too.
    auth.sources = ["file"]
    assert asyncio.run(auth.refresh_user(User("carol", {"source": "ldap"}))) is False


# ------------------------------------------------------------ a silent directory


@pytest.fixture
def silent_server():
    """A TCP server that accepts and never says a word (a directory that hangs)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(8)
    held = []
    stop = threading.Event()

    def accept():
        srv.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(srv.accept()[0])
            except OSError:
                continue

    t = threading.Thread(target=accept, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    for conn in held:
        conn.close()
    srv.close()


def ldap_source(port: int, **extra) -> LDAPSource:
    c = Config()
    c.HubstackLDAPAuthenticator.server_address = "127.0.0.1"
    c.HubstackLDAPAuthenticator.server_port = port
    c.HubstackLDAPAuthenticator.tls_strategy = "on_connect"
    c.HubstackLDAPAuthenticator.bind_dn_template = [TEMPLATE]
    for key, value in extra.items():
        setattr(c.LDAPSource, key, value)
    return LDAPSource(config=c)


def test_a_directory_that_hangs_is_reported_down_within_the_timeout(silent_server):
    source = ldap_source(silent_server, timeout=1.0)
    with pytest.raises(DirectoryUnavailable) as e:
        asyncio.run(source.verify("carol", "pw"))
    assert e.value.status_code == 503
    assert "cannot be reached right now" in e.value.get_message()
    assert "Running servers keep running" in e.value.get_message()


def test_a_directory_that_is_not_listening_is_reported_down():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # closed again: nothing listens there
    with pytest.raises(DirectoryUnavailable):
        asyncio.run(ldap_source(port).verify("carol", "pw"))


def test_a_directory_name_that_does_not_resolve_is_reported_down():
    c = Config()
    c.HubstackLDAPAuthenticator.server_address = "directory.invalid"
    c.HubstackLDAPAuthenticator.bind_dn_template = [TEMPLATE]
    with pytest.raises(DirectoryUnavailable) as e:
        asyncio.run(LDAPSource(config=c).verify("carol", "pw"))
    assert "directory.invalid:389" in e.value.get_message()


def test_names_and_passwords_the_directory_is_never_asked_about():
    source = ldap_source(1)  # nothing could answer on port 1
    for name, password in (("Carol!", "pw"), ("root", "pw"), ("carol", ""), ("carol", "  ")):
        assert asyncio.run(source.verify(name, password)) is None


def test_an_unusable_entry_says_so():
    e = UnusableAccount("carol", "uidNumber: 500 is below the minimum 1000 (hub.min_uid)")
    assert e.status_code == 403 and "cannot be used here" in e.get_message()


# ------------------------------------------------------------ table and list


def test_the_table_round_trips_and_skips_entries_the_rules_now_refuse(tmp_path):
    table = AccountsTable(tmp_path / "accounts.yaml", min_uid=1000)
    rec = UserRecord(
        "carol", 30001, 30001, (31000,), source="ldap", group_names=("analysts",),
        home_directory="/srv/home/carol",
    )  # fmt: skip
    table.record(rec)
    table.record(UserRecord("dave", 30002, 30002, source="ldap"))
    assert table.get("carol") == rec and table.get("dave").home == "/home/dave"
    assert AccountsTable(table.path, min_uid=30002).get("carol") is None
    assert AccountsTable(table.path, min_uid=30002).get("dave") is not None


def test_users_list_shows_where_each_account_came_from(tmp_path, monkeypatch, capsys):
    config = tmp_path / "hubstack.yaml"
    config.write_text(yaml.safe_dump(ldap_config(tmp_path)))
    cfg = load_config(config)
    UsersFile(cfg.users_file).add("admin", 1000, 1000, admin=True, password="pw")
    accounts_table_for(cfg).record(
        UserRecord("carol", 30001, 30001, (31000,), source="ldap", group_names=("analysts",))
    )
    monkeypatch.setattr("sys.stdin", io.StringIO(""))
    assert main(["-c", str(config), "users", "list"]) == 0
    lines = capsys.readouterr().out.splitlines()
    assert lines[0].split()[:2] == ["NAME", "SOURCE"]
    admin = next(line for line in lines if line.startswith("admin"))
    carol = next(line for line in lines if line.startswith("carol"))
    assert admin.split()[:4] == ["admin", "file", "1000", "1000"]
    assert carol.split()[:4] == ["carol", "ldap", "30001", "30001"]
    assert "31000 (analysts)" in carol and "last login" in carol
    assert lookup_account(cfg, "carol").uid == 30001
    # An admin can give a directory account its own packages too.
    assert main(["-c", str(config), "users", "env", "carol", "--pip", "tqdm"]) == 0
    assert os.path.exists(cfg.user_envs_dir / "carol.yaml")


def test_the_spawner_fallback_reads_only_listed_sources(tmp_path):
    cfg = parse_config(ldap_config(tmp_path))
    accounts_table_for(cfg).record(UserRecord("carol", 30001, 30001, source="ldap"))
    assert lookup_account(cfg, "carol").source == "ldap"
    file_only = parse_config({"state_dir": str(tmp_path / "state")})
    assert lookup_account(file_only, "carol") is None


def test_the_example_configs_ldap_block_is_a_working_config(tmp_path):
    """hubstack.example.yaml documents auth.ldap commented out; uncommented, it loads."""
    text = (Path(__file__).resolve().parents[2] / "hubstack.example.yaml").read_text()
    lines = text.split("\nauth:", 1)[1].split("\ngpu:", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # ldap:"))
    end = next(i for i, line in enumerate(lines) if line.startswith("  # oidc:"))
    block = [line.replace("  # ", "  ", 1) for line in lines[start:end] if line.startswith("  #")]
    auth = yaml.safe_load("auth:\n  sources: [file, ldap]\n" + "\n".join(block))["auth"]
    cfg = parse_config({"state_dir": str(tmp_path), "auth": auth})
    assert cfg.auth.ldap.bind_dn_templates == ["uid={username},ou=people,dc=example,dc=org"]
    minimal = {"server": "ldap.example.org", "bind_dn_templates": cfg.auth.ldap.bind_dn_templates}
    defaults = parse_config({"auth": {"sources": ["ldap"], "ldap": minimal}}).auth.ldap
    assert cfg.auth.ldap.model_dump() == defaults.model_dump(), "the example shows the defaults"

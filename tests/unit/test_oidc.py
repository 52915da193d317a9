"""OpenID Connect login (auth.oidc, hubstack.hub.oidc) without a provider: the config's
checks, the source beside the users file and LDAP (its pages, the login page's button),
claims to user names, UID/GID from claims or allocated once, collisions with the users
file's and LDAP accounts' names and UIDs, and the table's locking. The real provider,
browser and hub are in tests/integration/test_auth_oidc.py."""

from __future__ import annotations

import asyncio
import http.server
import io
import json
import multiprocessing
import os
import socket
import stat
import threading
from pathlib import Path

import jinja2
import pytest
import yaml
from jupyterhub._data import DATA_FILES_PATH
from traitlets.config import Config

from hubstack.cli import main
from hubstack.config import ConfigError, load_config, parse_config
from hubstack.hub import setup
from hubstack.hub.accounts import AccountsTable
from hubstack.hub.auth import HubstackAuthenticator
from hubstack.hub.oidc import OIDCAuthenticator, OIDCSource
from hubstack.hub.oidc_ids import IdentityError, IdPolicy, IdTable, OIDCIdentity, resolve
from hubstack.hub.sources import LoginRefused
from hubstack.hub.users import UserRecord, UsersFile
from hubstack.stack import compose_env, hub_config

OIDC = {
    "issuer": "https://idp.example.org/realms/main",
    "client_id": "hubstack",
    "allowed_groups": ["analysts"],
}


def oidc_config(tmp_path: Path, sources=("file", "oidc"), secret="s3cret\n", **keys) -> dict:
    """A config with auth.oidc, and its client secret at the default place (mode 0600)."""
    state = tmp_path / "state"
    if secret is not None:
        path = state / "secrets" / "oidc-client-secret"
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(secret)
        path.chmod(0o600)
    return {"state_dir": str(state), "auth": {"sources": list(sources), "oidc": {**OIDC, **keys}}}


def error_of(data) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return str(e.value)


# ---------------------------------------------------------------- config


def test_a_minimal_oidc_config_and_its_defaults(tmp_path):
    oidc = parse_config(oidc_config(tmp_path)).auth.oidc
    assert oidc is not None and oidc.uid_range == (100000, 199999) and oidc.gid_policy == "uid"
    assert oidc.username_claim == "preferred_username" and oidc.groups_claim == "groups"
    assert parse_config({}).auth.oidc is None


@pytest.mark.parametrize(
    "keys, message",
    [
        ({"allowed_groups": []}, "auth.oidc: allowed_groups is empty: nobody"),
        ({"issuer": "http://idp:9000"}, "auth.oidc: issuer http://idp:9000 is plain"),
        ({"issuer": "idp.example.org"}, "auth.oidc.issuer: must be an https:// URL"),
        ({"issuer": "https://i/?a=b"}, "auth.oidc.issuer: must have no query"),
        ({"client_id": " "}, "auth.oidc.client_id: must be the client ID"),
        ({"uid_range": [200, 100]}, "auth.oidc.uid_range: must be [first, last]"),
        ({"uid_range": [500, 900]}, "auth.oidc.uid_range: starts at 500, below hub.min_uid"),
        ({"gid_policy": "group"}, "auth.oidc.gid_policy: must be `uid`"),
        ({"gid_policy": 12}, "auth.oidc.gid_policy: 12 is outside hub.min_uid"),
        ({"client_secret": "s3cret"}, "auth.oidc.client_secret: unknown key"),
    ],
)
def test_bad_oidc_config_names_the_key(tmp_path, keys, message):
    assert message in error_of(oidc_config(tmp_path, **keys))


def test_oidc_in_sources_needs_its_section_and_client_secret(tmp_path):
    unset = error_of({"auth": {"sources": ["oidc"]}})
    assert "sources lists oidc but auth.oidc is not set" in unset
    assert "auth.oidc.issuer: Field required" in error_of(
        {"auth": {"sources": ["oidc"], "oidc": {"client_id": "c", "allow_all": True}}}
    )
    data = oidc_config(tmp_path, secret=None)
    assert "auth.oidc.client_secret_file (default " in error_of(data)
    assert "oidc-client-secret does not exist" in error_of(data)
    data = oidc_config(tmp_path, secret="\n")
    assert "is empty (it must hold the client secret)" in error_of(data)
    (tmp_path / "state" / "secrets" / "oidc-client-secret").chmod(0o644)
    assert "readable by others (mode 644)" in error_of(oidc_config(tmp_path, secret=None))


def test_http_issuer_only_when_asked_and_no_trailing_slash(tmp_path):
    data = oidc_config(tmp_path, issuer="http://idp:9000/", insecure_http=True)
    assert parse_config(data).auth.oidc.issuer == "http://idp:9000"


def test_files_are_relative_to_the_config_and_mounted_into_the_hub(tmp_path):
    secret = tmp_path / "oidc.secret"
    secret.write_text("s3cret\n")
    secret.chmod(0o600)
    (tmp_path / "ca.pem").write_text("-----BEGIN CERTIFICATE-----\nMIIB\n")
    path = tmp_path / "hubstack.yaml"
    path.write_text(
        "state_dir: state\nauth:\n  sources: [file, oidc]\n  oidc:\n"
        "    issuer: https://i\n    client_id: c\n    allow_all: true\n"
        "    client_secret_file: oidc.secret\n    ca_file: ca.pem\n"
    )
    cfg = load_config(path)
    assert cfg.oidc_client_secret_file == secret
    assert cfg.oidc_ids_file == tmp_path / "state" / "accounts" / "oidc-ids.yaml"
    hub = hub_config(cfg)["auth"]["oidc"]
    assert hub["client_secret_file"] == "/run/secrets/oidc_client_secret"
    assert hub["ca_file"] == "/etc/hubstack/oidc-ca.pem"
    env = compose_env(cfg)
    assert env["HUBSTACK_OIDC_CLIENT_SECRET"] == str(secret)
    assert env["HUBSTACK_OIDC_CA"] == str(tmp_path / "ca.pem")
    # Without OIDC, compose mounts nothing real.
    plain = compose_env(parse_config({"state_dir": str(tmp_path / "s2")}))
    assert plain["HUBSTACK_OIDC_CLIENT_SECRET"] == plain["HUBSTACK_OIDC_CA"] == "/dev/null"


def test_the_example_configs_oidc_block_is_a_working_config(tmp_path):
    """hubstack.example.yaml documents auth.oidc commented out; uncommented, it loads and
    shows the defaults."""
    text = (Path(__file__).resolve().parents[2] / "hubstack.example.yaml").read_text()
    lines = text.split("\nauth:", 1)[1].split("\ngpu:", 1)[0].splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("  # oidc:"))
    block = [line.replace("  # ", "  ", 1) for line in lines[start:] if line.startswith("  #")]
    auth = yaml.safe_load("auth:\n  sources: [file, oidc]\n" + "\n".join(block))["auth"]
    data = oidc_config(tmp_path)
    data["auth"] = auth
    example = parse_config(data).auth.oidc
    minimal = oidc_config(tmp_path, issuer=example.issuer, client_id=example.client_id)
    defaults = parse_config(minimal).auth.oidc
    assert example.model_dump() == defaults.model_dump(), "the example shows the defaults"


# ---------------------------------------------------------------- hub settings


def hub_settings(tmp_path, monkeypatch, data: dict) -> Config:
    monkeypatch.setattr(setup, "SECRETS", tmp_path)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "x" * 64)
    for name in ("cookie_secret", "proxy_token", "crypt_key"):
        (tmp_path / name).write_text(f"{name}-value\n")
    c = Config()
    setup.configure_hub(c, parse_config(data))
    return c


def test_hub_wires_oidc_as_a_source_of_the_one_authenticator(tmp_path, monkeypatch):
    c = hub_settings(tmp_path, monkeypatch, oidc_config(tmp_path, sources=["oidc", "file"]))
    assert c.JupyterHub.authenticator_class == "hubstack.hub.auth.HubstackAuthenticator"
    assert c.HubstackAuthenticator.sources == ["oidc", "file"]
    assert c.OIDCAuthenticator.client_secret == "s3cret"
    assert c.OIDCAuthenticator.oauth_callback_url == "http://127.0.0.1:8000/hub/oauth_callback"
    assert c.OIDCAuthenticator.allowed_groups == {"analysts"}
    assert "analysts" in c.OIDCAuthenticator.custom_403_message
    assert c.OIDCSource.ids_file.endswith("accounts/oidc-ids.yaml")
    page = c.JupyterHub.template_vars["hubstack_oidc"]
    assert page == {"label": "OpenID Connect", "first": True, "password": True}
    assert "announcement" in c.JupyterHub.template_vars  # the banner stays
    assert (setup.TEMPLATES / "login.html").is_file()
    assert c.JupyterHub.template_paths == [str(setup.TEMPLATES)]

    alone = hub_settings(tmp_path, monkeypatch, oidc_config(tmp_path, sources=["oidc"]))
    assert alone.JupyterHub.template_vars["hubstack_oidc"]["password"] is False
    plain = hub_settings(tmp_path, monkeypatch, {"state_dir": str(tmp_path / "s")})
    assert plain.JupyterHub.template_vars["hubstack_oidc"] is None


def test_the_login_page_shows_the_form_and_the_button_in_the_sources_order():
    default = os.path.join(DATA_FILES_PATH, "templates")
    env = jinja2.Environment(
        loader=jinja2.ChoiceLoader(
            [
                jinja2.FileSystemLoader([str(setup.TEMPLATES), default]),
                jinja2.PrefixLoader({"templates": jinja2.FileSystemLoader([default])}),
            ]
        )
    )
    page = env.get_template("login.html")

    def render(oidc) -> str:
        return page.render(
            hubstack_oidc=oidc, base_url="/hub/", next="/hub/spawn?x=1",
            static_url=lambda path, **kw: path,
            authenticator_login_url="/hub/login", xsrf="", authenticator={},
        )  # fmt: skip

    both = render({"label": "Corp SSO", "first": False, "password": True})
    assert both.index('id="password_input"') < both.index('id="oidc_login_button"')
    assert 'href="/hub/oauth_login?next=/hub/spawn%3Fx%3D1"' in both
    assert "Sign in with Corp SSO" in both
    first = render({"label": "Corp SSO", "first": True, "password": True})
    assert first.index('id="oidc_login_button"') < first.index('id="password_input"')
    alone = render({"label": "Corp SSO", "first": True, "password": False})
    assert 'id="oidc_login_button"' in alone and 'id="password_input"' not in alone
    plain = render(None)
    assert 'id="password_input"' in plain and "oidc_login_button" not in plain


# ---------------------------------------------------------------- the source


@pytest.fixture
def hub(tmp_path):
    """The hub's authenticator with the users file, LDAP's table entries and OIDC."""
    users = UsersFile(tmp_path / "users.yaml")
    users.add("ops", 70001, 70001, admin=True, password="ops-pw")
    accounts = AccountsTable(tmp_path / "accounts" / "accounts.yaml")
    accounts.record(UserRecord("carol", 70002, 70002, source="ldap"))
    c = Config()
    c.HubstackAuthenticator.sources = ["file", "ldap", "oidc"]
    c.HubstackAuthenticator.users_file = str(users.path)
    c.HubstackAuthenticator.accounts_file = str(accounts.path)
    c.OIDCSource.ids_file = str(tmp_path / "accounts" / "oidc-ids.yaml")
    c.OIDCSource.uid_claim = "uidNumber"
    c.OIDCSource.gid_claim = "gidNumber"
    c.OIDCSource.uid_range = (70000, 70004)
    c.OIDCAuthenticator.issuer = "https://idp"
    c.OIDCAuthenticator.client_id = "hubstack"
    auth = HubstackAuthenticator(config=c)
    return auth, auth.source("oidc"), accounts


def admit(source: OIDCSource, name: str, groups=("analysts",), **claims) -> dict:
    model = {"name": name, "admin": None, "groups": list(groups)}
    model["auth_state"] = {"oauth_user": claims, "access_token": "secret-token"}
    return asyncio.run(source.admit(model))


def test_oidc_is_a_source_of_the_hubs_authenticator_with_its_own_pages(hub):
    auth, source, _ = hub
    assert isinstance(source, OIDCSource)
    assert isinstance(source.authenticator, OIDCAuthenticator)
    assert source.authenticator.client_id == "hubstack"
    handlers = dict(auth.get_handlers(app=None))
    assert set(handlers) == {"/login", "/oauth_login", "/oauth_callback"}  # JupyterHub's logout
    assert handlers["/oauth_callback"].authenticator is source.authenticator
    # No password ever logs an OIDC person in.
    assert asyncio.run(auth.authenticate(None, {"username": "x", "password": "y"})) is None


def test_user_name_comes_from_the_claim_and_must_be_a_valid_name(hub):
    authenticator = hub[1].authenticator
    assert authenticator.user_info_to_username({"preferred_username": "Alice"}) == "alice"
    for info, why in [
        ({}, "sent no 'preferred_username' claim"),
        ({"preferred_username": "alice smith"}, "cannot be a user name on this hub"),
    ]:
        with pytest.raises(LoginRefused) as e:
            authenticator.user_info_to_username(info)
        assert e.value.status_code == 403 and why in e.value.message


def test_identity_from_claims_or_allocated_recorded_for_users_list(hub):
    auth, source, accounts = hub
    model = admit(source, "alice", sub="a-1", uidNumber="52001", gidNumber=52500)
    assert model["name"] == "alice" and model["admin"] is False
    assert model["groups"] == ["analysts"]
    assert model["auth_state"] == {
        "uid": 52001,
        "gid": 52500,
        "groups": [],
        "home": "/home/alice",
        "source": "oidc",
        "group_names": ["analysts"],
        "oidc_sub": "a-1",
    }  # the identity, not the provider's tokens
    bob = admit(source, "bob", sub="b-2")["auth_state"]  # no claims: the range's first free
    assert (bob["uid"], bob["gid"]) == (70000, 70000)
    assert admit(source, "dave", sub="d-4")["auth_state"]["uid"] == 70003  # over ops, carol
    assert accounts.get("bob") == UserRecord(
        "bob", 70000, 70000, source="oidc", group_names=("analysts",)
    )
    # The same person, again: the same UID.
    assert admit(source, "bob", sub="b-2")["auth_state"]["uid"] == 70000


@pytest.mark.parametrize(
    "name, claims, why",
    [
        ("ops", {"sub": "x"}, "already a local account of this hub (its users file)"),
        ("carol", {"sub": "x"}, "already the ldap account of that name"),
        ("erin", {}, "no `sub` claim"),
        ("erin", {"sub": "e", "uidNumber": 0}, "the provider's uid: 0 (root)"),
        ("erin", {"sub": "e", "uidNumber": 70001}, "UID 70001 of 'erin' is already the file"),
        ("erin", {"sub": "e", "uidNumber": 70002}, "UID 70002 of 'erin' is already the ldap"),
    ],
)
def test_refusals_are_clear_pages(hub, name, claims, why):
    _, source, _ = hub
    with pytest.raises(LoginRefused) as e:
        admit(source, name, **claims)
    assert e.value.status_code == 403 and why in e.value.message, e.value.message


def test_an_ldap_login_with_an_oidc_persons_uid_is_refused(hub):
    auth, source, _ = hub
    admit(source, "bob", sub="b-2")
    with pytest.raises(LoginRefused, match="UID 70000 is already the UID of another account"):
        auth.check_free_uid(UserRecord("frank", 70000, 70000, source="ldap"))
    auth.check_free_uid(UserRecord("frank", 70009, 70009, source="ldap"))
    # Within LDAP the directory decides: carol renamed at the directory keeps her UID.
    auth.check_free_uid(UserRecord("carol2", 70002, 70002, source="ldap"))


def test_refresh_keeps_an_oidc_session_without_asking_the_provider(hub):
    auth, source, _ = hub
    state = admit(source, "bob", sub="b-2")["auth_state"]

    class User:
        name = "bob"

        async def get_auth_state(self):
            return state

    assert asyncio.run(auth.refresh_user(User())) is True


# ---------------------------------------------------------------- the UID table

POLICY = IdPolicy(uid_range=(70000, 70002))


def test_the_same_person_keeps_their_uid_whatever_their_name():
    people: dict[str, OIDCIdentity] = {}
    first = resolve(people, "s-1", "alice", None, None, POLICY, {})
    people["s-1"] = first
    people["s-2"] = resolve(people, "s-2", "bob", None, None, POLICY, {})
    again = resolve(people, "s-1", "alice2", None, None, POLICY, {})
    assert (first.uid, again.uid, people["s-2"].uid) == (70000, 70000, 70001)
    assert again.name == "alice2" and again.allocated
    with pytest.raises(IdentityError, match="'bob' belongs to another person"):
        resolve(people, "s-3", "bob", None, None, POLICY, {})


def test_range_exhausted_and_collisions():
    people = {
        s: resolve({}, s, n, u, None, POLICY, {})
        for s, n, u in [("s-1", "a", 70000), ("s-2", "b", 70001), ("s-3", "c", 70002)]
    }
    with pytest.raises(IdentityError, match=r"uid_range \[70000, 70002\] has no free UID left"):
        resolve(people, "s-4", "d", None, None, POLICY, {})
    with pytest.raises(IdentityError, match="UID 70001 of 'd' is already held by 'b'"):
        resolve(people, "s-4", "d", 70001, None, POLICY, {})
    # An account added later with an allocated UID locks that person out, loudly.
    with pytest.raises(IdentityError, match="UID 70000 of 'a' is already ops's"):
        resolve(people, "s-1", "a", None, None, POLICY, {70000: "ops"})
    # 65534 is never given, and a shared GID when asked.
    policy = IdPolicy(uid_range=(65534, 65535), gid_policy=5000)
    ident = resolve({}, "s", "e", None, None, policy, {})
    assert (ident.uid, ident.gid) == (65535, 5000)


def test_table_persists_mode_0600_and_reads_back(tmp_path):
    table = IdTable(tmp_path / "accounts" / "oidc-ids.yaml", POLICY)
    a = table.assign("s-1", "alice")
    assert IdTable(table.path, POLICY).load() == {"s-1": a}
    assert stat.S_IMODE(table.path.stat().st_mode) == 0o600
    assert table.holder(70000) == a and table.holder(70001) is None
    assert "never give a uid here to anyone else" in table.path.read_text().lower()
    table.path.write_text("people: [1, 2\n")
    with pytest.raises(IdentityError, match="cannot be read"):
        table.assign("s-2", "bob")


def _assign(args):
    path, sub = args
    return IdTable(path, IdPolicy(uid_range=(70000, 70999))).assign(sub, f"u{sub}").uid


def test_concurrent_logins_never_share_a_uid(tmp_path):
    path = tmp_path / "ids.yaml"
    with multiprocessing.get_context("fork").Pool(8) as pool:
        uids = pool.map(_assign, [(path, str(i)) for i in range(40)])
    assert sorted(uids) == list(range(70000, 70040))
    assert len(IdTable(path, POLICY).load()) == 40


def test_users_add_refuses_a_uid_an_oidc_person_or_ldap_account_holds(tmp_path, capsys):
    path = tmp_path / "hubstack.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    cfg = load_config(path)
    IdTable(cfg.oidc_ids_file, IdPolicy(uid_range=(100000, 100009))).assign("s-9", "bob")
    AccountsTable(cfg.accounts_file).record(UserRecord("carol", 30001, 30001, source="ldap"))
    for uid, words in [
        (100000, "users.ops.uid: 100000 is already 'bob''s, who signs in with OpenID Connect"),
        (30001, "users.ops.uid: 30001 is already 'carol''s, a ldap account"),
    ]:
        argv = ["-c", str(path), "users", "add", "ops", "--uid", str(uid), "--gid", str(uid)]
        with pytest.MonkeyPatch.context() as mp:
            mp.setattr("sys.stdin", io.StringIO("pw\n"))
            assert main([*argv, "--password-stdin"]) == 2
        assert words in capsys.readouterr().err
    assert not cfg.users_file.exists()


def test_users_list_says_oidc_for_oidc_people(tmp_path, capsys):
    path = tmp_path / "hubstack.yaml"
    path.write_text(f"state_dir: {tmp_path / 'state'}\n")
    cfg = load_config(path)
    AccountsTable(cfg.accounts_file).record(
        UserRecord("bob", 100000, 100000, source="oidc", group_names=("analysts",))
    )
    assert main(["-c", str(path), "users", "list"]) == 0
    line = next(x for x in capsys.readouterr().out.splitlines() if x.startswith("bob"))
    assert line.split()[:4] == ["bob", "oidc", "100000", "100000"]
    assert "(analysts)" in line and "oidc is not in auth.sources" in line


# ---------------------------------------------------------------- discovery


class _Discovery(http.server.BaseHTTPRequestHandler):
    issuer = ""

    def do_GET(self):
        if self.path != "/.well-known/openid-configuration":
            self.send_error(404)
            return
        base = f"http://127.0.0.1:{self.server.server_address[1]}"
        body = json.dumps(
            {
                "issuer": self.issuer or base,
                "authorization_endpoint": f"{base}/auth",
                "token_endpoint": f"{base}/token",
                "userinfo_endpoint": f"{base}/me",
            }
        ).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args):
        pass


@pytest.fixture
def discovery_server():
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Discovery)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}", server
    server.shutdown()
    _Discovery.issuer = ""


def test_endpoints_come_from_the_issuers_discovery_document(discovery_server):
    url, _ = discovery_server
    auth = OIDCAuthenticator(issuer=url)
    doc = asyncio.run(auth.discover())
    assert doc["issuer"] == url
    assert (auth.authorize_url, auth.token_url, auth.userdata_url) == (
        f"{url}/auth",
        f"{url}/token",
        f"{url}/me",
    )


def test_a_document_for_another_issuer_or_none_at_all_is_a_clear_503(discovery_server):
    url, _ = discovery_server
    _Discovery.issuer = "https://evil.example"
    auth = OIDCAuthenticator(issuer=url)
    with pytest.raises(LoginRefused) as e:
        asyncio.run(auth.discover())
    assert e.value.status_code == 503
    assert "names issuer 'https://evil.example'" in e.value.message
    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        auth.issuer = f"http://127.0.0.1:{s.getsockname()[1]}"
    with pytest.raises(LoginRefused) as e:
        asyncio.run(auth.discover())
    assert e.value.status_code == 503 and "does not answer" in e.value.message

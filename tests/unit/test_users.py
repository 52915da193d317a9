"""Users file, password hashing and `hubstack users` CLI: bad input is refused
with a clear error and the users file is left byte-for-byte unchanged."""

from __future__ import annotations

import io
import stat

import pytest
import yaml
from tornado import web

from hubstack.cli import main
from hubstack.config import parse_config
from hubstack.hub.auth import HubstackAuthenticator
from hubstack.hub.users import (
    FileUserSource,
    PasswordHashError,
    UsersFile,
    UsersFileError,
    hash_password,
    lookup_user,
    verify_password,
)
from hubstack.hub.users_cli import ensure_initial_admin


@pytest.fixture
def users(tmp_path) -> UsersFile:
    uf = UsersFile(tmp_path / "users.yaml", min_uid=1000)
    uf.add("alice", uid=1001, gid=1001, groups=[2000], password="alice-pw")
    return uf


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "hubstack.yaml"
    path.write_text(yaml.safe_dump({"state_dir": str(tmp_path / "state")}))
    return path


def run_cli(cfg_file, monkeypatch, *argv, stdin: str = ""):
    monkeypatch.setattr("sys.stdin", io.StringIO(stdin))
    return main(["-c", str(cfg_file), "users", *argv])


# ------------------------------------------------------------- hashing


def test_hash_round_trip():
    h = hash_password("s3cret é")
    assert h.startswith("scrypt$16384$8$1$")
    assert verify_password("s3cret é", h)
    assert not verify_password("s3cret", h)
    assert hash_password("s3cret é") != h  # salted


@pytest.mark.parametrize(
    "bad",
    [
        "",
        "plaintext",
        "scrypt$x$8$1$AAAA$AAAA",
        "scrypt$16384$8$1$!!$AAAA",
        "scrypt$1000$8$1$AAAAAAAAAAAAAAAAAAAAAA==$AAAAAAAAAAAAAAAAAAAAAA==",
    ],
)
def test_broken_hash_is_a_clear_error(bad):
    with pytest.raises(PasswordHashError, match="password hash"):
        verify_password("x", bad)


# ------------------------------------------------------------- file


def test_add_and_load(users):
    rec = users.load()["alice"]
    assert (rec.uid, rec.gid, rec.groups, rec.admin, rec.home) == (
        1001,
        1001,
        (2000,),
        False,
        "/home/alice",
    )
    assert stat.S_IMODE(users.path.stat().st_mode) == 0o600
    assert "alice-pw" not in users.path.read_text()
    assert FileUserSource(users).verify("alice", "alice-pw") == rec
    assert FileUserSource(users).verify("alice", "wrong") is None
    assert FileUserSource(users).verify("bob", "alice-pw") is None


def test_the_file_is_parsed_again_only_when_it_changed(users, monkeypatch):
    parses = []
    parse = UsersFile._parse
    monkeypatch.setattr(
        UsersFile, "_parse", lambda self, text: parses.append(1) or parse(self, text)
    )
    again = UsersFile(users.path, min_uid=1000)  # the hub makes a new one for each lookup
    assert again.get("alice") is not None and again.load().keys() == {"alice"}
    assert len(parses) <= 1  # at most once: `add` may have parsed it already
    n = len(parses)
    users.add("bob", uid=1002, gid=1002, groups=[], password="bob-pw")  # the CLI, meanwhile
    assert UsersFile(users.path, min_uid=1000).get("bob") is not None
    assert len(parses) > n
    # An edit in place (same inode) is seen too (a size or mtime change).
    text = users.path.read_text().replace("uid: 1002", "uid: 10020")
    with open(users.path, "r+") as f:
        f.write(text)
        f.truncate()
    assert UsersFile(users.path, min_uid=1000).get("bob").uid == 10020


@pytest.mark.parametrize(
    "name,uid,gid,groups,problem",
    [
        ("Alice", 1002, 1002, [], "invalid user name"),
        ("1bob", 1002, 1002, [], "invalid user name"),
        ("bob smith", 1002, 1002, [], "invalid user name"),
        ("a" * 33, 1002, 1002, [], "invalid user name"),
        ("bob/..", 1002, 1002, [], "invalid user name"),
        ("root", 1002, 1002, [], "reserved"),
        ("jovyan", 1002, 1002, [], "reserved"),
        ("bob", 0, 1002, [], r"users.bob.uid: 0 \(root\)"),
        ("bob", 1002, 0, [], r"users.bob.gid: 0 \(root\)"),
        ("bob", 999, 1002, [], "below the minimum 1000"),
        ("bob", 1002, 50, [], "below the minimum 1000"),
        ("bob", 1002, 1002, [0], r"users.bob.groups: 0 \(root\)"),
        ("bob", 4294967295, 1002, [], "users.bob.uid: 4294967295 is above 4294967294"),
        ("bob", 99999999998, 1002, [], "users.bob.uid: 99999999998 is above 4294967294"),
        ("bob", 1002, 4294967295, [], "users.bob.gid: 4294967295 is above"),
        ("bob", 1002, 1002, [2**32], "users.bob.groups: 4294967296 is above"),
        ("bob", 65534, 1002, [], "users.bob.uid: 65534 is nobody/nogroup"),
        ("bob", 1002, 1002, [65534], "hub.allow_nobody_id"),
        ("bob", 1001, 1002, [], "users.bob.uid: 1001 is already used by user 'alice'"),
        ("alice", 1002, 1002, [], "already exists"),
    ],
)
def test_refused_add_leaves_file_unchanged(users, name, uid, gid, groups, problem):
    before = users.path.read_bytes()
    with pytest.raises(UsersFileError, match=problem) as e:
        users.add(name, uid=uid, gid=gid, groups=groups, password="pw")
    assert str(users.path) in str(e.value)
    assert users.path.read_bytes() == before
    assert [p.name for p in users.path.parent.iterdir() if p.name.startswith(".users.yaml.")] == []


def test_min_uid_is_configurable(tmp_path):
    uf = UsersFile(tmp_path / "u.yaml", min_uid=5000)
    with pytest.raises(UsersFileError, match="below the minimum 5000"):
        uf.add("bob", uid=4000, gid=5000, password="pw")
    assert not uf.path.exists()
    assert uf.add("bob", uid=5000, gid=5000, password="pw").uid == 5000


def test_nobody_is_allowed_only_when_the_config_says_so(tmp_path):
    uf = UsersFile(tmp_path / "u.yaml", allow_nobody=True)
    assert uf.add("bob", uid=1002, gid=65534, groups=[65534], password="pw").gid == 65534
    assert UsersFile(uf.path, allow_nobody=True).load()["bob"].groups == (65534,)
    with pytest.raises(UsersFileError, match="users.bob.gid: 65534 is nobody"):
        UsersFile(uf.path).load()


def test_remove_and_passwd(users):
    users.add("bob", uid=1002, gid=1002, password="old")
    users.set_password("bob", "new")
    src = FileUserSource(users)
    assert src.verify("bob", "new") and not src.verify("bob", "old")
    users.remove("bob")
    assert src.get("bob") is None and src.get("alice")
    before = users.path.read_bytes()
    for change in (lambda: users.remove("bob"), lambda: users.set_password("bob", "x")):
        with pytest.raises(UsersFileError, match="no user 'bob'"):
            change()
    assert users.path.read_bytes() == before


def _write_raw(uf: UsersFile, users: dict):
    uf.path.write_text(yaml.safe_dump({"users": users}))


@pytest.mark.parametrize(
    "entry,problem",
    [
        (
            {"Bad Name": {"uid": 1002, "gid": 1002, "password": "x"}},
            "users.Bad Name: invalid user name",
        ),
        ({"bob": {"uid": 0, "gid": 1002, "password": "x"}}, "users.bob.uid: 0"),
        (
            {"bob": {"uid": 4294967295, "gid": 1002, "password": "x"}},
            "users.bob.uid: 4294967295 is above 4294967294",
        ),
        (
            {"bob": {"uid": 10, "gid": 1002, "password": "x"}},
            "users.bob.uid: 10 is below the minimum",
        ),
        (
            {"bob": {"uid": 1001, "gid": 1002, "password": "x"}},
            "users.bob.uid: 1001 is already used by user 'alice'",
        ),
        ({"bob": {"uid": "x", "gid": 1002, "password": "x"}}, "users.bob.uid: must be an integer"),
        ({"bob": {"gid": 1002, "password": "x"}}, "users.bob: missing 'uid'"),
        (
            {"bob": {"uid": 1002, "gid": 1002, "password": "x", "shell": "/bin/sh"}},
            "users.bob: unknown keys: shell",
        ),
        (
            {"bob": {"uid": 1002, "gid": 1002, "password": "x", "admin": "yes"}},
            "users.bob: admin must be true or false",
        ),
    ],
)
def test_invalid_file_is_refused_at_load(users, entry, problem):
    alice = yaml.safe_load(users.path.read_text())["users"]
    _write_raw(users, {**alice, **entry})
    with pytest.raises(UsersFileError, match=problem) as e:
        users.load()
    assert str(users.path) in str(e.value)
    # a change on top of an invalid file is refused too, and writes nothing
    before = users.path.read_bytes()
    with pytest.raises(UsersFileError):
        users.add("carol", uid=1003, gid=1003, password="pw")
    assert users.path.read_bytes() == before


def test_not_yaml_is_a_clear_error(users):
    users.path.write_text("users: [unclosed\n")
    with pytest.raises(UsersFileError, match="not valid YAML"):
        users.load()


def test_broken_hash_locks_out_only_that_user(users, caplog):
    users.add("bob", uid=1002, gid=1002, password="bob-pw")
    data = yaml.safe_load(users.path.read_text())
    data["users"]["bob"]["password"] = "md5$deadbeef"
    users.path.write_text(yaml.safe_dump(data))
    src = FileUserSource(users)
    assert src.verify("bob", "bob-pw") is None
    assert "user 'bob' cannot log in" in caplog.text and "password hash" in caplog.text
    assert src.verify("alice", "alice-pw")
    assert set(users.broken_hashes()) == {"bob"}
    # the fix: a new password; other users are untouched
    users.set_password("bob", "fixed")
    assert src.verify("bob", "fixed") and src.verify("alice", "alice-pw")


def test_add_refuses_a_broken_given_hash(users):
    before = users.path.read_bytes()
    with pytest.raises(UsersFileError, match="users.bob.password: password hash"):
        users.add("bob", uid=1002, gid=1002, password_hash="plain")
    assert users.path.read_bytes() == before


def test_lookup_user_for_spawner(tmp_path):
    cfg = parse_config({"state_dir": str(tmp_path)})
    UsersFile(cfg.users_file, cfg.hub.min_uid).add(
        "alice", uid=1001, gid=1001, groups=[2000, 2001], password="pw"
    )
    rec = lookup_user(cfg, "alice")
    assert (rec.uid, rec.gid, rec.groups, rec.home) == (1001, 1001, (2000, 2001), "/home/alice")
    assert lookup_user(cfg, "nobody-here") is None


# ------------------------------------------------------------- CLI


def test_cli_add_list_passwd_remove(cfg_file, monkeypatch, capsys, tmp_path):
    assert (
        run_cli(
            cfg_file,
            monkeypatch,
            "add",
            "alice",
            "--uid",
            "1001",
            "--gid",
            "1001",
            "--groups",
            "2000,2001",
            "--admin",
            "--password-stdin",
            stdin="pw one\nignored\n",
        )
        == 0
    )
    uf = UsersFile(tmp_path / "state" / "users.yaml")
    assert FileUserSource(uf).verify("alice", "pw one").groups == (2000, 2001)
    assert run_cli(cfg_file, monkeypatch, "list") == 0
    out = capsys.readouterr().out
    assert "alice" in out and "1001" in out and "2000,2001" in out and "pw one" not in out
    assert (
        run_cli(cfg_file, monkeypatch, "passwd", "alice", "--password-stdin", stdin="pw two\n") == 0
    )
    assert FileUserSource(uf).verify("alice", "pw two")
    assert run_cli(cfg_file, monkeypatch, "remove", "alice") == 0
    assert uf.load() == {}


@pytest.mark.parametrize(
    "argv,stdin,problem",
    [
        (
            ["add", "Bad", "--uid", "1002", "--gid", "1002", "--password-stdin"],
            "pw\n",
            "invalid user name",
        ),
        (["add", "bob", "--uid", "0", "--gid", "1002", "--password-stdin"], "pw\n", "uid: 0"),
        (
            ["add", "bob", "--uid", "4294967295", "--gid", "1002", "--password-stdin"],
            "pw\n",
            "users.bob.uid: 4294967295 is above 4294967294",
        ),
        (
            ["add", "bob", "--uid", "1001", "--gid", "1002", "--password-stdin"],
            "pw\n",
            "already used by user 'alice'",
        ),
        (
            ["add", "bob", "--uid", "1002", "--gid", "1002", "--password-stdin"],
            "",
            "no password on standard input",
        ),
        (["remove", "bob"], "", "no user 'bob'"),
        (["passwd", "bob", "--password-stdin"], "pw\n", "no user 'bob'"),
    ],
)
def test_cli_errors_are_clear_and_change_nothing(
    cfg_file, monkeypatch, capsys, argv, stdin, problem
):
    assert (
        run_cli(
            cfg_file,
            monkeypatch,
            "add",
            "alice",
            "--uid",
            "1001",
            "--gid",
            "1001",
            "--password-stdin",
            stdin="pw\n",
        )
        == 0
    )
    path = cfg_file.parent / "state" / "users.yaml"
    before = path.read_bytes()
    capsys.readouterr()
    assert run_cli(cfg_file, monkeypatch, *argv, stdin=stdin) == 2
    err = capsys.readouterr().err
    assert problem in err and "Traceback" not in err
    assert path.read_bytes() == before


def test_initial_admin_created_once(tmp_path):
    cfg = parse_config({"state_dir": str(tmp_path), "hub": {"min_uid": 2000}})
    name, password = ensure_initial_admin(cfg)
    rec = FileUserSource(UsersFile(cfg.users_file, 2000)).verify(name, password)
    assert rec and rec.admin and rec.uid == 2000 and rec.gid == 2000
    assert ensure_initial_admin(cfg) is None


@pytest.mark.parametrize("name", [0.0, 7, None, ["alice"], {"a": 1}])
def test_a_user_name_that_is_not_text_is_a_400_not_a_500(name):
    # POST /hub/api/users with {"usernames": [0.0]} reached str.lower() and answered 500.
    with pytest.raises(web.HTTPError) as e:
        HubstackAuthenticator().normalize_username(name)
    assert e.value.status_code == 400 and "must be a string" in e.value.log_message
    assert HubstackAuthenticator().normalize_username("Alice") == "alice"

"""Property-based tests of every input surface hubstack owns (hypothesis): whatever arrives,
it is either accepted and means what it says, or refused with an error that names the
problem, and nothing is written. Never a traceback, never a half-written file."""

from __future__ import annotations

import contextlib
import io
import json
import re
import sys
import tempfile
from pathlib import Path

import yaml
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from tornado import web

from hubstack.ci.webhook import BadPush, PushEvent, parse_push, sign, signature_valid
from hubstack.cli import main
from hubstack.config import ConfigError, PlatformConfig, load_config, parse_config
from hubstack.hub.spawn_options import SpawnOptionsError, parse_spawn_options
from hubstack.hub.spawner import HubstackSpawner
from hubstack.hub.users import (
    MAX_ID,
    NAME_RE,
    NOBODY_ID,
    RESERVED_NAMES,
    UsersFile,
    UsersFileError,
    hash_password,
)

_HASH = hash_password("pw")  # one real scrypt hash, reused: the properties are not about it
FAST = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])

json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers(-(2**40), 2**40)
    | st.floats(allow_nan=False)
    | st.text(max_size=12),
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner),
    max_leaves=8,
)
ids = st.integers(-5, 2**33) | st.sampled_from([0, 999, 1000, NOBODY_ID, MAX_ID, MAX_ID + 1])
names = (
    st.text(max_size=40)
    | st.from_regex(NAME_RE, fullmatch=True)
    | st.sampled_from(sorted(RESERVED_NAMES))
)


def _id_ok(value: int, min_id: int = 1000) -> bool:
    return min_id <= value <= MAX_ID and value != NOBODY_ID


# ---------------------------------------------------------------- users


@FAST
@given(name=names, uid=ids, gid=ids, groups=st.lists(ids, max_size=3))
@example(name="bob", uid=4294967295, gid=1002, groups=[])
@example(name="bob", uid=99999999998, gid=1002, groups=[])
def test_users_add_accepts_exactly_the_valid_accounts(name, uid, gid, groups):
    with tempfile.TemporaryDirectory() as tmp:
        users = UsersFile(Path(tmp) / "users.yaml")
        users.add("alice", uid=5000, gid=5000, password_hash=_HASH)
        before = users.path.read_bytes()
        valid = (
            bool(NAME_RE.match(name))
            and name not in RESERVED_NAMES
            and name != "alice"
            and uid != 5000
            and all(_id_ok(i) for i in (uid, gid, *groups))
        )
        try:
            users.add(name, uid=uid, gid=gid, groups=groups, password_hash=_HASH)
        except UsersFileError as e:
            assert not valid, e
            assert str(e).startswith(f"{users.path}: users.")
            assert users.path.read_bytes() == before, "a refused add changed the file"
        else:
            assert valid
            back = UsersFile(users.path).load()[name]
            assert (back.uid, back.gid) == (uid, gid)
            assert list(back.groups) == list(dict.fromkeys(groups))


@FAST
@given(document=st.dictionaries(names, json_values, max_size=3) | json_values)
def test_any_users_file_loads_or_names_the_problem(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "users.yaml"
        path.write_text(yaml.safe_dump({"users": document}))
        try:
            UsersFile(path).load()
        except UsersFileError as e:
            assert str(e).startswith(f"{path}: ")


@FAST
@given(name=names, uid=st.text(max_size=12) | ids.map(str), gid=ids.map(str))
def test_users_cli_exits_0_or_2_with_one_error_line(name, uid, gid):
    with tempfile.TemporaryDirectory() as tmp:
        cfg = Path(tmp) / "hubstack.yaml"
        cfg.write_text(yaml.safe_dump({"state_dir": str(Path(tmp) / "state")}))
        out, err = io.StringIO(), io.StringIO()
        with (
            contextlib.redirect_stdout(out),
            contextlib.redirect_stderr(err),
            _stdin("pw\n"),
        ):
            try:
                rc = main(
                    ["-c", str(cfg), "users", "add", name, "--uid", uid, "--gid", gid]
                    + ["--password-stdin"]
                )
            except SystemExit as e:  # argparse refusing the arguments themselves
                rc = e.code
        users = Path(tmp) / "state" / "users.yaml"
        assert rc in (0, 2), err.getvalue()
        assert "Traceback" not in err.getvalue()
        if rc == 2:
            assert "error" in err.getvalue()
            assert not users.exists() or name not in UsersFile(users).load()
        else:
            assert UsersFile(users).load()[name].uid == int(uid)


# ---------------------------------------------------------------- the platform config


def _section(model) -> st.SearchStrategy:
    """A mapping with the section's real keys (and junk values), or any value at all."""
    keys = list(model.model_fields)
    return st.fixed_dictionaries({}, optional=dict.fromkeys(keys, json_values)) | json_values


_SECTIONS = {
    name: _section(field.annotation)
    if isinstance(field.annotation, type) and hasattr(field.annotation, "model_fields")
    else json_values
    for name, field in PlatformConfig.model_fields.items()
    if name != "path"
}


@FAST
@given(document=st.fixed_dictionaries({}, optional=_SECTIONS) | json_values)
def test_any_config_document_is_a_config_or_a_file_key_problem_error(document):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hubstack.yaml"
        path.write_text(yaml.safe_dump(document))
        try:
            load_config(path)
        except ConfigError as e:
            assert str(e).startswith(f"{path}: "), e


@FAST
@given(text=st.text(max_size=200))
@example(text="hub: [unclosed")
@example(text="- a\n- b\n")
def test_any_config_text_is_a_config_or_a_file_key_problem_error(text):
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "hubstack.yaml"
        path.write_text(text)
        try:
            load_config(path)
        except ConfigError as e:
            assert str(e).startswith(f"{path}: "), e


@given(document=json_values)
def test_parse_config_refuses_what_is_not_a_mapping(document):
    try:
        parse_config(document)  # type: ignore[arg-type]
    except ConfigError as e:
        assert str(e).startswith("<config>: ")


# ---------------------------------------------------------------- spawn options

CFG = parse_config({})
PROFILES = [p.name for p in CFG.profiles]


@given(
    options=json_values
    | st.fixed_dictionaries({}, optional={"profile": json_values | st.sampled_from(PROFILES)})
)
@example(options={"cores": "lots"})
@example(options={"profile": "spark", "cores": 4})
def test_spawn_options_are_the_declared_ones_or_a_400(options):
    # No body at all (None) is the empty request: the first profile.
    valid = options is None or (
        isinstance(options, dict)
        and set(options) <= {"profile"}
        and options.get("profile") in [None, *PROFILES]
    )
    try:
        parsed = parse_spawn_options(CFG, options)
    except SpawnOptionsError:
        assert not valid
    else:
        assert valid and parsed.profile == (options or {}).get("profile")
    if not isinstance(options, dict):
        return  # JupyterHub itself accepts only an object as user_options
    spawner = HubstackSpawner(platform=CFG)
    spawner.user_options = options
    try:
        spawner.apply_user_options(spawner, options)
    except web.HTTPError as e:
        assert not valid and e.status_code == 400 and e.log_message
        if isinstance(options, dict) and "cores" in options:
            assert "'cores'" in e.log_message
    else:
        assert valid


# ---------------------------------------------------------------- webhooks

SECRET = b"s3cret"
shas = st.from_regex(r"[0-9a-f]{40}", fullmatch=True)


@given(body=st.binary(max_size=300), content_type=st.text(max_size=40))
def test_any_webhook_body_is_a_push_or_bad_push(body, content_type):
    try:
        result = parse_push(body, content_type, "github")
    except BadPush as e:
        assert str(e)
    else:
        assert result is None or isinstance(result, PushEvent)


@given(
    ref=st.text(max_size=30) | st.just("refs/heads/main"),
    after=shas | st.text(max_size=41),
    extra=st.dictionaries(
        st.text(max_size=8).filter(lambda k: k not in ("ref", "after", "before", "deleted")),
        json_values,
        max_size=3,
    ),
)
def test_push_events_keep_their_branch_and_commit(ref, after, extra):
    body = json.dumps({**extra, "ref": ref, "after": after}).encode()
    valid = ref.startswith("refs/") and bool(re.fullmatch(r"[0-9a-f]{40}", after))
    try:
        push = parse_push(body, "application/json", "github")
    except BadPush as e:
        assert not valid, e
    else:
        assert valid
        if push is not None:
            assert push.after == after and ref.endswith(push.branch)


@given(
    headers=st.dictionaries(
        st.sampled_from(["X-Hub-Signature-256", "X-Gitea-Signature", "X-Other"]),
        st.text(max_size=80),
    ),
    body=st.binary(max_size=100),
)
def test_any_signature_header_is_checked_never_crashes(headers, body):
    assert (
        signature_valid(headers, body, SECRET) is False
        or headers.get("X-Hub-Signature-256", "").lower() == f"sha256={sign(SECRET, body)}"
        or headers.get("X-Gitea-Signature", "").strip().lower() == sign(SECRET, body)
    )


@given(body=st.binary(max_size=100))
def test_the_right_signature_is_accepted(body):
    assert signature_valid({"X-Hub-Signature-256": f"sha256={sign(SECRET, body)}"}, body, SECRET)
    assert signature_valid({"X-Gitea-Signature": sign(SECRET, body)}, body, SECRET)


# ---------------------------------------------------------------- helpers


@contextlib.contextmanager
def _stdin(text: str):
    old = sys.stdin
    sys.stdin = io.StringIO(text)
    try:
        yield
    finally:
        sys.stdin = old

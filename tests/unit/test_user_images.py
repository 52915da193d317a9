"""Per-user image specs: what an analyst may ask for, how it is stored, what it hashes to.

The hostile corpus (tests/data/hostile-user-envs.yaml) is refused entry by entry, through
the validator and through `hubstack users env`, with nothing written; the spawn path
validates with the same function before anything is built (tests/integration/
test_user_images.py shows a refused spec builds nothing on the real stack)."""

from __future__ import annotations

import asyncio
import logging
from datetime import UTC, datetime, timedelta
from pathlib import Path
from types import SimpleNamespace

import pytest
import yaml

from hubstack.cli import main
from hubstack.config import load_config, parse_config
from hubstack.hub.spawn_options import SpawnOptionsError, parse_spawn_options
from hubstack.hub.spawner import HubstackSpawner
from hubstack.hub.users import UsersFile
from hubstack.images import user as ui
from hubstack.images.graph import ImageGraph

ROOT = Path(__file__).resolve().parents[2]
CORPUS = yaml.safe_load((ROOT / "tests" / "data" / "hostile-user-envs.yaml").read_text())
IDENT = {"uid": 23001, "gid": 23001, "groups": [23500], "home": "/home/alice"}
PARENT = "127.0.0.1:5000/hubstack/notebook@sha256:" + "a" * 64


@pytest.fixture
def cfg_file(tmp_path):
    path = tmp_path / "hubstack.yaml"
    path.write_text(
        yaml.safe_dump(
            {
                "state_dir": str(tmp_path / "state"),
                "source_dir": str(ROOT),
                "user_images": {"apt_allowlist": ["graphviz"], "max_packages": 20},
            }
        )
    )
    UsersFile(tmp_path / "state" / "users.yaml").add("alice", 23001, 23001, password="pw")
    return path


@pytest.fixture
def cfg(cfg_file):
    return load_config(cfg_file)


def test_valid_entries_are_normalised_and_sorted(cfg):
    env = ui.parse_env(
        cfg,
        {"pip": ["Polars==1.*", "requests[Socks,security] >=2, <3", "tqdm"], "apt": ["graphviz"]},
    )
    assert env.pip == ("polars==1.*", "requests[security,socks]<3,>=2", "tqdm")
    assert env.apt == ("graphviz",)


@pytest.mark.parametrize("spec", CORPUS["specs"], ids=lambda s: repr(s)[:50])
def test_every_hostile_spec_is_refused_naming_the_entry(cfg, spec):
    with pytest.raises(ui.EnvSpecError) as refused:
        ui.parse_env(cfg, spec)
    assert refused.value.problems
    if isinstance(spec, dict) and len(spec) == 1:
        ((key, entries),) = spec.items()
        if isinstance(entries, list) and len(entries) == 1:
            assert str(refused.value).startswith(f"{key} entry ")


def test_a_flood_of_entries_is_refused_by_the_package_limit(cfg):
    flood = {"pip": [f"pkg{i}" for i in range(CORPUS["flood"])]}
    with pytest.raises(
        ui.EnvSpecError, match=r"10000 packages: at most 20 \(user_images.max_packages\)"
    ):
        ui.parse_env(cfg, flood)


def test_the_cli_refuses_the_whole_corpus_and_writes_nothing(cfg, cfg_file, capsys):
    env_dir = cfg.user_envs_dir
    ui.save_env(cfg, "alice", ui.UserEnv(pip=("tqdm",)))
    before = ui.env_file(cfg, "alice").read_bytes()
    for spec in [*CORPUS["specs"], {"pip": [f"pkg{i}" for i in range(CORPUS["flood"])]}]:
        if not isinstance(spec, dict):
            continue
        args = []
        for key in ("pip", "apt"):
            entries = spec.get(key)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, str):
                    args.append(f"--{key}={entry}")
        if not args or set(spec) - {"pip", "apt"}:
            continue  # what the CLI cannot express (other keys, non-strings)
        if 1 < len(args) < CORPUS["flood"]:
            continue  # several entries: the CLI's add-and-replace semantics differ
        assert main(["-c", str(cfg_file), "users", "env", "alice", *args]) == 2, spec
        assert "nothing changed" in capsys.readouterr().err
    assert ui.env_file(cfg, "alice").read_bytes() == before
    assert sorted(p.name for p in env_dir.iterdir()) == ["alice.yaml"]


def test_cli_adds_replaces_shows_and_clears(cfg, cfg_file, capsys):
    run = lambda *a: main(["-c", str(cfg_file), "users", "env", "alice", *a])  # noqa: E731
    assert run("--pip", "polars==1.*", "--apt", "graphviz") == 0
    assert run("--pip", "polars==1.2") == 0
    assert ui.load_env(cfg, "alice") == ui.UserEnv(pip=("polars==1.2",), apt=("graphviz",))
    capsys.readouterr()
    assert run("--show") == 0
    assert capsys.readouterr().out.strip() == "alice: polars==1.2, apt:graphviz"
    assert run("--clear") == 0
    assert not ui.env_file(cfg, "alice").exists()
    assert main(["-c", str(cfg_file), "users", "env", "nobody-here", "--pip", "tqdm"]) == 2
    assert "no user 'nobody-here'" in capsys.readouterr().err


def test_hash_follows_parent_spec_template_and_account_only(cfg):
    env = ui.UserEnv(pip=("tqdm",))
    base = ui.plan(cfg, "alice", IDENT, env, "notebook", PARENT)
    same = ui.plan(cfg, "alice", dict(IDENT), ui.UserEnv(pip=("tqdm",)), "notebook", PARENT)
    assert base.hash == same.hash and len(base.hash) == 32
    new_parent = ui.plan(cfg, "alice", IDENT, env, "notebook", PARENT[:-1] + "b")
    new_spec = ui.plan(cfg, "alice", IDENT, ui.UserEnv(pip=("tqdm==4.0",)), "notebook", PARENT)
    other_uid = ui.plan(cfg, "alice", {**IDENT, "uid": 23009}, env, "notebook", PARENT)
    assert len({base.hash, new_parent.hash, new_spec.hash, other_uid.hash}) == 4
    files = base.generated_files()
    assert files["requirements.txt"] == b"tqdm\n" and files["apt.txt"] == b""
    assert files["passwd.add"] == b"alice:x:23001:23001:alice:/home/alice:/bin/bash\n"


def test_the_template_is_not_an_image_of_the_hierarchy(cfg):
    graph = ImageGraph.from_config(cfg)
    assert "user" not in graph
    assert (cfg.user_image_template / "Dockerfile").is_file()


def test_config_section_defaults_and_bad_allowlist():
    cfg = parse_config({})
    assert cfg.user_images.enabled and not cfg.user_images.form
    assert cfg.user_images.apt_allowlist == []
    with pytest.raises(Exception, match="not Debian package names"):
        parse_config({"user_images": {"apt_allowlist": ["ok", "Bad Name"]}})


def test_build_failure_message_is_pips_own_error():
    log = [
        "Step 5/9 : RUN ...",
        "ERROR: Could not find a version that satisfies the requirement no-such-pkg-hs12",
        "ERROR: No matching distribution found for no-such-pkg-hs12",
        "ERROR: The command '/bin/sh -c ...' returned a non-zero code: 1",
    ]
    msg = ui.build_failure(log, "The command returned a non-zero code: 1")
    assert "No matching distribution found for no-such-pkg-hs12" in msg
    assert "non-zero code" not in msg


def form_spawner(cfg, name: str = "alice"):
    s = HubstackSpawner(platform=cfg)
    s.user = SimpleNamespace(name=name, groups=[])
    return s


def test_the_spawn_form_shows_the_packages_box_only_where_the_config_enables_it(cfg):
    ui.save_env(cfg, "alice", ui.UserEnv(pip=("tqdm",), apt=("graphviz",)))
    assert 'name="packages"' not in form_spawner(cfg)._render_form()
    with_form = cfg.model_copy(
        update={"user_images": cfg.user_images.model_copy(update={"form": True})}
    )
    page = form_spawner(with_form)._render_form()
    assert 'name="packages"' in page
    assert ">tqdm\napt:graphviz</textarea>" in page  # the current list, ready to edit
    # Off: the REST option is refused too, naming the setting.
    with pytest.raises(SpawnOptionsError, match=r"user_images.form is off"):
        parse_spawn_options(cfg, {"packages": "cowsay"})


def test_the_form_sets_the_list_and_refuses_the_corpus_writing_nothing(cfg):
    cfg = cfg.model_copy(update={"user_images": cfg.user_images.model_copy(update={"form": True})})
    s = form_spawner(cfg)
    ui.save_env(cfg, "alice", ui.UserEnv(pip=("tqdm",)))
    before = ui.env_file(cfg, "alice").read_bytes()
    specs = [*CORPUS["specs"], {"pip": [f"pkg{i}" for i in range(CORPUS["flood"])]}]
    for spec in specs:
        if not isinstance(spec, dict) or set(spec) - {"pip", "apt"}:
            continue
        lines = []
        for key in ("pip", "apt"):
            entries = spec.get(key)
            for entry in entries if isinstance(entries, list) else []:
                if isinstance(entry, str) and "\n" not in entry and entry.strip():
                    lines.append(("apt:" if key == "apt" else "") + entry)
        if not lines:
            continue  # a blank line or a line break is no entry in a text area
        text = "\n".join(lines)
        options = s.options_from_form({"packages": [text]})
        with pytest.raises(SpawnOptionsError, match="nothing was changed"):
            parse_spawn_options(cfg, options)
    assert ui.env_file(cfg, "alice").read_bytes() == before
    # A valid list replaces the spec, through the same file `hubstack users env` edits;
    # an empty box clears it.
    s.user_options = s.options_from_form({"packages": ["  Polars==1.*\n\napt:graphviz\n"]})
    s.log = logging.getLogger("test")
    env = ui.parse_form_text(cfg, s._options().packages)
    asyncio.run(s._in_pool(s._keep_packages, env))
    assert ui.load_env(cfg, "alice") == ui.UserEnv(pip=("polars==1.*",), apt=("graphviz",))
    asyncio.run(s._in_pool(s._keep_packages, ui.parse_form_text(cfg, "")))
    assert not ui.env_file(cfg, "alice").exists()


def test_last_use_is_recorded_and_counts_for_older_than(cfg):
    assert ui.last_used(cfg, "alice", "a" * 32) is None
    ui.record_use(cfg, "alice", "a" * 32)
    used = ui.last_used(cfg, "alice", "a" * 32)
    assert used is not None and datetime.now(UTC) - used < timedelta(minutes=1)
    old = datetime.now(UTC) - timedelta(days=40)
    record = ui.UserImageRecord("alice", "a" * 32, "sha256:x", 1, built=old, in_use=False)
    assert record.last_activity == old
    record.used = used
    assert record.last_activity == used  # built 40 days ago, used today: not 30 days idle

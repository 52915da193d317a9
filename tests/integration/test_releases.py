"""`hubstack ci release`, `ci promote` of a release, and `ci prune`, on a temporary git repo of
tiny images, a real engine and a real registry (its API and its garbage collection).

The tests share one repository and registry and run in file order: release, refuse to
re-tag, promote and roll back, prune.
"""

from __future__ import annotations

import json

import pytest

from hubstack.ci.rebuild import commit_tag
from hubstack.ci.release import releases_dir
from hubstack.cli import main
from hubstack.registry import RegistryClient, auth_config
from tests.ci_support import change, manifest_digest, tiny_env

pytestmark = pytest.mark.integration
IMAGES = ["root", "mid", "side", "leaf"]


@pytest.fixture(scope="module")
def env(request, tmp_path_factory, docker_client):
    cfg, repo, conf = tiny_env(request, tmp_path_factory, docker_client, "releases")
    cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"namespace": "relt"})})
    conf.write_text(json.dumps(json.loads(cfg.model_dump_json(exclude={"path"}))))
    assert main(["-c", str(conf), "ci", "build", "--all", "--push"]) == 0
    return cfg, repo, conf


def digests(cfg, tag: str) -> dict[str, str | None]:
    return {n: manifest_digest(cfg, n, tag) for n in IMAGES}


def hubstack(conf, *args: str) -> int:
    return main(["-c", str(conf), "ci", *args])


def test_release_tags_every_image_and_writes_notes(env, capsys):
    cfg, _, conf = env
    assert hubstack(conf, "release", "1.0.0") == 0
    assert digests(cfg, "1.0.0") == digests(cfg, "latest") == digests(cfg, "1.0")
    out = capsys.readouterr().out
    assert "first release" in out and "hubstack ci promote 1.0.0" in out
    record = json.loads((releases_dir(cfg) / "1.0.0.json").read_text())
    assert record["digests"] == digests(cfg, "1.0.0") and record["released"]


def test_commit_tag_names_every_image_after_a_leaf_change(env):
    # The leaf alone is rebuilt; the others get the commit tag inside the registry, so the
    # commit can be released as a whole.
    cfg, repo, conf = env
    sha = change(repo, "leaf", "for-1.1")
    assert hubstack(conf, "build", "--since", "HEAD~1", "--push") == 0
    assert digests(cfg, commit_tag(sha)) == digests(cfg, "latest")
    assert digests(cfg, "latest")["leaf"] != digests(cfg, "1.0.0")["leaf"]

    assert hubstack(conf, "release", "1.1.0", "--from", sha) == 0
    assert digests(cfg, "1.1.0") == digests(cfg, "latest")
    notes = (releases_dir(cfg) / "1.1.0.md").read_text()
    assert "changes since 1.0.0" in notes


def test_a_release_is_never_retagged(env, capsys):
    cfg, repo, conf = env
    before = digests(cfg, "1.1.0")
    change(repo, "leaf", "not-1.1.0")
    assert hubstack(conf, "build", "--since", "HEAD~1", "--push") == 0
    capsys.readouterr()
    assert hubstack(conf, "release", "1.1.0") == 2
    err = capsys.readouterr().err
    assert "release 1.1.0 exists and is never re-tagged" in err and "1.1.1" in err
    assert hubstack(conf, "promote", "latest", "--to", "1.1.0") == 2
    assert "never re-tagged" in capsys.readouterr().err
    assert digests(cfg, "1.1.0") == before
    # The same images again: nothing to do, nothing moved.
    assert hubstack(conf, "release", "1.1.0", "--from", before_commit(cfg, before)) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert hubstack(conf, "release", "1.1") == 2
    assert "not a release version" in capsys.readouterr().err


def before_commit(cfg, wanted: dict) -> str:
    """A commit tag whose digests are WANTED (the tag CI pushed for 1.1.0's commit)."""
    registry = RegistryClient(cfg)
    for tag, digest in registry.tag_digests("leaf").items():
        if len(tag) == 12 and digest == wanted["leaf"]:
            return tag
    raise AssertionError("no commit tag names 1.1.0's leaf")


def test_patch_of_an_older_line_moves_only_its_minor_tag(env):
    cfg, _, conf = env
    assert hubstack(conf, "release", "1.0.1") == 0
    assert digests(cfg, "1.0") == digests(cfg, "1.0.1") == digests(cfg, "latest")
    assert digests(cfg, "1.1") == digests(cfg, "1.1.0")


def test_promote_a_release_and_roll_back(env):
    cfg, _, conf = env
    assert hubstack(conf, "promote", "1.1.0") == 0
    assert digests(cfg, "stable") == digests(cfg, "1.1.0")
    assert hubstack(conf, "promote", "1.0.0") == 0
    assert digests(cfg, "stable") == digests(cfg, "1.0.0")


def test_prune_keeps_what_is_named_or_used_and_frees_the_rest(env, docker_client, capsys):
    cfg, repo, conf = env
    # Releases now: 1.0.0 (stable), 1.0.1, 1.1.0, and 1.2.0 (the newest, kept); latest moves on.
    # One build is never released: its commit tag names nothing kept.
    stray = commit_tag(change(repo, "leaf", "never-released"))
    assert hubstack(conf, "build", "--since", "HEAD~1", "--push") == 0
    change(repo, "leaf", "for-1.2")
    assert hubstack(conf, "build", "--since", "HEAD~1", "--push") == 0
    assert hubstack(conf, "release", "1.2.0") == 0
    change(repo, "leaf", "after-1.2")
    assert hubstack(conf, "build", "--since", "HEAD~1", "--push") == 0
    assert manifest_digest(cfg, "leaf", stray) is not None
    # A stopped server on 1.0.1's leaf: it would start again on that image.
    used = f"{cfg.image_repository('leaf')}@{digests(cfg, '1.0.1')['leaf']}"
    docker_client.images.pull(used, auth_config=auth_config(cfg))
    container = docker_client.containers.create(used, ["true"])
    kept_before = {t: digests(cfg, t) for t in ("stable", "latest", "1.0.0", "1.0.1", "1.2.0")}
    try:
        assert hubstack(conf, "prune", "--keep", "1", "--dry-run") == 0
        assert "leaf: removed" in capsys.readouterr().out
        assert manifest_digest(cfg, "leaf", stray) is not None, "a dry run removes nothing"

        assert hubstack(conf, "prune", "--keep", "1") == 0
        out = capsys.readouterr().out
        assert "leaf: kept 1.0.1: a container uses it" in out and "garbage collection:" in out
        assert {t: digests(cfg, t) for t in kept_before} == kept_before
        assert manifest_digest(cfg, "leaf", "1.1.0") is None
        assert manifest_digest(cfg, "leaf", "1.1") is None
        assert manifest_digest(cfg, "leaf", stray) is None
        # root's 1.1.0 is stable's very manifest: deleting it would delete stable.
        assert manifest_digest(cfg, "root", "1.1.0") == kept_before["stable"]["root"]
        # What is left still pulls, layers and all, and a build pushes again after the GC.
        docker_client.images.remove(cfg.image_ref("leaf", "1.2.0"), force=True)
        docker_client.images.pull(
            cfg.image_repository("leaf"), tag="1.2.0", auth_config=auth_config(cfg)
        )
        change(repo, "root", "after-prune")
        assert hubstack(conf, "build", "--since", "HEAD~1", "--push") == 0
    finally:
        container.remove(force=True)

"""`hubstack ci build` and `ci promote` on a temporary git repo of tiny images, a real
engine and a real registry. `latest`/`stable` are checked through the registry API
(manifest digests before and after), as a puller would see them.

The tests share one repository and registry: each one records HEAD, makes its own
change, and builds `--since` that commit.
"""

from __future__ import annotations

import json

import pytest

from hubstack.ci.rebuild import Rebuilder, commit_tag, reports_dir
from hubstack.cli import main
from tests.ci_support import (
    PARENTS,
    break_dockerfile,
    change,
    commit,
    folder_of,
    git,
    manifest_digest,
    tiny_env,
)

pytestmark = pytest.mark.integration
IMAGES = ["root", "mid", "side", "leaf"]


@pytest.fixture(scope="module")
def env(request, tmp_path_factory, docker_client):
    cfg, repo, conf = tiny_env(request, tmp_path_factory, docker_client, "ci-build")
    # The first build of the tiny hierarchy: everything, pushed.
    assert main(["-c", str(conf), "ci", "build", "--all", "--push"]) == 0
    return cfg, repo, conf


def latest(cfg) -> dict[str, str | None]:
    return {n: manifest_digest(cfg, n, "latest") for n in IMAGES}


def cat(docker_client, cfg, name: str, file: str, tag: str = "latest") -> str:
    return docker_client.containers.run(
        cfg.image_ref(name, tag), ["cat", f"/usr/share/citest/{file}.txt"], remove=True
    ).decode()


def last_report(cfg) -> dict:
    reports = sorted(reports_dir(cfg).glob("*.json"))
    assert reports, "no build report was written"
    assert reports[-1].with_suffix(".txt").is_file()
    return json.loads(reports[-1].read_text())


def test_first_build_pushed_every_image(env):
    cfg, repo, _ = env
    assert all(latest(cfg).values())
    head = commit_tag(git(repo, "rev-parse", "HEAD"))
    assert all(manifest_digest(cfg, n, head) for n in IMAGES)


def test_leaf_change_rebuilds_only_the_leaf(env, docker_client, capsys):
    cfg, repo, conf = env
    before = latest(cfg)
    sha = change(repo, "leaf", "leaf-change")
    assert main(["-c", str(conf), "ci", "build", "--since", "HEAD~1", "--push"]) == 0
    after = latest(cfg)
    assert after["leaf"] != before["leaf"]
    assert {n: after[n] for n in ("root", "mid", "side")} == {
        n: before[n] for n in ("root", "mid", "side")
    }
    assert manifest_digest(cfg, "leaf", commit_tag(sha)) == after["leaf"]
    assert "leaf-change" in cat(docker_client, cfg, "leaf", "leaf")
    report = last_report(cfg)
    assert [(i["name"], i["status"]) for i in report["images"]] == [("leaf", "ok")]
    assert report["images"][0]["reason"] == "changed: images/leaf/marker.txt"
    assert "1 passed" in report["images"][0]["test_output"]


def test_root_change_rebuilds_every_descendant_in_order(env, docker_client):
    cfg, repo, conf = env
    before = latest(cfg)
    change(repo, "root", "root-change")
    assert (
        main(["-c", str(conf), "ci", "build", "--since", "HEAD~1", "--push", "--concurrency", "2"])
        == 0
    )
    after = latest(cfg)
    assert all(after[n] != before[n] for n in IMAGES)
    report = last_report(cfg)
    order = [i["name"] for i in report["images"]]
    assert (
        order[0] == "root"
        and order.index("mid") < order.index("leaf")
        and set(order) == set(IMAGES)
    )
    assert all(i["status"] == "ok" for i in report["images"])
    # The new leaf really is built FROM the new root, through mid.
    assert "root-change" in cat(docker_client, cfg, "leaf", "root")


def test_broken_dockerfile_fails_keeps_latest_and_skips_descendants(env, capsys):
    cfg, repo, conf = env
    base = git(repo, "rev-parse", "HEAD").strip()
    before = latest(cfg)
    change(repo, "side", "side-change")  # an independent branch in the same push still ships
    sha = break_dockerfile(repo, "mid")
    capsys.readouterr()
    try:
        assert main(["-c", str(conf), "ci", "build", "--since", base, "--push"]) == 1
        err = capsys.readouterr().err
        assert "image mid failed at build" in err and "exit" in err.lower()
        after = latest(cfg)
        assert (
            after["mid"] == before["mid"]
            and after["leaf"] == before["leaf"]
            and after["root"] == before["root"]
        )
        assert after["side"] != before["side"]
        assert manifest_digest(cfg, "mid", commit_tag(sha)) is None
        assert manifest_digest(cfg, "leaf", commit_tag(sha)) is None
        report = last_report(cfg)
        status = {i["name"]: (i["status"], i["error"]) for i in report["images"]}
        assert status["mid"][0] == "failed" and status["leaf"] == ("skipped", "parent mid failed")
        assert status["side"][0] == "ok" and report["ok"] is False
        assert (
            "deliberately broken"
            in next(i for i in report["images"] if i["name"] == "mid")["build_log"]
        )
    finally:
        df = folder_of(repo, "mid") / "Dockerfile"
        df.write_text(df.read_text().replace("RUN echo 'deliberately broken' && exit 3\n", ""))
        commit(repo, "repair mid")


def test_failing_image_tests_keep_latest(env):
    cfg, repo, conf = env
    before = latest(cfg)
    test = folder_of(repo, "leaf") / "test_image.py"
    test.write_text(
        test.read_text().replace(
            'assert "{name}" in out'.format(name="leaf"), 'assert "nope" in out'
        )
    )
    sha = commit(repo, "leaf test that cannot pass")
    try:
        assert main(["-c", str(conf), "ci", "build", "--since", "HEAD~1", "--push"]) == 1
        assert latest(cfg)["leaf"] == before["leaf"]
        assert manifest_digest(cfg, "leaf", commit_tag(sha)) is None
        leaf = last_report(cfg)["images"][0]
        assert (leaf["name"], leaf["status"], leaf["stage"]) == ("leaf", "failed", "test")
    finally:
        git(repo, "revert", "--no-edit", "HEAD")


def test_promote_moves_stable_and_rolls_back(env, capsys):
    cfg, repo, conf = env
    older = commit_tag(
        git(repo, "rev-list", "-n1", "HEAD", "--", "images/root")
    )  # the root-change commit
    newer = commit_tag(change(repo, "leaf", "promote-me"))
    assert main(["-c", str(conf), "ci", "build", "--since", "HEAD~1", "--push"]) == 0
    assert main(["-c", str(conf), "ci", "promote", newer]) == 0
    # Every image carries the commit tag: the leaf's rebuild, the others as they were (side
    # too, given it inside the registry), so promoting it moves the whole platform.
    for n in ("root", "mid", "side", "leaf"):
        assert manifest_digest(cfg, n, "stable") == manifest_digest(cfg, n, newer) is not None
    assert manifest_digest(cfg, "side", newer) == manifest_digest(cfg, "side", "latest")
    assert main(["-c", str(conf), "ci", "promote", older]) == 0
    for n in ("root", "mid", "side", "leaf"):
        assert manifest_digest(cfg, n, "stable") == manifest_digest(cfg, n, older)
    assert manifest_digest(cfg, "leaf", "stable") != manifest_digest(cfg, "leaf", newer)
    capsys.readouterr()
    assert main(["-c", str(conf), "ci", "promote", "0123456789ab"]) == 2
    assert "no image has the tag '0123456789ab'" in capsys.readouterr().err


def test_missing_parents_are_built_first_on_a_fresh_registry(env, docker_client):
    # A hosted CI runner starts with an empty engine and registry: a leaf change must still build.
    cfg, repo, _ = env
    fresh = cfg.model_copy(
        update={"images": cfg.images.model_copy(update={"namespace": "citestfresh"})}
    )
    change(repo, "leaf", "fresh")

    try:
        report = Rebuilder(fresh, docker_client, push=True, out=lambda line: None).run("HEAD~1")
        assert [(i.name, i.status) for i in report.images] == [
            ("root", "ok"),
            ("mid", "ok"),
            ("leaf", "ok"),
        ]
        assert "no latest of it" in report.images[0].reason
        assert (
            manifest_digest(fresh, "leaf", "latest")
            and manifest_digest(fresh, "side", "latest") is None
        )
    finally:
        for n in ("root", "mid", "leaf"):
            for img in docker_client.images.list(name=fresh.image_repository(n)):
                for t in img.tags:
                    docker_client.images.remove(t)


def test_on_demand_image_is_built_for_its_own_change_not_for_a_parents(env, docker_client):
    # images.on_demand (the GPU image: GBs of CUDA wheels) is built when someone asks for it;
    # a parent's change must not download it for a site that never did. Its own change is
    # built, so that CI tests it; from then on it follows its parents like any image.
    cfg, repo, _ = env
    lines: list[str] = []
    fresh = cfg.model_copy(
        update={
            "images": cfg.images.model_copy(update={"namespace": "citestod", "on_demand": ["side"]})
        }
    )
    try:
        change(repo, "root", "on-demand-parent")
        report = Rebuilder(fresh, docker_client, push=True, out=lines.append).run("HEAD~1")
        assert [(i.name, i.status) for i in report.images] == [
            ("root", "ok"),
            ("mid", "ok"),
            ("leaf", "ok"),
        ]
        assert report.ok
        assert manifest_digest(fresh, "side", "latest") is None
        assert any(line.startswith("[ci] side: not built: on demand") for line in lines), lines

        change(repo, "side", "on-demand-own")
        report = Rebuilder(fresh, docker_client, push=True, out=lines.append).run("HEAD~1")
        assert [(i.name, i.status) for i in report.images] == [("side", "ok")]

        change(repo, "root", "on-demand-parent-again")
        report = Rebuilder(fresh, docker_client, push=True, out=lines.append).run("HEAD~1")
        assert {i.name for i in report.images} == {"root", "mid", "side", "leaf"}
        assert "on-demand-parent-again" in cat(docker_client, fresh, "side", "root")
    finally:
        for n in PARENTS:
            for img in docker_client.images.list(name=fresh.image_repository(n)):
                for t in img.tags:
                    docker_client.images.remove(t)

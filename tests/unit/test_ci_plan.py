"""Change detection on a temporary git repository of tiny images (no engine needed)."""

import json

import pytest

from hubstack.ci.plan import make_plan
from hubstack.cli import main
from hubstack.config import parse_config
from hubstack.errors import CommandError
from tests.ci_support import (
    break_dockerfile,
    change,
    commit,
    folder_of,
    git,
    make_repo,
    tiny_config,
)


@pytest.fixture
def repo(tmp_path):
    return make_repo(tmp_path / "repo", with_extras=True)


@pytest.fixture
def cfg(repo, tmp_path):
    return tiny_config(parse_config({}), repo, tmp_path / "state", with_extras=True)


def test_no_change_plans_nothing(repo, cfg):
    git(repo, "tag", "before")
    commit(repo, "empty")
    (repo / "README.md").write_text("a change outside every image\n")
    commit(repo, "docs")
    assert make_plan(cfg, "before").items == []


def test_leaf_change_rebuilds_only_the_leaf_and_what_is_built_from_it(repo, cfg):
    change(repo, "leaf")
    plan = make_plan(cfg, "HEAD~1")
    assert plan.names == ["leaf", "spark-executor"]
    assert plan.item("leaf").reason == "changed: images/leaf/marker.txt"
    assert plan.item("spark-executor").reason == "parent leaf rebuilt"


def test_root_change_rebuilds_every_descendant_parents_first(repo, cfg):
    change(repo, "root")
    plan = make_plan(cfg, "HEAD~1")
    names = plan.names
    assert set(names) == {"root", "mid", "leaf", "side", "spark-executor", "hub"}
    for child, parent in [
        ("mid", "root"),
        ("leaf", "mid"),
        ("side", "root"),
        ("spark-executor", "leaf"),
        ("hub", "root"),
    ]:
        assert names.index(parent) < names.index(child)
        assert plan.item(child).reason == f"parent {parent} rebuilt"
    assert plan.item("root").reason == "changed: images/root/marker.txt"


def test_top_level_contexts_and_build_yaml_includes_count(repo, cfg):
    base = git(repo, "rev-parse", "HEAD").strip()
    (folder_of(repo, "spark-executor") / "entrypoint.sh").write_text("#!/bin/sh\n")
    commit(repo, "executor entrypoint")
    assert make_plan(cfg, base).names == ["spark-executor"]
    (repo / "pkg" / "module.py").write_text("VERSION = 2\n")
    commit(repo, "package change")
    plan = make_plan(cfg, "HEAD~1")
    assert plan.names == ["hub"]
    assert plan.item("hub").reason == "changed: pkg/module.py"


def test_a_changed_image_keeps_its_own_reason_when_its_parent_also_changed(repo, cfg):
    base = git(repo, "rev-parse", "HEAD").strip()
    change(repo, "mid")
    break_dockerfile(repo, "leaf")
    plan = make_plan(cfg, base)
    assert plan.names[:2] == ["mid", "leaf"]
    assert plan.item("leaf").reasons == ["changed: images/leaf/Dockerfile", "parent mid rebuilt"]


def test_graph_comes_from_the_dockerfiles_at_head(repo, cfg):
    # Re-parent side onto mid in the Dockerfile: a mid change must now rebuild side too.
    (folder_of(repo, "side") / "Dockerfile").write_text(
        "ARG HUBSTACK_REPO=hubstack\nARG HUBSTACK_TAG=latest\nFROM "
        "${HUBSTACK_REPO}/mid:${HUBSTACK_TAG}\n"
        "COPY marker.txt /usr/share/citest/side.txt\n"
    )
    commit(repo, "side from mid")
    change(repo, "mid")
    assert make_plan(cfg, "HEAD~1").names == ["mid", "leaf", "side", "spark-executor"]


def test_unknown_ref_is_a_clear_error(cfg):
    with pytest.raises(CommandError, match=r"unknown git revision 'no-such-branch'"):
        make_plan(cfg, "no-such-branch")


def test_cli_plan_text_and_json(repo, cfg, tmp_path, capsys):
    change(repo, "mid")
    conf = tmp_path / "hubstack.yaml"
    conf.write_text(json.dumps(json.loads(cfg.model_dump_json(exclude={"path"}))))
    assert main(["-c", str(conf), "ci", "plan", "--since", "HEAD~1"]) == 0
    out = capsys.readouterr().out
    assert "3 image(s) to rebuild, in build order" in out
    assert out.index("mid") < out.index("leaf") < out.index("spark-executor")
    assert main(["-c", str(conf), "ci", "plan", "--since", "HEAD~1", "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert [i["name"] for i in data["images"]] == ["mid", "leaf", "spark-executor"]
    assert data["images"][1]["reason"] == "parent mid rebuilt"
    assert main(["-c", str(conf), "ci", "plan", "--since", "v9.9"]) == 2
    assert "unknown git revision 'v9.9'" in capsys.readouterr().err

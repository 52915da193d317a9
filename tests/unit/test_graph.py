"""The build graph comes from the Dockerfiles' FROM lines; bad graphs get clear errors."""

import threading
import time
from pathlib import Path

import pytest

from hubstack.cli import main
from hubstack.config import ConfigError, parse_config
from hubstack.images.build import BuildResult, ImageBuilder
from hubstack.images.graph import GraphError, ImageGraph

CHILD = (
    "ARG HUBSTACK_REPO=hubstack\nARG HUBSTACK_TAG=latest\n"
    "FROM ${{HUBSTACK_REPO}}/{parent}:${{HUBSTACK_TAG}}\n"
)
ROOT_IMAGE = "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n"


def make_tree(tmp_path: Path, dockerfiles: dict[str, str]):
    for name, text in dockerfiles.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        (tmp_path / "images" / name / "Dockerfile").write_text(text)
    return parse_config(
        {"source_dir": str(tmp_path), "images": {"contexts": ["images/*"], "on_demand": ["big"]}}
    )


def test_order_comes_from_from_lines(tmp_path):
    cfg = make_tree(
        tmp_path,
        {
            "root": ROOT_IMAGE,
            "mid": CHILD.format(parent="root"),
            "leaf": CHILD.format(parent="mid"),
            "other": CHILD.format(parent="root"),
            "big": CHILD.format(parent="leaf"),
        },
    )
    g = ImageGraph.from_config(cfg)
    assert g.order() == ["root", "mid", "leaf", "big", "other"]
    assert g["leaf"].parent == "mid"
    assert g.ancestors("leaf") == ["root", "mid"]
    assert g.descendants(["mid"]) == ["leaf", "big"]
    assert g.with_ancestors(["other"]) == ["root", "other"]
    assert g.default_targets(cfg) == ["root", "mid", "leaf", "other"]  # big is on demand


def test_multi_stage_and_arg_defaults(tmp_path):
    cfg = make_tree(
        tmp_path,
        {
            "root": ROOT_IMAGE,
            "app": "ARG HUBSTACK_REPO=hubstack\nARG HUBSTACK_TAG=latest\n"
            "FROM ${HUBSTACK_REPO}/root:${HUBSTACK_TAG} AS build\nRUN true\n"
            "FROM build\nCOPY --from=build /x /x\n",
        },
    )
    assert ImageGraph.from_config(cfg)["app"].parents == ("root",)


def test_unknown_parent_is_named(tmp_path):
    cfg = make_tree(tmp_path, {"root": ROOT_IMAGE, "leaf": CHILD.format(parent="rot")})
    with pytest.raises(
        GraphError,
        match=r"leaf/Dockerfile:3: FROM .*/rot:latest: "
        r"unknown parent image 'rot' \(images: leaf, root\)",
    ):
        ImageGraph.from_config(cfg)


def test_foreign_base_is_refused(tmp_path):
    cfg = make_tree(tmp_path, {"root": "FROM ubuntu:24.04\n"})
    with pytest.raises(
        GraphError,
        match=r"FROM ubuntu:24.04: unknown parent: neither one of our images .* "
        r"nor the configured base image debian:bookworm-slim",
    ):
        ImageGraph.from_config(cfg)


def test_cycle_is_named(tmp_path):
    cfg = make_tree(tmp_path, {"a": CHILD.format(parent="b"), "b": CHILD.format(parent="a")})
    with pytest.raises(GraphError, match=r"FROM cycle: a -> b -> a"):
        ImageGraph.from_config(cfg)


def test_cli_reports_graph_errors_without_traceback(tmp_path, capsys):
    make_tree(tmp_path, {"a": CHILD.format(parent="b"), "b": CHILD.format(parent="a")})
    conf = tmp_path / "hubstack.yaml"
    conf.write_text(f"source_dir: {tmp_path}\nimages:\n  contexts: [images/*]\n")
    assert main(["-c", str(conf), "images", "list"]) == 2
    err = capsys.readouterr().err
    assert "hubstack: error: FROM cycle: a -> b -> a" in err and "Traceback" not in err


def test_cli_reports_config_errors(tmp_path, capsys):
    conf = tmp_path / "hubstack.yaml"
    conf.write_text("registry:\n  address: [\n")
    assert main(["-c", str(conf), "images", "list"]) == 2
    assert f"{conf}: line 3, column 1: not valid YAML" in capsys.readouterr().err


def test_build_yaml_include_must_stay_in_the_tree(tmp_path):
    cfg = make_tree(tmp_path, {"root": ROOT_IMAGE})
    (tmp_path / "images/root/build.yaml").write_text("include: [../../../etc]\n")
    with pytest.raises(GraphError, match=r"include: '../../../etc' is not a path inside"):
        ImageGraph.from_config(cfg)


def test_the_real_hierarchy():
    g = ImageGraph.from_config(parse_config({}))
    order = g.order()
    for parent, child in [("base", "python"), ("python", "spark"), ("spark", "notebook")]:
        assert order.index(parent) < order.index(child)
        assert g[child].parent == parent


class _TimedBuilder(ImageBuilder):
    """Builds nothing: records when each image's build ran, and fails those named."""

    def __init__(self, cfg, fail=()):
        super().__init__(cfg, client=None, progress=lambda line: None)
        self.fail, self.spans, self.lock = set(fail), {}, threading.Lock()

    def build(self, name, tag=None, position="", **kw):
        started = time.monotonic()
        time.sleep(0.2)
        with self.lock:
            self.spans[name] = (started, time.monotonic())
        failed = name in self.fail
        return BuildResult(name, name, not failed, error="boom" if failed else None)


def _tree(tmp_path, parallel: int):
    cfg = make_tree(
        tmp_path,
        {
            "root": ROOT_IMAGE,
            "mid": CHILD.format(parent="root"),
            "leaf": CHILD.format(parent="mid"),
            "other": CHILD.format(parent="root"),
            "third": CHILD.format(parent="root"),
        },
    )
    images = cfg.images.model_copy(update={"parallel_builds": parallel})
    return cfg.model_copy(update={"images": images})


def test_siblings_build_side_by_side_and_children_after_their_parents(tmp_path):
    builder = _TimedBuilder(_tree(tmp_path, parallel=2))
    results = builder.build_many()
    assert [r.name for r in results] == ["root", "mid", "leaf", "other", "third"]
    assert all(r.ok for r in results)
    spans = builder.spans
    for child, parent in (("mid", "root"), ("leaf", "mid"), ("other", "root"), ("third", "root")):
        assert spans[child][0] >= spans[parent][1], f"{child} started before {parent} was built"
    # mid and other (the first two of root's children) overlap; never three at once.
    assert spans["other"][0] < spans["mid"][1]
    for t in (start for start, _ in spans.values()):
        assert sum(1 for s, e in spans.values() if s <= t < e) <= 2


def test_one_build_at_a_time_when_asked(tmp_path):
    builder = _TimedBuilder(_tree(tmp_path, parallel=1))
    builder.build_many()
    ordered = sorted(builder.spans.values())
    assert all(a[1] <= b[0] for a, b in zip(ordered, ordered[1:], strict=False))


def test_a_failed_image_stops_its_branch_only(tmp_path):
    builder = _TimedBuilder(_tree(tmp_path, parallel=2), fail={"mid"})
    results = {r.name: r for r in builder.build_many()}
    assert not results["mid"].ok
    assert not results["leaf"].ok and results["leaf"].error == "parent mid failed"
    assert "leaf" not in builder.spans  # never started
    assert results["other"].ok and results["third"].ok


def test_ci_concurrency_moved_to_images_parallel_builds():
    with pytest.raises(ConfigError, match=r"ci: concurrency .* images\.parallel_builds"):
        parse_config({"ci": {"concurrency": 3}})
    assert parse_config({}).images.parallel_builds == 2


def test_siblings_beginning_with_the_same_step_never_build_at_once(tmp_path):
    """On the classic builder both would make their own copy of the shared first step, and
    a rebuild with nothing changed could then miss the cache (a CI failure, once)."""
    same = CHILD.format(parent="root") + "USER root\nRUN true\n"
    cfg = make_tree(
        tmp_path,
        {
            "root": ROOT_IMAGE,
            "a": same,
            "b": same.replace("RUN true", "RUN false"),
            "c": CHILD.format(parent="root") + "LABEL x=y\nUSER root\n",
        },
    )
    images = cfg.images.model_copy(update={"parallel_builds": 3})
    builder = _TimedBuilder(cfg.model_copy(update={"images": images}))
    builder.build_many()
    spans = builder.spans
    assert ImageGraph.from_config(cfg)["a"].first_step() == "USER root"
    a, b = sorted((spans["a"], spans["b"]))
    assert a[1] <= b[0], "a and b, both beginning USER root, were built at once"
    # c begins differently: it may build beside either.
    assert spans["c"][0] < max(spans["a"][1], spans["b"][1])

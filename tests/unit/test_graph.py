"""The build graph comes from the Dockerfiles' FROM lines; bad graphs get clear errors."""

from pathlib import Path

import pytest

from hubstack.cli import main
from hubstack.config import parse_config
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

"""A failed build never replaces a working image: tiny images of their own."""

from __future__ import annotations

import pytest

from hubstack.config import parse_config
from hubstack.images.build import ImageBuilder
from tests.conftest import SESSION_ID

pytestmark = pytest.mark.integration


def test_broken_dockerfile_leaves_the_tag_and_skips_children(tmp_path, docker_client):
    images = tmp_path / "images"
    (images / "root").mkdir(parents=True)
    (images / "leaf").mkdir()
    (images / "root" / "Dockerfile").write_text(
        f"ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${{BASE_IMAGE}}\nRUN echo v1-{SESSION_ID} > "
        "/v\n"
    )
    (images / "leaf" / "Dockerfile").write_text(
        "ARG HUBSTACK_REPO=hubstack\nARG HUBSTACK_TAG=latest\nFROM "
        "${HUBSTACK_REPO}/root:${HUBSTACK_TAG}\nRUN cat /v\n"
    )
    cfg = parse_config(
        {
            "source_dir": str(tmp_path),
            "images": {"namespace": f"buildtest{SESSION_ID}", "contexts": ["images/*"]},
            "registry": {"address": "127.0.0.1:5999"},
            "state_dir": str(tmp_path / "state"),
        }
    )
    lines: list[str] = []
    builder = ImageBuilder(cfg, docker_client, progress=lines.append)
    first = builder.build_many(tag="t")
    assert [r.ok for r in first] == [True, True]
    good = docker_client.images.get(cfg.image_ref("root", "t")).id

    (images / "root" / "Dockerfile").write_text(
        "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\nRUN exit 3\n"
    )
    second = builder.build_many(tag="t")
    assert [(r.name, r.ok) for r in second] == [("root", False), ("leaf", False)]
    assert "returned a non-zero code: 3" in second[0].error
    assert second[1].error == "parent root failed"
    assert any("root: FAILED" in line for line in lines) and any(
        "leaf: skipped, parent root failed" in line for line in lines
    )
    assert docker_client.images.get(cfg.image_ref("root", "t")).id == good, (
        "a failed build moved the tag"
    )
    for name in ("leaf", "root"):
        docker_client.images.remove(cfg.image_ref(name, "t"), force=True)

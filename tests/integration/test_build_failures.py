"""A failed build never replaces a working image: tiny images of their own."""

from __future__ import annotations

import docker
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


PROBE_TLS = """\
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
RUN apt-get update && apt-get install -y --no-install-recommends curl ca-certificates
COPY extra-ca.pem /usr/local/share/ca-certificates/hubstack-extra-ca.crt
RUN update-ca-certificates && curl -fsS https://pypi.org/simple/pip/ -o /dev/null
"""


def test_builds_trust_the_hosts_ca_by_default_and_a_tls_failure_is_one_line(
    tmp_path, docker_client
):
    """A root image fetching from PyPI over HTTPS, as images/python does: with the default
    config it trusts what the host trusts; with `base.extra_ca_bundle: none` on a network
    that re-signs TLS (this one does), the failure is one line naming the key to set."""
    (tmp_path / "images" / "probe").mkdir(parents=True)
    (tmp_path / "images" / "probe" / "Dockerfile").write_text(PROBE_TLS)
    common = {
        "source_dir": str(tmp_path),
        "images": {"namespace": f"tlstest{SESSION_ID}", "contexts": ["images/*"]},
        "registry": {"address": "127.0.0.1:5999"},
        "state_dir": str(tmp_path / "state"),
    }
    default = parse_config(common)
    assert default.base.extra_ca_bundle is not None, "the host's bundle is the default"
    assert ImageBuilder(default, docker_client, progress=print).build("probe", tag="t").ok

    bare = parse_config({**common, "base": {"extra_ca_bundle": "none"}})
    lines: list[str] = []
    result = ImageBuilder(bare, docker_client, progress=lines.append).build("probe", tag="bare")
    try:
        if result.ok:
            print("NOTE: this network does not re-sign TLS; `none` builds too")
            return
        assert result.error is not None and "base.extra_ca_bundle" in result.error
        failed = [line for line in lines if "probe: FAILED" in line]
        assert len(failed) == 1 and "\n" not in failed[0], lines
        assert "full log: " in failed[0]
        assert "SSL certificate problem" in (tmp_path / "state/logs/build-probe.log").read_text()
    finally:
        for tag in ("t", "bare"):
            try:
                docker_client.images.remove(default.image_ref("probe", tag), force=True)
            except docker.errors.ImageNotFound:
                pass

"""A failed build never replaces a working image: tiny images of their own."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time

import docker
import pytest
import yaml

from hubstack.config import parse_config
from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import ImageBuilder
from tests.conftest import ROOT, SESSION_ID
from tests.second_engine import second_engine

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module", autouse=True)
def base_image(platform_config, docker_client):
    """The tiny images build FROM the base image (pulled, or built offline here)."""
    bootstrap(platform_config, docker_client)


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


def test_killed_build_leaves_the_tag(tmp_path, docker_client):
    """Fault: `hubstack images build` is killed (SIGKILL, as an OOM kill or a cancelled CI
    job does) in the middle of a RUN step. The engine drops the build; the tag stays on the
    image it had."""
    (tmp_path / "images" / "slow").mkdir(parents=True)
    dockerfile = tmp_path / "images" / "slow" / "Dockerfile"
    head = "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n"
    dockerfile.write_text(f"{head}RUN echo v1-{SESSION_ID} > /v\n")
    data = {
        "source_dir": str(tmp_path),
        "images": {"namespace": f"killtest{SESSION_ID}", "contexts": ["images/*"]},
        "registry": {"address": "127.0.0.1:5999"},
        "state_dir": str(tmp_path / "state"),
    }
    (tmp_path / "hubstack.yaml").write_text(yaml.safe_dump(data))
    cfg = parse_config(data)
    ref = cfg.image_ref("slow", "t")
    assert ImageBuilder(cfg, docker_client, progress=print).build("slow", tag="t").ok
    good = docker_client.images.get(ref).id

    dockerfile.write_text(f"{head}RUN sleep 8 && echo v2-{SESSION_ID} > /v\n")
    build = subprocess.Popen(
        [sys.executable, "-m", "hubstack", "-c", str(tmp_path / "hubstack.yaml")]
        + ["images", "build", "slow", "--tag", "t"],
        cwd=ROOT,
        env=dict(os.environ, PYTHONPATH=str(ROOT)),
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
    )
    try:
        assert build.stdout is not None
        for line in build.stdout:
            if "RUN sleep 8" in line:
                break
        time.sleep(2)  # inside the RUN step
        os.kill(build.pid, signal.SIGKILL)
        build.wait(10)
        # Longer than the step would have taken: a build the engine kept would be tagged now.
        time.sleep(12)
        assert docker_client.images.get(ref).id == good, "a killed build moved the tag"
        out = docker_client.containers.run(ref, ["cat", "/v"], remove=True).decode().strip()
        assert out == f"v1-{SESSION_ID}"
    finally:
        build.kill()
        docker_client.images.remove(ref, force=True)


@pytest.fixture
def engine_on_a_small_disk(platform_config, docker_client):
    """A second, real dockerd whose data root is a 400 MiB tmpfs: a disk that really fills.
    The base image is copied over from the main engine."""
    with second_engine(data_size="400m") as client:
        base = docker_client.images.get(platform_config.base.image)
        client.images.load(b"".join(base.save(named=True)))
        yield client


def test_disk_full_build_leaves_the_tag_and_says_so(tmp_path, engine_on_a_small_disk):
    """Fault: the engine's disk fills during a build (a RUN writes until the data root has no
    space left). The build fails with one line saying the disk is full; the tag stays."""
    engine = engine_on_a_small_disk
    (tmp_path / "images" / "big").mkdir(parents=True)
    dockerfile = tmp_path / "images" / "big" / "Dockerfile"
    head = "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n"
    dockerfile.write_text(f"{head}RUN echo v1 > /v\n")
    cfg = parse_config(
        {
            "source_dir": str(tmp_path),
            "images": {"namespace": "diskfull", "contexts": ["images/*"]},
            "registry": {"address": "127.0.0.1:5999"},
            "state_dir": str(tmp_path / "state"),
        }
    )
    lines: list[str] = []
    builder = ImageBuilder(cfg, engine, progress=lines.append)
    assert builder.build("big", tag="t").ok
    good = engine.images.get(cfg.image_ref("big", "t")).id

    dockerfile.write_text(f"{head}RUN head -c 1G /dev/zero > /fill && echo v2 > /v\n")
    result = builder.build("big", tag="t")
    assert not result.ok
    failed = [line for line in lines if "big: FAILED" in line]
    assert len(failed) == 1 and "ran out of disk space" in failed[0], lines
    assert "No space left on device" in (tmp_path / "state/logs/build-big.log").read_text()
    assert engine.images.get(cfg.image_ref("big", "t")).id == good, "a failed build moved the tag"


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

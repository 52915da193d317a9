"""Locks as input: the same commit builds the same packages on an empty engine, the images
hold exactly their locks, `images lock` makes a lock pip takes with --require-hashes, and
a dpkg.lock pins apt (and fails clearly once the mirror lost a pinned version)."""

from __future__ import annotations

import shutil
import time
from pathlib import Path

import docker
import pytest

from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import ImageBuilder
from hubstack.images.lock import TOOL_VENV, Locker, parse_requirements_lock
from hubstack.images.lockdiff import _lock_files, parse_pip
from tests.conftest import ROOT, SESSION_ID, TEST_TAG
from tests.second_engine import second_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

LOCKED = ["base", "python"]
"""What the second engine builds: the root and the image whose pip lock is the biggest."""


def locks(client: docker.DockerClient, image_id: str, ref: str) -> dict[str, bytes]:
    files = _lock_files(client, image_id, ref)
    return {k: v for k, v in files.items() if k.split("/")[0] in LOCKED}


def test_same_commit_builds_identical_locks_on_an_empty_engine(
    hierarchy, platform_config, docker_client
):
    """base and python, built again from nothing (no layer cache, no image but the Debian
    root, which is an input like a pulled debian:bookworm-slim) hold the same packages."""
    cfg = platform_config
    root_image = docker_client.images.get(cfg.base.image)
    with second_engine() as empty:
        assert empty.images.list() == []
        started = time.monotonic()
        empty.images.load(b"".join(root_image.save(named=True)))
        # The second engine has no NAT for its own bridge: builds use the host's network.
        builder = ImageBuilder(
            cfg, empty, progress=lambda line: None, nocache=True, network_mode="host"
        )
        results = builder.build_many(["python"], tag=TEST_TAG)
        took = time.monotonic() - started
        print(f"\nbase+python on an empty engine, no cache: {took:.0f}s")
        assert [r.name for r in results] == LOCKED
        assert all(r.ok for r in results), [(r.name, r.error, r.log[-15:]) for r in results]
        py = results[-1]
        assert py.image_id
        again = locks(empty, py.image_id, py.ref)
    first = locks(docker_client, hierarchy["python"]["image_id"], hierarchy["python"]["ref"])
    assert set(first) == {f"{n}/{f}" for n in LOCKED for f in ("dpkg.txt", "pip-freeze.txt")}
    for path in sorted(first):
        assert again[path] == first[path], f"{path} differs between two builds of one commit"


def test_images_hold_exactly_their_python_locks(hierarchy, docker_client):
    files = _lock_files(docker_client, hierarchy["spark"]["image_id"], hierarchy["spark"]["ref"])
    for name, extra in (("python", set()), ("spark", {"python"})):
        want = {}
        for image in sorted({name} | extra):
            lock = (ROOT / "images" / image / "requirements.txt").read_text()
            want.update({k: v[1] for k, v in parse_requirements_lock(lock).items()})
        for image in sorted({name} | extra):  # what an image removes after its lock
            omit = ROOT / "images" / image / "requirements.omit"
            for line in omit.read_text().splitlines() if omit.is_file() else []:
                if line.strip() and not line.startswith("#"):
                    want.pop(line.strip())
        held = {k: v[1] for k, v in parse_pip(files[f"{name}/pip-freeze.txt"].decode()).items()}
        assert held.pop("pip") == "25.3"
        assert held == want, name


@pytest.fixture(scope="module")
def lock_repo(tmp_path_factory, platform_config, docker_client):
    """A copy of base and python in a folder of its own, with a namespace of its own: locks
    written there never touch the checkout, and the session's images keep their tags."""
    repo = tmp_path_factory.mktemp("lockrepo")
    for name in LOCKED:
        shutil.copytree(ROOT / "images" / name, repo / "images" / name)
    images = platform_config.images.model_copy(
        update={"namespace": f"locktest{SESSION_ID}", "contexts": ["images/*"], "on_demand": []}
    )
    cfg = platform_config.model_copy(update={"source_dir": repo, "images": images})
    bootstrap(cfg, docker_client, progress=lambda line: None)
    base = ImageBuilder(cfg, docker_client, progress=lambda line: None).build("base", TEST_TAG)
    assert base.ok, base.log[-15:]
    yield cfg, repo
    for image in docker_client.images.list():
        for tag in image.tags:
            if tag.startswith(cfg.image_prefix + "/"):
                docker_client.images.remove(tag, force=True)


def test_lock_python_gives_a_lock_pip_installs_with_require_hashes(lock_repo, docker_client):
    cfg, repo = lock_repo
    lines: list[str] = []
    started = time.monotonic()
    locker = Locker(cfg, docker_client, tag=TEST_TAG, progress=lines.append)
    result = locker.lock_python("python")
    print(f"\nimages lock python (pins kept): {time.monotonic() - started:.0f}s")
    assert any("resolving requirements.in" in line for line in lines), lines
    lock = repo / "images/python/requirements.txt"
    text = lock.read_text()
    assert text.startswith("# hubstack-lock-inputs: sha256:")
    assert "hubstack images lock python" in text and "--index-url" not in text
    assert "jupyterlab==" in text and result.file.endswith("requirements.txt")
    # pip itself checks the new lock: every file pinned by hash, downloaded and verified.
    out = docker_client.containers.run(
        locker._tool_image("python"),
        [
            "sh",
            "-c",
            f"{TOOL_VENV}/bin/pip install --dry-run --ignore-installed --require-hashes "
            "--no-deps -q -r /lock/requirements.txt && echo HASHES-OK",
        ],
        volumes={str(lock): {"bind": "/lock/requirements.txt", "mode": "ro"}},
        user="root",
        remove=True,
    ).decode()
    print(f"with pip's own check: {time.monotonic() - started:.0f}s")
    assert "HASHES-OK" in out


TINY = """\
ARG HUBSTACK_REPO=hubstack
ARG HUBSTACK_TAG=latest
FROM ${HUBSTACK_REPO}/base:${HUBSTACK_TAG}
USER root
COPY Dockerfile dpkg.loc[k] /tmp/hubstack/
RUN apt-get update \\
 && hubstack-apt-pin tiny /tmp/hubstack/dpkg.lock \\
 && apt-get install -y less \\
 && rm -rf /var/lib/apt/lists/* /tmp/hubstack \\
 && hubstack-write-lock tiny
USER 1000:100
"""


def test_dpkg_lock_pins_apt_and_a_lost_version_fails_clearly(lock_repo, docker_client):
    cfg, repo = lock_repo
    folder: Path = repo / "images" / "tiny"
    folder.mkdir(exist_ok=True)
    (folder / "Dockerfile").write_text(TINY)
    builder = ImageBuilder(cfg, docker_client, progress=lambda line: None)

    # `images lock tiny --dpkg`: one build without the lock; what it holds becomes the lock.
    result = Locker(cfg, docker_client, tag=TEST_TAG, progress=lambda line: None).lock_dpkg("tiny")
    dpkg_lock = (folder / "dpkg.lock").read_text()
    assert any(line.startswith("less=") for line in dpkg_lock.splitlines())
    assert "+ less" in " ".join(c.format() for c in result.changes)

    pinned = builder.build("tiny", TEST_TAG)
    assert pinned.ok, pinned.log[-15:]
    assert pinned.image_id
    files = _lock_files(docker_client, pinned.image_id, pinned.ref)
    assert files["tiny/dpkg.txt"].decode() == dpkg_lock
    assert files["tiny/dpkg.lock"].decode() == dpkg_lock

    # The mirror no longer has the pinned version: the build says so and what to run.
    (folder / "dpkg.lock").write_text(
        "\n".join(
            "less=1:0.0-hubstack-gone" if line.startswith("less=") else line
            for line in dpkg_lock.splitlines()
        )
        + "\n"
    )
    stale = builder.build("tiny", TEST_TAG)
    assert not stale.ok
    log = "\n".join(stale.log)
    assert "pins Debian versions the mirror no longer has" in log
    assert "less=1:0.0-hubstack-gone" in log
    assert "run `hubstack images lock tiny`" in log
    assert docker_client.images.get(cfg.image_ref("tiny", TEST_TAG)).id == pinned.image_id

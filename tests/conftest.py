"""Shared fixtures.

Integration tests use the real engine: when it cannot be reached they fail
(never skip), because the test command (ci/test.sh) installs and starts it.
The real image hierarchy is built and pushed once per session (`hierarchy`)
and shared; tests of generic machinery use tiny images of their own.
"""

from __future__ import annotations

import concurrent.futures
import os
import socket
import uuid
from pathlib import Path

import docker
import pytest
import yaml

from hubstack.config import PlatformConfig, load_config
from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import ImageBuilder, push_image
from hubstack.registry import USERS, RegistryClient, registry_container_spec

IN_CI = os.environ.get("CI") == "true"
ROOT = Path(__file__).resolve().parents[1]
TEST_TAG = "test"
# One id per test session names everything it creates, so parallel runs and
# leftovers of earlier ones never collide.
SESSION_ID = uuid.uuid4().hex[:8]
SESSION_REGISTRY_VOLUME = f"hubstack-test-registry-{SESSION_ID}"
"""The session registry's container and storage volume (the hierarchy is pushed there)."""


def pytest_collection_modifyitems(config, items):
    """Tests that leave the shared hub in a state others would trip over (the REST API
    fuzzer) run after the rest; tests that restart the Docker engine run last, since the
    restart stops every container the other tests share."""

    def rank(item) -> int:
        if item.get_closest_marker("restarts_engine"):
            return 2
        return 1 if item.get_closest_marker("disrupts_hub") else 0

    items.sort(key=rank)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def write_config(path: Path, data: dict) -> PlatformConfig:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return load_config(path)


def config_data(state_dir: Path, registry_port: int, **overrides) -> dict:
    """A platform config for tests: its own state dir, registry ports and tag; every other
    key keeps the default a user gets (the host's CA bundle for builds among them)."""
    data: dict = {
        "state_dir": str(state_dir),
        "source_dir": str(ROOT),
        # Every instance on a free port: the default pull and users ports (port + 1, + 2)
        # may be another's.
        "registry": {
            "address": f"127.0.0.1:{registry_port}",
            "pull_address": f"127.0.0.1:{free_port()}",
            "users_address": f"127.0.0.1:{free_port()}",
        },
        "images": {"tag": TEST_TAG},
    }
    for key, value in overrides.items():
        if isinstance(value, dict):
            data.setdefault(key, {}).update(value)
        else:
            data[key] = value
    return data


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=900)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(
            f"the Docker engine is not reachable ({e}); run the README's test command "
            "(ci/test.sh), "
            "which installs and starts it",
            pytrace=False,
        )
    return client


@pytest.fixture(scope="session")
def platform_config(tmp_path_factory) -> PlatformConfig:
    state = tmp_path_factory.mktemp("hubstack-state")
    return write_config(state / "hubstack.yaml", config_data(state, free_port()))


@pytest.fixture(scope="session")
def registry(platform_config, docker_client):
    """The real registry (registry:2 or its offline build), with generated credentials."""

    cfg = platform_config
    bootstrap(cfg, docker_client)
    name = SESSION_REGISTRY_VOLUME
    container = docker_client.containers.run(**registry_container_spec(cfg, name=name, volume=name))
    client = RegistryClient(cfg)
    try:
        client.wait_ready(60)
    except Exception:
        print(container.logs().decode()[-2000:])
        raise
    yield client
    container.remove(force=True, v=True)
    try:
        docker_client.volumes.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture(scope="session")
def users_registry(platform_config, docker_client, registry):
    """The per-user images' registry instance (registry.users_address), on its own volume."""
    cfg = platform_config
    name = f"hubstack-test-registry-users-{SESSION_ID}"
    container = docker_client.containers.run(
        **registry_container_spec(cfg, name=name, volume=name, role=USERS)
    )
    client = RegistryClient(cfg, role=USERS)
    try:
        client.wait_ready(60)
    except Exception:
        print(container.logs().decode()[-2000:])
        raise
    yield client
    container.remove(force=True, v=True)
    try:
        docker_client.volumes.get(name).remove(force=True)
    except docker.errors.NotFound:
        pass


@pytest.fixture(scope="session")
def hierarchy(platform_config, docker_client, registry) -> dict[str, dict]:
    """The real hierarchy (all default images), built once and pushed: name -> ref, digest, id."""

    cfg = platform_config
    # Each image is pushed as soon as it is built, while its children build: gzipping the
    # big layers (CPU) then overlaps the children's downloads (network).
    pushes = concurrent.futures.ThreadPoolExecutor(1, thread_name_prefix="push")
    digests: dict[str, concurrent.futures.Future] = {}

    class PushingBuilder(ImageBuilder):
        def build(self, name, tag=None, **kwargs):
            result = super().build(name, tag, **kwargs)
            if result.ok:
                digests[name] = pushes.submit(push_image, cfg, docker_client, name, TEST_TAG)
            return result

    with pushes:
        results = PushingBuilder(cfg, docker_client).build_many(tag=TEST_TAG)
    failed = [r for r in results if not r.ok]
    assert not failed, "hierarchy build failed: " + "; ".join(
        f"{r.name}: {r.error}\n" + "\n".join(r.log[-20:]) for r in failed
    )
    images = {}
    for r in results:
        digest = digests[r.name].result()
        images[r.name] = {
            "ref": r.ref,
            "digest": digest,
            "image_id": r.image_id,
            "repo_digest": f"{cfg.image_repository(r.name)}@{digest}",
        }
    return images

"""Shared fixtures.

Integration tests use the real engine: when it cannot be reached they fail
(never skip), because the test command (ci/test.sh) installs and starts it.
The real image hierarchy is built and pushed once per session (`hierarchy`)
and shared; tests of generic machinery use tiny images of their own.
"""

from __future__ import annotations

import concurrent.futures
import contextlib
import fcntl
import json
import os
import socket
import tempfile
import uuid
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest
import yaml

from hubstack.config import PlatformConfig, load_config
from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import ImageBuilder, push_image
from hubstack.registry import USERS, RegistryClient, registry_container_spec
from tests.registry_storage import merge_registry_storage

IN_CI = os.environ.get("CI") == "true"
ROOT = Path(__file__).resolve().parents[1]
TEST_TAG = "test"
# One id per test session names everything it creates, so parallel runs and
# leftovers of earlier ones never collide.
SESSION_ID = uuid.uuid4().hex[:8]
SESSION_REGISTRY_VOLUME = f"hubstack-test-registry-{SESSION_ID}"
"""The session registry's container and storage volume (the hierarchy is pushed there)."""


STANDALONE_MODULES = (
    # Tiny images of their own, or none: these run while the other stream builds the
    # hierarchy. Not test_networks: its 30 networks at once twice coincided with
    # JupyterLab losing requests in the other stream's browser test (not understood yet).
    "test_swarm_nodes",
    "test_node_bundle",
    "test_ci_build",
    "test_build_failures",
    "test_releases",
    "test_ci_webhook_builds",
    "test_ci_image_sandbox",
    "test_gpu_allocation",
    "test_doctor",
    "test_hub_cli",
    "test_auth",
    # The hierarchy, but not the shared hub. test_image_locks (mostly downloads) before
    # test_spark: Spark here and test_spark_hub in the other stream at the same time had
    # the load average at 19.
    "test_swarm_spawner",
    "test_swarm_stack",
    "test_swarm_hub_move",
    "test_image_locks",
    "test_spark",
    "test_images",
    "test_first_run",
    "test_user_images",
    "test_env_report",
)
"""The integration modules of the `standalone` stream, in the order it runs them: none uses
the session's shared hub (`hub_stack`). ci/test.sh runs the suite as two pytest sessions at
once on one engine, `--stream=hub` (every other test) and `--stream=standalone`, because
one session leaves a third of two cores idle (downloads, health checks, polls). The two
halves take about as long; the hierarchy is built once between them (`hierarchy`)."""
STREAMS = ("hub", "standalone")
ENGINE_LOCK_ENV = "HUBSTACK_TEST_ENGINE_LOCK"
"""A file the other stream holds a shared lock on while it runs (ci/test.sh sets it): a test
that restarts the engine takes it exclusively first, so it never stops the other stream's
containers."""
HIERARCHY_LOCK = Path(tempfile.gettempdir()) / "hubstack-test-hierarchy.lock"
"""Taken around the hierarchy's build by every session on this machine; it also records the
registry volume that holds the last session's push (see `hierarchy`)."""


def pytest_addoption(parser):
    parser.addoption(
        "--stream",
        choices=STREAMS,
        help="run one half of the suite (tests/conftest.py: STANDALONE_MODULES); ci/test.sh "
        "runs both at once",
    )


def _standalone(item) -> bool:
    return item.path.parent.name == "integration" and item.path.stem in STANDALONE_MODULES


def pytest_collection_modifyitems(config, items):
    """With --stream, keep that stream's tests. Then: tests that leave the shared hub in a
    state others would trip over (the REST API fuzzer) run after the rest; tests that
    restart the Docker engine run last, since the restart stops every container the other
    tests share."""
    stream = config.getoption("stream")
    if stream:
        ours = [i for i in items if _standalone(i) == (stream == "standalone")]
        kept = set(ours)
        config.hook.pytest_deselected(items=[i for i in items if i not in kept])
        if stream == "standalone":
            ours.sort(key=lambda i: STANDALONE_MODULES.index(i.path.stem))
        items[:] = ours

    def rank(item) -> int:
        if item.get_closest_marker("restarts_engine"):
            return 2
        return 1 if item.get_closest_marker("disrupts_hub") else 0

    items.sort(key=rank)


@pytest.fixture(autouse=True)
def _engine_to_ourselves(request) -> Iterator[None]:
    """A test marked restarts_engine waits until the other stream (if any) has finished."""
    path = os.environ.get(ENGINE_LOCK_ENV)
    if not path or not request.node.get_closest_marker("restarts_engine"):
        yield
        return
    with open(path, "a") as lock:
        print("[test] waiting for the other stream to finish before restarting the engine")
        fcntl.flock(lock, fcntl.LOCK_EX)
        yield


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
    """The real hierarchy (all default images), built once and pushed: name -> ref, digest, id.

    Under HIERARCHY_LOCK: a session that runs beside another on this engine (ci/test.sh's
    two streams) waits for the other's build, then builds from its layer cache, and its
    registry starts with the layers the other pushed, so it gzips nothing again."""
    cfg = platform_config
    with open(HIERARCHY_LOCK, "a+") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        lock.seek(0)
        with contextlib.suppress(ValueError):
            _link_pushed_layers(docker_client, json.loads(lock.read() or "{}"), cfg)
        images = _build_and_push_hierarchy(cfg, docker_client)
        lock.seek(0)
        lock.truncate()
        lock.write(
            json.dumps({"volume": SESSION_REGISTRY_VOLUME, "namespace": cfg.images.namespace})
        )
    return images


def _link_pushed_layers(client: docker.DockerClient, pushed: dict, cfg: PlatformConfig) -> None:
    """Give this session's registry the blobs and layer links of PUSHED's registry volume
    (another session's, still running or not yet removed), where it has none of its own.
    Blobs are hard links (content-addressed, never rewritten); link files are copied, tags
    are not."""
    try:
        source = Path(client.volumes.get(pushed["volume"]).attrs["Mountpoint"])
        target = Path(client.volumes.get(SESSION_REGISTRY_VOLUME).attrs["Mountpoint"])
    except (KeyError, docker.errors.NotFound):
        return
    added = merge_registry_storage(source, target, pushed["namespace"], cfg.images.namespace)
    print(f"[hierarchy] {added} registry files from {pushed['volume']}")


def _build_and_push_hierarchy(cfg: PlatformConfig, docker_client) -> dict[str, dict]:
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

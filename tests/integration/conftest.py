"""Session fixture: one real hubstack platform (registry + hub via `hubstack up`) for the
hub and browser tests, with two analysts in the users file."""

from __future__ import annotations

import os
import shutil
import tempfile
from pathlib import Path

import pytest

from hubstack.config import load_config
from tests.conftest import SESSION_REGISTRY_VOLUME
from tests.integration.hubstack_e2e import (
    add_user,
    hubstack,
    logged_in_clients,
    remove_platform,
    seed_registry_volume,
    stop_servers,
    write_config,
)

ANALYSTS = {
    # name: (password, uid, gid, supplementary groups)
    "alice": ("alice-pw-3f9a", 23001, 23001, [23500, 23501]),
    "bob": ("bob-pw-77c2", 23002, 23002, [23500]),
}


def _dev_images() -> dict[str, str] | None:
    """name -> hand-built stand-in image, for quick local runs (HUBTEST_DEV_IMAGES=repo:tag)."""
    dev = os.environ.get("HUBTEST_DEV_IMAGES")
    if not dev:
        return None
    repo, tag = dev.split(":")
    return {n: f"{repo}/{n}:{tag}" for n in ("hub", "notebook", "spark-executor")}


@pytest.fixture(scope="session")
def hub_stack(request, docker_client):
    tmp = Path(tempfile.mkdtemp(prefix="hubtest-"))
    name = f"hubtest-{os.getpid()}"
    config = write_config(tmp, name, image_ns=name)
    cfg = load_config(config)
    dev = _dev_images()
    if dev:
        for image_name, source in dev.items():
            docker_client.images.get(source).tag(cfg.image_ref(image_name))
    else:
        # The main job as a platform engineer runs it: `hubstack up` builds, pushes and starts.
        # The session's hierarchy is built first, so this build is all layer-cache hits.
        request.getfixturevalue("hierarchy")
        seed_registry_volume(
            docker_client,
            cfg,
            SESSION_REGISTRY_VOLUME,
            request.getfixturevalue("platform_config").images.namespace,
        )
    for user, (pw, uid, gid, groups) in ANALYSTS.items():
        add_user(cfg, user, pw, uid, gid, groups)
    try:
        r = hubstack(config, "up", *(["--no-build"] if dev else []))
        assert r.returncode == 0, f"hubstack up failed:\n{r.stdout}\n{r.stderr}"
        yield cfg, config, r.stdout
    finally:
        hubstack(config, "down")
        # The test platform is disposable: remove its volumes and images too.
        remove_platform(cfg, docker_client)
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def clients(hub_stack):
    """The analysts, logged in with API tokens. The stack is shared by every module, so each
    module starts and leaves it with no analyst's server running."""
    cfg, _, _ = hub_stack
    out = logged_in_clients(cfg, ANALYSTS)
    stop_servers(out)
    yield out
    stop_servers(out)


# The multi-node swarm (two real engines in namespaces of their own) and the platform
# registry as its nodes see it: session fixtures any swarm test may ask for.
from tests.integration.swarm_nodes import swarm, swarm_registry  # noqa: E402, F401

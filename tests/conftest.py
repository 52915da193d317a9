"""Shared fixtures. Integration tests use the real engine: when it cannot be
reached they fail (never skip), because the test command installs and starts it."""

from __future__ import annotations

import os

import docker
import pytest

IN_CI = os.environ.get("CI") == "true"


@pytest.fixture(scope="session")
def docker_client() -> docker.DockerClient:
    try:
        client = docker.from_env(timeout=600)
        client.ping()
    except docker.errors.DockerException as e:
        pytest.fail(
            f"the Docker engine is not reachable ({e}); run the README's test command (ci/test.sh), "
            "which installs and starts it",
            pytrace=False,
        )
    return client

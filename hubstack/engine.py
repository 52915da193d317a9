"""The Docker engine connection, with one clear error when there is none."""

from __future__ import annotations

import docker
from docker.errors import DockerException

from hubstack.errors import CommandError


def docker_client(timeout: int = 600) -> docker.DockerClient:
    """A client for the engine named by DOCKER_HOST (default: the local socket)."""
    try:
        client = docker.from_env(timeout=timeout)
        client.ping()
    except DockerException as e:
        raise CommandError(
            f"cannot reach the Docker engine ({e}). Start dockerd, or run ci/test-env.sh which "
            "installs and starts it."
        ) from None
    return client

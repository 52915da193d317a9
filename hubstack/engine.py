"""The Docker engine connection, with one clear error when there is none; and the
platform's compose project and containers in it."""

from __future__ import annotations

import os

import docker
from docker.errors import DockerException

from hubstack.config import PlatformConfig
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


def project_name(cfg: PlatformConfig) -> str:
    """Compose project name; the network name keeps two platforms on one engine apart."""
    return os.environ.get("COMPOSE_PROJECT_NAME") or cfg.hub.network


def platform_containers(
    cfg: PlatformConfig, client, label: str, include_stopped: bool = True
) -> list:
    """Containers labelled LABEL (KEY or KEY=VALUE) on this platform's network."""
    return [
        c
        for c in client.containers.list(all=include_stopped, filters={"label": label})
        if cfg.hub.network in (c.attrs.get("NetworkSettings", {}).get("Networks") or {})
    ]


def service_container(cfg: PlatformConfig, client, service: str):
    """The running container of one compose SERVICE of this platform, or None."""
    found = client.containers.list(
        filters={
            "label": [
                f"com.docker.compose.project={project_name(cfg)}",
                f"com.docker.compose.service={service}",
            ]
        }
    )
    return found[0] if found else None

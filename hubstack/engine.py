"""The Docker engine connection, with one clear error when there is none; and the
platform's compose project and containers in it."""

from __future__ import annotations

import os
from collections.abc import Iterator
from contextlib import contextmanager

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


PLATFORM_LABEL = "io.hubstack.platform"
"""Value: the platform's network name, on every analyst's container and network."""


def platform_containers(
    cfg: PlatformConfig, client, label: str, include_stopped: bool = True
) -> list:
    """Containers labelled LABEL (KEY or KEY=VALUE) of this platform: labelled with it, or
    on its network or one of its analysts' networks."""
    analysts = f"{cfg.hub.network}-user-"  # hubstack.networks.network_name
    return [
        c
        for c in client.containers.list(all=include_stopped, filters={"label": label})
        if c.labels.get(PLATFORM_LABEL) == cfg.hub.network
        or any(
            n == cfg.hub.network or n.startswith(analysts)
            for n in c.attrs.get("NetworkSettings", {}).get("Networks") or {}
        )
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


@contextmanager
def created_container(client, image: str, **kwargs) -> Iterator:
    """A container of IMAGE that is created, never started unless the caller starts it, and
    always removed: for copying files out of an image or into a volume without running it.
    Its entrypoint is `true`, so images without a command can be created too."""
    kwargs.setdefault("entrypoint", ["true"])
    kwargs.setdefault("network_disabled", True)
    container = client.containers.create(image, **kwargs)
    try:
        yield container
    finally:
        container.remove(force=True)


def repo_digest(image_attrs: dict, repository: str) -> str | None:
    """REPOSITORY@sha256:... this engine recorded for the image when it last pushed or
    pulled it to or from REPOSITORY; None if it never did."""
    prefix = f"{repository}@"
    return next((d for d in image_attrs.get("RepoDigests") or [] if d.startswith(prefix)), None)

"""Retention: which images the registry keeps, and the one path that removes the others.

`hubstack ci prune` keeps, for every image, `stable`, ``images.tag`` (latest, the
preview), the newest ``ci.keep_releases`` releases, every image a container on this
engine was created from (running or stopped: a stopped server starts again on its
image), and every tag this module does not know (someone else's). What remains, older
releases, their X.Y and commit tags nothing else names, is deleted through the registry
API by manifest digest, and the registry's garbage collection frees the layers.

`prune_repository` takes the repository and the tags to keep, so any other kind of image
the platform stores (per-user images) is cleaned through the same path.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

import docker

from hubstack.ci.promote import STABLE
from hubstack.ci.tags import is_commit_tag, is_release_tag, release_versions
from hubstack.config import PlatformConfig
from hubstack.engine import service_container
from hubstack.errors import CommandError
from hubstack.images.graph import ImageGraph
from hubstack.registry import CONTAINER_LABELS, PUSH, RegistryClient, Role, registry_address


def prunable_tag(tag: str) -> bool:
    """Tags the release flow makes, and so may remove: X.Y.Z, X.Y and commit tags."""
    return is_release_tag(tag) or is_commit_tag(tag)


def images_in_use(client: docker.DockerClient) -> set[str]:
    """REPOSITORY@DIGEST of every image a container of this engine was created from."""
    used: set[str] = set()
    image_ids = set()
    for container in client.containers.list(all=True):
        configured = container.attrs.get("Config", {}).get("Image") or ""
        if "@sha256:" in configured:
            used.add(configured)
        image_ids.add(container.attrs["Image"])
    for image_id in image_ids:  # many servers share one image: look each up once
        try:
            used.update(client.images.get(image_id).attrs.get("RepoDigests") or [])
        except docker.errors.ImageNotFound:
            pass
    return used


@dataclass
class PruneOutcome:
    name: str
    removed: dict[str, list[str]] = field(default_factory=dict)
    """Digest -> the tags that named it."""
    kept_in_use: list[str] = field(default_factory=list)
    """Tags that would go but a container's image is theirs."""

    def lines(self) -> list[str]:
        out = [
            f"{self.name}: removed {', '.join(sorted(tags))} ({digest[:19]}…)"
            for digest, tags in self.removed.items()
        ]
        out += [f"{self.name}: kept {tag}: a container uses it" for tag in self.kept_in_use]
        return out or [f"{self.name}: nothing to remove"]


def prune_repository(
    registry: RegistryClient,
    name: str,
    keep: Callable[[str], bool],
    in_use: set[str],
    dry_run: bool = False,
    prunable: Callable[[str], bool] = prunable_tag,
) -> PruneOutcome:
    """Delete NAME's manifests that only PRUNABLE tags not kept by KEEP name, unless a
    container uses them. A manifest is deleted by digest, which removes every tag naming it,
    so one kept tag protects the manifest whatever other tags say. PRUNABLE: the tags this
    kind of image may lose (default: the release flow's; per-user images: their hashes)."""
    # A container may have been created from either address (the hub pulls from the
    # read-only one): the same manifest under either name is in use.
    repositories = registry.engine_repositories(name)
    tags = registry.tag_digests(name)
    protected = {d for t, d in tags.items() if keep(t) or not prunable(t)}
    outcome = PruneOutcome(name)
    doomed: dict[str, list[str]] = {}
    for tag, digest in tags.items():
        if digest in protected:
            continue
        if any(f"{repository}@{digest}" in in_use for repository in repositories):
            outcome.kept_in_use.append(tag)
            continue
        doomed.setdefault(digest, []).append(tag)
    for digest, doomed_tags in doomed.items():
        if not dry_run:
            registry.delete_manifest(name, digest)
        outcome.removed[digest] = doomed_tags
    return outcome


def release_keeper(cfg: PlatformConfig, tags: Iterable[str], keep_releases: int):
    """KEEP for an image of the graph: stable, images.tag and the newest KEEP_RELEASES."""
    kept = {str(v) for v in release_versions(tags)[-keep_releases:]}
    fixed = {STABLE, cfg.images.tag}
    return lambda tag: tag in fixed or tag in kept


def registry_container(cfg: PlatformConfig, client: docker.DockerClient, role: Role = PUSH):
    """ROLE's registry container on this engine: the compose service, else one labelled as
    that hubstack registry instance that publishes its port; None when it runs elsewhere."""
    label = CONTAINER_LABELS[role]
    found = service_container(cfg, client, label)
    if found is not None:
        return found
    port = registry_address(cfg, role).rsplit(":", 1)[1]
    for c in client.containers.list(filters={"label": f"io.hubstack.role={label}"}):
        bindings = (c.attrs.get("NetworkSettings", {}).get("Ports") or {}).get("5000/tcp") or []
        if any(b.get("HostPort") == port for b in bindings):
            return c
    return None


# registry:2 calls its binary `registry`, Debian's package `docker-registry`.
GC_COMMAND = (
    'exec "$(command -v registry || command -v docker-registry)" '
    "garbage-collect /etc/docker/registry/config.yml"
)


def garbage_collect(cfg: PlatformConfig, client: docker.DockerClient, role: Role = PUSH) -> str:
    """Run ROLE's registry garbage collection, which frees the layers no manifest names, in
    that instance's container (each instance with a storage of its own collects its own)."""
    container = registry_container(cfg, client, role)
    if container is None:
        raise CommandError(
            f"no registry container for {registry_address(cfg, role)} on this engine: run "
            "`registry garbage-collect /etc/docker/registry/config.yml` where it runs"
        )
    started = time.monotonic()
    code, output = container.exec_run(["sh", "-c", GC_COMMAND])
    text = output.decode(errors="replace") if isinstance(output, bytes) else str(output)
    if code != 0:
        tail = "\n".join(text.splitlines()[-10:])
        raise CommandError(f"registry garbage collection failed (exit {code}):\n{tail}")
    freed = sum(1 for line in text.splitlines() if "blob eligible for deletion" in line)
    return f"garbage collection: {freed} blobs freed in {time.monotonic() - started:.1f}s"


def prune(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    keep_releases: int | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = print,
) -> list[PruneOutcome]:
    """Apply the retention of the module docstring to every image of the graph."""
    keep_releases = keep_releases or cfg.ci.keep_releases
    if keep_releases < 1:
        raise CommandError("keep at least one release (--keep 1)")
    registry = RegistryClient(cfg)
    in_use = images_in_use(client)
    outcomes = []
    for name in ImageGraph.from_config(cfg).order():
        keep = release_keeper(cfg, registry.tags(name), keep_releases)
        outcome = prune_repository(registry, name, keep, in_use, dry_run=dry_run)
        for line in outcome.lines():
            progress(line)
        outcomes.append(outcome)
    if not dry_run and any(o.removed for o in outcomes):
        progress(garbage_collect(cfg, client))
    return outcomes

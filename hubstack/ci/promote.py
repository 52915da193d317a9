"""Promotion: point `stable` at a release or a tested commit tag; rolling back is the same move.

Commit tags only reach the registry after an image's tests passed (see
:mod:`hubstack.ci.rebuild`), so any commit tag found there is a tested one.
Promoting TAG moves `stable` of every image that has TAG; the others keep theirs.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import docker

from hubstack.ci.sandbox import run_image_tests
from hubstack.ci.tags import is_release_tag
from hubstack.clock import timestamp
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.build import push_image
from hubstack.images.graph import ImageGraph
from hubstack.registry import RegistryClient, auth_config

STABLE = "stable"


def releases_dir(cfg: PlatformConfig) -> Path:
    """Release records (hubstack.ci.release) and the last promotion, STATE_DIR/releases. The
    hub reads them (mounted read-only) for the spawn form's version choice."""
    return cfg.state_dir / "releases"


STABLE_RECORD = "stable.json"
"""Which tag the last promotion moved `stable` to, and when (written by promote)."""


def record_promotion(cfg: PlatformConfig, tag: str) -> None:
    folder = releases_dir(cfg)
    folder.mkdir(parents=True, exist_ok=True)
    record = {"tag": tag, "promoted": timestamp()}
    (folder / STABLE_RECORD).write_text(json.dumps(record) + "\n")


def stable_tag(cfg: PlatformConfig) -> str | None:
    """The tag `stable` was last promoted to here; None before any promotion."""
    try:
        return str(json.loads((releases_dir(cfg) / STABLE_RECORD).read_text())["tag"])
    except (OSError, ValueError, KeyError, TypeError):
        return None


@dataclass
class Promotion:
    name: str
    tag: str
    moved: bool
    detail: str


def promote(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    tag: str,
    to: str = STABLE,
    names: list[str] | None = None,
) -> list[Promotion]:
    """Move TO (default `stable`) to TAG for each image (default: all of the graph) that has TAG."""

    if is_release_tag(to):
        raise CommandError(f"{to} is a release tag, and a release is never re-tagged")
    if tag in (to, cfg.images.tag):
        raise CommandError(
            f"promote takes a release or a commit tag, not {tag!r}: `stable` must name a "
            "tested build"
        )
    graph = ImageGraph.from_config(cfg)
    auth = auth_config(cfg)
    results: list[Promotion] = []
    for name in graph.order(names) if names else graph.order():
        repo = cfg.image_repository(name)
        try:
            img = client.images.pull(repo, tag=tag, auth_config=auth)
        except docker.errors.NotFound:
            results.append(
                Promotion(name, tag, False, f"no tag {tag} in the registry; {to} left as it was")
            )
            continue
        except docker.errors.APIError as e:
            if "not found" in str(e).lower() or "unknown" in str(e).lower():
                results.append(
                    Promotion(
                        name, tag, False, f"no tag {tag} in the registry; {to} left as it was"
                    )
                )
                continue
            raise CommandError(
                f"cannot pull {repo}:{tag} from the registry: {e.explanation or e}"
            ) from None
        img.tag(repo, to)
        push_image(cfg, client, name, to, auth=auth, progress=lambda line: None)
        results.append(Promotion(name, tag, True, f"{to} -> {tag} ({img.id[:19]})"))
    if not any(r.moved for r in results):
        raise CommandError(
            f"no image has the tag {tag!r} in the registry {cfg.registry.address}; "
            "promote a commit tag that `hubstack ci build --push` produced"
        )
    if to == STABLE:
        record_promotion(cfg, tag)
    return results


def adopt_first_build(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    names: list[str],
    progress: Callable[[str], None] = print,
) -> list[str]:
    """A fresh install has nothing promoted: each of NAMES whose STABLE the registry does not
    hold yet gets this engine's images.tag as its STABLE, once the image's own tests
    (test_image.py) pass. Images that have a STABLE keep it: later builds reach analysts only
    through a promotion. Returns the names adopted; a failed test sets no STABLE at all."""
    registry = RegistryClient(cfg)
    graph = ImageGraph.from_config(cfg)
    fresh = [n for n in graph.order(names) if registry.digest(n, STABLE) is None]
    for name in fresh:
        ref = cfg.image_ref(name)
        progress(f"{name}: testing {ref} before it becomes {STABLE}")
        passed, output = run_image_tests(cfg, client, graph[name].path, ref)
        if not passed:
            tail = "\n".join(output.splitlines()[-20:])
            raise CommandError(
                f"first install: the tests of {ref} failed, so no image became {STABLE} "
                f"(analysts start from {STABLE}); fix the image and run again:\n{tail}"
            )
    auth = auth_config(cfg)
    for name in fresh:
        client.images.get(cfg.image_ref(name)).tag(cfg.image_repository(name), STABLE)
        push_image(cfg, client, name, STABLE, auth=auth, progress=lambda line: None)
        progress(f"{name}: {STABLE} -> this build (first install)")
    return fresh


def ensure_local(cfg: PlatformConfig, client: docker.DockerClient, names: list[str], tag: str):
    """NAME:TAG in this engine as the registry has it (compose starts services from it and
    cannot log in to the registry by itself)."""
    auth = auth_config(cfg)
    registry = RegistryClient(cfg)
    for name in names:
        digest = registry.digest(name, tag)
        if digest is None:
            raise CommandError(f"the registry has no {cfg.image_ref(name, tag)}")
        try:
            local = client.images.get(cfg.image_ref(name, tag)).attrs.get("RepoDigests") or []
        except docker.errors.ImageNotFound:
            local = []
        if f"{cfg.image_repository(name)}@{digest}" not in local:
            client.images.pull(cfg.image_repository(name), tag=tag, auth_config=auth)

"""Promotion: point `stable` at an already-tested commit tag; rolling back is the same move.

Commit tags only reach the registry after an image's tests passed (see
:mod:`hubstack.ci.rebuild`), so any commit tag found there is a tested one.
Promoting TAG moves `stable` of every image that has TAG; the others keep theirs.
"""

from __future__ import annotations

from dataclasses import dataclass

import docker

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.build import push_image
from hubstack.images.graph import ImageGraph
from hubstack.registry import auth_config

STABLE = "stable"


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

    if tag in (to, cfg.images.tag):
        raise CommandError(
            f"promote takes a commit tag, not {tag!r}: `stable` must name a tested commit"
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
    return results

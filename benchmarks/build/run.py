"""Benchmark: build the image hierarchy cold, rebuild with nothing changed, and
report each image's size and the bytes its layers share with its parent.

    python benchmarks/build/run.py [--config FILE] [--tag bench] [--skip-cold]

Needs a running engine and the base image (`hubstack images bootstrap`). The cold
build uses no build cache, so it measures a first build on a new builder (the
Debian root and the package mirrors are still the only inputs). Ratios are
against the cold build measured in the same run.
"""

from __future__ import annotations

import argparse
import time

import docker

from hubstack.config import load_config
from hubstack.images.build import ImageBuilder
from hubstack.images.graph import ImageGraph


def layer_sizes(client: docker.DockerClient, ref: str) -> list[tuple[str, int]]:
    """(layer digest, bytes) bottom-up; `docker history` sizes map onto the non-empty layers."""
    image = client.images.get(ref)
    layers = image.attrs["RootFS"]["Layers"]
    sizes = [h["Size"] for h in reversed(client.api.history(image.id))]
    non_empty = [s for s in sizes if s > 0]
    # Empty layers (e.g. from WORKDIR) have size 0 in history but still count in RootFS.
    if len(non_empty) < len(layers):
        non_empty += [0] * (len(layers) - len(non_empty))
    return list(zip(layers, non_empty[: len(layers)]))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--config")
    ap.add_argument("--tag", default="bench")
    ap.add_argument("--skip-cold", action="store_true", help="reuse the cache for the first build too")
    args = ap.parse_args()
    cfg = load_config(args.config)
    client = docker.from_env(timeout=1800)
    graph = ImageGraph.from_config(cfg)
    names = graph.with_ancestors(graph.default_targets(cfg))
    quiet = lambda line: None  # noqa: E731

    t0 = time.monotonic()
    cold = ImageBuilder(cfg, client, graph, progress=print, no_cache=not args.skip_cold).build_many(names, tag=args.tag)
    cold_s = time.monotonic() - t0
    assert all(r.ok for r in cold), [(r.name, r.error) for r in cold if not r.ok]
    t0 = time.monotonic()
    warm = ImageBuilder(cfg, client, graph, progress=quiet).build_many(names, tag=args.tag)
    warm_s = time.monotonic() - t0
    assert all(r.ok and r.cached for r in warm), [(r.name, r.error, r.cached) for r in warm]

    print(f"\n{'image':16} {'cold build':>11} {'size':>10} {'shared with parent':>20}")
    for r in cold:
        ref = cfg.image_ref(r.name, args.tag)
        mine = layer_sizes(client, ref)
        total = sum(s for _, s in mine)
        parent = graph[r.name].parent
        if parent:
            theirs = {d for d, _ in layer_sizes(client, cfg.image_ref(parent, args.tag))}
            shared = sum(s for d, s in mine if d in theirs)
            share = f"{shared / 1e6:8.0f} MB ({shared / total:4.0%})"
        else:
            share = "(root)"
        print(f"{r.name:16} {r.seconds:10.0f}s {total / 1e6:8.0f} MB {share:>20}")
    print(f"\nhierarchy cold build: {cold_s:.0f} s{' (cache allowed)' if args.skip_cold else ''}")
    print(f"rebuild, nothing changed: {warm_s:.1f} s  = {warm_s / cold_s:.3f} x the cold build")


if __name__ == "__main__":
    main()

#!/usr/bin/env python
"""Benchmark of `hubstack ci`: a no-change plan, a leaf-change rebuild and a full rebuild,
in the same run, on a temporary git repo of tiny images (the tests' hierarchy:
root -> mid -> leaf, root -> side), a real engine and a throw-away registry
(container ci-registry-<port>).

Each rebuild is the whole `ci build --push` path: build, the image's test module,
commit tag and `latest` pushed. "Full" is a change to the root, which rebuilds
every image. Prints one line per measurement (median of --repeat runs) and the
leaf/full ratio.

    python benchmarks/ci/bench_ci.py [--repeat 3] [--json]
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]

import docker  # noqa: E402
from tests.ci_support import _install_fallbacks, _own_registry, change, make_repo, tiny_config  # noqa: E402

from hubstack.ci.plan import make_plan  # noqa: E402
from hubstack.ci.rebuild import Rebuilder  # noqa: E402


class _Tmp:
    def __init__(self, base: Path):
        self.base, self.n = base, 0

    def mktemp(self, name: str) -> Path:
        self.n += 1
        p = self.base / f"{name}{self.n}"
        p.mkdir()
        return p


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    _install_fallbacks()
    client = docker.from_env(timeout=600)
    client.ping()
    with tempfile.TemporaryDirectory(prefix="ci-bench-") as tmp:
        tmp = Path(tmp)
        base_cfg, registry = _own_registry(client, _Tmp(tmp))
        repo = make_repo(tmp / "repo")
        cfg = tiny_config(base_cfg, repo, tmp / "state")
        cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"namespace": "cibench"})})
        quiet = Rebuilder(cfg, client, push=True, out=lambda line: None)
        try:
            first = quiet.run_plan(make_plan(cfg, None))
            assert first.ok, first.format_text()
            times: dict[str, list[float]] = {"plan, no change": [], "rebuild, leaf change": [], "rebuild, full (root change)": []}
            counts: dict[str, int] = {}
            for i in range(args.repeat):
                t = time.perf_counter()
                plan = make_plan(cfg, "HEAD")
                times["plan, no change"].append(time.perf_counter() - t)
                counts["plan, no change"] = len(plan.items)
                for key, image in (("rebuild, leaf change", "leaf"), ("rebuild, full (root change)", "root")):
                    change(repo, image, f"bench-{i}")
                    t = time.perf_counter()
                    report = quiet.run("HEAD~1")
                    times[key].append(time.perf_counter() - t)
                    assert report.ok, report.format_text()
                    counts[key] = len(report.images)
        finally:
            registry.remove(force=True, v=True)
            for n in ("root", "mid", "leaf", "side"):
                for img in client.images.list(name=cfg.image_repository(n)):
                    for tag in img.tags:
                        client.images.remove(tag)

    med = {k: statistics.median(v) for k, v in times.items()}
    ratio = med["rebuild, leaf change"] / med["rebuild, full (root change)"]
    if args.json:
        print(json.dumps({"median_seconds": med, "images": counts, "leaf_full_ratio": ratio, "repeat": args.repeat}))
        return 0
    print(f"hubstack ci benchmark: tiny 4-image hierarchy, median of {args.repeat}, build+test+push per image")
    for k, v in med.items():
        print(f"  {k:30} {v:8.3f} s  ({counts[k]} image(s))")
    print(f"  leaf/full ratio               {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

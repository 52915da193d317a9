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
import socket
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
sys.path[:0] = [str(ROOT)]  # run as a script from any folder: the checkout's hubstack first

import docker  # noqa: E402

from hubstack.ci.plan import make_plan  # noqa: E402
from hubstack.ci.rebuild import Rebuilder  # noqa: E402
from hubstack.config import parse_config  # noqa: E402
from hubstack.images.bootstrap import bootstrap  # noqa: E402
from hubstack.registry import RegistryClient, registry_container_spec  # noqa: E402
from tests.ci_support import change, make_repo, tiny_config  # noqa: E402


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--json", action="store_true")
    args = ap.parse_args()

    client = docker.from_env(timeout=600)
    client.ping()
    with tempfile.TemporaryDirectory(prefix="ci-bench-") as tmp:
        tmp = Path(tmp)
        # A throw-away registry like the platform's own (bootstrapped offline if it cannot be
        # pulled).
        base_cfg = parse_config(
            {
                "state_dir": str(tmp / "registry-state"),
                "registry": {"address": f"127.0.0.1:{free_port()}"},
            }
        )
        bootstrap(base_cfg, client, progress=lambda line: None)
        name = f"ci-bench-registry-{base_cfg.registry.port}"
        registry = client.containers.run(
            **registry_container_spec(base_cfg, name=name, volume=name)
        )
        RegistryClient(base_cfg).wait_ready(60)
        repo = make_repo(tmp / "repo")
        cfg = tiny_config(base_cfg, repo, tmp / "state")
        cfg = cfg.model_copy(
            update={"images": cfg.images.model_copy(update={"namespace": "cibench"})}
        )
        quiet = Rebuilder(cfg, client, push=True, out=lambda line: None)
        try:
            first = quiet.run_plan(make_plan(cfg, None))
            assert first.ok, first.format_text()
            times: dict[str, list[float]] = {
                "plan, no change": [],
                "rebuild, leaf change": [],
                "rebuild, full (root change)": [],
            }
            counts: dict[str, int] = {}
            for i in range(args.repeat):
                t = time.perf_counter()
                plan = make_plan(cfg, "HEAD")
                times["plan, no change"].append(time.perf_counter() - t)
                counts["plan, no change"] = len(plan.items)
                for key, image in (
                    ("rebuild, leaf change", "leaf"),
                    ("rebuild, full (root change)", "root"),
                ):
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
        print(
            json.dumps(
                {
                    "median_seconds": med,
                    "images": counts,
                    "leaf_full_ratio": ratio,
                    "repeat": args.repeat,
                }
            )
        )
        return 0
    print(
        f"hubstack ci benchmark: tiny 4-image hierarchy, median of {args.repeat}, build+test+push "
        "per image"
    )
    for k, v in med.items():
        print(f"  {k:30} {v:8.3f} s  ({counts[k]} image(s))")
    print(f"  leaf/full ratio               {ratio:8.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""What the container engine alone costs the host to start one container, against what one
notebook server costs in its own container, measured in the same rounds.

    PYTHONPATH=$PWD python benchmarks/spawn/engine_floor.py IMAGE [--rounds 3] [--starts 10]

Issue 14 asks both for a server start of at most 1.0 CPU-s and for the last of N analysts
at once to be ready within 1.25 x (N x start CPU-s / cores). N starts need
N x (server's CPU-s + what each start costs the host outside its container) / cores of the
cores, so the second target can hold only if that outside cost is at most a quarter of the
server's own. This measures the least any spawner on Docker pays outside: `docker create`
and `docker start` of a container that runs `sleep` (IMAGE, a UID with no passwd entry, no
capabilities, no-new-privileges, as the spawners start servers), with no network and on a
user-defined network (as every analyst's server is): the host's busy CPU-s (/proc/stat)
from the first create to one second after the last start, per start. No hub, no proxy, no
spawner: a notebook start costs the host more than this. The server's own CPU-s to ready is
start_cost.py's figure, one start per round. Each part waits for a quiet host first.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
import uuid
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from benchmarks.spawn.host_cpu import busy_seconds, settled
from benchmarks.spawn.start_cost import AS_THE_SPAWNER_RUNS_IT, start_once

SETTLE_AFTER = 1.0
"""Seconds counted after the last start: the engine finishes a start's work (the shim,
the network's set-up) around the moment `start` returns."""


def engine_cost(client, image: str, starts: int, **network) -> float:
    """Host busy CPU-s per create+start of a container that only sleeps."""
    made = []
    try:
        busy0, _ = busy_seconds()
        for _ in range(starts):
            c = client.containers.create(
                image,
                ["sleep", "600"],
                entrypoint=[],
                name=f"hubstack-enginefloor-{uuid.uuid4().hex[:8]}",
                **AS_THE_SPAWNER_RUNS_IT,
                **network,
            )
            made.append(c)
            c.start()
        time.sleep(SETTLE_AFTER)
        busy1, _ = busy_seconds()
        return (busy1 - busy0) / starts
    finally:
        for c in made:
            c.remove(force=True)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("image", help="image reference (local or pullable), e.g. the notebook image")
    ap.add_argument("--rounds", type=int, default=3, help="rounds (default 3)")
    ap.add_argument("--starts", type=int, default=10, help="containers per part (default 10)")
    args = ap.parse_args(argv)
    if args.rounds < 1 or args.starts < 1:
        ap.error("--rounds and --starts must be at least 1")
    client = docker.from_env()
    net = client.networks.create(f"hubstack-enginefloor-{uuid.uuid4().hex[:8]}", driver="bridge")
    figures: dict[str, list[float]] = {"no network": [], "user-defined network": [], "server": []}
    try:
        for n in range(args.rounds):
            print(settled(f"round {n + 1}, no network"), flush=True)
            figures["no network"].append(
                engine_cost(client, args.image, args.starts, network_mode="none")
            )
            print(settled(f"round {n + 1}, user-defined network"), flush=True)
            figures["user-defined network"].append(
                engine_cost(client, args.image, args.starts, network=net.name)
            )
            print(settled(f"round {n + 1}, server"), flush=True)
            figures["server"].append(start_once(client, args.image)[0])
    finally:
        net.remove()
    server = statistics.median(figures["server"])
    print(f"\n{'':<52} median   (min-max)     ÷ server")
    print(
        f"{'server: container CPU-s to ready':<52} {server:6.3f}   "
        f"({min(figures['server']):.2f}-{max(figures['server']):.2f})"
    )
    for part in ("no network", "user-defined network"):
        v = figures[part]
        print(
            f"{'engine: host CPU-s per start, ' + part:<52} {statistics.median(v):6.3f}   "
            f"({min(v):.2f}-{max(v):.2f})   {statistics.median(v) / server:6.2f}"
        )
    print(
        "\nlast of N within 1.25 x (N x start CPU-s / cores) needs the host's cost outside "
        "the container at most 0.25 x the server's."
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Spawn benchmark: login -> server ready, for 10 analysts one after another, then bursts of
10 and 30 analysts at once (p50, p95, last ready, failures), image warm; idle notebook
container memory; CPU-seconds one server costs to start through the hub. Same run, same
image: hubstack's spawner, then stock DockerSpawner (benchmarks/spawn/stock.yaml); and, as
the floor, CPU-seconds to ready of the image's jupyterhub-singleuser and of plain
`jupyter lab` started without a hub (start_cost.py).

    PYTHONPATH=$PWD python benchmarks/spawn/run.py [--users 10] [--bursts 10,30]
        [--config FILE] [--hub-image REF] [--notebook-image REF] [--executor-image REF]

It starts a throwaway platform of its own (own ports, network, state dir), prints a table,
and removes the platform (not the homes' parent images) at the end.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.spawn.start_cost import PLAIN_LAB, start_once  # noqa: E402
from hubstack import stack  # noqa: E402
from hubstack.config import load_config  # noqa: E402
from tests.integration.hubstack_e2e import HubClient, add_user, hubstack, write_config  # noqa: E402


def try_login_to_ready(base: str, name: str, password: str) -> float | None:
    """Seconds to ready, or None when the spawn failed (counted, not raised)."""
    try:
        return login_to_ready(base, name, password)
    except Exception as e:
        print(f"{name}: spawn failed: ...{str(e)[-600:]}", file=sys.stderr)
        return None


def login_to_ready(base: str, name: str, password: str) -> float:
    t0 = time.perf_counter()
    c = HubClient(base, name)
    r = c.login(password)
    assert r.status_code == 302, r.status_code
    c.make_token()
    c.start()
    return time.perf_counter() - t0


def stop_all(base: str, users: dict) -> None:
    def stop(name):
        c = HubClient(base, name)
        c.login(users[name])
        c.make_token()
        if c.api("GET", f"/hub/api/users/{name}").json()["servers"]:
            c.stop()

    with ThreadPoolExecutor(len(users)) as pool:
        list(pool.map(stop, users))


def container_figures(client, prefix: str) -> tuple[list[float], list[float]]:
    """(idle memory MiB, CPU-seconds since start) of each notebook container of this
    platform (named PREFIX-...; each analyst's server is on a network of their own)."""
    mem, cpu = [], []
    for c in client.containers.list(filters={"label": "io.hubstack.user"}):
        if not c.name.startswith(prefix):
            continue
        s = c.stats(stream=False)
        m = s["memory_stats"]
        usage = m.get("usage", 0) - m.get("stats", {}).get(
            "total_inactive_file", m.get("stats", {}).get("cache", 0)
        )
        mem.append(usage / 2**20)
        cpu.append(s["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9)
    return mem, cpu


def pct(values: list[float], p: float) -> float:
    v = sorted(values)
    return v[min(len(v) - 1, round(p / 100 * (len(v) - 1)))]


def summary(label: str, values: list[float]) -> str:
    p50, p95 = pct(values, 50), pct(values, 95)
    return f"{label:<34} p50 {p50:6.2f}  p95 {p95:6.2f}  max {max(values):6.2f}"


def burst_summary(label: str, values: list[float | None]) -> str:
    ready = [v for v in values if v is not None]
    failed = len(values) - len(ready)
    if not ready:
        return f"{label:<34} all {failed} failed"
    return f"{summary(label, ready)}  failures {failed}"


def run_round(cfg, users: dict, client, label: str, serial_n: int, bursts: list[int]) -> list[str]:
    base = f"http://{cfg.hub.host}:{cfg.hub.port}"
    lines = []
    first = dict(list(users.items())[:serial_n])
    serial = [login_to_ready(base, n, pw) for n, pw in first.items()]
    lines.append(summary(f"{label}: {serial_n} one after another (s)", serial))
    time.sleep(10)  # let the servers go idle
    mem, cpu = container_figures(client, cfg.hub.network)
    lines.append(
        f"{label + ': idle container memory (MiB)':<34} median {statistics.median(mem):6.1f}"
    )
    lines.append(f"{label + ': CPU-seconds to start':<34} median {statistics.median(cpu):6.2f}")
    stop_all(base, first)
    for n in bursts:
        crowd = list(users.items())[:n]
        with ThreadPoolExecutor(n) as pool:
            at_once = list(pool.map(lambda kv: try_login_to_ready(base, *kv), crowd))
        lines.append(burst_summary(f"{label}: {n} at once (s)", at_once))
        stop_all(base, dict(crowd))
    return lines


def floor_figures(client, image: str, runs: int = 3) -> list[str]:
    """CPU-s to ready without a hub: the spawner's command and plain JupyterLab."""
    figures: dict[str, list[float]] = {"jupyterhub-singleuser": [], "plain jupyter lab": []}
    for _ in range(runs):  # interleaved, so load falls on both alike
        figures["jupyterhub-singleuser"].append(start_once(client, image)[0])
        figures["plain jupyter lab"].append(start_once(client, image, command=PLAIN_LAB)[0])
    return [
        f"{'no hub: ' + name + ', CPU-s to ready':<34} median {statistics.median(v):6.2f}"
        for name, v in figures.items()
    ]


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10, help="analysts one after another")
    ap.add_argument(
        "--bursts", default="10,30", help="analysts logging in at once, comma-separated"
    )
    ap.add_argument(
        "--config", help="platform config whose hub and notebook images to use (default: defaults)"
    )
    ap.add_argument("--hub-image")
    ap.add_argument("--notebook-image")
    ap.add_argument(
        "--executor-image", help="Spark executor image (the stack includes the Spark cluster)"
    )
    args = ap.parse_args()
    try:
        bursts = [int(n) for n in args.bursts.split(",") if n.strip()]
    except ValueError:
        ap.error(f"--bursts must be numbers separated by commas, got {args.bursts!r}")
    if args.users < 1 or not bursts or min(bursts) < 1:
        ap.error("--users and every burst must be at least 1")
    src = load_config(args.config)
    hub_image = args.hub_image or src.image_ref(src.hub.image)
    nb_image = args.notebook_image or src.image_ref("notebook")
    executor_image = args.executor_image or src.image_ref("spark-executor")

    client = docker.from_env(timeout=600)
    tmp = Path(tempfile.mkdtemp(prefix="hubbench-"))
    name = f"hubbench-{os.getpid()}"
    config = write_config(tmp, name, image_ns=name)
    cfg = load_config(config)
    client.images.get(hub_image).tag(cfg.image_ref("hub"))
    client.images.get(nb_image).tag(cfg.image_ref("notebook"))
    client.images.get(executor_image).tag(cfg.image_ref("spark-executor"))
    count = max(args.users, *bursts)
    users = {f"bench{i:02d}": f"pw-{i:02d}-{os.getpid()}" for i in range(count)}
    for i, (n, pw) in enumerate(users.items()):
        add_user(cfg, n, pw, 24000 + i, 24000 + i, [])
    env_file = stack.env_file(cfg)
    compose = [
        "docker",
        "compose",
        "-p",
        name,
        "-f",
        str(cfg.source_root / "compose/compose.yaml"),
        "--env-file",
        str(env_file),
    ]
    lines = []
    try:
        r = hubstack(config, "up", "--no-build")
        if r.returncode:
            print(r.stdout, r.stderr, file=sys.stderr)
            return 1
        # Warm: the image is in the engine already (pushed from it); one spawn resolves it.
        lines += floor_figures(client, cfg.image_ref("notebook"))
        lines += run_round(cfg, users, client, "hubstack", args.users, bursts)

        stock_env = dict(os.environ, BENCH_IMAGE=cfg.image_ref("notebook"), BENCH_DIR=str(HERE))
        subprocess.run(
            [*compose, "-f", str(HERE / "stock.yaml"), "up", "-d", "--wait", "hub"],
            env=stock_env,
            check=True,
            capture_output=True,
        )
        time.sleep(3)
        lines += run_round(cfg, users, client, "stock DockerSpawner", args.users, bursts)
    finally:
        hubstack(config, "down")
        subprocess.run([*compose, "down", "-v"], capture_output=True)
        for n in ("hub", "notebook", "spark-executor"):
            try:
                client.images.remove(cfg.image_ref(n))
            except docker.errors.APIError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    print("\n".join(lines))
    return 0


if __name__ == "__main__":
    sys.exit(main())

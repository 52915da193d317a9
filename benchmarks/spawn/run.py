"""Spawn benchmark: login -> server ready, for 10 analysts one after another and 10 at once,
image warm; idle notebook container memory; CPU-seconds one server costs to start.
Same run, same image: hubstack's spawner, then stock DockerSpawner (benchmarks/spawn/stock.yaml).

    PYTHONPATH=$PWD python benchmarks/spawn/run.py [--users 10] [--config FILE]
        [--hub-image REF] [--notebook-image REF] [--executor-image REF]

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

from hubstack import stack  # noqa: E402
from hubstack.config import load_config  # noqa: E402
from tests.integration.hubstack_e2e import HubClient, add_user, hubstack, write_config  # noqa: E402


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


def container_figures(client, network: str) -> tuple[list[float], list[float]]:
    """(idle memory MiB, CPU-seconds since start) of each notebook container on the network."""
    mem, cpu = [], []
    for c in client.containers.list(filters={"network": network}):
        if "io.hubstack.user" not in c.labels:
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


def run_round(cfg, users: dict, client, label: str) -> list[str]:
    base = f"http://{cfg.hub.host}:{cfg.hub.port}"
    lines = []
    serial = [login_to_ready(base, n, pw) for n, pw in users.items()]
    lines.append(summary(f"{label}: 1 after another (s)", serial))
    time.sleep(10)  # let the servers go idle
    mem, cpu = container_figures(client, cfg.hub.network)
    lines.append(
        f"{label + ': idle container memory (MiB)':<34} median {statistics.median(mem):6.1f}"
    )
    lines.append(f"{label + ': CPU-seconds to start':<34} median {statistics.median(cpu):6.2f}")
    stop_all(base, users)
    with ThreadPoolExecutor(len(users)) as pool:
        at_once = list(pool.map(lambda kv: login_to_ready(base, *kv), users.items()))
    lines.append(summary(f"{label}: {len(users)} at once (s)", at_once))
    stop_all(base, users)
    return lines


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--users", type=int, default=10)
    ap.add_argument(
        "--config", help="platform config whose hub and notebook images to use (default: defaults)"
    )
    ap.add_argument("--hub-image")
    ap.add_argument("--notebook-image")
    ap.add_argument(
        "--executor-image", help="Spark executor image (the stack includes the Spark cluster)"
    )
    args = ap.parse_args()
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
    users = {f"bench{i:02d}": f"pw-{i:02d}-{os.getpid()}" for i in range(args.users)}
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
        lines += run_round(cfg, users, client, "hubstack")

        stock_env = dict(os.environ, BENCH_IMAGE=cfg.image_ref("notebook"), BENCH_DIR=str(HERE))
        subprocess.run(
            [*compose, "-f", str(HERE / "stock.yaml"), "up", "-d", "--wait", "hub"],
            env=stock_env,
            check=True,
            capture_output=True,
        )
        time.sleep(3)
        lines += run_round(cfg, users, client, "stock DockerSpawner")
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

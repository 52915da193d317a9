"""Spawn benchmark: login -> server ready, for 10 analysts one after another, then bursts of
10 and 30 analysts at once (p50, p95, last ready, failures), image warm; idle notebook
container memory and CPU; CPU-seconds one server costs to start through the hub (its
container's cgroup, read as soon as the hub says the server is ready). Same run, same
image: hubstack's spawner, then stock DockerSpawner (benchmarks/spawn/stock.yaml), burst by
burst (each of stock's right after hubstack's, the hubs swapped between); and, as
the floor, CPU-seconds to ready of the image's jupyterhub-singleuser and of plain
`jupyter lab` started without a hub (start_cost.py).

    PYTHONPATH=$PWD python benchmarks/spawn/run.py [--users 10] [--bursts 10,30]
        [--config FILE] [--hub-image REF] [--notebook-image REF] [--executor-image REF]
        [--bursts-only] [--slots N,M] [--host-cpu] [--ready-ahead N] [--stock-first]

--bursts-only skips the one-after-another round, the idle figures and the no-hub floor (a
quick look at bursts: `--bursts-only --bursts 10,10,10` repeats the burst of ten); --slots
runs hubstack's round once per hub.spawn.concurrent_starts given (the hub restarted on
each; default: one round, unset, which is one more than the hub's cores). Each burst also
reports the host's CPU busy during it and, for hubstack, where each start's time went (the
spawner's log line per start: queued, container created and started, server answering).
Before each of hubstack's bursts it waits (at most 120 s, printed) until the hub has made
the crowd's networks ahead, as it has had idle hours before a real Monday-morning burst.
Before each round it waits (at most 120 s, printed) until the host has been under 15 %
busy for 5 s, so that no round inherits the platform's or a hub's start; before the first,
the one-after-another round's analysts start and stop once with hubstack's hub, not counted.
--ready-ahead sets network.ready_ahead for hubstack's platform (default: the shipped default;
0: each analyst's network made at their start, as before the hub made them ahead).
--stock-first runs stock's round before hubstack's in each pair, so a difference that
follows the order (the machine's drift, a warmer cache) shows apart from the spawners'.
--host-cpu adds, per burst, the host's CPU-s per start by process (host_cpu.py): the
engine (dockerd, containerd, shims, runc, the iptables it runs), the hub's python and
proxy, the notebook containers, other jobs.

It starts a throwaway platform of its own (own ports, network, state dir), prints a table,
and removes the platform (not the homes' parent images) at the end.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import re
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker
import yaml

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from benchmarks.spawn.host_cpu import (  # noqa: E402
    HostCPU,
    busy_seconds,
    container_usage,
    settled,
)
from benchmarks.spawn.start_cost import PLAIN_LAB, start_once  # noqa: E402
from hubstack import networks, stack  # noqa: E402
from hubstack.config import load_config  # noqa: E402
from hubstack.engine import platform_containers, service_container  # noqa: E402
from hubstack.hub.container_spec import USER_LABEL  # noqa: E402
from tests.integration.hubstack_e2e import (  # noqa: E402
    HubClient,
    add_user,
    hub_config_changed,
    hubstack,
    write_config,
)


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


def notebook_containers(cfg, client) -> list:
    """The running notebook containers of this platform: hubstack's and stock's (both on
    its networks, labelled io.hubstack.user)."""
    return platform_containers(cfg, client, USER_LABEL, include_stopped=False)


def idle_memory(cfg, client) -> list[float]:
    """Memory in use (MiB, page cache left out) of each notebook container of this
    platform."""
    mem = []
    for c in notebook_containers(cfg, client):
        m = c.stats(stream=False)["memory_stats"]
        usage = m.get("usage", 0) - m.get("stats", {}).get(
            "total_inactive_file", m.get("stats", {}).get("cache", 0)
        )
        mem.append(usage / 2**20)
    return mem


def notebook_cpu(cfg, client) -> dict[str, tuple[float, float]]:
    """Container ID -> (CPU-seconds it has used, when read) for this platform's notebook
    containers, from their cgroups: exact, and without the second `docker stats` waits."""
    usage = container_usage()
    now = time.perf_counter()
    return {c.id: (usage[c.id], now) for c in notebook_containers(cfg, client) if c.id in usage}


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


# The spawner's line per start (hubstack.hub.spawner.start_phases).
START_LINE = re.compile(
    r"(\S+)'s start: ([\d.]+) s queued, ([\d.]+) s creating the container, "
    r"([\d.]+) s starting it, ([\d.]+) s until the server answered"
)
PHASES = ("queued", "creating", "starting", "answering")


def start_phases(hub: str, since: float) -> list[str]:
    """Median and max of the hubstack spawner's start phases, from the hub's log since
    SINCE."""
    logs = subprocess.run(
        ["docker", "logs", "--since", f"{since:.3f}", hub], capture_output=True, text=True
    )
    found = [m.groups()[1:] for m in START_LINE.finditer(logs.stdout + logs.stderr)]
    if not found:
        return []
    figures = ", ".join(
        f"{name} {statistics.median(v):.2f}/{max(v):.2f}"
        for i, name in enumerate(PHASES)
        for v in [[float(f[i]) for f in found]]
    )
    return [f"{'  per start, median/max (s)':<34} {figures}"]


def container_kinds(client, project: str):
    """ID -> what the container is, for HostCPU: this platform's hub, its notebook
    containers, its other services, or another job's container (the engine is shared)."""
    known: dict[str, str] = {}

    def kind(cid: str) -> str:
        if cid not in known:
            try:
                c = client.api.inspect_container(cid)
                labels, name = c["Config"]["Labels"] or {}, c["Name"].lstrip("/")
            except docker.errors.APIError:
                labels, name = {}, ""
            if labels.get("com.docker.compose.project") == project:
                service = labels.get("com.docker.compose.service", "")
                known[cid] = "hub" if service == "hub" else f"platform's {service}"
            elif name.startswith(project) and "io.hubstack.user" in labels:
                known[cid] = "notebook containers"
            elif name.startswith(project):
                known[cid] = "platform's other containers"
            else:
                known[cid] = "other jobs' containers"
        return known[cid]

    return kind


def networks_made_ahead(cfg, client, names: list[str], timeout: float = 120) -> str:
    """Wait until the hub has made the networks of NAMES ahead (network.ready_ahead), as
    it has in the idle hours before a Monday-morning burst; a line saying how many and how
    long it waited."""
    wanted = {networks.network_name(cfg, n) for n in names}
    t0 = time.perf_counter()
    while True:
        made = wanted & {net.name for net in networks.analyst_networks(cfg, client)}
        if made == wanted or time.perf_counter() - t0 > timeout:
            break
        time.sleep(0.5)
    return (
        f"{'  networks made ahead':<34} {len(made)} of {len(wanted)} "
        f"(waited {time.perf_counter() - t0:.1f} s for the hub's idle time)"
    )


def run_round(
    cfg,
    users: dict,
    client,
    label: str,
    serial_n: int,
    bursts: list[int],
    hub: str = "",
    host_cpu: bool = False,
    ready_networks: bool = False,
) -> tuple[list[str], dict[int, list]]:
    base = f"http://{cfg.hub.host}:{cfg.hub.port}"
    lines = []
    if serial_n:
        lines.append(settled(label))
        first = dict(list(users.items())[:serial_n])
        serial, at_ready, seen = [], {}, set(notebook_cpu(cfg, client))
        for name, pw in first.items():
            serial.append(login_to_ready(base, name, pw))
            # Read as soon as the hub says ready: the figure the target is about.
            # Read after the idle wait instead, it would include the idle server's CPU.
            new = {k: v for k, v in notebook_cpu(cfg, client).items() if k not in seen}
            at_ready.update(new)
            seen |= new.keys()
        lines.append(summary(f"{label}: {serial_n} one after another (s)", serial))
        time.sleep(10)  # let the servers go idle
        mem = idle_memory(cfg, client)
        later = notebook_cpu(cfg, client)
        idle = [
            (later[k][0] - cpu) / (later[k][1] - t) * 60
            for k, (cpu, t) in at_ready.items()
            if k in later
        ]
        lines.append(
            f"{label + ': idle container memory (MiB)':<34} median {statistics.median(mem):6.1f}"
        )
        lines.append(
            f"{label + ': CPU-seconds to ready':<34} median "
            f"{statistics.median(cpu for cpu, _ in at_ready.values()):6.2f}"
        )
        lines.append(
            f"{label + ': idle CPU-s per minute':<34} median {statistics.median(idle):6.3f}"
        )
        stop_all(base, first)
    results: dict[int, list] = {}
    for i, n in enumerate(bursts):
        crowd = list(users.items())[:n]
        if ready_networks:
            lines.append(networks_made_ahead(cfg, client, [name for name, _ in crowd]))
        lines.append(settled(f"{label}: {n} at once"))
        since = time.time()
        busy0, all0 = busy_seconds()
        sampler = HostCPU(container_kinds(client, cfg.hub.network)) if host_cpu else None
        if sampler is not None:
            sampler.start()
        t0 = time.perf_counter()
        with ThreadPoolExecutor(n) as pool:
            at_once = list(pool.map(lambda kv: try_login_to_ready(base, *kv), crowd))
        wall = time.perf_counter() - t0
        report = sampler.stop(n) if sampler is not None else None
        busy1, all1 = busy_seconds()
        results[i] = at_once
        lines.append(burst_summary(f"{label}: {n} at once (s)", at_once))
        cores = (all1 - all0) / wall
        lines.append(
            f"{'  host CPU during the burst':<34} {busy1 - busy0:5.1f} CPU-s in {wall:5.1f} s "
            f"= {100 * (busy1 - busy0) / (all1 - all0):3.0f} % of {cores:.0f} cores"
        )
        if report is not None:
            lines += report.lines(n)
        if hub:
            lines += start_phases(hub, since)
        stop_all(base, dict(crowd))
    return lines, results


@contextlib.contextmanager
def stock_hub(cfg, client, compose: list[str], env: dict):
    """Stock DockerSpawner's hub (stock.yaml) in place of hubstack's, on the same platform
    and image; hubstack's hub back afterwards."""
    subprocess.run([*compose, "stop", "hub"], check=True, capture_output=True)
    # Stock's round on an engine without hubstack's idle networks: their rules would make
    # each of stock's iptables calls read a larger ruleset.
    networks.remove_analyst_networks(cfg, client)
    subprocess.run(
        [*compose, "-f", str(HERE / "stock.yaml"), "up", "-d", "--wait", "hub"],
        env=env,
        check=True,
        capture_output=True,
    )
    stack.wait_for_hub(cfg)  # the proxy routes to the new hub only once it is up
    try:
        yield
    finally:
        subprocess.run([*compose, "up", "-d", "--wait", "hub"], check=True, capture_output=True)
        stack.wait_for_hub(cfg)


def with_slots(n: int | None):
    """A change to the hub's config: N start slots (None: the setting unset)."""

    def change(data: dict) -> None:
        spawn = data.setdefault("hub", {}).setdefault("spawn", {})
        if n is None:
            spawn.pop("concurrent_starts", None)
        else:
            spawn["concurrent_starts"] = n

    return change


def ratios(
    label: str, bursts: list[int], ours: dict[int, list], stock: dict[int, list]
) -> list[str]:
    """LABEL ÷ stock for each burst's p50, p95 and max (below 1: hubstack is ahead)."""
    lines = []
    for i, n in enumerate(bursts):
        a = [v for v in ours[i] if v is not None]
        b = [v for v in stock[i] if v is not None]
        if not a or not b:
            continue
        lines.append(
            f"{f'{label} ÷ stock: {n} at once':<34} p50 {pct(a, 50) / pct(b, 50):6.2f}  "
            f"p95 {pct(a, 95) / pct(b, 95):6.2f}  max {max(a) / max(b):6.2f}"
        )
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
    ap.add_argument(
        "--bursts-only",
        action="store_true",
        help="only the bursts: no one-after-another round, idle figures or no-hub floor",
    )
    ap.add_argument(
        "--slots",
        default="",
        help="hub.spawn.concurrent_starts for hubstack's rounds, comma-separated: one round "
        "each (default: one round with the setting unset)",
    )
    ap.add_argument(
        "--host-cpu",
        action="store_true",
        help="also say where the host's CPU went in each burst, by process (engine, "
        "iptables, hub, proxy, notebooks), as CPU-s per start",
    )
    ap.add_argument(
        "--stock-first",
        action="store_true",
        help="stock DockerSpawner's round before hubstack's in each pair (default: after), to "
        "tell an effect of the order from one of the spawner",
    )
    ap.add_argument(
        "--ready-ahead",
        type=int,
        help="network.ready_ahead for hubstack's platform (default: the shipped default)",
    )
    args = ap.parse_args()
    try:
        bursts = [int(n) for n in args.bursts.split(",") if n.strip()]
    except ValueError:
        ap.error(f"--bursts must be numbers separated by commas, got {args.bursts!r}")
    try:
        slots = [int(n) for n in args.slots.split(",") if n.strip()] or [None]
    except ValueError:
        ap.error(f"--slots must be numbers separated by commas, got {args.slots!r}")
    if args.users < 1 or not bursts or min(bursts) < 1 or min(n or 1 for n in slots) < 1:
        ap.error("--users and every burst must be at least 1")
    src = load_config(args.config)
    hub_image = args.hub_image or src.image_ref(src.hub.image)
    nb_image = args.notebook_image or src.image_ref("notebook")
    executor_image = args.executor_image or src.image_ref("spark-executor")

    client = docker.from_env(timeout=600)
    tmp = Path(tempfile.mkdtemp(prefix="hubbench-"))
    name = f"hubbench-{os.getpid()}"
    config = write_config(tmp, name, image_ns=name)
    if args.ready_ahead is not None:
        data = yaml.safe_load(config.read_text())
        data.setdefault("network", {})["ready_ahead"] = args.ready_ahead
        config.write_text(yaml.safe_dump(data))
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
        serial_n = stock_serial_n = 0 if args.bursts_only else args.users
        if not args.bursts_only:
            lines += [settled("no hub"), *floor_figures(client, cfg.image_ref("notebook"))]
        # Not counted: the first spawn after `up` resolves and tags the image, and the first
        # round of starts after the platform's start measured about 0.1 CPU-s more per
        # server than the next, whichever spawner ran it (docs/performance.md).
        warm = dict(list(users.items())[: 1 if args.bursts_only else args.users])
        base = f"http://{cfg.hub.host}:{cfg.hub.port}"
        for first, pw in warm.items():
            login_to_ready(base, first, pw)
        stop_all(base, warm)
        lines.append(f"{'  warm-up (not counted)':<34} {len(warm)} starts, one after another")
        hub = service_container(cfg, client, "hub").name
        stock_env = dict(os.environ, BENCH_IMAGE=cfg.image_ref("notebook"), BENCH_DIR=str(HERE))
        ours: dict[str, dict[int, list]] = {}
        stock: dict[int, list] = {}
        # Stock's burst right after hubstack's (or right before), burst by burst: on a
        # shared host the machine's speed drifts over a run, and ratios of figures many
        # minutes apart would measure the drift as much as the spawners.
        for i, burst in enumerate(bursts):
            order = ("stock", "hubstack") if args.stock_first else ("hubstack", "stock")
            for spawner in order:
                if spawner == "hubstack":
                    for n in slots:
                        label = "hubstack" if n is None else f"hubstack, {n} slots"
                        with hub_config_changed(cfg, client, with_slots(n)):
                            more, got = run_round(
                                cfg,
                                users,
                                client,
                                label,
                                serial_n,
                                [burst],
                                hub,
                                args.host_cpu,
                                ready_networks=cfg.network.ready_ahead > 0,
                            )
                        lines += more
                        ours.setdefault(label, {})[i] = got[0]
                        serial_n = 0  # the one-after-another round does not depend on the slots
                    continue
                with stock_hub(cfg, client, compose, stock_env):
                    more, got = run_round(
                        cfg,
                        users,
                        client,
                        "stock DockerSpawner",
                        stock_serial_n,
                        [burst],
                        host_cpu=args.host_cpu,
                    )
                lines += more
                stock[i] = got[0]
                stock_serial_n = 0
        for label, figures in ours.items():
            lines += ratios(label, bursts, figures, stock)
    finally:
        print("\n".join(lines), flush=True)  # what was measured, even when a round failed
        hubstack(config, "down")
        subprocess.run([*compose, "down", "-v"], capture_output=True)
        for n in ("hub", "notebook", "spark-executor"):
            try:
                client.images.remove(cfg.image_ref(n))
            except docker.errors.APIError:
                pass
        shutil.rmtree(tmp, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""CPU-seconds one notebook server costs to start, per image, measured the same way in the
same run: the container's own CPU time (its cgroup) at the moment its /api first answers,
which is when the hub declares a spawn ready. Breakdown and figures: docs/performance.md.

    PYTHONPATH=$PWD python benchmarks/spawn/start_cost.py IMAGE [IMAGE ...] [--runs 3]
        [--importtime]

Each start is what the spawner starts (hubstack/hub/spawner.py, container_spec.py): the
image's `jupyterhub-singleuser` as a UID with no passwd entry, no capabilities,
no-new-privileges, with the JUPYTERHUB_* environment. The hub it talks to at start (version
check, activity) is a stub in a sidecar container that shares the server's network
namespace, so no hub's CPU is counted. Images are measured in turn, round after round, so
load from elsewhere on the machine falls on all of them alike; the table gives the median.
--importtime prints, for the first image, the imports that cost most (`python -X importtime`
under the same start; its own overhead makes those times larger than without it).
"""

from __future__ import annotations

import argparse
import collections
import re
import statistics
import sys
import time
import urllib.request
import uuid
from pathlib import Path

import docker

USER = "bench"

AS_THE_SPAWNER_RUNS_IT = {
    "user": "23456:23456",  # a UID with no passwd entry in the image
    "cap_drop": ["ALL"],
    "security_opt": ["no-new-privileges"],
}
"""How the spawners run a server's container (hubstack/hub/container_spec.py)."""

PREFIX = f"/user/{USER}/"
STUB_HUB = r"""
import http.server, json
class Hub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        body = json.dumps({"version": "stub"}).encode()
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", self.server.version)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
server = http.server.ThreadingHTTPServer(("127.0.0.1", 8081), Hub)
import jupyterhub
server.version = jupyterhub.__version__
server.serve_forever()
"""


def server_environment() -> dict[str, str]:
    api = "http://127.0.0.1:8081/hub/api"
    return {
        "JUPYTERHUB_API_TOKEN": uuid.uuid4().hex,
        "JUPYTERHUB_API_URL": api,
        "JUPYTERHUB_ACTIVITY_URL": f"{api}/users/{USER}/activity",
        "JUPYTERHUB_BASE_URL": "/",
        "JUPYTERHUB_SERVICE_PREFIX": PREFIX,
        "JUPYTERHUB_SERVICE_URL": f"http://0.0.0.0:8888{PREFIX}",
        "JUPYTERHUB_USER": USER,
        "JUPYTERHUB_SERVER_NAME": "",
        "JUPYTERHUB_CLIENT_ID": f"jupyterhub-user-{USER}",
        "JUPYTERHUB_OAUTH_CALLBACK_URL": f"{PREFIX}oauth_callback",
        "JUPYTERHUB_HOST": "",
        "HOME": "/tmp",
        "USER": USER,
        "NB_USER": USER,
        "SHELL": "/bin/bash",
    }


def cpu_seconds(container) -> float:
    """The container's CPU time so far: its cgroup (v1 or v2), else the engine's stats."""
    for path, scale in (
        (f"/sys/fs/cgroup/cpuacct/docker/{container.id}/cpuacct.usage", 1e-9),
        (f"/sys/fs/cgroup/system.slice/docker-{container.id}.scope/cpu.stat", 1e-6),
    ):
        try:
            text = Path(path).read_text()
        except OSError:
            continue
        value = text.split()[1] if text.startswith("usage_usec") else text
        return int(value) * scale
    stats = container.stats(stream=False, one_shot=True)
    return stats["cpu_stats"]["cpu_usage"]["total_usage"] / 1e9


SINGLEUSER = ["jupyterhub-singleuser"]
"""What the spawner starts."""
PLAIN_LAB = [
    "jupyter",
    "lab",
    "--ip=0.0.0.0",
    "--port=8888",
    "--no-browser",
    f"--ServerApp.base_url={PREFIX}",
    "--IdentityProvider.token=",
]
"""The baseline: plain JupyterLab in the same image, no hub extension, no auth."""


def start_once(
    client, image: str, importtime: bool = False, command: list[str] = SINGLEUSER
) -> tuple[float, float, str]:
    """(CPU-s at ready, wall-s to ready, the server's log) of one start of COMMAND in IMAGE."""
    tag = f"hubstack-startcost-{uuid.uuid4().hex[:8]}"
    hub = client.containers.run(
        image,
        ["python3", "-c", STUB_HUB],
        entrypoint=[],
        name=f"{tag}-hub",
        detach=True,
        ports={"8888/tcp": ("127.0.0.1", None)},
    )
    server = None
    try:
        hub.reload()
        port = hub.attrs["NetworkSettings"]["Ports"]["8888/tcp"][0]["HostPort"]
        env = server_environment()
        if importtime:
            env["PYTHONPROFILEIMPORTTIME"] = "1"
        t0 = time.perf_counter()
        server = client.containers.create(
            image,
            command,
            name=tag,
            working_dir="/tmp",
            environment=env,
            network_mode=f"container:{hub.id}",
            **AS_THE_SPAWNER_RUNS_IT,
        )
        server.start()
        while True:
            try:
                urllib.request.urlopen(f"http://127.0.0.1:{port}{PREFIX}api", timeout=5).read()
                break
            except OSError:
                server.reload()
                if server.status != "running" or time.perf_counter() - t0 > 300:
                    log = server.logs().decode(errors="replace")
                    raise SystemExit(f"{image}: the server did not answer\n{log[-3000:]}") from None
                time.sleep(0.05)
        wall = time.perf_counter() - t0
        cpu = cpu_seconds(server)
        return cpu, wall, server.logs().decode(errors="replace")
    finally:
        for c in (server, hub):
            if c is not None:
                c.remove(force=True)


def import_costs(log: str, top: int = 25) -> list[str]:
    """The top-level packages whose own import time is largest, from -X importtime lines."""
    by_package: collections.Counter[str] = collections.Counter()
    for line in log.splitlines():
        m = re.match(r"import time:\s+(\d+) \|\s+\d+ \|\s*(\S+)", line)
        if m:
            by_package[m[2].split(".")[0]] += int(m[1])
    total = sum(by_package.values())
    lines = [f"{'import (self time, all modules of the package)':<48} {total / 1e6:6.2f} s total"]
    lines += [f"  {name:<46} {us / 1e6:6.3f} s" for name, us in by_package.most_common(top)]
    return lines


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("images", nargs="+", help="image references (local or pullable)")
    ap.add_argument("--runs", type=int, default=3, help="starts per image (default 3)")
    ap.add_argument("--importtime", action="store_true", help="import breakdown, first image")
    args = ap.parse_args(argv)
    if args.runs < 1:
        ap.error("--runs must be at least 1")
    client = docker.from_env()
    figures: dict[str, list[tuple[float, float]]] = {i: [] for i in args.images}
    for _ in range(args.runs):
        for image in args.images:
            cpu, wall, _log = start_once(client, image)
            figures[image].append((cpu, wall))
    width = max(len(i) for i in args.images)
    print(f"{'image':<{width}}  CPU-s to ready (median, min-max)   wall-s (median)")
    for image, runs in figures.items():
        cpus = [c for c, _ in runs]
        print(
            f"{image:<{width}}  {statistics.median(cpus):5.2f}  ({min(cpus):.2f}-{max(cpus):.2f})"
            f"{'':>17}{statistics.median(w for _, w in runs):6.2f}"
        )
    if args.importtime:
        _cpu, _wall, log = start_once(client, args.images[0], importtime=True)
        print("\n".join(import_costs(log)))
    return 0


if __name__ == "__main__":
    sys.exit(main())

"""Swarm spawn benchmark: one analyst's server started by the Swarm spawner on the hub's
node (the swarm's manager) against one started on a second node: same run, same image
(warm on both nodes), several rounds in alternating order; p50 of each and the ratio.

    PYTHONPATH=$PWD python3 benchmarks/swarm/run.py [--image REF] [--rounds 5]

--image is an image on this host's engine that runs jupyterhub-singleuser; default the
notebook image `hubstack up` builds (127.0.0.1:5000/hubstack/notebook:latest).

What it builds, and removes at the end: the two-node swarm of the test suite
(tests/integration/swarm_nodes.py: two real dockerd engines in namespaces of their own,
`hub` the manager and `second` a worker, labelled hubstack.bench=hub / =second), the
platform registry with its read-only instance over TLS on the nodes' segment, the image
pushed there and pulled onto both nodes before any timing (warm), an attachable overlay
network for the servers, and on the manager a container on that overlay standing where
the hub stands: the readiness probe runs in its network namespace.

One start is timed as the hub sees it: `HubstackSwarmSpawner.start()` (the digest lookup,
the account configs, the service, placement, the task running), then the server answering
`GET /user/NAME/api` at its task's overlay address from the manager's side (what
JupyterHub's wait_up does; any HTTP answer counts). Reported per node: task running and
server answering, p50 / min / max, and the second node's ÷ the hub node's. Before the
rounds, one start on each node warms the spawner's per-digest cache of the image's
accounts (not counted).

Two things differ from a hub's start, both because swarm mode is not finished: each
analyst runs as the image's own user (1000:100), their home a volume at /home/jovyan that
the spawner's home task makes theirs before the server starts (docs/multi-node.md); and
there is no hub: a stub on the manager answers the server's calls to the hub's API
(jupyterhub-singleuser exits when it cannot reach one).
"""

from __future__ import annotations

import argparse
import asyncio
import secrets
import statistics
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from types import SimpleNamespace

import docker

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parents[1]))

from jupyterhub.objects import Server  # noqa: E402

from hubstack.config import parse_config  # noqa: E402
from hubstack.hub.container_spec import USER_LABEL  # noqa: E402
from hubstack.hub.swarm_spawner import HubstackSwarmSpawner  # noqa: E402
from hubstack.images.build import push_image  # noqa: E402
from hubstack.registry import PULL, auth_config  # noqa: E402
from tests.conftest import SESSION_ID  # noqa: E402
from tests.integration.swarm_nodes import nodes_registry, swarm_cluster  # noqa: E402

LABEL = "hubstack.bench"
NODES = [("hub", {LABEL: "hub"}, []), ("second", {LABEL: "second"}, [])]
IMAGE = "bench-server"
PORT = 8888
IMAGE_USER = {"uid": 1000, "gid": 100, "groups": [100], "home": "/home/jovyan"}
"""The analyst is the image's own user; their home volume is mounted over the image's."""
READY_TIMEOUT = 180.0

HUB_PORT = 8081
# The hub's API as far as a starting jupyterhub-singleuser needs it: it asks the hub's
# version at start (and exits after 5 failed tries), later posts activity. Runs with the
# image's Python in the manager-side container.
HUB_STUB = f"""
import http.server, jupyterhub
class Hub(http.server.BaseHTTPRequestHandler):
    def answer(self):
        self.send_response(200)
        self.send_header("X-JupyterHub-Version", jupyterhub.__version__)
        self.send_header("Content-Type", "application/json")
        self.end_headers()
        self.wfile.write(b"{{}}")
    do_GET = do_POST = answer
    def log_message(self, *args):
        pass
http.server.ThreadingHTTPServer(("0.0.0.0", {HUB_PORT}), Hub).serve_forever()
"""

# Runs in the manager-side container's network namespace (nsenter), with this host's
# Python: prints CLOCK_MONOTONIC (system-wide) at the server's first HTTP answer.
PROBE = """
import sys, time, urllib.error, urllib.request
url, deadline = sys.argv[1], time.monotonic() + float(sys.argv[2])
while time.monotonic() < deadline:
    try:
        urllib.request.urlopen(url, timeout=2).read()
    except urllib.error.HTTPError:
        pass
    except OSError:
        time.sleep(0.05)
        continue
    print(time.monotonic())
    sys.exit(0)
sys.exit(1)
"""


def hub_config(cfg, tag: str):
    """The platform config as the hub sees it (as tests/integration/test_swarm_spawner.py
    does): the read-only TLS registry and its pull account; one profile per node."""
    data = cfg.model_dump(mode="json", exclude={"path"})
    data["registry"]["address"] = cfg.registry.pull_address
    data["registry"]["credentials_file"] = str(cfg.registry_pull_credentials_file)
    data["hub"]["notebook_image_tag"] = tag
    data["cluster"]["mode"] = "swarm"
    data["hub"]["min_uid"] = IMAGE_USER["gid"]  # the image's user's group: users (100)
    data["profiles"] = [
        {"name": node, "display_name": node, "image": IMAGE, "placement": {LABEL: node}}
        for node, _, _ in NODES
    ]
    return parse_config(data)


def task_address(api: docker.APIClient, service: str, network_id: str) -> str:
    for task in api.tasks(filters={"service": service, "desired-state": "running"}):
        for attachment in task.get("NetworksAttachments") or []:
            if attachment["Network"]["ID"] == network_id:
                return attachment["Addresses"][0].split("/")[0]
    raise RuntimeError(f"{service}: no address on the servers' network")


async def spawn_once(hub_cfg, api, network_id: str, hub: tuple[int, str], node: str, name: str):
    """(task running, server answering) in seconds from the start call, and the node."""

    async def auth_state():
        return IMAGE_USER

    s = HubstackSwarmSpawner(platform=hub_cfg, service_networks=[network_id])
    s.user = SimpleNamespace(
        name=name, escaped_name=name, url=f"/user/{name}/", groups=[], get_auth_state=auth_state
    )
    s.user.id = 1
    probe_pid, hub_address = hub
    s.hub = SimpleNamespace(
        api_url=f"http://{hub_address}:{HUB_PORT}/hub/api",
        base_url="/hub/",
        url=f"http://{hub_address}:{HUB_PORT}/hub/",
        public_host="",
    )
    s.server = Server(ip="0.0.0.0", port=PORT, base_url=f"/user/{name}/")
    s.api_token = secrets.token_hex(16)
    s.user_options = {"profile": node}
    started = time.monotonic()
    try:
        await s.start()
        running = time.monotonic() - started
        address = task_address(api, s.service_name, network_id)
        url = f"http://{address}:{PORT}/user/{name}/api"
        probe = await asyncio.to_thread(
            subprocess.run,
            ["nsenter", f"--net=/proc/{probe_pid}/ns/net", sys.executable, "-c", PROBE, url]
            + [str(READY_TIMEOUT)],
            capture_output=True,
            text=True,
        )
        if probe.returncode != 0:
            logs = b"".join(api.service_logs(s.service_name, stdout=True, stderr=True, tail=30))
            raise RuntimeError(
                f"{name}'s server on {s.node_name} did not answer {url}:\n{logs.decode()}"
            )
        return running, float(probe.stdout) - started, s.node_name
    finally:
        await s.stop()


def wait_gone(swarm, name: str, timeout: float = 60) -> None:
    """Until no node runs NAME's container any more: starts do not overlap."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        # The plain listing: docker-py's containers.list() inspects each one, and a
        # container going away in between is an error there.
        if not any(
            n.client.api.containers(all=True, filters={"label": f"{USER_LABEL}={name}"})
            for n in swarm.nodes
        ):
            return
        time.sleep(0.2)


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):.2f} s ({min(values):.2f}-{max(values):.2f})"


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--image", default="127.0.0.1:5000/hubstack/notebook:latest")
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()

    client = docker.from_env(timeout=900)
    try:
        source = client.images.get(args.image)
    except docker.errors.ImageNotFound:
        print(
            f"{args.image} is not on this engine: build it (`hubstack up`, or `hubstack images "
            "build notebook`), or give --image REF of an image that runs jupyterhub-singleuser",
            file=sys.stderr,
        )
        return 2
    size = source.attrs["Size"] / 1e9
    t0 = time.monotonic()

    def say(line: str) -> None:
        print(f"[swarm-bench] {line} (+{time.monotonic() - t0:.0f}s)", file=sys.stderr, flush=True)

    # The platform state (the registry's accounts, the CA and its key) goes with the run.
    with (
        tempfile.TemporaryDirectory(prefix="hs-swarm-bench-") as top,
        swarm_cluster(NODES) as swarm,
        nodes_registry(swarm, client, Path(top) / "state", f"hubbench-swarm-{SESSION_ID}") as cfg,
    ):
        tag = f"bench-{SESSION_ID}"
        ref = cfg.image_ref(IMAGE, tag)
        client.api.tag(source.id, *ref.rsplit(":", 1))
        manager = swarm.manager
        api = docker.APIClient(base_url=manager.socket, version="auto", timeout=300)
        network = None
        prober = None
        try:
            say(f"swarm of {len(swarm.nodes)} nodes up; pushing {args.image} ({size:.2f} GB)")
            push_image(cfg, client, IMAGE, tag=tag, progress=say)
            pull_ref = f"{cfg.pull_repository(IMAGE)}:{tag}"
            pull_auth = auth_config(cfg, PULL)
            with ThreadPoolExecutor(len(swarm.nodes)) as pool:
                pulls = [
                    pool.submit(n.client.images.pull, pull_ref, auth_config=pull_auth)
                    for n in swarm.nodes
                ]
                for pull in pulls:
                    pull.result()
            say("the image is on both nodes (warm)")
            network = manager.client.networks.create(
                f"hubbench-{SESSION_ID}", driver="overlay", attachable=True
            )
            prober = manager.client.containers.run(
                pull_ref,
                entrypoint=["python3", "-c", HUB_STUB],
                network=network.name,
                name=f"hubbench-probe-{SESSION_ID}",
                detach=True,
            )
            prober.reload()
            hub = (
                prober.attrs["State"]["Pid"],
                prober.attrs["NetworkSettings"]["Networks"][network.name]["IPAddress"],
            )
            hub_cfg = hub_config(cfg, tag)
            HubstackSwarmSpawner._client = api

            def one(node: str, name: str):
                result = asyncio.run(spawn_once(hub_cfg, api, network.id, hub, node, name))
                wait_gone(swarm, name)
                if result[2] != node:
                    raise RuntimeError(f"{name}: placed on {result[2]}, not {node}")
                return result

            for node, _, _ in NODES:
                running, ready, _ = one(node, f"warm{node}")
                say(f"warm-up on {node}: running {running:.2f} s, answering {ready:.2f} s")
            times: dict[str, list[tuple[float, float]]] = {node: [] for node, _, _ in NODES}
            for r in range(args.rounds):
                order = [n for n, _, _ in NODES]
                for node in order if r % 2 == 0 else reversed(order):
                    running, ready, _ = one(node, f"r{r}{node}")
                    times[node].append((running, ready))
                    say(f"round {r + 1} {node}: running {running:.2f} s, answering {ready:.2f} s")
        finally:
            HubstackSwarmSpawner._client = None
            if prober is not None:
                prober.remove(force=True)
            if network is not None:
                network.remove()
            api.close()
            client.api.remove_image(ref, noprune=True)  # the tag only: the image is the source

    hub, second = times["hub"], times["second"]
    print(f"\nSwarm spawn: {args.image} ({size:.2f} GB), {args.rounds} rounds, image warm")
    print(f"{'':22}{'hub node (manager)':26}{'second node':26}second ÷ hub (p50)")
    for i, what in enumerate(("task running", "server answering")):
        a, b = [t[i] for t in hub], [t[i] for t in second]
        ratio = statistics.median(b) / statistics.median(a)
        print(f"{what:22}{summary(a):26}{summary(b):26}{ratio:.2f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())

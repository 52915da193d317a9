"""A real multi-node Docker Swarm on this one machine, for the swarm-mode tests.

Each node is a real dockerd (Debian's 20.10, the one the suite runs) started on the host
in namespaces of its own:
- a network namespace with one address on a private segment (198.19.X.0/24), so each node
  has the swarm ports 2377/7946/4789 of its own and its own iptables rules, docker0 and
  overlay networks (none of them touch the host's);
- a mount namespace in which the node's own folder is bound over /etc/docker: its
  daemon.json, and its certs.d (where a registry's CA is installed, exactly as on a real
  node), without touching the host engine's /etc/docker;
- a UTS namespace, so `docker node ls` shows the node's own host name;
- its own data root, exec root and socket under a temporary folder.

Why not engines in privileged containers (docker:dind's way): this machine's capability
bounding set lacks CAP_SYS_RESOURCE, so the engine refuses every `--privileged` container
("unable to apply caps: operation not permitted"). Processes in namespaces need no
privilege beyond the root the suite already runs as.

The segment is a bridge inside a namespace of its own (the "switch"), reached from the
host through one veth whose host end is 198.19.X.1: traffic between nodes never crosses
the host's FORWARD chain (where Docker's DROP policy and br_netfilter would stop it), and
a container the host engine publishes on 198.19.X.1 (the registry) is reachable from every
node. Nothing is added to the host's iptables.

GPUs are SIMULATED (CI has none): the GPU node advertises `NVIDIA-GPU=GPU-sim-0` as a Swarm
generic resource through `node-generic-resources` in its daemon.json (the documented way),
and has a character device 1:3 (what /dev/null is) named nvidia0 under its `devices_root`,
as tests/integration/test_gpu_allocation.py simulates GPUs.

    def test_x(swarm):                     # session-scoped, see the fixture at the end
        swarm.manager.client.services.create(...)
        swarm.node("spark").client.images.pull(...)
"""

from __future__ import annotations

import contextlib
import io
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import docker
import pytest

from hubstack.config import PlatformConfig
from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import push_image
from hubstack.registry import (
    PULL,
    PUSH,
    RegistryClient,
    auth_config,
    registry_certificate,
    registry_container_spec,
)
from tests.conftest import SESSION_ID, config_data, free_port, write_config
from tests.integration.hubstack_e2e import REPO

GPU_RESOURCE = "NVIDIA-GPU"
"""The generic resource kind GPU nodes advertise (NVIDIA's documented name)."""
LABEL_GPU = "hubstack.gpu"
LABEL_SPARK = "hubstack.spark"


@dataclass
class SwarmNode:
    name: str
    """Its host name, as `docker node ls` shows it."""
    address: str
    """Its one address on the nodes' segment (the swarm's advertise address)."""
    root: Path
    """data/, exec/, docker.sock, log, etc-docker/ (its /etc/docker), dev/ (simulated GPUs)."""
    labels: dict[str, str]
    generic_resources: list[str]
    client: docker.DockerClient
    process: subprocess.Popen
    node_id: str = ""
    netns: str = ""
    """Its network namespace (/run/netns/NETNS): `ip netns exec NETNS CMD` runs CMD as on the
    node, its loopback being the node's."""

    @property
    def etc_docker(self) -> Path:
        """What the node's engine sees as /etc/docker."""
        return self.root / "etc-docker"

    @property
    def devices_root(self) -> Path:
        return self.root / "dev"

    @property
    def socket(self) -> str:
        return f"unix://{self.root / 'docker.sock'}"

    def install_ca(self, registry_address: str, ca_file: Path) -> Path:
        """The CA at /etc/docker/certs.d/ADDRESS/ca.crt as this node's engine sees it (read at
        each pull: no restart)."""
        target = self.etc_docker / "certs.d" / registry_address / "ca.crt"
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copyfile(ca_file, target)
        return target

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return (self.root / "log").read_text(errors="replace")[-chars:]
        except OSError:
            return ""


@dataclass
class Swarm:
    host_address: str
    """The host's address on the nodes' segment: what the host engine publishes for nodes."""
    top: Path
    """The folder every node's root is in."""
    prefix: str
    """What this session's namespaces and links are named with."""
    switch: str
    """The namespace holding the segment's bridge (br0)."""
    nodes: list[SwarmNode] = field(default_factory=list)
    namespaces: list[str] = field(default_factory=list)
    _made: int = 0

    @property
    def manager(self) -> SwarmNode:
        return self.nodes[0]

    def node(self, name: str) -> SwarmNode:
        for n in self.nodes:
            if n.name == name:
                return n
        raise KeyError(name)

    def start_node(self, name: str, labels: dict[str, str], resources: list[str]) -> SwarmNode:
        """A new engine on the segment (not in the swarm yet), added to `nodes`."""
        self._made += 1
        n = self._made
        netns, root = f"{self.prefix}n{n}", self.top / name
        (root / "etc-docker").mkdir(parents=True)
        address = f"{self.host_address.rsplit('.', 1)[0]}.{10 + n}"
        _run("ip", "netns", "add", netns)
        self.namespaces.append(netns)
        _run(
            *("ip", "-n", self.switch, "link", "add", f"p{n}", "type", "veth"),
            *("peer", "name", "eth0", "netns", netns),
        )
        _run("ip", "-n", self.switch, "link", "set", f"p{n}", "master", "br0", "up")
        _run("ip", "-n", netns, "addr", "add", f"{address}/24", "dev", "eth0")
        _run("ip", "-n", netns, "link", "set", "eth0", "up")
        _run("ip", "-n", netns, "link", "set", "lo", "up")
        _run("ip", "-n", netns, "route", "add", "default", "via", self.host_address)
        # As docs/multi-node.md sets up a node: Swarm services cannot ask for
        # no-new-privileges (the 1.41 service spec has no such field), so the engine
        # gives it to every container.
        daemon: dict = {"no-new-privileges": True}
        if resources:
            daemon["node-generic-resources"] = resources
        (root / "etc-docker" / "daemon.json").write_text(json.dumps(daemon))
        if any(r.startswith(f"{GPU_RESOURCE}=") for r in resources):
            _sim_gpu(root / "dev")
        proc = _start_engine(root, netns, name)
        node = SwarmNode(name, address, root, labels, resources, None, proc, netns=netns)  # type: ignore[arg-type]
        self.nodes.append(node)
        node.client = _client(root, proc)
        return node

    def stop_node(self, node: SwarmNode) -> None:
        """Stop NODE's engine and remove its namespace and folder (not its swarm entry)."""
        if node.client is not None:
            node.client.close()
        node.process.terminate()
        try:
            node.process.wait(60)
        except subprocess.TimeoutExpired:
            node.process.kill()
            node.process.wait()
        self.nodes.remove(node)
        with open("/proc/mounts") as mounts:
            inside = [m.split()[1] for m in mounts if m.split()[1].startswith(f"{node.root}/")]
        for mountpoint in sorted(inside, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        # Its namespace goes in swarm_cluster's teardown, with the switch's links.
        shutil.rmtree(node.root, ignore_errors=True)

    @contextlib.contextmanager
    def extra_node(self, name: str) -> Iterator[SwarmNode]:
        """A further engine on the segment for one test, to join the swarm as the test
        wants; afterwards it leaves, the manager forgets it, and its engine is stopped."""
        node = self.start_node(name, {}, [])
        try:
            yield node
        finally:
            with contextlib.suppress(docker.errors.APIError):
                node.client.swarm.leave(force=True)
            for entry in self.manager.client.nodes.list(filters={"name": name}):
                with contextlib.suppress(docker.errors.APIError):
                    entry.remove(force=True)
            self.stop_node(node)


def _run(*cmd: str) -> None:
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError(f"{' '.join(cmd)}: {proc.stderr.strip()}")


def _sim_gpu(devices_root: Path) -> None:
    devices_root.mkdir(parents=True, exist_ok=True)
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm"):
        os.mknod(devices_root / name, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(devices_root / name, 0o666)


def _start_engine(node_root: Path, netns: str, hostname: str) -> subprocess.Popen:
    """dockerd in NETNS, with node_root/etc-docker as its /etc/docker, in a mount and UTS
    namespace of its own (both die with it)."""
    # The host engine made /etc/docker (key.json); on a machine without it, the mount point.
    Path("/etc/docker").mkdir(exist_ok=True)
    # Its own resolv.conf too, naming a resolver that is not there: the host's is not
    # reachable from the node's segment, and each pull of a Docker Hub name (`registry:2`,
    # which Swarm tries before it runs the engine's own copy) waited 20 s for its timeout.
    resolv = node_root / "resolv.conf"
    resolv.write_text("nameserver 127.0.0.1\n")
    script = (
        'hostname "$1" && mount --bind "$2" /etc/docker && mount --bind "$3" /etc/resolv.conf'
        ' && shift 3 && exec dockerd "$@"'
    )
    cmd = ["unshare", "--mount", "--uts", "--propagation", "private"]
    cmd += ["nsenter", f"--net=/run/netns/{netns}", "sh", "-c", script, "sh"]
    cmd += [hostname, str(node_root / "etc-docker"), str(resolv)]
    cmd += ["--data-root", str(node_root / "data"), "--exec-root", str(node_root / "exec")]
    cmd += ["--pidfile", str(node_root / "pid"), "-H", f"unix://{node_root / 'docker.sock'}"]
    # Its containers' cgroups apart from the host engine's /docker/...
    cmd += ["--cgroup-parent", f"/{netns}"]
    log = open(node_root / "log", "wb")
    try:
        return subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT)
    finally:
        log.close()


def _client(node_root: Path, proc: subprocess.Popen, timeout: float = 60) -> docker.DockerClient:
    deadline = time.monotonic() + timeout
    while True:
        try:
            # Made inside the loop: the client asks the engine its API version when created.
            return docker.DockerClient(base_url=f"unix://{node_root / 'docker.sock'}", timeout=300)
        except docker.errors.DockerException:
            if time.monotonic() > deadline or proc.poll() is not None:
                log = (node_root / "log").read_text(errors="replace")[-2000:]
                raise RuntimeError(f"node engine in {node_root} did not start:\n{log}") from None
            time.sleep(0.3)


def _free_segment(seed: int) -> str:
    """A /24 of the benchmarking range 198.19.0.0/16 that no route of the host uses yet
    (another session's swarm), starting from SEED."""
    routes = subprocess.run(["ip", "-4", "route"], capture_output=True, text=True).stdout
    for i in range(250):
        net = f"198.19.{(seed + i) % 250 + 1}"
        if f"{net}.0/24" not in routes:
            return net
    raise RuntimeError("no free 198.19.X.0/24 segment for the swarm's nodes")


@contextlib.contextmanager
def swarm_cluster(
    specs: list[tuple[str, dict[str, str], list[str]]], managers: int = 1, tag: str = "w"
) -> Iterator[Swarm]:
    """Nodes (name, node labels, generic resources) joined into one swarm, the first
    MANAGERS of them managers (the first one made it; managers run tasks too, by default),
    the others workers. TAG (one letter) names its namespaces and links apart from another
    swarm of the same session. Everything made here (namespaces, links, engines, their
    data) is removed afterwards, even after a failure."""
    prefix = f"hs{tag}{SESSION_ID}"  # 11 characters: interface names may have 15
    net = _free_segment(int(SESSION_ID, 16))
    host_link, uplink = f"{prefix}h", f"{prefix}u"
    top = Path(tempfile.mkdtemp(prefix="hs-swarm-"))  # short: unix socket paths are too
    swarm = Swarm(host_address=f"{net}.1", top=top, prefix=prefix, switch=f"{prefix}sw")
    switch = swarm.switch
    try:
        _run("ip", "netns", "add", switch)
        swarm.namespaces.append(switch)
        _run("ip", "-n", switch, "link", "add", "br0", "type", "bridge")
        _run("ip", "-n", switch, "link", "set", "br0", "up")
        _run("ip", "link", "add", host_link, "type", "veth", "peer", "name", uplink)
        _run("ip", "link", "set", uplink, "netns", switch)
        _run("ip", "-n", switch, "link", "set", uplink, "master", "br0", "up")
        _run("ip", "addr", "add", f"{swarm.host_address}/24", "dev", host_link)
        _run("ip", "link", "set", host_link, "up")
        for name, labels, resources in specs:
            swarm.start_node(name, labels, resources)
        manager = swarm.manager
        manager.client.swarm.init(advertise_addr=manager.address, listen_addr=manager.address)
        tokens = manager.client.swarm.attrs["JoinTokens"]
        for i, node in enumerate(swarm.nodes[1:], start=1):
            node.client.swarm.join(
                remote_addrs=[f"{manager.address}:2377"],
                join_token=tokens["Manager" if i < managers else "Worker"],
                advertise_addr=node.address,
                listen_addr=node.address,
            )
        for node in swarm.nodes:
            node.node_id = node.client.info()["Swarm"]["NodeID"]
            found = manager.client.nodes.get(node.node_id)
            spec = dict(found.attrs["Spec"])
            spec["Labels"] = {**spec.get("Labels", {}), **node.labels}
            found.update(spec)
        _wait_ready(swarm)
        yield swarm
    finally:
        for node in reversed(list(swarm.nodes)):
            swarm.stop_node(node)
        for netns in reversed(swarm.namespaces):
            subprocess.run(["ip", "netns", "del", netns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_link], capture_output=True)
        shutil.rmtree(top, ignore_errors=True)


def wait_until(what: str, check, timeout: float = 120):
    """CHECK's first true answer, asked every half second; an AssertionError naming WHAT
    after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        found = check()
        if found:
            return found
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout:.0f}s")
        time.sleep(0.5)


def running_tasks(api: docker.APIClient, service: str) -> list[dict]:
    """SERVICE's tasks that are running, and meant to be."""
    return [
        t
        for t in api.tasks(filters={"service": service, "desired-state": "running"})
        if t["Status"]["State"] == "running"
    ]


def on_manager(node, config, *args: str, timeout: int = 600) -> subprocess.CompletedProcess:
    """The real CLI as on the manager NODE: in its network namespace, DOCKER_HOST its engine."""
    env = dict(os.environ, PYTHONPATH=str(REPO), DOCKER_HOST=node.socket)
    env.pop("COMPOSE_PROJECT_NAME", None)
    cmd = ["ip", "netns", "exec", node.netns, sys.executable, "-m", "hubstack", "-c", str(config)]
    return subprocess.run(
        [*cmd, *args], cwd=REPO, env=env, text=True, capture_output=True, timeout=timeout
    )


def _wait_ready(swarm: Swarm, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while True:
        states = {
            n.attrs["Description"]["Hostname"]: n.attrs["Status"]["State"]
            for n in swarm.manager.client.nodes.list()
        }
        if len(states) == len(swarm.nodes) and set(states.values()) == {"ready"}:
            return
        if time.monotonic() > deadline:
            raise RuntimeError(f"swarm nodes not ready after {timeout:.0f}s: {states}")
        time.sleep(0.5)


# The nodes every swarm test gets: a manager with one (simulated) GPU, and a Spark worker.
GPU_NODE = ("gpu", {LABEL_GPU: "true"}, [f"{GPU_RESOURCE}=GPU-sim-0"])
SPARK_NODE = ("spark", {LABEL_SPARK: "true"}, [])


@pytest.fixture(scope="session")
def swarm() -> Iterator[Swarm]:
    """Two real engines in one swarm: `gpu` (manager; hubstack.gpu=true; one simulated GPU
    as the generic resource NVIDIA-GPU) and `spark` (worker; hubstack.spark=true)."""
    started = time.monotonic()
    with swarm_cluster([GPU_NODE, SPARK_NODE]) as cluster:
        print(f"[swarm] {len(cluster.nodes)} nodes ready in {time.monotonic() - started:.1f}s")
        yield cluster


@dataclass
class SwarmRegistry:
    """The platform registry as nodes see it: the push instance on the host's loopback (the
    host engine pushes there over plain HTTP, as on one machine), and the read-only instance
    on the nodes' segment, over TLS with a certificate from the platform CA (installed on
    every node under /etc/docker/certs.d/ADDRESS/ca.crt), with the pull-only account."""

    cfg: PlatformConfig
    ca_file: Path
    pull_auth: dict[str, str]
    """The pull-only account, as docker-py's pull(auth_config=...) takes it."""
    image: str
    """A tiny image (the base root plus a label) at the pull address: what nodes pull."""

    @property
    def pull_address(self) -> str:
        return self.cfg.registry.pull_address


TINY_IMAGE = "swarm-tiny"


@contextlib.contextmanager
def nodes_registry(
    swarm: Swarm, docker_client: docker.DockerClient, state: Path, namespace: str
) -> Iterator[PlatformConfig]:
    """The platform registry on the host engine, as the swarm's nodes see it: push on
    127.0.0.1, the read-only instance on the nodes' segment over TLS from the platform CA,
    which every node trusts (certs.d). Yields the platform config (state in STATE); the
    registry's containers and volume are removed afterwards."""
    cfg = write_config(
        state / "hubstack.yaml",
        config_data(
            state,
            free_port(),
            registry={"pull_address": f"{swarm.host_address}:{free_port()}"},
            images={"namespace": namespace},
        ),
    )
    bootstrap(cfg, docker_client)
    volume = f"hubstack-test-swarm-registry-{SESSION_ID}"
    certificate = registry_certificate(cfg, PULL)
    containers = []
    try:
        containers.append(
            docker_client.containers.run(
                **registry_container_spec(cfg, name=volume, volume=volume, role=PUSH)
            )
        )
        containers.append(
            docker_client.containers.run(
                **registry_container_spec(
                    cfg, name=f"{volume}-pull", volume=volume, role=PULL, certificate=certificate
                )
            )
        )
        RegistryClient(cfg).wait_ready(60)
        for node in swarm.nodes:
            node.install_ca(cfg.registry.pull_address, cfg.tls_ca_cert_file)
        yield cfg
    finally:
        for container in containers:
            container.remove(force=True, v=True)
        with contextlib.suppress(docker.errors.NotFound):
            docker_client.volumes.get(volume).remove(force=True)


@pytest.fixture(scope="session")
def swarm_registry(swarm, docker_client, tmp_path_factory) -> Iterator[SwarmRegistry]:
    state = tmp_path_factory.mktemp("swarm-state")
    with nodes_registry(swarm, docker_client, state, f"hubtest-swarm-{SESSION_ID}") as cfg:
        tiny = cfg.image_ref(TINY_IMAGE)
        try:
            docker_client.images.build(
                fileobj=_tiny_dockerfile(cfg.base.image), tag=tiny, rm=True, pull=False
            )
            push_image(cfg, docker_client, TINY_IMAGE, progress=lambda _: None)
            yield SwarmRegistry(
                cfg=cfg,
                ca_file=cfg.tls_ca_cert_file,
                pull_auth=auth_config(cfg, PULL),
                image=f"{cfg.pull_repository(TINY_IMAGE)}:{cfg.images.tag}",
            )
        finally:
            with contextlib.suppress(docker.errors.ImageNotFound):
                docker_client.images.remove(tiny, noprune=False)


def _tiny_dockerfile(base: str) -> io.BytesIO:
    return io.BytesIO(f"FROM {base}\nLABEL io.hubstack.test=swarm-tiny\n".encode())

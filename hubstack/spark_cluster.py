"""Each Spark-profile analyst's own Spark cluster: a master and workers of their own.

Why not one shared cluster: Spark's standalone mode has a single `spark.authenticate` secret
for every application and runs every executor as the worker's UID, so one analyst's job
could read another's shuffle files, environment and work folder, or register a fake worker.
A cluster per analyst gives each what no shared cluster can:

- it runs the analyst's own image (the spark-executor image of the very version their
  server runs, so drivers and executors share one environment) as the analyst's UID:GID,
  with no capabilities, no-new-privileges and a pids limit, like their notebook;
- it is on the analyst's network only (hubstack.networks), with a secret of its own
  (RPC authentication and encryption), never published on a host port;
- its size is enforced by container limits (cores and memory), not trusted from the
  session, and a platform-wide cap (`spark.max_total_cores`) bounds all clusters at once;
- executors' work and shuffle folders are inside the analyst's own containers, 0700;
- the analyst's home is mounted in the workers too, so executors read and write it as the
  analyst, like the notebook does.

The spawner starts it beside the notebook container (in parallel) and removes it when the
server stops. Plain docker-py calls on a docker.DockerClient: the spawner runs them on its
thread pool, the tests call them directly.
"""

from __future__ import annotations

import secrets
import time
from dataclasses import dataclass, field

import docker.errors

from hubstack import spark
from hubstack.config import PlatformConfig
from hubstack.engine import PLATFORM_LABEL
from hubstack.hub import container_spec
from hubstack.spark import memory_mb

CLUSTER_LABEL = "io.hubstack.spark-cluster"
"""Value: the analyst's server container name, which the cluster belongs to."""
CORES_LABEL = "io.hubstack.spark-cores"
COMPONENT_KEY, _, COMPONENT_VALUE = spark.CLUSTER_LABEL.partition("=")
MASTER_MEMORY_MB = 768
"""The master's container: its JVM has SPARK_DAEMON_MEMORY (256m) of heap."""
WORK_DIR = "/tmp/spark/work"
LOCAL_DIR = "/tmp/spark/local"
READY_TIMEOUT_S = 180


class ClusterError(RuntimeError):
    """The analyst's cluster could not start; the message says why."""


@dataclass
class ClusterSpec:
    """One analyst's cluster: who, from which image, on which network."""

    server: str
    """The analyst's server container name: the cluster's containers are named after it."""
    user: str
    ident: dict
    """uid, gid, groups, home (as the spawner's identity)."""
    image: str
    """The spark-executor image, by digest, of the version the server runs."""
    network: str
    volumes: dict = field(default_factory=dict)
    """The notebook's bind mounts (the home): executors see the same files."""
    extra_labels: dict = field(default_factory=dict)

    def master_name(self) -> str:
        return spark.master_host(self.server)

    def worker_names(self, cfg: PlatformConfig) -> list[str]:
        return [f"{self.server}-spark-worker-{i}" for i in range(1, cfg.spark.workers + 1)]


def new_secret() -> str:
    return secrets.token_urlsafe(32)


def secret_files(ident: dict, secret: str, defaults: bytes | None = None) -> tuple[dict, dict]:
    """(files, dirs) for put_files: the analyst's spark-defaults.conf, theirs alone.
    DEFAULTS replaces the file's settings: only benchmarks/spark's baseline (a cluster as
    the old shared one ran, without authentication) passes it."""
    uid, gid = ident["uid"], ident["gid"]
    data = spark.auth_defaults(secret) if defaults is None else defaults
    files = {spark.DEFAULTS_FILE: container_spec.File(data, 0o400, uid, gid)}
    dirs = {
        "/etc/hubstack": container_spec.File(b"", 0o755),
        spark.CONF_DIR: container_spec.File(b"", 0o500, uid, gid),
    }
    return files, dirs


def cores_held(client, platform_network: str) -> int:
    """Spark cores all clusters of this platform hold now (their running workers' labels;
    clusters being started are counted by the spawner until their workers run)."""
    held = 0
    for c in client.api.containers(
        filters={"label": [CORES_LABEL, f"{PLATFORM_LABEL}={platform_network}"]}
    ):
        try:
            held += int((c.get("Labels") or {}).get(CORES_LABEL, "0"))
        except ValueError:
            continue
    return held


def service_cores_held(api, platform_network: str) -> int:
    """Swarm mode: Spark cores all clusters of this platform hold now (their worker
    services' labels, whichever node runs them)."""
    held = 0
    for service in api.services(
        filters={"label": [CORES_LABEL, f"{PLATFORM_LABEL}={platform_network}"]}
    ):
        try:
            held += int(service["Spec"].get("Labels", {}).get(CORES_LABEL, "0"))
        except ValueError:
            continue
    return held


def check_capacity(cfg: PlatformConfig, client, pending: int = 0, held: int | None = None) -> None:
    """Refuse a new cluster that would take the platform past spark.max_total_cores
    (PENDING: cores of clusters being started, whose containers may not exist yet; HELD:
    the cores running clusters hold, when not counted from CLIENT's containers)."""
    wanted = spark.cluster_cores(cfg)
    if held is None:
        held = cores_held(client, cfg.hub.network)
    held += pending
    cap = cfg.spark.max_total_cores
    if held + wanted > cap:
        raise ClusterError(
            f"the platform's Spark clusters hold {held} of {cap} cores (spark.max_total_cores) "
            f"and yours needs {wanted}: start the default profile, or try again when a Spark "
            "server has stopped"
        )


@dataclass(frozen=True)
class Role:
    """One daemon of the analyst's cluster as both paths start it (a container on one host,
    a service in swarm mode): what it runs and with which settings, labels and limits."""

    role: str
    """master or worker: the spark-executor entrypoint's command."""
    name: str
    """Its container's (or service's) name and host name."""
    env: dict[str, str]
    labels: dict[str, str]
    mem_mb: int
    cpus: float

    @property
    def worker(self) -> bool:
        return self.role == "worker"


def roles(cfg: PlatformConfig, spec: ClusterSpec) -> list[Role]:
    """The master, then each worker: the one description of the cluster's daemons."""
    s = cfg.spark
    named = [("master", spec.master_name())] + [("worker", n) for n in spec.worker_names(cfg)]
    out = []
    for role, name in named:
        env = {
            "SPARK_MASTER_HOST": spec.master_name(),
            "SPARK_MASTER_PORT": str(s.master_port),
            "SPARK_MASTER_WEBUI_PORT": "8080",
            "SPARK_MASTER_URL": spark.master_url(cfg, spec.server),
            "SPARK_WORKER_CORES": str(s.worker_cores),
            "SPARK_WORKER_MEMORY": f"{memory_mb(s.worker_memory)}m",
            "SPARK_WORKER_WEBUI_PORT": "8081",
            "SPARK_WORKER_DIR": WORK_DIR,
            "SPARK_LOCAL_DIRS": LOCAL_DIR,
            "SPARK_EXTRA_DEFAULTS": spark.DEFAULTS_FILE,
            "HOME": spec.ident["home"],
            "USER": spec.user,
        }
        labels = {
            COMPONENT_KEY: COMPONENT_VALUE,
            CLUSTER_LABEL: spec.server,
            container_spec.USER_LABEL: spec.user,
            PLATFORM_LABEL: cfg.hub.network,
            "io.hubstack.spark-role": role,
            **spec.extra_labels,
        }
        if role == "worker":
            labels[CORES_LABEL] = str(s.worker_cores)
            mem_mb = memory_mb(s.worker_memory) + memory_mb(s.worker_overhead)
            cpus = float(s.worker_cores)
        else:
            mem_mb, cpus = MASTER_MEMORY_MB, 1.0
        out.append(Role(role, name, env, labels, mem_mb, cpus))
    return out


def _container_kwargs(cfg: PlatformConfig, spec: ClusterSpec, role: Role) -> dict:
    host_config = container_spec.host_config(spec.ident)
    host_config.update(
        mem_limit=f"{role.mem_mb}m",
        nano_cpus=int(role.cpus * 1e9),
        network_mode=spec.network,
        binds=dict(spec.volumes) if role.worker else None,
    )
    return {
        "image": spec.image,
        "command": [role.role],
        "name": role.name,
        "hostname": role.name,
        "user": f"{spec.ident['uid']}:{spec.ident['gid']}",
        "environment": role.env,
        "labels": role.labels,
        "host_config": host_config,
    }


def start_cluster(
    cfg: PlatformConfig, client, spec: ClusterSpec, secret: str, defaults: bytes | None = None
) -> list[str]:
    """Create and start the master and workers, wait until every worker has registered;
    returns their container IDs. On failure nothing of the cluster is left."""
    ids: list[str] = []
    try:
        for role in roles(cfg, spec):
            # One left by a hub that died mid-stop: the same analyst's, its secret gone.
            _remove(client, role.name)
            kw = _container_kwargs(cfg, spec, role)
            kw["host_config"] = client.api.create_host_config(**kw["host_config"])
            cid = client.api.create_container(**kw)["Id"]
            ids.append(cid)
            files, dirs = secret_files(spec.ident, secret, defaults)
            files.update(
                container_spec.account_files(client.api, cid, spec.user, spec.ident, spec.image)
            )
            container_spec.put_files(client.api, cid, files, dirs)
            client.api.start(cid)
        wait_ready(_container_probe(client), ids[0], ids[1:])
        return ids
    except BaseException as e:
        for cid in ids:
            _remove(client, cid)
        if isinstance(e, ClusterError | docker.errors.APIError):
            raise ClusterError(f"your Spark cluster did not start: {e}") from None
        raise


READY_LINES = {
    "master": "I have been elected leader",
    "worker": "Successfully registered with master",
}
"""What a daemon logs once it is ready: the master elected, a worker registered with it."""


def wait_ready(probe, master: str, workers: list[str], timeout: float = READY_TIMEOUT_S) -> None:
    """Until the master is elected and every worker registered with it (their logs say so).
    PROBE(id) -> (logs, running, name): a container's on one host, a service's on a swarm."""
    deadline = time.monotonic() + timeout
    want = {master: READY_LINES["master"]} | {w: READY_LINES["worker"] for w in workers}
    while want:
        for cid, line in list(want.items()):
            logs, running, name = probe(cid)
            if line in logs:
                del want[cid]
            elif not running:
                tail = "\n".join(logs.strip().splitlines()[-5:])
                raise ClusterError(f"{name} exited: {tail}")
        if want and time.monotonic() > deadline:
            names = [probe(c)[2] for c in want]
            raise ClusterError(f"not ready within {timeout:.0f} s: {', '.join(names)}")
        if want:
            time.sleep(0.5)


def _container_probe(client):
    def probe(cid: str) -> tuple[str, bool, str]:
        info = client.api.inspect_container(cid)
        logs = client.api.logs(cid, stdout=True, stderr=True).decode(errors="replace")
        return logs, info["State"]["Running"], info["Name"].lstrip("/")

    return probe


def _remove(client, cid: str) -> None:
    try:
        client.api.remove_container(cid, force=True)
    except docker.errors.NotFound:
        pass


def stop_cluster(client, server: str) -> int:
    """Remove every container of the analyst's cluster; returns how many."""
    found = client.api.containers(all=True, filters={"label": f"{CLUSTER_LABEL}={server}"})
    for c in found:
        _remove(client, c["Id"])
    return len(found)


# --- swarm mode: the same daemons as services (hubstack.hub.service_spec.spark_requests) ---
def service_probe(api):
    """wait_ready's probe for a cluster service (by name): its logs through the manager,
    and whether its task is still starting or running."""

    def probe(name: str) -> tuple[str, bool, str]:
        try:
            chunks = api.service_logs(name, stdout=True, stderr=True)
            logs = b"".join(chunks).decode(errors="replace")
            tasks = api.tasks(filters={"service": name})
        except docker.errors.NotFound:
            return "", False, name
        states = {t["Status"]["State"] for t in tasks}
        return logs, bool(states & LIVE_TASK_STATES) or not tasks, name

    return probe


LIVE_TASK_STATES = {
    "new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting",
    "running",
}  # fmt: skip


def stop_services(api, server: str) -> int:
    """Remove every service of the analyst's cluster (swarm mode); returns how many."""
    found = api.services(filters={"label": f"{CLUSTER_LABEL}={server}"})
    for service in found:
        try:
            api.remove_service(service["ID"])
        except docker.errors.NotFound:
            pass
    return len(found)

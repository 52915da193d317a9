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


def check_capacity(cfg: PlatformConfig, client, pending: int = 0) -> None:
    """Refuse a new cluster that would take the platform past spark.max_total_cores
    (PENDING: cores of clusters being started, whose containers may not exist yet)."""
    wanted = spark.cluster_cores(cfg)
    held = cores_held(client, cfg.hub.network) + pending
    cap = cfg.spark.max_total_cores
    if held + wanted > cap:
        raise ClusterError(
            f"the platform's Spark clusters hold {held} of {cap} cores (spark.max_total_cores) "
            f"and yours needs {wanted}: start the default profile, or try again when a Spark "
            "server has stopped"
        )


def _container_kwargs(cfg: PlatformConfig, spec: ClusterSpec, role: str, name: str) -> dict:
    s = cfg.spark
    worker = role == "worker"
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
    if worker:
        labels[CORES_LABEL] = str(s.worker_cores)
        mem_mb = memory_mb(s.worker_memory) + memory_mb(s.worker_overhead)
        cpus = float(s.worker_cores)
    else:
        mem_mb, cpus = MASTER_MEMORY_MB, 1.0
    host_config = container_spec.host_config(spec.ident)
    host_config.update(
        mem_limit=f"{mem_mb}m",
        nano_cpus=int(cpus * 1e9),
        network_mode=spec.network,
        binds=dict(spec.volumes) if worker else None,
    )
    return {
        "image": spec.image,
        "command": [role],
        "name": name,
        "hostname": name,
        "user": f"{spec.ident['uid']}:{spec.ident['gid']}",
        "environment": env,
        "labels": labels,
        "host_config": host_config,
    }


def start_cluster(
    cfg: PlatformConfig, client, spec: ClusterSpec, secret: str, defaults: bytes | None = None
) -> list[str]:
    """Create and start the master and workers, wait until every worker has registered;
    returns their container IDs. On failure nothing of the cluster is left."""
    ids: list[str] = []
    try:
        roles = [("master", spec.master_name())] + [("worker", n) for n in spec.worker_names(cfg)]
        for role, name in roles:
            # One left by a hub that died mid-stop: the same analyst's, its secret gone.
            _remove(client, name)
            kw = _container_kwargs(cfg, spec, role, name)
            kw["host_config"] = client.api.create_host_config(**kw["host_config"])
            cid = client.api.create_container(**kw)["Id"]
            ids.append(cid)
            files, dirs = secret_files(spec.ident, secret, defaults)
            files.update(
                container_spec.account_files(client.api, cid, spec.user, spec.ident, spec.image)
            )
            container_spec.put_files(client.api, cid, files, dirs)
            client.api.start(cid)
        _wait_ready(client, ids[0], ids[1:])
        return ids
    except BaseException as e:
        for cid in ids:
            _remove(client, cid)
        if isinstance(e, ClusterError | docker.errors.APIError):
            raise ClusterError(f"your Spark cluster did not start: {e}") from None
        raise


def _wait_ready(client, master: str, workers: list[str]) -> None:
    """Until the master is elected and every worker registered with it (their logs say so)."""
    deadline = time.monotonic() + READY_TIMEOUT_S
    want = {master: "I have been elected leader"} | {
        w: "Successfully registered with master" for w in workers
    }
    while want:
        for cid, line in list(want.items()):
            info = client.api.inspect_container(cid)
            logs = client.api.logs(cid, stdout=True, stderr=True).decode(errors="replace")
            if line in logs:
                del want[cid]
            elif not info["State"]["Running"]:
                tail = "\n".join(logs.strip().splitlines()[-5:])
                raise ClusterError(f"{info['Name'].lstrip('/')} exited: {tail}")
        if want and time.monotonic() > deadline:
            names = [client.api.inspect_container(c)["Name"].lstrip("/") for c in want]
            raise ClusterError(f"not ready within {READY_TIMEOUT_S} s: {', '.join(names)}")
        if want:
            time.sleep(0.5)


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

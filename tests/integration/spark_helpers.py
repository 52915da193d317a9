"""An analyst's own Spark cluster on a real engine, and notebook-image drivers beside it.

The cluster is started by hubstack.spark_cluster.start_cluster on a network from
hubstack.networks, exactly as the spawner starts a Spark-profile analyst's. Drivers run in
containers of the notebook image on that network, configured as the spawner configures a
Spark-profile server: the environment from hubstack.spark.driver_environment, the startup
hook, the analyst's passwd entry and their cluster's secret file; they run their code
through IPython, as a kernel does (so the startup hook applies).
"""

from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field

import docker

from hubstack import networks, spark_cluster
from hubstack import spark as hs
from hubstack.config import PlatformConfig
from hubstack.hub import container_spec

PREFIX = "spktest"

# Run in a driver (a kernel): each executor's and the driver's Python, libraries and
# image identity (the notebook image's lock files, baked in at build), and a sum over
# 10^7 rows. Printed as one "RESULT {json}" line.
ENV_JOB = r"""
import glob, hashlib, json, time

def environment():
    import os, socket, sys
    import numpy, pandas, pyspark
    lock = hashlib.sha256()
    files = sorted(glob.glob("/usr/share/hubstack/lock/notebook/*"))
    for path in files:
        with open(path, "rb") as f:
            lock.update(f.read())
    return {
        "host": socket.gethostname(),
        "uid": os.getuid(),
        "python": sys.version,
        "prefix": sys.prefix,
        "interpreter": os.path.realpath(sys.executable),
        "pyspark": pyspark.__version__,
        "numpy": numpy.__version__,
        "pandas": pandas.__version__,
        "image": lock.hexdigest() if files else None,
    }

from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
# Wait (bounded) until both executors have registered, so the job spreads over them.
deadline = time.monotonic() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.monotonic() < deadline:
    time.sleep(0.5)
def slow_environment(_):
    time.sleep(0.3)
    return environment()
executors = sc.parallelize(range(16), 16).map(slow_environment).collect()
total = spark.range(10**7).selectExpr("sum(id)").first()[0]
print("RESULT " + json.dumps({
    "master": sc.master, "cores_max": sc.getConf().get("spark.cores.max"),
    "driver": environment(), "executors": executors, "sum": total,
}))
spark.stop()
"""


def cluster_config(cfg: PlatformConfig, **spark) -> PlatformConfig:
    """CFG with a platform name of its own (networks, labels), and small workers."""
    settings = {"workers": 2, "worker_cores": 1, "worker_memory": "1g"} | spark
    platform = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    return cfg.model_copy(
        update={
            "spark": cfg.spark.model_copy(update=settings),
            # The cluster runs the session's build: nothing is promoted to stable in the
            # session's registry (the stack's `up` does that for its own images).
            "hub": cfg.hub.model_copy(
                update={"network": platform, "notebook_image_tag": cfg.images.tag}
            ),
        }
    )


@dataclass
class AnalystCluster:
    """One analyst's network and Spark cluster; drivers are named after the server the
    cluster belongs to, as the spawner's notebook container is."""

    cfg: PlatformConfig
    client: docker.DockerClient
    user: str
    uid: int
    secret: str = field(default_factory=spark_cluster.new_secret)
    authenticated: bool = True
    """False: no spark.authenticate, no encryption (benchmarks/spark's baseline only)."""

    @property
    def ident(self) -> dict:
        return {"uid": self.uid, "gid": self.uid, "groups": [], "home": f"/home/{self.user}"}

    @property
    def server(self) -> str:
        return f"{self.cfg.hub.network}-nb-{self.user}"

    @property
    def network(self) -> str:
        return networks.network_name(self.cfg, self.user)

    def up(self) -> None:
        networks.ensure_network(self.cfg, self.client, self.user)
        spec = spark_cluster.ClusterSpec(
            server=self.server,
            user=self.user,
            ident=self.ident,
            image=self.cfg.image_ref(hs.EXECUTOR_IMAGE),
            network=self.network,
        )
        defaults = None if self.authenticated else b""
        spark_cluster.start_cluster(self.cfg, self.client, spec, self.secret, defaults)

    def down(self) -> None:
        spark_cluster.stop_cluster(self.client, self.server)
        for c in self.client.containers.list(all=True, filters={"name": self.server}):
            c.remove(force=True)
        networks.remove_network(self.cfg, self.client, self.user)

    def containers(self, role: str) -> list:
        return self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"{spark_cluster.CLUSTER_LABEL}={self.server}",
                    f"io.hubstack.spark-role={role}",
                ]
            },
        )


@dataclass
class Driver:
    container: object
    name: str

    def logs(self) -> str:
        return self.container.logs().decode(errors="replace")

    def wait(self, timeout: float = 300) -> tuple[int, str]:
        result = self.container.wait(timeout=timeout)
        return result["StatusCode"], self.logs()

    def results(self, timeout: float = 300) -> list[dict]:
        """Every "RESULT {json}" line the driver printed; it must have exited 0."""
        code, out = self.wait(timeout)
        lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
        assert code == 0 and lines, f"driver {self.name} exited {code}:\n{out[-4000:]}"
        return [json.loads(ln[len("RESULT ") :]) for ln in lines]

    def result(self, timeout: float = 300) -> dict:
        return self.results(timeout)[-1]

    def remove(self) -> None:
        try:
            self.container.remove(force=True)
        except docker.errors.NotFound:
            pass


def start_driver(
    cluster: AnalystCluster,
    image: str,
    script: str,
    command: list[str] | None = None,
    with_secret: bool = True,
) -> Driver:
    """A notebook-image container on the analyst's network, set up like their Spark-profile
    server, running SCRIPT (/tmp/job.py) through IPython, or COMMAND."""
    name = cluster.server
    for old in cluster.client.containers.list(all=True, filters={"name": f"^{name}$"}):
        old.remove(force=True)
    files = {p: container_spec.File(d) for p, d in hs.driver_files(cluster.cfg).items()}
    files["/tmp/job.py"] = container_spec.File(script.encode())
    dirs: dict = {}
    if with_secret and cluster.authenticated:
        secret, dirs = spark_cluster.secret_files(cluster.ident, cluster.secret)
        files |= secret
    container = cluster.client.containers.create(
        image,
        command=command or ["/opt/venv/bin/ipython", "--colors=NoColor", "/tmp/job.py"],
        entrypoint=[],
        name=name,
        hostname=name,
        user=f"{cluster.uid}:{cluster.uid}",
        environment=hs.driver_environment(cluster.cfg, name, cluster.user)
        | {"HOME": "/tmp", "USER": cluster.user},
        network=cluster.network,
        labels={"io.hubstack.test": PREFIX},
    )
    api = cluster.client.api
    files |= container_spec.account_files(api, container.id, cluster.user, cluster.ident)
    container_spec.put_files(api, container.id, files, dirs)
    container.start()
    return Driver(container, name)

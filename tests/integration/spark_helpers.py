"""A real Spark cluster from compose/spark.yaml and notebook-image drivers beside it.

Drivers run in containers of the notebook image on the cluster's network, configured
exactly as the spawner configures a Spark-profile server: the environment from
hubstack.spark.driver_environment and the files from hubstack.spark.driver_files, and
they run their code through IPython, as a kernel does (so the startup hook applies).
"""

from __future__ import annotations

import io
import json
import subprocess
import tarfile
import time
import urllib.request
import uuid
from dataclasses import dataclass, field
from pathlib import Path

import docker

from hubstack import spark as hs
from hubstack.config import PlatformConfig
from tests.integration.hubstack_e2e import free_port_range

SOURCE_ROOT = Path(__file__).resolve().parents[2]
COMPOSE_FILE = SOURCE_ROOT / "compose" / "spark.yaml"
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
    """CFG with its own network and free UI ports, and small workers for the suite."""
    settings = {
        "workers": 2,
        "worker_cores": 2,
        "worker_memory": "1g",
        "max_cores_per_app": 2,
    } | spark
    workers = settings["workers"]
    ports = free_port_range(workers + 1)
    settings |= {"master_ui_port": ports, "worker_ui_port": ports + 1}
    network = f"{PREFIX}-{uuid.uuid4().hex[:8]}"
    return cfg.model_copy(
        update={
            "spark": cfg.spark.model_copy(update=settings),
            # The cluster runs the session's build: nothing is promoted to stable in the
            # session's registry (the stack's `up` does that for its own images).
            "hub": cfg.hub.model_copy(
                update={
                    "network": network,
                    "host": "127.0.0.1",
                    "notebook_image_tag": cfg.images.tag,
                }
            ),
        }
    )


@dataclass
class SparkCluster:
    cfg: PlatformConfig
    client: docker.DockerClient
    env_file: Path
    project: str = field(default_factory=lambda: f"{PREFIX}-{uuid.uuid4().hex[:8]}")

    @property
    def network(self) -> str:
        return self.cfg.hub.network

    def compose(self, *args: str, timeout: int = 300) -> subprocess.CompletedProcess:
        cmd = [
            "docker",
            "compose",
            "-p",
            self.project,
            "-f",
            str(COMPOSE_FILE),
            "--env-file",
            str(self.env_file),
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
        if proc.returncode != 0:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{proc.stdout}\n{proc.stderr}")
        return proc

    def up(self) -> None:
        self.env_file.write_text("".join(f"{k}={v}\n" for k, v in hs.compose_env(self.cfg).items()))
        self.compose("up", "-d", "--wait")

    def down(self) -> None:
        self.compose("down", "-v", "--remove-orphans", "-t", "5")

    def containers(self, service: str) -> list:
        return self.client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={self.project}",
                    f"com.docker.compose.service={service}",
                ]
            },
        )

    def master_status(self) -> dict:
        url = f"http://127.0.0.1:{self.cfg.spark.master_ui_port}/json/"
        with urllib.request.urlopen(url, timeout=10) as r:
            return json.load(r)

    def wait_alive_workers(self, count: int, timeout: float = 120) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            try:
                status = self.master_status()
                if status.get("aliveworkers", 0) >= count:
                    return status
            except OSError:
                status = None
            if time.monotonic() > deadline:
                raise AssertionError(
                    f"master did not report {count} alive workers in {timeout}s: {status}"
                )
            time.sleep(2)


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size = len(data)
            info.mode = 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


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
    cluster: SparkCluster,
    image: str,
    script: str,
    user: str = "1000:100",
    command: list[str] | None = None,
) -> Driver:
    """A notebook-image container on the platform network, set up like a Spark-profile
    server, running SCRIPT (/tmp/job.py) through IPython, or COMMAND."""
    name = f"{cluster.project}-driver-{uuid.uuid4().hex[:6]}"
    files = hs.driver_files(cluster.cfg) | {"/tmp/job.py": script.encode()}
    container = cluster.client.containers.create(
        image,
        command=command or ["/opt/venv/bin/ipython", "--colors=NoColor", "/tmp/job.py"],
        entrypoint=[],
        name=name,
        hostname=name,
        user=user,
        environment=hs.driver_environment(cluster.cfg, name),
        network=cluster.network,
        labels={"io.hubstack.test": PREFIX},
    )
    container.put_archive("/", _tar(files))
    container.start()
    return Driver(container, name)

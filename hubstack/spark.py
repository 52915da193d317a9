"""Spark driver settings for notebooks, and the names of an analyst's own cluster.

Interface (the spawner and hubstack.spark_cluster call these):
- driver_environment(cfg, driver_host, user) -> env for a Spark-profile notebook container
- master_host(driver_host) / master_url(cfg, driver_host): the analyst's own master
- auth_defaults(secret) -> the spark-defaults.conf every container of the analyst holds

Why PYSPARK_SUBMIT_ARGS: pyspark starts its JVM through spark-submit and appends this
variable to the command line, so `SparkSession.builder.getOrCreate()` with no arguments
gets the master and the driver settings from the environment alone; nothing has to be
written into the notebook image. Anything an analyst sets on the builder
(`.master("local[*]")`, `.config(...)`) still wins, because pyspark applies the builder's
options on top of what spark-submit set.

The secret: Spark's standalone mode has one `spark.authenticate` secret per cluster, so
each analyst's cluster has its own, generated at each start. It is never in an environment
variable (those show in `docker inspect`): the spawner writes it into a file only the
analyst can read, `SPARK_CONF_DIR/spark-defaults.conf`, in the notebook and in each of
their Spark containers, which spark-submit and the daemons read.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hubstack.config import PlatformConfig

EXECUTOR_IMAGE = "spark-executor"
CLUSTER_LABEL = "io.hubstack.component=spark"
"""What every analyst's Spark container (master and workers) is labelled with."""
PYTHON = "/opt/venv/bin/python"
"""The interpreter every image of the hierarchy shares (driver and executors alike)."""
CONF_DIR = "/etc/hubstack/spark"
DRIVER_LOCAL_DIR = "/tmp"
"""The driver's scratch folder (block manager, broadcast files): one every UID may write.
A per-user image for the Spark profile is built FROM spark-executor, whose ENV points
SPARK_LOCAL_DIRS at /var/lib/spark/local (the executor user's, 0750): a driver running as
the analyst there could not start its block manager."""
"""SPARK_CONF_DIR of the analyst's notebook: their spark-defaults.conf (with the secret)."""
DEFAULTS_FILE = f"{CONF_DIR}/spark-defaults.conf"
UI_PORT = 4040
"""The driver's UI, served to its owner through their server (jupyter-server-proxy)."""

# Spark refuses executors below 450 MiB (1.5 x its 300 MiB reserved memory).
_MIN_EXECUTOR_MB = 450
_UNITS_MB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024, "": 1 / (1024 * 1024)}


def memory_mb(size: str) -> int:
    """'1g' / '512M' / '1.5G' -> MiB, as Spark wants whole numbers with a unit."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)", str(size).strip())
    if not m:
        raise ValueError(f"not a memory size: {size!r}")
    return int(float(m.group(1)) * _UNITS_MB[m.group(2).lower()])


def master_host(driver_host: str) -> str:
    """The analyst's master: a container named after their server, on their network."""
    return f"{driver_host}-spark-master"


def master_url(cfg: PlatformConfig, driver_host: str) -> str:
    return f"spark://{master_host(driver_host)}:{cfg.spark.master_port}"


def cluster_cores(cfg: PlatformConfig) -> int:
    """Cores of one analyst's cluster: what its containers' CPU limits allow, whatever a
    session asks for."""
    return cfg.spark.workers * cfg.spark.worker_cores


def auth_defaults(secret: str) -> bytes:
    """spark-defaults.conf of the analyst's driver and daemons: RPC authentication with the
    cluster's own secret, and RPC encryption (Spark's AES-based protocol)."""
    if not secret or any(c.isspace() for c in secret):
        raise ValueError("the Spark secret must be a non-empty word")
    return (
        "# Written by the hub at server start; readable by this analyst only.\n"
        "spark.authenticate true\n"
        f"spark.authenticate.secret {secret}\n"
        "spark.network.crypto.enabled true\n"
    ).encode()


def executor_memory_mb(cfg: PlatformConfig) -> int:
    """Memory of one executor: a worker's memory shared by its cores, so that every core
    of a worker can host an executor of a different application."""
    per_core = memory_mb(cfg.spark.worker_memory) // cfg.spark.worker_cores
    return max(per_core, _MIN_EXECUTOR_MB)


def driver_conf(cfg: PlatformConfig, driver_host: str, user: str) -> dict[str, str]:
    """Spark properties of a notebook driver on the analyst's own cluster (client mode)."""
    return {
        "spark.master": master_url(cfg, driver_host),
        # Executors connect back to the driver: the notebook container's name resolves on
        # the analyst's network; listen on every interface of the container.
        "spark.driver.host": driver_host,
        "spark.driver.bindAddress": "0.0.0.0",
        "spark.cores.max": str(cluster_cores(cfg)),
        "spark.executor.cores": "1",
        "spark.executor.memory": f"{executor_memory_mb(cfg)}m",
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
        # The UI's links must go through the analyst's server: /user/NAME/proxy/4040/.
        "spark.ui.proxyBase": f"/user/{user}/proxy/{UI_PORT}",
        "spark.ui.port": str(UI_PORT),
    }


def driver_environment(cfg: PlatformConfig, driver_host: str, user: str) -> dict[str, str]:
    """Environment that makes SparkSession.builder.getOrCreate() run on the analyst's
    cluster."""
    if not driver_host:
        raise ValueError("driver_host must be the notebook container's name on its network")
    conf = driver_conf(cfg, driver_host, user)
    master = conf.pop("spark.master")
    args = ["--master", master]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    args.append("pyspark-shell")  # what pyspark itself passes when the variable is unset
    return {
        "PYSPARK_SUBMIT_ARGS": shlex.join(args),
        "PYSPARK_PYTHON": PYTHON,
        "PYSPARK_DRIVER_PYTHON": PYTHON,
        "SPARK_CONF_DIR": CONF_DIR,
        "SPARK_LOCAL_DIRS": DRIVER_LOCAL_DIR,
        # For spark-submit from a terminal, and for code that wants to show where it runs.
        "MASTER": master,
        "SPARK_MASTER_URL": master,
    }


STARTUP_FILE = "/etc/ipython/startup/00-hubstack-spark.py"
"""IPython's system-wide startup folder: every kernel in the container runs it."""


def driver_files(cfg: PlatformConfig) -> dict[str, bytes]:
    """Files the spawner writes into a Spark-profile container before it starts (as it
    does /etc/passwd): the startup hook that makes an unreachable master fail within
    seconds with an error naming the master URL (see hubstack/spark_startup.py)."""
    return {STARTUP_FILE: (Path(__file__).parent / "spark_startup.py").read_bytes()}

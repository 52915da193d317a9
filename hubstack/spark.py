"""Spark driver settings for notebooks, and the cluster's compose settings.

Interface (the spawner and `hubstack up` call these):
- driver_environment(cfg, driver_host) -> env for a Spark-profile notebook container
- compose_env(cfg) -> variables the compose file reads for the Spark services

Why PYSPARK_SUBMIT_ARGS: pyspark starts its JVM through spark-submit and appends this
variable to the command line, so `SparkSession.builder.getOrCreate()` with no arguments
gets the master and the driver settings from the environment alone; nothing has to be
written into the notebook image or the container. Anything an analyst sets on the
builder (`.master("local[*]")`, `.config(...)`) still wins, because pyspark applies the
builder's options on top of what spark-submit set.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

from hubstack.config import PlatformConfig

MASTER_SERVICE = "spark-master"
"""The master's service name in compose/spark.yaml: its DNS name on the platform network."""
EXECUTOR_IMAGE = "spark-executor"
CLUSTER_LABEL = "io.hubstack.component=spark"
"""What compose/spark.yaml labels the cluster's containers (master and workers) with."""
PYTHON = "/opt/venv/bin/python"
"""The interpreter every image of the hierarchy shares (driver and executors alike)."""

# Spark refuses executors below 450 MiB (1.5 x its 300 MiB reserved memory).
_MIN_EXECUTOR_MB = 450
_UNITS_MB = {"k": 1 / 1024, "m": 1, "g": 1024, "t": 1024 * 1024, "": 1 / (1024 * 1024)}


def memory_mb(size: str) -> int:
    """'1g' / '512M' / '1.5G' -> MiB, as Spark wants whole numbers with a unit."""
    m = re.fullmatch(r"(\d+(?:\.\d+)?)([kKmMgGtT]?)", str(size).strip())
    if not m:
        raise ValueError(f"not a memory size: {size!r}")
    return int(float(m.group(1)) * _UNITS_MB[m.group(2).lower()])


def master_url(cfg: PlatformConfig) -> str:
    return f"spark://{MASTER_SERVICE}:{cfg.spark.master_port}"


def executor_memory_mb(cfg: PlatformConfig) -> int:
    """Memory of one executor: a worker's memory shared by its cores, so that every core
    of a worker can host an executor of a different application."""
    per_core = memory_mb(cfg.spark.worker_memory) // cfg.spark.worker_cores
    return max(per_core, _MIN_EXECUTOR_MB)


def driver_conf(cfg: PlatformConfig, driver_host: str) -> dict[str, str]:
    """Spark properties of a notebook driver on the cluster (client mode)."""
    return {
        "spark.master": master_url(cfg),
        # Executors connect back to the driver: the notebook container's name resolves on
        # the platform network; listen on every interface of the container.
        "spark.driver.host": driver_host,
        "spark.driver.bindAddress": "0.0.0.0",
        # One analyst's application never takes more than this from the cluster.
        "spark.cores.max": str(cfg.spark.max_cores_per_app),
        "spark.executor.cores": "1",
        "spark.executor.memory": f"{executor_memory_mb(cfg)}m",
        "spark.pyspark.python": PYTHON,
        "spark.pyspark.driver.python": PYTHON,
    }


def driver_environment(cfg: PlatformConfig, driver_host: str) -> dict[str, str]:
    """Environment that makes SparkSession.builder.getOrCreate() run on the cluster."""
    if not driver_host:
        raise ValueError(
            "driver_host must be the notebook container's name on the platform network"
        )
    conf = driver_conf(cfg, driver_host)
    args = ["--master", conf.pop("spark.master")]
    for key, value in conf.items():
        args += ["--conf", f"{key}={value}"]
    args.append("pyspark-shell")  # what pyspark itself passes when the variable is unset
    return {
        "PYSPARK_SUBMIT_ARGS": shlex.join(args),
        "PYSPARK_PYTHON": PYTHON,
        "PYSPARK_DRIVER_PYTHON": PYTHON,
        # For spark-submit from a terminal, and for code that wants to show where it runs.
        "MASTER": master_url(cfg),
        "SPARK_MASTER_URL": master_url(cfg),
    }


STARTUP_FILE = "/etc/ipython/startup/00-hubstack-spark.py"
"""IPython's system-wide startup folder: every kernel in the container runs it."""


def driver_files(cfg: PlatformConfig) -> dict[str, bytes]:
    """Files the spawner writes into a Spark-profile container before it starts (as it
    does /etc/passwd): the startup hook that makes an unreachable master fail within
    seconds with an error naming the master URL (see hubstack/spark_startup.py)."""
    return {STARTUP_FILE: (Path(__file__).parent / "spark_startup.py").read_bytes()}


def compose_env(cfg: PlatformConfig) -> dict[str, str]:
    """Variables for compose/spark.yaml (worker count, cores, memory, ports, image)."""
    s = cfg.spark
    return {
        # The executors run what analysts' drivers run: the tag notebooks start from.
        "SPARK_IMAGE": cfg.image_ref(EXECUTOR_IMAGE, cfg.hub.notebook_image_tag),
        "SPARK_WORKERS": str(s.workers),
        "SPARK_WORKER_CORES": str(s.worker_cores),
        "SPARK_WORKER_MEMORY": f"{memory_mb(s.worker_memory)}m",
        "SPARK_MAX_CORES_PER_APP": str(s.max_cores_per_app),
        "SPARK_MASTER_PORT": str(s.master_port),
        "SPARK_BIND_ADDRESS": cfg.hub.host,
        "SPARK_MASTER_UI_PORT": str(s.master_ui_port),
        "SPARK_WORKER_UI_PORT": str(s.worker_ui_port),
        # compose needs a range even for one worker (first-first).
        "SPARK_WORKER_UI_PORT_LAST": str(s.worker_ui_port + max(s.workers, 1) - 1),
        "HUBSTACK_NETWORK": cfg.hub.network,
    }

"""Spark benchmark: startup and a fixed job, on an analyst's own cluster and in local[*].

    python benchmarks/spark/run.py [--config hubstack.yaml] [--workers 2] [--worker-cores 1]

Starts a throw-away analyst cluster exactly as the spawner does (hubstack.spark_cluster on
a network from hubstack.networks: the analyst's UID, their secret, RPC encryption) from the
platform config's spark-executor image, timing how long the cluster takes to be ready, and
one driver container of the notebook image set up as the spawner sets up a Spark-profile
server. In that driver it measures, for the cluster and then for local[*] (the baseline
measured in the same run):
  - startup: SparkSession.builder.getOrCreate() until the first result comes back
    (spark.range(1000).count()), which includes executors registering;
  - sql job: sum over 10^7 rows grouped into 1000 keys;
  - python job: a Python map over 2*10^6 numbers in 8 partitions (Python workers).
Prints one table with each figure's ratio to local[*]; everything it started is removed.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hubstack.config import load_config  # noqa: E402
from tests.integration.spark_helpers import (  # noqa: E402
    AnalystCluster,
    cluster_config,
    start_driver,
)

JOB = r"""
import json, sys, time
from pyspark.sql import SparkSession

def measure(master):
    t0 = time.perf_counter()
    b = SparkSession.builder if master is None else SparkSession.builder.master(master)
    spark = b.getOrCreate()
    assert spark.range(1000).count() == 1000
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    frame = spark.range(10**7).selectExpr("id % 1000 as k", "id as v")
    rows = frame.groupBy("k").sum("v").collect()
    assert sum(r[1] for r in rows) == 10**7 * (10**7 - 1) // 2
    sql = time.perf_counter() - t1
    t2 = time.perf_counter()
    total = spark.sparkContext.parallelize(range(2 * 10**6), 8).map(lambda x: x * x % 7).sum()
    python = time.perf_counter() - t2
    where = spark.sparkContext.master
    spark.stop()
    return {"master": where, "startup_s": startup, "sql_job_s": sql, "python_job_s": python}

# One Python process (and so one JVM start) per mode: both figures include launching
# the driver's JVM.
print("RESULT " + json.dumps(measure(None if sys.argv[1] == "cluster" else "local[*]")))
"""


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-cores", type=int, default=1)
    ap.add_argument("--worker-memory", default="1g")
    args = ap.parse_args()

    cfg = cluster_config(
        load_config(args.config),
        workers=args.workers,
        worker_cores=args.worker_cores,
        worker_memory=args.worker_memory,
    )
    client = docker.from_env(timeout=600)
    modes = {}
    # The baseline first: a cluster as the old shared one ran (no authentication, no
    # encryption); then the analyst's cluster as the spawner starts it, and local[*].
    for name, authenticated, modes_run in (
        ("unauthenticated cluster (the old shared cluster's settings)", False, "cluster"),
        ("authenticated, encrypted cluster (as spawned)", True, "cluster && {py} local"),
    ):
        cluster = AnalystCluster(
            cfg, client, f"bench{os.getpid()}", 24999, authenticated=authenticated
        )
        driver = None
        try:
            t0 = time.perf_counter()
            cluster.up()
            ready_s = time.perf_counter() - t0
            py = "/opt/venv/bin/python /tmp/job.py"
            driver = start_driver(
                cluster,
                cfg.image_ref("notebook"),
                JOB,
                command=["sh", "-c", f"{py} " + modes_run.format(py=py)],
            )
            modes[name] = (ready_s, driver.results(timeout=900))
        finally:
            if driver is not None:
                driver.remove()
            cluster.down()

    print(
        f"Spark benchmark: {args.workers} workers x {args.worker_cores} core(s), "
        f"{args.worker_memory} each; host CPUs: {len(os.sched_getaffinity(0))}, "
        f"load average at the end: {os.getloadavg()[0]:.1f}"
    )
    for name, (ready_s, _) in modes.items():
        print(f"{name}: master + {args.workers} workers ready in {ready_s:.1f} s")
    baseline = next(iter(modes.values()))[1][0]
    results = [r for _, rs in modes.values() for r in rs]
    print(
        "| where | getOrCreate -> first result | sum over 10^7 rows, 1000 groups | Python map, "
        "2*10^6 numbers |"
    )
    print("| --- | --- | --- | --- |")
    keys = ("startup_s", "sql_job_s", "python_job_s")
    labels = [*modes, "local[*]"]
    for label, r in zip(labels, results, strict=True):
        cells = [f"{r[k]:.1f} s ({r[k] / baseline[k]:.2f}x)" for k in keys]
        print(f"| {label} | " + " | ".join(cells) + " |")
    print("(ratios: to the unauthenticated cluster, measured in the same run)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

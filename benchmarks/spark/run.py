"""Spark benchmark: startup and a fixed job, on the cluster and in local[*], in one run.

    python benchmarks/spark/run.py [--config hubstack.yaml] [--workers 2] [--worker-cores 1]

Starts a throw-away cluster from compose/spark.yaml (project spkbench-*, its own network,
free UI ports) with the platform config's spark-executor image, and one driver container
of the notebook image configured by hubstack.spark.driver_environment, as the spawner
does. In that driver it measures, for the cluster and then for local[*]:
  - startup: SparkSession.builder.getOrCreate() until the first result comes back
    (spark.range(1000).count()), which includes executors registering;
  - sql job: sum over 10^7 rows grouped into 1000 keys;
  - python job: a Python map over 2*10^6 numbers in 8 partitions (Python workers).
Prints one table; everything it started is removed afterwards.
"""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hubstack.config import load_config  # noqa: E402
from tests.integration.spark_helpers import SparkCluster, cluster_config, start_driver  # noqa: E402

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
        max_cores_per_app=args.workers * args.worker_cores,
    )
    with tempfile.TemporaryDirectory() as tmp:
        cluster = SparkCluster(
            cfg,
            docker.from_env(timeout=600),
            Path(tmp) / "spark.env",
            project=f"spkbench-{os.getpid()}",
        )
        driver = None
        try:
            cluster.up()
            cluster.wait_alive_workers(args.workers)
            py = "/opt/venv/bin/python /tmp/job.py"
            driver = start_driver(
                cluster,
                cfg.image_ref("notebook"),
                JOB,
                command=["sh", "-c", f"{py} cluster && {py} local"],
            )
            results = driver.results(timeout=900)
        finally:
            if driver is not None:
                driver.remove()
            cluster.down()

    print(
        f"Spark benchmark: {args.workers} workers x {args.worker_cores} core(s), "
        f"{args.worker_memory} each; host CPUs: {len(os.sched_getaffinity(0))}, "
        f"load average at the end: {os.getloadavg()[0]:.1f}"
    )
    print(
        "| where | getOrCreate -> first result | sum over 10^7 rows, 1000 groups | Python map, "
        "2*10^6 numbers |"
    )
    print("| --- | --- | --- | --- |")
    for r in results:
        print(
            f"| {r['master']} | {r['startup_s']:.1f} s | {r['sql_job_s']:.1f} s | "
            f"{r['python_job_s']:.1f} s |"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

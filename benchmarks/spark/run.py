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
import io
import json
import socket
import subprocess
import sys
import tarfile
import tempfile
import uuid
from pathlib import Path

import docker

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))

from hubstack import spark as hs  # noqa: E402
from hubstack.config import load_config  # noqa: E402

JOB = r'''
import json, sys, time
from pyspark.sql import SparkSession

def measure(master):
    t0 = time.perf_counter()
    b = SparkSession.builder if master is None else SparkSession.builder.master(master)
    spark = b.getOrCreate()
    assert spark.range(1000).count() == 1000
    startup = time.perf_counter() - t0
    t1 = time.perf_counter()
    rows = spark.range(10**7).selectExpr("id % 1000 as k", "id as v").groupBy("k").sum("v").collect()
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
'''


def free_ports(count: int) -> int:
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            first = s.getsockname()[1]
        try:
            for p in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", p))
            return first
        except OSError:
            continue


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--config")
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--worker-cores", type=int, default=1)
    ap.add_argument("--worker-memory", default="1g")
    args = ap.parse_args()

    cfg = load_config(args.config)
    tag = uuid.uuid4().hex[:8]
    project = network = f"spkbench-{tag}"
    port = free_ports(args.workers + 1)
    cfg = cfg.model_copy(update={
        "spark": cfg.spark.model_copy(update={
            "workers": args.workers, "worker_cores": args.worker_cores, "worker_memory": args.worker_memory,
            "max_cores_per_app": args.workers * args.worker_cores,
            "master_ui_port": port, "worker_ui_port": port + 1,
        }),
        "hub": cfg.hub.model_copy(update={"network": network, "host": "127.0.0.1"}),
    })
    client = docker.from_env(timeout=600)
    with tempfile.TemporaryDirectory() as tmp:
        env_file = Path(tmp) / "spark.env"
        env_file.write_text("".join(f"{k}={v}\n" for k, v in hs.compose_env(cfg).items()))
        compose = ["docker", "compose", "-p", project, "-f", str(ROOT / "compose/spark.yaml"), "--env-file", str(env_file)]
        driver = None
        try:
            subprocess.run([*compose, "up", "-d", "--wait"], check=True, capture_output=True, timeout=300)
            name = f"{project}-driver"
            driver = client.containers.create(
                cfg.image_ref("notebook"), ["sh", "-c", "/opt/venv/bin/python /tmp/job.py cluster && /opt/venv/bin/python /tmp/job.py local"],
                entrypoint=[],
                name=name, hostname=name, user="1000:100", network=network,
                environment=hs.driver_environment(cfg, name),
            )
            buf = io.BytesIO()
            with tarfile.open(fileobj=buf, mode="w") as tar:
                info = tarfile.TarInfo("tmp/job.py")
                info.size = len(JOB.encode())
                tar.addfile(info, io.BytesIO(JOB.encode()))
            driver.put_archive("/", buf.getvalue())
            driver.start()
            code = driver.wait(timeout=900)["StatusCode"]
            out = driver.logs().decode(errors="replace")
            lines = [ln for ln in out.splitlines() if ln.startswith("RESULT ")]
            if code or not lines:
                print(out[-3000:], file=sys.stderr)
                return 1
            results = [json.loads(ln[7:]) for ln in lines]
        finally:
            if driver is not None:
                driver.remove(force=True)
            subprocess.run([*compose, "down", "-v", "-t", "5"], capture_output=True, timeout=300)

    print(f"Spark benchmark: {args.workers} workers x {args.worker_cores} core(s), "
          f"{args.worker_memory} each; host CPUs: {len(__import__('os').sched_getaffinity(0))}")
    print("| where | getOrCreate -> first result | sum over 10^7 rows, 1000 groups | Python map, 2*10^6 numbers |")
    print("| --- | --- | --- | --- |")
    for r in results:
        print(f"| {r['master']} | {r['startup_s']:.1f} s | {r['sql_job_s']:.1f} s | {r['python_job_s']:.1f} s |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

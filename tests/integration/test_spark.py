"""The Spark cluster on a real engine: compose/spark.yaml from the built hierarchy, and
notebook-image drivers configured by hubstack.spark exactly as the spawner does.

What an analyst would notice: a plain SparkSession.builder.getOrCreate() runs on the
cluster, every executor has the driver's Python, libraries and image; two analysts' jobs
both finish; a stopped master is an error naming it, not a hang; a lost worker does not
lose the job.
"""

from __future__ import annotations

import json
import time
import urllib.request

import pytest

from hubstack import spark as hs
from tests.integration.spark_helpers import ENV_JOB, SparkCluster, cluster_config, start_driver

pytestmark = [pytest.mark.integration, pytest.mark.slow]

KILL_JOB = r"""
import json, time
from pyspark.sql import SparkSession
spark = SparkSession.builder.getOrCreate()
sc = spark.sparkContext
deadline = time.monotonic() + 120
while sc._jsc.sc().getExecutorMemoryStatus().size() < 3 and time.monotonic() < deadline:
    time.sleep(0.5)
print("JOB START", flush=True)
def slow(x):
    time.sleep(1)
    return x
total = sc.parallelize(range(60), 60).map(slow).sum()
print("RESULT " + json.dumps({"sum": total}))
spark.stop()
"""

MASTER_DOWN_JOB = r"""
import json, time
from pyspark.sql import SparkSession
start = time.monotonic()
try:
    SparkSession.builder.getOrCreate()
    outcome = {"error": None}
except Exception as e:
    outcome = {"error": f"{type(e).__name__}: {e}"}
outcome["seconds"] = time.monotonic() - start
print("RESULT " + json.dumps(outcome))
"""


@pytest.fixture(scope="module")
def spark_cfg(platform_config):
    return cluster_config(platform_config)


@pytest.fixture(scope="module")
def cluster(spark_cfg, hierarchy, docker_client, tmp_path_factory):
    c = SparkCluster(spark_cfg, docker_client, tmp_path_factory.mktemp("spark") / "spark.env")
    try:
        c.up()
        c.wait_alive_workers(spark_cfg.spark.workers)
        yield c
    finally:
        c.down()


@pytest.fixture
def drivers():
    started = []
    yield started
    for d in started:
        d.remove()


def notebook_image(cfg) -> str:
    return cfg.image_ref("notebook")


def test_executor_image_is_the_notebook_image_plus_an_entrypoint(
    spark_cfg, hierarchy, docker_client
):
    notebook = docker_client.images.get(spark_cfg.image_ref("notebook"))
    executor = docker_client.images.get(spark_cfg.image_ref(hs.EXECUTOR_IMAGE))
    nb_layers = notebook.attrs["RootFS"]["Layers"]
    ex_layers = executor.attrs["RootFS"]["Layers"]
    # Same layers: the notebook image's layers are the executor's first layers.
    assert ex_layers[: len(nb_layers)] == nb_layers
    assert executor.attrs["Config"]["User"] == "185:185"


def test_cluster_ui_and_service_user(cluster):
    status = cluster.wait_alive_workers(cluster.cfg.spark.workers)
    assert status["status"] == "ALIVE"
    assert status["cores"] == cluster.cfg.spark.workers * cluster.cfg.spark.worker_cores
    # Each worker's UI answers on the documented host port range.
    first = cluster.cfg.spark.worker_ui_port
    seen = []
    for port in range(first, first + cluster.cfg.spark.workers):
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/json/", timeout=10) as r:
            seen.append(json.load(r)["masterurl"])
    assert seen == [hs.master_url(cluster.cfg)] * cluster.cfg.spark.workers
    # Master and workers run as the spark service user, never root.
    for c in cluster.containers("spark-master") + cluster.containers("spark-worker"):
        uids = c.exec_run(
            ["sh", "-c", "awk '/^Uid:/{print $2}' /proc/[0-9]*/status | sort -u"]
        ).output.split()
        assert uids == [b"185"], (c.name, uids)


def test_two_analysts_run_on_the_cluster_with_the_drivers_environment(cluster, drivers):
    image = notebook_image(cluster.cfg)
    drivers += [start_driver(cluster, image, ENV_JOB) for _ in range(2)]
    workers = {c.id[:12] for c in cluster.containers("spark-worker")}
    for d in drivers:
        r = d.result()
        assert r["master"] == hs.master_url(cluster.cfg)
        assert r["cores_max"] == str(cluster.cfg.spark.max_cores_per_app)
        assert r["sum"] == 10**7 * (10**7 - 1) // 2
        driver = r["driver"]
        assert driver["image"] is not None and driver["prefix"] == "/opt/venv"
        hosts = set()
        for ex in r["executors"]:
            hosts.add(ex.pop("host"))
            assert ex.pop("uid") == 185  # standalone executors run as the service user
            assert ex == {k: v for k, v in driver.items() if k not in ("host", "uid")}
        # The job spread over at least two workers, and ran on the cluster's workers.
        assert len(hosts) >= 2 and hosts <= workers, (hosts, workers)


def test_job_survives_a_worker_killed_mid_job(cluster, drivers):
    d = start_driver(cluster, notebook_image(cluster.cfg), KILL_JOB)
    drivers.append(d)

    deadline = time.monotonic() + 240
    while "JOB START" not in d.logs():
        assert d.container.reload() or d.container.status == "running", d.logs()[-3000:]
        assert time.monotonic() < deadline, d.logs()[-3000:]
        time.sleep(1)
    time.sleep(5)  # tasks are running on both executors now
    victim = cluster.containers("spark-worker")[-1]
    victim.kill()
    try:
        assert d.result()["sum"] == sum(range(60))
    finally:
        cluster.compose("up", "-d", "--wait")
        cluster.wait_alive_workers(cluster.cfg.spark.workers)


def test_stopped_master_is_a_clear_error_not_a_hang(cluster, drivers):
    cluster.compose("stop", "-t", "5", "spark-master")
    try:
        d = start_driver(cluster, notebook_image(cluster.cfg), MASTER_DOWN_JOB)
        drivers.append(d)
        r = d.result(timeout=180)  # a hang would fail here
        assert r["error"] is not None
        assert hs.master_url(cluster.cfg) in r["error"]
    finally:
        cluster.compose("up", "-d", "--wait")

"""Each analyst's own Spark cluster on a real engine (hubstack.spark_cluster, on networks
from hubstack.networks), with notebook-image drivers configured exactly as the spawner
configures them.

What an analyst would notice: a plain SparkSession.builder.getOrCreate() runs on their own
cluster, every executor has the driver's Python, libraries, image and UID; two analysts'
jobs both finish on their own clusters; nobody reaches another's cluster, and a session
without the cluster's secret is refused; a stopped master is an error naming it, not a
hang; a lost worker does not lose the job.
"""

from __future__ import annotations

import json
import threading
import time

import pytest

from hubstack import spark as hs
from hubstack import spark_cluster
from tests.integration.spark_helpers import ENV_JOB, AnalystCluster, cluster_config, start_driver

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
    time.sleep(0.5)
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


NO_SECRET_JOB = r"""
import json
from pyspark.sql import SparkSession
try:
    s = SparkSession.builder.getOrCreate()
    s.sparkContext.parallelize([1]).count()
    print("RESULT " + json.dumps({"error": None}))
except Exception as e:
    print("RESULT " + json.dumps({"error": f"{type(e).__name__}: {e}"[:2000]}))
"""

WORK_DIR_JOB = r"""
import json, os, stat, uuid
from pyspark.sql import SparkSession
sc = SparkSession.builder.getOrCreate().sparkContext
# Application ids are only unique per master (two masters can hand out the same id
# in the same second), so each executor leaves a marker unique to this run in its
# working folder, the app's folder under /tmp/spark/work.
marker = "probe-" + uuid.uuid4().hex
def look(_):
    open(marker, "w").close()
    st = os.stat("/tmp/spark/work")
    return {"uid": os.getuid(), "owner": st.st_uid, "mode": oct(stat.S_IMODE(st.st_mode)),
            "apps": sorted(os.listdir("/tmp/spark/work"))}
seen = sc.parallelize(range(4), 4).map(look).collect()
print("RESULT " + json.dumps({"app": sc.applicationId, "marker": marker, "seen": seen}))
"""


@pytest.fixture(scope="module")
def spark_cfg(platform_config):
    return cluster_config(platform_config)


@pytest.fixture(scope="module")
def clusters(spark_cfg, hierarchy, docker_client):
    """alice's and bob's own clusters, started at once as two spawns would."""
    made = {
        name: AnalystCluster(spark_cfg, docker_client, name, uid)
        for name, uid in (("alice", 24001), ("bob", 24002))
    }
    try:
        threads = [threading.Thread(target=c.up) for c in made.values()]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=300)
        yield made
    finally:
        for c in made.values():
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


def test_a_cluster_runs_as_its_analyst_locked_down_and_publishes_nothing(clusters):
    alice = clusters["alice"]
    containers = alice.containers("master") + alice.containers("worker")
    assert len(containers) == 1 + alice.cfg.spark.workers
    for c in containers:
        c.reload()
        hc = c.attrs["HostConfig"]
        assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
        ports = c.attrs["NetworkSettings"]["Ports"] or {}
        assert not hc.get("PortBindings") and not any(ports.values()), ports
        assert list(c.attrs["NetworkSettings"]["Networks"]) == [alice.network]
        # Every process of the master and workers runs as alice, never root nor 185.
        uids = c.exec_run(
            ["sh", "-c", "awk '/^Uid:/{print $2}' /proc/[0-9]*/status | sort -u"]
        ).output.split()
        assert uids == [str(alice.uid).encode()], (c.name, uids)
        # No secret in what `docker inspect` shows.
        assert alice.secret not in json.dumps(c.attrs)
    worker = alice.containers("worker")[0].attrs["HostConfig"]
    assert worker["NanoCpus"] == alice.cfg.spark.worker_cores * 10**9
    assert worker["Memory"] > 0


def test_two_analysts_run_on_their_own_clusters_with_the_drivers_environment(clusters, drivers):
    image = notebook_image(clusters["alice"].cfg)
    started = {name: start_driver(c, image, ENV_JOB) for name, c in clusters.items()}
    drivers += started.values()
    for name, d in started.items():
        cluster = clusters[name]
        workers = {c.name for c in cluster.containers("worker")}
        r = d.result()
        assert r["master"] == hs.master_url(cluster.cfg, cluster.server)
        assert r["sum"] == 10**7 * (10**7 - 1) // 2
        driver = r["driver"]
        assert driver["image"] is not None and driver["prefix"] == "/opt/venv"
        hosts = set()
        for ex in r["executors"]:
            hosts.add(ex.pop("host"))
            assert ex.pop("uid") == cluster.uid  # executors run as the analyst
            assert ex == {k: v for k, v in driver.items() if k not in ("host", "uid")}
        # The job spread over both workers, and ran on this analyst's workers only.
        assert len(hosts) >= 2 and hosts <= workers, (hosts, workers)


def test_executors_work_folders_are_the_analysts_alone(clusters, drivers):
    alice = clusters["alice"]
    d = start_driver(alice, notebook_image(alice.cfg), WORK_DIR_JOB)
    drivers.append(d)
    r = d.result()
    for seen in r["seen"]:
        assert seen["uid"] == seen["owner"] == alice.uid and seen["mode"] == "0o700"
        assert r["app"] in seen["apps"]

    # What alice's executors wrote is in alice's workers only, never in bob's.
    def markers(cluster):
        found = ""
        for w in cluster.containers("worker"):
            cmd = ["find", "/tmp/spark/work", "-name", r["marker"]]
            found += w.exec_run(cmd, user=str(cluster.uid)).output.decode()
        return found

    assert r["marker"] in markers(alice)
    assert r["marker"] not in markers(clusters["bob"])


def test_no_session_without_the_secret_nor_on_another_analysts_master(clusters, drivers):
    alice, bob = clusters["alice"], clusters["bob"]
    image = notebook_image(alice.cfg)
    # No secret file: alice's own master refuses the application.
    d = start_driver(alice, image, NO_SECRET_JOB, with_secret=False)
    drivers.append(d)
    r = d.result(timeout=240)
    assert r["error"] is not None
    assert hs.master_url(alice.cfg, alice.server) in r["error"]
    # bob's master: another network, so not even reachable (a forged master URL).
    forged = NO_SECRET_JOB.replace(
        "SparkSession.builder",
        f"SparkSession.builder.master({hs.master_url(bob.cfg, bob.server)!r})",
    )
    d = start_driver(alice, image, forged)
    drivers.append(d)
    r = d.result(timeout=240)
    assert r["error"] is not None and "not reachable" in r["error"], r


def test_job_survives_a_worker_killed_mid_job(clusters, drivers):
    alice = clusters["alice"]
    d = start_driver(alice, notebook_image(alice.cfg), KILL_JOB)
    drivers.append(d)

    deadline = time.monotonic() + 240
    while "JOB START" not in d.logs():
        assert d.container.reload() or d.container.status == "running", d.logs()[-3000:]
        assert time.monotonic() < deadline, d.logs()[-3000:]
        time.sleep(1)
    time.sleep(3)  # tasks are running on both executors now
    victim = alice.containers("worker")[-1]
    victim.kill()
    try:
        assert d.result()["sum"] == sum(range(60))
    finally:
        victim.start()


def test_stopped_master_is_a_clear_error_not_a_hang(clusters, drivers):
    alice = clusters["alice"]
    master = alice.containers("master")[0]
    master.stop(timeout=5)
    try:
        d = start_driver(alice, notebook_image(alice.cfg), MASTER_DOWN_JOB)
        drivers.append(d)
        r = d.result(timeout=180)  # a hang would fail here
        assert r["error"] is not None
        assert hs.master_url(alice.cfg, alice.server) in r["error"]
    finally:
        master.start()


def test_the_platforms_core_cap_counts_every_running_cluster(clusters, docker_client):
    """alice's and bob's clusters hold 2 x 1 core each: a third fits under a cap of 6, not
    under 5, and the refusal says why with the numbers (the spawner answers it with 409)."""
    cfg = clusters["alice"].cfg
    held = spark_cluster.cores_held(docker_client, cfg.hub.network)
    assert held == 2 * hs.cluster_cores(cfg)
    fits = cfg.model_copy(update={"spark": cfg.spark.model_copy(update={"max_total_cores": 6})})
    spark_cluster.check_capacity(fits, docker_client)
    full = cfg.model_copy(update={"spark": cfg.spark.model_copy(update={"max_total_cores": 5})})
    with pytest.raises(spark_cluster.ClusterError, match="hold 4 of 5 cores"):
        spark_cluster.check_capacity(full, docker_client)
    # A cluster being started (not yet running) counts too.
    with pytest.raises(spark_cluster.ClusterError):
        spark_cluster.check_capacity(fits, docker_client, pending=2)

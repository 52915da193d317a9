"""hubstack.spark and hubstack.spark_cluster: the driver settings, the secret file and the
cluster's containers, from the platform config."""

import shlex

import pytest

from hubstack import spark as hs
from hubstack import spark_cluster
from hubstack.config import ConfigError, parse_config


def submit_args(env):
    args = shlex.split(env["PYSPARK_SUBMIT_ARGS"])
    assert args[-1] == "pyspark-shell"  # pyspark needs it last, as it passes it itself
    confs = dict(a.split("=", 1) for a in args[args.index("--master") + 2 : -1] if a != "--conf")
    return args[args.index("--master") + 1], confs


def test_driver_environment_points_getorcreate_at_the_analysts_own_master():
    cfg = parse_config({"spark": {"master_port": 7177, "workers": 3, "worker_cores": 2}})
    env = hs.driver_environment(cfg, "hubstack-nb-alice", "alice")
    master, conf = submit_args(env)
    assert master == "spark://hubstack-nb-alice-spark-master:7177" == env["SPARK_MASTER_URL"]
    assert conf["spark.driver.host"] == "hubstack-nb-alice"
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert conf["spark.cores.max"] == "6"  # the cluster's own size: 3 workers x 2 cores
    # The driver's UI is its owner's, through their server.
    assert conf["spark.ui.proxyBase"] == "/user/alice/proxy/4040"
    assert env["PYSPARK_PYTHON"] == "/opt/venv/bin/python"
    # The secret is read from SPARK_CONF_DIR's file, never from the environment.
    assert env["SPARK_CONF_DIR"] == hs.CONF_DIR
    assert not any("secret" in (k + v).lower() for k, v in env.items())
    # Scratch where the analyst may write, whatever the image's ENV says (spark-executor's,
    # the parent of a Spark per-user image, names the executor user's folder).
    assert env["SPARK_LOCAL_DIRS"] == "/tmp"


def test_executor_memory_lets_every_core_of_a_worker_host_an_executor():
    cfg = parse_config({"spark": {"worker_cores": 2, "worker_memory": "2G"}})
    _, conf = submit_args(hs.driver_environment(cfg, "x", "a"))
    assert conf["spark.executor.memory"] == "1024m"
    # Never below what Spark accepts for an executor.
    cfg = parse_config({"spark": {"worker_cores": 4, "worker_memory": "1g"}})
    _, conf = submit_args(hs.driver_environment(cfg, "x", "a"))
    assert conf["spark.executor.memory"] == "450m"


def test_a_driver_host_is_required():
    with pytest.raises(ValueError, match="driver_host"):
        hs.driver_environment(parse_config({}), "", "a")


def test_the_secret_file_turns_on_authentication_and_encryption_for_the_analyst_only():
    files, dirs = spark_cluster.secret_files({"uid": 23001, "gid": 23002}, "s3cr3t")
    f = files[hs.DEFAULTS_FILE]
    assert (f.uid, f.gid, f.mode) == (23001, 23002, 0o400)
    assert dirs[hs.CONF_DIR].mode == 0o500 and dirs[hs.CONF_DIR].uid == 23001
    text = f.data.decode()
    for line in (
        "spark.authenticate true",
        "spark.authenticate.secret s3cr3t",
        "spark.network.crypto.enabled true",
    ):
        assert line in text.splitlines()
    with pytest.raises(ValueError):
        hs.auth_defaults("two words")
    assert spark_cluster.new_secret() != spark_cluster.new_secret()


def test_cluster_containers_run_as_the_analyst_limited_and_on_their_network():
    cfg = parse_config({"spark": {"workers": 2, "worker_cores": 2, "worker_memory": "1g"}})
    spec = spark_cluster.ClusterSpec(
        server="hubstack-nb-alice",
        user="alice",
        ident={"uid": 23001, "gid": 23001, "groups": [23500], "home": "/home/alice"},
        image="reg/hubstack/spark-executor@sha256:abc",
        network="hubstack-user-alice",
        volumes={"/srv/home/alice": {"bind": "/home/alice", "mode": "rw"}},
    )
    assert spec.worker_names(cfg) == [
        "hubstack-nb-alice-spark-worker-1",
        "hubstack-nb-alice-spark-worker-2",
    ]
    master_role, worker_role, _ = spark_cluster.roles(cfg, spec)
    assert (master_role.name, worker_role.name) == (spec.master_name(), spec.worker_names(cfg)[0])
    worker = spark_cluster._container_kwargs(cfg, spec, worker_role)
    master = spark_cluster._container_kwargs(cfg, spec, master_role)
    for kw in (worker, master):
        hc = kw["host_config"]
        assert kw["user"] == "23001:23001" and kw["image"] == spec.image
        assert hc["cap_drop"] == ["ALL"] and hc["security_opt"] == ["no-new-privileges"]
        assert hc["network_mode"] == "hubstack-user-alice" and "port_bindings" not in hc
        assert not any("secret" in (k + v).lower() for k, v in kw["environment"].items())
    assert worker["host_config"]["nano_cpus"] == 2 * 10**9
    assert worker["host_config"]["mem_limit"] == f"{1024 + 768}m"
    assert worker["labels"][spark_cluster.CORES_LABEL] == "2"
    assert worker["host_config"]["binds"] == spec.volumes  # executors see the home
    assert master["host_config"]["binds"] is None
    assert worker["environment"]["SPARK_MASTER_URL"] == (
        "spark://hubstack-nb-alice-spark-master:7077"
    )


def test_old_shared_cluster_keys_are_refused_with_the_reason():
    for key in ("master_ui_port", "worker_ui_port", "max_cores_per_app"):
        with pytest.raises(ConfigError, match=f"{key} is no longer a setting"):
            parse_config({"spark": {key: 1}})


def test_driver_files_are_the_startup_hook():
    files = hs.driver_files(parse_config({}))
    assert list(files) == ["/etc/ipython/startup/00-hubstack-spark.py"]
    compile(files[hs.STARTUP_FILE], hs.STARTUP_FILE, "exec")

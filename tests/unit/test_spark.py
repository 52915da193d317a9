"""hubstack.spark: the driver settings and the compose variables, from the platform config."""

import shlex

import pytest

from hubstack import spark as hs
from hubstack.config import parse_config


def submit_args(env):
    args = shlex.split(env["PYSPARK_SUBMIT_ARGS"])
    assert args[-1] == "pyspark-shell"  # pyspark needs it last, as it passes it itself
    confs = dict(a.split("=", 1) for a in args[args.index("--master") + 2 : -1] if a != "--conf")
    return args[args.index("--master") + 1], confs


def test_driver_environment_points_getorcreate_at_the_cluster():
    cfg = parse_config({"spark": {"master_port": 7177, "max_cores_per_app": 3}})
    env = hs.driver_environment(cfg, "jupyter-alice")
    master, conf = submit_args(env)
    assert master == "spark://spark-master:7177" == env["SPARK_MASTER_URL"]
    assert conf["spark.driver.host"] == "jupyter-alice"
    assert conf["spark.driver.bindAddress"] == "0.0.0.0"
    assert conf["spark.cores.max"] == "3"
    assert env["PYSPARK_PYTHON"] == "/opt/venv/bin/python"


def test_executor_memory_lets_every_core_of_a_worker_host_an_executor():
    cfg = parse_config({"spark": {"worker_cores": 2, "worker_memory": "2G"}})
    _, conf = submit_args(hs.driver_environment(cfg, "x"))
    assert conf["spark.executor.memory"] == "1024m"
    # Never below what Spark accepts for an executor.
    cfg = parse_config({"spark": {"worker_cores": 4, "worker_memory": "1g"}})
    _, conf = submit_args(hs.driver_environment(cfg, "x"))
    assert conf["spark.executor.memory"] == "450m"


def test_a_driver_host_is_required():
    with pytest.raises(ValueError, match="driver_host"):
        hs.driver_environment(parse_config({}), "")


def test_compose_env_from_the_config():
    cfg = parse_config(
        {
            "spark": {
                "workers": 3,
                "worker_cores": 2,
                "worker_memory": "1.5g",
                "worker_ui_port": 9081,
            },
            "hub": {"network": "plat"},
        }
    )
    env = hs.compose_env(cfg)
    assert env["SPARK_WORKERS"] == "3"
    assert env["SPARK_WORKER_MEMORY"] == "1536m"  # Spark wants a whole number
    assert (env["SPARK_WORKER_UI_PORT"], env["SPARK_WORKER_UI_PORT_LAST"]) == ("9081", "9083")
    # Executors run what notebooks start from (drivers and executors: one environment).
    assert env["SPARK_IMAGE"] == "127.0.0.1:5000/hubstack/spark-executor:stable"
    assert env["HUBSTACK_NETWORK"] == "plat"


def test_driver_files_are_the_startup_hook():
    files = hs.driver_files(parse_config({}))
    assert list(files) == ["/etc/ipython/startup/00-hubstack-spark.py"]
    compile(files[hs.STARTUP_FILE], hs.STARTUP_FILE, "exec")

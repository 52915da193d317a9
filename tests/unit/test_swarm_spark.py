"""An analyst's Spark cluster as Swarm services (hubstack.hub.service_spec.spark_requests,
the swarm spawner's Spark path): the single-host cluster's daemons (spark_cluster.roles)
carried over to services, checked field by field from the specs."""

from __future__ import annotations

import asyncio

import pytest

from hubstack import spark
from hubstack.config import parse_config
from hubstack.hub.container_spec import USER_LABEL
from hubstack.hub.service_spec import (
    ServiceRequest,
    service_spec,
    spark_files,
    spark_requests,
)
from hubstack.hub.swarm_spawner import gather_or_cancel, spark_refusal
from hubstack.spark_cluster import CLUSTER_LABEL, CORES_LABEL, ClusterSpec, roles

IDENT = {"uid": 23456, "gid": 23456, "groups": [23456, 30000], "home": "/home/alice"}
SERVER_IMAGE = "10.0.0.5:5001/hubstack/notebook@sha256:" + "a" * 64
EXECUTOR_IMAGE = "10.0.0.5:5001/hubstack/spark-executor@sha256:" + "b" * 64
CFG = parse_config({"cluster": {"mode": "swarm"}, "spark": {"workers": 2, "worker_cores": 2}})
HOME_MOUNT = {"Target": "/home/alice", "Source": "hs-home-alice", "Type": "volume"}


def cluster() -> list[dict]:
    spec = ClusterSpec(
        server="hs-nb-alice",
        user="alice",
        ident=IDENT,
        image=EXECUTOR_IMAGE,
        network="hs-user-alice",
    )
    secret, _hook = spark_files(CFG, "hs-nb", "alice", "s3cr3t")
    base = ServiceRequest(
        name="hs-nb-alice",
        image=SERVER_IMAGE,
        user_name="alice",
        profile_name="spark",
        ident=IDENT,
        command=["jupyterhub-singleuser"],
        env={"JUPYTERHUB_API_TOKEN": "not for the cluster"},
        labels={"io.hubstack.platform": "hs"},
        cpu_limit=4.0,
        mem_limit="8G",
        reservation_fraction=0.25,
        pids_limit=512,
        constraints=["node.labels.hubstack.spark==true", "node.id==n1"],
        networks=["hs-overlay"],
        mounts=[HOME_MOUNT],
        secrets=[("secret-id", secret)],
    )
    return [service_spec(r) for r in spark_requests(CFG, spec, base)]


def container(spec: dict) -> dict:
    return spec["task_template"]["ContainerSpec"]


def test_a_master_and_one_service_per_worker_named_as_on_one_host():
    master, *workers = cluster()
    assert master["name"] == "hs-nb-alice-spark-master" == spark.master_host("hs-nb-alice")
    assert [w["name"] for w in workers] == [
        "hs-nb-alice-spark-worker-1",
        "hs-nb-alice-spark-worker-2",
    ]
    for spec in (master, *workers):
        # Its host name is its service name: the master binds to it, others resolve it.
        assert container(spec)["Hostname"] == spec["name"]
        assert spec["mode"] == {"replicated": {"Replicas": 1}}
        assert spec["endpoint_spec"] == {"Mode": "dnsrr"}  # nothing published, no VIP
        assert spec["task_template"]["RestartPolicy"]["Condition"] == "none"
    # The image's entrypoint (tini, spark-entrypoint) runs with the role, as on one host.
    assert all(container(s).get("Command") is None for s in (master, *workers))
    assert [container(s)["Args"] for s in (master, *workers)] == [
        ["master"],
        ["worker"],
        ["worker"],
    ]


def test_the_cluster_runs_the_executor_image_as_the_analyst_locked_down():
    for spec in cluster():
        c = container(spec)
        assert c["Image"] == EXECUTOR_IMAGE
        assert c["User"] == "23456:23456" and c["Groups"] == ["23456", "30000"]
        assert c["CapabilityDrop"] == ["ALL"] and "CapabilityAdd" not in c
        assert not any("docker.sock" in str(m) for m in c.get("Mounts", []))
        assert c["Dir"] == "/tmp"
        # The server's environment (its hub token) is not the cluster's; no secret in it.
        assert "JUPYTERHUB_API_TOKEN" not in c["Env"]
        assert not any("s3cr3t" in e for e in c["Env"])
        assert f"SPARK_EXTRA_DEFAULTS={spark.DEFAULTS_FILE}" in c["Env"]


def test_the_secret_is_the_analysts_file_at_the_single_host_path():
    for spec in cluster():
        (ref,) = container(spec)["Secrets"]
        assert ref["SecretID"] == "secret-id"
        assert ref["File"] == {
            "Name": spark.DEFAULTS_FILE,
            "UID": "23456",
            "GID": "23456",
            "Mode": 0o400,
        }
    secret, hook = spark_files(CFG, "hs-nb", "alice", "s3cr3t")
    assert b"spark.authenticate.secret s3cr3t" in secret.data
    assert secret.name.startswith("hs-nb-alice-spark-") and secret.labels == {USER_LABEL: "alice"}
    assert hook.target == spark.STARTUP_FILE and hook.data == spark.driver_files(CFG)[hook.target]
    assert hook.name.startswith("hs-nb-alice-spark-hook-")


def test_limits_as_on_one_host_with_a_share_reserved():
    master, worker, _ = cluster()
    res = worker["task_template"]["Resources"]
    assert res["Limits"]["NanoCPUs"] == 2 * 10**9
    assert res["Limits"]["MemoryBytes"] == (1024 + 768) * 2**20
    assert res["Limits"]["Pids"] == 512
    assert res["Reservations"]["NanoCPUs"] == 5 * 10**8
    assert "GenericResources" not in res["Reservations"]
    assert master["task_template"]["Resources"]["Limits"]["MemoryBytes"] == 768 * 2**20


def test_only_on_spark_nodes_and_the_analysts_network_workers_mount_the_home():
    master, *workers = cluster()
    for spec in (master, *workers):
        task = spec["task_template"]
        assert task["Placement"]["Constraints"] == [
            "node.labels.hubstack.spark==true",
            "node.id==n1",
        ]
        # Their own network only: not the hub's overlay the server is on.
        assert task["Networks"] == [{"Target": "hs-user-alice"}]
    assert not container(master).get("Mounts")
    assert all(container(w)["Mounts"] == [HOME_MOUNT] for w in workers)


def test_labels_tie_each_service_to_the_analysts_server():
    master, *workers = cluster()
    for spec in (master, *workers):
        for labels in (spec["labels"], container(spec)["Labels"]):
            assert labels[CLUSTER_LABEL] == "hs-nb-alice"
            assert labels[USER_LABEL] == "alice"
            assert labels["io.hubstack.platform"] == CFG.hub.network
    assert all(w["labels"][CORES_LABEL] == "2" for w in workers)
    assert CORES_LABEL not in master["labels"]


def test_the_same_roles_as_the_single_host_cluster():
    spec = ClusterSpec("hs-nb-alice", "alice", IDENT, EXECUTOR_IMAGE, "hs-user-alice")
    by_name = {s["name"]: container(s) for s in cluster()}
    for role in roles(CFG, spec):
        env = dict(e.split("=", 1) for e in by_name[role.name]["Env"])
        assert env == role.env
        assert by_name[role.name]["Labels"].items() >= role.labels.items()


def test_a_refusal_names_the_daemon_what_it_reserves_and_where():
    profile = CFG.profile("spark")
    (req,) = [
        r
        for r in spark_requests(
            CFG,
            ClusterSpec("hs-nb-alice", "alice", IDENT, EXECUTOR_IMAGE, "hs-user-alice"),
            ServiceRequest(
                name="x",
                image=SERVER_IMAGE,
                user_name="alice",
                profile_name="spark",
                ident=IDENT,
                command=[],
                env={},
                constraints=["node.labels.hubstack.spark==true"],
            ),
        )
        if r.name.endswith("worker-1")
    ]
    message = spark_refusal(profile, req, "no suitable node (insufficient resources on 2 nodes)")
    assert message.startswith(f"the profile {profile.display_name!r} (spark) cannot start now")
    assert "hs-nb-alice-spark-worker-1" in message
    assert (
        "needs 0.5 CPU and 448 MiB reserved on a node with node.labels.hubstack.spark==true"
        in message
    )
    assert "no such node has that much CPU and memory unreserved" in message
    assert "insufficient resources on 2 nodes" in message


def test_a_failed_wait_cancels_the_others():
    """The server's and the cluster's waits run together; when one fails the others stop
    polling (the clean-up removes what they look at) and the failure is what is raised."""
    cancelled = []

    async def fails():
        await asyncio.sleep(0.01)
        raise RuntimeError("the cluster did not start")

    async def polls():
        try:
            await asyncio.sleep(10)
        except asyncio.CancelledError:
            cancelled.append(True)
            raise

    async def both():
        return await gather_or_cancel(polls(), fails())

    with pytest.raises(RuntimeError, match="the cluster did not start"):
        asyncio.run(both())
    assert cancelled == [True]
    assert asyncio.run(gather_or_cancel(asyncio.sleep(0, "a"), asyncio.sleep(0, "b"))) == ["a", "b"]

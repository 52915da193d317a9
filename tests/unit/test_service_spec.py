"""The notebook server as a Swarm service (hubstack.hub.service_spec): each field of the spec
the Swarm spawner sends, from the same container spec the single-host spawner uses."""

import asyncio
from types import SimpleNamespace

import pytest
from tornado import web

from hubstack.config import parse_config
from hubstack.hub.container_spec import PROFILE_LABEL, USER_LABEL
from hubstack.hub.service_spec import ServiceRequest, account_configs, service_spec
from hubstack.hub.swarm_spawner import HubstackSwarmSpawner, refusal_message

IDENT = {"uid": 23456, "gid": 23456, "groups": [23456, 30000], "home": "/home/alice"}
IMAGE = "10.0.0.5:5001/hubstack/notebook@sha256:" + "a" * 64
IMAGE_PASSWD = "root:x:0:0:root:/root:/bin/bash\nnobody:x:65534:65534::/nonexistent:/bin/sh\n"
IMAGE_GROUP = "root:x:0:\nusers:x:100:\n"


def request(**kw) -> ServiceRequest:
    cfg = parse_config({"profiles": [{"name": "gpu", "display_name": "GPU", "gpus": 1}]})
    accounts = account_configs("hs-nb", "alice", IDENT, IMAGE_PASSWD, IMAGE_GROUP)
    base = {
        "name": "hs-nb-alice",
        "image": IMAGE,
        "user_name": "alice",
        "profile_name": "gpu",
        "ident": IDENT,
        "command": ["jupyterhub-singleuser"],
        "env": {"JUPYTERHUB_USER": "alice", "HOME": "/home/alice"},
        "labels": {"io.hubstack.platform": "hs"},
        "cpu_limit": 2.0,
        "mem_limit": "4G",
        "reservation_fraction": 0.25,
        "pids_limit": 512,
        "constraints": cfg.placement_constraints(cfg.profile("gpu")),
        "networks": ["hs-overlay"],
        "accounts": [(f"id-{c.target}", c) for c in accounts],
    }
    base.update(kw)
    return ServiceRequest(**base)


def container(spec: dict) -> dict:
    return spec["task_template"]["ContainerSpec"]


def test_the_server_runs_as_the_analyst_with_no_capabilities_and_no_socket():
    c = container(service_spec(request()))
    assert c["User"] == "23456:23456"
    assert c["Groups"] == ["23456", "30000"]
    assert c["Dir"] == "/home/alice"
    assert c["CapabilityDrop"] == ["ALL"]
    assert "CapabilityAdd" not in c
    # No mounts at all: no Docker socket, nothing of the node's.
    assert "Mounts" not in c
    # An init reaps the server's children and passes the stop signal on.
    assert c["Init"] is True


def test_the_image_by_digest_the_command_and_the_environment():
    c = container(service_spec(request()))
    assert c["Image"] == IMAGE
    assert c["Command"] == ["jupyterhub-singleuser"]
    assert sorted(c["Env"]) == ["HOME=/home/alice", "JUPYTERHUB_USER=alice"]


def test_labels_name_the_analyst_and_profile_on_the_container_and_the_service():
    spec = service_spec(request())
    labels = container(spec)["Labels"]
    assert labels[USER_LABEL] == "alice" and labels[PROFILE_LABEL] == "gpu"
    assert labels["io.hubstack.platform"] == "hs"
    assert spec["labels"] == labels  # `docker service ls --filter label=...` finds it too
    assert spec["name"] == "hs-nb-alice"


def test_limits_and_a_share_of_them_reserved_with_the_pids_limit():
    res = service_spec(request())["task_template"]["Resources"]
    assert res["Limits"]["NanoCPUs"] == 2_000_000_000
    assert res["Limits"]["MemoryBytes"] == 4 * 1024**3
    assert res["Limits"]["Pids"] == 512
    assert res["Reservations"]["NanoCPUs"] == 500_000_000
    assert res["Reservations"]["MemoryBytes"] == 1024**3


def test_a_gpu_server_reserves_no_generic_resource():
    """swarmkit rejects a task holding a generic resource at every update of its node: the
    hub hands GPUs out itself (hubstack.hub.swarm_gpu), the spec reserves CPU and memory."""
    res = service_spec(request())["task_template"]["Resources"]
    assert "GenericResources" not in res["Reservations"]


def test_no_reservation_when_the_fraction_is_zero():
    res = service_spec(request(reservation_fraction=0))["task_template"]["Resources"]
    assert not res.get("Reservations", {}).get("NanoCPUs")
    assert not res.get("Reservations", {}).get("MemoryBytes")


def test_placement_comes_from_the_profiles_node_labels():
    task = service_spec(request())["task_template"]
    assert task["Placement"]["Constraints"] == ["node.labels.hubstack.gpu==true"]
    default = service_spec(request(constraints=[]))["task_template"]
    assert not default.get("Placement", {}).get("Constraints")


def test_one_replica_never_restarted_reached_by_name_on_its_networks():
    spec = service_spec(request())
    assert spec["mode"] == {"replicated": {"Replicas": 1}}
    assert spec["task_template"]["RestartPolicy"]["Condition"] == "none"
    assert spec["task_template"]["Networks"] == [{"Target": "hs-overlay"}]
    assert spec["endpoint_spec"] == {"Mode": "dnsrr"}
    assert "Ports" not in spec["endpoint_spec"]


def test_account_files_are_configs_mounted_at_etc_passwd_and_group():
    refs = container(service_spec(request()))["Configs"]
    assert [r["File"]["Name"] for r in refs] == ["/etc/passwd", "/etc/group"]
    assert all(r["File"]["UID"] == "0" and r["File"]["Mode"] == 0o444 for r in refs)
    assert refs[0]["ConfigID"] == "id-/etc/passwd"


def test_account_configs_hold_the_analyst_and_are_named_by_content():
    passwd, group = account_configs("hs-nb", "alice", IDENT, IMAGE_PASSWD, IMAGE_GROUP)
    assert "alice:x:23456:23456:alice:/home/alice:/bin/bash" in passwd.data.decode().splitlines()
    assert passwd.data.decode().startswith("root:x:0:0")
    assert "g30000:x:30000:alice" in group.data.decode().splitlines()
    assert passwd.name.startswith("hs-nb-alice-passwd-")
    assert group.name.startswith("hs-nb-alice-group-")
    assert passwd.labels == {USER_LABEL: "alice"}
    again = account_configs("hs-nb", "alice", IDENT, IMAGE_PASSWD, IMAGE_GROUP)
    assert again[0].name == passwd.name  # a restart reuses the config
    moved = account_configs("hs-nb", "alice", {**IDENT, "home": "/home/a2"}, IMAGE_PASSWD, "")
    assert moved[0].name != passwd.name  # configs cannot change: new content, new name


def test_a_refusal_names_the_profile_what_it_needs_and_why():
    profile = SimpleNamespace(name="gpu", display_name="GPU", gpus=1)
    err = "no suitable node (insufficient resources on 2 nodes)"
    message = refusal_message(profile, ["node.labels.hubstack.gpu==true", "node.id==n1"], err)
    assert message.startswith(
        "the profile 'GPU' (gpu) cannot start now: no node it may run on has the CPU and "
        "memory it reserves unreserved (it needs node.labels.hubstack.gpu==true and "
        "node.id==n1)"
    )
    assert err in message
    plain = SimpleNamespace(name="lab2", display_name="Lab 2", gpus=0)
    err = "no suitable node (scheduling constraints not satisfied on 2 nodes)"
    message = refusal_message(plain, ["node.labels.site.room==lab2"], err)
    assert "no available node has the labels it needs" in message


@pytest.mark.parametrize(
    ("nodes", "why"),
    [
        ([{"Spec": {"Labels": {"hubstack.gpu": "true"}}, "Status": {"State": "ready"}}],
         "no node is labelled hubstack.spark=true"),
        ([{"Spec": {"Labels": {"hubstack.spark": "true"}, "Availability": "drain"},
           "Status": {"State": "ready"}}],
         "the nodes labelled so are drained or down"),
    ],
)  # fmt: skip
def test_the_swarm_spawner_refuses_a_spark_profile_with_no_spark_node(monkeypatch, nodes, why):
    """A Spark cluster runs only on Spark-labelled nodes: with none usable the start is
    refused before any other work, naming the profile, the label and the remedy."""
    s = HubstackSwarmSpawner(platform=parse_config({"cluster": {"mode": "swarm"}}))
    monkeypatch.setattr(HubstackSwarmSpawner, "_client", SimpleNamespace(nodes=lambda: nodes))
    s.user = SimpleNamespace(name="alice", url="/user/alice/", groups=[])
    s.user_options = {"profile": "spark"}
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(s.start())
    assert refused.value.status_code == 409
    message = refused.value.log_message
    assert "(spark) needs a Spark cluster of your own on a Spark node" in message
    assert why in message

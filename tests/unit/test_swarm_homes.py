"""Analysts' homes on Swarm services (hubstack.hub.service_spec.HomeVolume and
home_job_spec, the home node in HubstackSwarmSpawner): the volumes, the root job that makes
a home the analyst's, and where a local home keeps its analyst.

NFS homes are tested here only, from the spec: this machine's kernel has no NFS client, so
no NFS volume can be mounted in the integration tests (docs/multi-node.md)."""

from types import SimpleNamespace

import pytest
from tornado import web

from hubstack.config import ConfigError, parse_config
from hubstack.hub.container_spec import USER_LABEL
from hubstack.hub.service_spec import (
    HOME_JOB_MOUNT,
    HOME_READY,
    HomeVolume,
    home_job_spec,
)
from hubstack.hub.swarm_spawner import (
    HubstackSwarmSpawner,
    home_refusal,
    unmet_constraints,
)

NFS = {"type": "nfs", "o": "addr=10.0.0.7,rw,nfsvers=4", "device": ":/export/homes"}
IMAGE = "10.0.0.5:5001/hubstack/notebook@sha256:" + "a" * 64


def local() -> HomeVolume:
    return HomeVolume("hs", "alice", 23456, 23457, "/home/alice")


def nfs() -> HomeVolume:
    return HomeVolume("hs", "alice", 23456, 23457, "/home/alice", "local", dict(NFS))


def test_a_local_home_is_the_analysts_own_named_volume_at_their_home():
    mount = local().server_mount()
    assert (mount["Type"], mount["Source"], mount["Target"]) == (
        "volume",
        "hs-home-alice",
        "/home/alice",
    )
    options = mount["VolumeOptions"]
    assert options["NoCopy"] is True  # nothing of the image is copied into a new home
    assert options["Labels"] == {USER_LABEL: "alice"}
    assert "DriverConfig" not in options  # the node's local driver
    assert not local().shared


def test_an_nfs_home_is_the_analysts_folder_of_the_export():
    storage = nfs().storage
    mount = nfs().server_mount()
    assert mount["Source"] == f"hs-homes-{storage}-alice" and mount["Target"] == "/home/alice"
    driver = mount["VolumeOptions"]["DriverConfig"]
    assert driver == {"Name": "local", "Options": {**NFS, "device": ":/export/homes/alice"}}
    # The job mounts the export itself: the analyst's folder may not exist yet.
    job = nfs().job_mount()
    assert job["Source"] == f"hs-homes-{storage}" and job["Target"] == HOME_JOB_MOUNT
    assert job["VolumeOptions"]["DriverConfig"]["Options"]["device"] == ":/export/homes"
    assert nfs().job_folder == f"{HOME_JOB_MOUNT}/alice" and nfs().shared


def test_the_home_job_is_root_with_only_chown_and_only_the_volume():
    spec = home_job_spec(
        "hs-nb-alice-home", IMAGE, local(), ["node.labels.hubstack.gpu!=true"], None, {"p": "hs"}
    )
    c = spec["task_template"]["ContainerSpec"]
    assert c["User"] == "0:0"
    assert c["CapabilityDrop"] == ["ALL"] and c["CapabilityAdd"] == ["CAP_CHOWN"]
    assert [m["Source"] for m in c["Mounts"]] == ["hs-home-alice"]  # no socket, nothing else
    assert "Configs" not in c and "Secrets" not in c
    assert c["Image"] == IMAGE  # the server's image, by digest: the node pulls it anyway
    # The script gets the folder and UID:GID as arguments, never pasted into the shell.
    assert c["Command"][-2:] == [HOME_JOB_MOUNT, "23456:23457"]
    assert HOME_READY in c["Command"][2] and c["Healthcheck"]["Test"][-1] == HOME_READY
    task = spec["task_template"]
    assert "Networks" not in task  # none of the platform's networks
    assert task["Placement"]["Constraints"] == ["node.labels.hubstack.gpu!=true"]
    assert task["RestartPolicy"]["Condition"] == "none"
    assert spec["mode"] == {"replicated": {"Replicas": 1}}  # not a Swarm job: see the spec
    assert spec["labels"] == {"p": "hs", USER_LABEL: "alice"}


def test_the_home_job_on_nfs_makes_the_analysts_folder_of_the_export():
    spec = home_job_spec("hs-nb-alice-home", IMAGE, nfs(), [], None)
    c = spec["task_template"]["ContainerSpec"]
    assert c["Command"][-2:] == [f"{HOME_JOB_MOUNT}/alice", "23456:23457"]
    assert [m["Source"] for m in c["Mounts"]] == [f"hs-homes-{nfs().storage}"]


def test_shared_home_volumes_are_named_by_their_storage():
    """A node reuses a volume of the same name whatever its options: a local home from before
    homes were shared, or volumes of an earlier home_volume, must not stand in for it."""
    assert nfs().name != local().name
    assert len(nfs().storage) == 10 and nfs().storage == nfs().storage  # stable
    bind = {"type": "none", "o": "bind", "device": "/srv/shared/homes"}
    other = HomeVolume("hs", "alice", 23456, 23457, "/home/alice", "local", bind)
    assert other.name != nfs().name
    assert other.job_mount()["Source"] != nfs().job_mount()["Source"]
    assert other.server_mount()["VolumeOptions"]["DriverConfig"]["Options"] == {
        **bind,
        "device": "/srv/shared/homes/alice",
    }


def test_home_volume_config_needs_the_exported_folder():
    cfg = parse_config({"cluster": {"mode": "swarm", "home_volume": {"driver_opts": NFS}}})
    assert cfg.cluster.home_volume.driver == "local"
    assert parse_config({}).cluster.home_volume is None  # the default: local homes
    with pytest.raises(ConfigError) as bad:
        parse_config({"cluster": {"home_volume": {"driver_opts": {"type": "nfs"}}}})
    assert "cluster.home_volume.driver_opts: needs device" in str(bad.value)


NODE = {
    "ID": "n1",
    "Description": {"Hostname": "spark"},
    "Spec": {"Role": "worker", "Labels": {"hubstack.spark": "true"}},
}


def test_unmet_constraints_read_the_nodes_labels_as_swarm_does():
    assert unmet_constraints(NODE, ["node.labels.hubstack.gpu!=true", "node.id==n1"]) == []
    assert unmet_constraints(NODE, ["node.labels.hubstack.spark==true"]) == []
    assert unmet_constraints(
        NODE, ["node.labels.hubstack.gpu==true", "node.role==manager", "node.hostname!=spark"]
    ) == ["node.labels.hubstack.gpu==true", "node.role==manager", "node.hostname!=spark"]
    assert unmet_constraints(NODE, ["engine.labels.x==y"]) == []  # left to the scheduler


def test_a_home_refusal_names_the_node_and_the_remedy():
    profile = SimpleNamespace(name="gpu", display_name="GPU", gpus=1)
    message = home_refusal(profile, "spark", "it needs node.labels.hubstack.gpu==true")
    assert message.startswith("the profile 'GPU' (gpu) cannot start on node 'spark', where ")
    assert "cluster.home_volume" in message and "NFS" in message


def spawner(cfg_data: dict, state: dict) -> HubstackSwarmSpawner:
    s = HubstackSwarmSpawner(platform=parse_config(cfg_data))
    s.user = SimpleNamespace(name="alice", url="/user/alice/", groups=[])
    s.load_state(state)
    return s


def test_the_home_node_outlives_a_stop_in_the_state():
    s = spawner({"cluster": {"mode": "swarm"}}, {"swarm_node": "spark"})
    s.home_node = {"id": "n1", "name": "spark"}
    s.clear_state()  # JupyterHub, after a stop
    assert s.get_state()["swarm_home_node"] == {"id": "n1", "name": "spark"}
    again = spawner({"cluster": {"mode": "swarm"}}, s.get_state())
    assert again.home_node == {"id": "n1", "name": "spark"}


def test_a_profile_that_cannot_run_on_the_home_node_is_refused_before_any_service(monkeypatch):
    s = spawner({"cluster": {"mode": "swarm"}}, {"swarm_home_node": {"id": "n1", "name": "spark"}})
    monkeypatch.setattr(
        HubstackSwarmSpawner, "_client", SimpleNamespace(inspect_node=lambda i: NODE)
    )
    profile = s.cfg.profile("gpu")
    with pytest.raises(web.HTTPError) as refused:
        s._check_home_node(profile, s.cfg.placement_constraints(profile))
    assert refused.value.status_code == 409
    assert "which node spark does not meet" in refused.value.log_message
    drained = {**NODE, "Spec": {**NODE["Spec"], "Availability": "drain"}}
    monkeypatch.setattr(
        HubstackSwarmSpawner, "_client", SimpleNamespace(inspect_node=lambda i: drained)
    )
    default = s.cfg.profile("default")
    with pytest.raises(web.HTTPError) as refused:
        s._check_home_node(default, s.cfg.placement_constraints(default))
    assert "the node is drain" in refused.value.log_message

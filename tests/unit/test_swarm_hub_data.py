"""cluster.hub_data: the hub's database on storage every manager mounts, so that the hub can
move to another manager (docs/multi-node.md, "The hub's database"). Moved on the real
three-manager swarm in tests/integration/test_swarm_hub_move.py."""

from __future__ import annotations

import os

import pytest

from hubstack import stack, swarm_stack
from hubstack.config import ConfigError, parse_config
from hubstack.hub.setup import keep_database_private
from tests.unit.swarm_configs import swarm_config

NFS = {"type": "nfs", "o": "addr=10.0.0.7,rw,nfsvers=4", "device": ":/export/hub"}
BIND = {"type": "none", "o": "bind", "device": "/srv/shared/hub"}


def test_hub_data_is_unset_by_default_and_takes_the_home_volume_shape():
    assert parse_config({}).cluster.hub_data is None  # the manager's local volume
    cfg = parse_config({"cluster": {"mode": "swarm", "hub_data": {"driver_opts": NFS}}})
    assert cfg.cluster.hub_data.driver == "local"
    assert cfg.cluster.hub_data.driver_opts == NFS
    # The same class, and the same storage digest, as the analysts' shared homes.
    homes = parse_config({"cluster": {"mode": "swarm", "home_volume": {"driver_opts": NFS}}})
    assert type(homes.cluster.home_volume) is type(cfg.cluster.hub_data)
    assert homes.cluster.home_volume.storage == cfg.cluster.hub_data.storage


@pytest.mark.parametrize(
    ("cluster", "wanted"),
    [
        ({"mode": "swarm", "hub_data": {"driver_opts": {"type": "nfs"}}},
         "cluster.hub_data.driver_opts: needs device"),
        ({"mode": "swarm", "hub_data": {"driver_opts": {"type": "nfs", "device": "/"}}},
         "cluster.hub_data.driver_opts: needs device"),
        ({"mode": "swarm", "hub_data": {"driver": "local"}},
         "cluster.hub_data.driver_opts: Field required"),
        ({"hub_data": {"driver_opts": BIND}}, "cluster: hub_data is for cluster.mode: swarm"),
        ({"mode": "swarm", "hub_data": {"driver_opts": BIND},
          "home_volume": {"driver_opts": {**BIND, "device": "/srv/shared"}}},
         "cluster: hub_data: /srv/shared/hub is cluster.home_volume's folder or inside it"),
    ],
)  # fmt: skip
def test_a_bad_hub_data_is_one_line_naming_the_key(cluster, wanted):
    with pytest.raises(ConfigError) as bad:
        parse_config({"cluster": cluster}, "hubstack.yaml")
    message = str(bad.value)
    assert message.startswith(f"hubstack.yaml: {wanted}"), message
    assert "\n" not in message


def test_hub_data_beside_homes_on_the_same_export_is_fine():
    cfg = parse_config(
        {
            "cluster": {
                "mode": "swarm",
                "hub_data": {"driver_opts": BIND},
                "home_volume": {"driver_opts": {**BIND, "device": "/srv/shared/homes"}},
            }
        }
    )
    assert cfg.cluster.hub_data.driver_opts["device"] == "/srv/shared/hub"


def test_without_hub_data_the_database_is_the_managers_local_volume(tmp_path):
    cfg = swarm_config(tmp_path)
    model = stack.compose_model(cfg)
    hub = swarm_stack.hub_container_spec(cfg, model)
    (mount,) = [m for m in hub.mounts if m["target"] == "/srv/jupyterhub"]
    assert mount["source"] == "hubstack_hub-data" and "driver" not in mount


def test_with_hub_data_the_database_is_a_volume_on_the_shared_storage(tmp_path):
    cfg = swarm_config(tmp_path, hub_data={"driver_opts": NFS})
    model = stack.compose_model(cfg)
    hub = swarm_stack.hub_container_spec(cfg, model)
    (mount,) = [m for m in hub.mounts if m["target"] == "/srv/jupyterhub"]
    storage = cfg.cluster.hub_data.storage
    # Named after its storage: not the local hubstack_hub-data of before, which a manager
    # that ran the hub still has and would reuse, ignoring the options.
    assert mount == {
        "type": "volume",
        "source": f"hubstack_hub-data-{storage}",
        "target": "/srv/jupyterhub",
        "read_only": False,
        "driver": "local",
        "driver_opts": NFS,
    }
    other = swarm_config(tmp_path, hub_data={"driver_opts": BIND})
    (moved,) = [
        m
        for m in swarm_stack.hub_container_spec(other, stack.compose_model(other)).mounts
        if m["target"] == "/srv/jupyterhub"
    ]
    assert moved["source"] != mount["source"]
    # Nothing else of the hub changes.
    plain = swarm_stack.hub_container_spec(swarm_config(tmp_path), model)
    assert [m for m in plain.mounts if m["target"] != "/srv/jupyterhub"] == [
        m for m in hub.mounts if m["target"] != "/srv/jupyterhub"
    ]


def test_the_database_folder_is_made_private_at_the_hubs_start(tmp_path):
    folder = tmp_path / "hub"
    folder.mkdir(mode=0o755)
    os.chmod(folder, 0o755)  # a fresh export's folder, or a volume copied from the image
    (folder / "jupyterhub.sqlite").write_bytes(b"")
    keep_database_private(folder)
    assert folder.stat().st_mode & 0o777 == 0o700
    keep_database_private(tmp_path / "absent")  # outside the hub's container: nothing

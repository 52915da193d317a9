"""cluster.registry_data: the registry's storage on storage every manager mounts, so that
after the hub moves to another manager its registry there holds every image pushed before
(docs/multi-node.md, "The hub's database and moving the hub"). Moved on the real
three-manager swarm in tests/integration/test_swarm_hub_move.py."""

from __future__ import annotations

import subprocess

import pytest
import yaml

from hubstack import stack, swarm_stack
from hubstack.backup import platform_volume
from hubstack.config import ConfigError, parse_config
from tests.unit.swarm_configs import swarm_config

NFS = {"type": "nfs", "o": "addr=10.0.0.7,rw,nfsvers=4", "device": ":/export/registry"}
BIND = {"type": "none", "o": "bind", "device": "/srv/shared/registry"}


def test_registry_data_is_unset_by_default_and_takes_the_hub_data_shape():
    assert parse_config({}).cluster.registry_data is None  # the manager's local volume
    cfg = parse_config({"cluster": {"mode": "swarm", "registry_data": {"driver_opts": NFS}}})
    assert cfg.cluster.registry_data.driver == "local"
    assert cfg.cluster.registry_data.driver_opts == NFS
    hub = parse_config({"cluster": {"mode": "swarm", "hub_data": {"driver_opts": NFS}}})
    assert type(hub.cluster.hub_data) is type(cfg.cluster.registry_data)


@pytest.mark.parametrize(
    ("cluster", "wanted"),
    [
        ({"mode": "swarm", "registry_data": {"driver_opts": {"type": "nfs"}}},
         "cluster.registry_data.driver_opts: needs device"),
        ({"mode": "swarm", "registry_data": {"driver": "local"}},
         "cluster.registry_data.driver_opts: Field required"),
        ({"registry_data": {"driver_opts": BIND}},
         "cluster: registry_data is for cluster.mode: swarm (on one host the registry's "
         "storage is the compose volume registry-data)"),
        ({"mode": "swarm", "registry_data": {"driver_opts": BIND},
          "home_volume": {"driver_opts": {**BIND, "device": "/srv/shared"}}},
         "cluster: registry_data: /srv/shared/registry overlaps cluster.home_volume's folder "
         "/srv/shared"),
        ({"mode": "swarm", "registry_data": {"driver_opts": {**BIND, "device": "/srv/shared"}},
          "home_volume": {"driver_opts": {**BIND, "device": "/srv/shared/homes"}}},
         "cluster: registry_data: /srv/shared overlaps cluster.home_volume's folder "
         "/srv/shared/homes"),
        ({"mode": "swarm", "registry_data": {"driver_opts": BIND},
          "hub_data": {"driver_opts": {**BIND, "device": "/srv/shared/registry/"}}},
         "cluster: registry_data: /srv/shared/registry overlaps cluster.hub_data's folder "
         "/srv/shared/registry"),
    ],
)  # fmt: skip
def test_a_bad_registry_data_is_one_line_naming_the_key(cluster, wanted):
    with pytest.raises(ConfigError) as e:
        parse_config({"cluster": cluster})
    message = str(e.value)
    assert wanted in message, message
    assert "\n" not in message


def test_registry_data_beside_the_hubs_and_homes_on_the_same_export_is_fine():
    cfg = parse_config(
        {
            "cluster": {
                "mode": "swarm",
                "home_volume": {"driver_opts": {**BIND, "device": "/srv/shared/homes"}},
                "hub_data": {"driver_opts": {**BIND, "device": "/srv/shared/hub"}},
                "registry_data": {"driver_opts": BIND},
            }
        }
    )
    assert cfg.cluster.registry_data.driver_opts["device"] == "/srv/shared/registry"
    # Folders that only share a prefix are not inside one another.
    parse_config(
        {
            "cluster": {
                "mode": "swarm",
                "hub_data": {"driver_opts": {**BIND, "device": "/srv/shared/reg"}},
                "registry_data": {"driver_opts": BIND},
            }
        }
    )


def _stack(cfg) -> tuple[dict, dict]:
    path = swarm_stack.render(cfg, stack.compose_model(cfg), "node-up-runs-on")
    checked = subprocess.run(
        ["docker", "stack", "config", "-c", str(path)], capture_output=True, text=True
    )
    assert checked.returncode == 0, checked.stderr
    return yaml.safe_load(path.read_text()), yaml.safe_load(checked.stdout)


def _storage_mounts(services: dict) -> dict[str, dict]:
    return {
        name: next(v for v in s["volumes"] if v["target"] == "/var/lib/registry")
        for name, s in services.items()
    }


def test_without_registry_data_the_storage_is_the_managers_local_volume(tmp_path):
    data, _ = _stack(swarm_config(tmp_path))
    assert data["volumes"]["registry-data"] == {"name": "hubstack_registry-data"}
    local = platform_volume(swarm_config(tmp_path), "registry-data")  # what backup reads
    assert (local.name, local.shared) == ("hubstack_registry-data", None)


def test_with_registry_data_the_push_and_pull_instances_share_the_shared_folder(tmp_path):
    cfg = swarm_config(tmp_path, registry_data={"driver_opts": NFS})
    data, loaded = _stack(cfg)
    storage = cfg.cluster.registry_data.storage
    name = f"hubstack_registry-data-{storage}"
    # Named after its storage: not the local hubstack_registry-data of before, which a
    # manager that ran the registry still has and would reuse, ignoring the options.
    assert data["volumes"]["registry-data"] == {
        "name": name,
        "driver": "local",
        "driver_opts": NFS,
    }
    shared = platform_volume(cfg, "registry-data")  # what backup reads and restore fills
    assert (shared.name, shared.shared) == (name, cfg.cluster.registry_data)
    mounts = _storage_mounts(data["services"])
    assert mounts["registry"]["source"] == mounts["registry-pull"]["source"] == "registry-data"
    assert not mounts["registry"].get("read_only")
    assert mounts["registry-pull"]["read_only"] is True  # still read-only
    # Per-user images keep their local volume (the docs say why).
    assert mounts["registry-users"]["source"] == "registry-users-data"
    assert data["volumes"]["registry-users-data"] == {"name": "hubstack_registry-users-data"}
    # The docker CLI's loader keeps the driver and options (each node's engine creates the
    # volume from them at the task's start).
    assert loaded["volumes"]["registry-data"]["driver_opts"] == NFS
    # The registries' own stack, deployed first, has the same volume.
    registries = yaml.safe_load(swarm_stack.registries_file(cfg).read_text())
    assert registries["volumes"]["registry-data"] == data["volumes"]["registry-data"]
    # Another storage is another volume.
    other = swarm_config(tmp_path, registry_data={"driver_opts": BIND})
    assert platform_volume(other, "registry-data").name != name
    # Nothing else of the stack changes.
    plain, _ = _stack(swarm_config(tmp_path))
    assert plain["services"] == data["services"]
    assert {k: v for k, v in plain["volumes"].items() if k != "registry-data"} == {
        k: v for k, v in data["volumes"].items() if k != "registry-data"
    }

"""The backup folder's checks, without an engine: what restore refuses, and why."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import docker
import pytest

from hubstack import stack, swarm_stack
from hubstack.backup import (
    FORMAT,
    HUB_DB_DIR,
    MANIFEST,
    PlatformVolume,
    _platform_volume_here,
    _registry_archive,
    _restore_homes,
    backup,
    hub_images,
    platform_volume,
    read_manifest,
    sha256,
)
from hubstack.config import parse_config
from hubstack.errors import CommandError
from tests.unit.swarm_configs import swarm_config


def _backup_folder(root: Path) -> Path:
    (root / "hub").mkdir(parents=True)
    (root / "hub" / "jupyterhub.sqlite").write_bytes(b"SQLite format 3\0")
    (root / "users.yaml").write_text("users: {}\n")
    files = {p.relative_to(root).as_posix(): sha256(p) for p in root.rglob("*") if p.is_file()}
    (root / MANIFEST).write_text(
        json.dumps({"format": FORMAT, "created": "2026-12-04T00:00:00Z", "files": files})
    )
    return root


def test_an_intact_backup_reads(tmp_path):
    manifest = read_manifest(_backup_folder(tmp_path))
    assert set(manifest["files"]) == {"hub/jupyterhub.sqlite", "users.yaml"}


def test_a_folder_without_manifest_is_not_a_backup(tmp_path):
    with pytest.raises(CommandError, match="not a hubstack backup: no manifest.json"):
        read_manifest(tmp_path)


def test_an_edited_file_and_a_missing_one_are_both_named(tmp_path):
    src = _backup_folder(tmp_path)
    (src / "users.yaml").write_text("users: {mallory: {}}\n")
    (src / "hub" / "jupyterhub.sqlite").unlink()
    with pytest.raises(CommandError) as e:
        read_manifest(src)
    assert "users.yaml does not match its checksum" in str(e.value)
    assert "hub/jupyterhub.sqlite is missing" in str(e.value)


def test_another_format_is_refused_by_number(tmp_path):
    src = _backup_folder(tmp_path)
    data = json.loads((src / MANIFEST).read_text())
    (src / MANIFEST).write_text(json.dumps(dict(data, format=FORMAT + 1)))
    with pytest.raises(CommandError, match=f"backup format {FORMAT + 1}"):
        read_manifest(src)


def test_a_backup_never_goes_into_a_folder_that_holds_something(tmp_path):
    (tmp_path / "old").mkdir()
    (tmp_path / "old" / "keep.txt").write_text("x")
    cfg = parse_config({"state_dir": str(tmp_path / "state")})
    with pytest.raises(CommandError, match="is not empty"):
        backup(cfg, tmp_path / "old")
    assert (tmp_path / "old" / "keep.txt").read_text() == "x"


def test_homes_that_would_leave_the_home_root_are_refused(tmp_path):
    archive = tmp_path / "homes.tar.gz"
    with tarfile.open(archive, "w:gz") as tar:
        info = tarfile.TarInfo("../escaped.txt")
        info.size = 1
        tar.addfile(info, io.BytesIO(b"x"))
    cfg = parse_config({"state_dir": str(tmp_path / "state")})
    with pytest.raises(CommandError, match="homes.tar.gz: refused: .*escaped.txt"):
        _restore_homes(cfg, archive)
    assert not (tmp_path / "state" / "escaped.txt").exists()


def test_a_backup_taken_before_the_registry_was_stored_uncompressed_still_restores():
    """registry.tar now (its blobs are gzip already); registry.tar.gz from older backups."""
    assert _registry_archive({"files": {"registry.tar": "x"}}) == "registry.tar"
    assert _registry_archive({"files": {"registry.tar.gz": "x"}}) == "registry.tar.gz"
    assert _registry_archive({"files": {"homes.tar.gz": "x"}}) is None


# --- swarm mode: the hub database and the registry's storage where the platform keeps them
BIND_HUB = {"type": "none", "o": "bind", "device": "/srv/shared/hub"}
BIND_REGISTRY = {"type": "none", "o": "bind", "device": "/srv/shared/registry"}


class _Volumes:
    def __init__(self, names=()):
        self.names = set(names)
        self.created: list[tuple] = []

    def get(self, name):
        if name not in self.names:
            raise docker.errors.NotFound(name)
        return name

    def create(self, name, **kwargs):
        self.created.append((name, kwargs))
        self.names.add(name)


class _Engine:
    """The calls _platform_volume_here makes of an engine."""

    def __init__(self, volumes=(), swarm="inactive"):
        self.volumes = _Volumes(volumes)
        self.swarm = swarm

    def info(self):
        return {"Swarm": {"LocalNodeState": self.swarm}}


def test_backup_and_restore_use_the_volumes_the_swarm_platform_mounts(tmp_path):
    plain = swarm_config(tmp_path)
    assert platform_volume(plain, "hub-data") == PlatformVolume(
        "hub-data", "hubstack_hub-data", "cluster.hub_data"
    )
    assert platform_volume(plain, "registry-data").name == "hubstack_registry-data"
    cfg = swarm_config(
        tmp_path, hub_data={"driver_opts": BIND_HUB}, registry_data={"driver_opts": BIND_REGISTRY}
    )
    hub = platform_volume(cfg, "hub-data")
    model = stack.compose_model(cfg)
    (mount,) = [
        m for m in swarm_stack.hub_container_spec(cfg, model).mounts if m["target"] == HUB_DB_DIR
    ]
    assert hub.name == mount["source"] and hub.shared == cfg.cluster.hub_data
    assert str(hub) == f"volume {hub.name} (cluster.hub_data: /srv/shared/hub)"
    registry = platform_volume(cfg, "registry-data")
    stacked = swarm_stack.shared_volume(cfg, "registry-data", cfg.cluster.registry_data)
    assert (registry.name, registry.shared) == (stacked["name"], cfg.cluster.registry_data)
    # The hub image as the hub's container pulled it is one the backup may run.
    assert hub_images(cfg)[-1] == f"10.1.2.3:25991/hubstack/hub:{cfg.images.tag}"
    assert hub_images(parse_config({})) == [parse_config({}).image_ref("hub")]


def test_a_shared_volume_this_engine_lacks_is_made_on_its_storage(tmp_path):
    cfg = swarm_config(tmp_path, hub_data={"driver_opts": BIND_HUB})
    engine = _Engine()
    hub = platform_volume(cfg, "hub-data")
    _platform_volume_here(engine, hub, "hub database")
    # The same folder the hub mounts: its driver and options, as the hub's start makes it.
    assert engine.volumes.created == [(hub.name, {"driver": "local", "driver_opts": BIND_HUB})]
    _platform_volume_here(engine, hub, "hub database")  # there now: nothing made again
    assert len(engine.volumes.created) == 1


def test_a_local_volume_on_another_manager_is_one_line_saying_where_to_run(tmp_path):
    cfg = swarm_config(tmp_path)
    engine = _Engine(swarm="active")
    with pytest.raises(CommandError) as e:
        _platform_volume_here(engine, platform_volume(cfg, "hub-data"), "hub database")
    message = str(e.value)
    assert message.startswith("no hub database: volume hubstack_hub-data does not exist")
    assert "on the manager the hub last ran on: run this there, or set cluster.hub_data" in message
    assert "\n" not in message and not engine.volumes.created  # a local one is never made
    with pytest.raises(CommandError) as e:
        _platform_volume_here(_Engine(), platform_volume(cfg, "registry-data"), "registry storage")
    assert str(e.value) == (
        "no registry storage: volume hubstack_registry-data does not exist in this engine "
        "(has `hubstack up` run with this config?)"
    )

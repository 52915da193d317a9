"""The backup folder's checks, without an engine: what restore refuses, and why."""

from __future__ import annotations

import io
import json
import tarfile
from pathlib import Path

import pytest

from hubstack.backup import (
    FORMAT,
    MANIFEST,
    _registry_archive,
    _restore_homes,
    backup,
    read_manifest,
    sha256,
)
from hubstack.config import parse_config
from hubstack.errors import CommandError


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

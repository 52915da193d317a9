"""The test helper that gives one registry's storage another's pushed layers: it merges into
a registry that has content of its own, and hard-links the blobs."""

from __future__ import annotations

from pathlib import Path

from tests.registry_storage import V2, merge_registry_storage


def _blob(root: Path, hexdigest: str, data: bytes) -> str:
    path = root / V2 / "blobs/sha256" / hexdigest[:2] / hexdigest / "data"
    path.parent.mkdir(parents=True)
    path.write_bytes(data)
    return f"sha256:{hexdigest}"


def _link(root: Path, namespace: str, rel: str, digest: str) -> None:
    path = root / V2 / "repositories" / namespace / rel / "link"
    path.parent.mkdir(parents=True)
    path.write_text(digest)


def _registry(root: Path) -> None:
    layer = _blob(root, "aa" * 32, b"layer")
    manifest = _blob(root, "bb" * 32, b"manifest")
    other = _blob(root, "cc" * 32, b"other image")
    _link(root, "src", f"notebook/_layers/sha256/{'aa' * 32}", layer)
    _link(root, "src", f"notebook/_manifests/revisions/sha256/{'bb' * 32}", manifest)
    _link(root, "src", "notebook/_manifests/tags/9.1/current", manifest)
    _link(root, "src", f"hub/_layers/sha256/{'cc' * 32}", other)


def test_merges_into_a_registry_with_content_and_leaves_tags_out(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    _registry(source)
    own = _blob(target, "dd" * 32, b"the target's own")
    _link(target, "dst", f"tiny/_layers/sha256/{'dd' * 32}", own)

    added = merge_registry_storage(source, target, "src", "dst")

    repos = target / V2 / "repositories/dst"
    assert (repos / "tiny/_layers/sha256" / ("dd" * 32) / "link").read_text() == own
    assert (repos / "notebook/_layers/sha256" / ("aa" * 32) / "link").is_file()
    assert (repos / "hub/_layers/sha256" / ("cc" * 32) / "link").is_file()
    assert not (repos / "notebook/_manifests/tags").exists()
    blob = target / V2 / "blobs/sha256/aa" / ("aa" * 32) / "data"
    assert (
        blob.stat().st_ino == (source / V2 / "blobs/sha256/aa" / ("aa" * 32) / "data").stat().st_ino
    )
    assert added == 3 + 3  # three links, three blobs
    assert merge_registry_storage(source, target, "src", "dst") == 0


def test_named_repositories_come_with_their_tags_and_only_their_blobs(tmp_path):
    source, target = tmp_path / "source", tmp_path / "target"
    _registry(source)

    merge_registry_storage(source, target, "src", "dst", names=["notebook"])

    repos = target / V2 / "repositories/dst"
    assert (repos / "notebook/_manifests/tags/9.1/current/link").is_file()
    assert not (repos / "hub").exists()
    blobs = {p.parent.name for p in (target / V2 / "blobs").glob("**/data")}
    assert blobs == {"aa" * 32, "bb" * 32}

"""Copying pushed layers from one test registry's storage into another's, so that a push to
the second finds them there ("Layer already exists") instead of gzipping the 2 GB hierarchy
again (about 100 s on 2 cores). Test-only: it needs the registries' storage on this host's
disk (their volumes' mountpoints, or a bind-mounted folder)."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

V2 = Path("docker/registry/v2")


def merge_registry_storage(
    source: Path,
    into: Path,
    source_namespace: str,
    namespace: str,
    names: list[str] | None = None,
) -> int:
    """Give the registry storage INTO (a registry's root folder) the repositories that
    SOURCE holds under SOURCE_NAMESPACE, under NAMESPACE, and their blobs; what INTO holds
    already is kept, so a registry that has content of its own can be given more. Returns
    how many files it added.

    Blobs are hard links (content-addressed, never rewritten), copied where no link can be
    made (another mount, as a swarm node's data root is). Without NAMES: every repository,
    without tags, and every blob. With NAMES: those repositories only, with their tags (a
    push that pushes nothing), and only the blobs they name."""
    src, dst = source / V2, into / V2
    theirs, ours = src / "repositories" / source_namespace, dst / "repositories" / namespace
    if names is None:
        repo_files = [
            f for f in theirs.glob("**/*") if f.is_file() and "/_manifests/tags/" not in str(f)
        ]
        blobs = [f.relative_to(src / "blobs") for f in (src / "blobs").glob("**/data")]
    else:
        repo_files = [f for name in names for f in (theirs / name).glob("**/*") if f.is_file()]
        # Every blob a repository links to: its layers, config and manifests.
        digests = {f.read_text().strip() for f in repo_files if f.name == "link"}
        blobs = [Path(a) / h[:2] / h / "data" for a, h in (d.split(":", 1) for d in digests)]
    added = 0
    for file in repo_files:
        copy = ours / file.relative_to(theirs)
        if not copy.exists():
            copy.parent.mkdir(parents=True, exist_ok=True)
            shutil.copy2(file, copy)
            added += 1
    for blob in blobs:
        copy = dst / "blobs" / blob
        if copy.exists():
            continue
        copy.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.link(src / "blobs" / blob, copy)
        except OSError:
            shutil.copyfile(src / "blobs" / blob, copy)
        added += 1
    return added

"""Semantic releases: `hubstack ci release X.Y.Z` names a tested state of every image.

A release copies, inside the registry, the tag SOURCE (default ``images.tag``, what CI
tested last; or a commit tag that `ci build --push` gave every image) to ``X.Y.Z`` and to
``X.Y`` (when X.Y.Z is the newest patch of X.Y) for every image of the graph. ``X.Y.Z``
is never moved once it exists: a release whose images already carry X.Y.Z with other
digests is refused, and running it again with the same digests only completes what a
failed run left. The release notes are the package differences from the previous
release, read from the images' locks; they are printed and kept, with the digests and
the date, in STATE_DIR/releases/X.Y.Z.{json,md}.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker

from hubstack.ci.promote import STABLE, ensure_local, releases_dir
from hubstack.ci.rebuild import commit_tag
from hubstack.ci.tags import Version, is_release_tag, release_versions
from hubstack.clock import timestamp
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.graph import ImageGraph
from hubstack.images.lockdiff import Packages, diff_locks, format_changes, read_lock
from hubstack.registry import RegistryClient


@dataclass
class Release:
    version: str
    source: str
    """The tag the release copied (images.tag or a commit tag)."""
    released: str
    """When (UTC, ISO 8601)."""
    digests: dict[str, str]
    """Image name -> manifest digest of X.Y.Z."""
    previous: str | None
    """The release the notes compare with; None for the first."""
    notes: dict[str, list[str]] = field(default_factory=dict)
    """Image name -> package difference lines from the previous release."""
    minor_moved: bool = True
    """Whether X.Y now names this release (not when a newer X.Y.W exists)."""
    packages: dict[str, dict[str, dict[str, list[str]]]] = field(default_factory=dict)
    """For the images profiles start (what analysts choose): manager -> package key ->
    [name, version], from the image's lock. The spawn form compares them with stable's."""
    retired: bool = False
    """Retired by an admin (`hubstack ci retire`): no longer offered; running servers keep it."""

    def lock_packages(self, image: str) -> dict[str, Packages] | None:
        held = self.packages.get(image)
        if held is None:
            return None
        return {m: {k: (v[0], v[1]) for k, v in pk.items()} for m, pk in held.items()}

    def format_notes(self) -> str:
        head = f"# hubstack {self.version}\n\nReleased {self.released} from `{self.source}`"
        head += f"; changes since {self.previous}:" if self.previous else " (first release)."
        lines = [head, ""]
        for name, digest in self.digests.items():
            lines.append(f"## {name}  ({digest})")
            lines.extend(f"    {line}" for line in self.notes.get(name, ["first release"]))
            lines.append("")
        return "\n".join(lines)

    def write(self, folder: Path) -> Path:
        folder.mkdir(parents=True, exist_ok=True)
        (folder / f"{self.version}.json").write_text(json.dumps(asdict(self), indent=2) + "\n")
        path = folder / f"{self.version}.md"
        path.write_text(self.format_notes())
        return path


def load_release(cfg: PlatformConfig, version: str) -> Release | None:
    path = releases_dir(cfg) / f"{version}.json"
    if not path.is_file():
        return None
    return Release(**json.loads(path.read_text()))


def load_releases(cfg: PlatformConfig) -> list[Release]:
    """Every release recorded here, newest first."""
    found = []
    for path in releases_dir(cfg).glob("*.json"):
        if Version.from_tag(path.stem) is not None:
            found.append(Release(**json.loads(path.read_text())))
    return sorted(found, key=lambda r: Version.parse(r.version), reverse=True)


def retire(cfg: PlatformConfig, version: str, undo: bool = False) -> Release:
    """Retire VERSION (or bring it back): it leaves the spawn form; nothing is deleted."""
    v = Version.parse(version)
    rec = load_release(cfg, str(v))
    if rec is None:
        known = ", ".join(r.version for r in load_releases(cfg)) or "none"
        raise CommandError(f"no release {v} is recorded in {releases_dir(cfg)} (releases: {known})")
    rec.retired = not undo
    rec.write(releases_dir(cfg))
    return rec


def _read_locks(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    names: list[str],
    version: str,
    previous: str | None,
    progress: Callable[[str], None],
) -> tuple[dict[str, list[str]], dict[str, dict[str, dict[str, list[str]]]]]:
    """One pass over the images, each VERSION lock read once: (the notes, each image's
    package differences from PREVIOUS; the locks of the images profiles start, which the
    spawn page compares with stable's)."""
    served = {p.image for p in cfg.profiles}
    registry = RegistryClient(cfg)
    notes: dict[str, list[str]] = {}
    packages: dict[str, dict[str, dict[str, list[str]]]] = {}
    for name in names:
        if previous is None and name not in served:
            continue
        try:
            ensure_local(cfg, client, [name], version)
            new = read_lock(cfg, client, cfg.image_ref(name, version))
            if name in served:
                packages[name] = {
                    m: {k: list(v) for k, v in pk.items()} for m, pk in new.packages.items()
                }
            if previous is None:
                continue
            if registry.digest(name, previous) is None:
                notes[name] = [f"new in this release (not in {previous})"]
                continue
            ensure_local(cfg, client, [name], previous)
            old = read_lock(cfg, client, cfg.image_ref(name, previous))
            notes[name] = format_changes(
                [] if old.image_id == new.image_id else diff_locks(old, new)
            )
        except CommandError as e:
            notes[name] = [f"packages not compared: {e}"]
        progress(f"{name}: lock read{f', compared with {previous}' if previous else ''}")
    return notes, packages


def release(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    version: str,
    source: str | None = None,
    progress: Callable[[str], None] = print,
) -> Release:
    """Tag every image's SOURCE (default images.tag) as VERSION and its X.Y, and write the notes.

    Nothing is tagged unless every image has SOURCE and none has VERSION elsewhere."""
    v = Version.parse(version)
    source = source or cfg.images.tag
    if re.fullmatch(r"[0-9a-f]{40}", source):
        source = commit_tag(source)  # a full commit id names the commit tag CI pushed
    if source == STABLE or is_release_tag(source):
        raise CommandError(
            f"release from {cfg.images.tag!r} or a commit tag, not {source!r}: a release names "
            "what CI tested, and a release is never made from another one"
        )
    registry = RegistryClient(cfg)
    names = ImageGraph.from_config(cfg).order()
    tags = {name: registry.tags(name) for name in names}  # one listing per image
    digests: dict[str, str] = {}
    missing = []
    for name in names:
        digest = registry.digest(name, source) if source in tags[name] else None
        if digest is not None:
            digests[name] = digest
        elif tags[name]:
            missing.append(name)
        else:
            progress(f"{name}: not in the registry (never built here): not in the release")
    if missing or not digests:
        raise CommandError(
            f"no release: {', '.join(missing or names)} "
            f"{'has' if len(missing or names) == 1 else 'have'} no tag "
            f"{source!r} in the registry {cfg.registry.address}; release {cfg.images.tag!r} or "
            "a commit that `hubstack ci build --push` built with every image green"
        )
    names = list(digests)  # in build order
    existing = {
        name: registry.digest(name, str(v)) if str(v) in tags[name] else None for name in names
    }
    taken = {n: d for n, d in existing.items() if d is not None and d != digests[n]}
    if taken:
        first = next(iter(taken))
        raise CommandError(
            f"release {v} exists and is never re-tagged ({first}:{v} is {taken[first][:19]}…, "
            f"{source} is {digests[first][:19]}…); release {v.major}.{v.minor}.{v.patch + 1}"
        )
    done = load_release(cfg, str(v))
    if done and existing == digests:
        progress(f"release {v} exists with these very images: nothing to do")
        return done
    versions = {ver for name in names for ver in release_versions(tags[name])}
    newer_patch = any(o.minor_tag == v.minor_tag and o > v for o in versions)
    earlier = [o for o in versions if o < v]
    previous = str(max(earlier)) if earlier else None

    for name in names:
        registry.copy_tag(name, source, str(v))
        if not newer_patch:
            registry.copy_tag(name, source, v.minor_tag)
        progress(f"{name}: {v}{'' if newer_patch else f' and {v.minor_tag}'} -> {source}")
    notes, packages = _read_locks(cfg, client, names, str(v), previous, progress)
    rec = Release(
        version=str(v),
        source=source,
        released=timestamp(),
        digests=digests,
        previous=previous,
        notes=notes,
        minor_moved=not newer_patch,
        packages=packages,
    )
    rec.write(releases_dir(cfg))
    return rec

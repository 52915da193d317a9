"""What differs between two images' packages, read from the locks the images carry.

Every image writes its lock as its last root step (``hubstack-write-lock NAME``, see
images/README.md): ``/usr/share/hubstack/lock/NAME/pip-freeze.txt`` and ``dpkg.txt``,
each the whole image's packages at that point. Parents' locks stay beside it, so an
image's own lock is the one under its ``io.hubstack.image`` label.

The locks are read through the engine without running anything: a container is
created from the image, never started, and the lock folder copied out of it.
"""

from __future__ import annotations

import io
import re
import tarfile
from dataclasses import dataclass

import docker

from hubstack.config import PlatformConfig
from hubstack.engine import created_container
from hubstack.errors import CommandError
from hubstack.images.build import IMAGE_LABEL

LOCK_DIR = "/usr/share/hubstack/lock"
LOCK_FILES = {"pip": "pip-freeze.txt", "dpkg": "dpkg.txt"}
"""Package manager -> its file in an image's lock folder, in the order diffs list them."""

Packages = dict[str, tuple[str, str]]
"""Package key (the name, normalized for pip) -> (name as the lock spells it, version)."""


def parse_dpkg(text: str) -> Packages:
    """dpkg.txt: one `name=version` a line."""
    out: Packages = {}
    for line in text.splitlines():
        name, sep, version = line.strip().partition("=")
        if sep and name:
            out[name] = (name, version)
    return out


def _pip_key(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()  # PEP 503: Foo_Bar and foo-bar are one


def parse_pip(text: str) -> Packages:
    """pip-freeze.txt: `name==version`, `name @ URL` (the URL is the version), and
    `-e URL#egg=name`; comments and blank lines are skipped."""
    out: Packages = {}
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        if line.startswith(("-e ", "--editable ")):
            url = line.split(None, 1)[1]
            name, version = url.rpartition("#egg=")[2] or url, url
        elif " @ " in line:
            name, _, version = line.partition(" @ ")
        else:
            name, _, version = line.partition("==")
        out[_pip_key(name.strip())] = (name.strip(), version.strip())
    return out


PARSERS = {"pip": parse_pip, "dpkg": parse_dpkg}


@dataclass(frozen=True)
class PackageChange:
    manager: str
    """pip | dpkg"""
    name: str
    old: str | None
    """Version in the old image; None: added."""
    new: str | None
    """Version in the new image; None: removed."""

    @property
    def kind(self) -> str:
        return "added" if self.old is None else "removed" if self.new is None else "changed"

    def format(self) -> str:
        if self.old is None:
            return f"{self.manager:<4} + {self.name} {self.new}"
        if self.new is None:
            return f"{self.manager:<4} - {self.name} {self.old}"
        return f"{self.manager:<4}   {self.name} {self.old} -> {self.new}"


def diff_packages(manager: str, old: Packages, new: Packages) -> list[PackageChange]:
    """Added, removed and changed packages of one manager, by package name."""
    changes = []
    for key in sorted(old.keys() | new.keys()):
        old_name, old_version = old.get(key, ("", None))
        new_name, new_version = new.get(key, ("", None))
        if old_version != new_version:
            changes.append(PackageChange(manager, new_name or old_name, old_version, new_version))
    return changes


@dataclass(frozen=True)
class ImageLock:
    """One image's own lock: its packages per manager (LOCK_FILES)."""

    ref: str
    image_id: str
    name: str
    packages: dict[str, Packages]


def diff_locks(old: ImageLock, new: ImageLock) -> list[PackageChange]:
    """Every package difference from OLD to NEW: pip's first, then dpkg's."""
    return [
        change
        for manager in LOCK_FILES
        for change in diff_packages(
            manager, old.packages.get(manager, {}), new.packages.get(manager, {})
        )
    ]


def format_changes(changes: list[PackageChange]) -> list[str]:
    return [c.format() for c in changes] or ["no package differences"]


def get_image(cfg: PlatformConfig, client: docker.DockerClient, ref: str):
    """The local image REF names: a tag, an image id, REPO@sha256:..., or NAME:TAG of our
    images (short for REGISTRY/NAMESPACE/NAME:TAG)."""
    candidates = [ref] if "/" in ref else [ref, f"{cfg.image_prefix}/{ref}"]
    for candidate in candidates:
        try:
            return client.images.get(candidate)
        except docker.errors.ImageNotFound:
            continue
        except docker.errors.APIError as e:  # e.g. an invalid reference format
            raise CommandError(f"image {ref!r}: {e.explanation or e}") from None
    raise CommandError(
        f"no image {ref!r} in this engine (give a tag, an image id or REPO@sha256:... that "
        "`docker images` lists; pull it first if it is only in the registry)"
    )


def _lock_files(client: docker.DockerClient, image_id: str, ref: str) -> dict[str, bytes]:
    """Every file under LOCK_DIR in the image, by path below it (`notebook/dpkg.txt`)."""
    try:
        with created_container(client, image_id) as container:
            stream, _ = container.get_archive(LOCK_DIR)
            data = b"".join(stream)
    except docker.errors.NotFound:
        raise CommandError(
            f"image {ref!r} has no {LOCK_DIR}: it was not built with hubstack-write-lock"
        ) from None
    except docker.errors.APIError as e:
        raise CommandError(f"cannot read the lock of image {ref!r}: {e.explanation or e}") from None
    files = {}
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        for member in tar.getmembers():
            f = tar.extractfile(member) if member.isfile() else None
            if f is not None:
                files[member.name.split("/", 1)[-1]] = f.read()
    return files


def read_lock(cfg: PlatformConfig, client: docker.DockerClient, ref: str) -> ImageLock:
    """The lock of the image REF names (see get_image), read without running it."""
    image = get_image(cfg, client, ref)
    name = (image.labels or {}).get(IMAGE_LABEL)
    if not name:
        raise CommandError(f"image {ref!r} has no {IMAGE_LABEL} label: not a hubstack image")
    files = _lock_files(client, image.id, ref)
    packages = {}
    for manager, filename in LOCK_FILES.items():
        text = files.get(f"{name}/{filename}")
        if text is None:
            raise CommandError(f"image {ref!r} has no {LOCK_DIR}/{name}/{filename}")
        packages[manager] = PARSERS[manager](text.decode(errors="replace"))
    return ImageLock(ref=ref, image_id=image.id, name=name, packages=packages)


def image_diff(
    cfg: PlatformConfig, client: docker.DockerClient, old_ref: str, new_ref: str
) -> list[PackageChange]:
    """Package differences from the image OLD_REF to the image NEW_REF."""
    old = read_lock(cfg, client, old_ref)
    new = read_lock(cfg, client, new_ref)
    return [] if old.image_id == new.image_id else diff_locks(old, new)

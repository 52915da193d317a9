"""What every notebook container is created with, whatever its profile: the analyst's
identity from the first process, and the lockdown (no capabilities, no-new-privileges,
a pids limit). A GPU grant (hubstack.hub.gpu) adds its own labels and host settings.

No JupyterHub import here, so the real GPU check (tests/gpu/check.py), which runs where
JupyterHub is not installed, creates its containers from this very code.
"""

from __future__ import annotations

import contextlib
import hashlib
import io
import os
import tarfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

USER_LABEL = "io.hubstack.user"
PROFILE_LABEL = "io.hubstack.profile"
DEFAULT_PIDS_LIMIT = 1024


def create_kwargs(
    user_name: str,
    profile_name: str,
    ident: dict,
    labels: dict | None = None,
    grant_labels: dict | None = None,
) -> dict:
    """docker create arguments: run as UID:GID in the home, labelled with owner and profile."""
    return {
        "user": f"{ident['uid']}:{ident['gid']}",
        "working_dir": ident["home"],
        "labels": {
            USER_LABEL: user_name,
            PROFILE_LABEL: profile_name,
            **(labels or {}),
            **(grant_labels or {}),
        },
    }


def host_config(
    ident: dict, pids_limit: int = DEFAULT_PIDS_LIMIT, grant_host_config: dict | None = None
) -> dict:
    """HostConfig settings: the analyst's supplementary groups and the lockdown."""
    return {
        "group_add": [str(g) for g in ident["groups"]],
        "cap_drop": ["ALL"],
        "security_opt": ["no-new-privileges"],
        "pids_limit": pids_limit,
        **(grant_host_config or {}),
    }


def passwd_entries(name: str, uid: int, gid: int, groups: list[int], home: str) -> tuple[str, str]:
    """Lines for the analyst: one passwd line, and group lines for their groups."""
    passwd = f"{name}:x:{uid}:{gid}:{name}:{home}:/bin/bash\n"
    group_lines = [f"{name}:x:{gid}:\n"]
    group_lines += [f"g{g}:x:{g}:{name}\n" for g in groups if g != gid]
    return passwd, "".join(group_lines)


def merge_account_file(original: str, extra: str, key_index: int) -> str:
    """The image's file minus any entry clashing by name or id with ours, plus ours."""
    new = [line.split(":") for line in extra.splitlines() if line]
    names = {f[0] for f in new}
    ids = {f[key_index] for f in new}
    kept = []
    for line in original.splitlines():
        f = line.split(":")
        if len(f) > key_index and (f[0] in names or f[key_index] in ids):
            continue
        kept.append(line)
    return "\n".join(kept) + "\n" + extra


@dataclass
class File:
    data: bytes
    mode: int = 0o644
    uid: int = 0
    gid: int = 0


def put_files(client, container_id: str, files: dict[str, File], dirs: dict[str, File]) -> None:
    """Write FILES (and their folders DIRS, data unused) into a created container, with the
    owners and modes given: what must be there before its first process starts."""
    out = io.BytesIO()
    now = int(time.time())
    with tarfile.open(fileobj=out, mode="w") as tar:
        for path, d in dirs.items():
            info = tarfile.TarInfo(path.strip("/"))
            info.type, info.mode, info.uid, info.gid, info.mtime = (
                tarfile.DIRTYPE,
                d.mode,
                d.uid,
                d.gid,
                now,
            )
            tar.addfile(info)
        for path, f in files.items():
            info = tarfile.TarInfo(path.lstrip("/"))
            info.size, info.mode, info.uid, info.gid, info.mtime = (
                len(f.data),
                f.mode,
                f.uid,
                f.gid,
                now,
            )
            tar.addfile(info, io.BytesIO(f.data))
    client.put_archive(container_id, "/", out.getvalue())


def read_file(client, container_id: str, path: str) -> str:
    stream, _ = client.get_archive(container_id, path)
    with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
        member = tar.extractfile(tar.getmembers()[0])
        assert member is not None  # a regular file, as /etc/passwd always is
        return member.read().decode()


# The image's own /etc/passwd and /etc/group, by image digest (immutable): reading them
# out of each new container costs the engine two archive exports (a mount of the
# container's file system and a chrooted tar each) per start, the same bytes every time.
_IMAGE_ACCOUNTS: dict[str, tuple[str, str]] = {}
_IMAGE_ACCOUNTS_LOCK = threading.Lock()
IMAGE_ACCOUNTS_KEPT = 64


def known_image_accounts(image: str) -> tuple[str, str] | None:
    """IMAGE's /etc/passwd and /etc/group if a container of that digest was read already."""
    with _IMAGE_ACCOUNTS_LOCK:
        return _IMAGE_ACCOUNTS.get(image)


def image_account_files(client, container_id: str, image: str = "") -> tuple[str, str]:
    """The image's /etc/passwd and /etc/group, read from a container created from it, or
    remembered from an earlier container of the same IMAGE when it is a digest
    (REPO@sha256:...)."""
    cacheable = "@sha256:" in image
    known = known_image_accounts(image) if cacheable else None
    if known is not None:
        return known
    found = (
        read_file(client, container_id, "/etc/passwd"),
        read_file(client, container_id, "/etc/group"),
    )
    if cacheable:
        with _IMAGE_ACCOUNTS_LOCK:
            while len(_IMAGE_ACCOUNTS) >= IMAGE_ACCOUNTS_KEPT:
                del _IMAGE_ACCOUNTS[next(iter(_IMAGE_ACCOUNTS))]  # the oldest
            _IMAGE_ACCOUNTS[image] = found
    return found


def account_texts(user_name: str, ident: dict, image_passwd: str, image_group: str) -> dict:
    """{path: text}: the image's /etc/passwd and /etc/group plus the analyst's lines, so id,
    whoami, $HOME, pwd.getpwuid(), Java's user.home and Hadoop's login see the analyst
    without root."""
    passwd, group = passwd_entries(
        user_name, ident["uid"], ident["gid"], ident["groups"], ident["home"]
    )
    return {
        "/etc/passwd": merge_account_file(image_passwd, passwd, 2),
        "/etc/group": merge_account_file(image_group, group, 2),
    }


def account_files(
    client, container_id: str, user_name: str, ident: dict, image: str = ""
) -> dict[str, File]:
    """account_texts as files to put into the created container CONTAINER_ID. IMAGE (the
    container's image, by digest) lets the image's files be read once per image."""
    texts = account_texts(user_name, ident, *image_account_files(client, container_id, image))
    return {path: File(text.encode()) for path, text in texts.items()}


# A written account file is kept this long after its last use: a running container keeps
# its mount of a removed file, so only files no start has used for a day go.
ACCOUNT_FILE_KEPT_S = 24 * 3600


def account_mounts(folder: Path, user_name: str, texts: dict) -> dict:
    """Write TEXTS (account_texts) under FOLDER/USER_NAME, named by content, and return the
    read-only bind mounts for them (DockerSpawner's volumes form). A file of the same content
    is reused: only a new image or identity writes one. Mounting them instead of writing
    them into each created container saves the engine an archive upload per start (a mount
    of the container's file system and a re-executed dockerd for the untar: about 0.08
    CPU-s, docs/performance.md)."""
    own = folder / user_name
    own.mkdir(parents=True, exist_ok=True, mode=0o755)
    now = time.time()
    mounts, used = {}, set()
    for target, text in texts.items():
        data = text.encode()
        path = own / f"{hashlib.sha256(data).hexdigest()[:16]}.{target.rsplit('/', 1)[1]}"
        if path.exists():
            os.utime(path)
        else:
            part = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
            part.write_bytes(data)
            part.chmod(0o644)
            part.replace(path)  # whole or absent: a start never mounts half a file
        used.add(path.name)
        mounts[str(path)] = {"bind": target, "mode": "ro"}
    for old in own.iterdir():
        with contextlib.suppress(FileNotFoundError):
            if old.name not in used and now - old.stat().st_mtime > ACCOUNT_FILE_KEPT_S:
                old.unlink()
    return mounts

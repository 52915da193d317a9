"""`hubstack backup DIR` and `hubstack restore DIR`: the platform's state, to move or recover.

A backup is a folder:

    manifest.json          what is in it, with a SHA-256 per file; written last
    hub/jupyterhub.sqlite  the hub database, copied with SQLite's backup API (consistent
                           while the hub runs and writes)
    users.yaml             the analysts: names, UIDs, GIDs, groups, password hashes
    accounts.yaml          directory (LDAP, OIDC) accounts as their last login recorded them
    oidc-ids.yaml          the UID/GID each OpenID Connect person was given, by their `sub`
    config/hubstack.yaml   the platform config the backup was taken with (if it had a file)
    secrets/               cookie secret, proxy token, crypt key (auth state is encrypted
                           with it), registry credentials and htpasswd, the platform CA's
                           key and the hub's TLS key (hub.tls self-signed); mode 0600
    tls/                   the platform CA's certificate (what clients trust) and the
                           hub's, so a restored platform keeps the CA everyone trusts
    releases/              release records and notes, and which tag stable was promoted to
                           (what the spawn page's version choice reads)
    homes.tar.gz           with --homes: the analysts' homes, numeric owners and modes kept
    registry.tar           with --registry: the registry's storage (every pushed image), not
                           compressed again: its blobs are gzip already (older backups:
                           registry.tar.gz, still restored)

The folder is written under a temporary name and renamed when complete, so a failed or
interrupted backup never looks like a good one. Restore checks every checksum first and
writes only into a state directory, volumes and home root that hold nothing yet.

Swarm mode: run both on the manager the hub runs on (its engine holds the hub's local
volumes). With cluster.hub_data or cluster.registry_data, the hub database or the
registry's storage is the volume on that shared storage (platform_volume), which any
manager's engine mounts: backup reads it there and restore fills it, so both also work on
another manager.
"""

from __future__ import annotations

import dataclasses
import hashlib
import io
import json
import shutil
import tarfile
import tempfile
from pathlib import Path

import docker

from hubstack import __version__, swarm_stack
from hubstack.ci.promote import releases_dir
from hubstack.clock import timestamp
from hubstack.config import PlatformConfig, SharedVolumeConfig
from hubstack.engine import created_container, docker_client, project_name
from hubstack.errors import CommandError
from hubstack.images.bootstrap import bootstrap
from hubstack.secretfiles import write_private
from hubstack.stack import notebook_containers

MANIFEST = "manifest.json"
FORMAT = 1
HUB_DB_DIR = "/srv/jupyterhub"  # the hub-data volume inside the hub container
HUB_DB = "jupyterhub.sqlite"
REGISTRY_DIR = "/var/lib/registry"  # the registry-data volume inside the registry container
# The registry credentials file may live outside secrets_dir (registry.credentials_file).
REGISTRY_CREDENTIALS = "registry-credentials.json"
# SQLite's online backup: a consistent copy even while the hub writes.
SQLITE_BACKUP = (
    "import sqlite3, sys; "
    "src = sqlite3.connect(f'file:{sys.argv[1]}?mode=ro', uri=True); "
    "dst = sqlite3.connect(sys.argv[2]); src.backup(dst); dst.close(); src.close()"
)


def volume_name(cfg: PlatformConfig, volume: str) -> str:
    """The engine's name of a compose volume (compose prefixes it with the project)."""
    return f"{project_name(cfg)}_{volume}"


@dataclasses.dataclass(frozen=True)
class PlatformVolume:
    """A volume backup reads and restore fills, as the running platform names it."""

    key: str
    """The compose volume: hub-data, registry-data."""
    name: str
    """The engine's name: PROJECT_KEY, or on shared storage PROJECT_KEY-STORAGE."""
    setting: str
    """The cluster.* key that puts it on shared storage: cluster.hub_data, ...registry_data."""
    shared: SharedVolumeConfig | None = None
    """That key's storage; None: a local volume."""

    def __str__(self) -> str:
        if self.shared is None:
            return f"volume {self.name}"
        return f"volume {self.name} ({self.setting}: {self.shared.driver_opts['device']})"


def platform_volume(cfg: PlatformConfig, key: str) -> PlatformVolume:
    """KEY's volume: in swarm mode with cluster.hub_data (hub-data) or cluster.registry_data
    (registry-data), the volume on that shared storage the hub's container and the
    registries mount (swarm_stack.shared_volume); else the local volume PROJECT_KEY."""
    setting = {"hub-data": "hub_data", "registry-data": "registry_data"}[key]
    shared = getattr(cfg.cluster, setting) if cfg.cluster.mode == "swarm" else None
    if shared is None:
        return PlatformVolume(key, volume_name(cfg, key), f"cluster.{setting}")
    name = swarm_stack.shared_volume(cfg, key, shared)["name"]
    return PlatformVolume(key, name, f"cluster.{setting}", shared)


def _platform_volume_here(client, volume: PlatformVolume, what: str) -> None:
    """VOLUME in this engine: a local one must exist (the platform's data is in it); one on
    shared storage is created with its key's driver and options where it does not yet (as
    the engine creates it at the hub's or the registries' start), and mounts the same
    folder. Raises a one-line error for a local volume that is not here."""
    if _volume(client, volume.name) is not None:
        return
    if volume.shared is not None:
        client.volumes.create(
            volume.name, driver=volume.shared.driver, driver_opts=dict(volume.shared.driver_opts)
        )
        return
    message = (
        f"no {what}: {volume} does not exist in this engine (has `hubstack up` run with this "
        "config?)"
    )
    if (client.info().get("Swarm") or {}).get("LocalNodeState") == "active":
        message += (
            "; in swarm mode it is on the manager the hub last ran on: run this there, or set "
            f"{volume.setting} to keep it on storage every manager mounts"
        )
    raise CommandError(message)


def sha256(path: Path) -> str:
    """A file's sha256, read in blocks (backups and node bundles are gigabytes)."""
    with path.open("rb") as f:
        return hashlib.file_digest(f, "sha256").hexdigest()


def _say(line: str) -> None:
    print(line, flush=True)


def _size(path: Path) -> str:
    n = float(path.stat().st_size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if n < 1024 or unit == "GiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    return ""


# --- volumes through the engine ------------------------------------------------------
def _volume(client, name: str):
    try:
        return client.volumes.get(name)
    except docker.errors.NotFound:
        return None


def _holding(client, image: str, volume: str, mount: str, **kwargs):
    """A created container of IMAGE with VOLUME at MOUNT (engine.created_container)."""
    return created_container(
        client, image, volumes={volume: {"bind": mount, "mode": "rw"}}, user="0:0", **kwargs
    )


REGISTRY_ARCHIVE = "registry.tar"
REGISTRY_ARCHIVE_GZ = "registry.tar.gz"  # what older backups hold; still restored


def _registry_archive(manifest: dict) -> str | None:
    """The backup's registry archive, if it has one."""
    names = (REGISTRY_ARCHIVE, REGISTRY_ARCHIVE_GZ)
    return next((n for n in names if n in manifest["files"]), None)


def _archive_volume(client, image: str, volume: str, mount: str, dest: Path) -> None:
    """Stream the volume's files, as the engine tars them, into DEST (a plain tar)."""
    with _holding(client, image, volume, mount) as container, dest.open("wb") as out:
        stream, _ = container.get_archive(mount)
        for chunk in stream:
            out.write(chunk)


def _fill_volume(cfg: PlatformConfig, client, volume: PlatformVolume, mount: str, archive) -> None:
    """Create VOLUME (a local one labelled as compose would; one on shared storage with its
    key's driver and options) and unpack ARCHIVE (a tar, gzip allowed) at MOUNT's parent.
    The engine unpacks; nothing runs."""
    if volume.shared is not None:
        _platform_volume_here(client, volume, volume.key)
    else:
        client.volumes.create(
            volume.name,
            labels={
                "com.docker.compose.project": project_name(cfg),
                "com.docker.compose.volume": volume.key,
            },
        )
    with _holding(client, cfg.base.image, volume.name, mount) as container:
        if not container.put_archive(str(Path(mount).parent), archive):
            raise CommandError(f"the engine refused to unpack into {volume}")


def _holds(client, image: str, volume: PlatformVolume, mount: str, path: str) -> bool:
    """Whether PATH (under MOUNT) exists in VOLUME: a look through a created container."""
    with _holding(client, image, volume.name, mount) as container:
        try:
            container.get_archive(path)
        except docker.errors.NotFound:
            return False
    return True


# --- backup --------------------------------------------------------------------------
def hub_images(cfg: PlatformConfig) -> list[str]:
    """The hub image's names an engine may hold it by: as built and pushed, and in swarm
    mode as the hub's container pulled it (from the read-only instance)."""
    names = [cfg.image_ref(cfg.hub.image)]
    if cfg.cluster.mode == "swarm":
        names.append(f"{cfg.pull_repository(cfg.hub.image)}:{cfg.images.tag}")
    return names


def _hub_image(cfg: PlatformConfig, client) -> str:
    names = hub_images(cfg)
    for name in names:
        try:
            client.images.get(name)
        except docker.errors.ImageNotFound:
            continue
        return name
    raise CommandError(f"the hub image {' or '.join(names)} is not in the engine")


def _copy_hub_db(cfg: PlatformConfig, client, volume: PlatformVolume, dest: Path) -> None:
    """SQLite's backup API, run in a throwaway container of the hub image beside the hub."""
    _platform_volume_here(client, volume, "hub database")
    image = _hub_image(cfg, client)
    src, tmp = f"{HUB_DB_DIR}/{HUB_DB}", f"/tmp/{HUB_DB}"
    command = ["python3", "-c", SQLITE_BACKUP, src, tmp]
    with _holding(client, image, volume.name, HUB_DB_DIR, entrypoint=command) as container:
        container.start()
        status = container.wait(timeout=300)
        if status.get("StatusCode") != 0:
            log = container.logs().decode(errors="replace").strip()[-500:]
            raise CommandError(f"copying the hub database from {volume} failed: {log}")
        stream, _ = container.get_archive(tmp)
        data = b"".join(stream)
    with tarfile.open(fileobj=io.BytesIO(data)) as tar:
        copy = tar.extractfile(HUB_DB)
        if copy is None:
            raise CommandError("copying the hub database failed: no copy came back")
        dest.parent.mkdir(parents=True, exist_ok=True)
        dest.write_bytes(copy.read())


def _secret_files(cfg: PlatformConfig) -> dict[str, Path]:
    """name in the backup -> file on this host, for every secret that exists."""
    files = {p.name: p for p in sorted(cfg.secrets_dir.glob("[!.]*"))}  # no temp files
    files[REGISTRY_CREDENTIALS] = cfg.registry_credentials_file
    return {k: v for k, v in files.items() if v.is_file()}


def backup(cfg: PlatformConfig, dest: Path, homes: bool = False, registry: bool = False) -> dict:
    """Write a complete backup folder at DEST (which must not exist, or be empty)."""
    dest = dest.absolute()
    if dest.exists() and any(dest.iterdir()):
        raise CommandError(f"{dest} is not empty: a backup goes into a new folder")
    if not cfg.users_file.is_file():
        raise CommandError(f"no users file at {cfg.users_file}: nothing to back up")
    client = docker_client()
    dest.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=f".{dest.name}.partial-", dir=dest.parent))
    work.chmod(0o700)  # it holds secrets
    try:
        hub_data = platform_volume(cfg, "hub-data")
        _say(f"hub database: SQLite backup of {hub_data}")
        _copy_hub_db(cfg, client, hub_data, work / "hub" / HUB_DB)
        shutil.copy2(cfg.users_file, work / "users.yaml")
        if cfg.path and Path(cfg.path).is_file():
            (work / "config").mkdir()
            shutil.copy2(cfg.path, work / "config" / "hubstack.yaml")
        secrets = _secret_files(cfg)
        for name, path in secrets.items():
            write_private(work / "secrets" / name, path.read_text())
        _say(
            f"secrets: {len(secrets)} files in {dest}/secrets (mode 0600): they are SECRETS, "
            "keep the backup where only the platform's operators can read it"
        )
        certs = sorted(cfg.tls_dir.glob("[!.]*.pem")) if cfg.tls_dir.is_dir() else []
        for cert in certs:
            (work / "tls").mkdir(exist_ok=True)
            shutil.copy2(cert, work / "tls" / cert.name)
        if certs:
            _say(f"certificates: {', '.join(c.name for c in certs)} (the platform CA's)")
        releases = releases_dir(cfg)
        if releases.is_dir():
            shutil.copytree(releases, work / "releases")
            _say(f"releases: {sum(1 for _ in releases.glob('*.json'))} records")
        specs = sorted(cfg.user_envs_dir.glob("*.yaml")) if cfg.user_envs_dir.is_dir() else []
        for spec in specs:  # the images are rebuilt from these at the next start
            (work / "envs").mkdir(exist_ok=True)
            shutil.copy2(spec, work / "envs" / spec.name)
        if specs:
            _say(f"analysts' packages: {len(specs)} specs")
        if cfg.accounts_file.is_file():  # directory accounts seen at login (users list)
            write_private(work / "accounts.yaml", cfg.accounts_file.read_text())
        if cfg.oidc_ids_file.is_file():  # the UIDs OIDC people were given own their files
            write_private(work / "oidc-ids.yaml", cfg.oidc_ids_file.read_text())
        if homes:
            _say(f"homes: archiving {cfg.home_root}")
            with tarfile.open(work / "homes.tar.gz", "w:gz") as tar:
                for home in sorted(cfg.home_root.iterdir()):
                    tar.add(home, arcname=home.name)
            _say(f"homes: {_size(work / 'homes.tar.gz')}")
        if registry:
            volume = platform_volume(cfg, "registry-data")
            _platform_volume_here(client, volume, "registry storage")
            _say(f"registry: archiving {volume}")
            _archive_volume(
                client, cfg.registry.image, volume.name, REGISTRY_DIR, work / REGISTRY_ARCHIVE
            )
            _say(f"registry: {_size(work / REGISTRY_ARCHIVE)}")
        manifest = {
            "format": FORMAT,
            "hubstack": __version__,
            "created": timestamp(),
            "state_dir": str(cfg.state_dir),
            "project": project_name(cfg),
            "config": "config/hubstack.yaml" if (work / "config").exists() else None,
            "files": {
                p.relative_to(work).as_posix(): sha256(p)
                for p in sorted(work.rglob("*"))
                if p.is_file()
            },
        }
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2) + "\n")
        if dest.exists():
            dest.rmdir()
        work.rename(dest)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    return manifest


# --- restore -------------------------------------------------------------------------
def read_manifest(src: Path) -> dict:
    """The manifest, with every file checked against its checksum; errors name the file."""
    try:
        manifest = json.loads((src / MANIFEST).read_text())
    except FileNotFoundError:
        raise CommandError(f"{src} is not a hubstack backup: no {MANIFEST}") from None
    except json.JSONDecodeError as e:
        raise CommandError(f"{src / MANIFEST} is not valid JSON: {e}") from None
    if manifest.get("format") != FORMAT:
        raise CommandError(
            f"{src / MANIFEST}: backup format {manifest.get('format')!r}, this hubstack "
            f"reads format {FORMAT}"
        )
    problems = []
    for rel, digest in manifest.get("files", {}).items():
        path = src / rel
        if not path.is_file():
            problems.append(f"{rel} is missing")
        elif sha256(path) != digest:
            problems.append(f"{rel} does not match its checksum")
    for required in ("users.yaml", f"hub/{HUB_DB}"):
        if required not in manifest.get("files", {}):
            problems.append(f"{required} is not in the manifest")
    if problems:
        raise CommandError(f"backup {src} is damaged: " + "; ".join(problems))
    return manifest


def _refuse_to_overwrite(cfg: PlatformConfig, client, manifest: dict) -> None:
    problems = []
    running = client.containers.list(
        filters={"label": f"com.docker.compose.project={project_name(cfg)}"}
    )
    if running or any(c.status == "running" for c in notebook_containers(cfg, client)):
        problems.append(f"platform {project_name(cfg)} is running (`hubstack down` first)")
    elif cfg.cluster.mode == "swarm" and (swarm_stack.hub_state(cfg, client.api) or "").startswith(
        "running"
    ):
        problems.append(
            f"the hub's container {swarm_stack.hub_container_name(cfg)} is running "
            "(`hubstack down` first)"
        )
    for path in (cfg.users_file, cfg.secrets_dir):
        if path.exists():
            problems.append(f"{path} exists")
    if any(r.startswith("tls/") for r in manifest["files"]) and any(cfg.tls_dir.glob("*.pem")):
        problems.append(f"{cfg.tls_dir} holds certificates")
    volumes = [platform_volume(cfg, "hub-data")]
    if _registry_archive(manifest):
        volumes.append(platform_volume(cfg, "registry-data"))
    for volume in volumes:
        if volume.shared is None:
            if _volume(client, volume.name) is not None:
                problems.append(f"{volume} exists")
            continue
        # On shared storage: whether the folder holds the platform's data, not whether this
        # engine made the volume yet.
        _platform_volume_here(client, volume, volume.key)
        mount, held = (HUB_DB_DIR, HUB_DB) if volume.key == "hub-data" else (REGISTRY_DIR, "docker")
        if _holds(client, cfg.base.image, volume, mount, f"{mount}/{held}"):
            problems.append(f"{volume} holds {held}")
    releases = releases_dir(cfg)
    if any(r.startswith("releases/") for r in manifest["files"]) and (
        releases.is_dir() and any(releases.iterdir())
    ):
        problems.append(f"{releases} is not empty")
    if (
        "homes.tar.gz" in manifest["files"]
        and cfg.home_root.exists()
        and any(cfg.home_root.iterdir())
    ):
        problems.append(f"{cfg.home_root} is not empty")
    if problems:
        raise CommandError(
            "restore writes only where nothing is yet, and found: "
            + "; ".join(problems)
            + ". Restore onto a fresh state_dir (and project), or move those away first"
        )


def restore(cfg: PlatformConfig, src: Path) -> dict:
    src = src.absolute()
    manifest = read_manifest(src)
    _say(
        f"backup {src}: {len(manifest['files'])} files, checksums match "
        f"(taken {manifest['created']})"
    )
    client = docker_client()
    # The base image unpacks the volumes (and looks into those on shared storage first).
    bootstrap(cfg, client)
    _refuse_to_overwrite(cfg, client, manifest)
    cfg.state_dir.mkdir(parents=True, exist_ok=True)
    cfg.users_file.parent.mkdir(parents=True, exist_ok=True)
    write_private(cfg.users_file, (src / "users.yaml").read_text())
    # Only what the manifest lists, and so what its checksums vouched for.
    listed = sorted(rel for rel in manifest["files"] if rel.startswith("secrets/"))
    for secret in (src / rel for rel in listed):
        target = (
            cfg.registry_credentials_file
            if secret.name == REGISTRY_CREDENTIALS
            else cfg.secrets_dir / secret.name
        )
        write_private(target, secret.read_text())
    _say(f"users and secrets: {cfg.users_file}, {cfg.secrets_dir}")
    for rel in (r for r in manifest["files"] if r.startswith("tls/")):
        target = cfg.tls_dir / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    for rel in (r for r in manifest["files"] if r.startswith("releases/")):
        target = releases_dir(cfg) / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    for rel in (r for r in manifest["files"] if r.startswith("envs/")):
        target = cfg.user_envs_dir / Path(rel).name
        target.parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(src / rel, target)
    if "accounts.yaml" in manifest["files"]:
        write_private(cfg.accounts_file, (src / "accounts.yaml").read_text())
    if "oidc-ids.yaml" in manifest["files"]:
        write_private(cfg.oidc_ids_file, (src / "oidc-ids.yaml").read_text())
    db = io.BytesIO()
    with tarfile.open(fileobj=db, mode="w") as tar:
        tar.add(src / "hub" / HUB_DB, arcname=f"{Path(HUB_DB_DIR).name}/{HUB_DB}")
    hub_data = platform_volume(cfg, "hub-data")
    _fill_volume(cfg, client, hub_data, HUB_DB_DIR, db.getvalue())
    _say(f"hub database: {hub_data}")
    if "homes.tar.gz" in manifest["files"]:
        _restore_homes(cfg, src / "homes.tar.gz")
        _say(f"homes: {cfg.home_root}")
    registry_archive = _registry_archive(manifest)
    if registry_archive:
        registry_data = platform_volume(cfg, "registry-data")
        with (src / registry_archive).open("rb") as data:  # streamed: it can be large
            _fill_volume(cfg, client, registry_data, REGISTRY_DIR, data)
        _say(f"registry storage: {registry_data}")
    if manifest.get("config"):
        _say(
            f"the backup's platform config is {src / manifest['config']}; this restore used "
            f"{cfg.path or 'the defaults'}: the images, registry and hub keys should agree"
        )
    return manifest


def _restore_homes(cfg: PlatformConfig, archive: Path) -> None:
    """Unpack the homes into home_root with the analysts' numeric owners and modes; the
    'tar' filter refuses paths that leave the folder and strips setuid bits."""
    cfg.home_root.mkdir(parents=True, exist_ok=True, mode=0o755)
    with tarfile.open(archive, "r:gz") as tar:
        try:
            tar.extractall(cfg.home_root, numeric_owner=True, filter="tar")
        except tarfile.FilterError as e:
            raise CommandError(f"{archive}: refused: {e}") from None


# --- commands ------------------------------------------------------------------------
def cmd_backup(cfg: PlatformConfig, args) -> int:
    manifest = backup(cfg, Path(args.dir), homes=args.homes, registry=args.registry)
    _say(f"backup written: {Path(args.dir).absolute()} ({len(manifest['files'])} files)")
    return 0


def cmd_restore(cfg: PlatformConfig, args) -> int:
    restore(cfg, Path(args.dir))
    _say("restored; start the platform with `hubstack up`")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "backup",
        help="copy the hub database, users, config and secrets (and homes, registry) to DIR",
        description="Back up the platform while it runs: the hub database (SQLite backup "
        "API), users file, platform config and secrets, with a manifest of checksums. DIR "
        "holds secrets: keep it private.",
    )
    p.add_argument("dir", metavar="DIR", help="a new (or empty) folder for the backup")
    p.add_argument("--homes", action="store_true", help="include the analysts' homes")
    p.add_argument("--registry", action="store_true", help="include the registry's storage")
    p.set_defaults(func=cmd_backup)
    p = subparsers.add_parser(
        "restore",
        help="restore a backup onto a fresh state directory (platform stopped)",
        description="Check the backup's checksums, then write its users, secrets, hub "
        "database (and homes, registry storage) into this config's state directory and "
        "volumes. Refuses to overwrite anything that exists or a running platform.",
    )
    p.add_argument("dir", metavar="DIR", help="a folder written by `hubstack backup`")
    p.set_defaults(func=cmd_restore)

"""`hubstack nodes bundle DIR`: what an air-gapped node needs to join the platform's swarm,
in one folder to carry there.

- packages/: the engine's Debian packages (docker.io, containerd, runc) and the
  dependencies a node lacks, as apt resolves them against a reference system: the base
  image's dpkg status (the platform's bookworm root, what debian:bookworm-slim has), or
  the node's own (--node-status, its /var/lib/dpkg/status). Downloaded with
  `apt-get download` from this host's apt sources, so the node's architecture and release
  are this host's.
- certs.d/ADDRESS/ca.crt: the platform CA, for /etc/docker/certs.d (the registry's TLS), for
  each address a node pulls from (registry.pull_address, registry.users_address).
- images.tar: one `docker save` of the images the node's servers run (by profile; default
  every profile's image and the Spark executor), at the digest the registry holds for the
  tag, named as the node's engine pulls them (PULL_ADDRESS/NAMESPACE/NAME:TAG).
- install.sh (hubstack/node_install.sh) and bundle.env: install the packages with dpkg,
  place the CA, load the images, and print the swarm join step.
- manifest.json and SHA256SUMS: the sha256 of every file; install.sh checks them first.

No secret goes in: the join token is printed by `hubstack nodes join-command` on a
manager, and the pull account travels with each service (`--with-registry-auth`).

Everything is written into a temporary folder beside DIR and renamed to DIR at the end:
a failure (a registry without an image, apt without a package) leaves nothing behind.
"""

from __future__ import annotations

import io
import json
import os
import re
import shlex
import shutil
import subprocess
import tarfile
import tempfile
import time
from collections.abc import Callable, Iterable
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

import docker

from hubstack import __version__, tls
from hubstack.backup import sha256
from hubstack.config import PlatformConfig
from hubstack.engine import PLATFORM_LABEL
from hubstack.errors import CommandError
from hubstack.images.build import print_progress
from hubstack.registry import PUSH, RegistryClient, auth_config, node_addresses
from hubstack.spark import EXECUTOR_IMAGE

ENGINE_PACKAGES = ("docker.io", "containerd", "runc")
"""What a node needs of Debian: the engine (dockerd and the CLI), and what it runs on."""
INSTALL_SCRIPT = Path(__file__).with_name("node_install.sh")
SAVE_REPORT_EVERY = 5.0
"""Seconds between progress lines while the images are saved."""


@dataclass(frozen=True)
class DebPackage:
    name: str
    version: str
    arch: str

    @property
    def pin(self) -> str:
        """What `apt-get download` takes to fetch exactly this version."""
        return f"{self.name}={self.version}"


@dataclass(frozen=True)
class BundleImage:
    name: str
    """The image's name in the build graph (notebook, gpu, spark-executor)."""
    needed_by: tuple[str, ...]
    """Which profiles (or the Spark executors) run it: shown in the manifest and errors."""
    source: str = ""
    """REGISTRY/NAMESPACE/NAME@DIGEST: what this host's engine pulls from the push instance."""
    target: str = ""
    """PULL_ADDRESS/NAMESPACE/NAME:TAG: the name the node's engine knows it by."""
    digest: str = ""


# --- the plan: which images, which packages ---------------------------------------------
def needed_images(cfg: PlatformConfig, profiles: Iterable[str] = ()) -> list[BundleImage]:
    """The images a node running PROFILES needs (none named: every profile, and the Spark
    executor, which runs the analysts' Spark workers), each once, with who needs it."""
    names = list(dict.fromkeys(profiles))
    try:
        chosen = [cfg.profile(name) for name in names] if names else list(cfg.profiles)
    except KeyError as e:
        raise CommandError(f"--profile: {e.args[0]}") from None
    needs: dict[str, list[str]] = {}
    for profile in chosen:
        needs.setdefault(profile.image, []).append(f"profile {profile.name}")
        if profile.spark:
            needs.setdefault(EXECUTOR_IMAGE, []).append(f"profile {profile.name}'s executors")
    if not names:
        needs.setdefault(EXECUTOR_IMAGE, []).append("Spark executors")
    return [BundleImage(name, tuple(why)) for name, why in needs.items()]


def apt_resolve_command(status_file: Path) -> list[str]:
    """apt's own answer to "what would installing the engine add to a system whose dpkg
    status is STATUS_FILE": a simulation, nothing is installed or changed."""
    return [
        *("apt-get", "--simulate", "--quiet", "--no-install-recommends"),
        *("-o", f"Dir::State::status={status_file}"),
        *("install", *ENGINE_PACKAGES),
    ]


# `Inst NAME [OLD] (VERSION RELEASE[, RELEASE] [ARCH])`: OLD only for an upgrade.
_INST = re.compile(r"^Inst (\S+) (?:\[[^\]]*\] )?\((\S+) .*\[([a-z0-9-]+)\]\)")


def parse_simulated_install(output: str) -> list[DebPackage]:
    """The packages an `apt-get --simulate install` would install or upgrade, in its order."""
    found = []
    for line in output.splitlines():
        m = _INST.match(line)
        if m:
            found.append(DebPackage(*m.groups()))
    return found


def resolve_packages(status_file: Path, run=subprocess.run) -> list[DebPackage]:
    proc = run(apt_resolve_command(status_file), capture_output=True, text=True)
    if proc.returncode != 0:
        why = "\n".join((proc.stderr or proc.stdout).strip().splitlines()[-6:])
        raise CommandError(
            f"apt cannot resolve {', '.join(ENGINE_PACKAGES)} for the node: {why}\n"
            "(on this host: apt-get update; the bundle's packages come from its apt sources)"
        )
    packages = parse_simulated_install(proc.stdout)
    if not packages:
        raise CommandError(
            "the reference system has the engine already (apt would install nothing): give "
            "the node's own dpkg status with --node-status, or leave the packages out with "
            "--no-packages"
        )
    return packages


def base_image_status(cfg: PlatformConfig, client: docker.DockerClient, into: Path) -> Path:
    """The base image's /var/lib/dpkg/status (what a minimal bookworm has), copied to INTO,
    from a container created and never started."""
    try:
        created = client.api.create_container(
            cfg.base.image, command=["true"], labels={PLATFORM_LABEL: ""}
        )
    except docker.errors.ImageNotFound:
        raise CommandError(
            f"the base image {cfg.base.image} is not on this engine: run `hubstack up` first, "
            "or give the node's own dpkg status with --node-status FILE"
        ) from None
    try:
        stream, _ = client.api.get_archive(created["Id"], "/var/lib/dpkg/status")
        with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
            member = tar.extractfile("status")
            assert member is not None
            into.write_bytes(member.read())
    finally:
        client.api.remove_container(created["Id"], force=True)
    return into


def download_packages(packages: list[DebPackage], into: Path, run=subprocess.run) -> None:
    into.mkdir(parents=True, exist_ok=True)
    # As root into a folder apt's sandbox user (_apt) cannot write: say so, not warn.
    cmd = ["apt-get", "download", "--quiet", "-o", "APT::Sandbox::User=root"]
    proc = run([*cmd, *(p.pin for p in packages)], cwd=into, capture_output=True, text=True)
    if proc.returncode != 0:
        why = "\n".join(proc.stderr.strip().splitlines()[-6:])
        raise CommandError(
            f"apt-get download failed: {why}\n(on this host: apt-get update, then again)"
        )


# --- images -----------------------------------------------------------------------------
def resolve_images(cfg: PlatformConfig, images: list[BundleImage], tag: str) -> list[BundleImage]:
    """Each image at the digest the registry holds for TAG, or one error naming every one
    the registry lacks (and who needs it)."""
    registry = RegistryClient(cfg)
    out, missing = [], []
    for image in images:
        digest = registry.digest(image.name, tag)
        if digest is None:
            who = ", ".join(image.needed_by)
            missing.append(f"{cfg.repository_path(image.name)}:{tag} ({who})")
            continue
        out.append(
            BundleImage(
                image.name,
                image.needed_by,
                source=f"{cfg.image_repository(image.name)}@{digest}",
                target=f"{cfg.pull_repository(image.name)}:{tag}",
                digest=digest,
            )
        )
    if missing:
        raise CommandError(
            f"the registry {registry.address} has no {'; no '.join(missing)}. Build and push "
            "it (`hubstack up`, or `hubstack images build NAME` and `hubstack images push "
            "NAME`), choose another tag with --tag, or name the profiles the node serves "
            "with --profile"
        )
    return out


def fetch_images(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    images: list[BundleImage],
    progress: Callable[[str], None],
) -> list[str]:
    """Make sure this host's engine holds each image at its digest (a pull with the push
    account: only what it lacks is downloaded), named as the node will know it. Returns the
    names added, for untagging afterwards."""
    added = []
    for image in images:
        repository, digest = image.source.split("@", 1)
        progress(f"{image.name}: {image.source}")
        for event in client.api.pull(
            repository, tag=digest, auth_config=auth_config(cfg, PUSH), stream=True, decode=True
        ):
            if "error" in event or "errorDetail" in event:
                msg = (event.get("errorDetail") or {}).get("message") or event.get("error")
                raise CommandError(f"pull of {image.source} failed: {msg}")
        image_id = client.images.get(image.source).id
        try:
            known = client.images.get(image.target).id == image_id
        except docker.errors.ImageNotFound:
            known = False
        if not known:
            target_repo, target_tag = image.target.rsplit(":", 1)
            client.api.tag(image_id, target_repo, target_tag)
            added.append(image.target)
    return added


def save_images(
    client: docker.DockerClient,
    names: list[str],
    into: Path,
    progress: Callable[[str], None],
) -> int:
    """One `docker save` of NAMES (each layer once) to INTO, with a line every few seconds."""
    api = client.api
    # docker-py saves one image per call; the engine's endpoint takes several (names=...).
    response = api._get(api._url("/images/get"), params={"names": names}, stream=True)
    api._raise_for_status(response)
    written, last = 0, time.monotonic()
    with open(into, "wb") as out:
        for chunk in response.iter_content(chunk_size=1 << 20):
            out.write(chunk)
            written += len(chunk)
            if time.monotonic() - last >= SAVE_REPORT_EVERY:
                progress(f"images.tar: {written / 1e6:.0f} MB so far")
                last = time.monotonic()
    return written


# --- the folder -------------------------------------------------------------------------
def _managers(client: docker.DockerClient) -> list[str]:
    """The swarm's manager addresses when this engine is in one (not secret; the token is)."""
    swarm = client.info().get("Swarm") or {}
    return [m["Addr"] for m in swarm.get("RemoteManagers") or []]


def bundle_env(cfg: PlatformConfig, arch: str, images: list[str], managers: list[str]) -> str:
    values = {
        "PULL_ADDRESS": cfg.registry.pull_address,
        "CA_ADDRESSES": " ".join(node_addresses(cfg)),
        "ARCH": arch,
        "IMAGES": " ".join(images),
        "MANAGERS": " ".join(managers),
    }
    lines = ["# Written by `hubstack nodes bundle`, read by install.sh. No secret here."]
    lines += [f"{key}={shlex.quote(value)}" for key, value in values.items()]
    return "\n".join(lines) + "\n"


def host_arch(run=subprocess.run) -> str:
    return run(["dpkg", "--print-architecture"], capture_output=True, text=True).stdout.strip()


def write_bundle(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    target: Path,
    profiles: Iterable[str] = (),
    tag: str | None = None,
    packages: bool = True,
    node_status: Path | None = None,
    progress: Callable[[str], None] = print_progress,
) -> dict:
    """Write the bundle to TARGET (a folder that must not exist yet); returns its manifest."""
    target = target.resolve()
    if target.exists():
        raise CommandError(f"{target} exists already: give a new folder for the bundle")
    if not target.parent.is_dir():
        raise CommandError(f"{target.parent} is not a folder")
    if node_status is not None and not node_status.is_file():
        raise CommandError(f"--node-status {node_status}: no such file")
    tag = tag or cfg.hub.notebook_image_tag
    started = time.monotonic()

    def say(line: str) -> None:
        progress(f"[bundle] {line} (+{time.monotonic() - started:.0f}s)")

    # Checked first, before anything is written or downloaded.
    images = resolve_images(cfg, needed_images(cfg, profiles), tag)
    work = Path(tempfile.mkdtemp(prefix=f".{target.name}.partial-", dir=target.parent))
    added: list[str] = []
    try:
        deb_list: list[DebPackage] = []
        if packages:
            status = node_status or base_image_status(cfg, client, work / "status")
            deb_list = resolve_packages(status)
            if node_status is None:
                (work / "status").unlink()
            say(
                f"packages: {len(deb_list)} to download (apt, against "
                f"{node_status or cfg.base.image + ' as the node'}): "
                + ", ".join(p.name for p in deb_list)
            )
            download_packages(deb_list, work / "packages")
        ca_pem = tls.platform_ca(cfg).certificate_pem()
        for address in node_addresses(cfg):  # the blessed images' and the per-user images'
            ca = work / "certs.d" / address / "ca.crt"
            ca.parent.mkdir(parents=True)
            ca.write_text(ca_pem)
            say(f"platform CA: certs.d/{address}/ca.crt")
        say(f"images: pulling {len(images)} at {tag} from {cfg.registry.address}")
        added = fetch_images(cfg, client, images, progress=say)
        say(f"images: saving {', '.join(i.target for i in images)}")
        size = save_images(client, [i.target for i in images], work / "images.tar", say)
        say(f"images.tar: {size / 1e6:.0f} MB")
        shutil.copyfile(INSTALL_SCRIPT, work / "install.sh")
        (work / "install.sh").chmod(0o755)
        arch = host_arch()
        (work / "bundle.env").write_text(
            bundle_env(cfg, arch, [i.target for i in images], _managers(client))
        )
        files = {
            str(p.relative_to(work)): {"sha256": sha256(p), "size": p.stat().st_size}
            for p in sorted(work.rglob("*"))
            if p.is_file()
        }
        manifest = {
            "created": datetime.now(UTC).isoformat(timespec="seconds"),
            "hubstack": __version__,
            "arch": arch,
            "pull_address": cfg.registry.pull_address,
            "tag": tag,
            "packages": [asdict(p) for p in deb_list],
            "images": [
                {"name": i.name, "reference": i.target, "digest": i.digest, "for": i.needed_by}
                for i in images
            ],
            "files": files,
        }
        (work / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
        sums = {name: str(entry["sha256"]) for name, entry in files.items()}
        sums["manifest.json"] = sha256(work / "manifest.json")
        (work / "SHA256SUMS").write_text("".join(f"{h}  {k}\n" for k, h in sorted(sums.items())))
        work.chmod(0o755)  # mkdtemp's 0700 would keep it from whoever copies it on
        os.rename(work, target)
    except BaseException:
        shutil.rmtree(work, ignore_errors=True)
        raise
    finally:
        for name in added:  # the host engine keeps its own names only
            try:
                client.api.remove_image(name, noprune=True)
            except docker.errors.APIError:
                pass
    say(f"written: {target} (run install.sh there as root)")
    return manifest

"""Make sure the two images everything starts from exist: the Debian base and the registry.

Online sites pull them. Offline sites (no registry reachable) get a genuine
Debian root made with debootstrap and imported under the configured base name,
and a registry:2-compatible image built from Debian's docker-registry package
under the configured registry name. The same config serves both worlds.
"""

from __future__ import annotations

import shutil
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import docker

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.build import print_progress


def _have(client: docker.DockerClient, ref: str) -> bool:
    try:
        client.images.get(ref)
        return True
    except docker.errors.ImageNotFound:
        return False


def _try_pull(client: docker.DockerClient, ref: str, progress: Callable[[str], None]) -> bool:
    progress(f"{ref}: pulling")
    try:
        client.images.pull(ref)
        return True
    except docker.errors.APIError as e:
        progress(
            f"{ref}: cannot be pulled ({str(e.explanation or e).splitlines()[0][:160]}); building "
            "it offline"
        )
        return False


def _ensure_debootstrap(progress: Callable[[str], None]) -> str:
    found = shutil.which("debootstrap")
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise CommandError(
            "debootstrap is needed to make the Debian root offline; install it (Debian: apt-get "
            "install debootstrap)"
        )
    progress("installing debootstrap with apt-get")
    proc = subprocess.run(
        ["apt-get", "install", "-y", "-q", "debootstrap"], capture_output=True, text=True
    )
    if proc.returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True)
        proc = subprocess.run(
            ["apt-get", "install", "-y", "-q", "debootstrap"], capture_output=True, text=True
        )
    if proc.returncode != 0 or not shutil.which("debootstrap"):
        raise CommandError(f"could not install debootstrap: {proc.stderr.strip()[-300:]}")
    return shutil.which("debootstrap") or "debootstrap"


def debootstrap_base(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    progress: Callable[[str], None] = print_progress,
) -> str:
    """Make a minbase Debian root and import it as cfg.base.image; returns the image id."""
    debootstrap = _ensure_debootstrap(progress)
    started = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="hubstack-rootfs-") as tmp:
        rootfs = Path(tmp) / "rootfs"
        progress(
            f"{cfg.base.image}: debootstrap --variant=minbase {cfg.base.suite} from "
            f"{cfg.base.debian_mirror} (about 30 s)"
        )
        proc = subprocess.Popen(
            [debootstrap, "--variant=minbase", cfg.base.suite, str(rootfs), cfg.base.debian_mirror],
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        tail: list[str] = []
        assert proc.stdout is not None  # stdout=PIPE
        for line in proc.stdout:
            tail = (tail + [line.rstrip()])[-20:]
            if (
                line.startswith("I: Retrieving")
                or line.startswith("I: Installing core")
                or line.startswith("I: Base system")
            ):
                progress(f"{cfg.base.image}:   {line.strip()}")
        if proc.wait() != 0:
            raise CommandError("debootstrap failed:\n" + "\n".join(tail))
        # Drop the apt lists debootstrap leaves, as debian:*-slim does.
        shutil.rmtree(rootfs / "var/lib/apt/lists", ignore_errors=True)
        (rootfs / "var/lib/apt/lists/partial").mkdir(parents=True, exist_ok=True)
        repo, _, tag = (
            cfg.base.image.rpartition(":")
            if ":" in cfg.base.image.split("/")[-1]
            else (cfg.base.image, "", "latest")
        )
        progress(f"{cfg.base.image}: importing the root into the engine")
        tar = subprocess.Popen(
            ["tar", "-C", str(rootfs), "--numeric-owner", "-c", "."], stdout=subprocess.PIPE
        )
        assert tar.stdout is not None  # stdout=PIPE
        try:
            client.api.import_image(src=tar.stdout, repository=repo, tag=tag)
        finally:
            tar.stdout.close()
            tar.wait()
    image_id = client.images.get(cfg.base.image).id
    progress(
        f"{cfg.base.image}: made offline in {time.monotonic() - started:.0f}s ({image_id[7:19]})"
    )
    return image_id


def build_registry_image(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    progress: Callable[[str], None] = print_progress,
) -> str:
    """Build registry/Dockerfile (Debian's docker-registry) and tag it as cfg.registry.image."""
    context = cfg.source_root / "registry"
    if not (context / "Dockerfile").is_file():
        raise CommandError(
            f"{context}/Dockerfile is missing: cannot build the registry image offline"
        )
    progress(f"{cfg.registry.image}: building from {context} (Debian's docker-registry)")
    try:
        image, _ = client.images.build(
            path=str(context),
            tag=cfg.registry.image,
            buildargs={"BASE_IMAGE": cfg.base.image},
            rm=True,
            forcerm=True,
            pull=False,
        )
    except docker.errors.BuildError as e:
        log = "\n".join(str(c.get("stream", c.get("error", ""))).rstrip() for c in e.build_log)[
            -1500:
        ]
        raise CommandError(f"building the registry image failed: {e.msg}\n{log}") from None
    progress(f"{cfg.registry.image}: built ({image.id[7:19]})")
    return image.id


def bootstrap(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    progress: Callable[[str], None] = print_progress,
) -> None:
    """Ensure the base and registry images exist: present, else pulled, else built offline."""
    mode = cfg.base.bootstrap
    for ref, build_offline in (
        (cfg.base.image, debootstrap_base),
        (cfg.registry.image, build_registry_image),
    ):
        if _have(client, ref) and not (mode == "always" and ref == cfg.base.image):
            progress(f"{ref}: present")
        elif mode == "always" or not _try_pull(client, ref, progress):
            if mode == "never":
                raise CommandError(f"{ref} cannot be pulled and base.bootstrap is 'never'")
            build_offline(cfg, client, progress)

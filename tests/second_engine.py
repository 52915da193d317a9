"""A second, real Docker engine beside the main one, for tests that need an engine of their
own: an empty image store (a fresh node), or a data root on a small tmpfs (a disk that
really fills)."""

from __future__ import annotations

import contextlib
import itertools
import shutil
import subprocess
import tempfile
import time
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from tests.conftest import SESSION_ID

_engines = itertools.count()


@contextlib.contextmanager
def second_engine(data_size: str | None = None) -> Iterator[docker.DockerClient]:
    """A dockerd with its own data root, exec root, socket and bridge, and no iptables rules,
    so the main engine is untouched (not `--bridge none`: that deletes docker0, the main
    engine's bridge). DATA_SIZE (e.g. "400m"): the data root is a tmpfs of that size.
    Stopped and removed afterwards, even when it failed to start."""
    n = next(_engines)
    root = Path(tempfile.mkdtemp(prefix="hs-engine-"))  # short: unix socket paths are too
    sock = root / "docker.sock"
    bridge = f"hse{SESSION_ID}{n}"
    # A subnet of the benchmarking range per session and engine, so none ever clash.
    subnet = (int(SESSION_ID, 16) + n) % 250 + 1
    if data_size:
        (root / "data").mkdir()
        mount = ["mount", "-t", "tmpfs", "-o", f"size={data_size}", "tmpfs", str(root / "data")]
        subprocess.run(mount, check=True)
    subprocess.run(["ip", "link", "add", bridge, "type", "bridge"], check=True)
    subprocess.run(["ip", "addr", "add", f"198.18.{subnet}.1/24", "dev", bridge], check=True)
    subprocess.run(["ip", "link", "set", bridge, "up"], check=True)
    log = open(root / "log", "wb")
    proc = subprocess.Popen(
        ["dockerd", "--data-root", str(root / "data"), "--exec-root", str(root / "exec")]
        + ["--pidfile", str(root / "pid"), "-H", f"unix://{sock}", "--bridge", bridge]
        + ["--iptables=false", "--ip-masq=false"],
        stdout=log,
        stderr=subprocess.STDOUT,
    )
    client = None
    try:
        deadline = time.monotonic() + 60
        while client is None:
            try:
                # Made inside the loop: the client asks the engine its API version when created.
                client = docker.DockerClient(base_url=f"unix://{sock}", timeout=600)
            except docker.errors.DockerException:
                if time.monotonic() > deadline or proc.poll() is not None:
                    pytest.fail(
                        "second engine did not start:\n" + (root / "log").read_text()[-2000:]
                    )
                time.sleep(0.5)
        yield client
    finally:
        if client is not None:
            client.close()
        proc.terminate()
        proc.wait(60)
        log.close()
        # Whatever the engine left mounted under its roots (its tmpfs data root, and the
        # netns file dockerd keeps under exec/netns even after a clean stop).
        with open("/proc/mounts") as mounts:
            inside = [m.split()[1] for m in mounts if m.split()[1].startswith(f"{root}/")]
        for mountpoint in sorted(inside, reverse=True):
            subprocess.run(["umount", "-l", mountpoint], check=False)
        subprocess.run(["ip", "link", "del", bridge], check=False)
        shutil.rmtree(root, ignore_errors=True)

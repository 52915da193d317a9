"""GPU grants for notebook containers.

The spawner calls, for a profile with gpus > 0::

    async with allocator.reserve(owner=username, count=profile.gpus) as grant:
        # create the container with grant.labels, grant.environment and
        # grant.host_config merged into its spec, inside the block
        ...

reserve() raises GPUUnavailable (a clear, user-facing message) at once when
the platform has no GPU or none is free. Assignments are read back from the
containers' labels, so they survive a hub restart.

Two ways to hand a GPU to a container (``gpu.mode`` in the platform config):

- ``device-requests``: Docker's device requests, what ``docker run --gpus``
  sends. Needs the NVIDIA container toolkit (the engine lists an ``nvidia``
  runtime); the toolkit's hook adds device nodes and driver libraries.
- ``device-nodes``: no toolkit. The container gets the GPU's device nodes
  (``/dev/nvidiaN`` plus the control nodes), the driver folder mounted
  read-only, and PATH/LD_LIBRARY_PATH pointing into it. The device nodes are
  what grants the GPU: without them ``cuInit`` fails with "no device".

Neither way needs root, capabilities or the Docker socket in the container:
the spawner keeps the analyst's UID:GID, ``cap_drop=ALL`` and
``no-new-privileges`` for GPU containers exactly as for the others.

Inside a container the granted GPUs are numbered from 0 (only their device
nodes are there), so CUDA_VISIBLE_DEVICES lists container ordinals 0..n-1,
while NVIDIA_VISIBLE_DEVICES and the ``io.hubstack.gpus`` label name the host
GPU indices.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import weakref
from collections.abc import AsyncIterator, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, TypeVar

import docker
from docker.types import DeviceRequest

from hubstack.config import PlatformConfig, ProfileConfig
from hubstack.hub import container_spec

# Labels on every GPU container: they ARE the allocation table.
LABEL_GPUS = "io.hubstack.gpus"
LABEL_GPU_MODE = "io.hubstack.gpu-mode"

MODE_DEVICE_REQUESTS = "device-requests"
MODE_DEVICE_NODES = "device-nodes"

# Control nodes the driver needs besides /dev/nvidiaN (those present are passed).
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools", "nvidia-modeset")

# Container states that hold their GPUs. "created" counts: the spawner creates
# inside reserve() and starts after it, and a created container will use them.
HOLDING_STATES = frozenset({"created", "running", "restarting", "paused"})

# PATH of the hubstack images (venv first); the grant appends the driver's bin.
DEFAULT_IMAGE_PATH = "/opt/venv/bin:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"

_GPU_NODE = re.compile(r"^nvidia(\d+)$")


class GPUUnavailable(Exception):
    """No GPU can be granted; the message is shown to the analyst."""


# ---------------------------------------------------------------- detection


def detect_gpu_indices(scan_root: str | os.PathLike = "/dev") -> list[int]:
    """Indices N of the /dev/nvidiaN device nodes under scan_root, sorted."""
    root = Path(scan_root)
    try:
        names = [p.name for p in root.iterdir()]
    except OSError:
        return []
    return sorted(int(m.group(1)) for n in names if (m := _GPU_NODE.match(n)))


def gpu_indices(cfg: PlatformConfig, scan_root: str | os.PathLike = "/dev") -> list[int]:
    """The GPUs this node offers: gpu.count from the config, or the detected device nodes."""
    if cfg.gpu.count == "auto":
        return detect_gpu_indices(scan_root)
    return list(range(cfg.gpu.count))


def detect_mode(cfg: PlatformConfig, client: Any) -> str:
    """gpu.mode, or for auto: device requests where the engine has the NVIDIA runtime."""
    if cfg.gpu.mode != "auto":
        return cfg.gpu.mode
    runtimes = _api(client).info().get("Runtimes") or {}
    return MODE_DEVICE_REQUESTS if "nvidia" in runtimes else MODE_DEVICE_NODES


def offered_profiles(
    cfg: PlatformConfig, scan_root: str | os.PathLike = "/dev"
) -> list[ProfileConfig]:
    """Profiles to show in the spawn form: those asking for GPUs only where GPUs exist."""
    have = len(gpu_indices(cfg, scan_root))
    return [p for p in cfg.profiles if p.gpus <= have]


def no_gpu_message(
    profile_name: str | None, count: int, cfg: PlatformConfig, scan_root: str | os.PathLike
) -> str:
    what = f"the profile {profile_name!r}" if profile_name else "this server"
    if cfg.gpu.count == "auto":
        why = f"gpu.count is auto and no {Path(scan_root) / 'nvidia[0-9]*'} device node exists"
    else:
        why = "gpu.count is 0 in the platform config"
    plural = "s" if count != 1 else ""
    return (
        f"{what} needs {count} GPU{plural}, but this platform has no GPU ({why}); "
        "choose another profile"
    )


# ---------------------------------------------------------- container specs


def device_nodes_host_config(
    indices: Iterable[int],
    devices_root: str | os.PathLike,
    driver_dir: str | os.PathLike,
    scan_root: str | os.PathLike | None = None,
) -> dict[str, Any]:
    """create_host_config() kwargs for the device-node way (no NVIDIA toolkit).

    Each granted /dev/nvidiaN keeps its name inside the container (as the
    toolkit does); the control nodes present on the host are added; the driver
    folder is bound read-only at the same path. ``binds`` is in docker-py's dict
    form so it deep-merges with the spawner's home bind.
    """
    devices_root, scan_root = Path(devices_root), Path(scan_root or devices_root)
    devices = [f"{devices_root / f'nvidia{i}'}:/dev/nvidia{i}:rwm" for i in indices]
    devices += [
        f"{devices_root / n}:/dev/{n}:rwm" for n in CONTROL_NODES if (scan_root / n).exists()
    ]
    driver = str(driver_dir)
    return {"devices": devices, "binds": {driver: {"bind": driver, "mode": "ro"}}}


def device_requests_host_config(indices: Iterable[int]) -> dict[str, Any]:
    """create_host_config() kwargs for device requests (what `docker run --gpus` sends)."""
    ids = [str(i) for i in indices]
    return {
        "device_requests": [DeviceRequest(driver="nvidia", device_ids=ids, capabilities=[["gpu"]])]
    }


def gpu_environment(
    indices: Iterable[int | str],
    mode: str,
    driver_dir: str | os.PathLike,
    base_path: str = DEFAULT_IMAGE_PATH,
) -> dict[str, str]:
    """Environment for the grant: host indices (on a swarm, the GPUs' names as the node
    advertises them, UUIDs) for NVIDIA_*, container ordinals for CUDA_*."""
    indices = list(indices)
    env = {
        "NVIDIA_VISIBLE_DEVICES": ",".join(str(i) for i in indices),
        "CUDA_VISIBLE_DEVICES": ",".join(str(n) for n in range(len(indices))),
        # compute: libcuda; utility: nvidia-smi/NVML (read by the toolkit's hook).
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    }
    if mode == MODE_DEVICE_NODES:
        driver = str(driver_dir)
        # PATH replaces the image's PATH, so it restates it (base_path) and appends the driver.
        env["PATH"] = f"{base_path}:{driver}/bin"
        env["LD_LIBRARY_PATH"] = f"{driver}/lib64:{driver}/lib"
    return env


@dataclass(frozen=True)
class GPUGrant:
    """What the spawner merges into the container it creates inside reserve()."""

    owner: str
    indices: tuple[int, ...]
    mode: str
    labels: dict[str, str] = field(default_factory=dict)
    environment: dict[str, str] = field(default_factory=dict)
    host_config: dict[str, Any] = field(default_factory=dict)
    """Keyword arguments for APIClient.create_host_config (DockerSpawner.extra_host_config)."""


def make_grant(
    owner: str,
    indices: Iterable[int],
    mode: str,
    *,
    devices_root: str | os.PathLike = "/dev",
    driver_dir: str | os.PathLike = "/usr/local/nvidia",
    scan_root: str | os.PathLike | None = None,
    base_path: str = DEFAULT_IMAGE_PATH,
    extra_labels: dict[str, str] | None = None,
) -> GPUGrant:
    """The full GPU part of a container spec for the given host GPUs, in either mode."""
    indices = tuple(indices)
    if mode == MODE_DEVICE_NODES:
        host_config = device_nodes_host_config(indices, devices_root, driver_dir, scan_root)
    elif mode == MODE_DEVICE_REQUESTS:
        host_config = device_requests_host_config(indices)
    else:
        raise ValueError(
            f"unknown GPU mode {mode!r} (expected {MODE_DEVICE_REQUESTS} or {MODE_DEVICE_NODES})"
        )
    labels = {
        **(extra_labels or {}),
        container_spec.USER_LABEL: owner,
        LABEL_GPUS: ",".join(map(str, indices)),
        LABEL_GPU_MODE: mode,
    }
    return GPUGrant(
        owner,
        indices,
        mode,
        labels,
        gpu_environment(indices, mode, driver_dir, base_path),
        host_config,
    )


# --------------------------------------------------------------- allocation


G = TypeVar("G", int, str)


def choose_gpus(
    gpus: Sequence[G], held: Iterable[G], count: int, shared: bool = False
) -> list[G] | None:
    """The picking rule, for the GPUs of one machine (GPUS, in their order) of which HELD
    are held (a GPU once per holder): the first COUNT free ones, or None when fewer are
    free. With SHARED (gpu.shared), the COUNT least-loaded ones, never None. The
    single-host allocator and the Swarm spawner's (hubstack.hub.swarm_gpu) both use it."""
    load = dict.fromkeys(gpus, 0)
    for g in held:
        if g in load:
            load[g] += 1
    if shared:
        order = {g: i for i, g in enumerate(gpus)}
        return sorted(gpus, key=lambda g: (load[g], order[g]))[:count]
    free = [g for g in gpus if load[g] == 0]
    return free[:count] if len(free) >= count else None


class HubLock:
    """One lock per hub process for every GPU choice, the single-host allocator's and the
    Swarm spawner's: `async with hub_lock:`. JupyterHub runs one event loop; each loop
    (tests run several, one after another) gets an asyncio.Lock of its own."""

    def __init__(self) -> None:
        self._locks: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, asyncio.Lock] = (
            weakref.WeakKeyDictionary()
        )

    def _lock(self) -> asyncio.Lock:
        loop = asyncio.get_running_loop()
        lock = self._locks.get(loop)
        if lock is None:
            lock = self._locks[loop] = asyncio.Lock()
        return lock

    def locked(self) -> bool:
        return self._lock().locked()

    async def __aenter__(self) -> None:
        await self._lock().acquire()

    async def __aexit__(self, *exc: object) -> None:
        self._lock().release()


hub_lock = HubLock()


@dataclass(frozen=True)
class GPUHolder:
    gpu: int
    user: str
    container: str
    state: str


def _api(client: Any) -> docker.APIClient:
    # Accept docker.DockerClient (has .api) or the low-level APIClient DockerSpawner uses.
    return getattr(client, "api", client)


def gpu_holders(client: Any, scope_labels: dict[str, str] | None = None) -> list[GPUHolder]:
    """Who holds which GPU, read from the labels of containers that still hold them."""
    filters = [LABEL_GPUS] + [f"{k}={v}" for k, v in (scope_labels or {}).items()]
    holders = []
    for c in _api(client).containers(all=True, filters={"label": filters}):
        if c.get("State") not in HOLDING_STATES:
            continue  # a stopped or culled server has freed its GPUs
        labels = c.get("Labels") or {}
        name = (c.get("Names") or ["?"])[0].lstrip("/")
        for part in labels.get(LABEL_GPUS, "").split(","):
            if part.strip().isdigit():
                holders.append(
                    GPUHolder(
                        int(part), labels.get(container_spec.USER_LABEL, "?"), name, c["State"]
                    )
                )
    return sorted(holders, key=lambda h: (h.gpu, h.user))


def format_gpu_status(
    cfg: PlatformConfig,
    client: Any,
    scan_root: str | os.PathLike = "/dev",
    scope_labels: dict[str, str] | None = None,
) -> list[str]:
    """Lines for `hubstack status` / `hubstack gpus`: each GPU and who holds it."""
    gpus = gpu_indices(cfg, scan_root)
    holders = gpu_holders(client, scope_labels)
    if not gpus and not holders:
        return ["GPUs: none on this node"]
    by_gpu: dict[int, list[GPUHolder]] = {}
    for h in holders:
        by_gpu.setdefault(h.gpu, []).append(h)
    lines = [
        f"GPUs: {len(gpus)} ({detect_mode(cfg, client)}), {sum(1 for g in gpus if g in by_gpu)} "
        "busy"
    ]
    for g in sorted(set(gpus) | set(by_gpu)):
        held = by_gpu.get(g)
        who = ", ".join(f"{h.user} ({h.container}, {h.state})" for h in held) if held else "free"
        lines.append(f"  GPU {g}: {who}")
    return lines


class GPUAllocator:
    """Hands out the node's GPUs, one analyst per GPU unless gpu.shared is set.

    No allocation table is kept in memory: the running and created containers'
    labels are the table, so a restarted hub sees the same assignments, and a
    stopped, culled or removed server frees its GPUs by itself. Reservations
    are serialized by hub_lock (one per hub process, shared with the Swarm
    spawner's hubstack.hub.swarm_gpu), held until the spawner has created the
    container.
    """

    def __init__(
        self,
        cfg: PlatformConfig,
        client: Any,
        devices_root: str | os.PathLike = "/dev",
        scan_root: str | os.PathLike | None = None,
        scope_labels: dict[str, str] | None = None,
    ):
        self.cfg = cfg
        self.api = _api(client)
        # devices_root: where the engine's host has the nodes (paths given to the engine);
        # scan_root: where this process sees them (e.g. the host's /dev mounted into the hub).
        self.devices_root = Path(devices_root)
        self.scan_root = Path(scan_root or devices_root)
        # Labels added to every grant and required when reading assignments back
        # (tests use them so parallel sessions on one engine don't see each other).
        self.scope_labels = dict(scope_labels or {})
        self._mode: str | None = None

    @property
    def gpus(self) -> list[int]:
        return gpu_indices(self.cfg, self.scan_root)

    @property
    def mode(self) -> str:
        if self._mode is None:
            self._mode = detect_mode(self.cfg, self.api)
        return self._mode

    def holders(self) -> list[GPUHolder]:
        return gpu_holders(self.api, self.scope_labels)

    def check(self, count: int, profile_name: str | None = None) -> None:
        """Refuse at once (GPUUnavailable) a request this node can never satisfy."""
        gpus = self.gpus
        if not gpus:
            raise GPUUnavailable(no_gpu_message(profile_name, count, self.cfg, self.scan_root))
        if count > len(gpus):
            raise GPUUnavailable(
                f"{'the profile ' + repr(profile_name) if profile_name else 'this server'} needs "
                f"{count} GPUs, "
                f"but this node has only {len(gpus)}; ask the platform team to lower the profile's "
                "gpus"
            )

    def _choose(self, count: int, holders: list[GPUHolder]) -> list[int]:
        gpus = self.gpus
        chosen = choose_gpus(gpus, [h.gpu for h in holders], count, self.cfg.gpu.shared)
        if chosen is None:
            busy = len(set(gpus) & {h.gpu for h in holders})
            need = f"{count} GPUs" if count > 1 else "a GPU"
            raise GPUUnavailable(
                f"no GPU free: {busy} of {len(gpus)} busy (this server needs {need}); "
                "try again when another analyst's GPU server stops, or choose another profile"
            )
        return chosen

    @contextlib.asynccontextmanager
    async def reserve(
        self,
        owner: str,
        count: int,
        profile_name: str | None = None,
        base_path: str = DEFAULT_IMAGE_PATH,
    ) -> AsyncIterator[GPUGrant]:
        """Grant `count` GPUs to `owner` while the caller creates the container.

        Create the container (with grant.labels) inside the block: the lock is
        held until then, so the next reservation sees the new container.
        """
        if count < 1:
            raise ValueError("reserve() needs count >= 1; profiles without GPUs need no grant")
        self.check(count, profile_name)
        async with hub_lock:
            holders = await asyncio.to_thread(self.holders)
            chosen = self._choose(count, holders)
            mode = await asyncio.to_thread(lambda: self.mode)
            yield make_grant(
                owner,
                chosen,
                mode,
                devices_root=self.devices_root,
                driver_dir=self.cfg.gpu.driver_dir,
                scan_root=self.scan_root,
                base_path=base_path,
                extra_labels=self.scope_labels,
            )


# Where the hub process sees the host's /dev when it runs in a container (compose
# can mount the host's /dev read-only there); the engine still gets /dev paths.
SCAN_ROOT_ENV = "HUBSTACK_GPU_SCAN_ROOT"
# Host folder of the device nodes given to the engine (default /dev); tests that
# simulate GPUs through a whole hub point it at mknod'ed nodes.
DEVICES_ROOT_ENV = "HUBSTACK_GPU_DEVICES_ROOT"


def scan_root() -> str:
    """Where this process looks for /dev/nvidia* nodes (a hub in a container: elsewhere)."""
    return os.environ.get(SCAN_ROOT_ENV) or os.environ.get(DEVICES_ROOT_ENV) or "/dev"


def allocator(cfg: PlatformConfig, client: Any) -> GPUAllocator:
    """The allocator the spawner uses: host /dev for the engine, scan root from the environment.

    Cheap to make per spawn: the lock is per event loop (class level) and the
    assignments live in the engine, so every instance agrees.
    """
    return GPUAllocator(
        cfg, client, devices_root=os.environ.get(DEVICES_ROOT_ENV) or "/dev", scan_root=scan_root()
    )

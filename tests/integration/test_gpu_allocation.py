"""GPU allocation on the real engine, with SIMULATED GPUs.

CI has no GPU, so the GPUs here are simulated: "device nodes" made with mknod
under a temporary folder (character devices 1:3, i.e. what /dev/null is)
named nvidia0, nvidia1, nvidiactl, nvidia-uvm..., and a driver folder whose
bin/nvidia-smi only lists the /dev/nvidia[0-9]* nodes it can see. Everything
else is real: real containers created from the spec the spawner uses (analyst
UID:GID, all capabilities dropped, no-new-privileges) plus the GPU grant, and
the allocator reads assignments back from those containers' labels.
tests/gpu/ runs the same code against a real GPU.
"""

from __future__ import annotations

import asyncio
import os
import stat
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from hubstack.config import parse_config
from hubstack.hub import container_spec
from hubstack.hub.gpu import (
    LABEL_GPUS,
    GPUAllocator,
    GPUUnavailable,
    detect_mode,
    format_gpu_status,
    gpu_holders,
    offered_profiles,
)

pytestmark = pytest.mark.integration

IMAGE = "debian:bookworm-slim"
REPO = Path(__file__).resolve().parents[2]
ANALYST = "23456:23456"

FAKE_NVIDIA_SMI = """#!/bin/sh
# SIMULATED nvidia-smi: lists the GPU device nodes this container was given.
n=0
for d in /dev/nvidia[0-9]*; do
  [ -e "$d" ] || continue
  echo "GPU $n: Simulated GPU (node $d)"
  n=$((n+1))
done
[ $n -gt 0 ] || { echo "No devices were found"; exit 6; }
"""


@pytest.fixture
def sim(tmp_path, docker_client):
    """Simulated GPU host: 2 GPU nodes + control nodes, a driver folder, and a label scope."""
    dev = tmp_path / "dev"
    dev.mkdir()
    for name in ("nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(dev / name, 0o666)  # like the real nodes (umask would narrow mknod's mode)
    driver = tmp_path / "nvidia"
    (driver / "bin").mkdir(parents=True)
    (driver / "lib64").mkdir()
    smi = driver / "bin" / "nvidia-smi"
    smi.write_text(FAKE_NVIDIA_SMI)
    smi.chmod(0o755)
    driver.chmod(0o755)
    tmp_path.chmod(0o755)
    scope = {"io.hubstack.test": f"gpu-{uuid.uuid4().hex[:10]}"}
    yield dev, driver, scope
    for c in docker_client.api.containers(
        all=True, filters={"label": [f"{k}={v}" for k, v in scope.items()]}
    ):
        docker_client.api.remove_container(c["Id"], force=True)


def gpu_cfg(tmp_path, driver, **gpu):
    return parse_config(
        {"state_dir": str(tmp_path / "state"), "gpu": {"driver_dir": str(driver), **gpu}}
    )


def create(client, grant, name, start=True):
    """The container the spawner creates: hubstack.hub.container_spec's identity and
    lockdown (what the spawner calls) plus the grant."""
    api = client.api
    uid, gid = (int(x) for x in ANALYST.split(":"))
    ident = {"uid": uid, "gid": gid, "groups": [], "home": "/tmp"}
    host_config = container_spec.host_config(ident, grant_host_config=grant.host_config)
    c = api.create_container(
        IMAGE,
        command=["sleep", "600"],
        name=f"gpu-test-{name}-{uuid.uuid4().hex[:6]}",
        environment=grant.environment,
        host_config=api.create_host_config(init=True, **host_config),
        **container_spec.create_kwargs(grant.owner, "gpu", ident, grant_labels=grant.labels),
    )
    if start:
        api.start(c["Id"])
    return c["Id"]


def sh(client, cid, script):
    r = client.api.exec_create(cid, ["sh", "-c", script])
    out = client.api.exec_start(r["Id"]).decode()
    return client.api.exec_inspect(r["Id"])["ExitCode"], out


def test_device_nodes_container_gets_its_gpu_and_nothing_more(tmp_path, docker_client, sim):
    dev, driver, scope = sim
    cfg = gpu_cfg(tmp_path, driver, count=2, mode="device-nodes")
    alloc = GPUAllocator(cfg, docker_client, devices_root=dev, scope_labels=scope)

    async def spawn():
        async with alloc.reserve("alice", 1, profile_name="gpu") as grant:
            return grant, await asyncio.to_thread(create, docker_client, grant, "alice")

    grant, cid = asyncio.run(spawn())
    assert grant.indices == (0,)

    info = docker_client.api.inspect_container(cid)
    hc = info["HostConfig"]
    assert {
        (d["PathOnHost"], d["PathInContainer"], d["CgroupPermissions"]) for d in hc["Devices"]
    } == {
        (f"{dev}/nvidia0", "/dev/nvidia0", "rwm"),
        (f"{dev}/nvidiactl", "/dev/nvidiactl", "rwm"),
        (f"{dev}/nvidia-uvm", "/dev/nvidia-uvm", "rwm"),
        (f"{dev}/nvidia-uvm-tools", "/dev/nvidia-uvm-tools", "rwm"),
    }
    assert hc["Binds"] == [f"{driver}:{driver}:ro"]
    assert not hc.get("DeviceRequests")
    assert hc["CapDrop"] == ["ALL"] and hc["SecurityOpt"] == ["no-new-privileges"]
    assert info["Config"]["User"] == ANALYST
    assert not any("docker.sock" in m["Source"] for m in info["Mounts"])
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "0" and env["CUDA_VISIBLE_DEVICES"] == "0"
    assert env["LD_LIBRARY_PATH"] == f"{driver}/lib64:{driver}/lib"
    assert env["PATH"].endswith(f":{driver}/bin") and env["PATH"].startswith("/opt/venv/bin:")

    # Inside, as the analyst: the simulated GPU is listed, the node opens, nothing else granted.
    rc, out = sh(
        docker_client,
        cid,
        "id -u; id -g; nvidia-smi; ls /dev | grep nvidia; "
        "echo x > /dev/nvidia0 && echo node-writable; grep -E '^(CapEff|NoNewPrivs)' "
        "/proc/self/status; "
        f"touch {driver}/bin/x 2>/dev/null || echo driver-read-only",
    )
    assert rc == 0, out
    lines = out.split("\n")
    assert lines[:3] == ["23456", "23456", "GPU 0: Simulated GPU (node /dev/nvidia0)"]
    assert sorted(lines[3:7]) == ["nvidia-uvm", "nvidia-uvm-tools", "nvidia0", "nvidiactl"]
    assert "nvidia1" not in out
    assert "node-writable" in out and "driver-read-only" in out
    assert "CapEff:\t0000000000000000" in out and "NoNewPrivs:\t1" in out


def test_default_profile_container_sees_no_gpu(tmp_path, docker_client, sim):
    dev, driver, scope = sim
    api = docker_client.api
    c = api.create_container(
        IMAGE,
        command=["sleep", "600"],
        user=ANALYST,
        labels=scope,
        name=f"gpu-test-default-{uuid.uuid4().hex[:6]}",
        host_config=api.create_host_config(cap_drop=["ALL"], security_opt=["no-new-privileges"]),
    )
    api.start(c["Id"])
    rc, out = sh(docker_client, c["Id"], "ls /dev/nvidia* 2>&1; echo end")
    assert "No such file" in out and "nvidia0" not in out.replace("/dev/nvidia*", "")


def test_engine_without_nvidia_runtime_gets_device_nodes(tmp_path, docker_client, sim):
    _, driver, _ = sim
    # This engine (like CI's) has no NVIDIA toolkit, so auto picks device nodes.
    assert "nvidia" not in (docker_client.info().get("Runtimes") or {})
    assert detect_mode(gpu_cfg(tmp_path, driver), docker_client) == "device-nodes"


def test_device_requests_spec_is_what_the_engine_records(tmp_path, docker_client, sim):
    # Created, not started: starting needs the NVIDIA toolkit, which this host lacks.
    dev, driver, scope = sim
    cfg = gpu_cfg(tmp_path, driver, count=2, mode="device-requests")
    alloc = GPUAllocator(cfg, docker_client, devices_root=dev, scope_labels=scope)

    async def spawn():
        async with alloc.reserve("alice", 2) as grant:
            return grant, await asyncio.to_thread(create, docker_client, grant, "dr", False)

    grant, cid = asyncio.run(spawn())
    info = docker_client.api.inspect_container(cid)
    hc = info["HostConfig"]
    assert hc["DeviceRequests"] == [
        {
            "Driver": "nvidia",
            "Count": 0,
            "DeviceIDs": ["0", "1"],
            "Capabilities": [["gpu"]],
            "Options": {},
        }
    ]
    assert not hc["Devices"] and not hc["Binds"]
    assert (
        hc["CapDrop"] == ["ALL"]
        and hc["SecurityOpt"] == ["no-new-privileges"]
        and info["Config"]["User"] == ANALYST
    )
    env = dict(e.split("=", 1) for e in info["Config"]["Env"])
    assert env["NVIDIA_VISIBLE_DEVICES"] == "0,1" and env["CUDA_VISIBLE_DEVICES"] == "0,1"
    assert "LD_LIBRARY_PATH" not in env
    # A created container holds its GPUs (the spawner starts it after reserve()).
    assert [(h.gpu, h.user, h.state) for h in gpu_holders(docker_client, scope)] == [
        (0, "alice", "created"),
        (1, "alice", "created"),
    ]


def test_ten_concurrent_spawns_for_two_gpus(tmp_path, docker_client, sim):
    dev, driver, scope = sim
    cfg = gpu_cfg(tmp_path, driver, count=2, mode="device-nodes")
    alloc = GPUAllocator(cfg, docker_client, devices_root=dev, scope_labels=scope)

    async def spawn(i):
        async with alloc.reserve(f"analyst{i}", 1, profile_name="gpu") as grant:
            return await asyncio.to_thread(create, docker_client, grant, f"c{i}")

    async def all_at_once():
        return await asyncio.gather(*(spawn(i) for i in range(10)), return_exceptions=True)

    results = asyncio.run(all_at_once())
    started = [r for r in results if isinstance(r, str)]
    refused = [r for r in results if isinstance(r, GPUUnavailable)]
    assert len(started) == 2 and len(refused) == 8, results
    for r in refused:
        assert str(r).startswith("no GPU free: 2 of 2 busy"), r
    holders = gpu_holders(docker_client, scope)
    assert sorted(h.gpu for h in holders) == [0, 1]
    assert len({h.user for h in holders}) == 2

    # Stopping the servers frees their GPUs, even before the containers are removed.
    for cid in started:
        docker_client.api.stop(cid, timeout=1)
    assert gpu_holders(docker_client, scope) == []
    for cid in started:
        docker_client.api.remove_container(cid)
    assert (
        docker_client.api.containers(
            all=True, filters={"label": [LABEL_GPUS] + [f"{k}={v}" for k, v in scope.items()]}
        )
        == []
    )


def test_assignments_survive_a_hub_restart(tmp_path, docker_client, sim):
    dev, driver, scope = sim
    cfg = gpu_cfg(tmp_path, driver, count=2, mode="device-nodes")

    async def spawn(alloc, user):
        async with alloc.reserve(user, 1) as grant:
            return grant.indices, await asyncio.to_thread(create, docker_client, grant, user)

    # First hub process: alice gets GPU 0.
    (gpu_a, cid_a) = asyncio.run(
        spawn(GPUAllocator(cfg, docker_client, devices_root=dev, scope_labels=scope), "alice")
    )
    assert gpu_a == (0,)

    # "Restarted" hub: a new allocator and a new event loop, no memory of the first.
    hub2 = GPUAllocator(cfg, docker_client, devices_root=dev, scope_labels=scope)
    assert [(h.gpu, h.user) for h in hub2.holders()] == [(0, "alice")]
    gpu_b, _ = asyncio.run(spawn(hub2, "bob"))
    assert gpu_b == (1,)
    with pytest.raises(GPUUnavailable, match="no GPU free: 2 of 2 busy"):
        asyncio.run(spawn(hub2, "carol"))
    status = format_gpu_status(cfg, docker_client, dev, scope)
    assert status[0] == "GPUs: 2 (device-nodes), 2 busy"
    assert status[1].startswith("  GPU 0: alice (gpu-test-alice-") and status[1].endswith(
        ", running)"
    )
    assert status[2].startswith("  GPU 1: bob (gpu-test-bob-")

    # alice's server is culled: her GPU goes to carol.
    docker_client.api.stop(cid_a, timeout=1)
    assert format_gpu_status(cfg, docker_client, dev, scope)[1] == "  GPU 0: free"
    gpu_c, _ = asyncio.run(spawn(hub2, "carol"))
    assert gpu_c == (0,)


def test_gpu_profile_refused_where_no_gpu_exists(tmp_path, docker_client, sim):
    _, driver, scope = sim
    empty = tmp_path / "nogpu"
    empty.mkdir()
    cfg = gpu_cfg(tmp_path, driver)  # count: auto, and no /dev/nvidiaN under `empty`
    assert "gpu" not in [p.name for p in offered_profiles(cfg, empty)]
    alloc = GPUAllocator(cfg, docker_client, devices_root=empty, scope_labels=scope)

    async def spawn():
        async with alloc.reserve("alice", cfg.profile("gpu").gpus, profile_name="gpu") as grant:
            create(docker_client, grant, "never")

    with pytest.raises(
        GPUUnavailable, match=r"the profile 'gpu' needs 1 GPU, but this platform has no GPU"
    ):
        asyncio.run(spawn())
    assert (
        docker_client.api.containers(
            all=True, filters={"label": [f"{k}={v}" for k, v in scope.items()]}
        )
        == []
    )


def test_real_gpu_check_creates_its_containers_on_simulated_devices(sim):
    """tests/gpu/check.py's container steps, run here on the simulated GPU so that CI sees
    them work. The CUDA probe needs a real driver (and the bundle's image, with python3), so
    here it fails, and the check says so."""
    dev, driver, _ = sim
    r = subprocess.run(
        [
            sys.executable,
            str(REPO / "tests/gpu/check.py"),
            "--dev-root",
            str(dev),
            "--driver-dir",
            str(driver),
            "--image",
            IMAGE,
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    out = r.stdout
    for step in (
        "engine",
        "GPU mode",
        "create 'gpu' container",
        "non-root analyst, no capabilities, no-new-privileges",
        "nvidia-smi -L lists the granted GPU",
        "default profile sees no GPU",
    ):
        assert f"PASS  {step}" in out, out + r.stderr
    assert "FAIL  CUDA probe" in out
    assert r.returncode == 1 and out.rstrip().endswith("RESULT: FAILED")

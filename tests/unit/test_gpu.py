"""GPU grant specs and detection. No GPU here: device nodes are simulated as
plain files under a temporary folder (detection only reads their names)."""

from __future__ import annotations

import asyncio
import shutil
from pathlib import Path

import pytest
from docker.types import DeviceRequest, HostConfig

from hubstack.config import parse_config
from hubstack.hub.gpu import (
    GPUAllocator,
    GPUHolder,
    GPUUnavailable,
    allocator,
    detect_gpu_indices,
    detect_mode,
    device_nodes_host_config,
    device_requests_host_config,
    gpu_environment,
    gpu_indices,
    make_grant,
    offered_profiles,
)
from hubstack.images.graph import ImageGraph


def fake_dev(tmp_path, *names):
    dev = tmp_path / "dev"
    dev.mkdir(exist_ok=True)
    for n in names:
        (dev / n).touch()
    return dev


def cfg(**gpu):
    return parse_config({"gpu": gpu})


def test_detects_gpu_nodes_not_control_nodes(tmp_path):
    dev = fake_dev(
        tmp_path,
        "nvidia0",
        "nvidia1",
        "nvidia10",
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
        "null",
    )
    assert detect_gpu_indices(dev) == [0, 1, 10]
    assert detect_gpu_indices(tmp_path / "missing") == []


def test_count_from_config_wins_over_detection(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0")
    assert gpu_indices(cfg(count="auto"), dev) == [0]
    assert gpu_indices(cfg(count=3), dev) == [0, 1, 2]
    assert gpu_indices(cfg(count=0), dev) == []


def test_gpu_profile_offered_only_where_gpus_exist(tmp_path):
    none = fake_dev(tmp_path, "nvidiactl")
    assert [p.name for p in offered_profiles(cfg(), none)] == ["default", "spark"]
    assert [p.name for p in offered_profiles(cfg(count=1), none)] == ["default", "spark", "gpu"]


def test_mode_from_config_needs_no_engine():
    assert detect_mode(cfg(mode="device-nodes"), None) == "device-nodes"
    assert detect_mode(cfg(mode="device-requests"), None) == "device-requests"


def test_device_nodes_spec_exact(tmp_path):
    dev = fake_dev(tmp_path, "nvidia0", "nvidia1", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
    hc = device_nodes_host_config([1], dev, "/usr/local/nvidia")
    assert hc == {
        "devices": [
            f"{dev}/nvidia1:/dev/nvidia1:rwm",
            f"{dev}/nvidiactl:/dev/nvidiactl:rwm",
            f"{dev}/nvidia-uvm:/dev/nvidia-uvm:rwm",
            f"{dev}/nvidia-uvm-tools:/dev/nvidia-uvm-tools:rwm",
        ],
        "binds": {"/usr/local/nvidia": {"bind": "/usr/local/nvidia", "mode": "ro"}},
    }


def test_device_nodes_paths_for_engine_differ_from_where_hub_looks(tmp_path):
    # The hub may see the host's /dev mounted elsewhere; the engine needs host paths.
    seen = fake_dev(tmp_path, "nvidia0", "nvidiactl")
    hc = device_nodes_host_config([0], "/dev", "/opt/nv", scan_root=seen)
    assert hc["devices"] == ["/dev/nvidia0:/dev/nvidia0:rwm", "/dev/nvidiactl:/dev/nvidiactl:rwm"]


def test_device_requests_spec_exact():
    hc = device_requests_host_config([0, 1])
    assert hc == {
        "device_requests": [
            DeviceRequest(driver="nvidia", device_ids=["0", "1"], capabilities=[["gpu"]])
        ]
    }
    assert "devices" not in hc and "binds" not in hc


def test_environment_agrees_with_grant():
    # Host GPUs 2 and 3 are the container's CUDA devices 0 and 1.
    env = gpu_environment(
        [2, 3], "device-nodes", "/usr/local/nvidia", base_path="/opt/venv/bin:/usr/bin:/bin"
    )
    assert env == {
        "NVIDIA_VISIBLE_DEVICES": "2,3",
        "CUDA_VISIBLE_DEVICES": "0,1",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
        "PATH": "/opt/venv/bin:/usr/bin:/bin:/usr/local/nvidia/bin",
        "LD_LIBRARY_PATH": "/usr/local/nvidia/lib64:/usr/local/nvidia/lib",
    }
    # With the toolkit, its hook injects binaries and libraries: no PATH override.
    assert gpu_environment([0], "device-requests", "/usr/local/nvidia") == {
        "NVIDIA_VISIBLE_DEVICES": "0",
        "CUDA_VISIBLE_DEVICES": "0",
        "NVIDIA_DRIVER_CAPABILITIES": "compute,utility",
    }


def test_grant_labels_are_the_allocation_record(tmp_path):
    g = make_grant("alice", [0, 1], "device-requests", extra_labels={"io.hubstack.test": "x"})
    assert g.labels == {
        "io.hubstack.test": "x",
        "io.hubstack.user": "alice",
        "io.hubstack.gpus": "0,1",
        "io.hubstack.gpu-mode": "device-requests",
    }
    with pytest.raises(ValueError, match="unknown GPU mode 'cdi'"):
        make_grant("alice", [0], "cdi")


def holders(*pairs):
    return [GPUHolder(g, u, f"c-{u}", "running") for g, u in pairs]


def test_exclusive_choice_and_refusal_message(tmp_path):
    alloc = GPUAllocator(cfg(count=2), None, devices_root=tmp_path)
    assert alloc._choose(1, []) == [0]
    assert alloc._choose(1, holders((0, "alice"))) == [1]
    assert alloc._choose(2, []) == [0, 1]
    with pytest.raises(GPUUnavailable, match=r"^no GPU free: 2 of 2 busy"):
        alloc._choose(1, holders((0, "alice"), (1, "bob")))
    with pytest.raises(
        GPUUnavailable, match=r"no GPU free: 1 of 2 busy \(this server needs 2 GPUs\)"
    ):
        alloc._choose(2, holders((1, "bob")))


def test_shared_mode_spreads_and_never_refuses_for_busy(tmp_path):
    alloc = GPUAllocator(cfg(count=2, shared=True), None, devices_root=tmp_path)
    assert alloc._choose(1, holders((0, "alice"))) == [1]
    assert alloc._choose(1, holders((0, "alice"), (1, "bob"), (1, "carol"))) == [0]


def test_no_gpu_refused_at_once_with_reason(tmp_path):
    dev = fake_dev(tmp_path)
    alloc = GPUAllocator(cfg(), None, devices_root=dev)

    async def ask():
        async with alloc.reserve("alice", 1, profile_name="gpu"):
            pytest.fail("a grant without GPUs")

    with pytest.raises(GPUUnavailable) as e:
        asyncio.run(ask())
    assert str(e.value) == (
        f"the profile 'gpu' needs 1 GPU, but this platform has no GPU (gpu.count is auto and no "
        f"{dev}/nvidia[0-9]* device node exists); choose another profile"
    )


def test_more_gpus_than_the_node_has_is_refused(tmp_path):
    alloc = GPUAllocator(cfg(count=1), None, devices_root=tmp_path)
    with pytest.raises(GPUUnavailable, match="needs 2 GPUs, but this node has only 1"):
        alloc.check(2, "big")


def test_spawner_allocator_gives_engine_host_paths_and_scans_where_told(tmp_path, monkeypatch):
    # A hub in a container sees the host's /dev mounted elsewhere; the engine needs /dev paths.
    seen = fake_dev(tmp_path, "nvidia0", "nvidiactl")
    monkeypatch.setenv("HUBSTACK_GPU_SCAN_ROOT", str(seen))

    alloc = allocator(cfg(mode="device-nodes"), None)
    assert alloc.gpus == [0]
    grant = make_grant(
        "alice", [0], "device-nodes", devices_root=alloc.devices_root, scan_root=alloc.scan_root
    )
    assert grant.host_config["devices"] == [
        "/dev/nvidia0:/dev/nvidia0:rwm",
        "/dev/nvidiactl:/dev/nvidiactl:rwm",
    ]


def test_gpu_image_is_in_the_graph_but_built_only_on_demand(tmp_path):
    # The real images/gpu/Dockerfile beside stand-ins for its ancestors.

    root = Path(__file__).resolve().parents[2]
    parents = {"base": None, "python": "base", "spark": "python", "notebook": "spark"}
    for name, parent in parents.items():
        (tmp_path / "images" / name).mkdir(parents=True)
        head = (
            "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n"
            if parent is None
            else (
                "ARG HUBSTACK_REPO=hubstack\nARG HUBSTACK_TAG=latest\nFROM "
                f"${{HUBSTACK_REPO}}/{parent}:${{HUBSTACK_TAG}}\n"
            )
        )
        (tmp_path / "images" / name / "Dockerfile").write_text(head)
    shutil.copytree(root / "images" / "gpu", tmp_path / "images" / "gpu")
    c = parse_config({"source_dir": str(tmp_path)})
    graph = ImageGraph.from_config(c)
    assert graph["gpu"].parents == ("notebook",)
    assert "gpu" in graph.descendants(["base"])  # CI plans it when anything below changes
    assert "gpu" not in graph.default_targets(c)  # a plain build leaves it out
    assert graph.with_ancestors(["gpu"]) == ["base", "python", "spark", "notebook", "gpu"]


def test_device_requests_survive_dockerspawner_template_rendering():
    # DockerSpawner renders extra_host_config into plain dicts; the engine must get the same
    # request.

    req = device_requests_host_config([1])["device_requests"][0]
    rendered = {str(k): v for k, v in req.items()}
    assert HostConfig(version="1.41", device_requests=[rendered])["DeviceRequests"] == [req]

"""GPUs on a swarm, handed out by the hub (hubstack.hub.swarm_gpu): the choice across nodes,
who holds what (the GPU servers' service labels, by their task's state, plus this hub's
pending choices), each refusal's wording, and two starts at once for one GPU. The manager
is a fake that answers the engine's node, service and task lists; the real swarm is in
tests/integration/test_swarm_spawner.py."""

from __future__ import annotations

import asyncio
import time
from types import SimpleNamespace

import docker
import pytest

from hubstack.config import parse_config
from hubstack.hub import gpu, swarm_gpu
from hubstack.hub.container_spec import USER_LABEL
from hubstack.hub.swarm_gpu import (
    LABEL_GPU_NODE,
    LABEL_GPUS,
    GPUUnavailable,
    SwarmGPUAllocator,
    gpu_holders,
    gpu_ids,
)
from hubstack.hub.swarm_spawner import HubstackSwarmSpawner
from hubstack.nodes import node_rows

CFG = parse_config(
    {
        "cluster": {"mode": "swarm"},
        "hub": {"network": "hs"},
        "profiles": [
            {"name": "default", "display_name": "Default"},
            {"name": "gpu", "display_name": "GPU", "gpus": 1},
            {"name": "gpu2", "display_name": "Two GPUs", "gpus": 2},
        ],
    }
)
GPU, GPU2 = CFG.profile("gpu"), CFG.profile("gpu2")
CONSTRAINTS = CFG.placement_constraints(GPU)  # node.labels.hubstack.gpu==true


def node(node_id, gpus=(), labels=None, availability="active", state="ready", name=None):
    resources = [{"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": g}} for g in gpus]
    return {
        "ID": node_id,
        "Spec": {
            "Role": "worker",
            "Availability": availability,
            "Labels": {"hubstack.gpu": "true"} if labels is None else labels,
        },
        "Description": {
            "Hostname": name or node_id,
            "Resources": {"GenericResources": resources},
        },
        "Status": {"State": state, "Addr": "10.0.0.1"},
    }


def service(name, user, node_id, gpus, state="running"):
    """A GPU server's service and its task (STATE; None: no task yet)."""
    svc = {
        "ID": f"id-{name}",
        "Spec": {
            "Name": name,
            "Labels": {LABEL_GPUS: ",".join(gpus), LABEL_GPU_NODE: node_id, USER_LABEL: user},
        },
    }
    tasks = []
    if state is not None:
        tasks.append(
            {
                "ServiceID": svc["ID"],
                "NodeID": node_id if state == "running" else "",
                "CreatedAt": "2026-12-06T00:00:00Z",
                "Status": {"State": state},
                "Spec": {"ContainerSpec": {"Labels": {USER_LABEL: user}}},
            }
        )
    return svc, tasks


class FakeManager:
    """The manager's node, service and task lists. The service list is a snapshot taken
    when asked and answered DELAY seconds later (the engine's round trip)."""

    def __init__(self, nodes, services=(), delay: float = 0.0):
        self._nodes = list(nodes)
        self._services = [svc for svc, _ in services]
        self._tasks = [t for _, tasks in services for t in tasks]
        self.delay = delay

    def nodes(self, filters=None):
        return self._nodes

    def services(self, filters=None):
        wanted = (filters or {}).get("label") or []
        found = [s for s in self._services if all(k in s["Spec"]["Labels"] for k in wanted)]
        time.sleep(self.delay)
        return found

    def create_service(self, name, labels):
        time.sleep(0.05)
        svc, _ = service(name, labels[USER_LABEL], labels[LABEL_GPU_NODE], [])
        svc["Spec"]["Labels"] = dict(labels)
        self._services.append(svc)

    def tasks(self, filters=None):
        filters = filters or {}
        ids = filters.get("service")
        out = [t for t in self._tasks if ids is None or t["ServiceID"] in ids]
        if filters.get("desired-state") == "running":
            out = [t for t in out if t["Status"]["State"] not in swarm_gpu.TASK_OVER]
        return out


@pytest.fixture(autouse=True)
def no_pending():
    """Each test starts with no pending choice, and leaves none."""
    swarm_gpu._pending.clear()
    yield
    swarm_gpu._pending.clear()


def reserve(manager, profile=GPU, owner="alice", constraints=None):
    allocator = SwarmGPUAllocator(CFG, manager)
    return asyncio.run(allocator.reserve(owner, profile, constraints or CONSTRAINTS))


def test_gpu_ids_are_the_named_values_or_indices_of_a_count():
    entries = [
        {"NamedResourceSpec": {"Kind": "NVIDIA-GPU", "Value": "GPU-a"}},
        {"DiscreteResourceSpec": {"Kind": "NVIDIA-GPU", "Value": 2}},
        {"NamedResourceSpec": {"Kind": "FPGA", "Value": "f0"}},
    ]
    assert gpu_ids(entries, "NVIDIA-GPU") == ["GPU-a", "0", "1"]
    assert gpu_ids(None, "NVIDIA-GPU") == []


def test_the_grant_pins_the_node_labels_the_service_and_names_the_gpus():
    grant = reserve(FakeManager([node("n1", ["GPU-a", "GPU-b"], name="gpu-1")]))
    assert (grant.node_id, grant.node_name, grant.gpus) == ("n1", "gpu-1", ("GPU-a",))
    assert grant.constraint == "node.id==n1"
    assert grant.labels == {LABEL_GPUS: "GPU-a", LABEL_GPU_NODE: "n1"}
    # The single-host grant's environment (gpu.gpu_environment), device-request style:
    # the NVIDIA runtime on the node reads NVIDIA_VISIBLE_DEVICES.
    assert grant.environment == gpu.gpu_environment(
        ["GPU-a"], gpu.MODE_DEVICE_REQUESTS, CFG.gpu.driver_dir
    )
    assert grant.environment["NVIDIA_VISIBLE_DEVICES"] == "GPU-a"
    assert grant.environment["CUDA_VISIBLE_DEVICES"] == "0"


def test_of_the_nodes_that_fit_the_one_with_the_fewest_free_gpus_is_taken():
    nodes = [
        node("big", ["b0", "b1", "b2", "b3"]),
        node("half", ["h0", "h1"]),
        node("cpu", [], labels={}),
        node("unlabelled", ["u0"], labels={}),  # the profile's placement excludes it
    ]
    held = [service("hs-nb-bob", "bob", "half", ["h0"])]
    manager = FakeManager(nodes, held)
    grant = reserve(manager)
    assert (grant.node_id, grant.gpus) == ("half", ("h1",))  # 1 free there, 4 on big
    asyncio.run(swarm_gpu.release(grant))
    two = reserve(manager, GPU2)
    assert (two.node_id, two.gpus) == ("big", ("b0", "b1"))  # half has 1 free only


@pytest.mark.parametrize(
    ("state", "holds"),
    [
        (None, True),  # just created: no task yet
        ("pending", True),
        ("assigned", True),
        ("running", True),
        ("complete", False),
        ("failed", False),
        ("shutdown", False),
        ("rejected", False),
    ],
)
def test_a_service_holds_its_gpus_until_its_task_is_over(state, holds):
    manager = FakeManager(
        [node("n1", ["GPU-a"])], [service("hs-nb-bob", "bob", "n1", ["GPU-a"], state)]
    )
    assert [(h.node_id, h.gpu, h.user) for h in gpu_holders(manager)] == (
        [("n1", "GPU-a", "bob")] if holds else []
    )
    if holds:
        with pytest.raises(GPUUnavailable, match="every GPU is taken: 1 of 1 busy"):
            reserve(manager)
    else:
        assert reserve(manager).gpus == ("GPU-a",)


def test_a_removed_service_frees_its_gpus():
    manager = FakeManager([node("n1", ["GPU-a"])], [])
    assert gpu_holders(manager) == []
    assert reserve(manager).gpus == ("GPU-a",)


def test_a_choice_whose_service_does_not_exist_yet_counts_until_released():
    manager = FakeManager([node("n1", ["GPU-a", "GPU-b"])])
    first = reserve(manager, owner="alice")
    second = reserve(manager, owner="bob")
    assert {first.gpus, second.gpus} == {("GPU-a",), ("GPU-b",)}
    with pytest.raises(GPUUnavailable, match="every GPU is taken: 2 of 2 busy"):
        reserve(manager, owner="carol")
    asyncio.run(swarm_gpu.release(first))  # e.g. alice's start failed before her service
    asyncio.run(swarm_gpu.release(first))  # twice is harmless
    assert reserve(manager, owner="carol").gpus == first.gpus


def test_the_service_being_replaced_does_not_hold_against_its_own_start():
    manager = FakeManager(
        [node("n1", ["GPU-a"])], [service("hs-nb-alice", "alice", "n1", ["GPU-a"])]
    )
    allocator = SwarmGPUAllocator(CFG, manager)
    grant = asyncio.run(allocator.reserve("alice", GPU, CONSTRAINTS, replacing="hs-nb-alice"))
    assert grant.gpus == ("GPU-a",)


@pytest.mark.parametrize(
    ("nodes", "profile", "wording"),
    [
        (
            [node("cpu", [], labels={})],
            GPU,
            "the profile 'GPU' (gpu) needs 1 GPU, and no node of this swarm advertises NVIDIA-GPU",
        ),
        (
            [node("n1", ["GPU-a"], labels={})],
            GPU,
            "the profile 'GPU' (gpu) needs 1 GPU on a node with "
            "node.labels.hubstack.gpu==true, and no node with GPUs (n1) meets that",
        ),
        (
            [node("n1", ["GPU-a"], availability="drain"), node("n2", ["GPU-b"], state="down")],
            GPU,
            "the profile 'GPU' (gpu) needs 1 GPU, and every node with GPUs it may use is "
            "drained or down (n1: drain, n2: down)",
        ),
        (
            [node("n1", ["GPU-a"]), node("n2", ["GPU-b"])],
            GPU2,
            "the profile 'Two GPUs' (gpu2) needs 2 GPUs on one node, and no node it may use "
            "has that many (the most: 1)",
        ),
    ],
)
def test_each_refusal_says_its_own_case(nodes, profile, wording):
    with pytest.raises(GPUUnavailable) as refused:
        reserve(FakeManager(nodes), profile)
    assert str(refused.value).startswith(wording)
    assert "choose another profile" in str(refused.value).lower()


def test_no_gpu_free_says_how_many_are_busy_where():
    nodes = [node("n1", ["GPU-a"]), node("n2", ["GPU-b"])]
    held = [
        service("hs-nb-bob", "bob", "n1", ["GPU-a"]),
        service("hs-nb-carol", "carol", "n2", ["GPU-b"], "pending"),
    ]
    with pytest.raises(GPUUnavailable) as refused:
        reserve(FakeManager(nodes, held))
    assert str(refused.value) == (
        "the profile 'GPU' (gpu) needs 1 GPU, and every GPU is taken: 2 of 2 busy on the "
        "nodes it may use (n1, n2). Try again when another analyst's GPU server stops, or "
        "choose another profile"
    )


def test_two_starts_at_once_for_one_gpu_give_one_grant_and_one_refusal():
    """Two starts as the spawner makes them (reserve, create the service, release), the
    second 0.2 s after the first; each read of the services answers 0.3 s after its
    snapshot. Bob's snapshot is taken before alice's service exists, and answered after
    alice's start has released her grant: only gpu.hub_lock (held by bob's read, which
    alice's release waits for) keeps both from getting GPU-a. Checked: with the lock
    removed from SwarmGPUAllocator.reserve and release, both get it."""
    manager = FakeManager([node("n1", ["GPU-a"])], delay=0.3)
    allocator = SwarmGPUAllocator(CFG, manager)

    async def start(user: str, after: float):
        await asyncio.sleep(after)
        grant = await allocator.reserve(user, GPU, CONSTRAINTS)
        try:
            await asyncio.to_thread(
                manager.create_service, f"hs-nb-{user}", {**grant.labels, USER_LABEL: user}
            )
        finally:
            await swarm_gpu.release(grant)
        return grant

    async def both():
        return await asyncio.gather(start("alice", 0), start("bob", 0.2), return_exceptions=True)

    results = asyncio.run(both())
    grants = [r for r in results if isinstance(r, swarm_gpu.SwarmGrant)]
    refusals = [r for r in results if isinstance(r, GPUUnavailable)]
    assert len(grants) == 1 and len(refusals) == 1, results
    assert grants[0].owner == "alice" and grants[0].gpus == ("GPU-a",)
    assert "every GPU is taken: 1 of 1 busy" in str(refusals[0])
    assert swarm_gpu._pending == []


def test_the_single_host_allocator_and_the_swarm_share_one_lock_and_one_rule():
    assert gpu.choose_gpus([0, 1, 2], [0], 2) == [1, 2]
    assert gpu.choose_gpus(["a", "b"], ["a", "b"], 1) is None
    assert gpu.choose_gpus(["a", "b"], ["a", "a", "b"], 1, shared=True) == ["b"]

    async def held_across_both():
        async with gpu.hub_lock:
            manager = FakeManager([node("n1", ["GPU-a"])])
            waiting = asyncio.ensure_future(
                SwarmGPUAllocator(CFG, manager).reserve("alice", GPU, CONSTRAINTS)
            )
            await asyncio.sleep(0.1)
            assert not waiting.done()  # the swarm's choice waits for the lock
        return await waiting

    assert asyncio.run(held_across_both()).gpus == ("GPU-a",)


def test_hubstack_nodes_counts_used_gpus_from_the_same_labels():
    nodes = [node("n1", ["GPU-a", "GPU-b"], name="gpu-1"), node("n2", [], labels={}, name="cpu")]
    held = [
        service("hs-nb-bob", "bob", "n1", ["GPU-a"]),
        service("hs-nb-carol", "carol", "n1", ["GPU-b"], "complete"),  # over: freed
    ]
    client = SimpleNamespace(
        info=lambda: {"Swarm": {"ControlAvailable": True}}, api=FakeManager(nodes, held)
    )
    rows = {r.name: r for r in node_rows(CFG, client)}
    assert (rows["gpu-1"].gpus_total, rows["gpu-1"].gpus_used) == (2, 1)
    assert rows["gpu-1"].analysts == ["bob"]
    assert (rows["cpu"].gpus_total, rows["cpu"].gpus_used) == (0, 0)


def test_the_spawn_form_offers_gpu_profiles_when_some_node_advertises_enough():
    def offered(nodes):
        return [p.name for p in swarm_gpu.offered_profiles(CFG, FakeManager(nodes))]

    assert offered([node("m", [], labels={})]) == ["default"]
    assert offered([node("m", [], labels={}), node("g", ["GPU-a"])]) == ["default", "gpu"]
    assert offered([node("g", ["GPU-a", "GPU-b"])]) == ["default", "gpu", "gpu2"]


def test_the_swarm_spawners_form_reads_the_nodes_not_the_hubs_dev(monkeypatch):
    monkeypatch.setattr(HubstackSwarmSpawner, "_client", FakeManager([node("g", ["GPU-a"])]))
    s = HubstackSwarmSpawner(platform=CFG)
    assert [p.name for p in s._offered_profiles()] == ["default", "gpu"]

    class Unreachable(FakeManager):
        def nodes(self, filters=None):
            raise docker.errors.APIError("manager unreachable")

    monkeypatch.setattr(HubstackSwarmSpawner, "_client", Unreachable([]))
    assert [p.name for p in s._offered_profiles()] == ["default"]


def test_hubstack_gpus_in_swarm_mode_lists_each_nodes_gpus_and_their_holders():
    nodes = [
        node("n1", ["GPU-a", "GPU-b"], name="gpu-1"),
        node("n2", ["GPU-c"], name="gpu-2", availability="drain"),
        node("n3", [], labels={}, name="cpu"),
    ]
    held = [
        service("hs-nb-bob", "bob", "n1", ["GPU-a"]),
        service("hs-nb-carol", "carol", "n1", ["GPU-b"], "complete"),  # over: freed
        service("hs-nb-dan", "dan", "gone-node-id", ["GPU-z"], None),  # its node left
    ]
    assert swarm_gpu.format_gpu_status(CFG, FakeManager(nodes, held)) == [
        "GPUs: 3 on 2 node(s) of the swarm, 1 busy",
        "  gpu-1:",
        "    GPU GPU-a: bob (hs-nb-bob, running)",
        "    GPU GPU-b: free",
        "  gpu-2 (drain):",
        "    GPU GPU-c: free",
        "  GPU GPU-z of node gone-node-id (not advertised): dan (hs-nb-dan, new)",
    ]
    assert swarm_gpu.format_gpu_status(CFG, FakeManager([node("n3", [], labels={})])) == [
        "GPUs: no node of this swarm advertises NVIDIA-GPU"
    ]


class Started(Exception):
    """Ends a start where the service would be made (the test has seen what it needs)."""


def gpu_start(monkeypatch, manager, user_image):
    """A GPU profile start on MANAGER, up to its service; USER_IMAGE stands in for the
    per-user image step (found or built). Returns the spawner and the grants it made."""
    monkeypatch.setattr(HubstackSwarmSpawner, "_client", manager)
    s = HubstackSwarmSpawner(platform=CFG)
    s.user = SimpleNamespace(name="alice", url="/user/alice/", groups=[], id=1)
    s.user_options = {"profile": "gpu"}
    grants: list = []

    async def identity(self):
        return {"uid": 23456, "gid": 23456, "groups": [23456], "home": "/home/alice"}

    async def placement(self, profile, home):
        return list(CONSTRAINTS)

    async def resolve(self, ref):
        return "reg/hubstack/notebook@sha256:" + "a" * 64

    async def start_service(self, profile, ident, home, constraints, grant, tag, own_image):
        grants.append((grant, list(constraints)))
        raise Started

    monkeypatch.setattr(HubstackSwarmSpawner, "_identity", identity)
    monkeypatch.setattr(HubstackSwarmSpawner, "_home_volume", lambda self, ident: None)
    monkeypatch.setattr(HubstackSwarmSpawner, "_placement", placement)
    monkeypatch.setattr(HubstackSwarmSpawner, "_resolve_digest", resolve)
    monkeypatch.setattr(HubstackSwarmSpawner, "_user_image", user_image)
    monkeypatch.setattr(HubstackSwarmSpawner, "_start_service", start_service)
    return s, grants


def test_a_gpu_start_holds_no_gpu_while_its_per_user_image_builds(monkeypatch):
    """The build takes minutes and needs no GPU: the GPU is reserved once the image is
    there, so bob's GPU start during alice's build gets the GPU, and alice hears why not."""
    manager = FakeManager([node("n1", ["GPU-a"])])
    during: list = []

    async def build(self, profile, tag):
        during.append(list(swarm_gpu._pending))
        # bob asks while alice's image builds: the GPU is free, his start takes it.
        bob = await SwarmGPUAllocator(CFG, manager).reserve("bob", GPU, CONSTRAINTS)
        manager.create_service("hs-nb-bob", bob.labels | {USER_LABEL: "bob"})
        await swarm_gpu.release(bob)
        return "reg/hubstack/user/alice@sha256:" + "b" * 64

    s, grants = gpu_start(monkeypatch, manager, build)
    with pytest.raises(Exception) as refused:
        asyncio.run(s.start())
    assert during == [[]]  # nothing held for alice while her image built
    assert getattr(refused.value, "status_code", None) == 409, refused.value
    assert "every GPU is taken" in refused.value.log_message
    assert grants == []


def test_no_gpu_free_is_said_before_any_image_work(monkeypatch):
    manager = FakeManager([node("n1", ["GPU-a"])], [service("hs-nb-bob", "bob", "n1", ["GPU-a"])])
    built: list = []

    async def build(self, profile, tag):
        built.append(profile.name)
        return None

    s, grants = gpu_start(monkeypatch, manager, build)
    with pytest.raises(Exception) as refused:
        asyncio.run(s.start())
    assert getattr(refused.value, "status_code", None) == 409, refused.value
    assert "every GPU is taken" in refused.value.log_message
    assert built == [] and grants == []
    assert swarm_gpu._pending == []


def test_a_gpu_start_reserves_after_its_image_and_pins_the_node(monkeypatch):
    manager = FakeManager([node("n1", ["GPU-a"])])

    async def found(self, profile, tag):
        return None  # no packages: the profile's image

    s, grants = gpu_start(monkeypatch, manager, found)
    with pytest.raises(Started):
        asyncio.run(s.start())
    ((grant, constraints),) = grants
    assert grant.gpus == ("GPU-a",) and grant.constraint in constraints
    assert swarm_gpu._pending == []  # released once the start ended
    events = s.spawn_progress._events
    assert [e["message"] for e in events][-1] == "GPU GPU-a of node n1 is held for you"

"""GPUs on a Docker Swarm, handed out by the hub (cluster.mode: swarm).

GPU nodes advertise their GPUs the documented way, as the Swarm generic resource
cluster.gpu_resource (`node-generic-resources` in the node's daemon.json), but a server's
service does NOT reserve it: swarmkit's constraint enforcer rejects every task holding a
generic resource whenever its node is updated (a network reaching it, a label change:
docs/multi-node.md, "GPU nodes"). The hub picks the node and its GPUs itself, as the
single-host allocator (hubstack.hub.gpu) does for containers, with the same rule
(gpu.choose_gpus) under the same lock (gpu.hub_lock):

    grant = await SwarmGPUAllocator(cfg, api).reserve(user, profile, constraints)
    try:
        # the service: pinned with grant.constraint, grant.labels on it,
        # grant.environment in its container's environment
        api.create_service(...)
    finally:
        await release(grant)

Who holds which GPU is read from two labels on each GPU server's service, so it survives
a hub restart: LABEL_GPUS (the GPUs, as the node advertises them) and LABEL_GPU_NODE (the
node's ID). A service holds its GPUs from its creation (pending included) until it is
removed or its task is over. Choices this hub made whose service does not exist yet are
counted too (release() ends that, once the service exists or its creation failed).
The lock is held while a choice reads the swarm and while a grant is released: a choice
whose read of the services predates a new service still sees that service's grant.

The task is told its GPUs as a container with device requests is: NVIDIA_VISIBLE_DEVICES
(gpu.gpu_environment), which the NVIDIA container runtime, the node's default runtime,
reads. A service spec has no devices field, so nodes without the NVIDIA container toolkit
are not served in swarm mode.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterable
from dataclasses import dataclass, field
from typing import Any

from hubstack.config import PlatformConfig, ProfileConfig
from hubstack.hub import gpu
from hubstack.hub.container_spec import USER_LABEL
from hubstack.hub.service_spec import unmet_constraints

LABEL_GPUS = gpu.LABEL_GPUS
"""On a GPU server's service (and its container): its GPUs, comma-separated, as its node
advertises them (UUIDs, or indices for a node that advertises a count)."""
LABEL_GPU_NODE = "io.hubstack.gpu-node"
"""On a GPU server's service: the ID of the node its GPUs are on (it is pinned there)."""

TASK_OVER = frozenset({"complete", "shutdown", "failed", "rejected", "orphaned", "remove"})
"""Swarm task states after running: such a task holds nothing any more."""


class GPUUnavailable(gpu.GPUUnavailable):
    """No node can give the GPUs now; the message, for the analyst, says which case."""


def gpu_ids(entries: Iterable[dict] | None, kind: str) -> list[str]:
    """The GPUs a list of Swarm generic resources (a node's description) holds of KIND:
    each named one's value (`NVIDIA-GPU=GPU-3a0b...`: the UUID), and for a counted one
    (`NVIDIA-GPU=2`) the indices 0..N-1, which NVIDIA_VISIBLE_DEVICES takes as well."""
    ids: list[str] = []
    for entry in entries or []:
        named = entry.get("NamedResourceSpec") or {}
        discrete = entry.get("DiscreteResourceSpec") or {}
        if named.get("Kind") == kind:
            ids.append(str(named.get("Value", "")))
        elif discrete.get("Kind") == kind:
            ids.extend(str(i) for i in range(int(discrete.get("Value") or 0)))
    return ids


@dataclass(frozen=True)
class GPUNode:
    node_id: str
    name: str
    gpus: tuple[str, ...]
    availability: str
    state: str
    raw: dict = field(repr=False, compare=False, default_factory=dict)
    """The engine's node inspect, for unmet_constraints."""

    @property
    def usable(self) -> bool:
        """Swarm places tasks on it: ready and active."""
        return self.state == "ready" and self.availability == "active"

    @property
    def condition(self) -> str:
        """Why it may not be usable, in a word: its availability (drain, pause) when not
        active, else its state (ready, down)."""
        return self.availability if self.availability != "active" else self.state


def gpu_nodes(api: Any, kind: str) -> list[GPUNode]:
    """Every node of the swarm with the GPUs it advertises (none: an empty tuple), by name."""
    out = []
    for node in api.nodes():
        spec, desc = node.get("Spec") or {}, node.get("Description") or {}
        out.append(
            GPUNode(
                node_id=node["ID"],
                name=desc.get("Hostname") or node["ID"][:12],
                gpus=tuple(gpu_ids((desc.get("Resources") or {}).get("GenericResources"), kind)),
                availability=spec.get("Availability", "active"),
                state=(node.get("Status") or {}).get("State", ""),
                raw=node,
            )
        )
    return sorted(out, key=lambda n: n.name)


@dataclass(frozen=True)
class SwarmGPUHolder:
    node_id: str
    gpu: str
    user: str
    service: str
    state: str
    """Its task's state ('new' while the service has no task yet)."""


def gpu_holders(api: Any) -> list[SwarmGPUHolder]:
    """Who holds which GPU of which node, read from the GPU servers' service labels: a
    service holds its GPUs from its creation until it is removed or its task is over."""
    services = api.services(filters={"label": [LABEL_GPUS]})
    if not services:
        return []
    newest: dict[str, dict] = {}
    for task in api.tasks(filters={"service": [s["ID"] for s in services]}):
        seen = newest.get(task["ServiceID"])
        if seen is None or task.get("CreatedAt", "") > seen.get("CreatedAt", ""):
            newest[task["ServiceID"]] = task
    holders = []
    for service in services:
        labels = service["Spec"].get("Labels") or {}
        task = newest.get(service["ID"])
        state = ((task or {}).get("Status") or {}).get("State", "new")
        if state in TASK_OVER:
            continue
        for part in labels.get(LABEL_GPUS, "").split(","):
            if part.strip():
                holders.append(
                    SwarmGPUHolder(
                        labels.get(LABEL_GPU_NODE, ""),
                        part.strip(),
                        labels.get(USER_LABEL, "?"),
                        service["Spec"]["Name"],
                        state,
                    )
                )
    return sorted(holders, key=lambda h: (h.node_id, h.gpu, h.user))


def held_by_node(holders: Iterable[SwarmGPUHolder]) -> dict[str, list[str]]:
    """Node ID -> the GPUs held there (a GPU once per holder)."""
    out: dict[str, list[str]] = {}
    for h in holders:
        out.setdefault(h.node_id, []).append(h.gpu)
    return out


def format_gpu_status(cfg: PlatformConfig, api: Any) -> list[str]:
    """Lines for `hubstack gpus` in swarm mode: each node's advertised GPUs and who holds
    each (as the hub hands them out: the GPU servers' labels)."""
    nodes = [n for n in gpu_nodes(api, cfg.cluster.gpu_resource) if n.gpus]
    holders = gpu_holders(api)
    if not nodes and not holders:
        return [f"GPUs: no node of this swarm advertises {cfg.cluster.gpu_resource}"]
    by_gpu: dict[tuple[str, str], list[SwarmGPUHolder]] = {}
    for h in holders:
        by_gpu.setdefault((h.node_id, h.gpu), []).append(h)
    advertised = {(n.node_id, g) for n in nodes for g in n.gpus}
    busy = len(advertised & set(by_gpu))
    lines = [f"GPUs: {len(advertised)} on {len(nodes)} node(s) of the swarm, {busy} busy"]

    def who(key: tuple[str, str]) -> str:
        held = by_gpu.get(key)
        return ", ".join(f"{h.user} ({h.service}, {h.state})" for h in held) if held else "free"

    for n in nodes:
        lines.append(f"  {n.name}{'' if n.usable else f' ({n.condition})'}:")
        lines += [f"    GPU {g}: {who((n.node_id, g))}" for g in n.gpus]
    # Held on a node that no longer advertises that GPU (the node left, or was reconfigured).
    for key in sorted(set(by_gpu) - advertised):
        lines.append(f"  GPU {key[1]} of node {key[0][:12]} (not advertised): {who(key)}")
    return lines


def offered_profiles(cfg: PlatformConfig, api: Any) -> list[ProfileConfig]:
    """Profiles to show in the spawn form in swarm mode: those asking for GPUs only when
    some node advertises that many."""
    most = max((len(n.gpus) for n in gpu_nodes(api, cfg.cluster.gpu_resource)), default=0)
    return [p for p in cfg.profiles if p.gpus <= most]


@dataclass(frozen=True)
class SwarmGrant:
    """What the spawner puts into the GPU server's service."""

    owner: str
    node_id: str
    node_name: str
    gpus: tuple[str, ...]
    labels: dict[str, str]
    environment: dict[str, str]

    @property
    def constraint(self) -> str:
        """The placement constraint that pins the service to the node of its GPUs."""
        return f"node.id=={self.node_id}"


_pending: list[SwarmGrant] = []
"""Choices of this hub whose service does not exist yet (the in-process reserved set)."""


async def release(grant: SwarmGrant | None) -> None:
    """GRANT's service exists now (its labels hold the GPUs), or will never: it no longer
    counts as pending. Safe to call twice. Under gpu.hub_lock: a choice being made read
    the swarm before this service existed, so it must still see the grant as pending."""
    if grant is None:
        return
    async with gpu.hub_lock:
        _pending[:] = [g for g in _pending if g is not grant]


def _needs(profile: ProfileConfig) -> str:
    what = f"the profile {profile.display_name!r} ({profile.name})"
    return f"{what} needs {profile.gpus} GPU{'s' if profile.gpus != 1 else ''}"


def choose(
    profile: ProfileConfig,
    constraints: list[str],
    nodes: list[GPUNode],
    held: dict[str, list[str]],
    kind: str,
    shared: bool = False,
) -> tuple[GPUNode, list[str]]:
    """The node and GPUs for PROFILE among NODES, with HELD (node ID -> GPUs held there):
    of the nodes that meet CONSTRAINTS, are ready and active and have enough GPUs free
    (gpu.choose_gpus), the one with the fewest free (pack: larger holes stay for larger
    asks). GPUUnavailable, worded for each case, when there is none."""
    count = profile.gpus
    advertising = [n for n in nodes if n.gpus]
    if not advertising:
        raise GPUUnavailable(
            f"{_needs(profile)}, and no node of this swarm advertises {kind} (a GPU node "
            f'lists its GPUs in its daemon.json, "node-generic-resources": docs/multi-node.md, '
            "GPU nodes). Choose another profile, or ask the platform team"
        )
    fitting = [n for n in advertising if not unmet_constraints(n.raw, constraints)]
    if not fitting:
        names = ", ".join(n.name for n in advertising)
        raise GPUUnavailable(
            f"{_needs(profile)} on a node with {' and '.join(constraints)}, and no node with "
            f"GPUs ({names}) meets that. Choose another profile, or ask the platform team "
            "(`hubstack nodes label NODE KEY=VALUE`)"
        )
    usable = [n for n in fitting if n.usable]
    if not usable:
        states = ", ".join(f"{n.name}: {n.condition}" for n in fitting)
        raise GPUUnavailable(
            f"{_needs(profile)}, and every node with GPUs it may use is drained or down "
            f"({states}). Try again later, or choose another profile"
        )
    if max(len(n.gpus) for n in usable) < count:
        most = max(len(n.gpus) for n in usable)
        raise GPUUnavailable(
            f"{_needs(profile)} on one node, and no node it may use has that many (the most: "
            f"{most}). Choose another profile, or ask the platform team to lower the "
            "profile's gpus"
        )
    choices = []
    for n in usable:
        chosen = gpu.choose_gpus(n.gpus, held.get(n.node_id, []), count, shared)
        if chosen is not None:
            free = len([g for g in n.gpus if g not in held.get(n.node_id, [])])
            choices.append((free, n.name, n, chosen))
    if not choices:
        total = sum(len(n.gpus) for n in usable)
        busy = sum(len(set(n.gpus) & set(held.get(n.node_id, []))) for n in usable)
        names = ", ".join(n.name for n in usable)
        raise GPUUnavailable(
            f"{_needs(profile)}, and every GPU is taken: {busy} of {total} busy on the nodes "
            f"it may use ({names}). Try again when another analyst's GPU server stops, or "
            "choose another profile"
        )
    _, _, node, chosen = min(choices, key=lambda c: (c[0], c[1]))
    return node, chosen


class SwarmGPUAllocator:
    """Picks a GPU node and GPUs for a server, under gpu.hub_lock: what the swarm's GPU
    services' labels say is held, plus this hub's pending choices. Cheap to make per
    start: the lock and the pending choices are the process's, the rest is in the swarm."""

    def __init__(self, cfg: PlatformConfig, api: Any):
        self.cfg = cfg
        self.api = api

    def _read(self) -> tuple[list[GPUNode], list[SwarmGPUHolder]]:
        return gpu_nodes(self.api, self.cfg.cluster.gpu_resource), gpu_holders(self.api)

    async def reserve(
        self, owner: str, profile: ProfileConfig, constraints: list[str], replacing: str = ""
    ) -> SwarmGrant:
        """The grant for OWNER's PROFILE on a node meeting CONSTRAINTS, counted as pending
        until release(grant); GPUUnavailable (the analyst's message) when none. The GPUs
        of service REPLACING (which the caller removes before it makes the new one) do not
        count as held."""
        async with gpu.hub_lock:
            node, chosen = await self._choose(profile, constraints, replacing)
            grant = SwarmGrant(
                owner=owner,
                node_id=node.node_id,
                node_name=node.name,
                gpus=tuple(chosen),
                labels={LABEL_GPUS: ",".join(chosen), LABEL_GPU_NODE: node.node_id},
                environment=gpu.gpu_environment(
                    chosen, gpu.MODE_DEVICE_REQUESTS, self.cfg.gpu.driver_dir
                ),
            )
            _pending.append(grant)
            return grant

    async def check(
        self, profile: ProfileConfig, constraints: list[str], replacing: str = ""
    ) -> None:
        """GPUUnavailable now, as reserve() would say it, when no node has PROFILE's GPUs
        free; holds nothing. For a start with work to do before its reservation (a per-user
        image build): its analyst hears "no GPU" at once, and no GPU idles through the build."""
        async with gpu.hub_lock:
            await self._choose(profile, constraints, replacing)

    async def _choose(
        self, profile: ProfileConfig, constraints: list[str], replacing: str
    ) -> tuple[GPUNode, list[str]]:
        """choose() on the swarm as it is, plus this hub's pending grants. Under hub_lock."""
        if profile.gpus < 1:
            raise ValueError("a GPU choice needs a profile with gpus >= 1")
        nodes, holders = await asyncio.to_thread(self._read)
        held = held_by_node(h for h in holders if not replacing or h.service != replacing)
        for g in _pending:
            held.setdefault(g.node_id, []).extend(g.gpus)
        return choose(
            profile,
            constraints,
            nodes,
            held,
            self.cfg.cluster.gpu_resource,
            self.cfg.gpu.shared,
        )

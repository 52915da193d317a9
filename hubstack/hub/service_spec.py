"""A notebook server as a Swarm service: the single-host container spec
(hubstack.hub.container_spec) carried over to what a Swarm service spec can hold.

What changes on the way (docs/multi-node.md, probed on dockerd 20.10, API 1.41):
- no-new-privileges: a service spec has no field for it; each node's daemon.json sets
  `"no-new-privileges": true`, which the engine applies to every container;
- /etc/passwd and /etc/group: a service has no create-then-put_archive step, so the
  analyst's files are Swarm configs mounted at those paths, named by their content (a new
  content is a new config: configs cannot change);
- the pids limit: docker-py's Resources lacks it, the API's Limits.Pids holds it;
- GPUs: a reservation of the Swarm generic resource cluster.gpu_resource, so Swarm places
  the server only on a node with one free and two analysts never share one;
- placement: the profile's node labels as constraints (PlatformConfig.placement_constraints).

No JupyterHub import and no engine call here: every field is unit-tested from the spec.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass, field

from docker.types import (
    ConfigReference,
    ContainerSpec,
    EndpointSpec,
    Placement,
    Resources,
    RestartPolicy,
    ServiceMode,
    TaskTemplate,
)
from docker.utils import parse_bytes

from hubstack.hub import container_spec

ACCOUNT_FILES = ("/etc/passwd", "/etc/group")


@dataclass(frozen=True)
class AccountConfig:
    """One account file as a Swarm config: its name (by content), data and mount path."""

    name: str
    data: bytes
    target: str
    labels: dict[str, str] = field(default_factory=dict)


def account_configs(
    prefix: str, user_name: str, ident: dict, image_passwd: str, image_group: str
) -> list[AccountConfig]:
    """The image's /etc/passwd and /etc/group plus the analyst's lines (as the single-host
    spawner writes them), as configs named PREFIX-USER-passwd-HASH: the same content gives
    the same name, so a restart reuses its config; another content gets a new one."""
    passwd, group = container_spec.passwd_entries(
        user_name, ident["uid"], ident["gid"], ident["groups"], ident["home"]
    )
    merged = {
        "/etc/passwd": container_spec.merge_account_file(image_passwd, passwd, 2),
        "/etc/group": container_spec.merge_account_file(image_group, group, 2),
    }
    out = []
    for target in ACCOUNT_FILES:
        data = merged[target].encode()
        digest = hashlib.sha256(data).hexdigest()[:12]
        kind = target.rsplit("/", 1)[1]
        out.append(
            AccountConfig(
                name=f"{prefix}-{user_name}-{kind}-{digest}",
                data=data,
                target=target,
                labels={container_spec.USER_LABEL: user_name},
            )
        )
    return out


@dataclass(frozen=True)
class ServiceRequest:
    """Everything one notebook service is made of, as the spawner decided it."""

    name: str
    image: str
    """By digest (REPO@sha256:...): every node runs the same bytes."""
    user_name: str
    profile_name: str
    ident: dict
    """uid, gid, groups, home (the spawner's _identity)."""
    command: list[str]
    env: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    """More container labels (the platform label, the spawner's extra_labels)."""
    cpu_limit: float | None = None
    mem_limit: str | int | None = None
    reservation_fraction: float = 0.25
    """Share of each limit reserved for placement: Swarm puts a server only on a node with
    that much unreserved."""
    pids_limit: int = container_spec.DEFAULT_PIDS_LIMIT
    constraints: list[str] = field(default_factory=list)
    gpus: int = 0
    gpu_resource: str = "NVIDIA-GPU"
    networks: list[str] = field(default_factory=list)
    accounts: list[tuple[str, AccountConfig]] = field(default_factory=list)
    """(config ID, config) pairs, mounted at their targets."""
    mounts: list = field(default_factory=list)


def resources(req: ServiceRequest) -> Resources:
    """Limits, and reservations for placement: a share of the limits, plus the GPUs."""
    mem = parse_bytes(req.mem_limit) if req.mem_limit else None
    nano = int(req.cpu_limit * 1e9) if req.cpu_limit else None
    fraction = req.reservation_fraction
    res = Resources(
        cpu_limit=nano,
        mem_limit=mem,
        cpu_reservation=int(nano * fraction) if nano and fraction else None,
        mem_reservation=int(mem * fraction) if mem and fraction else None,
        generic_resources={req.gpu_resource: req.gpus} if req.gpus else None,
    )
    # docker-py's Resources has no pids limit; the API's Limits.Pids (1.41) has.
    res.setdefault("Limits", {})["Pids"] = req.pids_limit
    return res


def service_spec(req: ServiceRequest) -> dict:
    """Keyword arguments for docker-py's APIClient.create_service."""
    ident = req.ident
    labels = container_spec.create_kwargs(req.user_name, req.profile_name, ident, req.labels)[
        "labels"
    ]
    container = ContainerSpec(
        image=req.image,
        command=req.command,
        env=req.env,
        workdir=ident["home"],
        user=f"{ident['uid']}:{ident['gid']}",
        groups=[str(g) for g in ident["groups"]],
        labels=labels,
        cap_drop=["ALL"],
        init=True,
        configs=[
            ConfigReference(config_id, config.name, filename=config.target, uid="0", gid="0")
            for config_id, config in req.accounts
        ]
        or None,
        mounts=req.mounts or None,
    )
    task = TaskTemplate(
        container_spec=container,
        resources=resources(req),
        # A notebook that exits is over: JupyterHub notices (poll) and the analyst starts
        # again, as on one host; Swarm must not restart it somewhere behind the hub's back.
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=req.constraints or None),
        networks=list(req.networks) or None,
    )
    return {
        "name": req.name,
        "task_template": task,
        "labels": dict(labels),
        "mode": ServiceMode("replicated", 1),
        # No virtual IP: the hub reaches the one task by the service's name (DNS round
        # robin over one), and nothing is published on the nodes' ports.
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }

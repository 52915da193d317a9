"""`hubstack nodes`: the Swarm's nodes as the platform sees them (labels, GPUs free and
used, which analysts run where), and `hubstack nodes label NODE KEY=VALUE` to mark what a
node offers; `hubstack nodes drain NODE` / `activate NODE` to take a node out of
placement and back. Run against a manager engine (DOCKER_HOST, or the local socket).

GPUs are the Swarm generic resource cluster.gpu_resource that a node advertises
(node-generic-resources in its daemon.json); who holds which is read from the GPU servers'
service labels, as the hub hands them out (hubstack.hub.swarm_gpu).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterable
from dataclasses import dataclass, field
from pathlib import Path

import docker

from hubstack import node_bundle, tls
from hubstack.config import PlatformConfig, check_node_label
from hubstack.engine import docker_client
from hubstack.errors import CommandError
from hubstack.hub import swarm_gpu
from hubstack.hub.container_spec import USER_LABEL
from hubstack.registry import node_ca_paths


@dataclass
class NodeRow:
    name: str
    node_id: str
    role: str
    state: str
    availability: str
    address: str
    labels: dict[str, str]
    gpus_total: int
    gpus_used: int
    analysts: list[str] = field(default_factory=list)


def _resources(entries: Iterable[dict] | None, kind: str) -> int:
    """How many of KIND a list of Swarm generic resources holds (named: one each)."""
    return len(swarm_gpu.gpu_ids(entries, kind))


def _manager_api(client: docker.DockerClient) -> docker.APIClient:
    swarm = client.info().get("Swarm") or {}
    if not swarm.get("ControlAvailable"):
        state = swarm.get("LocalNodeState") or "inactive"
        raise CommandError(
            f"this engine is not a Swarm manager (swarm state: {state}): run `hubstack nodes` "
            "with DOCKER_HOST set to a manager, or make this host one with `docker swarm init`"
        )
    return client.api


def node_rows(cfg: PlatformConfig, client: docker.DockerClient) -> list[NodeRow]:
    api = _manager_api(client)
    kind = cfg.cluster.gpu_resource
    rows = {}
    advertised: dict[str, list[str]] = {}
    for node in api.nodes():
        spec, desc, status = node["Spec"], node.get("Description") or {}, node["Status"]
        advertised[node["ID"]] = swarm_gpu.gpu_ids(
            (desc.get("Resources") or {}).get("GenericResources"), kind
        )
        rows[node["ID"]] = NodeRow(
            name=desc.get("Hostname") or node["ID"][:12],
            node_id=node["ID"],
            role=spec.get("Role", "?"),
            state=status.get("State", "?"),
            availability=spec.get("Availability", "?"),
            address=status.get("Addr", "?"),
            labels=dict(spec.get("Labels") or {}),
            gpus_total=len(advertised[node["ID"]]),
            gpus_used=0,
        )
    # GPUs used: as the hub hands them out, from its GPU servers' labels (pending included).
    for node_id, held in swarm_gpu.held_by_node(swarm_gpu.gpu_holders(api)).items():
        if node_id in rows:
            rows[node_id].gpus_used = len(set(held) & set(advertised[node_id]))
    for task in api.tasks(filters={"desired-state": "running"}):
        row = rows.get(task.get("NodeID", ""))
        if row is None:  # not placed yet: pending
            continue
        user = ((task["Spec"].get("ContainerSpec") or {}).get("Labels") or {}).get(USER_LABEL)
        if user and user not in row.analysts:
            row.analysts.append(user)
    return sorted(rows.values(), key=lambda r: (r.role != "manager", r.name))


def format_nodes(rows: list[NodeRow]) -> list[str]:
    table = [("NODE", "ROLE", "STATE", "AVAILABILITY", "ADDRESS", "GPUS", "LABELS", "ANALYSTS")]
    for r in rows:
        gpus = f"{r.gpus_total - r.gpus_used} free of {r.gpus_total}" if r.gpus_total else "-"
        labels = ",".join(f"{k}={v}" for k, v in sorted(r.labels.items())) or "-"
        table.append(
            (r.name, r.role, r.state, r.availability, r.address, gpus, labels)
            + (",".join(sorted(r.analysts)) or "-",)
        )
    widths = [max(len(row[i]) for row in table) for i in range(len(table[0]))]
    return [
        "  ".join(c.ljust(w) for c, w in zip(row, widths, strict=True)).rstrip() for row in table
    ]


def parse_assignments(assignments: list[str]) -> dict[str, str]:
    out = {}
    for item in assignments:
        key, sep, value = item.partition("=")
        if not sep:
            raise CommandError(f"{item!r}: write KEY=VALUE (e.g. hubstack.gpu=true)")
        try:
            check_node_label(key, value)
        except ValueError as e:
            raise CommandError(str(e)) from None
        out[key] = value
    return out


def _find_node(client: docker.DockerClient, name: str) -> docker.models.nodes.Node:
    """Node NAME (host name or ID) of the swarm CLIENT manages, or a clear error."""
    _manager_api(client)
    try:
        return client.nodes.get(name)
    except docker.errors.NotFound:
        known = ", ".join(sorted(n.attrs["Description"]["Hostname"] for n in client.nodes.list()))
        raise CommandError(f"no node {name!r} in this swarm (nodes: {known})") from None
    except docker.errors.APIError as e:  # e.g. a host name two nodes share
        raise CommandError(f"node {name!r}: {e.explanation or e}") from None


def label_node(
    client: docker.DockerClient, name: str, add: dict[str, str], remove: list[str]
) -> dict[str, str]:
    """Set ADD and drop REMOVE on node NAME (host name or ID); returns its labels now."""
    node = _find_node(client, name)
    spec = dict(node.attrs["Spec"])
    labels = {k: v for k, v in (spec.get("Labels") or {}).items() if k not in remove}
    labels.update(add)
    spec["Labels"] = labels
    node.update(spec)
    return labels


AVAILABILITY = {"drain": "drain", "activate": "active"}
"""The `hubstack nodes` subcommand -> the Swarm availability it sets."""


def set_availability(client: docker.DockerClient, name: str, availability: str) -> str:
    """Set node NAME's Swarm availability (active, drain); returns what it was. Draining
    stops new placements there and moves the node's running tasks (analysts' servers
    among them) to other nodes, as `docker node update --availability drain` does."""
    node = _find_node(client, name)
    spec = dict(node.attrs["Spec"])
    before = spec.get("Availability", "active")
    if before != availability:
        spec["Availability"] = availability
        node.update(spec)
    return str(before)


def join_script(cfg: PlatformConfig, client: docker.DockerClient, manager: bool = False) -> str:
    """What to run, as root, on a machine that joins this swarm: the platform CA where its
    engine looks for the registry's, then `docker swarm join` to a manager."""
    _manager_api(client)
    swarm = client.swarm
    swarm.reload()
    token = swarm.attrs["JoinTokens"]["Manager" if manager else "Worker"]
    managers = [m["Addr"] for m in client.info()["Swarm"].get("RemoteManagers") or []]
    if not managers:
        raise CommandError("the swarm lists no manager address; is this engine a manager?")
    ca = tls.platform_ca(cfg).certificate_pem()
    trust: list[str] = []
    for ca_file in node_ca_paths(cfg):
        trust += [
            f"mkdir -p '{ca_file.rsplit('/', 1)[0]}'",
            f"cat > '{ca_file}' <<'HUBSTACK_CA'",
            ca.rstrip("\n"),
            "HUBSTACK_CA",
        ]
    return "\n".join(
        [
            "#!/bin/sh",
            "# Join this machine to the hubstack swarm. Run as root on the new node, which",
            "# needs a Docker engine, and ports 2377/tcp, 7946/tcp+udp, 4789/udp open to the",
            '# other nodes. Its /etc/docker/daemon.json should hold "no-new-privileges": true',
            '# (and on a GPU node its GPUs: "node-generic-resources": ["NVIDIA-GPU=<uuid>"]),',
            "# with the engine restarted after a change: see docs/multi-node.md.",
            "set -eu",
            "# The platform CA: the engine trusts the registries' certificate through it (the",
            "# read-only instance's address, and the per-user images' one).",
            *trust,
            f"docker swarm join --token '{token}' '{managers[0]}'",
            "# Then, on a manager: hubstack nodes label NODE hubstack.gpu=true (or .spark)",
            "",
        ]
    )


def cmd_nodes(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    if args.nodes_command == "bundle":
        node_bundle.write_bundle(
            cfg,
            docker_client(),
            Path(args.dir),
            profiles=args.profile,
            tag=args.tag,
            packages=not args.no_packages,
            node_status=Path(args.node_status) if args.node_status else None,
        )
        return 0
    if args.nodes_command == "join-command":
        print(join_script(cfg, docker_client(), manager=args.manager), end="")
        return 0
    if args.nodes_command == "label":
        add = parse_assignments(args.labels)
        if not add and not args.remove:
            raise CommandError("nothing to do: give KEY=VALUE labels and/or --remove KEY")
        labels = label_node(docker_client(), args.node, add, args.remove)
        shown = ", ".join(f"{k}={v}" for k, v in sorted(labels.items())) or "none"
        print(f"{args.node}: labels {shown}")
        return 0
    if args.nodes_command in AVAILABILITY:
        wanted = AVAILABILITY[args.nodes_command]
        before = set_availability(docker_client(), args.node, wanted)
        if before == wanted:
            print(f"{args.node}: already {wanted}")
        else:
            print(f"{args.node}: {before} -> {wanted}")
        return 0
    if cfg.cluster.mode != "swarm":
        print("cluster.mode is single: notebooks run on this host's engine only")
    print("\n".join(format_nodes(node_rows(cfg, docker_client()))))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "nodes",
        help="the Swarm's nodes: labels, GPUs free and used, analysts (swarm mode)",
        description="List the Swarm's nodes, or label one. Talks to a manager engine "
        "(DOCKER_HOST or the local socket).",
    )
    p.set_defaults(func=cmd_nodes, nodes_command=None)
    sub = p.add_subparsers(dest="nodes_command", metavar="SUBCOMMAND")
    label = sub.add_parser(
        "label",
        help="set (KEY=VALUE) or remove (--remove KEY) labels of a node",
        description="Placement reads these labels: cluster.node_labels (hubstack.gpu, "
        "hubstack.spark) and the profiles' placement.",
    )
    label.add_argument("node", help="the node's host name (as `hubstack nodes` shows) or ID")
    label.add_argument("labels", nargs="*", metavar="KEY=VALUE")
    label.add_argument("--remove", action="append", default=[], metavar="KEY")
    label.set_defaults(func=cmd_nodes)
    for command, help_text in (
        ("drain", "take no new servers on a node and move its tasks elsewhere (maintenance)"),
        ("activate", "let a drained node take servers again (Swarm availability active)"),
    ):
        availability = sub.add_parser(
            command,
            help=help_text,
            description=f"{help_text}: Swarm availability {AVAILABILITY[command]}.",
        )
        availability.add_argument(
            "node", help="the node's host name (as `hubstack nodes` shows) or ID"
        )
        availability.set_defaults(func=cmd_nodes)
    join = sub.add_parser(
        "join-command",
        help="print the script that joins a new node (the registry's CA, then swarm join)",
    )
    join.add_argument("--manager", action="store_true", help="join as a manager, not a worker")
    join.set_defaults(func=cmd_nodes)
    bundle = sub.add_parser(
        "bundle",
        help="write what an air-gapped node needs: engine packages, CA, images, install.sh",
        description="Write a folder to carry to a node without network access to package "
        "registries: the engine's Debian packages (docker.io, containerd, runc and what the "
        "node lacks, resolved by apt), the platform CA for the registry, a docker save of "
        "the images its servers run, an install.sh, and the sha256 of every file. No "
        "secret: the join token comes from `hubstack nodes join-command`.",
    )
    bundle.add_argument("dir", metavar="DIR", help="the folder to write (must not exist)")
    bundle.add_argument(
        "--profile",
        action="append",
        default=[],
        metavar="NAME",
        help="a profile the node serves (again for more); default: every profile's image "
        "and the Spark executor",
    )
    bundle.add_argument(
        "--tag", help="the images' tag (default: hub.notebook_image_tag, i.e. stable)"
    )
    bundle.add_argument(
        "--no-packages", action="store_true", help="no engine packages (the node has Docker)"
    )
    bundle.add_argument(
        "--node-status",
        metavar="FILE",
        help="the node's /var/lib/dpkg/status: packages resolved against what it has "
        "(default: against the base image, a minimal Debian)",
    )
    bundle.set_defaults(func=cmd_nodes)

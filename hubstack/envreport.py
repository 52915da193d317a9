"""`hubstack env report`: who runs which environment, and how far it is from `stable`.

Every running notebook server of this platform (the spawner's labels name the analyst
and the profile) and every container of the analysts' Spark clusters, each with
the image it runs, that image's lineage labels (``io.hubstack.lineage.NAME``, one per
image it is built FROM), and whether it is the current `stable` of its image name. For an
outdated one, the package differences from stable (hubstack.images.lockdiff).

`stable` is what `hubstack ci promote` moved: its digest in the registry (the registry is
what the spawner resolves tags in), or this engine's tag when the registry does not answer.
An image with no `stable` yet (nothing promoted) is compared with the tag its containers
are started from instead, and the report says so: `hub.notebook_image_tag`, for notebook
servers and the cluster alike.
"""

from __future__ import annotations

import html
import json
from dataclasses import asdict, dataclass
from typing import Any

import docker
import requests

from hubstack import spark
from hubstack.ci.promote import STABLE
from hubstack.config import PlatformConfig
from hubstack.engine import docker_client, platform_containers, repo_digest
from hubstack.errors import CommandError
from hubstack.hub.container_spec import PROFILE_LABEL, USER_LABEL
from hubstack.images.build import IMAGE_LABEL, LINEAGE_LABEL_PREFIX
from hubstack.images.graph import GraphError, ImageGraph
from hubstack.images.lockdiff import ImageLock, PackageChange, diff_locks, read_lock
from hubstack.registry import RegistryClient, load_credentials

ENV_REPORT_SERVICE = "env-report"
ENV_REPORT_PORT = 10101
"""Where the hub runs `hubstack env serve` (hubstack.hub.setup), the admins' report page at
/services/env-report/ (hubstack.envreport_page)."""

UNKNOWN = "?"


@dataclass(frozen=True)
class Target:
    """A tag of one of our images as the platform knows it."""

    ref: str
    image_id: str | None
    """The image in this engine, when it has it."""
    digest: str | None
    """Its digest in the registry, when the registry was asked and has it."""


@dataclass
class Entry:
    analyst: str
    kind: str
    """notebook | spark"""
    profile: str | None
    container: str
    image_ref: str
    """The reference the container was created from."""
    image_id: str
    repo_digests: list[str]
    image_name: str | None
    digest: str | None
    """The image's digest in its repository of our registry, when the engine knows it."""
    lineage: dict[str, str]
    """Image name -> context digest, parents first."""
    status: str = "unknown"
    """current | outdated | unknown"""
    compared_with: str | None = None
    note: str = ""
    changes: list[PackageChange] | None = None
    """Package differences from this image to compared_with; None: not compared."""

    def to_dict(self) -> dict:
        d = asdict(self)
        d["changes"] = (
            None if self.changes is None else [{**asdict(c), "kind": c.kind} for c in self.changes]
        )
        return d


class Resolver:
    """Tags resolved once per report: the registry's digest when it answers, else the
    engine's tag; and each image's lock, read once."""

    def __init__(self, cfg: PlatformConfig, client: docker.DockerClient):
        self.cfg, self.client = cfg, client
        self.registry: RegistryClient | None = None
        self.note = ""
        try:
            registry = RegistryClient(cfg, load_credentials(cfg, create=False), timeout=10)
        except CommandError as e:
            self.note = f"tags looked up in this engine, not in the registry: {e}"
        else:
            if registry.ping():
                self.registry = registry
            else:
                self.note = (
                    f"tags looked up in this engine: registry {cfg.registry.address} did not answer"
                )
        self._targets: dict[tuple[str, str], Target | None] = {}
        self._locks: dict[str, ImageLock] = {}

    def _digest(self, name: str, tag: str) -> str | None:
        if self.registry is None:
            return None
        try:
            return self.registry.digest(name, tag)
        except requests.RequestException as e:
            raise CommandError(f"registry {self.cfg.registry.address}: {e}") from None

    def get(self, name: str, tag: str) -> Target | None:
        key = (name, tag)
        if key not in self._targets:
            digest = self._digest(name, tag)
            # Pushed from this engine or pulled by the hub from the read-only address.
            local = (
                [f"{repo}@{digest}" for repo in self.cfg.image_repositories(name)]
                if digest
                else [self.cfg.image_ref(name, tag)]
            )
            image_id = None
            for ref in local:
                try:
                    image_id = self.client.images.get(ref).id
                    break
                except docker.errors.ImageNotFound:
                    pass
            found = digest is not None or image_id is not None
            ref = self.cfg.image_ref(name, tag)
            self._targets[key] = Target(ref, image_id, digest) if found else None
        return self._targets[key]

    def lock(self, image_id: str) -> ImageLock:
        if image_id not in self._locks:
            self._locks[image_id] = read_lock(self.cfg, self.client, image_id)
        return self._locks[image_id]


def _image_order(cfg: PlatformConfig) -> list[str]:
    """Our images in build order (parents first), to list lineages in; [] without a graph."""
    try:
        return ImageGraph.from_config(cfg).order()
    except GraphError:
        return []


def running_containers(cfg: PlatformConfig, client: docker.DockerClient) -> list[tuple[str, Any]]:
    """(kind, container) of every running notebook server and Spark container of the platform,
    notebooks first, by analyst."""
    found: dict[str, tuple[str, Any]] = {}
    # Spark first: an analyst's Spark containers carry their user label too.
    for kind, label in (("spark", spark.CLUSTER_LABEL), ("notebook", USER_LABEL)):
        for c in platform_containers(cfg, client, label, include_stopped=False):
            found.setdefault(c.id, (kind, c))
    return sorted(
        found.values(), key=lambda kc: (kc[0], kc[1].labels.get(USER_LABEL, ""), kc[1].name)
    )


def describe(cfg: PlatformConfig, container, image, kind: str, order: list[str]) -> Entry:
    """CONTAINER (of KIND) and the IMAGE it runs, as a report entry."""
    image_id = container.attrs["Image"]
    labels = image.labels or {}
    lineage = {
        k[len(LINEAGE_LABEL_PREFIX) :]: v
        for k, v in labels.items()
        if k.startswith(LINEAGE_LABEL_PREFIX)
    }
    rank = {n: i for i, n in enumerate(order)}
    name = labels.get(IMAGE_LABEL)
    repo_digests = image.attrs.get("RepoDigests") or []
    # Notebooks run what the hub pulled from the read-only address, builds what was pushed
    # to the push address: one manifest digest under either name.
    ours = (
        next((d for r in cfg.image_repositories(name) if (d := repo_digest(image.attrs, r))), None)
        if name
        else None
    )
    return Entry(
        analyst=container.labels.get(USER_LABEL, UNKNOWN),
        kind=kind,
        profile=container.labels.get(PROFILE_LABEL),
        container=container.name,
        image_ref=container.attrs["Config"]["Image"],
        image_id=image_id,
        repo_digests=repo_digests,
        image_name=name,
        digest=ours.rsplit("@", 1)[1] if ours else None,
        lineage=dict(sorted(lineage.items(), key=lambda kv: (rank.get(kv[0], len(rank)), kv[0]))),
    )


def compare(cfg: PlatformConfig, entry: Entry, resolver: Resolver, against: str) -> None:
    """Set ENTRY's status, what it was compared with, and its package differences."""
    name = entry.image_name
    if not name:
        entry.note = f"the image has no {IMAGE_LABEL} label: not one of ours"
        return
    started_from = cfg.hub.notebook_image_tag  # notebooks and the cluster alike
    target = resolver.get(name, against)
    if target is None and started_from != against:
        entry.note = f"no {against} of {name} yet: compared with {started_from}"
        target = resolver.get(name, started_from)
    if target is None:
        entry.note = f"no {against} of {name}, and no {started_from}: nothing to compare with"
        return
    entry.compared_with = target.ref
    repo_digest = f"{cfg.image_repository(name)}@{target.digest}" if target.digest else None
    known_as = {f"{r}@{target.digest}" for r in cfg.image_repositories(name)}
    if entry.image_id == target.image_id or (target.digest and known_as & set(entry.repo_digests)):
        entry.status = "current"
        return
    entry.status = "outdated"
    if target.image_id is None:
        entry.note = (
            f"{target.ref} is {target.digest} in the registry, not in this engine: "
            f"`docker pull {repo_digest}` to see the package differences"
        )
        return
    try:
        entry.changes = diff_locks(resolver.lock(entry.image_id), resolver.lock(target.image_id))
    except CommandError as e:
        entry.note = f"packages not compared: {e}"


def env_report(
    cfg: PlatformConfig, client: docker.DockerClient, against: str = STABLE
) -> tuple[list[Entry], str]:
    """Every running container of the platform, compared with AGAINST; and a note on where
    the tags were looked up."""
    resolver = Resolver(cfg, client)
    order = _image_order(cfg)
    entries = []
    images: dict[str, Any] = {}  # ten analysts on one image: one lookup
    for kind, container in running_containers(cfg, client):
        image_id = container.attrs["Image"]
        if image_id not in images:
            images[image_id] = client.images.get(image_id)
        entry = describe(cfg, container, images[image_id], kind, order)
        compare(cfg, entry, resolver, against)
        entries.append(entry)
    return entries, resolver.note


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def format_entry(entry: Entry) -> list[str]:
    who = f"profile {entry.profile}" if entry.kind == "notebook" else "their Spark cluster"
    lines = [f"{entry.analyst}  ({who})  container {entry.container}"]
    # A spawner's container names its image by digest already; compose's names a tag.
    digest = f", digest {entry.digest}" if entry.digest and "@" not in entry.image_ref else ""
    lines.append(f"  image    {entry.image_ref} (id {_short(entry.image_id)}{digest})")
    if entry.lineage:
        lineage = ", ".join(f"{n} {d[:12]}" for n, d in entry.lineage.items())
        lines.append(f"  lineage  {lineage}")
    status = entry.status.upper() if entry.status == "outdated" else entry.status
    vs = f" ({entry.compared_with})" if entry.compared_with else ""
    lines.append(f"  status   {status}{vs}" + (f": {entry.note}" if entry.note else ""))
    if entry.changes is not None:
        lines += [f"    {c.format()}" for c in entry.changes] or ["    no package differences"]
    return lines


# --- the admins' page: a JupyterHub service behind the hub's login --------------------
def render_html(entries: list[Entry], note: str) -> str:
    """The report as one HTML page: a row per container, the package changes under it."""
    e = html.escape
    rows = []
    for entry in entries:
        who = f"profile {entry.profile}" if entry.kind == "notebook" else "their Spark cluster"
        lineage = ", ".join(f"{n} {d[:12]}" for n, d in entry.lineage.items())
        changes = "<br>".join(e(c.format()) for c in entry.changes or [])
        status = entry.status + (f": {entry.note}" if entry.note else "")
        rows.append(
            f"<tr class='{e(entry.status)}'><td>{e(entry.analyst)}</td><td>{e(who)}</td>"
            f"<td>{e(entry.container)}</td><td><code>{e(entry.image_ref)}</code><br>"
            f"id {e(_short(entry.image_id))}</td><td>{e(lineage)}</td>"
            f"<td>{e(status)}</td><td><code>{changes}</code></td></tr>"
        )
    outdated = sum(entry.status == "outdated" for entry in entries)
    return (
        "<!doctype html><html><head><meta charset='utf-8'><title>hubstack: who runs which "
        "environment</title><style>body{font-family:sans-serif}td,th{border-bottom:1px solid "
        "#ccc;padding:4px;vertical-align:top;text-align:left}tr.outdated{background:#fff3cd}"
        "</style></head><body><h1>Who runs which environment</h1>"
        f"<p>{len(entries)} running container(s), {outdated} on an older image than stable."
        + (f" Note: {e(note)}" if note else "")
        + "</p><table><tr><th>analyst</th><th>what</th><th>container</th><th>image</th>"
        "<th>lineage</th><th>status</th><th>packages that differ</th></tr>"
        + "".join(rows)
        + "</table><p>The same as <code>hubstack env report</code>.</p></body></html>"
    )


def cmd_serve(cfg: PlatformConfig, args) -> int:
    from hubstack.envreport_page import serve  # noqa: PLC0415 - jupyterhub.orm: the page only

    return serve(cfg, args.port)


def cmd_report(cfg: PlatformConfig, args) -> int:
    entries, note = env_report(cfg, docker_client(), args.against)
    if args.json:
        data = {"against": args.against, "note": note, "containers": [e.to_dict() for e in entries]}
        print(json.dumps(data, indent=2))
        return 0
    if note:
        print(f"note: {note}")
    if not entries:
        print("no notebook server or Spark container of this platform is running")
        return 0
    for entry in entries:
        print("\n".join(format_entry(entry)))
    counts = {s: sum(e.status == s for e in entries) for s in ("outdated", "current", "unknown")}
    print(f"\n{len(entries)} container(s): " + ", ".join(f"{n} {s}" for s, n in counts.items()))
    return 0


def register(subparsers) -> None:
    env = subparsers.add_parser(
        "env", help="who runs which environment: running containers and their images"
    )
    sub = env.add_subparsers(dest="env_command", metavar="ACTION", required=True)
    p = sub.add_parser(
        "report",
        help="each running notebook server and Spark container: analyst, image, lineage, "
        "and its package differences from stable",
        description="List every running notebook server and Spark container of this "
        "platform with its image and lineage, and say whether it runs the current stable "
        "image; for an outdated one print the package differences. Without a stable tag yet, "
        "compare with the tag the containers were started from (hub.notebook_image_tag).",
    )
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.add_argument(
        "--against",
        default=STABLE,
        metavar="TAG",
        help=f"the tag every image is compared with (default {STABLE})",
    )
    p.set_defaults(func=cmd_report)
    p = sub.add_parser(
        "serve",
        help="the report as a page for admins (the hub runs it as a service; not by hand)",
    )
    p.add_argument(
        "--port",
        type=int,
        default=ENV_REPORT_PORT,
        help=f"port on 127.0.0.1 (default {ENV_REPORT_PORT})",
    )
    p.set_defaults(func=cmd_serve)

"""Change detection: which images a range of commits makes stale, and why.

An image is stale when any file of its build context changed between REF and
HEAD (its folder, plus the paths its build.yaml `include:`s), or when an image
it is built FROM is rebuilt. The graph is the one the Dockerfiles at HEAD
describe (:class:`~hubstack.images.graph.ImageGraph`), never a hand-kept list.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.git import git, git_succeeds
from hubstack.images.graph import GraphError, ImageGraph

# How many changed files a reason names before it says "(+N more)".
_REASON_FILES = 3


def resolve_commit(root: Path, ref: str) -> str:
    """The full commit id REF names in ROOT's repository, or a clear error."""
    if not git_succeeds(root, "rev-parse", "--verify", "--quiet", f"{ref}^{{commit}}"):
        if not git_succeeds(root, "rev-parse", "--git-dir"):
            raise CommandError(
                f"{root} is not a git repository (source_dir); change detection needs one"
            )
        raise CommandError(f"unknown git revision {ref!r} in {root}: no commit by that name")
    return git(root, "rev-parse", "--verify", f"{ref}^{{commit}}").strip()


def changed_files(root: Path, since: str, head: str = "HEAD") -> list[str]:
    """Paths (relative to the repository top) that differ between SINCE and HEAD."""
    base = resolve_commit(root, since)
    tip = resolve_commit(root, head)
    out = git(root, "diff", "--name-only", "--no-renames", base, tip, "--")
    return [line for line in out.splitlines() if line]


@dataclass
class PlanItem:
    name: str
    reasons: list[str] = field(default_factory=list)
    changed: bool = False
    """True when its own context changed; False when it is rebuilt only for a parent."""

    @property
    def reason(self) -> str:
        return "; ".join(self.reasons)


@dataclass
class Plan:
    since: str
    head: str
    items: list[PlanItem] = field(default_factory=list)
    graph: ImageGraph | None = field(default=None, repr=False, compare=False)
    """The image graph the plan was made from: the rebuild uses it instead of parsing again."""

    @property
    def names(self) -> list[str]:
        return [i.name for i in self.items]

    def item(self, name: str) -> PlanItem:
        return next(i for i in self.items if i.name == name)

    def to_dict(self) -> dict:
        return {
            "since": self.since,
            "head": self.head,
            "images": [
                {"name": i.name, "reason": i.reason, "changed": i.changed} for i in self.items
            ],
        }

    def to_json(self) -> str:
        return json.dumps(self.to_dict(), indent=2)

    def format_text(self) -> str:
        head = f"Changes {self.since[:12] or '(none)'}..{self.head[:12]}:"
        if not self.items:
            return f"{head} no image needs rebuilding."
        width = max(len(i.name) for i in self.items)
        lines = [f"{head} {len(self.items)} image(s) to rebuild, in build order:"]
        for n, i in enumerate(self.items, 1):
            lines.append(f"  {n}. {i.name.ljust(width)}  {i.reason}")
        return "\n".join(lines)


def _context_prefixes(graph: ImageGraph, top: Path) -> dict[str, list[str]]:
    """For each image, the repository-relative paths whose changes make it stale."""
    prefixes: dict[str, list[str]] = {}
    for name, img in graph.images.items():
        paths = [img.path, *img.includes]
        rels = []
        for p in paths:
            try:
                rels.append(Path(p).resolve().relative_to(top).as_posix())
            except ValueError:
                continue  # outside the repository: git cannot see it change
        prefixes[name] = rels
    return prefixes


def _touches(path: str, prefix: str) -> bool:
    return path == prefix or path.startswith(prefix.rstrip("/") + "/")


def _describe(files: list[str]) -> str:
    shown = ", ".join(files[:_REASON_FILES])
    more = len(files) - _REASON_FILES
    return f"changed: {shown}" + (f" (+{more} more)" if more > 0 else "")


def make_plan(
    cfg: PlatformConfig, since: str | None, head: str = "HEAD", graph: ImageGraph | None = None
) -> Plan:
    """The images to rebuild for the changes SINCE..HEAD, in build order, each with its reason.

    The graph comes from the source tree (cfg.source_root), which is HEAD's tree
    in CI's checkout. SINCE None means no earlier commit to compare with (a new
    branch, a first build): every image is rebuilt.
    """
    root = Path(cfg.source_root).resolve()
    tip = resolve_commit(root, head)
    base = resolve_commit(root, since) if since is not None else ""
    top = Path(git(root, "rev-parse", "--show-toplevel").strip()).resolve()
    try:
        graph = graph or ImageGraph.from_config(cfg)
    except GraphError as e:
        raise CommandError(f"cannot read the image graph: {e}") from None
    if since is None:
        full = [
            PlanItem(n, ["full build: no earlier commit to compare with"], changed=True)
            for n in graph.order()
        ]
        return Plan(since="", head=tip, items=full, graph=graph)
    files = changed_files(root, base, tip)

    prefixes = _context_prefixes(graph, top)
    direct: dict[str, list[str]] = {}
    for name, prefs in prefixes.items():
        hits = [f for f in files if any(_touches(f, p) for p in prefs)]
        if hits:
            direct[name] = hits

    items: dict[str, PlanItem] = {
        n: PlanItem(n, [_describe(h)], changed=True) for n, h in direct.items()
    }
    for name in graph.descendants(direct):
        items[name] = PlanItem(name)
    # Reasons for inherited rebuilds name the parent(s) in the plan, in build order.
    for name in graph.order(items):
        rebuilt_parents = [p for p in graph.images[name].parents if p in items]
        for p in dict.fromkeys(rebuilt_parents):
            items[name].reasons.append(f"parent {p} rebuilt")
    return Plan(since=base, head=tip, items=[items[n] for n in graph.order(items)], graph=graph)

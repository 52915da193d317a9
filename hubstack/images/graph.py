"""The image graph, read from the Dockerfiles' FROM lines, never from a hand-kept list.

Convention (see images/README.md): a Dockerfile names its parent through build
arguments that the builder sets, so the same file builds against any registry
and tag::

    ARG HUBSTACK_REPO=hubstack
    ARG HUBSTACK_TAG=latest
    FROM ${HUBSTACK_REPO}/python:${HUBSTACK_TAG}

and a root image starts from the configured base::

    ARG BASE_IMAGE=debian:bookworm-slim
    FROM ${BASE_IMAGE}

FROM lines are resolved with exactly the arguments the build passes
(:func:`build_args`), so the graph and the build cannot disagree.
"""

from __future__ import annotations

import glob
import re
from collections.abc import Callable, Iterable
from concurrent.futures import FIRST_COMPLETED, Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path

import yaml

from hubstack.config import PlatformConfig


class GraphError(Exception):
    """The Dockerfiles do not form a buildable hierarchy; the message says where and why."""


@dataclass(frozen=True)
class ImageContext:
    """One image: a folder with a Dockerfile and its build context."""

    name: str
    path: Path
    parents: tuple[str, ...] = ()
    """Our images this one is built FROM (any stage); the last is its layer parent."""
    external: tuple[str, ...] = ()
    """Images from outside the hierarchy it starts FROM (only the configured base)."""
    includes: tuple[Path, ...] = ()
    """Files or folders outside the folder that its build context also carries (build.yaml
    `include:`, relative to the source root); they count as its context for change detection."""

    @property
    def dockerfile(self) -> Path:
        return self.path / "Dockerfile"

    def first_step(self) -> str:
        """The first instruction after the first FROM, as written: the step a sibling built
        at the same time could share (see ImageGraph.run_parents_first)."""
        seen_from = False
        for _, line in _logical_lines(self.dockerfile.read_text()):
            if seen_from:
                return " ".join(line.split())
            seen_from = line.split(" ", 1)[0].upper() == "FROM"
        return ""

    @property
    def parent(self) -> str | None:
        return self.parents[-1] if self.parents else None


def build_args(cfg: PlatformConfig, tag: str | None = None) -> dict[str, str]:
    """The build arguments every image build gets; FROM lines are resolved with them."""
    return {
        "BASE_IMAGE": cfg.base.image,
        "HUBSTACK_REPO": cfg.image_prefix,
        "HUBSTACK_TAG": tag or cfg.images.tag,
    }


_VAR = re.compile(
    r"\$(?:\{(?P<braced>[A-Za-z_][A-Za-z0-9_]*)(?::?-(?P<default>[^}]*))?\}|(?P<plain>[A-Za-z_][A-Za-z0-9_]*))"
)


def _substitute(text: str, env: dict[str, str]) -> str:
    def repl(m: re.Match) -> str:
        name = m.group("braced") or m.group("plain")
        if env.get(name):
            return env[name]
        return m.group("default") or ""

    return _VAR.sub(repl, text)


def _logical_lines(text: str) -> Iterable[tuple[int, str]]:
    """Dockerfile lines with continuations joined and comments dropped, with line numbers."""
    buf, start = "", 0
    for no, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not buf and (not line or line.startswith("#")):
            continue
        if not buf:
            start = no
        if line.endswith("\\"):
            buf += line[:-1] + " "
            continue
        yield start, buf + line
        buf = ""
    if buf:
        yield start, buf


def parse_from_lines(dockerfile: Path, args: dict[str, str]) -> list[tuple[int, str]]:
    """The image each stage starts FROM (line number, resolved reference), aliases excluded."""
    env: dict[str, str] = {}
    stages: set[str] = set()
    refs: list[tuple[int, str]] = []
    seen_from = False
    for no, line in _logical_lines(dockerfile.read_text()):
        word, _, rest = line.partition(" ")
        word = word.upper()
        if word == "ARG" and not seen_from:
            # Global ARGs: build arguments override their defaults, as in docker build.
            for item in rest.split():
                key, eq, default = item.partition("=")
                env[key] = args.get(key) or (default.strip("\"'") if eq else "")
        elif word == "FROM":
            seen_from = True
            parts = [p for p in rest.split() if not p.startswith("--")]
            if not parts:
                raise GraphError(f"{dockerfile}:{no}: FROM without an image")
            ref = _substitute(parts[0], env)
            if ref.lower() not in stages:  # else FROM an earlier stage of the same file
                refs.append((no, ref))
            if len(parts) >= 3 and parts[1].upper() == "AS":
                stages.add(parts[2].lower())
    if not refs:
        raise GraphError(f"{dockerfile}: no FROM line")
    return refs


def _read_includes(folder: Path, root: Path) -> tuple[Path, ...]:
    """Extra context paths from FOLDER/build.yaml (`include: [hubstack, pyproject.toml]`)."""
    spec = folder / "build.yaml"
    if not spec.is_file():
        return ()
    data = yaml.safe_load(spec.read_text()) or {}
    if (
        not isinstance(data, dict)
        or set(data) - {"include"}
        or not isinstance(data.get("include", []), list)
    ):
        raise GraphError(
            f"{spec}: must be a mapping with one key, include: [paths relative to {root}]"
        )
    paths = []
    for item in data.get("include", []):
        p = (root / str(item)).resolve()
        if not p.exists() or root.resolve() not in p.parents:
            raise GraphError(f"{spec}: include: {item!r} is not a path inside {root}")
        paths.append(p)
    return tuple(paths)


def _strip_tag(ref: str) -> str:
    ref = ref.split("@", 1)[0]
    head, _, last = ref.rpartition("/")
    return f"{head}/{last.split(':', 1)[0]}" if head else last.split(":", 1)[0]


@dataclass
class ImageGraph:
    images: dict[str, ImageContext] = field(default_factory=dict)

    @classmethod
    def from_config(cls, cfg: PlatformConfig, source_root: Path | None = None) -> ImageGraph:
        root = Path(source_root or cfg.source_root)
        folders: dict[str, Path] = {}
        # The per-user template (images/user) is built per analyst at spawn time, FROM a
        # parent given as a build argument: it is no image of the hierarchy.
        template = (cfg.user_images.template or root / "images" / "user").resolve()
        for pattern in cfg.images.contexts:
            for hit in sorted(glob.glob(str(root / pattern))):
                folder = Path(hit)
                if not (folder / "Dockerfile").is_file() or folder.resolve() == template:
                    continue
                if folder.name in folders and folders[folder.name] != folder:
                    raise GraphError(
                        f"two images are named {folder.name!r}: {folders[folder.name]} and "
                        f"{folder}; "
                        "image names come from folder names and must be unique"
                    )
                folders[folder.name] = folder
        if not folders:
            raise GraphError(f"no Dockerfile found under {root} for contexts {cfg.images.contexts}")

        args = build_args(cfg)
        ours = args["HUBSTACK_REPO"] + "/"
        allowed_external = {_strip_tag(cfg.base.image)}
        images: dict[str, ImageContext] = {}
        for name, folder in folders.items():
            parents: list[str] = []
            external: list[str] = []
            for no, ref in parse_from_lines(folder / "Dockerfile", args):
                where = f"{folder / 'Dockerfile'}:{no}"
                if ref.startswith(ours):
                    parent = _strip_tag(ref[len(ours) :])
                    if parent not in folders:
                        known = ", ".join(sorted(folders))
                        raise GraphError(
                            f"{where}: FROM {ref}: unknown parent image {parent!r} (images: "
                            f"{known})"
                        )
                    parents.append(parent)
                elif _strip_tag(ref) in allowed_external:
                    external.append(ref)
                else:
                    raise GraphError(
                        f"{where}: FROM {ref}: unknown parent: neither one of our images "
                        f"(FROM ${{HUBSTACK_REPO}}/NAME:${{HUBSTACK_TAG}}) nor the configured "
                        f"base image {cfg.base.image} (base.image)"
                    )
            images[name] = ImageContext(
                name=name,
                path=folder,
                parents=tuple(parents),
                external=tuple(external),
                includes=_read_includes(folder, root),
            )
        graph = cls(images)
        graph.order()  # fail early on a cycle
        return graph

    def __contains__(self, name: str) -> bool:
        return name in self.images

    def __getitem__(self, name: str) -> ImageContext:
        try:
            return self.images[name]
        except KeyError:
            raise GraphError(
                f"no image named {name!r} (images: {', '.join(sorted(self.images))})"
            ) from None

    def children(self, name: str) -> list[str]:
        return sorted(n for n, img in self.images.items() if name in img.parents)

    def order(self, names: Iterable[str] | None = None) -> list[str]:
        """Names in build order (parents first); alphabetical among equals, so output is stable."""
        wanted = set(self.images) if names is None else {self[n].name for n in names}
        done: list[str] = []
        state: dict[str, str] = {}

        def visit(n: str, path: list[str]) -> None:
            if state.get(n) == "done":
                return
            if state.get(n) == "visiting":
                cycle = path[path.index(n) :] + [n]
                raise GraphError(
                    "FROM cycle: "
                    + " -> ".join(cycle)
                    + " ("
                    + ", ".join(str(self.images[c].dockerfile) for c in cycle[:-1])
                    + ")"
                )
            state[n] = "visiting"
            for p in sorted(self.images[n].parents):
                visit(p, path + [n])
            state[n] = "done"
            done.append(n)

        for n in sorted(self.images):
            visit(n, [])
        return [n for n in done if n in wanted]

    def ancestors(self, name: str) -> list[str]:
        """Every image NAME needs built first, in build order."""
        seen: set[str] = set()
        stack = list(self[name].parents)
        while stack:
            p = stack.pop()
            if p not in seen:
                seen.add(p)
                stack.extend(self.images[p].parents)
        return self.order(seen)

    def descendants(self, names: Iterable[str]) -> list[str]:
        """Every image built FROM any of NAMES, directly or not, in build order (NAMES excluded)."""
        start = {self[n].name for n in names}
        seen: set[str] = set()
        stack = list(start)
        while stack:
            n = stack.pop()
            for c in self.children(n):
                if c not in seen:
                    seen.add(c)
                    stack.append(c)
        return self.order(seen - start)

    def with_ancestors(self, names: Iterable[str]) -> list[str]:
        """NAMES plus everything they need, in build order."""
        need: set[str] = set()
        for n in names:
            need.add(self[n].name)
            need.update(self.ancestors(n))
        return self.order(need)

    def run_parents_first(
        self,
        names: Iterable[str],
        work: Callable[[str], bool],
        at_once: int,
        skipped: Callable[[str, str], None],
    ) -> None:
        """WORK(name) for each of NAMES once its parents among NAMES have succeeded, up to
        AT_ONCE at a time (images neither of which is the other's ancestor: siblings share no
        layer, and pip or dpkg keeps one core busy each). WORK says whether it succeeded; a
        name below a failure is not run but reported, SKIPPED(name, the ancestor that
        failed). The one scheduler of `images build`, `up` and CI's rebuild.

        Two siblings whose Dockerfiles begin with the same step never build at once: on the
        engine's classic builder each would make its own copy of that step, and a later
        build with nothing changed could take the other's copy and miss the cache for
        everything after it (this made CI fail once, with hub and python both beginning
        `USER root`)."""
        order = self.order(names)
        # (parents, first step): two running builds must not share one that has a step.
        first = {n: (self.images[n].parents, self.images[n].first_step()) for n in order}

        def clashes(name: str) -> bool:
            return bool(first[name][1]) and first[name] in {first[r] for r in running.values()}

        outcome: dict[str, bool] = {}
        cause: dict[str, str] = {}  # skipped name -> the ancestor whose WORK failed
        waiting = list(order)
        running: dict[Future[bool], str] = {}
        with ThreadPoolExecutor(at_once, thread_name_prefix="build") as pool:
            while waiting or running:
                for name in list(waiting):
                    # A parent outside NAMES exists already.
                    parents = [p for p in self.images[name].parents if p in order]
                    failed = [p for p in parents if outcome.get(p) is False]
                    if failed:
                        waiting.remove(name)
                        outcome[name] = False
                        cause[name] = cause.get(failed[0], failed[0])
                        skipped(name, cause[name])
                    elif (
                        len(running) < at_once
                        and all(outcome.get(p) for p in parents)
                        and not clashes(name)
                    ):
                        waiting.remove(name)
                        running[pool.submit(work, name)] = name
                if running:
                    done, _ = wait(running, return_when=FIRST_COMPLETED)
                    for job in done:
                        outcome[running.pop(job)] = job.result()

    def default_targets(self, cfg: PlatformConfig) -> list[str]:
        """What a plain `hubstack images build` builds: all but on-demand images and children."""
        skip = {n for n in cfg.images.on_demand if n in self.images}
        skip.update(self.descendants(skip))
        return [n for n in self.order() if n not in skip]

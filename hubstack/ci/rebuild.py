"""Rebuild what a change made stale: build, test, tag by commit, and only then move `latest`.

For each image of the plan, in build order (independent branches at once, up to
``images.parallel_builds``): build it as ``NAME:<commit>`` FROM its parents' ``<commit>``
tags, run its own test module against the fresh image (in a sandbox:
:mod:`hubstack.ci.sandbox`), and, with ``push``, push
``NAME:<commit>`` and move ``NAME:latest`` to it in the registry. An image whose
build, tests or push fail stops its descendants and moves no tag; every other
image carries on. Every run writes a report (JSON and text) under
STATE_DIR/ci/reports, with each built image's package differences from the image
its tag `latest` (``images.tag``) held in this engine before the run.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path

import docker
import requests

from hubstack.ci.plan import Plan, make_plan
from hubstack.ci.sandbox import run_image_tests
from hubstack.clock import run_stamp, timestamp
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.build import (
    LINEAGE_LABEL_PREFIX,
    ImageBuilder,
    context_digest,
    push_image,
)
from hubstack.images.graph import ImageGraph
from hubstack.images.lockdiff import PackageChange, format_changes, image_diff
from hubstack.registry import RegistryClient, auth_config

# Build logs are kept in the report up to this many characters (the tail: where errors are).
LOG_TAIL = 20_000


def commit_tag(sha: str) -> str:
    """The tag every image built from commit SHA gets (12 hex digits, like git's short ids)."""
    return sha[:12]


def reports_dir(cfg: PlatformConfig) -> Path:
    return cfg.state_dir / "ci" / "reports"


@dataclass
class ImageOutcome:
    name: str
    reason: str
    status: str = "pending"
    """ok | failed | skipped | pending"""
    stage: str = ""
    """Where it stopped when not ok: parent | build | test | push."""
    error: str = ""
    ref: str = ""
    image_id: str = ""
    tags_pushed: list[str] = field(default_factory=list)
    seconds: float = 0.0
    build_log: str = ""
    test_output: str = ""
    previous_id: str = ""
    """The image NAME:<images.tag> was in this engine before this run; "" if none."""
    package_changes: list[PackageChange] | None = None
    """Packages added, removed or changed since previous_id; None: not compared."""


@dataclass
class BuildReport:
    run_id: str
    since: str
    head: str
    tag: str
    push: bool
    started: str
    finished: str = ""
    images: list[ImageOutcome] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        return all(i.status == "ok" for i in self.images)

    @property
    def failed(self) -> list[ImageOutcome]:
        return [i for i in self.images if i.status == "failed"]

    def to_dict(self) -> dict:
        d = asdict(self)
        d["ok"] = self.ok
        return d

    def format_text(self) -> str:
        lines = [
            f"hubstack ci build {self.run_id}: {'OK' if self.ok else 'FAILED'}",
            f"changes {self.since[:12]}..{self.head[:12]}, images tagged {self.tag}"
            + (", pushed" if self.push else ", not pushed"),
            f"started {self.started}, finished {self.finished}",
        ]
        if not self.images:
            lines.append("no image needed rebuilding")
        width = max([len(i.name) for i in self.images] + [4])
        for i in self.images:
            line = f"  {i.name.ljust(width)}  {i.status.upper():7}  {i.seconds:6.1f}s  {i.reason}"
            if i.status != "ok":
                line += f"\n  {' ' * width}  -> {i.stage + ': ' if i.stage else ''}{i.error}"
            lines.append(line)
            if i.package_changes is not None:
                previous = i.previous_id.removeprefix("sha256:")[:12]
                lines.append(f"  {' ' * width}  packages since the image it replaces ({previous}):")
                lines += [f"  {' ' * width}    {c}" for c in format_changes(i.package_changes)]
        return "\n".join(lines)

    def write(self, folder: Path) -> tuple[Path, Path]:
        folder.mkdir(parents=True, exist_ok=True)
        js, txt = folder / f"{self.run_id}.json", folder / f"{self.run_id}.txt"
        js.write_text(json.dumps(self.to_dict(), indent=2) + "\n")
        txt.write_text(self.format_text() + "\n")
        return js, txt


class StageFailed(Exception):
    def __init__(self, stage: str, error: str):
        super().__init__(f"{stage}: {error}")
        self.stage, self.error = stage, error


class Rebuilder:
    """Runs a change plan: build, test, tag and push each image, parents first.

    PUSH: push NAME:<commit> and move NAME:latest in the registry when an image's tests
    pass. CONCURRENCY: images built at once (independent branches only); 0 takes the
    platform config's images.parallel_builds. RUN_TESTS: run each image's test_image.py against
    the fresh image before tagging.
    """

    def __init__(
        self,
        cfg: PlatformConfig,
        client: docker.DockerClient,
        out: Callable[[str], None] = print,
        *,
        push: bool = False,
        concurrency: int = 0,
        run_tests: bool = True,
    ):
        self.cfg, self.client, self.out = cfg, client, out
        self.push, self.concurrency, self.run_tests = push, concurrency, run_tests

    # -- one image ---------------------------------------------------------
    def _auth(self) -> dict | None:
        return auth_config(self.cfg)

    def _push(self, name: str, tag: str) -> None:
        try:
            push_image(self.cfg, self.client, name, tag, auth=self._auth(), progress=self.out)
        except CommandError as e:
            raise StageFailed("push", str(e)) from None

    def _alias_parent(self, name: str, tag: str) -> bool:
        """Give an unchanged parent the commit tag locally, so its children build FROM it.

        False when it has no `latest` anywhere (a fresh engine and registry): it must be built.
        """
        want = self.cfg.image_ref(name, tag)
        latest = self.cfg.image_ref(name, self.cfg.images.tag)
        try:
            self.client.images.get(want)
            return True
        except docker.errors.ImageNotFound:
            pass
        try:
            img = self.client.images.get(latest)
        except docker.errors.ImageNotFound:
            try:
                img = self.client.images.pull(
                    self.cfg.image_repository(name),
                    tag=self.cfg.images.tag,
                    auth_config=self._auth(),
                )
            except docker.errors.NotFound:
                return False
            except docker.errors.APIError as e:
                raise StageFailed(
                    "parent",
                    f"unchanged parent {latest} is neither in the engine nor pullable "
                    f"({e.explanation or e}); "
                    f"build it first (hubstack images build {name}) or give an older --since",
                ) from None
        img.tag(self.cfg.image_repository(name), tag)
        if self.push:
            # The commit tag then names the whole lineage in the registry, so promoting it moves
            # every image of that lineage together (a manifest-only push: the layers are there).
            self._push(name, tag)
        return True

    def _previous_id(self, name: str) -> str:
        """The id of NAME:<images.tag> in this engine now, before a build replaces it; "" if
        none."""
        try:
            return self.client.images.get(self.cfg.image_ref(name, self.cfg.images.tag)).id
        except docker.errors.ImageNotFound:
            return ""

    def _compare_packages(self, outcome: ImageOutcome) -> None:
        """Package differences of the fresh image from the one it replaces, when there is one.
        Never fails the build: an image without a lock is only not compared."""
        if not outcome.previous_id:
            return
        try:
            outcome.package_changes = image_diff(
                self.cfg, self.client, outcome.previous_id, outcome.image_id
            )
        except CommandError as e:
            self.out(f"[ci] {outcome.name}: packages not compared: {e}")

    def _one(
        self, outcome: ImageOutcome, graph: ImageGraph, builder: ImageBuilder, tag: str
    ) -> None:
        name = outcome.name
        started = time.monotonic()
        stage = "build"
        try:
            self.out(f"[ci] {name}: building ({outcome.reason})")
            outcome.previous_id = self._previous_id(name)
            result = builder.build(name, tag=tag)
            outcome.ref = result.ref
            outcome.image_id = result.image_id or ""
            log = result.log or ""
            outcome.build_log = (log if isinstance(log, str) else "\n".join(map(str, log)))[
                -LOG_TAIL:
            ]
            if not result.ok:
                raise StageFailed("build", str(result.error or "build failed"))
            self._compare_packages(outcome)
            if self.run_tests:
                stage = "test"
                self.out(f"[ci] {name}: testing {result.ref}")
                passed, output = run_image_tests(
                    self.cfg, self.client, graph.images[name].path, result.ref
                )
                outcome.test_output = output[-LOG_TAIL:]
                if not passed:
                    last = [ln for ln in output.splitlines() if ln.strip()][-1:] or ["tests failed"]
                    raise StageFailed("test", f"image tests failed: {last[0]}")
            if self.push:
                stage = "push"
                self._push(name, tag)
                outcome.tags_pushed.append(tag)
                # Only now, with the tests passed and the commit tag in the registry, does latest
                # move.
                self.client.images.get(result.ref).tag(
                    self.cfg.image_repository(name), self.cfg.images.tag
                )
                self._push(name, self.cfg.images.tag)
                outcome.tags_pushed.append(self.cfg.images.tag)
            outcome.status = "ok"
            self.out(
                f"[ci] {name}: ok"
                + (f" (pushed {', '.join(outcome.tags_pushed)})" if self.push else "")
            )
        except StageFailed as e:
            outcome.status, outcome.stage, outcome.error = "failed", e.stage, e.error
        except Exception as e:
            outcome.status, outcome.stage, outcome.error = (
                "failed",
                stage,
                f"{type(e).__name__}: {e}",
            )
        finally:
            outcome.seconds = round(time.monotonic() - started, 2)
            if outcome.status == "failed":
                self.out(f"[ci] {name}: FAILED at {outcome.stage}: {outcome.error}")

    # -- the plan ----------------------------------------------------------
    def run_plan(self, plan: Plan) -> BuildReport:
        # One graph per run: the plan's own (parsed once), shared by every image's build.
        graph = plan.graph or ImageGraph.from_config(self.cfg)
        builder = ImageBuilder(self.cfg, self.client, graph=graph)
        tag = commit_tag(plan.head)
        report = BuildReport(
            run_id=f"{run_stamp()}-{tag}",
            since=plan.since,
            head=plan.head,
            tag=tag,
            push=self.push,
            started=timestamp(),
        )
        unbuilt = self._unbuilt_on_demand(plan, graph)
        outcomes = {
            i.name: ImageOutcome(i.name, i.reason) for i in plan.items if i.name not in unbuilt
        }
        report.images = list(outcomes.values())
        in_plan = set(outcomes)

        def fail_descendants(name: str) -> None:
            for d in graph.descendants([name]):
                o = outcomes.get(d)
                if o and o.status == "pending":
                    o.status, o.stage, o.error = "skipped", "", f"parent {name} failed"
                    self.out(f"[ci] {d}: skipped (parent {name} failed)")

        # Ancestors outside the plan are used as they are: their latest, tagged with this commit
        # (so the commit tag names the whole lineage of every image it built).
        outside = graph.order({a for n in in_plan for a in graph.ancestors(n) if a not in in_plan})
        for p in outside:
            try:
                if not self._alias_parent(p, tag):
                    # Nothing to build FROM (a fresh engine and registry, as in hosted CI): build it
                    # too.
                    outcomes[p] = ImageOutcome(
                        p,
                        f"needed by {', '.join(graph.children(p))}, and no "
                        f"{self.cfg.images.tag} of it in the engine or registry",
                    )
                    in_plan.add(p)
                    self.out(f"[ci] {p}: added to the plan ({outcomes[p].reason})")
            except StageFailed as e:
                for n in graph.order(in_plan):
                    if p in graph.ancestors(n) and outcomes[n].status == "pending":
                        outcomes[n].status, outcomes[n].stage, outcomes[n].error = (
                            "failed",
                            e.stage,
                            e.error,
                        )
                        self.out(f"[ci] {n}: FAILED at {e.stage}: {e.error}")
                        fail_descendants(n)

        report.images = [outcomes[n] for n in graph.order(in_plan)]

        def build(name: str) -> bool:
            self._one(outcomes[name], graph, builder, tag)
            return outcomes[name].status == "ok"

        def skipped(name: str, parent: str) -> None:
            o = outcomes[name]
            o.status, o.stage, o.error = "skipped", "", f"parent {parent} failed"
            self.out(f"[ci] {name}: skipped (parent {parent} failed)")

        pending = [n for n in graph.order(in_plan) if outcomes[n].status == "pending"]
        at_once = self.concurrency or self.cfg.images.parallel_builds
        graph.run_parents_first(pending, build, at_once, skipped)
        if self.push:
            self._tag_the_rest(graph, in_plan | set(outside), tag)
        report.finished = timestamp()
        return report

    def _unbuilt_on_demand(self, plan: Plan, graph: ImageGraph) -> set[str]:
        """On-demand images (images.on_demand: the GPU image's CUDA wheels weigh GBs) that
        nobody has built yet, with their descendants: a parent's change does not build them.
        A change to their own context does (outside a full build), so it gets tested."""
        names = {i.name for i in plan.items}
        changed = {i.name for i in plan.items if i.changed and plan.since}
        unbuilt: set[str] = set()
        for name in graph.order(names):
            if name in self.cfg.images.on_demand and name not in changed:
                if not self._has_latest(name):
                    unbuilt.add(name)
            elif name not in changed and set(graph.ancestors(name)) & unbuilt:
                unbuilt.add(name)
        for name in graph.order(unbuilt):
            self.out(
                f"[ci] {name}: not built: on demand and never built here; "
                f"`hubstack images build {name}` builds it, and CI keeps it current from then on"
            )
        return unbuilt

    def _has_latest(self, name: str) -> bool:
        try:
            self.client.images.get(self.cfg.image_ref(name, self.cfg.images.tag))
            return True
        except docker.errors.ImageNotFound:
            pass
        try:
            return RegistryClient(self.cfg).digest(name, self.cfg.images.tag) is not None
        except (CommandError, requests.RequestException):
            # Registry unreachable: build it, as before, rather than guess.
            return True

    def _tag_the_rest(self, graph: ImageGraph, handled: set[str], tag: str) -> None:
        """Give the commit tag to every other image whose `latest` was built from this very
        source (its lineage's context digests are those of the checkout), inside the registry:
        the commit tag then names the whole platform at this commit, and a release can be
        made from it. An image whose source is not what its `latest` was built from (its last
        build failed) gets none."""
        registry = RegistryClient(self.cfg)
        for name in graph.order():
            if name in handled or registry.digest(name, self.cfg.images.tag) is None:
                continue
            labels = registry.image_config(name, self.cfg.images.tag).get("config", {})
            labels = labels.get("Labels") or {}
            lineage = [name, *graph.ancestors(name)]
            if all(
                labels.get(f"{LINEAGE_LABEL_PREFIX}{n}")
                == context_digest(self.cfg, graph[n], self.cfg.source_root)
                for n in lineage
            ):
                registry.copy_tag(name, self.cfg.images.tag, tag)
                self.out(f"[ci] {name}: unchanged, {tag} -> its {self.cfg.images.tag}")
            else:
                self.out(f"[ci] {name}: its {self.cfg.images.tag} is not this source: no {tag}")

    def run(self, since: str, head: str = "HEAD") -> BuildReport:
        return self.run_plan(make_plan(self.cfg, since, head))


def write_report(cfg: PlatformConfig, report: BuildReport) -> tuple[Path, Path]:
    return report.write(reports_dir(cfg))


def rebuild_and_report(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    plan: Plan,
    *,
    push: bool,
    concurrency: int = 0,
) -> BuildReport:
    """Run PLAN with progress lines, write its report, and print it with one error line per
    failed image (what `hubstack ci build` and `hubstack upgrade` show)."""
    print(plan.format_text(), flush=True)
    builder = Rebuilder(
        cfg, client, push=push, concurrency=concurrency, out=lambda line: print(line, flush=True)
    )
    report = builder.run_plan(plan)
    js, txt = write_report(cfg, report)
    print()
    print(report.format_text())
    print(f"report: {js} and {txt}")
    for failed in report.failed:
        print(
            f"hubstack: error: image {failed.name} failed at {failed.stage}: {failed.error}",
            file=sys.stderr,
        )
    return report

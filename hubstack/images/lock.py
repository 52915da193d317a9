"""`hubstack images lock`: refresh the locks images are built from, as a reviewable change.

Python: an image folder with ``requirements.in`` (what the image wants, top level) has
``requirements.txt``, the lock pip-tools compiles from it (``pip-compile
--generate-hashes``): every package with its exact version and hashes. The Dockerfile
installs it with ``pip install --require-hashes --no-deps``, so a build gets exactly the
locked files or fails. The resolver runs in a container of the image's parent image, so
the platform, the Python version and the architecture are the image's own, with the pip
index and CA bundle the builds use (the base image configures both).

A child's lock is compiled with every ancestor's lock as a constraint (``-c``): it pins
what the child adds, and the packages it shares with an ancestor at the ancestor's
version and hashes. Locking the union instead would let the child move a package its
parent already installed, and the parent's lock would no longer say what its children
run. Children are locked after their parents (graph order).

The first line of each lock records a digest of its inputs (requirements.in, the
ancestors' locks, the resolver's version and options), so ``--check`` tells a stale lock
without running anything.

Debian: an image folder may hold ``dpkg.lock`` (``name=version`` a line, the format of
the image's dpkg.txt). Its build pins apt to exactly those versions (hubstack-apt-pin in
the base image) and fails when the mirror no longer has one. Refreshing it builds the
image once without its dpkg.lock and records the dpkg.txt that build produced.
"""

from __future__ import annotations

import hashlib
import io
import re
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass
from pathlib import Path

import docker

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.build import ImageBuilder, print_progress
from hubstack.images.graph import ImageGraph
from hubstack.images.lockdiff import (
    PackageChange,
    Packages,
    _lock_files,
    diff_packages,
    parse_dpkg,
)

REQUIREMENTS_IN = "requirements.in"
REQUIREMENTS_LOCK = "requirements.txt"
DPKG_LOCK = "dpkg.lock"

PIP_VERSION = "25.3"
"""The pip of the resolver's venv; the same as the one the python image installs."""
PIP_TOOLS = "pip-tools==7.5.2"
TOOL_VENV = "/opt/hubstack-lock-tool"
COMPILE_OPTIONS = (
    "--generate-hashes",
    "--allow-unsafe",  # pin setuptools & co. too, so --require-hashes covers everything
    "--strip-extras",
    "--no-emit-index-url",  # the lock is the same whatever index or mirror a site uses
    "--no-emit-trusted-host",
    "--no-emit-find-links",
)
INPUTS_PREFIX = "# hubstack-lock-inputs: sha256:"
TEMP_TAG = "hubstack-lock-refresh"
"""The tag of the throw-away build that refreshes a dpkg.lock."""


def lockable(graph: ImageGraph, names: Iterable[str] | None = None) -> list[str]:
    """NAMES (default: every image with a requirements.in or a dpkg.lock), in graph order."""
    if names:
        return graph.order(names)
    return [
        n
        for n in graph.order()
        if (graph[n].path / REQUIREMENTS_IN).is_file() or (graph[n].path / DPKG_LOCK).is_file()
    ]


def constraint_images(graph: ImageGraph, name: str) -> list[str]:
    """The ancestors of NAME with a Python lock, in build order: its constraints."""
    return [a for a in graph.ancestors(name) if (graph[a].path / REQUIREMENTS_LOCK).is_file()]


def inputs_digest(graph: ImageGraph, name: str) -> str:
    """What the Python lock of NAME is compiled from: its requirements.in, its ancestors'
    locks (which carry their own digests, so a grandparent's change shows) and the tool."""
    h = hashlib.sha256()
    h.update(f"{PIP_TOOLS} pip=={PIP_VERSION} {' '.join(COMPILE_OPTIONS)}\0".encode())
    h.update((graph[name].path / REQUIREMENTS_IN).read_bytes() + b"\0")
    for a in constraint_images(graph, name):
        h.update(a.encode() + b"\0" + (graph[a].path / REQUIREMENTS_LOCK).read_bytes() + b"\0")
    return h.hexdigest()


def recorded_digest(lock_text: str) -> str | None:
    first = lock_text.split("\n", 1)[0]
    return first[len(INPUTS_PREFIX) :].strip() if first.startswith(INPUTS_PREFIX) else None


def stale_reason(graph: ImageGraph, name: str) -> str | None:
    """Why the Python lock of NAME does not match its inputs; None when it does (or NAME
    has no requirements.in)."""
    folder = graph[name].path
    if not (folder / REQUIREMENTS_IN).is_file():
        return None
    lock = folder / REQUIREMENTS_LOCK
    if not lock.is_file():
        return f"{name}: {REQUIREMENTS_LOCK} is missing"
    if recorded_digest(lock.read_text()) != inputs_digest(graph, name):
        parents = constraint_images(graph, name)
        also = f" or the lock of {', '.join(parents)}" if parents else ""
        return (
            f"{name}: {REQUIREMENTS_LOCK} is stale: {REQUIREMENTS_IN}{also} changed since it "
            "was compiled"
        )
    return None


def parse_requirements_lock(text: str) -> Packages:
    """A pip-compile lock: `name==version \\` lines with their `--hash` continuations."""
    out: Packages = {}
    joined = re.sub(r"\\\n", " ", text)
    for raw in joined.splitlines():
        line = raw.split("#", 1)[0].strip() if not raw.lstrip().startswith("#") else ""
        m = re.match(r"([A-Za-z0-9][A-Za-z0-9._-]*)(?:\[[^\]]*\])?\s*==\s*([^\s;]+)", line)
        if m:
            name = m.group(1)
            out[re.sub(r"[-_.]+", "-", name).lower()] = (name, m.group(2))
    return out


def summarize(manager: str, old: Packages, new: Packages) -> tuple[str, list[PackageChange]]:
    """'2 added, 1 removed, 3 changed' (or 'unchanged') and the changes themselves."""
    changes = diff_packages(manager, old, new)
    if not changes:
        return "unchanged", []
    counts = {k: sum(c.kind == k for c in changes) for k in ("added", "removed", "changed")}
    return ", ".join(f"{n} {k}" for k, n in counts.items() if n), changes


def with_digest(lock_text: str, digest: str) -> str:
    """The lock with its first line recording the inputs' digest (replacing an old one)."""
    if recorded_digest(lock_text) is not None:
        lock_text = lock_text.split("\n", 1)[1] if "\n" in lock_text else ""
    return f"{INPUTS_PREFIX}{digest}\n{lock_text}"


def tool_dockerfile(parent_ref: str) -> str:
    """The resolver's image: the parent plus a venv of its own with pip-tools (the image's
    /opt/venv is left alone). Images without Python (base) get Debian's python3 first."""
    return (
        f"FROM {parent_ref}\n"
        "USER root\n"
        "RUN if [ ! -x /usr/bin/python3 ]; then apt-get update"
        " && apt-get install -y python3 python3-venv && rm -rf /var/lib/apt/lists/*; fi"
        f" && python3 -m venv {TOOL_VENV}"
        f" && {TOOL_VENV}/bin/pip install --no-cache-dir pip=={PIP_VERSION} {PIP_TOOLS}\n"
    )


def compile_command(name: str, constraints: Iterable[str], upgrade: bool) -> list[str]:
    """pip-compile, run in /lock/images/NAME where the inputs were put."""
    cmd = [f"{TOOL_VENV}/bin/pip-compile", "--quiet", *COMPILE_OPTIONS]
    for c in constraints:
        cmd += ["--constraint", f"../{c}/{REQUIREMENTS_LOCK}"]
    if upgrade:
        cmd.append("--upgrade")
    return [*cmd, "--output-file", REQUIREMENTS_LOCK, REQUIREMENTS_IN]


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for path, data in files.items():
            info = tarfile.TarInfo(path)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


@dataclass
class LockResult:
    name: str
    file: str
    summary: str
    changes: list[PackageChange]


class Locker:
    """Refreshes the locks of images of the graph against one engine."""

    def __init__(
        self,
        cfg: PlatformConfig,
        client: docker.DockerClient,
        graph: ImageGraph | None = None,
        tag: str | None = None,
        progress: Callable[[str], None] = print_progress,
    ):
        self.cfg = cfg
        self.client = client
        self.graph = graph or ImageGraph.from_config(cfg)
        self.tag = tag or cfg.images.tag
        self.progress = progress

    def _parent_image(self, name: str):
        parent = self.graph[name].parent
        if parent is None:
            raise CommandError(
                f"{name}: a root image has no parent image to run the resolver in; give it a "
                "parent among our images"
            )
        ref = self.cfg.image_ref(parent, self.tag)
        try:
            return self.client.images.get(ref)
        except docker.errors.ImageNotFound:
            raise CommandError(
                f"{name}: its lock is resolved in its parent image {ref}, which is not in this "
                f"engine: build it first with `hubstack images build {parent}`"
                + (f" --tag {self.tag}" if self.tag != self.cfg.images.tag else "")
            ) from None

    def _tool_image(self, name: str) -> str:
        """The resolver image for NAME (cached by the engine while the parent is unchanged)."""
        parent = self._parent_image(name)
        ref = self.cfg.image_ref(self.graph[name].parent or "", self.tag)
        tag = f"hubstack-lock-tool:{parent.id.split(':')[-1][:12]}"
        try:
            self.client.images.get(tag)
            return tag
        except docker.errors.ImageNotFound:
            pass
        self.progress(f"{name}: preparing the resolver ({PIP_TOOLS}) on {ref}")
        log: list[str] = []
        try:
            for chunk in self.client.api.build(
                fileobj=io.BytesIO(tool_dockerfile(parent.id).encode()),
                tag=tag,
                rm=True,
                forcerm=True,
                pull=False,
                decode=True,
            ):
                if "stream" in chunk:
                    log.append(chunk["stream"])
                elif "error" in chunk or "errorDetail" in chunk:
                    msg = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
                    raise CommandError(
                        f"{name}: installing the resolver failed: {msg}\n" + _tail("".join(log))
                    )
        except docker.errors.APIError as e:
            raise CommandError(f"{name}: installing the resolver failed: {e}") from None
        return tag

    def lock_python(self, name: str, upgrade: bool = False) -> LockResult:
        """Compile images/NAME/requirements.txt from requirements.in in the parent's image."""
        ctx = self.graph[name]
        if not (ctx.path / REQUIREMENTS_IN).is_file():
            raise CommandError(f"{name}: {ctx.path / REQUIREMENTS_IN} does not exist")
        tool = self._tool_image(name)
        constraints = constraint_images(self.graph, name)
        lock = ctx.path / REQUIREMENTS_LOCK
        old_text = lock.read_text() if lock.is_file() else ""
        files = {f"lock/images/{name}/{REQUIREMENTS_IN}": (ctx.path / REQUIREMENTS_IN).read_bytes()}
        if old_text:  # pip-compile keeps the pins that still fit: the smallest change
            files[f"lock/images/{name}/{REQUIREMENTS_LOCK}"] = old_text.encode()
        for c in constraints:
            files[f"lock/images/{c}/{REQUIREMENTS_LOCK}"] = (
                self.graph[c].path / REQUIREMENTS_LOCK
            ).read_bytes()
        how = f" with {', '.join(constraints)} as constraints" if constraints else ""
        self.progress(f"{name}: resolving {REQUIREMENTS_IN}{how} (pip-compile --generate-hashes)")
        started = time.monotonic()
        container = self.client.containers.create(
            tool,
            compile_command(name, constraints, upgrade),
            entrypoint=[],
            user="root",
            working_dir=f"/lock/images/{name}",
            environment={"CUSTOM_COMPILE_COMMAND": f"hubstack images lock {name}"},
        )
        try:
            container.put_archive("/", _tar(files))
            container.start()
            code = container.wait(timeout=1800).get("StatusCode", 1)
            output = container.logs().decode(errors="replace")
            if code != 0:
                raise CommandError(
                    f"{name}: pip-compile failed (exit {code}); its output ends:\n{_tail(output)}"
                )
            stream, _ = container.get_archive(f"/lock/images/{name}/{REQUIREMENTS_LOCK}")
            with tarfile.open(fileobj=io.BytesIO(b"".join(stream))) as tar:
                member = tar.extractfile(tar.getmembers()[0])
                assert member is not None
                new_text = member.read().decode()
        finally:
            container.remove(force=True)
        new_text = with_digest(new_text, inputs_digest(self.graph, name))
        lock.write_text(new_text)
        summary, changes = summarize(
            "pip", parse_requirements_lock(old_text), parse_requirements_lock(new_text)
        )
        count = len(parse_requirements_lock(new_text))
        seconds = time.monotonic() - started
        self.progress(f"{name}: {REQUIREMENTS_LOCK}: {summary} ({count} packages, {seconds:.0f}s)")
        return LockResult(name, self._shown(lock), summary, changes)

    def _shown(self, path: Path) -> str:
        try:
            return str(path.relative_to(self.cfg.source_root))
        except ValueError:
            return str(path)

    def lock_dpkg(self, name: str) -> LockResult:
        """Write images/NAME/dpkg.lock from a build of NAME made without it."""
        ctx = self.graph[name]
        parent = ctx.parent
        builder = ImageBuilder(self.cfg, self.client, self.graph, progress=self.progress)
        if parent is not None:
            self._parent_image(name)  # it must exist; rebuilt below if its locks changed
            for r in builder.build_many([parent], tag=self.tag):
                if not r.ok:
                    raise CommandError(
                        f"{name}: building its parent {r.name} with the current locks failed: "
                        f"{r.error}"
                    )
        lock = ctx.path / DPKG_LOCK
        old_text = lock.read_text() if lock.is_file() else ""
        self.progress(f"{name}: building it without {DPKG_LOCK} to see what apt installs now")
        r = builder.build(name, tag=TEMP_TAG, parent_tag=self.tag, leave_out=[DPKG_LOCK])
        if not r.ok or not r.image_id:
            raise CommandError(f"{name}: the build without {DPKG_LOCK} failed: {r.error}")
        try:
            text = _lock_files(self.client, r.image_id, r.ref).get(f"{name}/dpkg.txt")
        finally:
            try:
                self.client.images.remove(r.ref)
            except docker.errors.APIError:
                pass
        if text is None:
            raise CommandError(
                f"{name}: the image has no dpkg.txt: does its Dockerfile run hubstack-write-lock?"
            )
        lock.write_bytes(text)
        summary, changes = summarize("dpkg", parse_dpkg(old_text), parse_dpkg(text.decode()))
        self.progress(f"{name}: {DPKG_LOCK}: {summary}")
        return LockResult(name, self._shown(lock), summary, changes)


def _tail(text: str, lines: int = 25) -> str:
    return "\n".join(f"    {line}" for line in text.rstrip().splitlines()[-lines:])


def lock_images(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    names: list[str],
    tag: str | None = None,
    upgrade: bool = False,
    dpkg: bool = False,
    progress: Callable[[str], None] = print_progress,
) -> list[LockResult]:
    """Refresh the locks of NAMES (default: every image with one), parents first."""
    locker = Locker(cfg, client, tag=tag, progress=progress)
    results = []
    for name in lockable(locker.graph, names):
        folder: Path = locker.graph[name].path
        if (folder / REQUIREMENTS_IN).is_file():
            results.append(locker.lock_python(name, upgrade=upgrade))
        if dpkg or (folder / DPKG_LOCK).is_file():
            results.append(locker.lock_dpkg(name))
        if not results or results[-1].name != name:
            progress(f"{name}: nothing to lock (no {REQUIREMENTS_IN}, no {DPKG_LOCK})")
    return results

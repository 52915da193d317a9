"""Build images of the graph, in order, with progress, stable labels and no half-written tags.

The build context is sent as a tar the builder makes itself: the image folder,
the paths its build.yaml includes and, for root images, the site's extra CA as
``extra-ca.pem``. The legacy builder tags an image only when its build
succeeded, so a failed build leaves every existing tag where it was.

Labels are derived from the context, not the clock, so a rebuild with nothing
changed is a full cache hit and children are not rebuilt for nothing.
"""

from __future__ import annotations

import hashlib
import io
import re
import sys
import tarfile
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.git import git_output_or_empty
from hubstack.images.graph import ImageContext, ImageGraph, build_args
from hubstack.registry import PUSH, USERS, Role, auth_config

IGNORED_NAMES = {"__pycache__", ".pytest_cache", ".git", ".mypy_cache"}
LABEL_PREFIX = "org.opencontainers.image"
IMAGE_LABEL = "io.hubstack.image"
LINEAGE_LABEL_PREFIX = "io.hubstack.lineage."
"""One label per image of the lineage (NAME = its context digest): labels inherit through
FROM, so the notebook image carries base's, python's, spark's and its own."""


@dataclass
class BuildResult:
    name: str
    ref: str
    ok: bool
    image_id: str | None = None
    error: str | None = None
    log: list[str] = field(default_factory=list)
    seconds: float = 0.0
    cached: bool = False
    """Every step came from the build cache."""


# What pip, npm, curl and apt print when a build cannot verify or reach a package index.
_TLS_FAILURES = (
    "SELF_SIGNED_CERT_IN_CHAIN",
    "CERTIFICATE_VERIFY_FAILED",
    "certificate verify failed",
    "UNABLE_TO_GET_ISSUER_CERT_LOCALLY",
    "unable to get local issuer certificate",
    "Certificate verification failed",
    "SSL certificate problem",
)
_INDEX_UNREACHABLE = (
    "Temporary failure in name resolution",
    "Failed to establish a new connection",
    "getaddrinfo ENOTFOUND",
    "EAI_AGAIN",
    "Could not resolve host",
    "Connection timed out",
    "ETIMEDOUT",
)


def diagnose_failure(cfg: PlatformConfig, log: Iterable[str]) -> str | None:
    """One line naming the cause and what fixes it, for the failures a new site meets first
    (TLS re-signed by a proxy, a full disk, no route to the package index); else None."""
    # The engine streams a RUN's stderr in small chunks with colour codes between them,
    # which can split a message mid-word: join the chunks as they came, colours removed.
    text = _ANSI.sub("", "".join(log))
    if any(marker in text for marker in _TLS_FAILURES):
        ca = cfg.base.extra_ca_bundle
        now = f"it is {ca}" if ca else "it is `none`"
        return (
            "a package download failed the TLS certificate check: this network re-signs TLS, "
            f"so set base.extra_ca_bundle to a PEM bundle holding its CA ({now})"
        )
    if "no space left on device" in text.lower():
        return (
            "the build ran out of disk space on the engine's data root (`docker info` shows "
            "where): free some with `docker image prune` and `docker builder prune`, or give "
            "it a larger disk; no tag was moved"
        )
    if any(marker in text for marker in _INDEX_UNREACHABLE):
        index = cfg.base.index_url or "PyPI"
        return (
            f"a package index could not be reached from inside the build (pip: {index}); set "
            "base.pip_index_url (and base.debian_mirror) to a mirror this network reaches"
        )
    return None


_ANSI = re.compile(r"\x1b\[[0-9;]*m")


def build_log_file(cfg: PlatformConfig, name: str) -> Path:
    """Where a failed build's whole log is kept (the terminal shows its tail)."""
    return cfg.state_dir / "logs" / f"build-{name}.log"


def _context_files(ctx: ImageContext, root: Path) -> list[tuple[str, Path]]:
    """(name in the tar, file on disk) for everything in the image's context, sorted."""
    files: list[tuple[str, Path]] = []

    def walk(top: Path, prefix: str) -> None:
        if top.is_file():
            files.append((prefix, top))
            return
        for p in sorted(top.rglob("*")):
            if (
                any(part in IGNORED_NAMES for part in p.relative_to(top).parts)
                or p.suffix == ".pyc"
            ):
                continue
            if p.is_file():
                files.append((f"{prefix}/{p.relative_to(top).as_posix()}".lstrip("/"), p))

    walk(ctx.path, "")
    for inc in ctx.includes:
        walk(inc, inc.relative_to(root.resolve()).as_posix())
    return sorted(files)


def _extra_ca(cfg: PlatformConfig) -> bytes:
    ca = cfg.base.extra_ca_bundle
    return ca.read_bytes() if ca else b""


def context_digest(cfg: PlatformConfig, ctx: ImageContext, root: Path) -> str:
    """Content hash of what the build sees (paths, modes, bytes, extra CA for roots)."""
    h = hashlib.sha256()
    for arcname, path in _context_files(ctx, root):
        h.update(arcname.encode() + b"\0" + oct(path.stat().st_mode & 0o111).encode() + b"\0")
        h.update(hashlib.sha256(path.read_bytes()).digest())
    if ctx.external:
        h.update(b"extra-ca.pem\0" + hashlib.sha256(_extra_ca(cfg)).digest())
    return h.hexdigest()


def context_tar(
    cfg: PlatformConfig,
    ctx: ImageContext,
    root: Path,
    leave_out: Iterable[str] = (),
    generated: dict[str, bytes] | None = None,
) -> io.BytesIO:
    """The build context as a gzipped tar; LEAVE_OUT: names in it to omit (`hubstack images
    lock` builds without the image's dpkg.lock to see what an unpinned build installs);
    GENERATED: files made for this build only (a per-user image's package lists)."""
    skip = set(leave_out)
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w:gz", compresslevel=1) as tar:
        for arcname, path in _context_files(ctx, root):
            if arcname in skip:
                continue
            info = tar.gettarinfo(str(path), arcname)
            info.uid = info.gid = 0
            info.uname = info.gname = ""
            info.mtime = 0  # mtimes must not bust the cache
            with path.open("rb") as f:
                tar.addfile(info, f)
        if ctx.external:  # roots (FROM the base image) get the site's CA bundle
            data = _extra_ca(cfg)
            info = tarfile.TarInfo("extra-ca.pem")
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
        for arcname, data in sorted((generated or {}).items()):
            info = tarfile.TarInfo(arcname)
            info.size, info.mode = len(data), 0o644
            tar.addfile(info, io.BytesIO(data))
    buf.seek(0)
    return buf


def image_labels(cfg: PlatformConfig, ctx: ImageContext, root: Path, digest: str) -> dict[str, str]:
    """OCI labels that change only when the context does (see the module docstring)."""
    paths = [str(ctx.path), *map(str, ctx.includes)]
    revision = git_output_or_empty(root, "log", "-1", "--format=%H", "--", *paths) or "unknown"
    created = git_output_or_empty(root, "log", "-1", "--format=%cI", "--", *paths)
    if git_output_or_empty(root, "status", "--porcelain", "--", *paths):
        revision += "-dirty"
    if created:
        created = datetime.fromisoformat(created).astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    # The remote when there is one; never the checkout's own path, which differs per clone
    # and would make every clone rebuild every image.
    folder = ctx.path.resolve().relative_to(root.resolve()).as_posix()
    origin = git_output_or_empty(root, "config", "--get", "remote.origin.url")
    source = f"{origin}#{folder}" if origin else folder
    return {
        f"{LABEL_PREFIX}.source": source,
        f"{LABEL_PREFIX}.revision": revision,
        f"{LABEL_PREFIX}.created": created or "1970-01-01T00:00:00Z",
        f"{LABEL_PREFIX}.version": digest[:12],
        f"{LABEL_PREFIX}.title": f"hubstack {ctx.name}",
        IMAGE_LABEL: ctx.name,
        "io.hubstack.context-digest": digest,
        f"{LINEAGE_LABEL_PREFIX}{ctx.name}": digest,
    }


def root_build_args(cfg: PlatformConfig) -> dict[str, str]:
    """What root images add to build_args(): the apt mirror and pip index of the site."""
    args = {"APT_MIRROR": cfg.base.debian_mirror, "DEBIAN_SUITE": cfg.base.suite}
    if cfg.base.index_url:
        args["PIP_INDEX_URL"] = cfg.base.index_url
    return args


def print_progress(line: str) -> None:
    print(line, file=sys.stderr, flush=True)


class ImageBuilder:
    """Builds images of the graph against one engine, reporting progress per image."""

    def __init__(
        self,
        cfg: PlatformConfig,
        client: docker.DockerClient,
        graph: ImageGraph | None = None,
        progress: Callable[[str], None] = print_progress,
        verbose: bool = False,
        nocache: bool = False,
        network_mode: str | None = None,
    ):
        self.cfg = cfg
        self.client = client
        self.graph = graph or ImageGraph.from_config(cfg)
        self.root = cfg.source_root
        self.progress = progress
        self.verbose = verbose
        # nocache: every step runs again (cold-build benchmark); normal builds reuse the cache.
        self.nocache = nocache
        # network_mode: the RUN steps' network (e.g. "host" on an engine without NAT).
        self.network_mode = network_mode

    def build(
        self,
        name: str,
        tag: str | None = None,
        position: str = "",
        parent_tag: str | None = None,
        leave_out: Iterable[str] = (),
    ) -> BuildResult:
        """Build one image whose parents already exist under TAG; tag it only on success.

        PARENT_TAG: build FROM the parents under that tag instead (the image is still tagged
        TAG); LEAVE_OUT: context files to omit (see context_tar)."""
        ctx = self.graph[name]
        tag = tag or self.cfg.images.tag
        digest = context_digest(self.cfg, ctx, self.root)
        args = build_args(self.cfg, parent_tag or tag)
        if ctx.external:
            args.update(root_build_args(self.cfg))
        return self.build_context(
            ctx,
            self.cfg.image_ref(name, tag),
            args,
            image_labels(self.cfg, ctx, self.root, digest),
            position=position,
            fileobj=context_tar(self.cfg, ctx, self.root, leave_out),
        )

    def build_context(
        self,
        ctx: ImageContext,
        ref: str,
        args: dict[str, str],
        labels: dict[str, str],
        position: str = "",
        fileobj: io.BytesIO | None = None,
    ) -> BuildResult:
        """Build CTX (its tar: FILEOBJ, else made from its folder) as REF with these build
        arguments and labels, streaming progress; the one path every image is built by,
        the hierarchy's and the per-user images (hubstack.images.user) alike."""
        name = ctx.name
        label = f"[{position}] {name}" if position else name
        if fileobj is None:
            fileobj = context_tar(self.cfg, ctx, self.root)
        result = BuildResult(name=name, ref=ref, ok=False)
        started = time.monotonic()
        self.progress(f"{label}: building {ref}")
        steps_total, steps_cached, steps = 0, 0, 0
        raw: list[str] = []  # the engine's output as sent, for the log file
        try:
            stream = self.client.api.build(
                fileobj=fileobj,
                custom_context=True,
                encoding="gzip",
                tag=ref,
                buildargs=args,
                labels=labels,
                rm=True,
                forcerm=True,
                pull=False,
                nocache=self.nocache,
                network_mode=self.network_mode,
                decode=True,
            )
            for chunk in stream:
                if "stream" in chunk:
                    raw.append(chunk["stream"])
                    text = chunk["stream"].rstrip("\n")
                    if not text.strip():
                        continue
                    result.log.append(text)
                    if text.startswith("Step "):
                        # Only steps after the (last) FROM can come from the cache; ARG and
                        # FROM before it never print "Using cache".
                        if text.partition(" : ")[2].upper().startswith("FROM"):
                            steps, steps_cached = 0, 0
                        else:
                            steps += 1
                        n, _, total = text.split(" ", 2)[1].partition("/")
                        steps_total = int(total) if total.isdigit() else steps_total
                        self.progress(f"{label}: {text[:120]}")
                    elif "Using cache" in text:
                        steps_cached += 1
                    elif self.verbose:
                        self.progress(f"{label}:   {text[:200]}")
                elif "error" in chunk or "errorDetail" in chunk:
                    result.error = (chunk.get("errorDetail") or {}).get("message") or chunk.get(
                        "error"
                    )
                    result.log.append(f"ERROR: {result.error}")
                    raw.append(f"\nERROR: {result.error}\n")
                elif "aux" in chunk and "ID" in chunk["aux"]:
                    result.image_id = chunk["aux"]["ID"]
        except docker.errors.APIError as e:
            result.error = str(e.explanation or e)
        result.seconds = time.monotonic() - started
        if result.error is None and result.image_id is None:
            # Older engines do not send aux.ID; the tag exists only after success.
            try:
                result.image_id = self.client.images.get(ref).id
            except docker.errors.ImageNotFound:
                result.error = "the engine reported no image and no error"
        result.ok = result.error is None
        result.cached = result.ok and steps > 0 and steps_cached >= steps
        if result.ok:
            how = (
                "unchanged (all steps cached)"
                if result.cached
                else f"built in {result.seconds:.0f}s"
            )
            self.progress(f"{label}: {how} -> {ref} {(result.image_id or '')[7:19]}")
        else:
            log_note = self._keep_log(name, raw)
            cause = diagnose_failure(self.cfg, result.log)
            if cause:
                # The one line that says what to change, instead of a page of pip or npm.
                result.error = cause
                self.progress(f"{label}: FAILED after {result.seconds:.0f}s: {cause}{log_note}")
            else:
                tail = "\n".join(f"    {line}" for line in result.log[-15:])
                self.progress(
                    f"{label}: FAILED after {result.seconds:.0f}s: {result.error}{log_note}\n{tail}"
                )
        return result

    def _keep_log(self, name: str, raw: list[str]) -> str:
        """Write a failed build's log to build_log_file; returns ' (full log: PATH)' or ''."""
        path = build_log_file(self.cfg, name)
        try:
            path.parent.mkdir(parents=True, exist_ok=True)
            # The chunks as the engine sent them: a RUN's stderr arrives split mid-word, so
            # joining the stripped lines with newlines would break its messages apart.
            path.write_text(_ANSI.sub("", "".join(raw)).rstrip("\n") + "\n")
        except OSError:
            return ""
        return f" (full log: {path})"

    def build_many(
        self, names: Iterable[str] | None = None, tag: str | None = None, with_parents: bool = True
    ) -> list[BuildResult]:
        """Build NAMES (default: the graph's default targets) plus what they need, parents
        first, images.parallel_builds at once where neither is the other's ancestor; results
        in build order. A failure stops its branch only: its descendants are not built.
        """
        names = list(names) if names else self.graph.default_targets(self.cfg)
        order = self.graph.with_ancestors(names) if with_parents else self.graph.order(names)
        position = {name: f"{i}/{len(order)}" for i, name in enumerate(order, 1)}
        results: dict[str, BuildResult] = {}

        def build(name: str) -> bool:
            results[name] = self.build(name, tag, position=position[name])
            return results[name].ok

        def skipped(name: str, parent: str) -> None:
            why = f"parent {parent} failed"
            self.progress(f"[{position[name]}] {name}: skipped, {why}")
            results[name] = BuildResult(name, self.cfg.image_ref(name, tag), False, error=why)

        self.graph.run_parents_first(order, build, self.cfg.images.parallel_builds, skipped)
        return [results[name] for name in order]


def push_image(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    name: str,
    tag: str | None = None,
    auth: dict | None = None,
    progress: Callable[[str], None] = print_progress,
    role: Role = PUSH,
) -> str:
    """Push one image to ROLE's registry instance (the blessed images', or with USERS a
    per-user image to theirs); returns the manifest digest. Raises on any error."""
    tag = tag or cfg.images.tag
    repo = cfg.user_image_repository(name) if role == USERS else cfg.image_repository(name)
    digest = None
    for chunk in client.api.push(
        repo, tag, auth_config=auth or auth_config(cfg, role), stream=True, decode=True
    ):
        if "error" in chunk or "errorDetail" in chunk:
            msg = (chunk.get("errorDetail") or {}).get("message") or chunk.get("error")
            raise CommandError(f"push of {repo}:{tag} failed: {msg}")
        aux = chunk.get("aux") or {}
        if aux.get("Digest"):
            digest = aux["Digest"]
    if not digest:
        raise CommandError(f"push of {repo}:{tag} ended without a digest")
    progress(f"{name}: pushed {repo}:{tag} @ {digest}")
    return digest

"""Self-hosted builder: GitHub/Gitea push webhooks in, `hubstack ci build --push` out.

* ``POST /hook`` takes a push event. The body must carry a valid HMAC-SHA256
  signature made with the secret in ``ci.webhook_secret_file`` (GitHub:
  ``X-Hub-Signature-256: sha256=<hex>``; Gitea: ``X-Gitea-Signature: <hex>``),
  else 401 and nothing happens. A malformed body, or one over ``ci.max_body_bytes``,
  gets 400. Pushes to branches not in ``ci.branches`` are acknowledged and ignored.
* A pushed tag ``vX.Y.Z`` whose commit is on one of ``ci.branches`` and was built
  releases that commit's images as X.Y.Z (:mod:`hubstack.ci.release`); other tags
  are ignored.
* One worker builds one push at a time, in a clone of the configured repository
  checked out at the pushed commit. Pushes arriving while a build runs coalesce
  into a single queued build of the newest commit (covering all their changes).
* ``GET /`` is a status page; ``GET /api/builds`` and ``GET /api/builds/ID`` list
  builds with per-image results (and, for one build, the logs). History lives in
  STATE_DIR/ci/builds.json, so it survives a restart.
"""

from __future__ import annotations

import hashlib
import hmac
import html
import json
import re
import threading
import uuid
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from urllib.parse import parse_qs, quote

import tornado.web
from tornado.httpserver import HTTPServer

from hubstack.ci.plan import make_plan
from hubstack.ci.rebuild import BuildReport, Rebuilder, commit_tag, reports_dir, write_report
from hubstack.ci.release import release
from hubstack.ci.tags import Version
from hubstack.clock import run_stamp, timestamp
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.git import git, git_succeeds, is_commit
from hubstack.secretfiles import generated_secret

_SHA = re.compile(r"^[0-9a-f]{40}$")
_ZERO = "0" * 40
RELEASE_REF_PREFIX = "refs/tags/v"
"""A pushed tag vX.Y.Z releases its commit's images (`hubstack ci release X.Y.Z`)."""


def load_or_create_secret(path: Path) -> bytes:
    """A secret of the builder (the webhook's HMAC key, the read token); generated (mode
    0600) on first use, never printed."""
    secret = generated_secret(path)
    if not secret:
        raise ValueError(f"secret file {path} is empty")
    return secret.encode()


class NotOnBranch(Exception):
    """The pushed commit is not on the branch the push names: nothing is built."""


def sign(secret: bytes, body: bytes) -> str:
    return hmac.new(secret, body, hashlib.sha256).hexdigest()


def signature_valid(headers, body: bytes, secret: bytes) -> bool:
    """True when the GitHub (sha256=<hex>) or Gitea (<hex>) signature header matches BODY."""
    expected = sign(secret, body).encode()

    def matches(given: str) -> bool:
        # As bytes: compare_digest refuses str with non-ASCII characters, and a header may
        # hold anything.
        return hmac.compare_digest(given.strip().lower().encode("utf-8", "replace"), expected)

    github = headers.get("X-Hub-Signature-256", "")
    if github.startswith("sha256=") and matches(github[len("sha256=") :]):
        return True
    gitea = headers.get("X-Gitea-Signature", "")
    return bool(gitea) and matches(gitea)


class BadPush(ValueError):
    """A push event whose body cannot be used; the message says why."""


@dataclass
class PushEvent:
    branch: str
    after: str
    before: str
    provider: str


def parse_push(body: bytes, content_type: str, provider: str) -> PushEvent | None:
    """The push's branch and commits; None for a branch deletion. Raises BadPush when malformed."""
    raw = body
    if content_type.startswith("application/x-www-form-urlencoded"):
        form = parse_qs(body.decode("utf-8", "replace"))
        if "payload" not in form:
            raise BadPush("form body without a payload field")
        raw = form["payload"][0].encode()
    try:
        data = json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise BadPush(f"body is not JSON: {e}") from None
    if not isinstance(data, dict):
        raise BadPush("body must be a JSON object")
    ref, after, before = data.get("ref"), data.get("after"), data.get("before") or _ZERO
    if not isinstance(ref, str) or not ref.startswith("refs/"):
        raise BadPush("push event without a ref such as refs/heads/main")
    if not isinstance(after, str) or not _SHA.match(after):
        raise BadPush("push event without an 'after' commit id (40 hex digits)")
    if not isinstance(before, str) or not _SHA.match(before):
        raise BadPush("'before' must be a commit id (40 hex digits)")
    if after == _ZERO or data.get("deleted"):
        return None
    branch = ref[len("refs/heads/") :] if ref.startswith("refs/heads/") else ref
    return PushEvent(branch=branch, after=after, before=before, provider=provider)


@dataclass
class BuildRecord:
    id: str
    branch: str
    sha: str
    since: str
    provider: str
    status: str = "queued"
    """queued | running | ok | failed | error | interrupted | refused (commit not on branch)"""
    received: str = ""
    started: str = ""
    finished: str = ""
    pushes: list[str] = field(default_factory=list)
    """Every pushed commit this build covers (more than one when pushes coalesced)."""
    error: str = ""
    report: str = ""
    images: list[dict] = field(default_factory=list)


class Deliveries:
    """Webhook delivery IDs already processed, so a replayed delivery builds nothing. Kept
    (the newest KEEP) in a JSON file beside the build history, across restarts."""

    KEEP = 10000

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.seen: dict[str, str] = {}
        """delivery ID -> what it led to (a build ID, or why it was ignored)"""
        if self.path.exists():
            self.seen = json.loads(self.path.read_text() or "{}")

    def first_time(self, delivery: str) -> bool:
        """Record DELIVERY; False when it was already recorded (a replay)."""
        with self._lock:
            if delivery in self.seen:
                return False
            self.seen[delivery] = ""
            for old in list(self.seen)[: max(0, len(self.seen) - self.KEEP)]:
                del self.seen[old]
            self._save()
            return True

    def record(self, delivery: str, outcome: str) -> None:
        with self._lock:
            self.seen[delivery] = outcome
            self._save()

    def _save(self) -> None:
        self.path.parent.mkdir(parents=True, exist_ok=True)
        tmp = self.path.with_suffix(".tmp")
        tmp.write_text(json.dumps(self.seen))
        tmp.replace(self.path)


class BuildHistory:
    """Builds, newest last, kept in one JSON file rewritten atomically on every change."""

    def __init__(self, path: Path):
        self.path = Path(path)
        self._lock = threading.Lock()
        self.records: list[BuildRecord] = []
        if self.path.exists():
            for d in json.loads(self.path.read_text() or "[]"):
                rec = BuildRecord(**d)
                if rec.status in ("queued", "running"):
                    rec.status, rec.error = (
                        "interrupted",
                        "the builder stopped before this build finished",
                    )
                self.records.append(rec)

    def save(self) -> None:
        with self._lock:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            tmp = self.path.with_suffix(".tmp")
            tmp.write_text(json.dumps([asdict(r) for r in self.records], indent=1))
            tmp.replace(self.path)

    def add(self, rec: BuildRecord) -> None:
        with self._lock:
            self.records.append(rec)
        self.save()

    def get(self, build_id: str) -> BuildRecord | None:
        return next((r for r in self.records if r.id == build_id), None)


# Every branch of the remote, mirrored as remote-tracking refs (pushed commits live there).
_ALL_BRANCHES = "+refs/heads/*:refs/remotes/origin/*"


class Checkout:
    """A clone of the configured repository, moved to whichever commit is to be built."""

    def __init__(self, repository: str, path: Path):
        self.repository, self.path = repository, Path(path)

    def at(self, sha: str) -> Path:
        if not (self.path / ".git").exists():
            self.path.parent.mkdir(parents=True, exist_ok=True)
            clone = ("clone", "--quiet", "--no-checkout", self.repository, str(self.path))
            git(self.path.parent, *clone)
        git(self.path, "fetch", "--quiet", "--prune", "origin", _ALL_BRANCHES)
        if not self.has(sha):
            git(self.path, "fetch", "--quiet", "origin", sha)  # a commit no branch holds any more
        git(self.path, "checkout", "--quiet", "--force", "--detach", sha)
        git(self.path, "clean", "-ffdxq")
        return self.path

    def has(self, sha: str) -> bool:
        return is_commit(self.path, sha)

    def on_branch(self, sha: str, branch: str) -> bool:
        """Whether SHA is the tip of BRANCH in the repository, or one of its ancestors."""
        ref = f"refs/remotes/origin/{branch}"
        return git_succeeds(self.path, "merge-base", "--is-ancestor", sha, ref)


class WebhookBuilder:
    """Queue and worker: one build at a time, pushes during a build coalesce to the newest.

    REPOSITORY: the git URL or path the builder clones (default: the platform's
    source_dir). PUSH: push tested images and move latest (as `ci build --push`).
    """

    def __init__(
        self,
        cfg: PlatformConfig,
        client,
        run_build: Callable[[BuildRecord, Path], BuildReport] | None = None,
        *,
        repository: str = "",
        push: bool = True,
    ):
        self.cfg, self.client = cfg, client
        self.repository, self.push = repository, push
        self.state = cfg.state_dir / "ci"
        self.secret = load_or_create_secret(cfg.webhook_secret_file)
        self.token = load_or_create_secret(cfg.ci_token_file).decode()
        self.history = BuildHistory(self.state / "builds.json")
        self.deliveries = Deliveries(self.state / "deliveries.json")
        self.checkout = Checkout(self.repository or str(cfg.source_root), self.state / "checkout")
        self._run_build = run_build or self._default_build
        self._cond = threading.Condition()
        self._pending: dict[str, BuildRecord] = {}  # branch -> its one queued build, oldest first
        self._stopping = False
        self._worker = threading.Thread(target=self._work, name="ci-webhook-worker", daemon=True)
        self.history.save()

    def start(self) -> None:
        self._worker.start()

    def stop(self, timeout: float | None = None) -> None:
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        if self._worker.is_alive():
            self._worker.join(timeout)

    def submit(self, push: PushEvent) -> tuple[BuildRecord, bool]:
        """Queue a build of PUSH; returns (record, coalesced into an already queued build)."""
        with self._cond:
            pending = self._pending.get(push.branch)
            if pending is not None:
                # Still waiting: build the newest commit, over the changes of every push since.
                pending.sha = push.after
                pending.pushes.append(push.after)
                self.history.save()
                return pending, True
            rec = BuildRecord(
                id=f"{run_stamp()}-{uuid.uuid4().hex[:6]}",
                branch=push.branch,
                sha=push.after,
                since=push.before,
                provider=push.provider,
                received=timestamp(),
                pushes=[push.after],
            )
            self.history.add(rec)
            self._pending[push.branch] = rec
            self._cond.notify_all()
            return rec, False

    def _work(self) -> None:
        while True:
            with self._cond:
                while not self._pending and not self._stopping:
                    self._cond.wait()
                if self._stopping:
                    return
                rec = self._pending.pop(next(iter(self._pending)))
                rec.status, rec.started = "running", timestamp()
            self.history.save()
            try:
                if rec.branch.startswith(RELEASE_REF_PREFIX):
                    self._release(rec)
                    rec.status = "ok"
                else:
                    report = self._run_build(rec, self.checkout.path)
                    rec.report = report.run_id
                    rec.images = [
                        {
                            k: v
                            for k, v in asdict(i).items()
                            if k not in ("build_log", "test_output")
                        }
                        for i in report.images
                    ]
                    rec.status = "ok" if report.ok else "failed"
            except CommandError as e:
                rec.status, rec.error = "failed", str(e)
            except NotOnBranch as e:
                rec.status, rec.error = "refused", str(e)
            except Exception as e:
                rec.status, rec.error = "error", f"{type(e).__name__}: {e}"
            rec.finished = timestamp()
            self.history.save()

    def _default_build(self, rec: BuildRecord, _: Path) -> BuildReport:
        source = self.checkout.at(rec.sha)
        # The signature proves who sent the push, not that the commit is on the branch it
        # names: a commit from any other branch or fork would be built and pushed as latest.
        if not self.checkout.on_branch(rec.sha, rec.branch):
            raise NotOnBranch(
                f"commit {rec.sha[:12]} is not on branch {rec.branch!r} of "
                f"{self.checkout.repository}: nothing was built"
            )
        cfg = self.cfg.model_copy(update={"source_dir": source})
        # Compare with the last commit built green on this branch, so what a failed build left
        # out is retried; the push's own `before` when there is none.
        last_ok = next(
            (
                r
                for r in reversed(self.history.records)
                if r.branch == rec.branch and r.status == "ok" and r.id != rec.id
            ),
            None,
        )
        candidate = last_ok.sha if last_ok else rec.since
        since = candidate if candidate != _ZERO and self.checkout.has(candidate) else None
        plan = make_plan(cfg, since, rec.sha)
        report = Rebuilder(cfg, self.client, push=self.push, out=lambda line: None).run_plan(plan)
        write_report(self.cfg, report)
        return report

    def _release(self, rec: BuildRecord) -> None:
        """A pushed tag vX.Y.Z: release the images CI built for its commit (hubstack.ci.release).
        The commit must be on a watched branch, as for builds."""
        version = rec.branch.removeprefix(RELEASE_REF_PREFIX)
        source = self.checkout.at(rec.sha)
        if not any(self.checkout.on_branch(rec.sha, b) for b in self.cfg.ci.branches):
            raise NotOnBranch(
                f"tag v{version}: commit {rec.sha[:12]} is on none of ci.branches "
                f"{self.cfg.ci.branches}: nothing was released"
            )
        cfg = self.cfg.model_copy(update={"source_dir": source})
        release(cfg, self.client, version, source=commit_tag(rec.sha), progress=lambda line: None)

    def report_path(self, rec: BuildRecord) -> Path | None:
        if not rec.report:
            return None
        p = reports_dir(self.cfg) / f"{rec.report}.json"
        return p if p.exists() else None


class _Base(tornado.web.RequestHandler):
    def initialize(self, builder: WebhookBuilder):
        self.builder = builder

    def write_json(self, data, status: int = 200) -> None:
        self.set_status(status)
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps(data, indent=1))

    def write_error(self, status_code: int, **kwargs) -> None:
        reason = self._reason
        exc = kwargs.get("exc_info", (None, None))[1]
        if isinstance(exc, tornado.web.HTTPError) and exc.log_message:
            reason = exc.log_message
        self.set_header("Content-Type", "application/json")
        self.finish(json.dumps({"error": reason}))


@tornado.web.stream_request_body
class HookHandler(_Base):
    """POST /hook: one push event, signed."""

    def prepare(self):
        self._chunks: list[bytes] = []
        self._size = 0
        limit = self.builder.cfg.ci.max_body_bytes
        length = self.request.headers.get("Content-Length")
        if self.request.method == "POST" and length is not None:
            if not length.isdigit():
                raise tornado.web.HTTPError(400, "Content-Length is not a number")
            if int(length) > limit:
                raise tornado.web.HTTPError(
                    400, f"body of {length} bytes is over the limit of {limit} (ci.max_body_bytes)"
                )

    def data_received(self, chunk: bytes):
        self._size += len(chunk)
        if self._size > self.builder.cfg.ci.max_body_bytes:
            raise tornado.web.HTTPError(
                400,
                f"body over the limit of {self.builder.cfg.ci.max_body_bytes} bytes "
                "(ci.max_body_bytes)",
            )
        self._chunks.append(chunk)

    def post(self):
        body = b"".join(self._chunks)
        headers = self.request.headers
        if not signature_valid(headers, body, self.builder.secret):
            raise tornado.web.HTTPError(
                401, "missing or bad signature (X-Hub-Signature-256 or X-Gitea-Signature)"
            )
        provider = "gitea" if "X-Gitea-Event" in headers else "github"
        delivery = headers.get("X-Gitea-Delivery") or headers.get("X-GitHub-Delivery") or ""
        if delivery and not self.builder.deliveries.first_time(delivery):
            # A redelivery or a replay: answered, recorded, and never built twice.
            return self.write_json(
                {
                    "status": "duplicate",
                    "delivery": delivery,
                    "first": self.builder.deliveries.seen[delivery],
                }
            )
        event = headers.get("X-Gitea-Event") or headers.get("X-GitHub-Event") or ""
        if event == "ping":
            return self.write_json({"status": "pong"})
        if event != "push":
            return self.write_json(
                {"status": "ignored", "reason": f"event {event or '(none)'!r} is not a push"}, 202
            )
        try:
            push = parse_push(body, headers.get("Content-Type", "application/json"), provider)
        except BadPush as e:
            raise tornado.web.HTTPError(400, f"malformed push event: {e}") from None
        if push is None:
            return self.write_json({"status": "ignored", "reason": "branch deleted"}, 202)
        if push.branch.startswith("refs/tags/"):
            if not push.branch.startswith(RELEASE_REF_PREFIX) or not Version.from_tag(
                push.branch.removeprefix(RELEASE_REF_PREFIX)
            ):
                return self.write_json(
                    {
                        "status": "ignored",
                        "reason": f"tag {push.branch[10:][:64]!r} is not a release (vX.Y.Z)",
                    },
                    202,
                )
        elif push.branch not in self.builder.cfg.ci.branches:
            return self.write_json(
                {
                    "status": "ignored",
                    "reason": f"branch {push.branch!r} is not one of ci.branches "
                    f"{self.builder.cfg.ci.branches}",
                },
                202,
            )
        rec, coalesced = self.builder.submit(push)
        if delivery:
            self.builder.deliveries.record(delivery, rec.id)
        self.write_json(
            {"status": "coalesced" if coalesced else "queued", "build": rec.id, "sha": rec.sha}, 202
        )


class _ReadHandler(_Base):
    """Pages and APIs that show builds (logs, test output): only with the builder's token,
    as `Authorization: token TOKEN` (or Bearer) or `?token=TOKEN` for a browser."""

    def prepare(self):
        given = self.get_query_argument("token", "")
        header = self.request.headers.get("Authorization", "")
        scheme, _, value = header.partition(" ")
        if scheme.lower() in ("token", "bearer"):
            given = value.strip()
        if not given or not hmac.compare_digest(
            given.encode("utf-8", "replace"), self.builder.token.encode()
        ):
            raise tornado.web.HTTPError(
                401,
                "this page needs the builder's token (Authorization: token TOKEN, or "
                f"?token=TOKEN); it is in {self.builder.cfg.ci_token_file}",
            )


class BuildsHandler(_ReadHandler):
    def get(self):
        self.write_json({"builds": [asdict(r) for r in reversed(self.builder.history.records)]})


class BuildHandler(_ReadHandler):
    def get(self, build_id: str):
        rec = self.builder.history.get(build_id)
        if rec is None:
            raise tornado.web.HTTPError(404, f"no build {build_id!r}")
        data = asdict(rec)
        path = self.builder.report_path(rec)
        if path:
            data["images"] = json.loads(path.read_text())[
                "images"
            ]  # with build logs and test output
        self.write_json(data)


class StatusPage(_ReadHandler):
    def get(self):
        # A browser came with ?token=: the details links carry it on.
        token = self.get_query_argument("token", "")
        link_token = html.escape(f"?token={quote(token)}") if token else ""
        rows = []
        for r in reversed(self.builder.history.records):
            imgs = ", ".join(f"{i['name']}: {i['status']}" for i in r.images) or r.error
            rows.append(
                "<tr>"
                + "".join(
                    f"<td>{html.escape(str(c))}</td>"
                    for c in (
                        r.id,
                        r.branch,
                        r.sha[:12],
                        r.status,
                        r.started or r.received,
                        r.finished,
                        imgs,
                    )
                )
                + f'<td><a href="api/builds/{html.escape(r.id)}{link_token}">details</a></td></tr>'
            )
        self.set_header("Content-Type", "text/html; charset=utf-8")
        self.finish(
            "<!doctype html><title>hubstack CI</title><h1>hubstack CI builds</h1>"
            "<table border=1 "
            "cellpadding=4><tr><th>build</th><th>branch</th><th>commit</th><th>status</th>"
            "<th>started</th><th>finished</th><th>images</th><th></th></tr>"
            + "".join(rows)
            + "</table>"
        )


class HealthHandler(_Base):
    def get(self):
        self.write_json({"status": "ok"})


def make_app(builder: WebhookBuilder) -> tornado.web.Application:
    args = {"builder": builder}
    return tornado.web.Application(
        [
            (r"/hook", HookHandler, args),
            (r"/api/builds", BuildsHandler, args),
            (r"/api/builds/([^/]+)", BuildHandler, args),
            (r"/health", HealthHandler, args),
            (r"/", StatusPage, args),
        ]
    )


def make_server(builder: WebhookBuilder) -> HTTPServer:
    # The handler answers oversized bodies with a clear 400; the server's own cap is only a
    # backstop.
    return HTTPServer(make_app(builder), max_body_size=builder.cfg.ci.max_body_bytes * 2 + 65536)


def listen(builder: WebhookBuilder, host: str, port: int) -> HTTPServer:
    """Start the HTTP server on the current IOLoop."""
    server = make_server(builder)
    server.listen(port, address=host)
    return server

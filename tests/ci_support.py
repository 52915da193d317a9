"""A temporary git repository of TINY images for the CI tests (never the real hierarchy).

    root (FROM the configured base) -> mid -> leaf
    root -> side                      (an independent branch, built beside mid)

Each image copies one small file, so a build takes a second or two on a warm
layer cache, and its test_image.py checks that file inside the fresh image.
`with_extras=True` adds top-level `spark-executor/` (FROM leaf) and `hub/`
(FROM root, with build.yaml including `pkg/`), as in the real layout.
"""

from __future__ import annotations

import asyncio
import json
import threading
from pathlib import Path

import requests
from tornado.ioloop import IOLoop
from tornado.testing import bind_unused_port

from hubstack.ci.webhook import make_server, sign
from hubstack.git import git

PARENTS = {"root": None, "mid": "root", "leaf": "mid", "side": "root"}
EXTRAS = {"spark-executor": "leaf", "hub": "root"}

ROOT_FROM = "ARG BASE_IMAGE=debian:bookworm-slim\nFROM ${BASE_IMAGE}\n"
CHILD_FROM = (
    "ARG HUBSTACK_REPO=hubstack\nARG HUBSTACK_TAG=latest\n"
    "FROM ${HUBSTACK_REPO}/%s:${HUBSTACK_TAG}\n"
)

TEST_MODULE = """\
def test_marker_is_in_the_image(run):
    out = run("cat", "/usr/share/citest/{name}.txt").check()
    assert "{name}" in out
"""


def folder_of(repo: Path, name: str) -> Path:
    return repo / name if name in EXTRAS else repo / "images" / name


def dockerfile(name: str, parent: str | None) -> str:
    head = ROOT_FROM if parent is None else CHILD_FROM % parent
    return head + f"COPY marker.txt /usr/share/citest/{name}.txt\n"


def make_repo(path: Path, with_extras: bool = False) -> Path:
    """Create and commit the tiny image repository at PATH; returns PATH."""
    path.mkdir(parents=True, exist_ok=True)
    git(path, "init", "-q", "-b", "main")
    git(path, "config", "user.email", "ci-tests@hubstack.invalid")
    git(path, "config", "user.name", "hubstack ci tests")
    images = dict(PARENTS, **(EXTRAS if with_extras else {}))
    for name, parent in images.items():
        d = folder_of(path, name)
        d.mkdir(parents=True, exist_ok=True)
        (d / "Dockerfile").write_text(dockerfile(name, parent))
        (d / "marker.txt").write_text(f"{name} v1\n")
        (d / "test_image.py").write_text(TEST_MODULE.format(name=name))
    if with_extras:
        (path / "pkg").mkdir()
        (path / "pkg" / "module.py").write_text("VERSION = 1\n")
        (folder_of(path, "hub") / "build.yaml").write_text("include: [pkg]\n")
    (path / "README.md").write_text("tiny images for hubstack's CI tests\n")
    commit(path, "tiny image hierarchy")
    return path


def commit(repo: Path, message: str) -> str:
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "--allow-empty", "-m", message)
    return git(repo, "rev-parse", "HEAD").strip()


def change(repo: Path, name: str, text: str = "v2") -> str:
    """Change image NAME's marker file and commit; returns the new commit id."""
    marker = folder_of(repo, name) / "marker.txt"
    marker.write_text(f"{name} {text}\n")
    return commit(repo, f"change {name}: {text}")


def break_dockerfile(repo: Path, name: str) -> str:
    """Make NAME's build fail (a RUN that exits non-zero) and commit."""
    df = folder_of(repo, name) / "Dockerfile"
    df.write_text(df.read_text() + "RUN echo 'deliberately broken' && exit 3\n")
    return commit(repo, f"break {name}")


def tiny_config(platform_config, repo: Path, state_dir: Path, with_extras: bool = False):
    """The session's platform config, pointed at the tiny repository and its own namespace."""
    contexts = ["images/*", "spark-executor", "hub"] if with_extras else ["images/*"]
    images = platform_config.images.model_copy(
        update={"namespace": "citest", "contexts": contexts, "on_demand": [], "tag": "latest"}
    )
    ci = platform_config.ci.model_copy(
        update={"webhook_secret_file": state_dir / "secrets" / "webhook-secret"}
    )
    # The registry's credentials stay where the session put them, whatever state_dir becomes.
    registry = platform_config.registry.model_copy(
        update={"credentials_file": platform_config.registry_credentials_file}
    )
    return platform_config.model_copy(
        update={
            "source_dir": repo,
            "state_dir": state_dir,
            "images": images,
            "ci": ci,
            "registry": registry,
        }
    )


class WebhookServer:
    """A real webhook builder server on a loopback port, in a thread with its own IOLoop."""

    def __init__(self, builder):
        self.builder = builder
        self.loop = None
        self.port = None

    def __enter__(self):
        sock, self.port = bind_unused_port()
        ready = threading.Event()

        def serve():
            asyncio.set_event_loop(asyncio.new_event_loop())
            self.loop = IOLoop.current()
            server = make_server(self.builder)
            server.add_sockets([sock])
            ready.set()
            self.loop.start()
            server.stop()

        self.thread = threading.Thread(target=serve, daemon=True)
        self.thread.start()
        ready.wait(10)
        self.builder.start()
        return self

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __exit__(self, *exc):
        self.builder.stop(timeout=120)
        self.loop.add_callback(self.loop.stop)
        self.thread.join(10)


def push_payload(sha: str, before: str = "0" * 40, branch: str = "main") -> bytes:
    return json.dumps(
        {
            "ref": f"refs/heads/{branch}",
            "before": before,
            "after": sha,
            "repository": {"full_name": "hubstack/citest"},
        }
    ).encode()


def github_headers(secret: bytes, body: bytes, event: str = "push") -> dict:
    return {
        "X-GitHub-Event": event,
        "X-Hub-Signature-256": "sha256=" + sign(secret, body),
        "Content-Type": "application/json",
    }


def gitea_headers(secret: bytes, body: bytes, event: str = "push") -> dict:
    return {
        "X-Gitea-Event": event,
        "X-Gitea-Signature": sign(secret, body),
        "Content-Type": "application/json",
    }


# ---------------------------------------------------------------------------
# Registry and engine for the integration tests.
#
# The session's `platform_config` and `registry` fixtures (tests/conftest.py) are used
# when they exist. Until they do, these stand-ins run a registry of our own
# (container ci-registry-<port>, from registry:2 or a local build of Debian's
# docker-registry) and, if hubstack.registry / hubstack.images.build are missing,
# minimal test-only versions of auth_config and ImageBuilder.
# ---------------------------------------------------------------------------

_MANIFEST_TYPES = ", ".join(
    [
        "application/vnd.docker.distribution.manifest.v2+json",
        "application/vnd.docker.distribution.manifest.list.v2+json",
        "application/vnd.oci.image.manifest.v1+json",
        "application/vnd.oci.image.index.v1+json",
    ]
)


def registry_login(cfg) -> tuple[str, str]:
    data = json.loads(cfg.registry_credentials_file.read_text())
    return data["username"], data["password"]


def manifest_digest(cfg, name: str, tag: str) -> str | None:
    """Digest of NAME:TAG's manifest in the registry (what a pull by tag gets), None if absent."""
    url = f"http://{cfg.registry.address}/v2/{cfg.repository_path(name)}/manifests/{tag}"
    r = requests.head(
        url, auth=registry_login(cfg), headers={"Accept": _MANIFEST_TYPES}, timeout=30
    )
    if r.status_code == 404:
        return None
    r.raise_for_status()
    return r.headers["Docker-Content-Digest"]


def registry_config(request, tmp_path_factory, client):
    """The session's platform config, with its running registry (shared fixtures)."""
    cfg = request.getfixturevalue("platform_config")
    request.getfixturevalue("registry")
    return cfg


def tiny_env(request, tmp_path_factory, client, name: str):
    """(cfg, repo, config file) for a fresh tiny repository on a running registry; cleans up."""

    cfg = registry_config(request, tmp_path_factory, client)
    tmp = tmp_path_factory.mktemp(name)
    repo = make_repo(tmp / "repo")
    cfg = tiny_config(cfg, repo, tmp / "state")
    conf = tmp / "hubstack.yaml"
    conf.write_text(json.dumps(json.loads(cfg.model_dump_json(exclude={"path"}))))

    def remove_images():
        for n in PARENTS:
            for img in client.images.list(name=cfg.image_repository(n)):
                for t in img.tags:
                    client.images.remove(t)

    request.addfinalizer(remove_images)
    return cfg, repo, conf

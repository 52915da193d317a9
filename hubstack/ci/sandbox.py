"""Run an image folder's `test_image.py` where it can reach nothing but the image under test.

A pushed test module is untrusted code: it must never run beside the Docker socket or a
secret. So :func:`run_image_tests` runs pytest (with the :mod:`hubstack.ci.imagetest`
plugin) in a *runner* container started with no socket, no network, no capabilities,
no new privileges, a read-only root and an unprivileged user, whose only mount is a
fresh folder (read-only) holding a copy of the image folder, the plugin and a unix
socket. Behind that socket a :class:`Broker` in this process starts containers of THE
image under test for the tests' ``run(...)`` fixture: the command, user, environment
and entrypoint come from the request; the image, the limits (network none, no mounts,
no capabilities, no-new-privileges, a timeout, a pid limit) and the removal afterwards
are the broker's.

The runner image is Debian's python3 and pytest on the platform's base image, built
once per base image (``hubstack-imagetest-runner:<hash>``, local to the engine).

The folder lives under STATE_DIR/ci/imagetest: the compose builder mounts the state dir
at its host path, so the engine finds the same folder from inside it or from the host.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socketserver
import tempfile
import threading
from pathlib import Path

import docker
import requests

from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.images.build import root_build_args

TEST_MODULE = "test_image.py"
PLUGIN_MODULE = "hubstack_imagetest"
# The plugin's source (hubstack/ci/imagetest.py), copied, never imported: it needs pytest.
PLUGIN_SOURCE = Path(__file__).with_name("imagetest.py")
RUNNER_REPOSITORY = "hubstack-imagetest-runner"
# Who the runner is when the builder is root: nobody owns nothing it could change.
RUNNER_USER = (65534, 65534)
SANDBOX_LABEL = "io.hubstack.imagetest"
"""On every container this module starts: `runner`, or `image` (one started by the broker)."""

# What the runner sees (its only mount, read-only).
MOUNT = "/imagetest"
SOCKET_NAME = "broker.sock"

# Containers of the image under test: the longest one may run, the output kept (its tail),
# how many at once, and how many processes each.
MAX_RUN_SECONDS = 900
MAX_OUTPUT_CHARS = 1 << 20
MAX_RUNS_AT_ONCE = 4
PIDS_LIMIT = 2048  # threads count: a JVM runs hundreds
MAX_REQUEST_BYTES = 1 << 20
# With network none a container's hostname resolves to nothing, and some programs (Spark's
# local mode) look themselves up: the broker names every container this and maps it to
# loopback.
RUN_HOSTNAME = "imagetest"

RUNNER_DOCKERFILE = """\
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
ARG APT_MIRROR=
ARG DEBIAN_SUITE=bookworm
RUN if [ -n "$APT_MIRROR" ]; then \\
        rm -f /etc/apt/sources.list.d/debian.sources; \\
        printf 'deb %s %s main\\n' "$APT_MIRROR" "$DEBIAN_SUITE" > /etc/apt/sources.list; \\
    fi \\
 && apt-get update \\
 && apt-get install -y --no-install-recommends python3 python3-pytest \\
 && rm -rf /var/lib/apt/lists/*
"""

_runner_lock = threading.Lock()
# What docker-py's container.wait(timeout=...) raises when the time is up (over the engine's
# unix socket a read timeout comes as a ConnectionError).
_WAIT_TIMED_OUT = (requests.exceptions.ConnectionError, requests.exceptions.Timeout)


def wait_and_read(container, timeout: float, timed_out_code: int, why: str) -> tuple[int, str]:
    """Wait for CONTAINER to exit (killed after TIMEOUT s, then TIMED_OUT_CODE and WHY on its
    own line after the output); its exit code and its output."""
    try:
        return (
            int(container.wait(timeout=timeout).get("StatusCode", -1)),
            container.logs(stdout=True, stderr=True).decode(errors="replace"),
        )
    except _WAIT_TIMED_OUT:
        container.kill()
    out = container.logs(stdout=True, stderr=True).decode(errors="replace")
    return timed_out_code, f"{out}\n{why}"


def find_test_module(folder: Path) -> Path | None:
    path = Path(folder) / TEST_MODULE
    return path if path.is_file() else None


def runner_image(cfg: PlatformConfig, client: docker.DockerClient) -> str:
    """The runner image's reference, built when this engine does not have it yet."""
    args = {"BASE_IMAGE": cfg.base.image, **root_build_args(cfg)}
    args.pop("PIP_INDEX_URL", None)  # Debian's pytest: no pip in it
    try:
        base_id = client.images.get(cfg.base.image).id
    except docker.errors.ImageNotFound:
        base_id = cfg.base.image  # the build pulls it, as the root image's build does
    digest = hashlib.sha256(
        json.dumps([RUNNER_DOCKERFILE, args, base_id], sort_keys=True).encode()
    ).hexdigest()
    ref = f"{RUNNER_REPOSITORY}:{digest[:12]}"
    with _runner_lock:  # images of one plan are tested at once: build it once
        try:
            client.images.get(ref)
            return ref
        except docker.errors.ImageNotFound:
            pass
        try:
            client.images.build(
                fileobj=io.BytesIO(RUNNER_DOCKERFILE.encode()),
                tag=ref,
                buildargs=args,
                rm=True,
                forcerm=True,
                labels={SANDBOX_LABEL: "runner-image"},
            )
        except docker.errors.BuildError as e:
            log = "".join(str(c.get("stream") or c.get("error") or "") for c in e.build_log)
            raise CommandError(
                f"building the image-test runner ({ref}) failed: {e.msg}\n{log[-1500:]}"
            ) from None
    return ref


class Broker(socketserver.ThreadingMixIn, socketserver.UnixStreamServer):
    """Starts containers of IMAGE (and nothing else) for the runner's `run(...)` requests.

    A request is one JSON object: ``cmd`` (list of strings), and optionally ``user``,
    ``env`` (strings to strings), ``entrypoint`` (list of strings) and ``timeout``
    (seconds, at most MAX_RUN_SECONDS). Any other key is refused. The reply is
    ``{"exit_code": N, "output": TEXT}``, or ``{"error": WHY}``.
    """

    daemon_threads = True

    def __init__(self, path: Path, client: docker.DockerClient, image: str):
        self.client, self.image = client, image
        self.slots = threading.BoundedSemaphore(MAX_RUNS_AT_ONCE)
        # A unix socket's path is at most 107 bytes, and a state dir's folders may be longer:
        # bind through the folder's descriptor (/proc/self/fd/N/NAME), which is short.
        folder = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            super().__init__(f"/proc/self/fd/{folder}/{path.name}", _BrokerRequest)
        finally:
            os.close(folder)

    def run_container(self, ask: dict) -> dict:
        cmd, user, env, entrypoint, timeout = _checked(ask)
        with self.slots:
            container = self.client.containers.create(
                self.image,
                cmd,
                user=user,
                environment=env,
                entrypoint=entrypoint,
                hostname=RUN_HOSTNAME,
                extra_hosts={RUN_HOSTNAME: "127.0.0.1"},
                network_mode="none",
                cap_drop=["ALL"],
                security_opt=["no-new-privileges"],
                pids_limit=PIDS_LIMIT,
                labels={SANDBOX_LABEL: "image"},
            )
            try:
                container.start()
                code, out = wait_and_read(
                    container, timeout, 124, f"[imagetest] stopped after the timeout of {timeout}s"
                )
                return {"exit_code": code, "output": out[-MAX_OUTPUT_CHARS:]}
            finally:
                container.remove(force=True)


def _checked(ask: object) -> tuple[list[str], str | None, dict | None, list[str] | None, int]:
    """The request's fields, each of the type it must have; ValueError says what is wrong."""
    if not isinstance(ask, dict):
        raise ValueError("a request is a JSON object")
    unknown = set(ask) - {"cmd", "user", "env", "entrypoint", "timeout"}
    if unknown:
        raise ValueError(
            f"unknown field(s) {sorted(unknown)}: only cmd, user, env, entrypoint, "
            "timeout (the image and the container's limits are the broker's)"
        )

    def strings(name: str, value: object) -> list[str] | None:
        if value is None:
            return None
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            raise ValueError(f"{name} must be a list of strings")
        return value

    cmd = strings("cmd", ask.get("cmd")) or []
    entrypoint = strings("entrypoint", ask.get("entrypoint"))
    user = ask.get("user")
    if user is not None and not isinstance(user, str):
        raise ValueError("user must be a string such as '1000:100'")
    env = ask.get("env")
    if env is not None and (
        not isinstance(env, dict)
        or not all(isinstance(k, str) and isinstance(v, str) for k, v in env.items())
    ):
        raise ValueError("env must map strings to strings")
    timeout = ask.get("timeout", 240)
    if not isinstance(timeout, int) or isinstance(timeout, bool) or not 0 < timeout:
        raise ValueError("timeout must be a positive number of seconds")
    return cmd, user, env, entrypoint, min(timeout, MAX_RUN_SECONDS)


class _BrokerRequest(socketserver.StreamRequestHandler):
    server: Broker

    def handle(self) -> None:
        raw = self.rfile.readline(MAX_REQUEST_BYTES + 1)
        try:
            if len(raw) > MAX_REQUEST_BYTES:
                raise ValueError(f"request over {MAX_REQUEST_BYTES} bytes")
            try:
                ask = json.loads(raw)
            except ValueError:
                raise ValueError("a request is one line of JSON") from None
            reply = self.server.run_container(ask)
        except ValueError as e:
            reply = {"error": str(e)}
        except docker.errors.APIError as e:
            reply = {"error": f"the engine refused: {e.explanation or e}"}
        self.wfile.write(json.dumps(reply).encode())


def _workdir(cfg: PlatformConfig, folder: Path, runner_uid: int, runner_gid: int) -> Path:
    """A fresh private folder holding a copy of FOLDER (tests/) and the plugin (plugin/)."""
    parent = cfg.state_dir / "ci" / "imagetest"
    parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix="", dir=parent))
    # Links are copied as links: one pointing at a host file points at nothing in the runner.
    shutil.copytree(folder, work / "tests", symlinks=True)
    (work / "plugin").mkdir()
    shutil.copyfile(PLUGIN_SOURCE, work / "plugin" / f"{PLUGIN_MODULE}.py")
    for path in [work, *work.rglob("*")]:
        if not path.is_symlink():
            path.chmod(0o755 if path.is_dir() else 0o644)
    work.chmod(0o700)
    if os.geteuid() == 0:
        os.chown(work, runner_uid, runner_gid)
    return work


def run_image_tests(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    folder: Path,
    ref: str,
    timeout: int = 900,
) -> tuple[bool, str]:
    """Run FOLDER's test module against REF in a runner container: (passed, output).

    An image without a test module passes, and the output says it has none.
    """
    module = find_test_module(folder)
    if module is None:
        return True, f"no {TEST_MODULE} in {folder}: nothing to test"
    runner = runner_image(cfg, client)
    uid, gid = RUNNER_USER if os.geteuid() == 0 else (os.geteuid(), os.getegid())
    work = _workdir(cfg, Path(folder), uid, gid)
    broker = Broker(work / SOCKET_NAME, client, ref)
    if os.geteuid() == 0:
        os.chown(work / SOCKET_NAME, uid, gid)
    serving = threading.Thread(target=broker.serve_forever, name="imagetest-broker", daemon=True)
    serving.start()
    container = None
    try:
        container = client.containers.create(
            runner,
            [
                "python3",
                "-m",
                "pytest",
                "-q",
                "-p",
                PLUGIN_MODULE,
                "-p",
                "no:cacheprovider",
                "--rootdir",
                f"{MOUNT}/tests",
                "-c",
                "/dev/null",
                f"{MOUNT}/tests/{TEST_MODULE}",
                "--image",
                ref,
                "--broker",
                f"{MOUNT}/{SOCKET_NAME}",
            ],
            user=f"{uid}:{gid}",
            environment={"PYTHONPATH": f"{MOUNT}/plugin", "PYTHONDONTWRITEBYTECODE": "1"},
            working_dir=f"{MOUNT}/tests",
            volumes={str(work): {"bind": MOUNT, "mode": "ro"}},
            network_mode="none",
            cap_drop=["ALL"],
            security_opt=["no-new-privileges"],
            read_only=True,
            tmpfs={"/tmp": "size=256m"},
            pids_limit=PIDS_LIMIT,
            labels={SANDBOX_LABEL: "runner"},
        )
        container.start()
        code, out = wait_and_read(container, timeout, -1, f"image tests timed out after {timeout}s")
        return code == 0, out.strip()
    finally:
        if container is not None:
            container.remove(force=True)
        broker.shutdown()
        broker.server_close()
        shutil.rmtree(work, ignore_errors=True)

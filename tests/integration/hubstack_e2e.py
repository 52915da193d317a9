"""Helpers for the end-to-end hub tests: a real stack started with `hubstack up`, and an
HTTP client that logs in through the login form and runs code in a kernel through the
hub's proxy."""

from __future__ import annotations

import contextlib
import json
import os
import re
import socket
import ssl
import subprocess
import sys
import time
import uuid
from pathlib import Path

import docker
import requests
import websocket
import yaml

from hubstack import stack
from hubstack.backup import volume_name
from hubstack.config import load_config
from hubstack.engine import project_name, service_container
from hubstack.hub.users import users_file_for
from hubstack.stack import compose_file, env_file, local_images
from tests.conftest import config_data, free_port
from tests.registry_storage import merge_registry_storage

REPO = Path(__file__).resolve().parents[2]


def free_port_range(count: int) -> int:
    """First of COUNT consecutive free loopback ports (one per Spark worker UI)."""
    while True:
        first = free_port()
        try:
            for port in range(first, first + count):
                with socket.socket() as s:
                    s.bind(("127.0.0.1", port))
            return first
        except OSError:
            continue


def hubstack(config: Path, *args: str, timeout: int = 900) -> subprocess.CompletedProcess:
    """Run the real CLI, as a platform engineer would."""
    env = dict(os.environ, PYTHONPATH=str(REPO))
    return subprocess.run(
        [sys.executable, "-m", "hubstack", "-c", str(config), *args],
        cwd=REPO,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


def add_user(cfg, name: str, password: str, uid: int, gid: int, groups: list[int]) -> None:
    """Put an analyst into the users file through the users module."""

    users_file_for(cfg).add(name, uid, gid, groups, password=password)


class HubClient:
    """One analyst's browser-like session: cookies, XSRF, and an API token."""

    def __init__(self, base: str, name: str, verify: bool | str = True):
        self.base = base.rstrip("/")
        self.name = name
        self.http = requests.Session()
        # For an https hub: the CA bundle (a path) that its certificate chains to. Passed with
        # each request: requests lets REQUESTS_CA_BUNDLE override a session's own verify.
        self.verify = verify
        self.token: str | None = None

    @classmethod
    def at(cls, cfg, name: str) -> HubClient:
        """NAME's session on CFG's hub, over https verifying with the platform CA when hub.tls
        is self-signed."""
        verify = str(cfg.tls_ca_cert_file) if cfg.hub.tls.mode == "self-signed" else True
        return cls(url(cfg), name, verify=verify)

    def _xsrf(self) -> str:
        return self.http.cookies.get("_xsrf", path="/hub/") or self.http.cookies.get("_xsrf") or ""

    def login(self, password: str) -> requests.Response:
        page = self.http.get(f"{self.base}/hub/login", timeout=30, verify=self.verify)
        page.raise_for_status()
        m = re.search(r'name="_xsrf"\s+value="([^"]+)"', page.text)
        assert m, "the login form carries an XSRF token"
        return self.http.post(
            f"{self.base}/hub/login?next=",
            data={"username": self.name, "password": password, "_xsrf": m.group(1)},
            allow_redirects=False,
            timeout=60,
            verify=self.verify,
        )

    def make_token(self) -> str:
        r = self.http.post(
            f"{self.base}/hub/api/users/{self.name}/tokens",
            json={"note": "e2e", "expires_in": 3600},
            headers={"X-XSRFToken": self._xsrf()},
            timeout=30,
            verify=self.verify,
        )
        r.raise_for_status()
        self.token = r.json()["token"]
        return self.token

    def api(self, method: str, path: str, **kw) -> requests.Response:
        headers = kw.pop("headers", {})
        headers["Authorization"] = f"token {self.token}"
        return requests.request(
            method,
            f"{self.base}{path}",
            headers=headers,
            timeout=kw.pop("timeout", 60),
            verify=self.verify,
            **kw,
        )

    def start(self, profile: str = "default", timeout: float = 300, **options) -> list[dict]:
        """Start the server and follow the progress stream until it is ready; returns the events."""
        body = {"profile": profile, **options}
        r = self.api("POST", f"/hub/api/users/{self.name}/server", json=body)
        assert r.status_code in (201, 202), r.text
        events = self.progress(timeout)
        assert events and events[-1].get("ready"), f"spawn failed: {events[-3:]}"
        return events

    def progress(self, timeout: float = 300) -> list[dict]:
        """The server's progress events, followed until it is ready or failed."""
        events = []
        with self.api(
            "GET", f"/hub/api/users/{self.name}/server/progress", stream=True, timeout=timeout
        ) as s:
            for line in s.iter_lines(decode_unicode=True):
                if line and line.startswith("data:"):
                    events.append(json.loads(line[5:]))
                    if events[-1].get("ready") or events[-1].get("failed"):
                        break
        return events

    def running(self) -> bool:
        return bool(self.api("GET", f"/hub/api/users/{self.name}").json()["servers"])

    def stop(self) -> None:
        r = self.api("DELETE", f"/hub/api/users/{self.name}/server")
        assert r.status_code in (202, 204), r.text
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            if not self.api("GET", f"/hub/api/users/{self.name}").json()["servers"]:
                return
            time.sleep(1)
        raise AssertionError("server did not stop")

    def remove_user(self, name: str) -> None:
        """As an admin: stop NAME's server (up to 2 minutes) and delete NAME from the hub."""
        self.api("DELETE", f"/hub/api/users/{name}/server")
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            user = self.api("GET", f"/hub/api/users/{name}")
            if user.status_code != 200 or not user.json()["servers"]:
                break
            time.sleep(1)
        self.api("DELETE", f"/hub/api/users/{name}")

    def run_code(self, code: str, owner: str | None = None, timeout: float = 120) -> str:
        """Execute code in a new kernel on OWNER's server (default: own), return its stdout."""
        owner = owner or self.name
        prefix = f"/user/{owner}/api"
        r = self.api("POST", f"{prefix}/kernels", json={})
        if r.status_code != 201:
            raise PermissionError(f"{r.status_code}: {r.text[:200]}")
        kernel = r.json()["id"]
        url = self.base.replace("http", "ws", 1) + f"{prefix}/kernels/{kernel}/channels"

        # Short socket timeouts, so the deadline holds even while the server's websocket pings
        # keep the connection busy.
        def connect() -> websocket.WebSocket:
            return websocket.create_connection(
                url,
                header=[f"Authorization: token {self.token}"],
                timeout=5,
                sslopt=(
                    {"ca_certs": self.verify, "cert_reqs": ssl.CERT_REQUIRED}
                    if isinstance(self.verify, str)
                    else {}
                ),
            )

        conn = {"ws": connect(), "since": time.monotonic()}
        session, deadline = uuid.uuid4().hex, time.monotonic() + timeout

        def send(msg_type: str, content: dict) -> str:
            msg_id = uuid.uuid4().hex
            conn["ws"].send(
                json.dumps(
                    {
                        "header": {
                            "msg_id": msg_id,
                            "msg_type": msg_type,
                            "username": self.name,
                            "session": session,
                            "version": "5.3",
                        },
                        "parent_header": {},
                        "metadata": {},
                        "channel": "shell",
                        "content": content,
                    }
                )
            )
            return msg_id

        def replies(msg_id: str, wait: float):
            """Messages answering MSG_ID until WAIT seconds pass without one."""
            quiet_until = min(deadline, time.monotonic() + wait)
            while time.monotonic() < quiet_until:
                try:
                    msg = json.loads(conn["ws"].recv())
                except websocket.WebSocketTimeoutException:
                    continue
                if msg.get("parent_header", {}).get("msg_id") == msg_id:
                    yield msg
                    quiet_until = min(deadline, time.monotonic() + wait)

        try:
            # A request sent before the kernel's channels are connected can be lost, so ask for
            # kernel_info until one is answered, as Jupyter's own clients do, then execute.
            while not any(
                m["msg_type"] == "kernel_info_reply"
                for m in replies(send("kernel_info_request", {}), 2)
            ):
                if time.monotonic() > deadline:
                    raise AssertionError("kernel did not answer kernel_info_request")
                if time.monotonic() - conn["since"] > 20:
                    # Seen twice in the full suite, never alone: a channels socket that stays
                    # silent. Jupyter's own clients reconnect; so does this one.
                    conn["ws"].close()
                    conn["ws"], conn["since"] = connect(), time.monotonic()
            msg_id = send(
                "execute_request",
                {
                    "code": code,
                    "silent": False,
                    "store_history": False,
                    "user_expressions": {},
                    "allow_stdin": False,
                },
            )
            out = []
            for msg in replies(msg_id, timeout):
                kind = msg["msg_type"]
                if kind == "stream":
                    out.append(msg["content"]["text"])
                elif kind == "error":
                    raise AssertionError("\n".join(msg["content"]["traceback"]))
                elif kind == "status" and msg["content"]["execution_state"] == "idle":
                    return "".join(out)
            raise AssertionError("kernel did not finish")
        finally:
            conn["ws"].close()
            self.api("DELETE", f"{prefix}/kernels/{kernel}")


def write_config(tmp: Path, name: str, image_ns: str) -> Path:
    """A platform config of our own: state dir, ports, network and image namespace (what
    isolation needs), and a Spark cluster two analysts can use at once; the rest default."""
    # The suite's common settings, so `hubstack up` builds what the session's hierarchy
    # built, from the layer cache.
    data = config_data(
        tmp / "state",
        free_port(),
        registry={"image": os.environ.get("HUBTEST_REGISTRY_IMAGE", "registry:2")},
        images={"namespace": image_ns, "tag": "latest"},
        hub={"host": "127.0.0.1", "port": free_port(), "network": name},
        ci={"port": free_port()},  # the webhook builder's compose service, published on it
    )
    path = tmp / "hubstack.yaml"
    path.write_text(yaml.safe_dump(data))
    return path


def seed_registry_volume(
    client,
    cfg,
    source_volume: str,
    source_namespace: str,
    target_client=None,
    names: list[str] | None = None,
    into: Path | None = None,
) -> bool:
    """Give CFG's platform registry, before its first `hubstack up`, the layers the session
    already pushed to SOURCE_VOLUME's registry, so `up` finds them there ("Layer already
    exists") instead of gzipping the 2 GB hierarchy a second time (about 100 s on 2 cores).
    Blobs are hard links (content-addressed files, never rewritten); the repositories'
    link files are copied, without tags, under CFG's namespace. Test-only: it needs the
    engines' volumes on this host's disk. False (and `up` pushes everything) when not.

    TARGET_CLIENT: the engine that holds the platform's volume (a swarm manager's: the
    stack's volume), else CLIENT's. With NAMES: those repositories only, with their tags (an
    `up` that pushes nothing), and only the blobs they name, copied where no hard link can
    be made (a swarm node's data root is on another mount than the host engine's). INTO: a
    folder that is the registry's storage itself (cluster.registry_data's bind), instead of
    a volume."""
    swarm = target_client is not None
    labels = (
        {"com.docker.stack.namespace": project_name(cfg)}
        if swarm
        else {
            "com.docker.compose.project": project_name(cfg),
            "com.docker.compose.volume": "registry-data",
        }
    )
    try:
        source = Path(client.volumes.get(source_volume).attrs["Mountpoint"])
        if into is None:
            target = (target_client or client).volumes.create(
                volume_name(cfg, "registry-data"), labels=labels
            )
            into = Path(target.attrs["Mountpoint"])
        merge_registry_storage(source, into, source_namespace, cfg.images.namespace, names)
    except (OSError, ValueError, docker.errors.APIError) as e:
        print(f"seeding the stack's registry failed ({e}); `up` pushes every layer")
        return False
    return True


def start_messages(cfg, client, events: list[dict], since: int) -> list[str]:
    """The progress messages of an analyst's start: its EVENTS', plus what the hub logged
    for it since SINCE (epoch seconds). A start done within the hub's first second
    answers the progress stream with "ready" only; the hub's log has every message."""
    logs = service_container(cfg, client, "hub").logs(since=since).decode(errors="replace")
    return [e.get("message", "") for e in events] + logs.splitlines()


def logged_in_clients(cfg, analysts: dict) -> dict[str, HubClient]:
    """One logged-in client with an API token per analyst (name -> (password, ...))."""
    out = {}
    for name, (pw, *_rest) in analysts.items():
        c = HubClient(f"http://{cfg.hub.host}:{cfg.hub.port}", name)
        r = c.login(pw)
        assert r.status_code == 302, f"login of {name} refused: {r.status_code}"
        c.make_token()
        out[name] = c
    return out


def stop_servers(clients: dict[str, HubClient]) -> None:
    """Leave the shared stack as found: no analyst's server running."""
    for c in clients.values():
        if c.running():
            c.stop()


def remove_platform(cfg, client) -> None:
    """Remove a test platform for good: its compose project with its volumes, and the tags
    of its images (the layers stay in the engine's cache for the next run)."""
    subprocess.run(
        ["docker", "compose", "-p", project_name(cfg), "-f", str(compose_file(cfg))]
        + ["--env-file", str(env_file(cfg)), "down", "-v"],
        capture_output=True,
    )
    for image_name in local_images(cfg, client):
        try:
            client.images.remove(cfg.image_ref(image_name))
        except docker.errors.APIError:
            pass
    # What the hub pulled from the read-only address, and the per-user images it built, are
    # known by digest only.
    pulled = tuple(
        f"{address}/{cfg.images.namespace}/"
        for address in (cfg.registry.pull_address, cfg.registry.users_address)
    )
    for image in client.api.images():  # one listing: no inspect of an image gone meanwhile
        for ref in image.get("RepoDigests") or []:
            if ref.startswith(pulled):
                try:
                    client.images.remove(ref)
                except docker.errors.APIError:
                    pass


def url(cfg) -> str:
    """The hub where this host reaches it: https:// when hub.tls is on."""
    return stack.hub_url(cfg).rstrip("/")


def forget_local_digest(docker_client, cfg, image: str) -> None:
    """Drop this node's reference to the image's registry digest, so the next spawn must pull
    (the layers stay: the pull is quick, but it is a real pull with real progress). Under
    both addresses: the hub pulls from the read-only one."""
    repos = tuple(f"{repo}@" for repo in cfg.image_repositories(image))
    for ref in docker_client.images.get(cfg.image_ref(image, cfg.hub.notebook_image_tag)).attrs[
        "RepoDigests"
    ]:
        if ref.startswith(repos):
            docker_client.images.remove(ref)


def read_back_after_restart(cfg, client, filename: str) -> str:
    """Wait for the hub to answer again, then read FILENAME in the client's running server."""
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        try:
            if requests.get(f"{url(cfg)}/hub/health", timeout=5).status_code == 200:
                break
        except requests.RequestException:
            pass
        time.sleep(1)
    # The proxy came back with the hub; routes are restored from the database.
    deadline = time.monotonic() + 60
    while True:
        try:
            return client.run_code(f"print(open({filename!r}).read())").strip()
        except Exception:
            if time.monotonic() > deadline:
                raise
            time.sleep(2)


def fresh_clone(dest: Path) -> Path:
    """A clone of this repository's HEAD with the same origin, as a user's clone would have:
    the images' source label is the origin, so the build reuses the session's cache."""
    subprocess.run(["git", "clone", "-q", str(REPO), str(dest)], check=True)
    origin = subprocess.run(
        ["git", "-C", str(REPO), "config", "--get", "remote.origin.url"],
        capture_output=True,
        text=True,
    ).stdout.strip()
    if origin:
        subprocess.run(["git", "-C", str(dest), "remote", "set-url", "origin", origin], check=True)
    else:
        subprocess.run(["git", "-C", str(dest), "remote", "remove", "origin"], check=True)
    return dest


@contextlib.contextmanager
def hub_config_changed(cfg, docker_client, change):
    """The hub restarted on its config with CHANGE(data) applied, and back as it was after
    (running servers are untouched by both restarts)."""
    path = stack.container_config_file(cfg, "hub")
    original = path.read_text()
    data = yaml.safe_load(original)
    change(data)
    hub = service_container(cfg, docker_client, "hub")
    try:
        path.write_text(yaml.safe_dump(data))
        hub.restart(timeout=20)
        stack.wait_for_hub(cfg)
        yield
    finally:
        path.write_text(original)
        hub.restart(timeout=20)
        stack.wait_for_hub(cfg)


@contextlib.contextmanager
def reconfigured_stack(config: Path, change):
    """The platform as a platform engineer reconfigures it: CHANGE(data) applied to the
    platform config file and `hubstack up --no-build` run (the hub is recreated, running
    servers stay); afterwards the original file and another `up`. Yields (cfg, up's stdout).
    For a module that needs the shared stack with HTTPS or another login source, instead of
    a stack of its own (an own registry means pushing every image again: minutes)."""
    original = config.read_text()
    data = yaml.safe_load(original)
    change(data)
    try:
        config.write_text(yaml.safe_dump(data, sort_keys=False))
        r = hubstack(config, "up", "--no-build")
        assert r.returncode == 0, f"hubstack up failed:\n{r.stdout}\n{r.stderr}"
        yield load_config(config), r.stdout
    finally:
        config.write_text(original)
        back = hubstack(config, "up", "--no-build")
        assert back.returncode == 0, f"restoring: hubstack up failed:\n{back.stdout}\n{back.stderr}"

"""A real JupyterHub (with configurable-http-proxy) on loopback, authenticating
against a hubstack users file: the login page, REST token requests, and users
added or removed while the hub runs (no restart)."""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest
import requests
import yaml

from hubstack.hub.users import UsersFile

REPO_ROOT = Path(__file__).resolve().parents[2]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@pytest.fixture(scope="module")
def hub(tmp_path_factory):
    if not shutil.which("configurable-http-proxy"):
        pytest.fail(
            "configurable-http-proxy is not installed (npm install -g configurable-http-proxy)",
            pytrace=False,
        )
    tmp = tmp_path_factory.mktemp("hub")
    users = UsersFile(tmp / "users.yaml", min_uid=1000)
    users.add("alice", uid=1001, gid=1001, groups=[2000], password="alice-pw")
    users.add("boss", uid=1002, gid=1002, admin=True, password="boss-pw")
    port, hub_port, api_port = _free_port(), _free_port(), _free_port()
    config = tmp / "jupyterhub_config.py"
    config.write_text(f"""
c.JupyterHub.authenticator_class = "hubstack.hub.auth.HubstackAuthenticator"
c.JupyterHub.spawner_class = "jupyterhub.spawner.SimpleLocalProcessSpawner"
c.HubstackAuthenticator.users_file = {str(users.path)!r}
c.HubstackAuthenticator.min_uid = 1000
c.JupyterHub.ip = "127.0.0.1"
c.JupyterHub.port = {port}
c.JupyterHub.hub_ip = "127.0.0.1"
c.JupyterHub.hub_port = {hub_port}
c.ConfigurableHTTPProxy.api_url = "http://127.0.0.1:{api_port}"
c.ConfigurableHTTPProxy.pid_file = {str(tmp / "proxy.pid")!r}
c.JupyterHub.db_url = "sqlite:///{tmp / "jupyterhub.sqlite"}"
c.JupyterHub.cookie_secret_file = {str(tmp / "cookie_secret")!r}
""")
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO_ROOT), os.environ.get("PYTHONPATH")])),
    }
    log_path = tmp / "hub.log"
    with open(log_path, "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-m", "jupyterhub", "-f", str(config)],
            cwd=tmp,
            env=env,
            stdout=log,
            stderr=subprocess.STDOUT,
        )
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 90
        while True:
            if proc.poll() is not None:
                pytest.fail(
                    f"jupyterhub exited ({proc.returncode}):\n{log_path.read_text()[-4000:]}",
                    pytrace=False,
                )
            try:
                if requests.get(f"{url}/hub/api/", timeout=2).status_code == 200:
                    break
            except requests.ConnectionError:
                pass
            if time.monotonic() > deadline:
                pytest.fail(
                    f"jupyterhub did not answer:\n{log_path.read_text()[-4000:]}", pytrace=False
                )
            time.sleep(0.5)
        yield {"url": url, "users": users, "log": log_path}
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def login(hub, name, password) -> requests.Session | None:
    """Log in through the hub's login form like a browser; the session, or None when refused."""
    s = requests.Session()
    r = s.get(f"{hub['url']}/hub/login", timeout=10)
    r.raise_for_status()
    r = s.post(
        f"{hub['url']}/hub/login",
        data={"username": name, "password": password, "_xsrf": s.cookies.get("_xsrf")},
        allow_redirects=False,
        timeout=30,
    )
    if r.status_code == 302:
        return s
    assert r.status_code == 403, r.text[:500]
    assert "Invalid username or password" in r.text
    return None


def request_token(hub, name, password) -> requests.Response:
    return requests.post(
        f"{hub['url']}/hub/api/users/{name}/tokens",
        json={"auth": {"username": name, "password": password}, "note": "test"},
        timeout=30,
    )


def whoami(hub, token) -> dict:
    r = requests.get(
        f"{hub['url']}/hub/api/user", headers={"Authorization": f"token {token}"}, timeout=10
    )
    r.raise_for_status()
    return r.json()


def test_login_form(hub):
    s = login(hub, "alice", "alice-pw")
    assert s is not None
    r = s.get(f"{hub['url']}/hub/home", allow_redirects=False, timeout=10)
    assert r.status_code == 200 and "alice" in r.text
    assert login(hub, "alice", "wrong") is None
    assert login(hub, "mallory", "alice-pw") is None


def test_token_with_name_and_password(hub):
    r = request_token(hub, "boss", "boss-pw")
    assert r.status_code in (200, 201), r.text
    me = whoami(hub, r.json()["token"])
    assert me["name"] == "boss" and me["admin"] is True
    me = whoami(hub, request_token(hub, "alice", "alice-pw").json()["token"])
    assert me["name"] == "alice" and me["admin"] is False
    assert request_token(hub, "alice", "wrong").status_code == 403


def test_users_added_changed_removed_while_running(hub):
    users = hub["users"]
    assert login(hub, "carol", "carol-pw") is None
    users.add("carol", uid=1003, gid=1003, password="carol-pw")
    assert login(hub, "carol", "carol-pw") is not None
    users.set_password("carol", "new-pw")
    assert login(hub, "carol", "carol-pw") is None
    assert login(hub, "carol", "new-pw") is not None
    users.remove("carol")
    assert login(hub, "carol", "new-pw") is None
    assert request_token(hub, "carol", "new-pw").status_code == 403


def test_broken_hash_locks_out_only_that_user(hub):
    users = hub["users"]
    users.add("dave", uid=1004, gid=1004, password="dave-pw")
    data = yaml.safe_load(users.path.read_text())
    data["users"]["dave"]["password"] = "not-a-hash"
    users.path.write_text(yaml.safe_dump(data))
    try:
        assert login(hub, "dave", "dave-pw") is None
        assert login(hub, "alice", "alice-pw") is not None
        assert "user 'dave' cannot log in" in hub["log"].read_text()
    finally:
        users.remove("dave")

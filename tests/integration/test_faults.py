"""Faults injected into the real stack, one per test, and what the analyst sees afterwards.

The engine restart stops every container of the test session, so it runs after every other
test (the `restarts_engine` mark; tests/conftest.py orders it last). The hub restarted by
the engine is tests/integration/test_hub.py's.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import time
from pathlib import Path

import pytest
import requests

from hubstack.engine import project_name, service_container
from hubstack.hub.container_spec import USER_LABEL
from hubstack.networks import network_name
from tests.integration.hubstack_e2e import (
    REPO,
    HubClient,
    forget_local_digest,
    read_back_after_restart,
    start_messages,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# Finds the JupyterHub process (tini's child) and kills it hard, as an OOM kill would.
KILL_JUPYTERHUB = (
    "import os, signal\n"
    "for pid in filter(str.isdigit, os.listdir('/proc')):\n"
    "    cmd = open(f'/proc/{pid}/cmdline', 'rb').read().split(b'\\0')\n"
    "    if any(part.endswith(b'jupyterhub') for part in cmd[:2]):\n"
    "        os.kill(int(pid), signal.SIGKILL)\n"
)


def _server_container(docker_client, cfg, user: str):
    found = [
        c
        for c in docker_client.containers.list(filters={"label": f"{USER_LABEL}={user}"})
        if network_name(cfg, user) in c.attrs["NetworkSettings"]["Networks"]
    ]
    return found[0] if found else None


def _wait(condition, timeout: float, what: str) -> None:
    """Until CONDITION holds. While the platform recovers, the hub may answer with the
    proxy's error page or not at all: that is "not yet", not a failure."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            if condition():
                return
        except (requests.RequestException, ValueError):
            pass
        if time.monotonic() > deadline:
            raise AssertionError(f"{what} within {timeout:.0f}s")
        time.sleep(2)


def _spawn_failure(client: HubClient) -> str:
    """Start the server and return the message of the failed spawn (the spawn page's text)."""
    r = client.api("POST", f"/hub/api/users/{client.name}/server", json={"profile": "default"})
    if r.status_code >= 400:
        return r.json().get("message", r.text)
    with client.api(
        "GET", f"/hub/api/users/{client.name}/server/progress", stream=True, timeout=120
    ) as s:
        for line in s.iter_lines(decode_unicode=True):
            if line and line.startswith("data:"):
                event = json.loads(line[5:])
                assert not event.get("ready"), "the spawn was expected to fail"
                if event.get("failed"):
                    return event.get("message", "")
    raise AssertionError("the progress stream ended without an outcome")


def _working(client: HubClient, filename: str, text: str) -> None:
    """The analyst's server running, with a file they just wrote in their home."""
    if not client.running():
        client.start()
    client.run_code(f"open({filename!r}, 'w').write({text!r})\n")


def test_hub_process_killed_comes_back_and_servers_keep_running(hub_stack, clients, docker_client):
    """Fault: the JupyterHub process dies (SIGKILL) with a server running."""
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    _working(alice, "fault-hub.txt", "kept")
    server = _server_container(docker_client, cfg, "alice")
    hub = service_container(cfg, docker_client, "hub")
    restarts = hub.attrs["RestartCount"]

    hub.exec_run(["python3", "-c", KILL_JUPYTERHUB])

    # The engine's restart policy brings the hub back; the server never stopped.
    def restarted():
        hub.reload()
        return hub.attrs["RestartCount"] > restarts and hub.status == "running"

    _wait(restarted, 60, "the engine did not restart the hub")
    assert read_back_after_restart(cfg, alice, "fault-hub.txt") == "kept"
    # Once: a hub that kills itself on the way up (a stale pid file) restarts in a loop.
    hub.reload()
    assert hub.attrs["RestartCount"] == restarts + 1, "the hub restarted more than once"
    server.reload()
    assert server.status == "running"
    assert _server_container(docker_client, cfg, "alice").id == server.id


def test_killed_notebook_is_noticed_and_the_next_start_is_fresh(hub_stack, clients, docker_client):
    """Fault: the analyst's notebook container is killed under them."""
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    _working(alice, "fault-nb.txt", "home survives")
    killed = _server_container(docker_client, cfg, "alice")
    killed.kill()

    # JupyterHub polls each server (every 30 s by default) and forgets the dead one.
    _wait(lambda: not alice.running(), 120, "the hub did not notice the dead server")
    alice.start()
    fresh = _server_container(docker_client, cfg, "alice")
    assert fresh.id != killed.id
    assert alice.run_code("print(open('fault-nb.txt').read())").strip() == "home survives"
    alice.stop()


def test_registry_down_spawns_from_the_node_or_says_why(hub_stack, clients, docker_client):
    """Fault: the registry the hub pulls from (the read-only instance) is stopped. A spawn
    whose image this node already holds works; one whose image it does not hold fails with a
    message that names that registry."""
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    if alice.running():
        alice.stop()
    alice.start()  # with the registry up: this node now records the image's digest
    alice.stop()
    registry = service_container(cfg, docker_client, "registry-pull")
    registry.stop(timeout=10)
    try:
        since = int(time.time())
        messages = start_messages(cfg, docker_client, alice.start(), since)
        assert any("using the image on this node" in m for m in messages), messages[-20:]
        assert alice.run_code("print('up')").strip() == "up"
        alice.stop()

        forget_local_digest(docker_client, cfg, "notebook")
        message = _spawn_failure(alice)
        assert f"the registry {cfg.registry.pull_address} cannot give image" in message, message
        assert "no copy" in message
    finally:
        registry.start()
        _wait(
            lambda: registry.reload() or registry.attrs["State"]["Health"]["Status"] == "healthy",
            60,
            "the registry did not come back",
        )
    # Back to normal: the next spawn pulls by digest again.
    if alice.running():
        alice.stop()
    alice.start()
    alice.stop()


def _restart_engine(docker_client) -> None:
    """Stop dockerd as a host shutdown does (SIGTERM: containers are stopped) and start it
    again the way the test set-up started it (bin/host-setup.sh)."""
    pid = int(Path("/var/run/docker.pid").read_text())  # dockerd's default pid file
    os.kill(pid, signal.SIGTERM)
    _wait(lambda: not Path(f"/proc/{pid}").exists(), 120, "dockerd did not stop")
    subprocess.run(["bash", str(REPO / "bin/host-setup.sh")], check=True, timeout=180)


def _platform_back(docker_client, cfg) -> bool:
    """Every service of the platform running, and healthy where it has a health check."""
    services = docker_client.containers.list(
        all=True, filters={"label": f"com.docker.compose.project={project_name(cfg)}"}
    )
    return bool(services) and all(
        c.status == "running"
        and c.attrs["State"].get("Health", {}).get("Status", "healthy") == "healthy"
        for c in services
    )


@pytest.mark.restarts_engine
def test_engine_restart_brings_the_platform_back_and_the_hub_forgets_gone_servers(
    hub_stack, clients, docker_client
):
    """Fault: the Docker engine stops and starts (a host reboot, an engine upgrade) with a
    server running. The platform's services come back on their own restart policies; the
    notebook container (no restart policy: its kernels died with it) is gone, the hub says
    so, and the analyst's next start is a fresh server with the home intact."""
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    _working(alice, "fault-engine.txt", "written before the engine restart")
    before = _server_container(docker_client, cfg, "alice")

    _restart_engine(docker_client)

    _wait(lambda: _platform_back(docker_client, cfg), 180, "the platform did not come back")
    _wait(lambda: not alice.running(), 120, "the hub did not notice the server was gone")
    alice.start()
    assert _server_container(docker_client, cfg, "alice").id != before.id
    text = alice.run_code("print(open('fault-engine.txt').read())").strip()
    assert text == "written before the engine restart"
    alice.stop()

"""A burst of logins queues for the hub's start slots (hub.spawn), and idle servers are
culled (hub.cull) with their homes kept, on the real stack (`hubstack up`): real hub,
real jupyterhub-idle-culler service, real notebook containers.

The GPU test's GPU is SIMULATED, as in test_gpu_allocation.py (CI has none): device nodes
made with mknod (character devices 1:3, what /dev/null is) named nvidia0, nvidiactl, ...,
given to the hub as its device folder; the hub's allocator, the container's labels and
the culler are real.
"""

from __future__ import annotations

import contextlib
import os
import stat
import subprocess
import tempfile
import threading
import time
from datetime import datetime
from pathlib import Path

import pytest
import yaml

from hubstack import stack
from hubstack.engine import platform_containers, project_name
from hubstack.hub.gpu import DEVICES_ROOT_ENV, gpu_holders
from hubstack.hub.users import users_file_for
from tests.integration.hubstack_e2e import (
    HubClient,
    hub_config_changed,
    logged_in_clients,
    read_back_after_restart,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

THIRD = {"erin": ("erin-pw-5c1e", 23011, 23011, [])}


@pytest.fixture(scope="module")
def three(hub_stack, clients):
    """alice and bob, and erin for this module only: three analysts for a burst."""
    cfg, _, _ = hub_stack
    pw, uid, gid, groups = THIRD["erin"]
    users = users_file_for(cfg)
    users.add("erin", uid, gid, groups, password=pw)
    out = {**clients, **logged_in_clients(cfg, THIRD)}
    try:
        yield out
    finally:
        if out["erin"].running():
            out["erin"].stop()
        users.remove("erin")


def follow(client: HubClient, out: dict, timeout: float = 400, body: dict | None = None) -> None:
    """Start CLIENT's server and record its answer and progress events in OUT."""
    try:
        body = body or {"profile": "default"}  # never the GPU profile a group may be offered
        r = client.api("POST", f"/hub/api/users/{client.name}/server", json=body)
        out["status"] = r.status_code
        if r.status_code not in (201, 202):
            out["error"] = r.text
            return
        out["events"] = client.progress(timeout)
    except Exception as e:  # reported by the test, not lost in the thread
        out["error"] = repr(e)


def test_a_burst_beyond_the_start_limit_queues_instead_of_failing(hub_stack, three, docker_client):
    cfg, _, _ = hub_stack

    def one_start_at_a_time(data: dict) -> None:
        data["hub"]["spawn"] = {"concurrent_starts": 1, "max_pending": 10}

    with hub_config_changed(cfg, docker_client, one_start_at_a_time):
        results: dict[str, dict] = {name: {} for name in three}
        threads = [
            threading.Thread(target=follow, args=(three[name], results[name])) for name in three
        ]
        for t in threads:
            t.start()
        for t in threads:
            t.join(timeout=500)
        try:
            for name, r in results.items():
                assert "error" not in r, f"{name}: {r}"
                # None refused (429) or failed (500): all three get their server.
                assert r["status"] in (201, 202), f"{name}: {r}"
                assert r["events"][-1].get("ready"), f"{name}: {r['events'][-3:]}"
            messages = {
                name: [e.get("message", "") for e in r["events"]] for name, r in results.items()
            }
            places = {
                name: [m for m in msgs if m.startswith("You are number")]
                for name, msgs in messages.items()
            }
            # One started at once; the two behind it were shown their places, counting down.
            assert sorted(len(p) for p in places.values()) == [0, 1, 2], places
            second, third = sorted((p for p in places.values() if p), key=len)
            assert second == [
                "You are number 1 in the queue: one server starts at a time on this hub"
            ]
            assert [m.split(":")[0] for m in third] == [
                "You are number 2 in the queue",
                "You are number 1 in the queue",
            ]
            for name, p in places.items():
                if p:
                    msgs = messages[name]
                    assert "Your turn: starting your server" in msgs, msgs
                    # A queued analyst's container is made while they wait; the turn covers
                    # only its start and the server's boot.
                    assert msgs.index("Creating the container") < msgs.index(p[0]), msgs
            # Served in the order they were queued: the containers started in queue order
            # (fewer places shown, started sooner).
            by_wait = sorted(results, key=lambda n: len(places[n]))
            started = [
                datetime.fromisoformat(
                    docker_client.containers.get(f"{cfg.hub.network}-nb-{n}").attrs["State"][
                        "StartedAt"
                    ]
                )
                for n in by_wait
            ]
            assert started == sorted(started), (by_wait, started)
        finally:
            for c in three.values():
                if c.running():
                    c.stop()


def wait_until(check, timeout: float, step: float = 2) -> bool:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return True
        time.sleep(step)
    return False


def short_culling(data: dict) -> None:
    data["hub"]["cull"] = {"idle_timeout": 20, "every": 5, "exempt": ["bob"]}


def test_an_idle_server_is_culled_its_home_kept_and_an_exempt_one_is_not(
    hub_stack, clients, docker_client
):
    cfg, _, _ = hub_stack
    alice, bob = clients["alice"], clients["bob"]
    with hub_config_changed(cfg, docker_client, short_culling):
        alice.start()
        bob.start()
        alice.run_code("open('kept-after-cull.txt', 'w').write('still here')")
        started = time.monotonic()
        try:
            # Idle from now on: culled after idle_timeout (20 s) at the next check (5 s).
            assert wait_until(lambda: not alice.running(), 150), "alice's idle server was kept"
            culled_after = time.monotonic() - started
            assert culled_after >= 15, f"culled after {culled_after:.0f} s, before the timeout"
            # Stopped the way Stop does: the container is gone, the home is not.
            assert not platform_containers(cfg, docker_client, "io.hubstack.user=alice")
            home_file = cfg.home_root / "alice" / "kept-after-cull.txt"
            assert home_file.read_text() == "still here"
            # bob is exempt (hub.cull.exempt): idle for longer than alice, and still running
            # two culler rounds (hub.cull.every, 5 s) after hers.
            assert bob.running()
            time.sleep(10)
            assert bob.running(), "bob is exempt but was culled"
            # alice comes back to her file.
            alice.start()
            assert read_back_after_restart(cfg, alice, "kept-after-cull.txt") == "still here"
        finally:
            for c in (alice, bob):
                if c.running():
                    c.stop()


@contextlib.contextmanager
def hub_with_simulated_gpu(cfg, docker_client):
    """The hub recreated with a SIMULATED GPU (mknod'ed nodes, a stand-in driver folder) as
    its device folder, a GPU profile on the notebook image and a short idle timeout; put
    back as it was after."""
    sim = Path(tempfile.mkdtemp(prefix="hubtest-gpu-"))
    dev, driver = sim / "dev", sim / "nvidia"
    dev.mkdir()
    for name in ("nvidia0", "nvidiactl", "nvidia-uvm", "nvidia-uvm-tools"):
        os.mknod(dev / name, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        os.chmod(dev / name, 0o666)
    (driver / "bin").mkdir(parents=True)
    (driver / "lib64").mkdir()
    for p in (sim, driver, driver / "bin", driver / "lib64"):
        p.chmod(0o755)
    override = sim / "compose.gpu.yaml"
    override.write_text(
        yaml.safe_dump(
            {
                "services": {
                    "hub": {
                        "environment": {DEVICES_ROOT_ENV: str(dev)},
                        "volumes": [f"{dev}:{dev}:ro"],
                    }
                }
            }
        )
    )
    path = stack.container_config_file(cfg, "hub")
    original = path.read_text()
    data = yaml.safe_load(original)
    short_culling(data)
    data["gpu"] = {"count": 1, "mode": "device-nodes", "driver_dir": str(driver)}
    data["profiles"] = [
        {"name": "default", "display_name": "Default"},
        {"name": "gpu", "display_name": "GPU (simulated)", "image": "notebook", "gpus": 1},
    ]

    def recreate_hub(*extra: str) -> None:
        subprocess.run(
            ["docker", "compose", "-p", project_name(cfg), "-f", str(stack.compose_file(cfg))]
            + [*extra, "--env-file", str(stack.env_file(cfg))]
            + ["up", "-d", "--no-deps", "--force-recreate", "hub"],
            check=True,
            capture_output=True,
        )
        stack.wait_for_hub(cfg)

    try:
        path.write_text(yaml.safe_dump(data))
        recreate_hub("-f", str(override))
        yield
    finally:
        path.write_text(original)
        recreate_hub()
        subprocess.run(["rm", "-rf", str(sim)], check=False)


def test_a_culled_gpu_server_frees_its_simulated_gpu(hub_stack, three, docker_client):
    cfg, _, _ = hub_stack
    alice, erin = three["alice"], three["erin"]

    def holders() -> list[tuple[int, str]]:
        """GPUs held by this platform's servers, read from their labels as the hub does."""
        ours = f"{cfg.hub.network}-nb"
        return [(h.gpu, h.user) for h in gpu_holders(docker_client) if h.container.startswith(ours)]

    with hub_with_simulated_gpu(cfg, docker_client):
        try:
            alice.start(profile="gpu")
            assert holders() == [(0, "alice")]
            # The only GPU is alice's: erin is refused while she holds it (after the pull,
            # so on the progress stream rather than in the answer to her request).
            refusal: dict = {}
            follow(erin, refusal, body={"profile": "gpu"})
            if refusal.get("status") == 409:
                assert "no GPU free" in refusal["error"], refusal
            else:
                last = refusal["events"][-1]
                assert last.get("failed") and "no GPU free" in last["message"], last
            assert not erin.running()
            # alice goes idle: culled, and the GPU is free for erin.
            assert wait_until(lambda: not alice.running(), 150), "alice's idle server was kept"
            assert holders() == []
            erin.start(profile="gpu")
            assert holders() == [(0, "erin")]
        finally:
            for c in (alice, erin):
                if c.running():
                    c.stop()

"""hub.spawn (the start queue) and hub.cull (the idle culler): config validation, the
queue's order and places, and the hub settings both produce."""

from __future__ import annotations

import asyncio
import json
import socket
import subprocess
import sys
from datetime import timedelta
from types import SimpleNamespace

import pytest
from dockerspawner import DockerSpawner
from jupyterhub_idle_culler import default_cull_arbiter
from traitlets.config import Config

from hubstack.config import ConfigError, host_cores, parse_config
from hubstack.hub import cull, setup
from hubstack.hub.spawner import HubstackSpawner, port_open, start_phases
from hubstack.hub.start_queue import StartQueue


def config_error(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return str(e.value)


# --- config ------------------------------------------------------------------------------
def test_concurrent_starts_defaults_to_one_more_than_the_hub_machines_cores():
    spawn = parse_config({}).hub.spawn
    assert spawn.concurrent_starts is None and spawn.starts_at_once == host_cores() + 1 >= 2
    assert parse_config({"hub": {"spawn": {"concurrent_starts": 3}}}).hub.spawn.starts_at_once == 3


@pytest.mark.parametrize(
    ("spawn", "message"),
    [
        ({"concurrent_starts": 0}, "hub.spawn.concurrent_starts: Input should be greater than"),
        ({"concurrent_starts": "many"}, "hub.spawn.concurrent_starts: Input should be a valid"),
        ({"max_pending": 0}, "hub.spawn.max_pending: Input should be greater than"),
        (
            {"concurrent_starts": 8, "max_pending": 4},
            "hub.spawn: max_pending (4) is below concurrent_starts (8)",
        ),
        ({"queue": 3}, "hub.spawn.queue: unknown key"),
    ],
)
def test_bad_spawn_settings_name_the_key(spawn, message):
    assert message in config_error({"hub": {"spawn": spawn}})


@pytest.mark.parametrize(
    ("cull_cfg", "message"),
    [
        ({"idle_timeout": -1}, "hub.cull.idle_timeout: Input should be greater than or equal"),
        ({"idle_timeout": "1h"}, "hub.cull.idle_timeout: Input should be a valid integer"),
        ({"every": 0}, "hub.cull.every: Input should be greater than or equal to 1"),
        (
            {"idle_timeout": 60, "every": 120},
            "hub.cull: every (120) is above idle_timeout (60)",
        ),
        ({"exempt": ["Alice", "bob"]}, "hub.cull.exempt: not user names"),
        ({"exempt": "alice"}, "hub.cull.exempt: Input should be a valid list"),
    ],
)
def test_bad_cull_settings_name_the_key(cull_cfg, message):
    assert message in config_error({"hub": {"cull": cull_cfg}})


def test_cull_checks_and_activity_follow_the_timeout():
    hour = parse_config({}).hub.cull
    assert (hour.enabled, hour.idle_timeout, hour.check_every, hour.activity_interval) == (
        True,
        3600,
        600,
        300,
    )
    short = parse_config({"hub": {"cull": {"idle_timeout": 20}}}).hub.cull
    # Reports come well inside a short timeout, so working analysts are seen as working.
    assert (short.check_every, short.activity_interval) == (5, 5)
    assert not parse_config({"hub": {"cull": {"idle_timeout": 0}}}).hub.cull.enabled


# --- the start queue ---------------------------------------------------------------------
def test_a_burst_beyond_the_slots_is_served_in_order_and_told_its_places():
    async def burst():
        queue = StartQueue(2)
        told: dict[str, list[int]] = {}
        running, most, order = 0, 0, []

        async def spawn(name: str):
            nonlocal running, most
            told[name] = []
            async with queue.slot(told[name].append):
                running += 1
                most = max(most, running)
                order.append(name)
                await asyncio.sleep(0.01)
                running -= 1

        await asyncio.gather(*(spawn(f"a{i}") for i in range(5)))
        return queue, told, most, order

    queue, told, most, order = asyncio.run(burst())
    assert most == 2 and order == ["a0", "a1", "a2", "a3", "a4"]
    assert told == {"a0": [], "a1": [], "a2": [1], "a3": [2, 1], "a4": [3, 2, 1]}
    assert (queue.starting, queue.waiting) == (0, 0)


def test_a_spawn_cancelled_in_the_queue_gives_up_its_place():
    async def main():
        queue = StartQueue(1)
        told: list[int] = []
        release = asyncio.Event()

        async def hold():
            async with queue.slot(lambda place: None):
                await release.wait()

        holder = asyncio.create_task(hold())
        await asyncio.sleep(0)
        gone = asyncio.create_task(queue.slot(lambda place: None).__aenter__())
        await asyncio.sleep(0)
        last = asyncio.create_task(hold_then_note(queue, told))
        await asyncio.sleep(0)
        assert told == [2] and queue.waiting == 2
        gone.cancel()
        await asyncio.gather(gone, return_exceptions=True)
        assert told == [2, 1] and queue.waiting == 1
        release.set()
        await asyncio.gather(holder, last)
        return queue

    async def hold_then_note(queue, told):
        async with queue.slot(told.append):
            told.append(0)  # 0: its turn came

    queue = asyncio.run(main())
    assert (queue.starting, queue.waiting) == (0, 0)


def test_a_start_queue_needs_a_slot():
    with pytest.raises(ValueError, match="at least one slot"):
        StartQueue(0)


# --- the spawner's turn --------------------------------------------------------------------
def analyst(name: str) -> HubstackSpawner:
    s = HubstackSpawner(platform=parse_config({}))
    s.user = SimpleNamespace(name=name, url=f"/user/{name}/", groups=[])
    return s


def test_a_spawns_turn_begins_when_its_container_starts_and_ends_when_it_is_released(
    monkeypatch,
):
    """DockerSpawner.start() creates the container, then calls start_object: a queued
    analyst's container is made while they wait, and only the start waits for the turn."""
    started: list[str] = []

    async def engine_start(self):  # the engine's `docker start`, which this test leaves out
        started.append(self.user.name)

    monkeypatch.setattr(DockerSpawner, "start_object", engine_start)
    monkeypatch.setattr(HubstackSpawner, "_start_queue", StartQueue(1))

    async def main():
        ann, ben = analyst("ann"), analyst("ben")
        ann._marks = ben._marks = {}
        await ann.start_object()
        waiting = asyncio.create_task(ben.start_object())
        await asyncio.sleep(0.05)
        # Ben's container exists (created before start_object); his start waits for Ann's
        # server, and his spawn page says where he stands.
        assert started == ["ann"] and not waiting.done()
        assert [e["message"] for e in ben.spawn_progress._events] == [
            "You are number 1 in the queue: one server starts at a time on this hub"
        ]
        await ann._end_turn()
        await asyncio.wait_for(waiting, 5)
        assert started == ["ann", "ben"]
        assert ben.spawn_progress._events[-1]["message"] == "Your turn: starting your server"
        await ben._end_turn()
        return HubstackSpawner._start_queue

    queue = asyncio.run(main())
    assert (queue.starting, queue.waiting) == (0, 0)


def test_a_starting_server_is_noticed_as_soon_as_it_answers():
    """JupyterHub's own wait sleeps up to 5 s between tries, doubling; the slot is held until
    the server is noticed, so it must be noticed within a poll interval."""
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def answer(reader, writer):
        try:
            await reader.readuntil(b"\r\n\r\n")
        except asyncio.IncompleteReadError:  # the spawner's port probe
            writer.close()
            return
        writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        await writer.drain()
        writer.close()

    async def main() -> float:
        spawner = analyst("ann")
        spawner.answer_poll_interval = 0.05
        assert not await port_open("127.0.0.1", port)
        waiting = asyncio.create_task(spawner._until_answering(("127.0.0.1", port)))
        await asyncio.sleep(2)  # JupyterHub's wait would be sleeping up to 1.6 or 3.2 s now
        server = await asyncio.start_server(answer, "127.0.0.1", port)
        up = asyncio.get_running_loop().time()
        async with server:
            await asyncio.wait_for(waiting, 10)
            return asyncio.get_running_loop().time() - up

    assert asyncio.run(main()) < 0.5


def test_a_servers_answer_is_awaited_at_most_its_http_timeout():
    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]

    async def main() -> float:
        spawner = analyst("ann")
        spawner.http_timeout = 1
        t0 = asyncio.get_running_loop().time()
        await spawner._until_answering(("127.0.0.1", port))  # nobody listens: a warning
        return asyncio.get_running_loop().time() - t0

    assert 1 <= asyncio.run(main()) < 3


def test_each_start_logs_where_its_time_went():
    marks = {"begin": 0.0, "queued": 0.5, "turn": 3.5, "starting": 3.6, "started": 4.0}
    marks["answered"] = 5.9
    assert start_phases(marks) == (
        "3.00 s queued, 0.60 s creating the container, 0.40 s starting it, "
        "1.90 s until the server answered"
    )


# --- the hub's settings ------------------------------------------------------------------
@pytest.fixture
def hub_settings(tmp_path, monkeypatch):
    for name in ("cookie_secret", "proxy_token", "crypt_key"):
        (tmp_path / name).write_text("x" * 64)
    monkeypatch.setattr(setup, "SECRETS", tmp_path)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "x" * 64)

    def settings(data: dict) -> Config:
        c = Config()
        setup.configure_hub(c, parse_config(data))
        return c

    return settings


def test_jupyterhubs_spawn_limit_is_the_safety_valve_above_the_queue(hub_settings):
    assert hub_settings({}).JupyterHub.concurrent_spawn_limit == 100
    c = hub_settings({"hub": {"spawn": {"concurrent_starts": 2, "max_pending": 40}}})
    assert c.JupyterHub.concurrent_spawn_limit == 40


def test_the_culler_runs_with_only_its_scopes_and_the_exempt_list(hub_settings):
    c = hub_settings({"hub": {"cull": {"idle_timeout": 900, "exempt": ["bob", "alice"]}}})
    service = next(s for s in c.JupyterHub.services if s["name"] == cull.CULLER_SERVICE)
    assert service["command"][1:] == [
        "-m",
        "hubstack.hub.cull",
        "--timeout=900",
        "--cull-every=225",
    ]
    assert json.loads(service["environment"][cull.EXEMPT_ENV]) == ["alice", "bob"]
    assert "admin" not in service and "url" not in service  # no admin, no web endpoint
    assert c.JupyterHub.load_roles == [
        {
            "name": "idle-culler",
            "scopes": ["list:users", "read:users:activity", "read:servers", "delete:servers"],
            "services": ["idle-culler"],
        }
    ]
    assert c.JupyterHub.last_activity_interval == 225
    assert c.Spawner.environment == {"JUPYTERHUB_ACTIVITY_INTERVAL": "225"}


def test_no_culler_when_the_timeout_is_zero(hub_settings):
    c = hub_settings({"hub": {"cull": {"idle_timeout": 0}}})
    assert [s["name"] for s in c.JupyterHub.services] == [setup.ENV_REPORT_SERVICE]
    assert "load_roles" not in c.JupyterHub


def test_the_culler_never_culls_an_exempt_analyst():
    arbiter = cull.exempting_arbiter(["bob"], default_cull_arbiter)
    idle = {"inactive": timedelta(hours=2), "inactive_limit": 3600}
    assert arbiter(server={"full_name": "alice/"}, **idle) is True
    assert arbiter(server={"full_name": "bob/"}, **idle) is False
    busy = {"inactive": timedelta(minutes=5), "inactive_limit": 3600}
    assert arbiter(server={"full_name": "alice/"}, **busy) is False


def test_the_culler_command_is_the_real_culler():
    r = subprocess.run(
        [sys.executable, "-m", "hubstack.hub.cull", "--help-all"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert r.returncode == 0, r.stderr
    assert "--IdleCuller.cull_arbiter_hook" in r.stdout and "--cull-every" in r.stdout

"""Analysts' networks made ahead of their starts, while the hub has nothing else to do.

Why: an analyst's own network (hubstack.networks) costs the host about 0.2 CPU-s to make
and to join the hub to (dockerd's bridge and its iptables rules, a new interface in the
hub's container). In a burst of thirty logins on two cores that was most of what a
hubstack start cost the host beyond a stock DockerSpawner one (benchmarks/spawn
--host-cpu, docs/performance.md), paid while everyone waits. Made ahead, the start only
finds the network and checks the hub is on it.

Which analysts: `network.ready_ahead` of those without a running or starting server,
likeliest to start next first: the hub's users by last activity, then the users file's
others by name. A stopped server's network stays (hubstack.hub.spawner) and is removed
here once its analyst falls out of that number. A network with a server, Spark container
or start on it is never touched. The work runs one network at a time, in the hub's
process, and only while no start is pending; `network.ready_ahead: 0` turns it off (a
network is then made at each start and removed at each stop).

Single-host mode only: in swarm mode the networks are overlays made per service.
"""

from __future__ import annotations

import asyncio
import logging
import socket
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from datetime import datetime

import docker
import docker.errors

from hubstack import networks
from hubstack.config import PlatformConfig
from hubstack.hub.users import UsersFileError, users_file_for

log = logging.getLogger(__name__)

FIRST_PASS_DELAY = 2.0
"""Seconds after the hub's config is loaded before the first pass: the hub starts first."""
PASS_EVERY = 10.0
"""Seconds between passes once one found nothing left to do."""
RETRY_EVERY = 1.0
"""Seconds before the next pass when one stopped for a start: the idle moments between
starts are where the work gets done."""


@dataclass(frozen=True)
class HubState:
    """What the keeper needs of the hub at one moment."""

    ranked: list[str]
    """Analysts likeliest to start next first (see ranked())."""
    running: set[str] = field(default_factory=set)
    """Analysts with a server running or starting."""
    busy: bool = False
    """A start or stop is under way: the keeper waits."""


@dataclass(frozen=True)
class Plan:
    make: list[str]
    drop: list[str]


def ranked(recent: Iterable[tuple[str, datetime | None]], roster: Iterable[str]) -> list[str]:
    """The hub's users by last activity, most recent first (never active: after those, by
    name), then the roster's others by name."""
    recent = list(recent)
    active = sorted((u for u in recent if u[1] is not None), key=lambda u: (u[1], u[0]))
    out = [name for name, _ in reversed(active)]
    out += sorted(name for name, when in recent if when is None)
    seen = set(out)
    return out + sorted(n for n in roster if n not in seen)


def plan(ranked: list[str], running: set[str], existing: set[str], ahead: int) -> Plan:
    """Which networks to make and which to remove so that the first AHEAD analysts of RANKED
    not RUNNING have one. Networks of running analysts are left alone."""
    keep = [u for u in ranked if u not in running][:ahead]
    return Plan(
        make=[u for u in keep if u not in existing],
        drop=sorted(existing - running - set(keep)),
    )


class NetworkKeeper:
    """Passes over the analysts' networks: make the missing ones of the likeliest next
    analysts, remove the ones beyond, one at a time while STATE says the hub is idle."""

    def __init__(
        self,
        cfg: PlatformConfig,
        client,
        hub_id: str,
        state: Callable[[], HubState],
        logger: logging.Logger | logging.LoggerAdapter = log,
        busy: Callable[[], bool] | None = None,
    ) -> None:
        self.cfg = cfg
        self.client = client
        self.hub_id = hub_id
        self.state = state
        # Asked before each network: cheaper than the whole state where the hub has it.
        self.busy = busy or (lambda: state().busy)
        self.log = logger
        self._joined_existing = False

    def _existing(self) -> set[str]:
        return {
            net.attrs["Labels"][networks.NETWORK_LABEL]
            for net in networks.analyst_networks(self.cfg, self.client)
        }

    async def one_pass(self) -> bool:
        """One pass; whether it finished. It stops as soon as the hub is busy (or finds it
        busy at its start); the next pass goes on."""
        if self.busy():
            return False
        existing = await asyncio.to_thread(self._existing)
        state = self.state()
        todo = plan(state.ranked, state.running, existing, self.cfg.network.ready_ahead)
        if not self._joined_existing:
            # A new hub container (restart, upgrade) is on no network made before it.
            for user in sorted(existing - state.running - set(todo.drop)):
                if self.busy():
                    return False
                await asyncio.to_thread(self._ready, user)
            self._joined_existing = True
        removed = 0
        for user in todo.drop:
            if self.busy():
                return False
            removed += await asyncio.to_thread(
                networks.remove_idle_network, self.cfg, self.client, user
            )
        for user in todo.make:
            if self.busy():
                return False
            await asyncio.to_thread(self._ready, user)
        if todo.make or removed:
            self.log.info(
                "Analysts' networks made ahead: %d made (%s), %d removed",
                len(todo.make),
                ", ".join(todo.make[:5]) + (" ..." if len(todo.make) > 5 else ""),
                removed,
            )
        return True

    def _ready(self, user: str) -> None:
        try:
            networks.ensure_joined(self.cfg, self.client, user, self.hub_id, starting=False)
        except networks.NetworkError as e:
            self.log.warning("Cannot make %s's network ahead: %s", user, e)

    async def run(self) -> None:
        while True:
            finished = False
            try:
                finished = await self.one_pass()
            except Exception:  # a hiccup of the engine must not end the keeper
                self.log.exception("Making analysts' networks ahead failed; trying again")
                finished = True  # not every second
            await asyncio.sleep(PASS_EVERY if finished else RETRY_EVERY)


# --- in the hub's process ---------------------------------------------------------------
def hub_busy(app) -> bool:
    """Whether any server of the running JupyterHub APP is starting or stopping."""
    return any(sp.pending for user in app.users.values() for sp in user.spawners.values())


def jupyterhub_state(cfg: PlatformConfig, app) -> HubState:
    """HubState of the running JupyterHub APP (its database and its users' spawners)."""
    from jupyterhub import orm  # noqa: PLC0415 - only in the hub's process (sqlalchemy)

    running = set()
    for user in app.users.values():
        for spawner in user.spawners.values():
            if spawner.active or spawner.pending:
                running.add(user.name)
    try:
        roster = list(users_file_for(cfg).load())
    except UsersFileError as e:
        log.warning("Networks made ahead: the users file is unreadable (%s)", e)
        roster = []
    recent = app.db.query(orm.User.name, orm.User.last_activity).all()
    return HubState(ranked=ranked(recent, roster), running=running, busy=hub_busy(app))


_RUNNING: list[asyncio.Task] = []  # the loop holds tasks weakly


def start_in_hub(cfg: PlatformConfig) -> bool:
    """From the hub's config: run a NetworkKeeper in the hub's event loop once the hub is
    up. False (and nothing started) outside a running loop, in swarm mode or when off."""
    if cfg.network.ready_ahead == 0 or cfg.cluster.mode != "single":
        return False
    try:
        loop = asyncio.get_running_loop()  # JupyterHub loads its config inside its loop
    except RuntimeError:
        return False

    def begin() -> None:
        from jupyterhub.app import JupyterHub  # noqa: PLC0415 - only in the hub's process

        from hubstack.hub.spawner import HubstackSpawner  # noqa: PLC0415 - the hub only

        app = JupyterHub.instance()
        if not issubclass(app.spawner_class, HubstackSpawner):
            return  # another spawner makes no analyst networks (the spawn benchmark's stock)
        client = docker.from_env()
        try:
            hub_id = client.api.inspect_container(socket.gethostname())["Id"]
        except docker.errors.NotFound:
            log.info("Networks made ahead: off, the hub is not in a container of this engine")
            return
        keeper = NetworkKeeper(
            cfg, client, hub_id, lambda: jupyterhub_state(cfg, app), app.log, lambda: hub_busy(app)
        )
        _RUNNING.append(loop.create_task(keeper.run()))

    loop.call_later(FIRST_PASS_DELAY, begin)
    return True

"""Which analysts' networks the hub makes ahead (hubstack.hub.ready_networks)."""

from __future__ import annotations

import asyncio
from datetime import datetime

from hubstack.config import PlatformConfig
from hubstack.hub.ready_networks import HubState, NetworkKeeper, plan, ranked, start_in_hub


def test_ranked_puts_the_most_recently_active_first_then_the_roster_by_name():
    recent = [
        ("carol", datetime(2026, 12, 1, 9, 0)),
        ("alice", datetime(2026, 12, 4, 17, 30)),
        ("dave", None),  # logged in, never active since
        ("bob", datetime(2026, 12, 4, 9, 0)),
    ]
    assert ranked(recent, ["zoe", "bob", "erin"]) == [
        "alice",
        "bob",
        "carol",
        "dave",
        "erin",
        "zoe",
    ]


def test_plan_makes_the_first_missing_and_removes_those_beyond():
    todo = plan(["a", "b", "c", "d", "e"], running={"a"}, existing={"a", "c", "e"}, ahead=2)
    # a runs (left alone); b and c are the two likeliest next; e is beyond them.
    assert todo.make == ["b"]
    assert todo.drop == ["e"]


def test_plan_never_removes_a_running_analysts_network_nor_one_of_the_roster_gone():
    todo = plan(["a"], running={"x"}, existing={"x", "gone"}, ahead=5)
    assert todo.make == ["a"]
    assert todo.drop == ["gone"]


def test_plan_with_nothing_ahead_removes_every_idle_network():
    todo = plan(["a", "b"], running={"b"}, existing={"a", "b"}, ahead=0)
    assert todo.make == [] and todo.drop == ["a"]


def test_a_busy_hub_makes_nothing():
    """A pass that finds a start under way leaves the engine alone (no call at all: the
    client here has no methods)."""
    keeper = NetworkKeeper(
        PlatformConfig(), object(), "hub", lambda: HubState(ranked=["a"], busy=True)
    )
    assert asyncio.run(keeper.one_pass()) is False


def test_the_keeper_starts_only_inside_a_running_hub_in_single_mode():
    assert start_in_hub(PlatformConfig()) is False  # no running loop: a config check
    off = PlatformConfig.model_validate({"network": {"ready_ahead": 0}})
    swarm = PlatformConfig.model_validate({"cluster": {"mode": "swarm"}})

    async def inside() -> list[bool]:
        return [start_in_hub(c) for c in (off, swarm)]

    assert asyncio.run(inside()) == [False, False]

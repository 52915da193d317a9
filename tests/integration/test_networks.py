"""Analysts' networks on a real engine: a burst of spawns, each making its analyst's
network at once from the hub's thread pool, gets one network and one subnet each."""

from __future__ import annotations

import ipaddress
import os
from concurrent.futures import ThreadPoolExecutor

import pytest

from hubstack import networks

pytestmark = pytest.mark.integration


def test_thirty_analysts_at_once_each_get_a_network_of_their_own(platform_config, docker_client):
    hub = platform_config.hub.model_copy(update={"network": f"hubnettest{os.getpid()}"})
    cfg = platform_config.model_copy(update={"hub": hub})
    users = [f"burst{i:02d}" for i in range(30)]
    try:
        with ThreadPoolExecutor(max_workers=30) as pool:
            made = list(pool.map(lambda u: networks.ensure_network(cfg, docker_client, u), users))
        subnets = []
        for net in made:
            net.reload()
            (conf,) = net.attrs["IPAM"]["Config"]
            subnets.append(ipaddress.IPv4Network(conf["Subnet"]))
        assert sorted(n.name for n in made) == sorted(networks.network_name(cfg, u) for u in users)
        assert len(set(subnets)) == 30
        # Asked again (a restart of the same server), the same network comes back.
        assert networks.ensure_network(cfg, docker_client, users[0]).id == made[0].id
    finally:
        for u in users:
            networks.remove_network(cfg, docker_client, u)


def test_a_start_takes_the_subnet_of_a_network_made_ahead_when_the_pool_is_full(
    platform_config, docker_client
):
    """A pool of two subnets, both held by networks the hub made ahead (nobody on them): a
    third analyst's start takes one of their subnets. Held by starts, the pool is full: the
    refusal says so."""
    hub = platform_config.hub.model_copy(update={"network": f"hubpooltest{os.getpid()}"})
    pool = platform_config.network.model_copy(
        update={"analyst_subnets": "10.214.250.0/26", "analyst_prefix": 27}
    )
    cfg = platform_config.model_copy(update={"hub": hub, "network": pool})
    ahead, starting = ["ahead0", "ahead1"], ["start0", "start1", "start2"]
    try:
        for u in ahead:
            networks.ensure_network(cfg, docker_client, u, starting=False)
        taken = networks.ensure_network(cfg, docker_client, starting[0])
        left = {
            n.attrs["Labels"][networks.NETWORK_LABEL]
            for n in networks.analyst_networks(cfg, docker_client)
        }
        # One of the two made ahead gave its subnet; the other stays.
        assert starting[0] in left and len(left & set(ahead)) == 1, left
        taken.reload()
        assert ipaddress.IPv4Network(taken.attrs["IPAM"]["Config"][0]["Subnet"]).subnet_of(
            ipaddress.IPv4Network("10.214.250.0/26")
        )
        networks.ensure_network(cfg, docker_client, starting[1])
        with pytest.raises(networks.NetworkError, match="no free subnet left"):
            networks.ensure_network(cfg, docker_client, starting[2])
    finally:
        for u in ahead + starting:
            networks.remove_network(cfg, docker_client, u)

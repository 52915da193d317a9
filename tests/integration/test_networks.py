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

"""One network per analyst in swarm mode (hubstack.hub.swarm_spawner): each server on its
analyst's own attachable overlay only, the hub's container connected to it as `hub` before
the service, and at the stop the service first, then the hub off, then the network (Swarm
refuses to remove a network a container is still on). The calls are recorded on a fake
manager; the real thing runs in tests/integration/test_swarm_stack.py."""

from __future__ import annotations

import asyncio
from types import SimpleNamespace

import docker
import pytest
from tornado import web

from hubstack import swarm_stack
from hubstack.config import parse_config
from hubstack.engine import PLATFORM_LABEL
from hubstack.hub import service_spec
from hubstack.hub.swarm_spawner import HubstackSwarmSpawner
from hubstack.networks import NETWORK_LABEL

CFG = {"cluster": {"mode": "swarm"}, "hub": {"network": "hs"}}


class RecordingManager:
    """The manager API calls the spawner's network steps make; records them in order."""

    def __init__(self, network_exists: bool = False):
        self.calls: list[tuple] = []
        self.made = network_exists

    def networks(self, names=None, ids=None, filters=None):
        return [{"Name": n, "Id": n} for n in names or ids or []] if self.made else []

    def create_network(self, name, **kw):
        self.calls.append(("create_network", name, kw))
        self.made = True

    def connect_container_to_network(self, container, net, aliases=None):
        self.calls.append(("connect", container, net, aliases))

    def disconnect_container_from_network(self, container, net, force=False):
        self.calls.append(("disconnect", container, net))

    def remove_network(self, net):
        self.calls.append(("remove_network", net))
        self.made = False

    def remove_service(self, name):
        self.calls.append(("remove_service", name))

    def services(self, filters=None):
        return []

    def secrets(self, filters=None):
        return []

    def configs(self, filters=None):
        return []


def spawner(monkeypatch, manager: RecordingManager, hub: str = "hs-hub") -> HubstackSwarmSpawner:
    monkeypatch.setattr(HubstackSwarmSpawner, "_client", manager)
    s = HubstackSwarmSpawner(platform=parse_config(CFG), hub_container=hub)
    s.user = SimpleNamespace(name="alice", url="/user/alice/", groups=[])
    return s


def test_the_analysts_network_is_made_and_the_hub_joins_it_as_hub(monkeypatch):
    manager = RecordingManager()
    s = spawner(monkeypatch, manager)
    assert s.user_network == s.spark_network == "hs-user-alice"
    s._ensure_network()
    s._connect_hub()
    (create, connect) = manager.calls
    assert create[:2] == ("create_network", "hs-user-alice")
    assert create[2]["driver"] == "overlay" and create[2]["attachable"] is True
    assert create[2]["labels"] == {NETWORK_LABEL: "alice", PLATFORM_LABEL: "hs"}
    assert create[2]["internal"] is False  # egress allowed by default
    assert connect == ("connect", "hs-hub", "hs-user-alice", ["hub"])


def test_the_hub_already_on_the_network_is_kept(monkeypatch):
    class Again(RecordingManager):
        def connect_container_to_network(self, container, net, aliases=None):
            raise docker.errors.APIError("endpoint with name hs-hub already exists in network")

    s = spawner(monkeypatch, Again(network_exists=True))
    s._connect_hub()  # no error: a hub restarted keeps its networks


def test_the_stop_removes_the_service_then_the_hub_off_then_the_network(monkeypatch):
    manager = RecordingManager(network_exists=True)
    s = spawner(monkeypatch, manager)
    s.object_id = "svc"
    asyncio.run(s.stop())
    kinds = [c[0] for c in manager.calls]
    assert kinds.index("remove_service") < kinds.index("disconnect") < kinds.index("remove_network")
    assert ("disconnect", "hs-hub", "hs-user-alice") in manager.calls
    assert ("remove_network", "hs-user-alice") in manager.calls


def test_without_a_hub_container_nothing_is_connected(monkeypatch):
    manager = RecordingManager()
    s = spawner(monkeypatch, manager, hub="")
    s._ensure_network()
    s._connect_hub()
    s._remove_network()
    assert [c[0] for c in manager.calls] == ["create_network", "remove_network"]


def test_the_hub_container_comes_from_the_environment_up_sets(monkeypatch):
    monkeypatch.setenv("HUBSTACK_HUB_CONTAINER", "hubstack-hub")
    assert HubstackSwarmSpawner(platform=parse_config(CFG)).hub_container == "hubstack-hub"


def test_a_servers_service_is_on_its_analysts_network_only():
    request = service_spec.ServiceRequest(
        name="hs-nb-alice",
        image="10.0.0.5:5001/hubstack/notebook@sha256:" + "a" * 64,
        user_name="alice",
        profile_name="default",
        ident={"uid": 23456, "gid": 23456, "groups": [23456], "home": "/home/alice"},
        command=["jupyterhub-singleuser"],
        env={},
        labels={PLATFORM_LABEL: "hs"},
        cpu_limit=1.0,
        mem_limit="1G",
        reservation_fraction=0.25,
        pids_limit=512,
        constraints=[],
        networks=["hs-user-alice"],
    )
    spec = service_spec.service_spec(request)
    assert [n["Target"] for n in spec["task_template"]["Networks"]] == ["hs-user-alice"]


@pytest.mark.parametrize("refused", [True, False])
def test_a_route_is_a_connection_or_a_refusal(monkeypatch, refused):
    s = spawner(monkeypatch, RecordingManager())

    def connect(address, timeout):
        raise ConnectionRefusedError() if refused else TimeoutError()

    monkeypatch.setattr("socket.create_connection", connect)
    assert s._routed() is refused


def test_a_gpu_server_is_on_its_analysts_network_like_every_server(monkeypatch):
    """Its service reserves no Swarm generic resource (the hub hands GPUs out:
    hubstack.hub.swarm_gpu), so a network reaching its node does not stop it."""
    s = spawner(monkeypatch, RecordingManager())
    gpu, default = s.cfg.profile("gpu"), s.cfg.profile("default")
    assert s._server_networks(default) == s._server_networks(gpu) == ["hs-user-alice"]


def test_a_gpu_start_without_a_gpu_node_is_refused_before_any_network(monkeypatch):
    class NoGPUNode(RecordingManager):
        def nodes(self, filters=None):
            return [{"ID": "n1", "Spec": {"Role": "manager"}, "Description": {"Hostname": "m"}}]

    manager = NoGPUNode()
    s = spawner(monkeypatch, manager)
    monkeypatch.setattr(HubstackSwarmSpawner, "_profile", lambda self: self.cfg.profile("gpu"))

    async def identity(self):
        return {"uid": 23456, "gid": 23456, "groups": [23456], "home": "/home/alice"}

    monkeypatch.setattr(HubstackSwarmSpawner, "_identity", identity)
    with pytest.raises(web.HTTPError) as refused:
        asyncio.run(s.start())
    assert refused.value.status_code == 409
    assert "no node of this swarm advertises NVIDIA-GPU" in refused.value.log_message
    assert manager.calls == []  # no network, no service, no hub connected


class LingeringManager:
    """A manager that still lists a removed network for LINGER more listings, beside an
    analyst's whose name starts with it."""

    def __init__(self, linger: int):
        self.linger = linger
        self.listings = 0

    def remove_network(self, net):
        pass

    def networks(self, names=None, ids=None):
        self.listings += bool(names)
        longer = [{"Name": "hs-user-alice2", "Id": "f00d"}]
        if ids or self.linger <= 0:
            return longer if names else []
        self.linger -= 1
        return [{"Name": "hs-user-alice", "Id": "beef"}, *longer]


def test_removing_a_network_returns_once_the_manager_no_longer_lists_it():
    manager = LingeringManager(linger=3)
    swarm_stack.remove_network(manager, "hs-user-alice")
    assert manager.linger == 0  # waited out the manager's own copy
    # Another analyst's network whose name starts with this one's does not hold it up.
    manager = LingeringManager(linger=0)
    swarm_stack.remove_network(manager, "hs-user-alice")
    assert manager.listings == 1

"""HubstackSwarmSpawner: each analyst's server as a Swarm service (cluster.mode: swarm).

The same analyst, profile, version and image as HubstackSpawner (it is one: the profile
and access checks, the identity, the version choice and the digest resolution are
inherited, not copied); what differs is where the server runs:
- a replicated service of one task, from hubstack.hub.service_spec (the container spec as
  a service: UID:GID, no capabilities, limits and reservations, placement constraints
  from the profile);
- a GPU profile's node and GPUs picked by the hub (hubstack.hub.swarm_gpu, under the lock
  and rule of the single-host allocator), not reserved from Swarm: the service is pinned
  to that node, labelled with its GPUs and told them in NVIDIA_VISIBLE_DEVICES. No GPU
  free is refused before any service or network exists;
- the pull account goes with the service (`--with-registry-auth`): the manager hands it
  to the node the task lands on, and no node stores a registry password;
- the analyst's /etc/passwd and /etc/group are Swarm configs named by content;
- a task the scheduler cannot place ("no suitable node": no node with the profile's
  labels, all drained, not enough CPU and memory unreserved) is refused at once with the
  profile and the reason, and
  its service removed: the analyst is not left waiting on a pending service;
- the analyst's home is a named volume (service_spec.HomeVolume), made theirs by a short
  root job before the server starts (service_spec.home_job_spec). A local volume lives on
  the node the job ran on, which becomes the analyst's home node (kept in the state, across
  stops): their server runs only there, and a profile that cannot run there is refused,
  naming the node and the remedy. With cluster.home_volume (shared) the home follows them.

- the analyst's own attachable overlay network (PREFIX-user-NAME, the single-host
  network's name), made at the start: their server is on it and on no other platform
  network, and the hub's container (hub_container, a plain container on the manager:
  hubstack.swarm_stack.run_hub) is connected to it as `hub` before the service is
  created. No other analyst's server is on it. At the stop: the service goes, then the
  hub is disconnected, then the network is removed (Swarm refuses to remove a network
  a container is still attached to);
- a Spark profile's cluster of its own (hubstack.spark_cluster's roles, as services from
  service_spec.spark_requests): a master and a service per worker on Spark-labelled
  nodes, as the analyst, on the analyst's own overlay network with their server, its
  secret a Swarm secret; removed with the server;
- an analyst with packages of their own starts on their per-user image, found or built
  by the single-host code path (HubstackSpawner._user_image, inherited: the build on the
  engine the hub drives, the manager's, pushed to registry.users_address); the service
  (and a Spark profile's master and workers) runs it by digest, with the users account
  sent along for that image's registry alone, so any node pulls it over TLS.

Not yet (docs/multi-node.md): the start queue.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import functools
import os
import socket
from collections.abc import Awaitable, Callable, Iterator
from pprint import pformat

import docker
from tornado import web
from traitlets import Dict, Float, List, Unicode, default

from hubstack import networks, spark, spark_cluster, swarm_stack
from hubstack.engine import PLATFORM_LABEL
from hubstack.hub import container_spec, gpu, service_spec, swarm_gpu, versions
from hubstack.hub.service_spec import unmet_constraints
from hubstack.hub.spawner import HubstackSpawner

# Task states on the way to running (Swarm's task lifecycle).
STARTING = {"new", "allocated", "pending", "assigned", "accepted", "preparing", "ready", "starting"}
UNPLACEABLE = "no suitable node"
# Task states after running (a removed service's task passes through shutdown).
OVER = {"complete", "shutdown", "failed", "rejected", "orphaned", "remove"}
NODE_STATE = "swarm_node"
HOME_NODE_STATE = "swarm_home_node"
HOME_REMEDY = (
    "A home on a node's own disk keeps an analyst on that node; homes on shared storage "
    "(NFS, or a file system mounted at the same path on every node: cluster.home_volume, "
    "docs/multi-node.md) follow them to any node"
)


def home_refusal(profile, node_name: str, why: str) -> str:
    """What an analyst whose local home is on NODE_NAME reads when PROFILE cannot run
    there now."""
    return (
        f"the profile {profile.display_name!r} ({profile.name}) cannot start on node "
        f"{node_name!r}, where your home is: {why}. {HOME_REMEDY}: choose a profile that "
        f"runs on {node_name}, or ask the platform team"
    )


def spark_refusal(profile, req: service_spec.ServiceRequest, err: str) -> str:
    """What the analyst reads when no node can take a daemon of their Spark cluster now
    (REQ, its service): what it needs, and the scheduler's own words."""
    reserved = service_spec.resources(req).get("Reservations") or {}
    cpus = reserved.get("NanoCPUs", 0) / 1e9
    mib = reserved.get("MemoryBytes", 0) // 2**20
    why = "every node that could run it is busy or unavailable"
    if "insufficient resources" in err:
        why = "no such node has that much CPU and memory unreserved"
    elif "constraint" in err:
        why = "no available node meets that"
    return (
        f"the profile {profile.display_name!r} ({profile.name}) cannot start now: your Spark "
        f"cluster's {req.args[0]} ({req.name}) needs {cpus:g} CPU and {mib} MiB reserved "
        f"on a node with {' and '.join(req.constraints)}, and {why}. The scheduler says: "
        f"{err}. Try again when a Spark server has stopped, or choose another profile"
    )


async def gather_or_cancel(*waits: Awaitable) -> list:
    """All WAITS' results; at the first failure the others are cancelled (not left polling
    a service the failure's clean-up removes), then it is raised."""
    tasks = [asyncio.ensure_future(w) for w in waits]
    try:
        return await asyncio.gather(*tasks)
    except BaseException:
        for t in tasks:
            t.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        raise


class SwarmRefusal(Exception):
    """The scheduler cannot place a server now; the message says which profile and why."""


def refusal_message(profile, constraints: list[str], err: str) -> str:
    """What the analyst reads when no node can take their server: the profile, what it needs,
    and the scheduler's own words. (No GPU free is refused before: swarm_gpu.)"""
    wanted = f" (it needs {' and '.join(constraints)})" if constraints else ""
    why = "every node that could run it is busy or unavailable"
    if "insufficient resources" in err:
        why = "no node it may run on has the CPU and memory it reserves unreserved"
    elif "constraint" in err:
        why = "no available node has the labels it needs"
    return (
        f"the profile {profile.display_name!r} ({profile.name}) cannot start now: {why}{wanted}. "
        f"The scheduler says: {err}. Try again later, or choose another profile"
    )


class HubstackSwarmSpawner(HubstackSpawner):
    """HubstackSpawner whose servers are Swarm services, placed by node labels and GPUs."""

    service_networks = List(
        Unicode(),
        config=True,
        help="Overlay networks each server's service joins besides the analyst's own (none "
        "by default: a server reaches the hub, and nothing else of the platform).",
    )
    hub_container = Unicode(
        config=True,
        help="The hub's own container (on a manager), connected to each analyst's network as "
        "`hub` at their start and disconnected at their stop. Default: "
        f"${swarm_stack.HUB_CONTAINER_ENV}, which `hubstack up` sets. Empty: the hub is "
        "not connected (it runs outside the swarm's networks, as in tests).",
    )
    route_timeout = Float(
        30.0,
        config=True,
        help="Seconds the hub waits, once the server's task runs, for a route to it on the "
        "analyst's network (a fresh attachment may need a moment).",
    )
    reservation_fraction = Float(
        0.25,
        config=True,
        help="Share of a profile's CPU and memory limits each server reserves, so Swarm "
        "places it only on a node with that much unreserved (the limits stay the limits).",
    )
    unplaceable_grace = Float(
        2.0,
        config=True,
        help="Seconds a task may stay pending with 'no suitable node' before the start is "
        "refused: just after a stop, Swarm may not yet count freed CPU and memory as free.",
    )
    task_poll_interval = Float(0.25, config=True, help="Seconds between looks at the task.")

    node_name = Unicode("", help="The node this analyst's server runs on (kept in state).")
    home_node = Dict(
        help="The node holding this analyst's local home volume ({id, name}): their server "
        "runs only there. Kept in the state across stops; empty with shared homes."
    )

    _logged_in: set = set()

    @default("hub_container")
    def _default_hub_container(self) -> str:
        return os.environ.get(swarm_stack.HUB_CONTAINER_ENV, "")

    # --- state ---------------------------------------------------------------------
    def load_state(self, state):
        super().load_state(state)
        self.node_name = state.get(NODE_STATE, "")
        self.home_node = state.get(HOME_NODE_STATE) or {}

    def get_state(self):
        state = super().get_state()
        if self.node_name:
            state[NODE_STATE] = self.node_name
        if self.home_node:
            state[HOME_NODE_STATE] = dict(self.home_node)
        return state

    def clear_state(self):
        # JupyterHub clears the state after a stop; the home stays on its node.
        home_node = self.home_node
        super().clear_state()
        self.home_node = home_node

    @property
    def service_name(self) -> str:
        return self.container_name

    # --- what the service is made of ----------------------------------------------------
    def _login(self, image: str) -> None:
        """Log the manager's client in with the account of IMAGE's registry instance, once:
        the pull account for the blessed images, the users account for a per-user image
        (registry.users_address). create_service then sends along the one for its image's
        registry alone (X-Registry-Auth), as `docker service create --with-registry-auth`:
        the users account never goes with a service of a blessed image, nor the reverse."""
        auth = self._auth(image)
        if auth is None:  # not our registry's image: nothing to pass on
            return
        key = (id(self.client), auth["serveraddress"], auth["username"])
        if key in HubstackSwarmSpawner._logged_in:
            return
        self.client.login(
            username=auth["username"],
            password=auth["password"],
            registry=image.split("/", 1)[0],
        )
        HubstackSwarmSpawner._logged_in.add(key)

    def _ensure_configs(
        self, configs: list[service_spec.AccountConfig]
    ) -> list[tuple[str, service_spec.AccountConfig]]:
        """Each account config's ID, made now or found (the same content made before)."""
        out = []
        for config in configs:
            found = self.client.configs(filters={"name": config.name})
            exact = [c for c in found if c["Spec"]["Name"] == config.name]
            if exact:
                out.append((exact[0]["ID"], config))
                continue
            try:
                made = self.client.create_config(config.name, config.data, labels=config.labels)
            except docker.errors.APIError as e:
                if e.status_code != 409:  # made by a start at the same moment: reuse it
                    raise
                made = {"ID": self.client.inspect_config(config.name)["ID"]}
            out.append((made["ID"], config))
        return out

    def _remove_configs(self, keep: set[str] | None = None) -> None:
        """This analyst's account configs no service uses any more (all but KEEP)."""
        label = f"{container_spec.USER_LABEL}={self.user.name}"
        for config in self.client.configs(filters={"label": label}):
            if keep and config["ID"] in keep:
                continue
            if not config["Spec"]["Name"].startswith(f"{self.cfg.hub.network}-nb-"):
                continue
            with contextlib.suppress(docker.errors.APIError):
                self.client.remove_config(config["ID"])

    def _remove_service(self, name: str = "") -> None:
        with contextlib.suppress(docker.errors.NotFound):
            self.client.remove_service(name or self.service_name)

    # --- the spawn form ------------------------------------------------------------------
    def _offered_profiles(self) -> list:
        """GPU profiles only when some node of the swarm advertises enough GPUs (not the
        hub's own /dev: the hub's node need not have any)."""
        try:
            return swarm_gpu.offered_profiles(self.cfg, self.client)
        except docker.errors.DockerException as e:
            self.log.warning("the swarm's nodes could not be read for the spawn form: %s", e)
            return [p for p in self.cfg.profiles if not p.gpus]

    # --- the home ----------------------------------------------------------------------
    @property
    def home_job_name(self) -> str:
        return f"{self.service_name}-home"

    def _home_volume(self, ident: dict) -> service_spec.HomeVolume:
        shared = self.cfg.cluster.home_volume
        return service_spec.HomeVolume(
            prefix=self.cfg.hub.network,
            user_name=self.user.name,
            uid=ident["uid"],
            gid=ident["gid"],
            path=ident["home"],
            driver=shared.driver if shared else None,
            options=dict(shared.driver_opts) if shared else {},
        )

    def _check_home_node(self, profile, constraints: list[str]) -> None:
        """Refuse at once a start that cannot run on the analyst's home node: gone from the
        swarm, drained or down, or without what the profile's placement asks for."""
        name = self.home_node.get("name") or self.home_node["id"]
        try:
            node = self.client.inspect_node(self.home_node["id"])
        except docker.errors.NotFound:
            raise web.HTTPError(
                409, home_refusal(profile, name, "that node is no longer in the swarm")
            ) from None
        unmet = unmet_constraints(node, constraints)
        if unmet:
            why = f"it needs {' and '.join(unmet)}, which node {name} does not meet"
            raise web.HTTPError(409, home_refusal(profile, name, why))
        availability = node["Spec"].get("Availability", "active")
        state = (node.get("Status") or {}).get("State", "")
        if availability != "active" or state != "ready":
            why = f"the node is {availability if availability != 'active' else state}"
            raise web.HTTPError(409, home_refusal(profile, name, why))

    @property
    def _home_pin(self) -> str:
        """The constraint that keeps the server on its local home's node ('' for none)."""
        return f"node.id=={self.home_node['id']}" if self.home_node else ""

    async def _placement(self, profile, home: service_spec.HomeVolume) -> list[str]:
        """The server's placement constraints: the profile's, plus the home node for a local
        home made before, which is checked first (a profile that cannot run there is
        refused at once, naming the node)."""
        constraints = self.cfg.placement_constraints(profile)
        if not home.shared and self.home_node:
            await self._in_pool(self._check_home_node, profile, constraints)
            constraints.append(self._home_pin)
        return constraints

    @contextlib.contextmanager
    def _no_gpu_refused(self) -> Iterator[None]:
        """No GPU free (GPUUnavailable) as the analyst's 409, saying why, and in the log."""
        try:
            yield
        except gpu.GPUUnavailable as e:
            self.log.warning("%s: %s", self.user.name, e)
            raise web.HTTPError(409, str(e)) from None

    async def _check_gpus(self, profile, constraints: list[str]) -> None:
        """Refused (409) at once, saying why, when no node meeting CONSTRAINTS has the GPU
        profile's GPUs free; holds nothing (_reserve_gpus does, after the image work)."""
        allocator = swarm_gpu.SwarmGPUAllocator(self.cfg, self.client)
        with self._no_gpu_refused():
            await allocator.check(profile, constraints, replacing=self.service_name)

    async def _reserve_gpus(self, profile, constraints: list[str]) -> swarm_gpu.SwarmGrant:
        """A node and GPUs for a GPU profile's server, picked by the hub (swarm_gpu), on a
        node meeting CONSTRAINTS; refused (409) at once, saying why, when there is none. The
        caller releases the grant once the service exists, or its start failed."""
        allocator = swarm_gpu.SwarmGPUAllocator(self.cfg, self.client)
        with self._no_gpu_refused():
            # Its own service left by a crashed hub is removed before the new one is made.
            grant = await allocator.reserve(
                self.user.name, profile, constraints, replacing=self.service_name
            )
        self.log.info(
            "%s's server (%s) gets GPU %s of node %s",
            self.user.name,
            profile.name,
            ",".join(grant.gpus),
            grant.node_name,
        )
        return grant

    async def _prepare_home(
        self, profile, request: service_spec.ServiceRequest, home: service_spec.HomeVolume
    ) -> list[str]:
        """Run the job that makes HOME the analyst's, where the server will run (REQUEST's
        placement, from _placement: on a local home made before, only the home node; for
        a GPU server, the node of its GPUs). Returns the server's constraints: REQUEST's,
        plus the node a new local home is on."""
        constraints = list(request.constraints)
        # A new local home's node is the analyst's for good: the job reserves what the
        # server will (CPU and memory), so that it lands where the server fits now. Otherwise
        # it needs nothing reserved, and the server need not wait for its reservations.
        choosing = not home.shared and not self.home_node
        spec = service_spec.home_job_spec(
            self.home_job_name,
            request.image,
            home,
            constraints,
            service_spec.resources(request) if choosing else None,
            {PLATFORM_LABEL: self.cfg.hub.network},
        )
        await self._in_pool(self._remove_service, self.home_job_name)  # a crashed hub's
        began = asyncio.get_running_loop().time()
        created = await self._in_pool(lambda: self.client.create_service(**spec))
        try:
            # Running: healthy, that is the home is ready (service_spec.home_job_spec).
            task = await self._until_running(
                profile, constraints, service_id=created["ID"], what="Home"
            )
        finally:
            await self._in_pool(self._remove_service, self.home_job_name)
        if choosing:
            # Its reservations are free once its task is over, not when the service goes:
            # a server asking at once could be refused for the job's own reservation.
            await self._until_over(created["ID"])
        self.log.info(
            "%s's home is ready in %.1fs",
            self.user.name,
            asyncio.get_running_loop().time() - began,
        )
        if home.shared:
            return constraints
        if not self.home_node:
            node = await self._in_pool(self.client.inspect_node, task["NodeID"])
            self.home_node = {"id": node["ID"], "name": node["Description"]["Hostname"]}
            self.log.info("%s's home is on node %s", self.user.name, self.home_node["name"])
            constraints.append(f"node.id=={node['ID']}")
        return constraints

    # --- start -----------------------------------------------------------------------
    async def start(self):
        self._spawn_progress = self._new_progress()
        progress = self.spawn_progress
        profile = self._profile()
        if profile.spark:
            # Said before any work: without a Spark node the cluster cannot start anywhere.
            await self._in_pool(self._check_spark_nodes, profile)
        self._profile_cfg = profile
        ident = await self._identity()
        self._ident = ident
        home = self._home_volume(ident)
        constraints = await self._placement(profile, home)
        if profile.gpus:
            # Before any image, config, service or network: no GPU free is said at once.
            await self._check_gpus(profile, constraints)
        tag, own_image = await self._server_image(profile)
        grant = None
        if profile.gpus:
            # Held from here, not through a per-user build (minutes) that needs no GPU.
            grant = await self._reserve_gpus(profile, constraints)
            if grant.constraint not in constraints:
                constraints.append(grant.constraint)
            progress.emit(
                6, f"GPU {','.join(grant.gpus)} of node {grant.node_name} is held for you"
            )
        try:
            return await self._start_service(
                profile, ident, home, constraints, grant, tag, own_image
            )
        finally:
            await swarm_gpu.release(grant)  # a failed start's; a made service holds them

    async def _server_image(self, profile) -> tuple[str, str | None]:
        """The profile's image by digest (self.image), then the analyst's own image when
        they have packages (the single-host path: found in registry-users, or built on the
        manager's engine and pushed there). Returns the tag and the own image, if any."""
        progress = self.spawn_progress
        tag = self._image_tag(profile)
        ref = self.cfg.image_ref(profile.image, tag)
        version = self._version()
        self.chosen_version = version if versions.is_release(version) else ""
        progress.emit(2, f"Looking up image {profile.image} in the registry")
        self.image = await self._resolve_digest(ref)
        progress.emit(5, f"Image {ref} is {self.image.rsplit('@', 1)[1][:19]}")
        own_image = await self._user_image(profile, tag)
        self.image = own_image or self.image
        return tag, own_image

    async def _start_service(
        self,
        profile,
        ident: dict,
        home: service_spec.HomeVolume,
        constraints: list[str],
        grant: swarm_gpu.SwarmGrant | None,
        tag: str,
        own_image: str | None,
    ) -> tuple[str, int]:
        """The rest of start, once the image, the placement (and a GPU server's GPUs) are
        decided."""
        progress = self.spawn_progress
        self._extra_env = self._spark_environment(profile) if profile.spark else {}
        await self._in_pool(self._login, self.image)
        image_passwd, image_group = await self._in_pool(self._read_image_accounts, self.image)
        configs = service_spec.account_configs(
            f"{self.cfg.hub.network}-nb", self.user.name, ident, image_passwd, image_group
        )
        accounts = await self._in_pool(self._ensure_configs, configs)
        request = service_spec.ServiceRequest(
            name=self.service_name,
            image=self.image,
            user_name=self.user.name,
            profile_name=profile.name,
            ident=ident,
            command=await self.get_command(),
            env={**self.get_env(), **(grant.environment if grant else {})},
            labels={
                PLATFORM_LABEL: self.cfg.hub.network,
                **self.extra_labels,
                **(grant.labels if grant else {}),
            },
            cpu_limit=profile.cpu_limit or self.cfg.resources.cpu_limit,
            mem_limit=profile.mem_limit or self.cfg.resources.mem_limit,
            reservation_fraction=self.reservation_fraction,
            pids_limit=self.pids_limit,
            constraints=constraints,
            networks=self._server_networks(profile),
            accounts=accounts,
            mounts=[home.server_mount()],
        )
        progress.emit(8, "Preparing your home")
        try:
            pinned = await self._prepare_home(profile, request, home)
        except BaseException:
            await self._in_pool(self._remove_configs, None)
            raise
        request = dataclasses.replace(request, constraints=pinned)
        cluster: list[service_spec.ServiceRequest] = []
        try:
            # Before the service: its task's first packets to `hub` must find the hub there.
            if self.user_network in request.networks or profile.spark:
                await self._in_pool(self._ensure_network)
                await self._in_pool(self._connect_hub)
            if profile.spark:
                request, cluster = await self._spark_requests(profile, request, tag, own_image)
        except BaseException:
            self._release_pending()
            await self._in_pool(self._stop_spark)
            await self._in_pool(self._remove_network)
            await self._in_pool(self._remove_configs, None)
            raise
        progress.emit(10, "Asking the swarm for a node")
        await self._in_pool(self._remove_service)  # a service a crashed hub left behind
        try:
            created = await self._in_pool(
                lambda: self.client.create_service(**service_spec.service_spec(request))
            )
            self.object_id = created["ID"]
            await swarm_gpu.release(grant)  # its labels hold the GPUs now
            waits: list[Awaitable] = [self._until_running(profile, request.constraints)]
            if cluster:
                waits.append(self._start_spark_services(profile, cluster))
            task, *_ = await gather_or_cancel(*waits)
            await self._until_routed()
        except BaseException:
            self._release_pending()  # the cluster's cores, if its start was not reached
            await self._in_pool(self._remove_service)
            await self._in_pool(self._stop_spark)
            await self._in_pool(self._remove_network)
            await self._in_pool(self._remove_configs, None)
            self.object_id = ""
            raise
        node = await self._in_pool(self.client.inspect_node, task["NodeID"])
        self.node_name = node["Description"]["Hostname"]
        self.log.info(
            "%s's server (%s) runs on node %s", self.user.name, profile.name, self.node_name
        )
        progress.emit(90, f"Your server runs on node {self.node_name}")
        return (self.service_name, self.port)

    # --- the analyst's own network ----------------------------------------------------
    @property
    def user_network(self) -> str:
        """The analyst's own overlay network: their server, their Spark cluster and the hub,
        no one else."""
        return networks.network_name(self.cfg, self.user.name)

    spark_network = user_network  # a Spark cluster's network is the analyst's own

    def _server_networks(self, profile) -> list[str]:
        """The server's networks: the analyst's own, then service_networks (a GPU server's
        too: it holds no Swarm generic resource, so a node update does not stop it)."""
        return [self.user_network, *self.service_networks]

    def _connect_hub(self) -> None:
        """The hub's container on the analyst's network as `hub` (already there after a hub
        restart: kept)."""
        if not self.hub_container:
            return
        try:
            self.client.connect_container_to_network(
                self.hub_container, self.user_network, aliases=[swarm_stack.HUB_ALIAS]
            )
        except docker.errors.APIError as e:
            if "already exists" not in str(e):
                raise

    def _remove_network(self) -> None:
        """The hub off the analyst's network, then the network, once the tasks have left it
        (the hub's attachment counts as a task: it must go first)."""
        if not self.client.networks(names=[self.user_network]):
            return
        if self.hub_container:
            with contextlib.suppress(docker.errors.NotFound, docker.errors.APIError):
                self.client.disconnect_container_from_network(
                    self.hub_container, self.user_network, force=True
                )
        swarm_stack.remove_network(self.client, self.user_network)

    def _routed(self) -> bool:
        """Whether the hub reaches the server's service name on the analyst's network: a
        connection, or a refusal (the server not listening yet), means a route."""
        try:
            with socket.create_connection((self.service_name, self.port), timeout=1):
                return True
        except ConnectionRefusedError:
            return True
        except OSError:
            return False

    async def _until_routed(self) -> None:
        """Until the hub's container has a route to the server (a fresh attachment may take
        a second: docs/multi-node.md), at most route_timeout; then JupyterHub waits for the
        server to answer, as for any spawner."""
        if not self.hub_container:
            return
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.route_timeout
        while not await self._in_pool(self._routed):
            if loop.time() > deadline:
                raise web.HTTPError(
                    500,
                    f"the hub has no route to your server ({self.service_name}) on your "
                    f"network {self.user_network} after {self.route_timeout:.0f} s",
                )
            await asyncio.sleep(0.5)

    # --- the analyst's Spark cluster (a Spark profile) --------------------------------

    def _check_spark_nodes(self, profile) -> None:
        """Refuse a Spark profile at once when no node can run a cluster: none labelled
        cluster.node_labels.spark=true that is active and ready."""
        key = self.cfg.cluster.node_labels.spark
        labelled = [
            n for n in self.client.nodes() if (n["Spec"].get("Labels") or {}).get(key) == "true"
        ]
        usable = [
            n
            for n in labelled
            if n["Spec"].get("Availability", "active") == "active"
            and (n.get("Status") or {}).get("State") == "ready"
        ]
        if not usable:
            why = (
                "the nodes labelled so are drained or down"
                if labelled
                else f"no node is labelled {key}=true (`hubstack nodes label NODE {key}=true`)"
            )
            raise web.HTTPError(
                409,
                f"the profile {profile.display_name!r} ({profile.name}) needs a Spark cluster "
                f"of your own on a Spark node, and none can take it: {why}. Choose another "
                "profile, or ask the platform team",
            )

    def _check_spark_capacity(self, pending: int) -> None:
        # The platform's clusters are services on any node: count their worker services.
        held = spark_cluster.service_cores_held(self.client, self.cfg.hub.network)
        spark_cluster.check_capacity(self.cfg, None, pending, held=held)

    def _ensure_network(self) -> None:
        """The analyst's attachable overlay network, made when missing (Swarm picks its
        subnet); internal when notebooks have no egress."""
        name = self.user_network
        if any(n["Name"] == name for n in self.client.networks(names=[name])):
            return
        try:
            self.client.create_network(
                name,
                driver="overlay",
                attachable=True,
                internal=self.cfg.network.egress == "none",
                labels={
                    networks.NETWORK_LABEL: self.user.name,
                    PLATFORM_LABEL: self.cfg.hub.network,
                },
                check_duplicate=True,
            )
        except docker.errors.APIError as e:
            if "already exists" not in str(e):
                raise

    def _ensure_secret(self, secret: service_spec.AccountConfig) -> str:
        made = self.client.create_secret(secret.name, secret.data, labels=secret.labels)
        return made["ID"]

    async def _spark_requests(
        self,
        profile,
        request: service_spec.ServiceRequest,
        tag: str,
        own_image: str | None = None,
    ) -> tuple[service_spec.ServiceRequest, list[service_spec.ServiceRequest]]:
        """The server's request with what its driver needs (the secret, the startup hook,
        the analyst's network), and the cluster's services: the analyst's per-user image
        (OWN_IMAGE, built FROM spark-executor) or else the spark-executor image of the
        server's version, by digest, as the analyst, placed on Spark nodes (and on the
        home node, for a local home the workers mount)."""
        progress = self.spawn_progress
        progress.emit(6, f"Starting your Spark cluster ({self.cfg.spark.workers} workers)")
        await self._reserve_spark_cores()  # released once the cluster runs, or by start
        image = own_image or await self._resolve_digest(
            self.cfg.image_ref(spark.EXECUTOR_IMAGE, tag)
        )
        await self._in_pool(self._login, image)
        passwd, group = await self._in_pool(self._read_image_accounts, image)
        prefix = f"{self.cfg.hub.network}-nb"
        accounts = await self._in_pool(
            self._ensure_configs,
            service_spec.account_configs(prefix, self.user.name, request.ident, passwd, group),
        )
        self._spark_secret = spark_cluster.new_secret()
        secret, hook = service_spec.spark_files(
            self.cfg, prefix, self.user.name, self._spark_secret
        )
        (hook_ref,) = await self._in_pool(self._ensure_configs, [hook])
        secret_ref = (await self._in_pool(self._ensure_secret, secret), secret)
        server = dataclasses.replace(
            request,
            accounts=[*request.accounts, hook_ref],
            secrets=[secret_ref],
        )
        key = self.cfg.cluster.node_labels.spark
        # A local home's node (the workers mount the home); not a GPU server's node.
        pinned = [c for c in request.constraints if c == self._home_pin]
        spec = self._cluster_spec(image, self.spark_network)
        base = dataclasses.replace(
            request,
            labels={PLATFORM_LABEL: self.cfg.hub.network},
            accounts=accounts,
            secrets=[secret_ref],
            constraints=[f"node.labels.{key}==true", *pinned],
        )
        return server, service_spec.spark_requests(self.cfg, spec, base)

    async def _start_spark_services(
        self, profile, cluster: list[service_spec.ServiceRequest]
    ) -> None:
        """Create the cluster's services, wait until each task runs (a cluster Swarm cannot
        place is refused, naming what it needs), then until the master is elected and
        every worker registered."""
        try:
            for req in cluster:
                await self._in_pool(self._remove_service, req.name)  # a crashed hub's
                await self._in_pool(
                    lambda req=req: self.client.create_service(**service_spec.service_spec(req))
                )

            await gather_or_cancel(
                *(
                    self._until_running(
                        profile,
                        req.constraints,
                        service_id=req.name,
                        what=f"Spark {req.args[0]}",
                        refusal=functools.partial(spark_refusal, profile, req),
                    )
                    for req in cluster
                )
            )
            master, *workers = (req.name for req in cluster)
            try:
                await self._in_pool(
                    spark_cluster.wait_ready,
                    spark_cluster.service_probe(self.client),
                    master,
                    workers,
                )
            except spark_cluster.ClusterError as e:
                raise web.HTTPError(500, f"your Spark cluster did not start: {e}") from None
        finally:
            self._release_pending()
        self.spawn_progress.emit(85, "Your Spark cluster is ready")

    def _stop_spark(self) -> None:
        """Remove the analyst's cluster services and their secrets (the network goes after:
        _remove_network). Nothing to do for a server without a cluster."""
        spark_cluster.stop_services(self.client, self.service_name)
        label = f"{container_spec.USER_LABEL}={self.user.name}"
        own = f"{self.cfg.hub.network}-nb-{self.user.name}-spark-"
        for secret in self.client.secrets(filters={"label": label}):
            if secret["Spec"]["Name"].startswith(own):
                with contextlib.suppress(docker.errors.APIError):
                    self.client.remove_secret(secret["ID"])

    async def _until_running(
        self,
        profile,
        constraints: list[str],
        service_id: str = "",
        what: str = "Server",
        refusal: Callable[[str], str] | None = None,
    ) -> dict:
        """The task of SERVICE_ID (the server's by default) once it runs. A task Swarm cannot
        place is refused (409) after unplaceable_grace, with REFUSAL(the scheduler's words)
        when given; one that fails says why (500)."""
        service_id = service_id or self.object_id
        pinned = bool(self._home_pin) and self._home_pin in constraints
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.start_timeout
        unplaceable_since = None
        said = ""
        while True:
            tasks = await self.docker("tasks", filters={"service": service_id})
            task = max(tasks, key=lambda t: t.get("CreatedAt", ""), default=None)
            status = (task or {}).get("Status") or {}
            state, err = status.get("State", ""), status.get("Err", "")
            if state == "running":
                return task  # type: ignore[return-value]
            if state == "pending" and UNPLACEABLE in err:
                unplaceable_since = unplaceable_since or loop.time()
                if loop.time() - unplaceable_since >= self.unplaceable_grace:
                    message = (
                        refusal(err) if refusal else refusal_message(profile, constraints, err)
                    )
                    if pinned:
                        message += (
                            f". Your home is on node "
                            f"{self.home_node.get('name') or self.home_node['id']}: {HOME_REMEDY}"
                        )
                    self.log.warning("%s: %s", self.user.name, message)
                    raise web.HTTPError(409, message)
            else:
                unplaceable_since = None
            if task is not None and state not in STARTING:
                exit_code = (status.get("ContainerStatus") or {}).get("ExitCode")
                code = f" (exit code {exit_code})" if exit_code else ""
                raise web.HTTPError(
                    500,
                    f"your {what.lower()}'s task on the swarm ended as {state}{code}: "
                    f"{err or pformat(status)}",
                )
            if state and state != said:
                self.spawn_progress.emit(20 if state == "preparing" else 15, f"{what}: {state}")
                said = state
            if loop.time() > deadline:
                raise web.HTTPError(
                    500, f"your server did not start in {self.start_timeout} s (task: {state})"
                )
            await asyncio.sleep(self.task_poll_interval)

    async def _until_over(self, service_id: str, timeout: float = 30) -> None:
        """Once SERVICE_ID's tasks (a removed service's) have stopped running, or TIMEOUT."""
        loop = asyncio.get_running_loop()
        deadline = loop.time() + timeout
        while loop.time() < deadline:
            try:
                tasks = await self.docker("tasks", filters={"service": service_id})
            except docker.errors.NotFound:
                return
            if all(t["Status"]["State"] in OVER for t in tasks):
                return
            await asyncio.sleep(self.task_poll_interval)

    # --- poll and stop -----------------------------------------------------------------
    async def poll(self):
        try:
            tasks = await self.docker(
                "tasks", filters={"service": self.service_name, "desired-state": "running"}
            )
        except docker.errors.NotFound:
            return 0
        if not tasks:
            return 0
        state = tasks[0]["Status"]["State"]
        return None if state == "running" or state in STARTING else pformat(tasks[0]["Status"])

    async def stop(self, now=False):
        await self._in_pool(self._remove_service)
        await self._in_pool(self._stop_spark)
        await self._in_pool(self._remove_network)  # after the services, the hub off first
        # A home task left by a start the hub did not finish (it removes its own otherwise).
        await self._in_pool(self._remove_service, self.home_job_name)
        await self._in_pool(self._remove_configs, None)
        self.object_id = ""
        self.node_name = ""  # not home_node: the home stays where it is
        self._spawn_progress = None

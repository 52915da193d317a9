"""cluster.mode: swarm: the platform's compose files as a Swarm stack, and the hub beside it.

The same compose files single mode runs (compose/compose.yaml, and compose/tls.yaml with
hub.tls), rendered by `docker compose config` with the same .env, then changed only where
Swarm needs it (swarm_model):
- the platform network is an attachable overlay: the registries' services are on it, and
  the hub's container joins it;
- the registry instances run on the manager `up` runs on (`node.id==` its ID, and
  `node.role==manager`): their storage is a local volume there (with cluster.registry_data,
  the push and read-only instances' is on shared storage every manager mounts), the push
  instance answers on that manager's loopback, and the hub beside them pulls from the
  read-only one; an `up` on another manager moves them there (docs/multi-node.md, "The
  hub's database");
- compose's file secrets become Swarm secrets, named with a digest of their content (a
  Swarm secret cannot change: a new content is a new secret, and the stack moves to it);
- what Swarm rejects or ignores goes: `depends_on`, `container_name`, `restart` (a restart
  policy instead), the host address of a published port (a port is published on the
  node its task runs on, `mode: host`: Swarm cannot bind one address), and `tmpfs` (a
  tmpfs mount instead);
- the read-only registry and the per-user images' one serve HTTPS with the certificate
  from the platform CA (nodes pull from them, trusting the CA they hold under
  /etc/docker/certs.d), as registry_container_spec does for a single host's TLS instance;
- services are reached by DNS round robin (their task's address), not a virtual IP.

The hub is no service of the stack: it is a plain container on the manager `up` runs on
(hub_container_spec, run_hub), made from the same compose service: restart unless-stopped,
on the stack's overlay as `hub`, its port published as single mode publishes it, its
database in the same volume (or, with cluster.hub_data, in a volume on shared storage
every manager mounts, so that the hub can move to another manager), its secrets the files
under the state dir bind-mounted read-only (as compose does on one host), the manager's
engine socket, and its image from the read-only registry. A Swarm task cannot be
connected to another network by hand, and a plain container can: the spawner connects the
hub to each analyst's own overlay at their start and disconnects it at their stop
(hubstack.hub.swarm_spawner, docs/multi-node.md "One network per analyst").

`render` writes the stack to STATE_DIR/hub/stack.yaml, `deploy` runs `docker stack
deploy` (`hubstack up` deploys the registries first, then the whole stack: registries_file),
`remove` runs `docker stack rm` (`hubstack down`, after remove_hub: volumes stay, as in
single mode).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import dataclasses
import hashlib
import json
import os
import re
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import docker
import yaml

from hubstack import networks, spark_cluster
from hubstack.config import PlatformConfig, SharedVolumeConfig
from hubstack.engine import PLATFORM_LABEL, project_name
from hubstack.errors import CommandError
from hubstack.registry import PULL, auth_config, registry_certificate
from hubstack.registry import TLS_CERT as REGISTRY_TLS_CERT
from hubstack.registry import TLS_KEY as REGISTRY_TLS_KEY

MANAGER = "node.role==manager"
SECRET_NAME_MAX = 64
SECRET_MODE = 0o400
ON_MANAGERS = ("registry", "registry-pull", "registry-users")
REGISTRIES = ("registry", "registry-pull", "registry-users")
# The instances every node pulls from, over TLS: the blessed images (pull account) and the
# per-user images (users account).
NODE_REGISTRIES = ("registry-pull", "registry-users")
# Where the hub's copy of the config (hubstack.stack.hub_config, state_dir
# /srv/jupyterhub/state) finds the platform CA: its registry API calls to the read-only
# instance go over TLS, as every node's pulls do.
HUB_PLATFORM_CA = "/srv/jupyterhub/state/tls/ca.pem"
DOCKER_SOCKET = "/var/run/docker.sock"
# Keys Swarm's stack loader rejects or ignores (with a warning) in a service.
DROPPED = ("depends_on", "container_name", "restart", "tmpfs")


HUB = "hub"
# The hub container's name reaches the spawner in this variable (`up` sets it), so that it
# connects its own container to each analyst's overlay network.
HUB_CONTAINER_ENV = "HUBSTACK_HUB_CONTAINER"
HUB_LABEL = "io.hubstack.swarm-hub"
HUB_ALIAS = "hub"


def hub_container_name(cfg: PlatformConfig) -> str:
    """The hub's container on the manager (`up` runs it, `down` removes it)."""
    return f"{project_name(cfg)}-hub"


def engine_socket(docker_host: str | None = None) -> str:
    """The socket of the engine `up` talks to (DOCKER_HOST, else the default), which the hub
    gets as its own: it must be a manager's."""
    host = os.environ.get("DOCKER_HOST", "") if docker_host is None else docker_host
    if not host:
        return DOCKER_SOCKET
    url = urlsplit(host)
    if url.scheme != "unix":
        raise CommandError(
            f"DOCKER_HOST={host}: swarm mode runs `hubstack up` on a manager, whose engine "
            "socket the hub gets: use the local socket (unix://...)"
        )
    return url.path


def secret_name(project: str, key: str, content: bytes) -> str:
    """A Swarm secret's name for KEY: content-addressed, since a secret cannot be updated;
    at most the 64 characters Swarm allows (the readable part is cut, not the digest)."""
    return (
        f"{project}_{key}"[: SECRET_NAME_MAX - 13] + f"_{hashlib.sha256(content).hexdigest()[:12]}"
    )


def swarm_model(
    cfg: PlatformConfig,
    model: dict,
    socket: str = DOCKER_SOCKET,
    registry_tls: tuple[Path, Path] | None = None,
    node_id: str | None = None,
) -> dict:
    """MODEL (`docker compose config --format json`) as a stack file for
    `docker stack deploy`. REGISTRY_TLS: the read-only registry's certificate and key.
    NODE_ID: the manager `up` runs on, where the registries are placed (None: any manager)."""
    project = project_name(cfg)
    out: dict = {"version": "3.9", "services": {}}
    secrets: dict = {}
    for key, secret in (model.get("secrets") or {}).items():
        content = Path(secret["file"]).read_bytes()
        secrets[key] = {"name": secret_name(project, key, content), "file": secret["file"]}
    if registry_tls is not None:
        for key, path in zip(("registry_tls_cert", "registry_tls_key"), registry_tls, strict=True):
            secrets[key] = {"name": secret_name(project, key, path.read_bytes()), "file": str(path)}
    for name, service in model["services"].items():
        if name == HUB:  # a plain container beside the stack: hub_container_spec
            continue
        s = _service(name, service, socket, registry_tls is not None, node_id)
        push = f"{cfg.registry.address}/"
        if s.get("image", "").startswith(push):
            # Our images as every node pulls them: the read-only instance, over TLS.
            s["image"] = f"{cfg.registry.pull_address}/{s['image'][len(push) :]}"
        out["services"][name] = s
    # Attachable: the hub's container joins the platform network (registries' names).
    out["networks"] = {
        key: {"name": net.get("name", key), "driver": "overlay", "attachable": True}
        for key, net in (model.get("networks") or {}).items()
    }
    out["volumes"] = {
        key: {"name": vol["name"]} if "name" in vol else {}
        for key, vol in (model.get("volumes") or {}).items()
    }
    if cfg.cluster.registry_data is not None and REGISTRY_DATA in out["volumes"]:
        # The push instance's storage, and the read-only instance's (still mounted :ro), on
        # shared storage: after a move to another manager every image is there.
        out["volumes"][REGISTRY_DATA] = shared_volume(cfg, REGISTRY_DATA, cfg.cluster.registry_data)
    if secrets:
        out["secrets"] = secrets
    # Only the secrets the stack's services use (a stack deploy creates each one it declares):
    # the hub's are files bind-mounted into its container.
    return only(out, tuple(out["services"]))


def _service(
    name: str, service: dict, socket: str, registry_tls: bool, node_id: str | None = None
) -> dict:
    # None: what `compose config` says for an unset entrypoint or command.
    s = {k: copy.deepcopy(v) for k, v in service.items() if k not in DROPPED and v is not None}
    deploy = s.setdefault("deploy", {})
    deploy["restart_policy"] = {"condition": "any"}
    # Names resolve to the task's own address, not a virtual IP: one task per service needs
    # no load balancing, and the VIP needs IPVS in the node's kernel (not every kernel has
    # it; the spawner's servers use dnsrr for the same reason).
    deploy["endpoint_mode"] = "dnsrr"
    if name in ON_MANAGERS:
        # On the manager `up` runs on: a local volume holds their storage (unless
        # cluster.registry_data puts it on shared storage), the push instance is reached on
        # that manager's loopback, and the hub (a container there) beside them. Not left to
        # Swarm: after that manager is lost it would start them on another one, with empty
        # local storage and where no push reaches them; `up` on the new manager moves them
        # there instead.
        constraints = [MANAGER] + ([f"node.id=={node_id}"] if node_id else [])
        deploy.setdefault("placement", {})["constraints"] = constraints
    s["ports"] = [
        {
            "target": p["target"],
            "published": int(p["published"]),
            "protocol": p.get("protocol", "tcp"),
            "mode": "host",
        }
        for p in service.get("ports") or []
    ]
    volumes = []
    for v in service.get("volumes") or []:
        v = {k: val for k, val in v.items() if k != "bind"}  # create_host_path: compose's own
        if v.get("type") == "bind" and v.get("target") == DOCKER_SOCKET:
            v["source"] = socket
        volumes.append(v)
    volumes += [{"type": "tmpfs", "target": t} for t in service.get("tmpfs") or []]
    s["volumes"] = volumes
    if name in NODE_REGISTRIES and registry_tls:
        # registry_container_spec's TLS instance, with the files as Swarm secrets: the
        # read-only one and the per-user images' one, both pulled from by every node.
        env = s.setdefault("environment", {})
        env["REGISTRY_HTTP_TLS_CERTIFICATE"] = REGISTRY_TLS_CERT
        env["REGISTRY_HTTP_TLS_KEY"] = REGISTRY_TLS_KEY
        s["secrets"] = [
            *(s.get("secrets") or []),
            {"source": "registry_tls_cert", "target": REGISTRY_TLS_CERT},
            {"source": "registry_tls_key", "target": REGISTRY_TLS_KEY},
        ]
    # Swarm mounts secrets 0444 by default; JupyterHub refuses a cookie secret others may
    # read, and compose's file secrets keep the file's own 0600.
    s["secrets"] = [
        {**(ref if isinstance(ref, dict) else {"source": ref}), "mode": SECRET_MODE}
        for ref in s.get("secrets") or []
    ]
    if not s["secrets"]:
        del s["secrets"]
    if not s["ports"]:
        del s["ports"]
    return s


def stack_file(cfg: PlatformConfig) -> Path:
    return cfg.state_dir / "hub" / "stack.yaml"


def registries_file(cfg: PlatformConfig) -> Path:
    return cfg.state_dir / "hub" / "stack-registries.yaml"


HEADER = "# Written by `hubstack up` (cluster.mode: swarm) from the compose files; edit those.\n"


def render(cfg: PlatformConfig, model: dict, node_id: str | None = None) -> Path:
    """Write the stack file for MODEL, the compose files as `docker compose config
    --format json` renders them with the platform's .env (hubstack.stack.compose_model),
    and beside it the same stack with the registries alone (registries_file): `up` deploys
    that first, pushes, then deploys the whole stack (the registries' services unchanged).
    NODE_ID: this manager's, where the registries run (swarm_model)."""
    issued = registry_certificate(cfg, PULL)
    path = stack_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = swarm_model(
        cfg,
        model,
        engine_socket(),
        registry_tls=(issued.cert_file, issued.key_file),
        node_id=node_id,
    )
    path.write_text(HEADER + yaml.safe_dump(data, sort_keys=False))
    registries = only(data, REGISTRIES)
    registries_file(cfg).write_text(HEADER + yaml.safe_dump(registries, sort_keys=False))
    return path


def only(data: dict, services: tuple[str, ...]) -> dict:
    """The stack DATA with SERVICES alone, and the secrets they use (a stack deploy creates
    every secret its file declares)."""
    out = copy.deepcopy(data)
    out["services"] = {k: v for k, v in out["services"].items() if k in services}
    used = {ref["source"] for s in out["services"].values() for ref in s.get("secrets") or []}
    if "secrets" in out:
        out["secrets"] = {k: v for k, v in out["secrets"].items() if k in used}
        if not out["secrets"]:
            del out["secrets"]
    return out


@dataclasses.dataclass
class HubContainer:
    """The hub's container as `up` runs it on the manager (hub_container_spec)."""

    name: str
    image: str
    environment: dict[str, str]
    labels: dict[str, str]
    ports: dict[str, tuple[str, int]]  # "8000/tcp" -> (host address, port)
    mounts: list[dict]  # {type: bind | volume, source, target, read_only[, driver, driver_opts]}
    tmpfs: dict[str, str]
    networks: dict[str, list[str]]  # network name -> aliases
    healthcheck: dict | None


_DURATION = re.compile(r"(\d+(?:\.\d+)?)(ns|us|ms|s|m|h)")
_UNIT_NS = {"ns": 1, "us": 10**3, "ms": 10**6, "s": 10**9, "m": 60 * 10**9, "h": 3600 * 10**9}


def nanoseconds(duration: str | int) -> int:
    """A compose duration ("2s", "1m30s") in nanoseconds, as the engine's healthcheck takes."""
    if isinstance(duration, int):
        return duration
    parts = _DURATION.findall(duration)
    if not parts or "".join(n + u for n, u in parts) != duration:
        raise CommandError(f"not a duration: {duration!r}")
    return sum(int(float(n) * _UNIT_NS[u]) for n, u in parts)


def hub_container_spec(
    cfg: PlatformConfig, model: dict, socket: str = DOCKER_SOCKET
) -> HubContainer:
    """The hub's compose service in MODEL as a plain container on the manager, as compose runs
    it on one host, except: its image from the read-only registry (the manager pulls it like
    any node), the socket of the manager's engine `up` talks to, the platform CA for its
    registry calls over TLS (HUB_PLATFORM_CA), its own name in HUB_CONTAINER_ENV, and with
    cluster.hub_data its database on that shared storage (hub_data_volume)."""
    service = model["services"][HUB]
    project = project_name(cfg)
    name = hub_container_name(cfg)
    image = service["image"]
    push = f"{cfg.registry.address}/"
    if image.startswith(push):
        image = f"{cfg.registry.pull_address}/{image[len(push) :]}"
    ports = {
        f"{p['target']}/{p.get('protocol', 'tcp')}": (p.get("host_ip") or "", int(p["published"]))
        for p in service.get("ports") or []
    }
    volumes = model.get("volumes") or {}
    mounts = []
    for v in service.get("volumes") or []:
        source = v["source"]
        if v["type"] == "volume" and v["target"] == HUB_DATA_TARGET and cfg.cluster.hub_data:
            mounts.append(hub_data_volume(cfg))
            continue
        if v["type"] == "volume":
            # The engine's name for the compose volume: the stack's, which holds the database.
            source = (volumes.get(source) or {}).get("name") or f"{project}_{source}"
        elif v["type"] == "bind" and v["target"] == DOCKER_SOCKET:
            source = socket
        elif v["type"] != "bind":
            raise CommandError(f"the hub's volume {v} is neither a bind nor a volume")
        mounts.append(
            {"type": v["type"], "source": source, "target": v["target"],
             "read_only": bool(v.get("read_only"))}
        )  # fmt: skip
    # Compose's file secrets, as compose mounts them on one host: the files, read-only.
    for ref in service.get("secrets") or []:
        ref = ref if isinstance(ref, dict) else {"source": ref}
        key = ref["source"]
        target = ref.get("target") or f"/run/secrets/{key}"
        if not target.startswith("/"):
            target = f"/run/secrets/{target}"
        mounts.append(
            {"type": "bind", "source": model["secrets"][key]["file"], "target": target,
             "read_only": True}
        )  # fmt: skip
    ca = cfg.tls_ca_cert_file
    if ca.is_file():
        mounts.append(
            {"type": "bind", "source": str(ca), "target": HUB_PLATFORM_CA, "read_only": True}
        )
    model_networks = model.get("networks") or {}
    networks_ = {
        (model_networks.get(key) or {}).get("name", key): list((net or {}).get("aliases") or [])
        for key, net in (service.get("networks") or {}).items()
    }
    health = service.get("healthcheck")
    healthcheck = None
    if health and not health.get("disable"):
        healthcheck = {"test": health["test"], "retries": health.get("retries", 3)}
        for key, engine_key in (
            ("interval", "interval"),
            ("timeout", "timeout"),
            ("start_period", "start_period"),
        ):
            if key in health:
                healthcheck[engine_key] = nanoseconds(health[key])
    return HubContainer(
        name=name,
        image=image,
        environment={**(service.get("environment") or {}), HUB_CONTAINER_ENV: name},
        labels={HUB_LABEL: project},
        ports=ports,
        mounts=mounts,
        tmpfs={t: "" for t in service.get("tmpfs") or []},
        networks=networks_,
        healthcheck=healthcheck,
    )


HUB_DATA_TARGET = "/srv/jupyterhub"  # the hub's database folder in its container
REGISTRY_DATA = "registry-data"  # the compose volume of the push and read-only instances


def shared_volume(cfg: PlatformConfig, key: str, shared: SharedVolumeConfig) -> dict:
    """The stack's volume KEY on SHARED storage (a cluster.* key of SharedVolumeConfig's
    shape): named PROJECT_KEY-STORAGE, with that key's driver and options. Named after the
    storage (as shared homes are): an engine reuses a volume of the same name and ignores
    the options of a later mount, so neither the manager's local PROJECT_KEY of before nor
    a volume of an earlier setting of the key can stand in for it."""
    return {
        "name": f"{project_name(cfg)}_{key}-{shared.storage}",
        "driver": shared.driver,
        "driver_opts": dict(shared.driver_opts),
    }


def hub_data_volume(cfg: PlatformConfig) -> dict:
    """The hub's database volume on cluster.hub_data's shared storage: the driver and options
    of that key (the shape of cluster.home_volume), named PROJECT_hub-data-STORAGE
    (shared_volume says why). Every manager's engine creates it on the hub's first start
    there and mounts the same folder."""
    shared = cfg.cluster.hub_data
    assert shared is not None
    volume = shared_volume(cfg, "hub-data", shared)
    return {
        "type": "volume",
        "source": volume["name"],
        "target": HUB_DATA_TARGET,
        "read_only": False,
        "driver": volume["driver"],
        "driver_opts": volume["driver_opts"],
    }


def analyst_networks(cfg: PlatformConfig, api: docker.APIClient) -> list[dict]:
    """This platform's analysts' own overlay networks (the spawner's, one per running server)."""
    return [
        n
        for n in api.networks(filters={"label": networks.NETWORK_LABEL})
        if (n.get("Labels") or {}).get(PLATFORM_LABEL) == cfg.hub.network
    ]


def run_hub(cfg: PlatformConfig, api: docker.APIClient, hub: HubContainer) -> str:
    """Pull HUB's image with the pull account and (re)create its container, on its networks
    and on every analyst's network with a server still on it (a hub replaced by `up` must
    reach the servers `down --keep-servers` left running), then start it. Returns its ID."""
    try:
        out = api.pull(hub.image, auth_config=auth_config(cfg, PULL))
        api.inspect_image(hub.image)
    except docker.errors.APIError as e:
        raise CommandError(
            f"this manager could not pull the hub's image {hub.image}: {e.explanation or e} "
            "(is the platform CA under /etc/docker/certs.d/"
            f"{cfg.registry.pull_address}/ca.crt here? docs/multi-node.md)"
        ) from None
    del out
    remove_hub(cfg, api)
    (first, aliases), *others = hub.networks.items()
    host_config = api.create_host_config(
        port_bindings={port: binding for port, binding in hub.ports.items()},
        mounts=[
            docker.types.Mount(
                m["target"],
                m["source"],
                type=m["type"],
                read_only=m["read_only"],
                driver_config=(
                    docker.types.DriverConfig(m["driver"], m["driver_opts"])
                    if m.get("driver")
                    else None
                ),
            )
            for m in hub.mounts
        ],
        tmpfs=hub.tmpfs,
        restart_policy={"Name": "unless-stopped"},
        network_mode=first,
    )
    created = api.create_container(
        hub.image,
        name=hub.name,
        environment=hub.environment,
        labels=hub.labels,
        ports=[tuple(p.split("/")) for p in hub.ports],
        host_config=host_config,
        networking_config=api.create_networking_config(
            {first: api.create_endpoint_config(aliases=aliases)}
        ),
        healthcheck=hub.healthcheck,
    )
    for net, net_aliases in others:
        api.connect_container_to_network(created["Id"], net, aliases=net_aliases)
    for analysts in analyst_networks(cfg, api):
        api.connect_container_to_network(created["Id"], analysts["Id"], aliases=[HUB_ALIAS])
    api.start(created["Id"])
    return created["Id"]


def remove_hub(cfg: PlatformConfig, api: docker.APIClient) -> bool:
    """Remove the hub's container (its database volume stays); False when there was none."""
    try:
        api.remove_container(hub_container_name(cfg), force=True)
    except docker.errors.NotFound:
        return False
    return True


def hub_state(cfg: PlatformConfig, api: docker.APIClient) -> str | None:
    """One line for the hub's container (`running (healthy)`), None when there is none."""
    try:
        state = api.inspect_container(hub_container_name(cfg))["State"]
    except docker.errors.NotFound:
        return None
    health = (state.get("Health") or {}).get("Status")
    return f"{state['Status']} ({health})" if health else state["Status"]


def deploy(cfg: PlatformConfig, path: Path) -> None:
    """`docker stack deploy` of PATH as the platform's project. The pull account goes with
    it (--with-registry-auth, from a CLI config of its own that lives for this command
    only), so the node a task lands on pulls our images without storing a password."""
    cmd = ["docker", "stack", "deploy", "--detach=true", "--compose-file", str(path)]
    cmd += ["--with-registry-auth", "--resolve-image", "never", project_name(cfg)]
    pull = auth_config(cfg, PULL)
    token = base64.b64encode(f"{pull['username']}:{pull['password']}".encode()).decode()
    with tempfile.TemporaryDirectory(prefix="hubstack-cli-") as cli_config:
        config = Path(cli_config) / "config.json"
        config.touch(mode=0o600)
        config.write_text(json.dumps({"auths": {cfg.registry.pull_address: {"auth": token}}}))
        env = {**os.environ, "DOCKER_CONFIG": cli_config}
        result = subprocess.run(cmd, text=True, capture_output=True, env=env)
    if result.returncode != 0:
        raise CommandError(
            f"`{' '.join(cmd[1:])}` failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )


def manager_api(client: docker.DockerClient) -> docker.APIClient:
    """CLIENT's low-level API, once it is known to be a Swarm manager's (what `up` deploys
    to and the hub creates services on), else a clear error."""
    swarm = client.info().get("Swarm") or {}
    if not swarm.get("ControlAvailable"):
        state = swarm.get("LocalNodeState") or "inactive"
        raise CommandError(
            f"cluster.mode: swarm, but this engine is not a Swarm manager (swarm state: "
            f"{state}): run hubstack on a manager (or with DOCKER_HOST set to one), or make "
            "this host one with `docker swarm init` (docs/multi-node.md)"
        )
    return client.api


def service_task(api: docker.APIClient, service: str) -> dict | None:
    """SERVICE's newest task (its state, error and node), None before it has one."""
    try:
        tasks = api.tasks(filters={"service": service})
    except docker.errors.APIError:
        return None
    return max(tasks, key=lambda t: t.get("CreatedAt", ""), default=None)


def describe_task(task: dict | None) -> str:
    """One line for a service's newest task: `running`, `preparing`, `rejected: <why>`."""
    if task is None:
        return "no task yet"
    status = task.get("Status") or {}
    state = status.get("State", "?")
    why = status.get("Err") or (status.get("Message") if state != "running" else "")
    return f"{state}: {why}" if why and state not in ("running", "preparing", "starting") else state


def wait_running(
    api: docker.APIClient, project: str, services: tuple[str, ...], timeout: float, say=print
) -> None:
    """Until each of SERVICES (stack names without the PROJECT_ prefix) has a running task;
    each change of a task's state is one line. A task that keeps failing is named with its
    error when the time is up."""
    deadline = time.monotonic() + timeout
    seen: dict[str, str] = {}
    while True:
        waiting = []
        for name in services:
            line = describe_task(service_task(api, f"{project}_{name}"))
            if seen.get(name) != line:
                say(f"  {name}: {line}")
                seen[name] = line
            if line != "running":
                waiting.append(name)
        if not waiting:
            return
        if time.monotonic() > deadline:
            raise CommandError(
                f"not running within {timeout:.0f}s: "
                + "; ".join(f"{n} ({seen[n]})" for n in waiting)
                + f" (`docker service ps --no-trunc {project}_{waiting[0]}` says more)"
            )
        time.sleep(1)


def server_services(cfg: PlatformConfig, api: docker.APIClient) -> list[dict]:
    """The analysts' services of this platform: servers, their home tasks, their Spark
    clusters' daemons."""
    return api.services(filters={"label": f"{PLATFORM_LABEL}={cfg.hub.network}"})


def is_server(service: dict) -> bool:
    """An analyst's notebook server itself, not its home task nor a Spark daemon of theirs."""
    labels = service["Spec"].get("Labels") or {}
    spark_daemon = labels.get(spark_cluster.COMPONENT_KEY) == spark_cluster.COMPONENT_VALUE
    return not service["Spec"]["Name"].endswith("-home") and not spark_daemon


def stop_servers(cfg: PlatformConfig, api: docker.APIClient) -> list[str]:
    """Remove every analyst's service; their homes (volumes on the nodes) stay. One line
    per server."""
    lines = []
    prefix = f"{cfg.hub.network}-nb-"
    for service in server_services(cfg, api):
        name = service["Spec"]["Name"]
        with contextlib.suppress(docker.errors.NotFound):
            api.remove_service(service["ID"])
        if is_server(service):
            lines.append(f"stopped {name}")
    # Their account configs (passwd, group) and Spark clusters' secrets, named
    # PREFIX-USER-...: unused once the services are gone (as the spawner's stop removes
    # them, with the analysts' own overlays).
    for secret in api.secrets():
        if secret["Spec"]["Name"].startswith(prefix):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_secret(secret["ID"])
    for network in analyst_networks(cfg, api):
        # The hub's attachment counts as a task on it: off first (as the spawner's stop).
        with contextlib.suppress(docker.errors.APIError):
            api.disconnect_container_from_network(
                hub_container_name(cfg), network["Id"], force=True
            )
        try:
            remove_network(api, network["Id"])
        except docker.errors.APIError as e:
            lines.append(f"kept the network {network['Name']}: {e.explanation or e}")
    for config in api.configs():
        if config["Spec"]["Name"].startswith(prefix):
            with contextlib.suppress(docker.errors.APIError):
                api.remove_config(config["ID"])
    return lines


def remove_network(api: docker.APIClient, network: str, timeout: float = 30) -> None:
    """Remove an analyst's overlay NETWORK (name or ID) once nothing is on it: a removed
    service's tasks leave it a moment later, on their nodes. Raises what the engine last
    said when it is still in use after TIMEOUT seconds. Returns once the manager no longer
    lists it (at most 10 s more): its engine lists its own copy, the hub's attachment, a
    moment longer, and a start meanwhile would find the name and not make the network."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.remove_network(network)
            break
        except docker.errors.NotFound:
            break
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)
    gone_by = time.monotonic() + 10
    while time.monotonic() < gone_by and _network_listed(api, network):
        time.sleep(0.2)


def _network_listed(api: docker.APIClient, network: str) -> bool:
    """Whether the engine lists NETWORK, by exact name or ID (its name filter matches parts
    of names: an analyst's network name is a prefix of a longer one's)."""
    listed = api.networks(names=[network]) + api.networks(ids=[network])
    return any(n["Name"] == network or n["Id"].startswith(network) for n in listed)


def stack_services(cfg: PlatformConfig, api: docker.APIClient) -> list[dict]:
    return api.services(filters={"label": f"com.docker.stack.namespace={project_name(cfg)}"})


def remove(cfg: PlatformConfig, api: docker.APIClient, timeout: float = 60) -> list[str]:
    """`docker stack rm` of the platform, then until its services, secrets and networks are
    gone (a following `up` could otherwise meet a network still being removed). Volumes
    stay: the hub's database, the registries' storage, the analysts' homes. Returns the
    services that were there."""
    project = project_name(cfg)
    names = sorted(s["Spec"]["Name"].removeprefix(f"{project}_") for s in stack_services(cfg, api))
    result = subprocess.run(["docker", "stack", "rm", project], text=True, capture_output=True)
    if result.returncode != 0:
        raise CommandError(
            f"`docker stack rm {project}` failed (exit {result.returncode}): "
            f"{result.stderr.strip()[-2000:]}"
        )
    label = f"com.docker.stack.namespace={project}"
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        left = stack_services(cfg, api) + api.secrets(filters={"label": label})
        if not server_services(cfg, api):  # servers kept (--keep-servers) hold their network
            left += api.networks(filters={"label": label})
        if not left:
            break
        time.sleep(0.5)
    return names

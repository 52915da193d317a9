"""cluster.mode: swarm: the platform's compose files as a Swarm stack.

The same compose files single mode runs (compose/compose.yaml, and compose/tls.yaml with
hub.tls), rendered by `docker compose config` with the same .env, then changed only where
Swarm needs it (swarm_model):
- the platform network is an overlay, and a second attachable overlay (servers_network)
  holds the hub and the analysts' servers (services, hubstack.hub.swarm_spawner): the hub
  reaches each by its service name, and no server reaches the registries' network;
- the hub and the registry instances are placed on managers (`node.role==manager`): the
  hub needs a manager's engine to create services, and its database and the registry's
  storage are volumes on that node;
- compose's file secrets become Swarm secrets, named with a digest of their content (a
  Swarm secret cannot change: a new content is a new secret, and the stack moves to it);
- what Swarm rejects or ignores goes: `depends_on`, `container_name`, `restart` (a restart
  policy instead), the host address of a published port (a port is published on the
  node its task runs on, `mode: host`: Swarm cannot bind one address), and `tmpfs` (a
  tmpfs mount instead);
- the read-only registry serves HTTPS with the certificate from the platform CA (nodes pull
  from it, trusting the CA they hold under /etc/docker/certs.d), as registry_container_spec
  does for a single host's TLS instance;
- services are reached by DNS round robin (their task's address), not a virtual IP;
- the hub's Docker socket is the engine `up` talks to (a manager's), and its image is
  named at the read-only registry's address, which every node can pull from.

`render` writes the result to STATE_DIR/hub/stack.yaml, `deploy` runs `docker stack
deploy` (`hubstack up` deploys the registries first, then the whole stack: registries_file),
`remove` runs `docker stack rm` (`hubstack down`: volumes stay, as in single mode).
"""

from __future__ import annotations

import base64
import contextlib
import copy
import hashlib
import json
import os
import subprocess
import tempfile
import time
from pathlib import Path
from urllib.parse import urlsplit

import docker
import yaml

from hubstack import networks, spark_cluster
from hubstack.config import PlatformConfig
from hubstack.engine import PLATFORM_LABEL, project_name
from hubstack.errors import CommandError
from hubstack.registry import PULL, auth_config, registry_certificate
from hubstack.registry import TLS_CERT as REGISTRY_TLS_CERT
from hubstack.registry import TLS_KEY as REGISTRY_TLS_KEY

MANAGER = "node.role==manager"
SECRET_NAME_MAX = 64
SECRET_MODE = 0o400
ON_MANAGERS = ("hub", "registry", "registry-pull", "registry-users")
REGISTRIES = ("registry", "registry-pull", "registry-users")
# Where the hub's copy of the config (hubstack.stack.hub_config, state_dir
# /srv/jupyterhub/state) finds the platform CA: its registry API calls to the read-only
# instance go over TLS, as every node's pulls do.
HUB_PLATFORM_CA = "/srv/jupyterhub/state/tls/ca.pem"
DOCKER_SOCKET = "/var/run/docker.sock"
# Keys Swarm's stack loader rejects or ignores (with a warning) in a service.
DROPPED = ("depends_on", "container_name", "restart", "tmpfs")


SERVERS = "servers"


def servers_network(cfg: PlatformConfig) -> str:
    """The overlay network analysts' servers join (HubstackSwarmSpawner.service_networks):
    the hub is on it, so it reaches each server by its service name; the registries are not.
    One network for every analyst's server, unlike single mode's network per analyst (the
    spawner does not yet make one per analyst: docs/multi-node.md)."""
    return f"{cfg.hub.network}-servers"


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
) -> dict:
    """MODEL (`docker compose config --format json`) as a stack file for
    `docker stack deploy`. REGISTRY_TLS: the read-only registry's certificate and key."""
    project = project_name(cfg)
    out: dict = {"version": "3.9", "services": {}}
    secrets: dict = {}
    for key, secret in (model.get("secrets") or {}).items():
        content = Path(secret["file"]).read_bytes()
        secrets[key] = {"name": secret_name(project, key, content), "file": secret["file"]}
    if registry_tls is not None:
        for key, path in zip(("registry_tls_cert", "registry_tls_key"), registry_tls, strict=True):
            secrets[key] = {"name": secret_name(project, key, path.read_bytes()), "file": str(path)}
    ca = cfg.tls_ca_cert_file
    if registry_tls is not None and ca.is_file():
        secrets["platform_ca"] = {
            "name": secret_name(project, "platform_ca", ca.read_bytes()),
            "file": str(ca),
        }
    for name, service in model["services"].items():
        s = _service(name, service, socket, registry_tls is not None)
        push = f"{cfg.registry.address}/"
        if s.get("image", "").startswith(push):
            # Our images as every node pulls them: the read-only instance, over TLS.
            s["image"] = f"{cfg.registry.pull_address}/{s['image'][len(push) :]}"
        out["services"][name] = s
    out["networks"] = {
        key: {"name": net.get("name", key), "driver": "overlay", "attachable": True}
        for key, net in (model.get("networks") or {}).items()
    }
    # The analysts' servers' network: the hub is on it, the registries are not.
    out["networks"][SERVERS] = {
        "name": servers_network(cfg),
        "driver": "overlay",
        "attachable": True,
    }
    hub = out["services"]["hub"]
    hub["networks"][SERVERS] = {"aliases": ["hub"]}
    if "platform_ca" in secrets:
        # Public, but handled as the other files are: a content-named Swarm secret.
        hub.setdefault("secrets", []).append(
            {"source": "platform_ca", "target": HUB_PLATFORM_CA, "mode": SECRET_MODE}
        )
    out["volumes"] = {
        key: {"name": vol["name"]} if "name" in vol else {}
        for key, vol in (model.get("volumes") or {}).items()
    }
    if secrets:
        out["secrets"] = secrets
    return out


def _service(name: str, service: dict, socket: str, registry_tls: bool) -> dict:
    # None: what `compose config` says for an unset entrypoint or command.
    s = {k: copy.deepcopy(v) for k, v in service.items() if k not in DROPPED and v is not None}
    deploy = s.setdefault("deploy", {})
    deploy["restart_policy"] = {"condition": "any"}
    # Names resolve to the task's own address, not a virtual IP: one task per service needs
    # no load balancing, and the VIP needs IPVS in the node's kernel (not every kernel has
    # it; the spawner's servers use dnsrr for the same reason).
    deploy["endpoint_mode"] = "dnsrr"
    if name in ON_MANAGERS:
        deploy.setdefault("placement", {})["constraints"] = [MANAGER]
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
    if name == "registry-pull" and registry_tls:
        # registry_container_spec's TLS instance, with the files as Swarm secrets.
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


def render(cfg: PlatformConfig, model: dict) -> Path:
    """Write the stack file for MODEL, the compose files as `docker compose config
    --format json` renders them with the platform's .env (hubstack.stack.compose_model),
    and beside it the same stack with the registries alone (registries_file): `up` deploys
    that first, pushes, then deploys the whole stack (the registries' services unchanged)."""
    issued = registry_certificate(cfg, PULL)
    path = stack_file(cfg)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = swarm_model(
        cfg, model, engine_socket(), registry_tls=(issued.cert_file, issued.key_file)
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
    for network in api.networks(filters={"label": networks.NETWORK_LABEL}):
        if (network.get("Labels") or {}).get(PLATFORM_LABEL) == cfg.hub.network:
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
    said when it is still in use after TIMEOUT seconds."""
    deadline = time.monotonic() + timeout
    while True:
        try:
            api.remove_network(network)
            return
        except docker.errors.NotFound:
            return
        except docker.errors.APIError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.5)


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

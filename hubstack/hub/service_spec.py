"""A notebook server as a Swarm service: the single-host container spec
(hubstack.hub.container_spec) carried over to what a Swarm service spec can hold.

What changes on the way (docs/multi-node.md, probed on dockerd 20.10, API 1.41):
- no-new-privileges: a service spec has no field for it; each node's daemon.json sets
  `"no-new-privileges": true`, which the engine applies to every container;
- /etc/passwd and /etc/group: a service has no create-then-put_archive step, so the
  analyst's files are Swarm configs mounted at those paths, named by their content (a new
  content is a new config: configs cannot change);
- the pids limit: docker-py's Resources lacks it, the API's Limits.Pids holds it;
- GPUs: no reservation of the Swarm generic resource the nodes advertise (swarmkit rejects
  a task holding one at every update of its node); the hub picks the node and its GPUs
  (hubstack.hub.swarm_gpu), pins the service there and names the GPUs in its environment;
- placement: the profile's node labels as constraints (PlatformConfig.placement_constraints);
- the home: a named volume per analyst instead of a bind mount of the hub host's folder,
  made theirs (UID:GID, 0700) by a short root job before the server starts (home_job_spec),
  since no process in the server may be root. A local volume lives on one node, so the
  server is then pinned there; a shared one (cluster.home_volume) follows the analyst.

No JupyterHub import and no engine call here: every field is unit-tested from the spec.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass, field, replace

from docker.types import (
    ConfigReference,
    ContainerSpec,
    DriverConfig,
    EndpointSpec,
    Healthcheck,
    Mount,
    Placement,
    Resources,
    RestartPolicy,
    SecretReference,
    ServiceMode,
    TaskTemplate,
)
from docker.utils import parse_bytes

from hubstack import spark, spark_cluster
from hubstack.config import storage_id
from hubstack.hub import container_spec

ACCOUNT_FILES = ("/etc/passwd", "/etc/group")
HOME_JOB_MOUNT = "/hubstack-homes"
"""Where the home job sees the volume it prepares."""
HOME_READY = "/tmp/hubstack-home-ready"
"""What the home job touches once the home is ready: its health check looks for it."""
HOME_JOB_SECONDS = 600
"""How long the home job waits, done, to be removed (a crashed hub's is removed by the next
start)."""
# The home job's script: $1 the folder, $2 UID:GID. Only a folder root still owns (new) is
# made the analyst's: what they chmod'ed themselves stays. chmod before chown, so that root
# needs no CAP_FOWNER for a folder it no longer owns. Then it says so (HOME_READY) and waits
# to be removed: see home_job_spec.
HOME_JOB_SCRIPT = (
    'set -eu; mkdir -p "$1"; '
    'if [ "$(stat -c %u "$1")" = 0 ]; then chmod 0700 "$1"; chown "$2" "$1"; fi; '
    f'stat -c "%u:%g %a" "$1"; touch {HOME_READY}; exec sleep {HOME_JOB_SECONDS}'
)


_CONSTRAINT = re.compile(
    r"^node\.(?:labels\.(?P<label>[^=!]+)|(?P<field>id|hostname|role))(?P<op>==|!=)(?P<value>.+)$"
)


def unmet_constraints(node: dict, constraints: list[str]) -> list[str]:
    """The placement constraints NODE (the engine's node inspect) does not meet, as Swarm
    evaluates them: a label the node lacks is not equal to any value. Forms other than
    node.labels/id/hostname/role are left to the scheduler."""
    labels = (node.get("Spec") or {}).get("Labels") or {}
    have = {
        "id": node.get("ID", ""),
        "hostname": (node.get("Description") or {}).get("Hostname", ""),
        "role": (node.get("Spec") or {}).get("Role", ""),
    }
    unmet = []
    for constraint in constraints:
        m = _CONSTRAINT.match(constraint.replace(" ", ""))
        if not m:
            continue
        key = m.group("label")
        actual = labels.get(key) if key else have[m.group("field")]
        equal = actual == m.group("value")
        if equal != (m.group("op") == "=="):
            unmet.append(constraint)
    return unmet


@dataclass(frozen=True)
class AccountConfig:
    """One file as a Swarm config (an account file, the Spark startup hook) or secret (the
    Spark cluster's): its name (by content), data and mount path."""

    name: str
    data: bytes
    target: str
    labels: dict[str, str] = field(default_factory=dict)


def account_configs(
    prefix: str, user_name: str, ident: dict, image_passwd: str, image_group: str
) -> list[AccountConfig]:
    """The image's /etc/passwd and /etc/group plus the analyst's lines (as the single-host
    spawner writes them), as configs named PREFIX-USER-passwd-HASH: the same content gives
    the same name, so a restart reuses its config; another content gets a new one."""
    merged = container_spec.account_texts(user_name, ident, image_passwd, image_group)
    out = []
    for target in ACCOUNT_FILES:
        data = merged[target].encode()
        digest = hashlib.sha256(data).hexdigest()[:12]
        kind = target.rsplit("/", 1)[1]
        out.append(
            AccountConfig(
                name=f"{prefix}-{user_name}-{kind}-{digest}",
                data=data,
                target=target,
                labels={container_spec.USER_LABEL: user_name},
            )
        )
    return out


@dataclass(frozen=True)
class ServiceRequest:
    """Everything one notebook service is made of, as the spawner decided it."""

    name: str
    image: str
    """By digest (REPO@sha256:...): every node runs the same bytes."""
    user_name: str
    profile_name: str
    ident: dict
    """uid, gid, groups, home (the spawner's _identity)."""
    command: list[str]
    env: dict[str, str]
    labels: dict[str, str] = field(default_factory=dict)
    """More container labels (the platform label, the spawner's extra_labels)."""
    cpu_limit: float | None = None
    mem_limit: str | int | None = None
    reservation_fraction: float = 0.25
    """Share of each limit reserved for placement: Swarm puts a server only on a node with
    that much unreserved."""
    pids_limit: int = container_spec.DEFAULT_PIDS_LIMIT
    constraints: list[str] = field(default_factory=list)
    networks: list[str] = field(default_factory=list)
    accounts: list[tuple[str, AccountConfig]] = field(default_factory=list)
    """(config ID, config) pairs, mounted at their targets."""
    mounts: list = field(default_factory=list)
    secrets: list[tuple[str, AccountConfig]] = field(default_factory=list)
    """(secret ID, secret) pairs, mounted at their targets readable by UID:GID only."""
    args: list[str] = field(default_factory=list)
    """Arguments to the image's entrypoint, which COMMAND (when given) replaces."""
    hostname: str = ""
    workdir: str = ""
    """Where the process starts: the home unless set."""


@dataclass(frozen=True)
class HomeVolume:
    """An analyst's home as a Docker volume, on the node (local, the default) or on shared
    storage (cluster.home_volume's driver and options: NFS, or a bind of a shared file
    system mounted at the same path on every node)."""

    prefix: str
    """The platform's name for its objects (hub.network): volumes are PREFIX-home-NAME."""
    user_name: str
    uid: int
    gid: int
    path: str
    """Where the server sees it: the analyst's home (/home/NAME)."""
    driver: str | None = None
    """None: a local volume on the node. Else the shared storage's driver, with OPTIONS."""
    options: dict[str, str] = field(default_factory=dict)

    @property
    def shared(self) -> bool:
        """On storage every node reaches: the analyst is not pinned to a node."""
        return self.driver is not None

    @property
    def storage(self) -> str:
        """Shared homes: a digest of the driver and its options, in the volumes' names. A
        node reuses a volume of the same name and ignores the options a later mount gives,
        so a name of their own keeps what a node already has (the analyst's local home from
        before homes were shared, or a volume of an earlier cluster.home_volume) from
        silently standing in for the shared home."""
        return storage_id(self.driver or "", self.options)

    @property
    def name(self) -> str:
        """PREFIX-home-NAME (local), PREFIX-homes-STORAGE-NAME (shared)."""
        if self.shared:
            return f"{self.prefix}-homes-{self.storage}-{self.user_name}"
        return f"{self.prefix}-home-{self.user_name}"

    @property
    def labels(self) -> dict[str, str]:
        return {container_spec.USER_LABEL: self.user_name}

    def _driver(self, device: str) -> DriverConfig:
        return DriverConfig(self.driver, {**self.options, "device": device})

    def server_mount(self) -> Mount:
        """The server's home: the analyst's own volume (on NFS: DEVICE/NAME, the folder the
        job made), created on the node at the first mount."""
        driver = None
        if self.shared:
            driver = self._driver(f"{self.options['device'].rstrip('/')}/{self.user_name}")
        # no_copy: nothing of the image is copied into a new home.
        return Mount(
            self.path,
            self.name,
            no_copy=True,
            labels=self.labels,
            driver_config=driver,
        )

    def job_mount(self) -> Mount:
        """What the job prepares: the analyst's own (local) volume, or on NFS the export that
        holds every home (a folder of it may not exist yet, so it cannot be mounted)."""
        if not self.shared:
            return Mount(HOME_JOB_MOUNT, self.name, no_copy=True, labels=self.labels)
        return Mount(
            HOME_JOB_MOUNT,
            f"{self.prefix}-homes-{self.storage}",
            no_copy=True,
            driver_config=self._driver(self.options["device"]),
        )

    @property
    def job_folder(self) -> str:
        return f"{HOME_JOB_MOUNT}/{self.user_name}" if self.shared else HOME_JOB_MOUNT


def home_job_spec(
    name: str,
    image: str,
    home: HomeVolume,
    constraints: list[str],
    res: Resources | None = None,
    labels: dict[str, str] | None = None,
) -> dict:
    """create_service arguments for the job that makes HOME the analyst's (UID:GID, 0700)
    where it is still root's: one task, as root (the one root process of a start, and never
    in the server) with only CAP_CHOWN, none of our networks, no socket, only that volume
    mounted. With the server's placement and reservations (RES), so it runs where the server
    can: on a local volume, that node becomes the home's.

    Why not a Swarm job (mode replicated-job): on dockerd 20.10 a completed job's container
    stays on its node after `service rm` (exited, holding the volume), one more at every
    start. So the task reports healthy once the home is ready, and Swarm counts a task with
    a health check as running only then; the spawner then removes the service, and the node
    removes a running task's container, as it does a server's."""
    labels = {**(labels or {}), **home.labels}
    container = ContainerSpec(
        image=image,
        command=["sh", "-c", HOME_JOB_SCRIPT, "sh", home.job_folder, f"{home.uid}:{home.gid}"],
        user="0:0",
        labels=labels,
        cap_drop=["ALL"],
        cap_add=["CAP_CHOWN"],
        mounts=[home.job_mount()],
        init=True,  # the removal's SIGTERM ends the wait at once
        healthcheck=Healthcheck(
            test=["CMD", "test", "-e", HOME_READY],
            interval=200_000_000,  # ns: the start waits on it
            timeout=2_000_000_000,
            retries=1,
        ),
    )
    task = TaskTemplate(
        container_spec=container,
        resources=res,
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=constraints or None),
        # No network of ours. A service cannot ask for none (dockerd 20.10: "could not find
        # the corresponding predefined swarm network: network none not found"), so the task
        # is on the node's default bridge; it runs only the fixed script above.
    )
    return {
        "name": name,
        "task_template": task,
        "labels": labels,
        "mode": ServiceMode("replicated", 1),
    }


def resources(req: ServiceRequest) -> Resources:
    """Limits, and reservations for placement: a share of the limits. Never a GPU: the hub
    hands GPUs out itself (hubstack.hub.swarm_gpu)."""
    mem = parse_bytes(req.mem_limit) if req.mem_limit else None
    nano = int(req.cpu_limit * 1e9) if req.cpu_limit else None
    fraction = req.reservation_fraction
    res = Resources(
        cpu_limit=nano,
        mem_limit=mem,
        cpu_reservation=int(nano * fraction) if nano and fraction else None,
        mem_reservation=int(mem * fraction) if mem and fraction else None,
    )
    # docker-py's Resources has no pids limit; the API's Limits.Pids (1.41) has.
    res.setdefault("Limits", {})["Pids"] = req.pids_limit
    return res


def service_spec(req: ServiceRequest) -> dict:
    """Keyword arguments for docker-py's APIClient.create_service."""
    ident = req.ident
    labels = container_spec.create_kwargs(req.user_name, req.profile_name, ident, req.labels)[
        "labels"
    ]
    container = ContainerSpec(
        image=req.image,
        command=req.command or None,
        args=req.args or None,
        env=req.env,
        workdir=req.workdir or ident["home"],
        hostname=req.hostname or None,
        user=f"{ident['uid']}:{ident['gid']}",
        groups=[str(g) for g in ident["groups"]],
        labels=labels,
        cap_drop=["ALL"],
        init=True,
        configs=[
            ConfigReference(config_id, config.name, filename=config.target, uid="0", gid="0")
            for config_id, config in req.accounts
        ]
        or None,
        secrets=[
            SecretReference(
                secret_id,
                secret.name,
                filename=secret.target,
                uid=str(ident["uid"]),
                gid=str(ident["gid"]),
                mode=0o400,
            )
            for secret_id, secret in req.secrets
        ]
        or None,
        mounts=req.mounts or None,
    )
    task = TaskTemplate(
        container_spec=container,
        resources=resources(req),
        # A notebook that exits is over: JupyterHub notices (poll) and the analyst starts
        # again, as on one host; Swarm must not restart it somewhere behind the hub's back.
        restart_policy=RestartPolicy(condition="none"),
        placement=Placement(constraints=req.constraints or None),
        networks=list(req.networks) or None,
    )
    return {
        "name": req.name,
        "task_template": task,
        "labels": dict(labels),
        "mode": ServiceMode("replicated", 1),
        # No virtual IP: the hub reaches the one task by the service's name (DNS round
        # robin over one), and nothing is published on the nodes' ports.
        "endpoint_spec": EndpointSpec(mode="dnsrr"),
    }


def spark_files(
    cfg, prefix: str, user_name: str, secret: str
) -> tuple[AccountConfig, AccountConfig]:
    """The Spark profile's files on a swarm: the analyst's spark-defaults.conf with their
    cluster's secret (a Swarm secret, at the path the single-host spawner writes it to), and
    the notebook's startup hook (a config). Named by content, labelled with the analyst."""
    labels = {container_spec.USER_LABEL: user_name}
    defaults = spark.auth_defaults(secret)
    ((hook_path, hook),) = spark.driver_files(cfg).items()
    return (
        AccountConfig(
            f"{prefix}-{user_name}-spark-{hashlib.sha256(defaults).hexdigest()[:12]}",
            defaults,
            spark.DEFAULTS_FILE,
            labels,
        ),
        AccountConfig(
            f"{prefix}-{user_name}-spark-hook-{hashlib.sha256(hook).hexdigest()[:12]}",
            hook,
            hook_path,
            labels,
        ),
    )


def spark_requests(
    cfg, cluster: spark_cluster.ClusterSpec, base: ServiceRequest
) -> list[ServiceRequest]:
    """The analyst's Spark cluster as services: spark_cluster.roles (the single-host
    cluster's daemons, settings, labels and limits) on BASE, the analyst's identity as their
    server has it (UID:GID, account configs of the executor image, the secret, placement,
    the reservation share, pids limit), on their own network only. Workers mount the home,
    as on one host; nothing is published."""
    out = []
    for role in spark_cluster.roles(cfg, cluster):
        out.append(
            replace(
                base,
                name=role.name,
                hostname=role.name,
                image=cluster.image,
                # The image's entrypoint (tini, spark-entrypoint) with the role, as on one host.
                command=[],
                args=[role.role],
                env=role.env,
                labels={**base.labels, **role.labels},
                cpu_limit=role.cpus,
                mem_limit=f"{role.mem_mb}m",
                networks=[cluster.network],
                mounts=list(base.mounts) if role.worker else [],
                # Not the image's /var/lib/spark (the image's spark user's, 0750).
                workdir="/tmp",
            )
        )
    return out

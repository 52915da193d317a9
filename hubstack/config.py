"""The platform config: one YAML file that drives hub, compose, images and CI.

Every key has a default, so an empty file (or none) is a working single-machine
setup; `hubstack.example.yaml` at the repository root documents each key.
Loading validates the whole file and reports every problem as
``FILE: key.path: what is wrong``.
"""

from __future__ import annotations

import functools
import hashlib
import ipaddress
import json
import os
import re
import subprocess
import sys
from pathlib import Path
from typing import Annotated, Literal
from urllib.parse import urlsplit

import yaml
from pydantic import (
    AfterValidator,
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    ValidationInfo,
    field_validator,
    model_validator,
)

CONFIG_ENV = "HUBSTACK_CONFIG"
# An analyst's user name: POSIX-portable, lowercase (JupyterHub lowercases login names), at
# most 32 characters like useradd. Here, at the bottom, for the config's lists of names and
# for the users file (hubstack.hub.users).
NAME_RE = re.compile(r"^[a-z_][a-z0-9_-]{0,31}$")
DEFAULT_CONFIG_PATHS = (Path("hubstack.yaml"), Path("/etc/hubstack/hubstack.yaml"))

_HOST_PORT = re.compile(r"^[A-Za-z0-9.\-]+:\d{1,5}$")
_MEMORY = re.compile(r"^\d+(\.\d+)?[kKmMgGtT]?$")
_NAME = re.compile(r"^[a-z0-9][a-z0-9_.\-]*$")


# Where Debian/Ubuntu and Fedora/RHEL keep the system's trusted CAs as one PEM bundle.
HOST_CA_BUNDLES = (
    Path("/etc/ssl/certs/ca-certificates.crt"),
    Path("/etc/pki/tls/certs/ca-bundle.crt"),
)
NO_CA = "none"
PYPI = "pypi"


def host_ca_bundle() -> Path | None:
    """The host's system CA bundle, if it has one where Linux distributions keep it."""
    return next((p for p in HOST_CA_BUNDLES if p.is_file()), None)


@functools.cache
def host_pip_index_url() -> str | None:
    """The host's pip index when it is a URL a container can use (http/https), else None.

    PIP_INDEX_URL first, then pip's own config (`pip config get global.index-url`), read
    with pip's config module so every file pip reads is honoured.
    """
    url = os.environ.get("PIP_INDEX_URL")
    if not url:
        try:
            proc = subprocess.run(
                [sys.executable, "-m", "pip", "config", "get", "global.index-url"],
                capture_output=True,
                text=True,
                timeout=30,
            )
            url = proc.stdout.strip() if proc.returncode == 0 else None
        except (OSError, subprocess.TimeoutExpired):
            url = None
    return url if url and url.startswith(("http://", "https://")) else None


class ConfigError(Exception):
    """A platform config that cannot be used; the message names file, key and problem."""


class _Section(BaseModel):
    # Unknown keys are errors: a typo must not silently fall back to a default.
    model_config = ConfigDict(extra="forbid", frozen=True)


def _check_memory(value: str) -> str:
    if not _MEMORY.match(str(value)):
        raise ValueError(f"must be a size such as 512M or 4G, got {value!r}")
    return str(value)


MemorySize = Annotated[str, AfterValidator(_check_memory)]


class RegistryConfig(_Section):
    """The private registry (registry:2 / distribution) every image goes through."""

    address: str = "127.0.0.1:5000"
    """host:port that engines push to and pull from (loopback needs no TLS)."""
    api_address: str | None = None
    """host:port where hubstack's own calls to the registry API (tags, digests, manifests)
    go, when that differs from `address`: a container on the platform network reaches the
    registry by its compose service name. `hubstack up` sets it in the CI builder's copy of
    the config; unset: `address`."""
    users_api_address: str | None = None
    """host:port where hubstack's own calls to the per-user images' instance go, when that
    differs from `users_address` (as api_address is for `address`). `hubstack up` sets it in
    the hub's copy of the config; unset: `users_address`."""
    image: str = "registry:2"
    """Registry server image; built offline from Debian's docker-registry when it cannot be pulled.
    """
    pull_address: str = Field("", validate_default=True)
    """host:port of the read-only instance the hub and the notebooks' nodes pull from, with
    the pull-only credential; unset: the host of `address` and its port + 1."""
    users_address: str = Field("", validate_default=True)
    """host:port of the instance that holds per-user images only (its own storage), where the
    hub pushes and pulls them with its users account; unset: the host of `address` and its
    port + 2."""
    username: str = "hubstack"
    """The push account (the builder's); the pull-only account is USERNAME-pull, the per-user
    images' account USERNAME-users."""
    credentials_file: Path | None = None
    """Generated on first run (mode 0600); default STATE_DIR/secrets/registry-credentials.json."""
    users_credentials_file: Path | None = None
    """The users instance's account, generated on first run (mode 0600); default
    STATE_DIR/secrets/registry-users-credentials.json."""

    @field_validator("address", "api_address", "users_api_address")
    @classmethod
    def _address(cls, v: str | None) -> str | None:
        if v is not None and not _HOST_PORT.match(v):
            raise ValueError(f"must be host:port, got {v!r}")
        return v

    @field_validator("pull_address", "users_address")
    @classmethod
    def _instance_address(cls, v: str, info: ValidationInfo) -> str:
        address = info.data.get("address")
        if not v:
            if address is None:  # address itself is wrong: its own error says so
                return v
            host, port = address.rsplit(":", 1)
            v = f"{host}:{int(port) + (1 if info.field_name == 'pull_address' else 2)}"
        if not _HOST_PORT.match(v):
            raise ValueError(f"must be host:port, got {v!r}")
        # Equal to address only in the hub's own copy (hubstack.stack.hub_config), which sees
        # the read-only instance alone; a config that starts both is checked in compose_env.
        return v

    @property
    def port(self) -> int:
        return int(self.address.rsplit(":", 1)[1])

    @property
    def pull_port(self) -> int:
        return int(self.pull_address.rsplit(":", 1)[1])

    @property
    def pull_username(self) -> str:
        return f"{self.username}-pull"

    @property
    def users_port(self) -> int:
        return int(self.users_address.rsplit(":", 1)[1])

    @property
    def users_username(self) -> str:
        return f"{self.username}-users"


class BaseImageConfig(_Section):
    """The blessed base: where the OS root comes from and what every image trusts."""

    image: str = "debian:bookworm-slim"
    bootstrap: Literal["auto", "always", "never"] = "auto"
    """auto: pull, and build the root with debootstrap when the pull fails."""
    debian_mirror: str = "http://deb.debian.org/debian"
    suite: str = "bookworm"
    extra_ca_bundle: Path | None = Field(None, validate_default=True)
    """PEM bundle added to every image's trust store, so builds and notebooks trust what the
    host trusts (a site that re-signs TLS has its CA there). Unset: the host's system bundle
    (HOST_CA_BUNDLES); `none`: Debian's own certificates only."""
    pip_index_url: str | None = None
    """Index pip uses in the images. Unset: the host's own (PIP_INDEX_URL, or pip's config
    global.index-url) when that is an http(s) URL, else PyPI; `pypi`: PyPI. Builds read
    `index_url`, which resolves this (asking pip only when a build needs it)."""

    @field_validator("extra_ca_bundle", mode="before")
    @classmethod
    def _ca_default(cls, v: object) -> object:
        if v is None:
            return host_ca_bundle()
        if isinstance(v, str) and v.strip().lower() == NO_CA:
            return None
        return v

    @property
    def index_url(self) -> str | None:
        """The pip index the images use; None: PyPI."""
        if self.pip_index_url is None:
            return host_pip_index_url()
        return None if self.pip_index_url.strip().lower() == PYPI else self.pip_index_url


class ImagesConfig(_Section):
    namespace: str = "hubstack"
    """Repository prefix: images are REGISTRY/NAMESPACE/NAME:TAG."""
    tag: str = "latest"
    contexts: list[str] = ["images/*", "spark-executor", "hub"]
    """Build contexts (folders holding a Dockerfile), relative to source_dir; globs allowed."""
    on_demand: list[str] = ["gpu"]
    """Images left out of a plain `hubstack images build` (built only when named)."""
    parallel_builds: int = Field(2, ge=1, le=16)
    """Images built at once when neither is the other's ancestor (hub beside python, ...),
    by `images build`, `up` and CI. Siblings whose Dockerfiles begin with the same step
    (spark-executor and gpu both begin `USER root` FROM notebook) still go one at a time:
    on the engine's classic builder each would make its own copy of it, and a later build
    with nothing changed could take the other's and miss the cache. 2 by default: pip and
    apt keep about one core busy each (benchmarks/build --compare-serial: 0.80 of the
    one-at-a-time time, cold, on 2 cores)."""

    @field_validator("namespace")
    @classmethod
    def _namespace(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(f"must be a lowercase repository name, got {v!r}")
        return v


class ResourcesConfig(_Section):
    """Defaults for a notebook container; a profile may override them."""

    cpu_limit: float = Field(2.0, gt=0)
    mem_limit: MemorySize = "4G"


class AccessList(_Section):
    """Who may use something (a profile, the preview): these user names, and members of
    these JupyterHub groups."""

    users: list[str] = []
    groups: list[str] = []

    def admits(self, user: str, groups: list[str]) -> bool:
        return user in self.users or any(g in self.groups for g in groups)

    def describe(self) -> str:
        who = [f"group {g}" for g in self.groups] + [f"user {u}" for u in self.users]
        return ", ".join(who) or "nobody"


NODE_LABEL_KEY = re.compile(r"^[a-z0-9]([a-z0-9.\-]*[a-z0-9])?$")
NODE_LABEL_VALUE = re.compile(r"^[A-Za-z0-9_.\-]+$")


def check_node_label(key: str, value: str | None = None) -> None:
    """A node label a Swarm placement constraint can name: a lowercase dotted key (not
    Docker's own com.docker.*), and a value without spaces, commas or operators."""
    if not NODE_LABEL_KEY.match(key) or ".." in key:
        raise ValueError(
            f"node label {key!r}: must be lowercase letters, digits, '.' and '-' "
            "(e.g. hubstack.gpu)"
        )
    if key.startswith(("com.docker.", "io.docker.", "org.dockerproject.")):
        raise ValueError(f"node label {key!r}: that namespace is Docker's own")
    if value is not None and not NODE_LABEL_VALUE.match(value):
        raise ValueError(
            f"node label {key}={value!r}: the value must be letters, digits, '_', '.' or '-'"
        )


class NodeLabelsConfig(_Section):
    """The node labels that mark what a node offers (`hubstack nodes label NODE KEY=true`)."""

    gpu: str = "hubstack.gpu"
    """Nodes with GPUs: profiles with gpus > 0 go only there."""
    spark: str = "hubstack.spark"
    """Nodes for Spark: the Spark profile's server and cluster go only there."""

    @field_validator("gpu", "spark")
    @classmethod
    def _key(cls, v: str) -> str:
        check_node_label(v)
        return v


def storage_id(driver: str, driver_opts: dict[str, str]) -> str:
    """A short digest of a volume driver and its options, for the names of volumes on shared
    storage: a node reuses a volume of the same name and ignores the options a later mount
    gives, so a volume named after its storage never stands in for another storage's."""
    key = json.dumps([driver, driver_opts], sort_keys=True)
    return hashlib.sha256(key.encode()).hexdigest()[:10]


class SharedVolumeConfig(_Section):
    """Swarm mode: a folder on storage every node reaches (NFS, or a shared file system
    mounted at the same path on every node), as a Docker volume driver and its options (what
    `docker volume create --driver D --opt K=V` takes). cluster.home_volume (analysts'
    homes), cluster.hub_data (the hub's database) and cluster.registry_data (the registry's
    storage) take this shape."""

    driver: str = "local"
    driver_opts: dict[str, str]
    """The volume's options, e.g. {type: nfs, o: "addr=10.0.0.7,rw,nfsvers=4", device:
    ":/export/homes"}, or {type: none, o: bind, device: /srv/shared/homes}. `device` is the
    folder itself (for homes: the folder all homes are in; an analyst's server mounts
    DEVICE/NAME)."""

    @field_validator("driver_opts")
    @classmethod
    def _device(cls, v: dict[str, str]) -> dict[str, str]:
        if not str(v.get("device", "")).strip("/: "):
            raise ValueError(
                "needs device: the shared folder, e.g. ':/export/homes' (an NFS export) or "
                "/srv/shared/homes (with type: none, o: bind)"
            )
        return {k: str(val) for k, val in v.items()}

    @property
    def storage(self) -> str:
        """storage_id of this driver and its options."""
        return storage_id(self.driver, self.driver_opts)


def _device(volume: SharedVolumeConfig) -> str:
    return volume.driver_opts["device"].rstrip("/")


def _nested(inner: SharedVolumeConfig, outer: SharedVolumeConfig) -> bool:
    """Whether INNER's folder is OUTER's or inside it (the same driver; NFS devices compare
    as their export paths)."""
    if inner.driver != outer.driver:
        return False
    a, b = _device(inner), _device(outer)
    return a == b or a.startswith(b + "/")


class ClusterConfig(_Section):
    """Where notebooks run: this host's engine, or the nodes of a Docker Swarm."""

    mode: Literal["single", "swarm"] = "single"
    """single: one engine, this host. swarm: notebooks and Spark as Swarm services, placed
    on nodes by their labels (docs/multi-node.md)."""
    node_labels: NodeLabelsConfig = NodeLabelsConfig()
    gpu_resource: str = "NVIDIA-GPU"
    """The Swarm generic resource GPU nodes advertise (node-generic-resources in their
    daemon.json); a GPU profile reserves `gpus` of it, so two analysts never share one."""
    home_volume: SharedVolumeConfig | None = None
    """Swarm mode: where analysts' homes live. Unset: a local volume on the node where the
    analyst's server first ran, which keeps them on that node from then on. Set: shared
    storage every node mounts (NFS, or a bind of a shared file system's path), so a server
    may start on any node its profile allows."""
    hub_data: SharedVolumeConfig | None = None
    """Swarm mode: where the hub's database (/srv/jupyterhub: analysts' records, tokens,
    named servers) lives. Unset: a local volume (PROJECT_hub-data) on the manager `hubstack
    up` ran on, the only copy. Set: a folder on shared storage every manager mounts (NFS, or
    a bind of a shared file system's path), so that `hubstack up` on another manager starts
    the hub there on the same database (docs/multi-node.md, "The hub's database")."""

    registry_data: SharedVolumeConfig | None = None
    """Swarm mode: where the registry's storage (every image `up` and CI push) lives. Unset:
    a local volume (PROJECT_registry-data) on the manager `hubstack up` ran on, so an `up`
    on another manager starts with an empty registry and builds and pushes every image
    again. Set: a folder on shared storage every manager mounts, which the push instance
    writes and the read-only instance reads, so that after a move `up --no-build` there finds
    every image (docs/multi-node.md, "The hub's database and moving the hub"). The per-user
    images' instance keeps its local volume."""

    @model_validator(mode="after")
    def _shared_folders(self) -> ClusterConfig:
        # No key's folder (device) is another's, inside it or around it: the hub makes its
        # folder root's 0700 at each start, analysts' homes are made in theirs, and each
        # volume's contents are its own service's alone.
        for key, volume in (("hub_data", self.hub_data), ("registry_data", self.registry_data)):
            if volume is not None and self.mode != "swarm":
                where = "the hub's database" if key == "hub_data" else "the registry's storage"
                volume_key = "hub-data" if key == "hub_data" else "registry-data"
                raise ValueError(
                    f"{key} is for cluster.mode: swarm (on one host {where} is the compose "
                    f"volume {volume_key})"
                )
        hub = self.hub_data
        homes = self.home_volume
        if hub is not None and homes is not None and _nested(hub, homes):
            hub_dev = _device(hub)
            raise ValueError(
                f"hub_data: {hub_dev} is cluster.home_volume's folder or inside it: give "
                "the hub's database a folder of its own (analysts' homes are made there)"
            )
        registry = self.registry_data
        if registry is not None:
            for key, other in (("home_volume", homes), ("hub_data", hub)):
                if other is not None and (_nested(registry, other) or _nested(other, registry)):
                    raise ValueError(
                        f"registry_data: {_device(registry)} overlaps cluster.{key}'s folder "
                        f"{_device(other)} (the same, inside it or around it): give the "
                        "registry's storage a folder of its own"
                    )
        return self

    @field_validator("gpu_resource")
    @classmethod
    def _resource(cls, v: str) -> str:
        if not re.match(r"^[A-Za-z][A-Za-z0-9_\-]*$", v):
            raise ValueError(f"must be a resource kind such as NVIDIA-GPU, got {v!r}")
        return v


class ProfileConfig(_Section):
    name: str
    display_name: str
    description: str = ""
    allow: AccessList | None = None
    """Who may use this profile; unset: every analyst."""
    image: str = "notebook"
    """Name of an image in the build graph."""
    cpu_limit: float | None = Field(None, gt=0)
    mem_limit: MemorySize | None = None
    gpus: int = Field(0, ge=0)
    spark: bool = False
    placement: dict[str, str] | None = None
    """Swarm mode: node labels (KEY: VALUE) a node must carry to run this profile's servers.
    Unset: cluster.node_labels.gpu=true for a profile with gpus, .spark=true for a Spark
    profile, else any node but a GPU node (PlatformConfig.placement_constraints); `{}`: any
    node at all."""

    @field_validator("placement")
    @classmethod
    def _placement(cls, v: dict[str, str] | None) -> dict[str, str] | None:
        for key, value in (v or {}).items():
            check_node_label(key, str(value))
        return v

    @field_validator("name")
    @classmethod
    def _name(cls, v: str) -> str:
        if not _NAME.match(v):
            raise ValueError(
                f"profile name must be lowercase letters, digits, '-', '_' or '.', got {v!r}"
            )
        return v


def _default_profiles() -> list[ProfileConfig]:
    return [
        ProfileConfig(name="default", display_name="Default: Python data stack"),
        ProfileConfig(
            name="spark",
            display_name="Spark: notebook as driver of your own Spark cluster",
            spark=True,
        ),
        ProfileConfig(name="gpu", display_name="GPU: one GPU of this node", image="gpu", gpus=1),
    ]


def host_cores() -> int:
    """CPUs this process may run on (its affinity, which a container's cpuset narrows)."""
    try:
        return len(os.sched_getaffinity(0)) or 1
    except AttributeError:  # not Linux
        return os.cpu_count() or 1


class SpawnConfig(_Section):
    """How the hub paces a burst of spawns (many analysts logging in at once)."""

    concurrent_starts: int | None = Field(None, ge=1)
    """Notebook servers started at once, from starting the container until the server
    answers; more spawns wait their turn in a queue (their containers are created while they
    wait) and the spawn page shows their place.
    Unset: one more than the CPUs of the hub's machine. A start is mostly CPU-bound, so many
    more at once only make every one of them slower; but each start also waits (on the
    engine's runc and iptables, on the hub's check), and one start beyond the cores keeps
    them busy through those waits (docs/performance.md: 30 at once on 2 cores, the cores 97 %
    busy instead of 92 to 95 %)."""
    max_pending: int = Field(100, ge=1)
    """Spawns the hub takes at once, queued and starting together (JupyterHub's
    concurrent_spawn_limit): one more is answered 429 "Too many users trying to log in right
    now". A safety valve far above concurrent_starts: a burst queues instead of failing."""

    @model_validator(mode="after")
    def _valve_above_queue(self) -> SpawnConfig:
        if self.concurrent_starts is not None and self.max_pending < self.concurrent_starts:
            raise ValueError(
                f"max_pending ({self.max_pending}) is below concurrent_starts "
                f"({self.concurrent_starts}): spawns past max_pending are refused (429) "
                "instead of queued, so it must be at least concurrent_starts"
            )
        return self

    @property
    def starts_at_once(self) -> int:
        """concurrent_starts, or one more than the CPUs of the machine this runs on (the
        hub's)."""
        return self.concurrent_starts or host_cores() + 1


class CullConfig(_Section):
    """Idle culling (jupyterhub-idle-culler as a hub service): a server nobody used for
    idle_timeout seconds is stopped; its home stays, its GPU and Spark cluster are freed."""

    idle_timeout: int = Field(3600, ge=0)
    """Seconds without activity (browser traffic, kernels, terminals) before a server is
    stopped; 0: never cull."""
    every: int | None = Field(None, ge=1)
    """Seconds between the culler's checks; unset: a quarter of idle_timeout, at most 600."""
    exempt: list[str] = []
    """Analysts whose servers are never culled (user names)."""

    @field_validator("exempt")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        bad = [name for name in v if not NAME_RE.match(name)]
        if bad:
            raise ValueError(
                f"not user names (lowercase letters, digits, '_', '-'): {', '.join(map(repr, bad))}"
            )
        return sorted(set(v))

    @model_validator(mode="after")
    def _every_within_timeout(self) -> CullConfig:
        if self.idle_timeout and self.every is not None and self.every > self.idle_timeout:
            raise ValueError(
                f"every ({self.every}) is above idle_timeout ({self.idle_timeout}): an idle "
                "server would run up to every + idle_timeout seconds; check at most every "
                "idle_timeout seconds"
            )
        return self

    @property
    def enabled(self) -> bool:
        return self.idle_timeout > 0

    @property
    def check_every(self) -> int:
        """Seconds between the culler's checks."""
        return self.every or min(max(self.idle_timeout // 4, 1), 600)

    @property
    def activity_interval(self) -> int:
        """How often servers report activity and the hub reads the proxy's: well inside
        idle_timeout, so a working analyst's activity is seen before their server is culled
        (JupyterHub's 300 s default would be longer than a short timeout)."""
        return min(max(self.idle_timeout // 4, 5), 300)


LOOPBACK_NAMES = ("localhost",)
HSTS_MAX_AGE = 31536000
"""Seconds browsers keep to https once they saw the hub's HSTS header (a year)."""


def is_loopback(host: str) -> bool:
    """Whether HOST (an address the hub binds, or `localhost`) is reachable from this
    machine only."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


class TLSConfig(_Section):
    """HTTPS at the hub: the proxy in the hub container serves TLS on hub.port
    (hubstack.tls makes the certificate in self-signed mode)."""

    mode: Literal["off", "self-signed", "files"] = "off"
    """off: plain HTTP (only for a loopback hub.host, or behind a TLS terminator with
    insecure_ok); self-signed: a certificate from the platform's own CA, made once under
    STATE_DIR (trust STATE_DIR/tls/ca.pem); files: the certificate chain and key in `cert`
    and `key` (your site's, or certbot's)."""
    names: list[str] = []
    """Extra DNS names and IP addresses the self-signed certificate holds, besides hub.host,
    localhost, 127.0.0.1 and subdomain_host's names: the names people type to reach the hub."""
    cert: Path | None = None
    """files mode: PEM certificate chain, the server's own certificate first (certbot's
    fullchain.pem). Read at each `hubstack up`: a renewed file is served from then on."""
    key: Path | None = None
    """files mode: the PEM private key of that certificate, without a passphrase (certbot's
    privkey.pem); given to the hub as a compose secret, never copied into an image."""
    http_port: int | None = Field(None, ge=1, le=65535)
    """Port on hub.host where plain HTTP is answered with a redirect to https (the proxy
    cannot speak both on one port). Unset: 80 when hub.port is 443, else hub.port + 1."""
    insecure_ok: bool = False
    """Allow mode off on a hub.host other than loopback: passwords and session cookies then
    cross the network in clear text. Set it only when a TLS terminator on this machine
    (nginx, Traefik, an ingress) is what clients reach."""

    @field_validator("names")
    @classmethod
    def _names(cls, v: list[str]) -> list[str]:
        out = []
        for name in v:
            try:
                out.append(check_certificate_name(name))
            except ValueError as e:
                raise ValueError(str(e)) from None
        return list(dict.fromkeys(out))

    @model_validator(mode="after")
    def _files(self) -> TLSConfig:
        if self.mode == "files":
            missing = [k for k in ("cert", "key") if getattr(self, k) is None]
            if missing:
                raise ValueError(
                    f"mode files needs {' and '.join(missing)}: the paths of the certificate "
                    "chain (PEM, server certificate first) and of its key"
                )
        else:
            given = [k for k in ("cert", "key") if getattr(self, k) is not None]
            if given:
                verb = "are" if len(given) > 1 else "is"
                raise ValueError(
                    f"{' and '.join(given)} {verb} read only in mode files (mode is "
                    f"{self.mode}); set mode: files, or remove them"
                )
        return self

    @property
    def enabled(self) -> bool:
        return self.mode != "off"


_CERT_DNS_NAME = re.compile(
    r"^(\*\.)?[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?)*$"
)


def check_certificate_name(name: str) -> str:
    """A name a certificate can hold: an IP address, or a DNS name (`*.` allowed as the first
    label); returned lowercase, an IP address as Python writes it."""
    value = str(name).strip().lower().rstrip(".")
    try:
        return str(ipaddress.ip_address(value))
    except ValueError:
        pass
    if not value or len(value) > 253 or not _CERT_DNS_NAME.match(value):
        raise ValueError(
            f"{name!r} is neither an IP address nor a DNS name (letters, digits, '-' between "
            "dots; '*.' only as the first label)"
        )
    return value


class HubConfig(_Section):
    host: str = "127.0.0.1"
    port: int = Field(8000, ge=1, le=65535)
    tls: TLSConfig = Field(TLSConfig(), validate_default=True)
    min_uid: int = Field(1000, ge=1, le=4294967294)
    """UIDs and GIDs below this are refused (system accounts); UID 0 always is, and so is
    any ID above 4294967294 (4294967295 is (uid_t)-1)."""
    allow_nobody_id: bool = False
    """Allow 65534 (nobody/nogroup) as a UID, GID or group: off, since its files belong to
    no one; some NFS sites squash to it on purpose."""
    users_file: Path | None = None
    """Default STATE_DIR/users.yaml."""
    home_root: Path | None = None
    """Host folder holding one home per analyst; default STATE_DIR/home."""
    accounts_dir: Path | None = None
    """Host folder where the hub writes each notebook container's /etc/passwd and /etc/group
    (the image's plus the analyst's lines), mounted read-only; default
    STATE_DIR/container-accounts."""
    image: str = "hub"
    notebook_image_tag: str = "stable"
    """Tag analysts' servers (and their Spark clusters) start from, resolved to a digest in the
    registry at each start: `stable`, moved only by a promotion of a tested build."""
    preview: AccessList | None = None
    """Users and JupyterHub groups offered "preview" (images.tag, what CI built last) as a
    version choice; unset: nobody."""
    releases_offered: int = Field(5, ge=0)
    """Newest releases (`hubstack ci release`) the spawn form offers beside stable; 0: none."""
    start_timeout: int = Field(300, gt=0)
    """Seconds a spawn may take, its wait in the start queue (hub.spawn) included."""
    spawn: SpawnConfig = SpawnConfig()
    cull: CullConfig = CullConfig()
    network: str = "hubstack"
    """The platform's own Docker network (hub and registry); also the prefix of container
    and per-analyst network names. Analysts' servers are never on it."""
    subdomain_host: str | None = None
    """`http(s)://HOST[:PORT]`: the hub is served there and each analyst's server on its own
    origin, NAME.HOST (JupyterHub's subdomain_host), so one analyst's page scripts cannot act
    on another's server or on the hub. Needs wildcard DNS (*.HOST), and for https a wildcard
    certificate: hub.tls self-signed adds *.HOST to its certificate, files mode needs one
    that holds it, and with tls off the TLS terminator in front serves it; unset: every
    server shares the hub's origin."""

    @field_validator("tls")
    @classmethod
    def _clear_text_off_loopback(cls, v: TLSConfig, info: ValidationInfo) -> TLSConfig:
        host = info.data.get("host")
        if host is not None and v.mode == "off" and not v.insecure_ok and not is_loopback(host):
            raise ValueError(
                f"mode is off and hub.host {host} is not a loopback address: passwords and "
                "session cookies would cross the network in clear text. Set hub.tls.mode: "
                "self-signed (a certificate from the platform's own CA) or files (your "
                "certificate and key in hub.tls.cert and hub.tls.key); or, only when a TLS "
                "terminator on this machine is what clients reach, hub.tls.insecure_ok: true"
            )
        return v

    @field_validator("subdomain_host")
    @classmethod
    def _subdomain_host(cls, v: str | None) -> str | None:
        return None if v is None else check_subdomain_host(v)

    @model_validator(mode="after")
    def _subdomain_port(self) -> HubConfig:
        # Browsers reach the URL's port directly when the hub serves it: http always, and
        # https when hub.tls is on (the proxy serves TLS on hub.port). With tls off an https
        # URL is a TLS terminator's, which forwards to hub.host:hub.port from its own port.
        if not self.subdomain_host:
            return self
        scheme = urlsplit(self.subdomain_host).scheme
        if self.tls.enabled and scheme != "https":
            raise ValueError(
                f"subdomain_host {self.subdomain_host} is http, but hub.tls.mode is "
                f"{self.tls.mode}: the hub serves https, so write https://"
            )
        if scheme == "http" or self.tls.enabled:
            port = urlsplit(self.subdomain_host).port or (443 if scheme == "https" else 80)
            if port != self.port:
                raise ValueError(
                    f"subdomain_host {self.subdomain_host} has port {port}, not hub.port "
                    f"{self.port}: browsers reach that port directly, and the hub is "
                    "published on hub.port (with hub.tls off, a TLS terminator in front may "
                    "listen on another port for https)"
                )
        return self

    @model_validator(mode="after")
    def _redirect_port(self) -> HubConfig:
        if self.tls.enabled and self.redirect_port in (None, self.port):
            raise ValueError(
                f"tls.http_port: must be a port other than hub.port ({self.port}), where plain "
                "HTTP is redirected to https"
            )
        return self

    @property
    def redirect_port(self) -> int | None:
        """Where plain HTTP is answered with a redirect to https: tls.http_port, else 80 for
        a hub on 443, else hub.port + 1; None with tls off."""
        if not self.tls.enabled:
            return None
        if self.tls.http_port is not None:
            return self.tls.http_port
        if self.port == 443:
            return 80
        return self.port + 1 if self.port < 65535 else None

    @property
    def scheme(self) -> str:
        return "https" if self.tls.enabled else "http"

    @property
    def public_url(self) -> str:
        """Where people open the hub: subdomain_host when set, else hub.host:hub.port (with
        TLS on a wildcard address, the certificate's first name in tls.names)."""
        if self.subdomain_host:
            return f"{self.subdomain_host}/"
        if self.tls.enabled and self.tls.names and self.host in ("0.0.0.0", "::"):
            name = self.tls.names[0]
            host = f"[{name}]" if ":" in name else name
            return f"https://{host}/" if self.port == 443 else f"https://{host}:{self.port}/"
        return local_hub_url(self)


_DNS_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


def check_subdomain_host(value: str) -> str:
    """hub.subdomain_host as JupyterHub needs it: scheme://HOST[:PORT], HOST a DNS name that
    analysts' names are prefixed to; returned without a trailing slash."""
    example = "e.g. https://hub.example.org, or http://localhost:8000 on one machine"
    if "://" not in value:
        raise ValueError(f"must start with http:// or https:// ({example}), got {value!r}")
    try:
        url = urlsplit(value.strip())
        port = url.port
    except ValueError as e:
        raise ValueError(f"is not a URL ({e}): {value!r}") from None
    if url.scheme not in ("http", "https"):
        raise ValueError(f"must be an http:// or https:// URL ({example}), got {value!r}")
    host = url.hostname or ""
    if not host:
        raise ValueError(f"names no host ({example}), got {value!r}")
    if url.username or url.password or url.path not in ("", "/") or url.query or url.fragment:
        raise ValueError(
            f"must be only scheme://HOST[:PORT], with no path, query or login, got {value!r}"
        )
    try:
        ipaddress.ip_address(host)
    except ValueError:
        pass
    else:
        raise ValueError(
            f"must name a DNS host, not an IP address: servers are served on NAME.HOST, "
            f"got {value!r}"
        )
    if not all(_DNS_LABEL.match(label) for label in host.split(".")):
        raise ValueError(
            f"host {host!r} is not a DNS name (lowercase letters, digits, '-' between dots)"
        )
    return f"{url.scheme}://{host}" + (f":{port}" if port is not None else "")


def local_hub_url(hub: HubConfig) -> str:
    """The hub where it is published on this host (hub.host:hub.port)."""
    host = f"[{hub.host}]" if ":" in hub.host else hub.host
    return f"{hub.scheme}://{host}:{hub.port}/"


class SparkConfig(_Section):
    """Each Spark-profile analyst's own cluster (hubstack.spark_cluster): a master and
    `workers` workers, started with their server from their image, as their UID:GID."""

    workers: int = Field(2, ge=1)
    worker_cores: int = Field(1, ge=1)
    """CPUs of one worker container (its limit, and what it offers executors)."""
    worker_memory: MemorySize = "1g"
    """What one worker offers executors; its container's limit adds worker_overhead."""
    worker_overhead: MemorySize = "768m"
    """Memory beyond worker_memory in a worker container: the worker daemon's JVM and the
    executors' Python workers."""
    max_total_cores: int = Field(16, ge=1)
    """Spark cores all analysts' clusters may hold at once on this host; a Spark spawn that
    would pass it is refused with a message, not queued."""
    master_port: int = Field(7077, ge=1, le=65535)

    @model_validator(mode="before")
    @classmethod
    def _gone_keys(cls, data):
        gone = {
            "master_ui_port": "Spark UIs are no longer published on host ports",
            "worker_ui_port": "Spark UIs are no longer published on host ports",
            "max_cores_per_app": "each analyst has a cluster of their own, sized by "
            "workers x worker_cores",
        }
        if isinstance(data, dict):
            for key, why in gone.items():
                if key in data:
                    raise ValueError(f"{key} is no longer a setting: {why}")
        return data


class NetworkConfig(_Section):
    """Each analyst's server and Spark containers get a network of their own
    (hubstack.networks), holding only them and the hub."""

    egress: Literal["internet", "none"] = "internet"
    """internet: notebooks reach the public internet (package indexes) but no private or
    link-local address; none: an internal network, nothing beyond the hub."""
    reachable: list[str] = []
    """Private addresses or networks notebooks may still reach (CIDR), e.g. a package mirror
    on the LAN; everything private or link-local else is dropped."""
    analyst_subnets: str = "10.213.0.0/16"
    """Address pool the analysts' networks are cut from (one subnet each)."""
    analyst_prefix: int = Field(27, ge=16, le=29)
    """Size of each analyst's subnet: /27 holds 29 containers (hub, server, master and
    workers); a /16 pool of /27s holds 2,048 analysts."""
    ready_ahead: int = Field(32, ge=0)
    """Analysts without a running server whose network the hub keeps made, with itself on
    it, so that their next start finds it ready (hubstack.hub.ready_networks): the most
    recently active first, then the users file's others. Made while no start is under way.
    0: a network is made at each start and removed at each stop. Single-host mode."""

    @field_validator("analyst_subnets")
    @classmethod
    def _pool(cls, v: str) -> str:
        try:
            return str(ipaddress.IPv4Network(v, strict=True))
        except ValueError as e:
            raise ValueError(f"not an IPv4 network like 10.213.0.0/16: {v!r} ({e})") from None

    @field_validator("reachable")
    @classmethod
    def _cidrs(cls, v: list[str]) -> list[str]:
        out = []
        for item in v:
            try:
                out.append(str(ipaddress.IPv4Network(item, strict=False)))
            except ValueError as e:
                raise ValueError(f"not an IPv4 address or network: {item!r} ({e})") from None
        return out

    @model_validator(mode="after")
    def _fits(self) -> NetworkConfig:
        pool = int(self.analyst_subnets.rsplit("/", 1)[1])
        if self.analyst_prefix < pool:
            raise ValueError(
                f"analyst_prefix /{self.analyst_prefix} is larger than the pool "
                f"{self.analyst_subnets}"
            )
        return self

    @property
    def capacity(self) -> int:
        """How many analysts' networks the pool holds."""
        pool = int(self.analyst_subnets.rsplit("/", 1)[1])
        return 2 ** (self.analyst_prefix - pool)


class GPUConfig(_Section):
    count: int | Literal["auto"] = "auto"
    """GPUs on this node: a number, or auto to detect the device nodes."""
    mode: Literal["auto", "device-requests", "device-nodes"] = "auto"
    """auto: device requests where the engine has the NVIDIA runtime, else device nodes."""
    driver_dir: Path = Path("/usr/local/nvidia")
    shared: bool = False
    """Let several analysts hold the same GPU at once."""


APT_NAME_RE = re.compile(r"^[a-z0-9][a-z0-9+.\-]{1,62}$")


class UserImagesConfig(_Section):
    """Per-user images (hubstack.images.user): an analyst's own packages on top of their
    profile's image, built from images/user/ and cached in the registry by content."""

    enabled: bool = True
    """Off: every analyst starts on the plain profile image, whatever their spec says."""
    form: bool = False
    """Show a text area for the analyst's packages on the spawn form; off: only admins set
    them (`hubstack users env`)."""
    apt_allowlist: list[str] = []
    """Debian packages an analyst may ask for (names only); empty: none."""
    max_packages: int = Field(20, ge=1, le=200)
    """Most entries (pip and apt together) one spec may hold."""
    max_concurrent_builds: int = Field(2, ge=1)
    """Per-user builds the hub runs at once; more wait their turn."""
    template: Path | None = None
    """Folder holding the template's Dockerfile; default SOURCE_DIR/images/user (the hub
    container has its own copy, baked into the hub image)."""

    @field_validator("apt_allowlist")
    @classmethod
    def _apt_names(cls, v: list[str]) -> list[str]:
        bad = [name for name in v if not APT_NAME_RE.match(name)]
        if bad:
            raise ValueError(f"not Debian package names: {', '.join(map(repr, bad))}")
        return sorted(set(v))


class CIConfig(_Section):
    branches: list[str] = ["main"]
    webhook_secret_file: Path | None = None
    """Default STATE_DIR/secrets/webhook-secret."""
    token_file: Path | None = None
    """The token the builder's status page and build logs ask for (generated on first use);
    default STATE_DIR/secrets/ci-token."""
    host: str = "127.0.0.1"
    """Address the webhook listener is published on (compose/ci.yaml), or binds to with
    host_network; loopback by default, so only a reverse proxy on this host reaches it."""
    port: int = Field(8765, ge=1, le=65535)
    host_network: bool = False
    """Run the compose builder (compose/ci.yaml) on the host's network, listening on
    ci.host:ci.port itself. Off (default): it sits on the platform network with only
    ci.host:ci.port published, and reaches the registry API by its service name."""
    max_body_bytes: int = Field(1 << 20, gt=0)
    keep_releases: int = Field(5, ge=1)
    """Releases (X.Y.Z tags) `hubstack ci prune` keeps, newest first; `stable`, `latest` and
    every image a container uses are kept whatever their age."""

    @model_validator(mode="before")
    @classmethod
    def _moved_keys(cls, data):
        if isinstance(data, dict) and "concurrency" in data:
            raise ValueError(
                "concurrency is no longer a setting here: images.parallel_builds says how "
                "many images build at once, for CI and `hubstack images build` alike"
            )
        return data


AUTH_SOURCES = ("file", "ldap", "oidc")
"""Where accounts come from: hubstack's users file, an LDAP directory, an OpenID Connect
provider. auth.sources lists them in the order a login tries them."""

# An LDAP attribute name (RFC 4512 descriptor) or a DN's parts: no filter syntax.
_LDAP_ATTRIBUTE = re.compile(r"^[A-Za-z][A-Za-z0-9-]*$")


def _check_attribute(value: str) -> str:
    if not _LDAP_ATTRIBUTE.match(value):
        raise ValueError(f"must be an LDAP attribute name such as uidNumber, got {value!r}")
    return value


LDAPAttribute = Annotated[str, AfterValidator(_check_attribute)]


class LDAPAttributes(_Section):
    """Which attributes of a user's entry hold their POSIX identity (RFC 2307 names)."""

    uid_number: LDAPAttribute = "uidNumber"
    gid_number: LDAPAttribute = "gidNumber"
    home_directory: LDAPAttribute = "homeDirectory"
    """Read only with use_home_directory."""


class LDAPConfig(_Section):
    """Login against an LDAP directory (jupyterhub-ldapauthenticator): bind as the user with
    their password, their UID/GID from uidNumber/gidNumber, their supplementary groups from
    the posixGroups that list them (memberUid)."""

    server: str
    """Host name (or address) of the directory server, as its certificate names it."""
    port: int | None = Field(None, ge=1, le=65535)
    """Unset: 636 for ldaps, 389 for starttls and plain."""
    tls: Literal["ldaps", "starttls", "plain"] = "ldaps"
    """ldaps: TLS from the first byte; starttls: upgraded before any password is sent; plain:
    no TLS at all (passwords in clear text), only with insecure_plain."""
    insecure_plain: bool = False
    """Allow tls: plain (a directory on a trusted loopback or test network only)."""
    ca_file: Path | None = None
    """PEM file of the CA(s) that signed the directory's certificate; unset: the hub's
    system trust store. The certificate must also name `server`."""
    bind_dn_templates: list[str] = []
    """DNs to bind as, `{username}` standing for the login name, tried in order, e.g.
    uid={username},ou=people,dc=example,dc=org. Either these or lookup_dn."""
    lookup_dn: bool = False
    """Search-then-bind: find the user's entry under user_search_base by user_attribute
    (as search_user_dn, or anonymously), then bind as that entry with their password."""
    search_user_dn: str | None = None
    """The account lookup_dn searches as; unset: an anonymous search."""
    search_password_file: Path | None = None
    """File holding search_user_dn's password (one line, mode 0600); never the password
    itself in this config. The hub gets it as a compose secret."""
    user_search_base: str | None = None
    """Where users' entries are (needed by lookup_dn)."""
    user_attribute: LDAPAttribute = "uid"
    """The attribute holding the login name (memberUid in posixGroups holds it too)."""
    allowed_groups: list[str] = []
    """DNs of groups whose members may log in (member, uniqueMember or memberUid); empty:
    everyone the directory lets bind. Others are refused with a page that says so."""
    group_search_base: str | None = None
    """Where the posixGroups are: each one whose memberUid lists the user gives them its
    gidNumber as a supplementary group and its cn as a JupyterHub group. Unset: none."""
    attributes: LDAPAttributes = LDAPAttributes()
    use_home_directory: bool = False
    """Use the entry's homeDirectory as the home path inside the server (the host folder is
    still home_root/NAME); off: /home/NAME."""
    timeout: float = Field(10, gt=0, le=120)
    """Seconds a login waits for the directory before it says the directory is down."""

    @field_validator("server")
    @classmethod
    def _server(cls, v: str) -> str:
        if not v or not re.match(r"^[A-Za-z0-9.\-:\[\]]+$", v):
            raise ValueError(f"must be a host name or address, got {v!r}")
        return v

    @field_validator("bind_dn_templates")
    @classmethod
    def _templates(cls, v: list[str]) -> list[str]:
        for t in v:
            if "{username}" not in t:
                raise ValueError(f"{t!r} has no {{username}} for the login name")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> LDAPConfig:
        if self.tls == "plain" and not self.insecure_plain:
            raise ValueError(
                "tls: plain sends passwords in clear text; use ldaps or starttls, or set "
                "insecure_plain: true for a directory on a trusted network"
            )
        if bool(self.bind_dn_templates) == self.lookup_dn:
            raise ValueError(
                "set either bind_dn_templates (bind as a DN made from the login name) or "
                "lookup_dn: true (search for the user's entry, then bind), not both or neither"
            )
        if self.lookup_dn and not self.user_search_base:
            raise ValueError("lookup_dn needs user_search_base (where to search for users)")
        if (self.search_user_dn is None) != (self.search_password_file is None):
            raise ValueError(
                "search_user_dn and search_password_file go together (unset both: an "
                "anonymous search)"
            )
        return self

    @property
    def server_port(self) -> int:
        return self.port or (636 if self.tls == "ldaps" else 389)


class OIDCConfig(_Section):
    """Login at an OpenID Connect provider (oauthenticator's GenericOAuthenticator): the login
    page's "Sign in with LABEL" button; endpoints from ISSUER/.well-known/openid-configuration.
    UID/GID from named claims when the provider has them, else allocated once from uid_range
    and kept by the provider's `sub` (USERS_DIR/accounts/oidc-ids.yaml)."""

    issuer: str
    """The provider's issuer URL, exactly as its discovery document names it (e.g.
    https://idp.example.org/realms/main). The browser and the hub both reach it there."""
    insecure_http: bool = False
    """Accept an http:// issuer: tokens and the client secret then cross the network in clear
    text. Only for a provider on the same host or a test network."""
    ca_file: Path | None = None
    """PEM file of the CA(s) that signed the provider's certificate; unset: the hub's system
    trust store."""
    client_id: str
    client_secret_file: Path | None = None
    """File holding the client secret the provider issued (one line, mode 0600); never the
    secret itself in this config. Default STATE_DIR/secrets/oidc-client-secret. The hub gets
    it as a compose secret."""
    scopes: list[str] = ["openid", "profile", "email"]
    """Scopes asked for; many providers need one more (often `groups`) to send the groups."""
    username_claim: str = "preferred_username"
    """Claim holding the user name; it must already be a valid user name (lowercase letters,
    digits, '_', '-'), or the login is refused with the reason."""
    groups_claim: str = "groups"
    """Claim listing the person's groups: checked against allowed_groups, and kept as their
    JupyterHub groups (profile access by group)."""
    uid_claim: str | None = None
    """Claim holding the person's UID (e.g. uidNumber), when the provider has one; unset, or
    absent for a person: a UID from uid_range, allocated once and kept."""
    gid_claim: str | None = None
    """Claim holding the person's primary GID; unset or absent: gid_policy."""
    allowed_groups: list[str] = []
    """Groups (of groups_claim) whose members may log in; empty: nobody, unless allow_all.
    Others are refused with a page that says so."""
    allow_all: bool = False
    """Let everyone the provider authenticates log in (a provider of your own people only)."""
    uid_range: tuple[int, int] = (100000, 199999)
    """[first, last]: UIDs given to people without a UID claim, lowest free first, kept by the
    provider's `sub`. Keep it apart from the users file's and the directory's UIDs; 65534 is
    never given."""
    gid_policy: Literal["uid"] | int = "uid"
    """GID of a person without a GID claim: `uid`, a group of their own with GID = their UID;
    or one GID number for all of them (a shared group)."""
    button_label: str = "OpenID Connect"
    """Shown on the login page as "Sign in with LABEL"."""

    @field_validator("issuer")
    @classmethod
    def _issuer(cls, v: str) -> str:
        url = urlsplit(v)
        if url.scheme not in ("http", "https") or not url.hostname:
            raise ValueError(f"must be an https:// URL such as https://idp.example.org, got {v!r}")
        if url.query or url.fragment or url.username or url.password:
            raise ValueError(f"must have no query, fragment or login, got {v!r}")
        return v.rstrip("/")

    @field_validator("client_id")
    @classmethod
    def _client_id(cls, v: str) -> str:
        if not v.strip():
            raise ValueError("must be the client ID the provider issued for this hub")
        return v

    @field_validator("gid_policy", mode="before")
    @classmethod
    def _gid_policy(cls, v: object) -> object:
        if v == "uid" or (isinstance(v, int) and not isinstance(v, bool)):
            return v
        raise ValueError(f"must be `uid` (a group of their own) or a GID number, got {v!r}")

    @field_validator("uid_range")
    @classmethod
    def _range(cls, v: tuple[int, int]) -> tuple[int, int]:
        first, last = v
        if not 1 <= first <= last <= 4294967294:
            raise ValueError(
                f"must be [first, last] with 1 <= first <= last <= 4294967294, got {list(v)}"
            )
        return v

    @model_validator(mode="after")
    def _consistent(self) -> OIDCConfig:
        if self.issuer.startswith("http://") and not self.insecure_http:
            raise ValueError(
                f"issuer {self.issuer} is plain http: tokens and the client secret would cross "
                "the network in clear text; use https (or set insecure_http: true)"
            )
        if not self.allowed_groups and not self.allow_all:
            raise ValueError(
                "allowed_groups is empty: nobody could log in through OIDC; name the groups "
                "whose members may (or set allow_all: true)"
            )
        return self


class AuthConfig(_Section):
    """Who may log in, and where their account (UID, GID, groups) comes from."""

    sources: list[Literal["file", "ldap", "oidc"]] = ["file"]
    """Tried in this order at each password login; the first source that holds the name
    answers. The users file keeps local admins and service accounts beside a directory."""
    ldap: LDAPConfig | None = None
    oidc: OIDCConfig | None = None

    @field_validator("sources")
    @classmethod
    def _sources(cls, v: list[str]) -> list[str]:
        if not v:
            raise ValueError(f"must list at least one of {', '.join(AUTH_SOURCES)}")
        twice = sorted({s for s in v if v.count(s) > 1})
        if twice:
            raise ValueError(f"lists {', '.join(twice)} more than once")
        return v

    @model_validator(mode="after")
    def _configured(self) -> AuthConfig:
        for source in self.sources:
            if source != "file" and getattr(self, source, None) is None:
                raise ValueError(
                    f"sources lists {source} but auth.{source} is not set (see "
                    "hubstack.example.yaml)"
                )
        return self


class PlatformConfig(_Section):
    state_dir: Path = Path("/var/lib/hubstack")
    """Secrets, users file, homes, build reports: all outside the repository."""
    source_dir: Path | None = None
    """Checkout holding images/, hub/, compose/; default: the one this package came from."""
    registry: RegistryConfig = RegistryConfig()
    base: BaseImageConfig = Field(default_factory=BaseImageConfig)
    images: ImagesConfig = ImagesConfig()
    resources: ResourcesConfig = ResourcesConfig()
    profiles: list[ProfileConfig] = Field(default_factory=_default_profiles)
    hub: HubConfig = HubConfig()
    spark: SparkConfig = SparkConfig()
    network: NetworkConfig = NetworkConfig()
    gpu: GPUConfig = GPUConfig()
    cluster: ClusterConfig = ClusterConfig()
    ci: CIConfig = CIConfig()
    user_images: UserImagesConfig = UserImagesConfig()
    auth: AuthConfig = AuthConfig()

    # Where the file came from, for error messages; not a key.
    path: Path | None = Field(None, exclude=True)

    @model_validator(mode="after")
    def _unique_profiles(self) -> PlatformConfig:
        seen: set[str] = set()
        for p in self.profiles:
            if p.name in seen:
                raise ValueError(f"profiles: duplicate profile name {p.name!r}")
            seen.add(p.name)
        return self

    # Derived paths: defaults live under state_dir so one key moves them all.
    @property
    def secrets_dir(self) -> Path:
        return self.state_dir / "secrets"

    @property
    def registry_credentials_file(self) -> Path:
        return self.registry.credentials_file or self.secrets_dir / "registry-credentials.json"

    @property
    def registry_pull_credentials_file(self) -> Path:
        """The pull-only account's credentials (the hub's compose secret)."""
        return self.secrets_dir / "registry-pull-credentials.json"

    @property
    def registry_users_credentials_file(self) -> Path:
        """The per-user images instance's account (the hub's compose secret)."""
        return (
            self.registry.users_credentials_file
            or self.secrets_dir / "registry-users-credentials.json"
        )

    @property
    def tls_dir(self) -> Path:
        """Certificates (public): the platform CA's, and the hub's in self-signed mode."""
        return self.state_dir / "tls"

    @property
    def tls_ca_cert_file(self) -> Path:
        """The platform CA's certificate: what browsers, the OS and curl are told to trust."""
        return self.tls_dir / "ca.pem"

    @property
    def tls_ca_key_file(self) -> Path:
        return self.secrets_dir / "tls-ca-key.pem"

    @property
    def hub_tls_cert_file(self) -> Path:
        """The chain the hub's proxy serves: hub.tls.cert in files mode, else the one the
        platform CA issued."""
        return self.hub.tls.cert or self.tls_dir / "hub.pem"

    @property
    def hub_tls_key_file(self) -> Path:
        return self.hub.tls.key or self.secrets_dir / "tls-hub-key.pem"

    @property
    def registry_tls_cert_file(self) -> Path:
        """The chain the read-only registry instance serves over TLS (issued by the platform
        CA for the host of registry.pull_address), for nodes other than this host."""
        return self.tls_dir / "registry.pem"

    @property
    def registry_tls_key_file(self) -> Path:
        return self.secrets_dir / "tls-registry-key.pem"

    @property
    def users_file(self) -> Path:
        return self.hub.users_file or self.state_dir / "users.yaml"

    @property
    def home_root(self) -> Path:
        return self.hub.home_root or self.state_dir / "home"

    @property
    def container_accounts_dir(self) -> Path:
        """The /etc/passwd and /etc/group each notebook container mounts read-only (the
        image's own plus the analyst's lines), written by the hub, one folder per analyst;
        mounted into the hub at the same path."""
        return self.hub.accounts_dir or self.state_dir / "container-accounts"

    @property
    def webhook_secret_file(self) -> Path:
        return self.ci.webhook_secret_file or self.secrets_dir / "webhook-secret"

    @property
    def ci_token_file(self) -> Path:
        return self.ci.token_file or self.secrets_dir / "ci-token"

    @property
    def registry_api_address(self) -> str:
        """host:port of the registry's HTTP API as this process reaches it (RegistryClient)."""
        return self.registry.api_address or self.registry.address

    @property
    def source_root(self) -> Path:
        return self.source_dir or default_source_dir()

    @property
    def user_image_template(self) -> Path:
        return self.user_images.template or self.source_root / "images" / "user"

    @property
    def accounts_file(self) -> Path:
        """The table of accounts from a directory (LDAP, OIDC), beside the users file: the
        hub records each one at login (hubstack.hub.accounts)."""
        return self.users_file.parent / "accounts" / "accounts.yaml"

    @property
    def oidc_client_secret_file(self) -> Path:
        oidc = self.auth.oidc
        return (oidc and oidc.client_secret_file) or self.secrets_dir / "oidc-client-secret"

    @property
    def oidc_ids_file(self) -> Path:
        """The UID/GID each OIDC person got, by their `sub` (hubstack.hub.oidc_ids), beside
        the accounts table; the hub writes it."""
        return self.accounts_file.parent / "oidc-ids.yaml"

    @property
    def user_envs_dir(self) -> Path:
        """Analysts' package specs, one NAME.yaml each, beside the users file."""
        return self.users_file.parent / "envs"

    # An image reference REGISTRY/NAMESPACE/NAME:TAG is spelled here and nowhere else.
    @property
    def image_prefix(self) -> str:
        """REGISTRY/NAMESPACE: what every reference to one of our images starts with (the
        images' FROM lines get it as the HUBSTACK_REPO build argument)."""
        return f"{self.registry.address}/{self.images.namespace}"

    def repository_path(self, name: str) -> str:
        """NAMESPACE/NAME: the repository's path inside the registry (its HTTP API's name)."""
        return f"{self.images.namespace}/{name}"

    def image_repository(self, name: str) -> str:
        """REGISTRY/NAMESPACE/NAME: an image's repository, without a tag."""
        return f"{self.image_prefix}/{name}"

    def image_ref(self, name: str, tag: str | None = None) -> str:
        """Full reference of one of our images: REGISTRY/NAMESPACE/NAME:TAG."""
        return f"{self.image_repository(name)}:{tag or self.images.tag}"

    def pull_repository(self, name: str) -> str:
        """PULL_ADDRESS/NAMESPACE/NAME: the repository as the hub pulls it (read-only)."""
        return f"{self.registry.pull_address}/{self.images.namespace}/{name}"

    def image_repositories(self, name: str) -> tuple[str, ...]:
        """Every repository an engine may know one of our images by: the push address's (what
        builds tag and push) and the read-only pull address's (what the hub pulls)."""
        return tuple(dict.fromkeys((self.image_repository(name), self.pull_repository(name))))

    def user_image_repository(self, name: str) -> str:
        """USERS_ADDRESS/NAMESPACE/NAME: a per-user image's repository (NAME: user/ANALYST),
        in the users instance, never in the blessed images' registry."""
        return f"{self.registry.users_address}/{self.repository_path(name)}"

    def placement(self, profile: ProfileConfig) -> dict[str, str]:
        """The node labels PROFILE's servers need in swarm mode: its own `placement`, else
        the GPU label for a profile with GPUs and the Spark label for a Spark profile."""
        if profile.placement is not None:
            return dict(profile.placement)
        labels = self.cluster.node_labels
        out = {}
        if profile.gpus:
            out[labels.gpu] = "true"
        if profile.spark:
            out[labels.spark] = "true"
        return out

    def placement_constraints(self, profile: ProfileConfig) -> list[str]:
        """PROFILE's placement as Swarm constraints (`docker service create --constraint`).
        A profile without GPUs and without a placement of its own also keeps off GPU nodes:
        a CPU notebook must not take the memory and cores a GPU analyst needs there."""
        out = [f"node.labels.{k}=={v}" for k, v in sorted(self.placement(profile).items())]
        if profile.placement is None and not profile.gpus:
            out.insert(0, f"node.labels.{self.cluster.node_labels.gpu}!=true")
        return out

    def profile(self, name: str) -> ProfileConfig:
        for p in self.profiles:
            if p.name == name:
                return p
        known = ", ".join(p.name for p in self.profiles)
        raise KeyError(f"no profile named {name!r} (profiles: {known})")


def default_source_dir() -> Path:
    """The checkout this package was installed from (editable installs), else the cwd."""
    here = Path(__file__).resolve().parent.parent
    return here if (here / "images").is_dir() else Path.cwd()


def _resolve_paths(data: dict, base: Path) -> None:
    """Make relative paths in the file relative to the file, not to the cwd."""

    def fix(section: dict | None, key: str) -> None:
        if not isinstance(section, dict):
            return
        value = section.get(key)
        if isinstance(value, str) and value.strip().lower() != NO_CA:  # `none` is no path
            p = Path(os.path.expanduser(value))
            section[key] = str(p if p.is_absolute() else (base / p))

    fix(data, "state_dir")
    fix(data, "source_dir")
    fix(data.get("registry"), "credentials_file")
    fix(data.get("registry"), "users_credentials_file")
    fix(data.get("base"), "extra_ca_bundle")
    fix(data.get("hub"), "users_file")
    hub = data.get("hub")
    if isinstance(hub, dict):
        fix(hub.get("tls"), "cert")
        fix(hub.get("tls"), "key")
    fix(data.get("hub"), "home_root")
    fix(data.get("gpu"), "driver_dir")
    fix(data.get("ci"), "webhook_secret_file")
    fix(data.get("ci"), "token_file")
    fix(data.get("user_images"), "template")
    auth = data.get("auth")
    if isinstance(auth, dict):
        fix(auth.get("ldap"), "ca_file")
        fix(auth.get("ldap"), "search_password_file")
        fix(auth.get("oidc"), "ca_file")
        fix(auth.get("oidc"), "client_secret_file")


def _format_errors(path: Path | str, err: ValidationError) -> str:
    lines = []
    for e in err.errors():
        key = ".".join(str(p) for p in e["loc"]) or "(top level)"
        msg = e["msg"].removeprefix("Value error, ")
        if e["type"] == "extra_forbidden":
            msg = "unknown key (see hubstack.example.yaml for the keys)"
        lines.append(f"{path}: {key}: {msg}")
    return "\n".join(lines)


def _check_files(cfg: PlatformConfig, path: Path | str) -> None:
    ca = cfg.base.extra_ca_bundle
    if ca is not None:
        if not ca.is_file():
            raise ConfigError(f"{path}: base.extra_ca_bundle: file {ca} does not exist")
        text = ca.read_text(errors="replace")
        if "-----BEGIN CERTIFICATE-----" not in text:
            raise ConfigError(f"{path}: base.extra_ca_bundle: {ca} holds no PEM certificate")
    ldap = cfg.auth.ldap
    if ldap is not None:
        _check_ldap_files(ldap, path)
    if "oidc" in cfg.auth.sources and cfg.auth.oidc is not None:
        _check_oidc(cfg, path)


def _check_ca_file(ca: Path, key: str) -> None:
    if not ca.is_file():
        raise ConfigError(f"{key}: file {ca} does not exist")
    if "-----BEGIN CERTIFICATE-----" not in ca.read_text(errors="replace"):
        raise ConfigError(f"{key}: {ca} holds no PEM certificate")


def _check_ldap_files(ldap: LDAPConfig, path: Path | str) -> None:
    if ldap.ca_file is not None:
        _check_ca_file(ldap.ca_file, f"{path}: auth.ldap.ca_file")
    secret = ldap.search_password_file
    if secret is not None:
        _check_secret_file(secret, f"{path}: auth.ldap.search_password_file", "a password")


def _check_oidc(cfg: PlatformConfig, path: Path | str) -> None:
    """auth.oidc's files, and its IDs against hub.min_uid (two sections, checked together)."""
    oidc, hub = cfg.auth.oidc, cfg.hub
    assert oidc is not None
    if oidc.ca_file is not None:
        _check_ca_file(oidc.ca_file, f"{path}: auth.oidc.ca_file")
    if oidc.uid_range[0] < hub.min_uid:
        raise ConfigError(
            f"{path}: auth.oidc.uid_range: starts at {oidc.uid_range[0]}, below hub.min_uid "
            f"{hub.min_uid}"
        )
    if isinstance(oidc.gid_policy, int) and not hub.min_uid <= oidc.gid_policy <= 4294967294:
        raise ConfigError(
            f"{path}: auth.oidc.gid_policy: {oidc.gid_policy} is outside hub.min_uid "
            f"({hub.min_uid}) to 4294967294"
        )
    key = f"{path}: auth.oidc.client_secret_file"
    if oidc.client_secret_file is None:
        key += f" (default {cfg.oidc_client_secret_file})"
    _check_secret_file(cfg.oidc_client_secret_file, key, "the client secret")


def _check_secret_file(secret: Path, key: str, what: str) -> None:
    """A file holding WHAT: present, not empty, mode 0600 (no group or other bits)."""
    try:
        st = secret.stat()
        empty = not secret.read_text().strip()
    except FileNotFoundError:
        raise ConfigError(f"{key}: file {secret} does not exist") from None
    except OSError as e:
        raise ConfigError(f"{key}: cannot read {secret}: {e.strerror}") from None
    if st.st_mode & 0o077:
        raise ConfigError(
            f"{key}: {secret} is readable by others (mode {st.st_mode & 0o777:o}); "
            f"it holds {what}: chmod 600 {secret}"
        )
    if empty:
        raise ConfigError(f"{key}: {secret} is empty (it must hold {what})")


def parse_config(data: dict | None, path: Path | str = "<config>") -> PlatformConfig:
    """Validate already-loaded YAML data (path is only used in messages and for relative paths)."""
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{path}: (top level): must be a mapping of keys, got {type(data).__name__}"
        )
    data = dict(data or {})
    if isinstance(path, Path):
        _resolve_paths(data, path.resolve().parent)
    try:
        cfg = PlatformConfig.model_validate(data)
    except ValidationError as e:
        raise ConfigError(_format_errors(path, e)) from None
    cfg = cfg.model_copy(update={"path": Path(path) if isinstance(path, Path) else None})
    _check_files(cfg, path)
    return cfg


def load_config(path: str | os.PathLike | None = None) -> PlatformConfig:
    """Load the platform config from PATH, $HUBSTACK_CONFIG, ./hubstack.yaml or /etc/hubstack.

    With none of these present, every default applies.
    """
    if path is None:
        env = os.environ.get(CONFIG_ENV)
        if env:
            path = env
        else:
            path = next((p for p in DEFAULT_CONFIG_PATHS if p.is_file()), None)
            if path is None:
                return parse_config({})
    path = Path(path)
    if not path.is_file():
        raise ConfigError(f"{path}: config file does not exist")
    try:
        data = yaml.safe_load(path.read_text())
    except yaml.YAMLError as e:
        where = getattr(e, "problem_mark", None)
        loc = f"line {where.line + 1}, column {where.column + 1}: " if where else ""
        raise ConfigError(f"{path}: {loc}not valid YAML: {getattr(e, 'problem', e)}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(
            f"{path}: (top level): must be a mapping of keys, got {type(data).__name__}"
        )
    return parse_config(data, path)

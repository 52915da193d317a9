"""One Docker network per analyst: their server, their Spark containers and the hub.

Why per analyst: on one shared network every notebook could open connections to every
other analyst's server, Spark processes and the registry. Docker already isolates bridge
networks from each other, so a network per analyst gives, with Docker's own means:

- another analyst's server and Spark: on another bridge, which Docker's isolation rules
  drop;
- the registry and the proxy's API: the registry is only on the platform network, and the
  proxy's API listens on the hub container's loopback;
- the hub: joined to each analyst's network under the alias `hub`, so a notebook reaches
  the hub's API (8081) and public port (8000), and the hub reaches the server.

What Docker has no setting for is a container reaching the host itself (through its
bridge's gateway) and private or link-local addresses beyond it (169.254.169.254, other
hosts on the LAN): :func:`guard_rules` are the few iptables rules that close that, keyed on
the analysts' bridges' interface names (`hsu...`), installed by `hubstack up` and removed
by `hubstack down`. With `network.egress: none` the networks are `internal`: nothing
leaves them at all.

Subnets are cut from `network.analyst_subnets` (default 10.213.0.0/16, /27 each: 2,048
analysts), not from the engine's default address pools (about 30 bridge networks).

The same functions serve the spawner (async, on its thread pool) and the tests.
"""

from __future__ import annotations

import hashlib
import ipaddress
import shutil
import subprocess
import threading
import time
from pathlib import Path

import docker
import docker.errors

from hubstack.config import PlatformConfig
from hubstack.engine import PLATFORM_LABEL

NETWORK_LABEL = "io.hubstack.analyst-network"
"""Label of every analyst's network; its value is the analyst's name."""
BRIDGE_PREFIX = "hsu"
"""Interface names of the analysts' bridges: hsu + 12 hex digits (Linux allows 15)."""
HUB_ALIAS = "hub"
GUARD_CHAIN = "HUBSTACK-ANALYSTS"

# Where a notebook must not go beyond its own network: private, shared and link-local
# ranges (the host's other addresses, the LAN, cloud metadata at 169.254.169.254).
BLOCKED_RANGES = (
    "10.0.0.0/8",
    "172.16.0.0/12",
    "192.168.0.0/16",
    "100.64.0.0/10",
    "169.254.0.0/16",
)


class NetworkError(RuntimeError):
    """An analyst's network could not be made or joined; the message says why."""


def network_name(cfg: PlatformConfig, user: str) -> str:
    return f"{cfg.hub.network}-user-{user}"  # hubstack.engine.platform_containers knows it


def bridge_name(name: str) -> str:
    return BRIDGE_PREFIX + hashlib.sha256(name.encode()).hexdigest()[:12]


def _used_subnets(client) -> set[ipaddress.IPv4Network]:
    used = set()
    for net in client.api.networks():
        for conf in (net.get("IPAM") or {}).get("Config") or []:
            try:
                used.add(ipaddress.IPv4Network(conf.get("Subnet", ""), strict=False))
            except ValueError:
                continue
    return used


def _free_subnets(cfg: PlatformConfig, client):
    pool = ipaddress.IPv4Network(cfg.network.analyst_subnets)
    used = _used_subnets(client)
    for subnet in pool.subnets(new_prefix=cfg.network.analyst_prefix):
        if not any(subnet.overlaps(u) for u in used):
            yield subnet


# One creation at a time in this process: spawns in a burst (hub.spawn.concurrent_starts on
# the spawner's thread pool) would otherwise all pick the same first free subnet and clash
# (30 analysts at once: 6 failed spawns). Creating a network takes milliseconds.
_CREATING = threading.Lock()
# When each analyst's network was last handed to a start of this process: a network with
# only the hub on it may be an analyst's whose container is being created right now.
_HANDED: dict[str, float] = {}
HANDED_GRACE = 120.0


def ensure_network(cfg: PlatformConfig, client, user: str, starting: bool = True):
    """The analyst's network, made when missing (from a free subnet of the pool); STARTING:
    for a start of theirs (False: made ahead, hubstack.hub.ready_networks)."""
    with _CREATING:
        net = _ensure_network(cfg, client, user)
        if starting:
            _HANDED[user] = time.monotonic()
        return net


def _ensure_network(cfg: PlatformConfig, client, user: str):
    name = network_name(cfg, user)
    # Another process (a CLI command, a second hub in tests) may still race: look again.
    for _attempt in range(5):
        try:
            return client.networks.get(name)
        except docker.errors.NotFound:
            pass
        subnet = next(_free_subnets(cfg, client), None)
        if subnet is None and _remove_an_idle_network(cfg, client):
            continue  # a network made ahead (hubstack.hub.ready_networks) gave its subnet
        if subnet is None:
            raise NetworkError(
                f"no free subnet left in network.analyst_subnets {cfg.network.analyst_subnets} "
                f"(/{cfg.network.analyst_prefix} each, {cfg.network.capacity} analysts): stop "
                "idle servers or give a larger pool in the platform config"
            )
        hosts = list(subnet.hosts())
        ipam = docker.types.IPAMConfig(
            pool_configs=[docker.types.IPAMPool(subnet=str(subnet), gateway=str(hosts[0]))]
        )
        try:
            return client.networks.create(
                name,
                driver="bridge",
                internal=cfg.network.egress == "none",
                ipam=ipam,
                labels={NETWORK_LABEL: user, PLATFORM_LABEL: cfg.hub.network},
                options={"com.docker.network.bridge.name": bridge_name(name)},
                check_duplicate=True,
            )
        except docker.errors.APIError as e:
            # Another process took the subnet (or made this very network) meanwhile.
            if "overlap" not in str(e).lower() and "already exists" not in str(e).lower():
                raise NetworkError(f"cannot create the network {name}: {e}") from None
            time.sleep(0.2)
    raise NetworkError(f"cannot create the network {name}: subnets kept clashing")


def _recently_handed(user: str) -> bool:
    """Whether a start of this process took USER's network in the last HANDED_GRACE s."""
    handed = _HANDED.get(user)
    return handed is not None and time.monotonic() - handed < HANDED_GRACE


def remove_idle_network(cfg: PlatformConfig, client, user: str) -> bool:
    """Remove USER's network if nobody but the hub is on it and no start of this process
    took it lately; whether it went. Under the creation lock, so a start that takes the
    network at the same moment either marks it first or makes it anew."""
    with _CREATING:
        return _remove_if_idle(cfg, client, user)


def _remove_if_idle(cfg: PlatformConfig, client, user: str) -> bool:
    return not _recently_handed(user) and remove_network(cfg, client, user)


def _remove_an_idle_network(cfg: PlatformConfig, client) -> bool:
    """Remove one analyst network nobody but the hub is on (one made ahead for an analyst
    who is not starting); whether one went. The caller holds the creation lock."""
    return any(
        _remove_if_idle(cfg, client, net.attrs["Labels"][NETWORK_LABEL])
        for net in analyst_networks(cfg, client)
    )


def ensure_joined(cfg: PlatformConfig, client, user: str, hub_id: str, starting: bool = True):
    """The analyst's network, made when missing, with the hub on it as `hub`."""
    net = ensure_network(cfg, client, user, starting)
    join(net, hub_id, [HUB_ALIAS])
    return net


def join(network, container_id: str, aliases: list[str] | None = None) -> None:
    """Connect a container (e.g. the hub; its full ID) to NETWORK unless it already is."""
    network.reload()
    if container_id in (network.attrs.get("Containers") or {}):  # keyed by full IDs
        return
    try:
        network.connect(container_id, aliases=aliases)
    except docker.errors.APIError as e:
        if "already exists" not in str(e).lower():
            raise NetworkError(
                f"cannot connect {container_id[:12]} to {network.name}: {e}"
            ) from None


def remove_network(cfg: PlatformConfig, client, user: str) -> bool:
    """Remove the analyst's network once nothing but the hub is on it; whether it went."""
    try:
        network = client.networks.get(network_name(cfg, user))  # inspected: its containers now
    except docker.errors.NotFound:
        return False
    members = network.attrs.get("Containers") or {}
    if not all(_is_hub(client, cid) for cid in members):
        return False  # the analyst's server or Spark still runs: keep it
    for cid in members:
        try:
            network.disconnect(cid, force=True)
        except docker.errors.APIError:
            pass
    try:
        network.remove()
    except docker.errors.NotFound:
        return False
    return True


def _is_hub(client, container_id: str) -> bool:
    try:
        labels = client.api.inspect_container(container_id)["Config"]["Labels"] or {}
    except docker.errors.NotFound:
        return True  # gone already: nothing to keep the network for
    return labels.get("com.docker.compose.service") == "hub"


def analyst_networks(cfg: PlatformConfig, client) -> list:
    return client.networks.list(
        filters={"label": [NETWORK_LABEL, f"{PLATFORM_LABEL}={cfg.hub.network}"]}
    )


def remove_analyst_networks(cfg: PlatformConfig, client) -> None:
    """Remove every analyst network of this platform that nothing but the hub is on. Call it
    once the hub is stopped: a running hub makes networks ahead whenever it is idle
    (hubstack.hub.ready_networks)."""
    for net in analyst_networks(cfg, client):
        remove_network(cfg, client, net.attrs["Labels"][NETWORK_LABEL])


def attach_hub(cfg: PlatformConfig, client, hub_container: str) -> int:
    """Join the hub to every analyst network of this platform (after a restart or a new
    hub container); returns how many it joined."""
    nets = analyst_networks(cfg, client)
    for net in nets:
        join(net, hub_container, [HUB_ALIAS])
    return len(nets)


# --- host rules: what Docker has no setting for ------------------------------------------
RESOLV_CONFS = (Path("/etc/resolv.conf"), Path("/run/systemd/resolve/resolv.conf"))


def host_nameservers(paths: tuple[Path, ...] = RESOLV_CONFS) -> list[str]:
    """The resolvers the engine's embedded DNS forwards to: the host's resolv.conf, or
    systemd-resolved's upstream list when the host's names only a loopback stub (which the
    engine skips as well)."""
    for path in paths:
        try:
            text = path.read_text()
        except OSError:
            continue
        found = []
        for line in text.splitlines():
            fields = line.split()
            if len(fields) >= 2 and fields[0] == "nameserver":
                try:
                    address = ipaddress.ip_address(fields[1])
                except ValueError:
                    continue
                if address.version == 4 and not address.is_loopback:
                    found.append(str(address))
        if found:
            return found
    return []


def guard_rules(cfg: PlatformConfig, nameservers: list[str] | None = None) -> list[list[str]]:
    """iptables rules (after the chain's creation): analysts' bridges may talk within
    themselves, to the host's DNS resolvers on port 53 (the engine's embedded DNS forwards
    from inside the container's network namespace), to network.reachable and to public
    addresses only."""
    into = BRIDGE_PREFIX + "+"
    rules = [["-A", GUARD_CHAIN, "-i", into, "-o", into, "-j", "RETURN"]]
    for ns in host_nameservers() if nameservers is None else nameservers:
        rules += [
            ["-A", GUARD_CHAIN, "-i", into, "-d", ns, "-p", proto, "--dport", "53", "-j", "RETURN"]
            for proto in ("udp", "tcp")
        ]
    rules += [
        ["-A", GUARD_CHAIN, "-i", into, "-d", r, "-j", "RETURN"] for r in cfg.network.reachable
    ]
    rules += [["-A", GUARD_CHAIN, "-i", into, "-d", r, "-j", "DROP"] for r in BLOCKED_RANGES]
    rules.append(["-A", GUARD_CHAIN, "-j", "RETURN"])
    return rules


def _iptables(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["iptables", "-w", *args], capture_output=True, text=True)


def guard_installed() -> bool:
    return _iptables("-C", "DOCKER-USER", "-j", GUARD_CHAIN).returncode == 0 and (
        _iptables("-C", "INPUT", "-i", BRIDGE_PREFIX + "+", "-j", "DROP").returncode == 0
    )


def install_guard(cfg: PlatformConfig) -> str:
    """Install (or refresh) the rules; returns '' or why they could not be installed."""
    if shutil.which("iptables") is None:
        return "iptables is not installed on this host"
    probe = _iptables("-S", "DOCKER-USER")
    if probe.returncode != 0:
        return f"cannot read the DOCKER-USER chain (run as root?): {probe.stderr.strip()}"
    if _iptables("-L", GUARD_CHAIN, "-n").returncode != 0:
        _iptables("-N", GUARD_CHAIN)
    _iptables("-F", GUARD_CHAIN)
    for rule in guard_rules(cfg):
        r = _iptables(*rule)
        if r.returncode != 0:
            return f"iptables {' '.join(rule)}: {r.stderr.strip()}"
    if _iptables("-C", "DOCKER-USER", "-j", GUARD_CHAIN).returncode != 0:
        _iptables("-I", "DOCKER-USER", "1", "-j", GUARD_CHAIN)
    # Traffic to the host itself (the gateway's address, any port of the host) never
    # reaches FORWARD: it is INPUT on the bridge's interface.
    host_rule = ["INPUT", "-i", BRIDGE_PREFIX + "+", "-j", "DROP"]
    if _iptables("-C", *host_rule).returncode != 0:
        _iptables("-I", *host_rule)
    return ""


def remove_guard() -> None:
    """Remove the rules (`hubstack down` with no analyst network left on the engine)."""
    while _iptables("-D", "DOCKER-USER", "-j", GUARD_CHAIN).returncode == 0:
        pass
    while _iptables("-D", "INPUT", "-i", BRIDGE_PREFIX + "+", "-j", "DROP").returncode == 0:
        pass
    _iptables("-F", GUARD_CHAIN)
    _iptables("-X", GUARD_CHAIN)


def guard_still_needed(client) -> bool:
    """Whether any platform on this engine is still up or still has an analyst network: the
    rules are engine-wide, and a platform whose servers are all stopped right now will
    spawn again (its read-only registry, a service only hubstack runs, says it is up)."""
    return bool(
        client.networks.list(filters={"label": NETWORK_LABEL})
        or client.containers.list(filters={"label": "com.docker.compose.service=registry-pull"})
    )

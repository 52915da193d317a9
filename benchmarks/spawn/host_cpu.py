"""Where the host's CPU went during a window (a burst of spawns), by process: the engine
(dockerd, containerd, the shims and runc), the commands they run (iptables), the hub's
python and its proxy, the notebook containers, and what else ran.

Containers are counted exactly, from their cgroups (cgroup v1 cpuacct or v2 cpu.stat).
Host processes are sampled from /proc every INTERVAL seconds: a process's own CPU time from
its first to its last sample, plus, for a process still alive at the end, the CPU time of
the children it reaped meanwhile (cutime/cstime), which is how short-lived commands
(iptables run by dockerd, runc run by a shim) are counted although no sample catches them.
What no process accounts for (interrupts, processes that came and went unreaped between two
samples) is the remainder against /proc/stat's busy time.

    sampler = HostCPU(docker_client); sampler.start(); ...; report = sampler.stop()
"""

from __future__ import annotations

import os
import re
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

TICK = os.sysconf("SC_CLK_TCK")
CONTAINER_ID = re.compile(r"[0-9a-f]{64}")

# Host processes by what they are (comm names; Linux cuts them at 15 characters).
HOST_KINDS = {
    "dockerd": "dockerd",
    "containerd": "containerd",
    "containerd-shim": "containerd-shim",
    "containerd-shim-runc-v2": "containerd-shim",
    "runc": "runc",
    "docker-proxy": "docker-proxy",
    "docker-init": "runc",
    "iptables": "iptables",
    "ip6tables": "iptables",
    "xtables-nft-mul": "iptables",
    "xtables-legacy-": "iptables",
    # dockerd re-executing itself: the libnetwork-setkey hook runc runs at each container
    # start, and the chrooted untar of put_archive.
    "exe": "dockerd re-exec (setkey hook, untar)",
}

# What a long-lived process's reaped children are: dockerd runs iptables (and
# docker-proxy, which stays alive and is sampled), a shim runs runc create/start/kill.
CHILDREN = {
    "dockerd": "iptables etc. (run by dockerd)",
    "containerd": "containerd-shim",
    "containerd-shim": "runc",
}


def busy_seconds() -> tuple[float, float]:
    """(busy, all) CPU-seconds of this machine since boot, all cores (/proc/stat)."""
    fields = [int(v) for v in Path("/proc/stat").read_text().split("\n", 1)[0].split()[1:]]
    idle = fields[3] + fields[4]
    total = sum(fields[:8])
    return (total - idle) / TICK, total / TICK


def settled(label: str, below: float = 0.15, window: float = 5, timeout: float = 120) -> str:
    """Wait until the host's CPU has been less than BELOW busy (of all cores) for WINDOW
    seconds, at most TIMEOUT; a line saying how long. Right after `up` or a hub's restart the
    platform is still busy (JupyterHub's start, the Spark cluster's JVMs, the networks made
    ahead), and a round that started there would share the cores with it."""
    t0 = time.perf_counter()
    samples = [busy_seconds()]
    while True:
        time.sleep(1)
        samples = [*samples, busy_seconds()][-int(window) - 1 :]
        (busy0, all0), (busy1, all1) = samples[0], samples[-1]
        share = (busy1 - busy0) / max(all1 - all0, 1e-9)
        if (len(samples) > window and share < below) or time.perf_counter() - t0 >= timeout:
            break
    return (
        f"{'  ' + label + ' settled':<34} waited {time.perf_counter() - t0:5.1f} s "
        f"(host {100 * share:.0f} % busy over the last {window:.0f} s)"
    )


def container_usage() -> dict[str, float]:
    """CPU-seconds used so far by each container, by full ID, from its cgroup."""
    out: dict[str, float] = {}
    v1 = Path("/sys/fs/cgroup/cpuacct/docker")
    if v1.is_dir():
        for d in v1.iterdir():
            if CONTAINER_ID.fullmatch(d.name):
                try:
                    out[d.name] = int((d / "cpuacct.usage").read_text()) / 1e9
                except (OSError, ValueError):
                    pass
        return out
    for base in (Path("/sys/fs/cgroup/system.slice"), Path("/sys/fs/cgroup/docker")):
        if not base.is_dir():
            continue
        for d in base.iterdir():
            m = CONTAINER_ID.search(d.name)
            if not m:
                continue
            try:
                stat = dict(line.split() for line in (d / "cpu.stat").read_text().splitlines())
                out[m.group()] = int(stat["usage_usec"]) / 1e6
            except (OSError, KeyError, ValueError):
                pass
    return out


@dataclass
class Proc:
    comm: str
    ppid: int
    container: str  # full container ID, or "" on the host
    own0: float
    own: float
    reaped0: float
    reaped: float
    alive: bool = True
    cmdline: str = ""


def _read(pid: int) -> tuple[str, int, int, float, float] | None:
    """(comm, ppid, start time, own CPU-s, reaped children's CPU-s) of PID."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    comm = raw[raw.index("(") + 1 : raw.rindex(")")]
    f = raw[raw.rindex(")") + 2 :].split()
    return (
        comm,
        int(f[1]),
        int(f[19]),
        (int(f[11]) + int(f[12])) / TICK,
        (int(f[13]) + int(f[14])) / TICK,
    )


def _cmdline(pid: int) -> str:
    try:
        raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return ""
    return raw.replace(b"\0", b" ").decode(errors="replace").strip()[:80]


def _container_of(pid: int) -> str:
    try:
        text = Path(f"/proc/{pid}/cgroup").read_text()
    except OSError:
        return ""
    m = CONTAINER_ID.search(text)
    return m.group() if m else ""


@dataclass
class Report:
    wall: float
    busy: float
    by_kind: dict[str, float] = field(default_factory=dict)
    largest_other: list[tuple[float, int, str]] = field(default_factory=list)
    """(CPU-s, PID, command line) of the host processes outside the engine that used the
    most: to tell another job's load from ours."""

    def lines(self, starts: int, label: str = "  host CPU-s per start") -> list[str]:
        """The kinds, largest first, as CPU-s per start (STARTS starts in the window)."""
        n = max(starts, 1)
        parts = [
            f"{kind} {cpu / n:.2f}"
            for kind, cpu in sorted(self.by_kind.items(), key=lambda kv: -kv[1])
            if cpu / n >= 0.005
        ]
        out = [f"{label:<34} {self.busy / n:.2f} in all: " + ", ".join(parts[:6])]
        if parts[6:]:
            out.append(f"{'':<34} " + ", ".join(parts[6:]))
        for cpu, pid, cmd in self.largest_other:
            if cpu / n >= 0.05:
                out.append(f"{'    other: ' + str(pid):<34} {cpu / n:.2f} {cmd}")
        return out


class HostCPU:
    """Samples /proc and the containers' cgroups between start() and stop().

    name_container(ID) -> kind names a container (e.g. 'hub', 'notebook containers',
    'other containers'); a container of kind in SPLIT is reported by process instead
    ('hub: python', 'hub: node')."""

    def __init__(self, name_container, split: tuple[str, ...] = ("hub",), interval: float = 0.2):
        self.name_container = name_container
        self.split = split
        self.interval = interval
        self.procs: dict[tuple[int, int], Proc] = {}
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._me = os.getpid()

    def _sample(self, first: bool = False) -> None:
        seen = set()
        for entry in os.scandir("/proc"):
            if not entry.name.isdigit():
                continue
            pid = int(entry.name)
            got = _read(pid)
            if got is None:
                continue
            comm, ppid, started, own, reaped = got
            key = (pid, started)
            seen.add(key)
            p = self.procs.get(key)
            if p is None:
                # Born in the window: all of its CPU is the window's.
                own0, reaped0 = (own, reaped) if first else (0.0, 0.0)
                self.procs[key] = Proc(
                    comm, ppid, _container_of(pid), own0, own, reaped0, reaped, _cmdline(pid)
                )
            else:
                p.own, p.reaped = own, reaped
        for key, p in self.procs.items():
            if key not in seen:
                p.alive = False

    def _run(self) -> None:
        while not self._stop.wait(self.interval):
            self._sample()

    def start(self) -> None:
        self.t0 = time.perf_counter()
        self.busy0 = busy_seconds()[0]
        self.cgroups0 = container_usage()
        self._sample(first=True)
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    _starts_hint = 1

    def stop(self, starts: int = 1) -> Report:
        """The report; other host processes below 0.05 CPU-s per start (STARTS in the
        window) are counted together."""
        self._starts_hint = starts
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        self._sample()
        cgroups = container_usage()
        report = Report(time.perf_counter() - self.t0, busy_seconds()[0] - self.busy0)
        kinds = report.by_kind

        def add(kind: str, cpu: float) -> None:
            if kind:
                kinds[kind] = kinds.get(kind, 0.0) + cpu

        names: dict[str, str] = {}
        for cid, used in cgroups.items():
            names[cid] = self.name_container(cid)
            if names[cid] not in self.split:
                add(names[cid], used - self.cgroups0.get(cid, 0.0))
        alive = {pid: p for (pid, _), p in self.procs.items() if p.alive}
        for (pid, _), p in self.procs.items():
            parent = alive.get(p.ppid) if not p.alive else None
            if parent is not None and self._reaps(parent, p.ppid):
                # In the parent's reaped figure, whole lifetime included: take out what it
                # had used before the window.
                add(self._kind(parent, p.ppid, names, children=True), -(p.own0 + p.reaped0))
                continue
            add(self._kind(p, pid, names), p.own - p.own0)
            if p.alive and self._reaps(p, pid):
                add(self._kind(p, pid, names, children=True), p.reaped - p.reaped0)
        others = [
            (p.own - p.own0, pid, p.cmdline or (_cmdline(pid) if p.alive else "") or p.comm)
            for (pid, _), p in self.procs.items()
            if not p.container and pid != self._me and p.comm not in HOST_KINDS
        ]
        report.largest_other = sorted(others, reverse=True)[:3]
        other = "other host processes"
        for kind in [k for k in kinds if k.startswith(other + ": ")]:
            if kinds[kind] < 0.05 * self._starts_hint:
                add(other, kinds.pop(kind))
        add("unattributed (irq, unsampled)", report.busy - sum(kinds.values()))
        return report

    def _reaps(self, p: Proc, pid: int) -> bool:
        """Whether P's reaped children are counted through it: the engine's daemons and
        this process, whose children are short commands born in the window. Anything
        else's reaped figure may hold a grandchild's whole lifetime (a job's shell reaping
        a test run): those are counted by their own samples instead."""
        if pid == self._me:
            return True
        return not p.container and HOST_KINDS.get(p.comm, "") in CHILDREN

    def _kind(self, p: Proc, pid: int, names: dict[str, str], children: bool = False) -> str:
        """What P's own CPU (or, CHILDREN, its reaped children's) counts as. Containers not
        in SPLIT were counted whole from their cgroups: '' (dropped)."""
        if p.container:
            name = names.get(p.container, "")
            return f"{name}: {_short(p.comm)}" if name in self.split else ""
        if pid == self._me:
            return "benchmark client"  # its HTTP clients and this sampler
        kind = HOST_KINDS.get(p.comm)
        if kind is None:
            return f"other host processes: {p.comm}"
        return CHILDREN.get(kind, kind) if children else kind


def _short(comm: str) -> str:
    if comm.startswith("python") or comm in ("jupyterhub",):
        return "python"
    if comm in ("node", "configurable-h"):
        return "node (proxy)"
    return comm

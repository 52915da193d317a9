#!/usr/bin/env python3
"""Real GPU check: the GPU profile's container, on a real NVIDIA GPU.

Runs on a GPU host with no network and no registry (see docs/gpu.md and
tests/gpu/README.md). With --bundle (made by tests/gpu/make-bundle.sh) it
brings its own Python dependencies, its own engine (when no engine answers)
and its own small bookworm image. Then it:

1. creates the GPU profile's container through hubstack's own code
   (hubstack.hub.gpu.GPUAllocator.reserve + hubstack.hub.container_spec, as the spawner),
   as a non-root analyst UID, all capabilities dropped, no-new-privileges;
2. inside it runs `nvidia-smi -L` and a CUDA probe through ctypes on
   libcuda.so.1 (cuInit, context, 1 GiB allocation), and a torch matrix
   product when a host PyTorch is given (--torch-python, mounted read-only);
3. creates the default profile's container and shows it sees no GPU; and,
   as a control, a container with the driver folder but no device nodes,
   where cuInit must fail: the device nodes are what grants the GPU.

Exit status: 0 all passed, 1 a step failed, 2 this host cannot run the check
(e.g. no NVIDIA device nodes).
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import importlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
import traceback
import uuid
import zipfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
ANALYST = "23456:23456"  # a UID:GID that exists nowhere: nothing about root is needed
LABEL_SCOPE = "io.hubstack.gpu-check"

CUDA_PROBE = r"""
import ctypes, json, sys
out = {}
try:
    cuda = ctypes.CDLL("libcuda.so.1")
except OSError as e:
    print(json.dumps({"error": f"cannot load libcuda.so.1: {e}"})); sys.exit(3)
out["cuInit"] = cuda.cuInit(0)
if out["cuInit"] != 0:
    print(json.dumps(out)); sys.exit(4)
n = ctypes.c_int(); cuda.cuDeviceGetCount(ctypes.byref(n)); out["devices"] = n.value
dev = ctypes.c_int(); out["cuDeviceGet"] = cuda.cuDeviceGet(ctypes.byref(dev), 0)
name = ctypes.create_string_buffer(256); cuda.cuDeviceGetName(name, 256, dev)
out["name"] = name.value.decode()
ctx = ctypes.c_void_p()
out["cuCtxCreate"] = cuda.cuCtxCreate_v2(ctypes.byref(ctx), 0, dev)
ptr = ctypes.c_uint64(); size = 1 << 30
out["cuMemAlloc_1GiB"] = cuda.cuMemAlloc_v2(ctypes.byref(ptr), ctypes.c_size_t(size))
out["cuMemsetD8"] = cuda.cuMemsetD8_v2(ptr, ctypes.c_ubyte(7), ctypes.c_size_t(size))
out["cuCtxSynchronize"] = cuda.cuCtxSynchronize()
out["cuMemFree"] = cuda.cuMemFree_v2(ptr)
out["cuCtxDestroy"] = cuda.cuCtxDestroy_v2(ctx)
print(json.dumps(out))
sys.exit(0 if all(v == 0 for k, v in out.items() if k.startswith("cu")) else 5)
"""

TORCH_PROBE = r"""
import json, time, torch
assert torch.cuda.is_available(), "torch.cuda.is_available() is False"
n = 8192
a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
for _ in range(3): a @ b
torch.cuda.synchronize(); t = time.perf_counter(); reps = 20
for _ in range(reps): c = a @ b
torch.cuda.synchronize(); dt = time.perf_counter() - t
print(json.dumps({"torch": torch.__version__, "device": torch.cuda.get_device_name(0),
                  "tflops_bf16": round(2 * n**3 * reps / dt / 1e12, 1),
                  "finite": bool(torch.isfinite(c).all())}))
"""


class CannotRun(Exception):
    """This host cannot run the check at all (exit 2)."""


class Report:
    def __init__(self) -> None:
        self.rows: list[tuple[str, str, str]] = []

    def add(self, step: str, ok: bool | None, detail: str = "") -> None:
        status = {True: "PASS", False: "FAIL", None: "SKIP"}[ok]
        self.rows.append((status, step, detail))
        print(f"[{status}] {step}" + (f": {detail}" if detail else ""), flush=True)

    @property
    def failed(self) -> bool:
        return any(s == "FAIL" for s, _, _ in self.rows)

    def summary(self) -> str:
        lines = ["", "== hubstack GPU check: summary =="]
        lines += [
            f"  {s:4}  {step}" + (f"  ({d})" if d and s != "PASS" else "")
            for s, step, d in self.rows
        ]
        lines.append("RESULT: " + ("FAILED" if self.failed else "PASSED"))
        return "\n".join(lines)


# ------------------------------------------------------------ preparation


def find_gpu_nodes(dev_root: Path) -> list[str]:
    nodes = sorted(glob.glob(str(dev_root / "nvidia[0-9]*")))
    if not nodes:
        raise CannotRun(
            f"no NVIDIA device nodes ({dev_root}/nvidia[0-9]*) on this host: it has no NVIDIA GPU, "
            "or the "
            "driver's kernel module is not loaded (nvidia-smi on the host creates the nodes). Run "
            "this on a GPU host."
        )
    return nodes


def _import_deps() -> None:
    for name in ("docker", "pydantic", "yaml"):
        importlib.import_module(name)


def python_deps_from_bundle(bundle: Path | None, work: Path) -> None:
    """Make docker-py, pydantic and PyYAML importable, from the bundle's wheels if needed."""
    try:
        _import_deps()
        return
    except ImportError:
        if bundle is None:
            raise CannotRun(
                "this Python lacks docker/pydantic/pyyaml; pass --bundle (tests/gpu/make-bundle.sh)"
            ) from None
    v = f"cp{sys.version_info.major}{sys.version_info.minor}"
    target = work / "pydeps"
    target.mkdir(exist_ok=True)
    chosen: dict[str, Path] = {}
    for whl in sorted((bundle / "wheels").glob("*.whl")):
        parts = whl.name[:-4].split("-")
        dist, pyt, abi, plat = parts[0].lower(), parts[-3], parts[-2], parts[-1]
        fits = (
            ("py3" in pyt.split(".") or v in pyt.split("."))
            and abi in ("none", "abi3", v)
            and (plat == "any" or "x86_64" in plat)
        )
        if fits and dist not in chosen:
            chosen[dist] = whl
    for whl in chosen.values():  # a wheel is a zip of site-packages content
        with zipfile.ZipFile(whl) as z:
            z.extractall(target)
    sys.path.insert(0, str(target))
    try:
        _import_deps()
    except ImportError as e:
        raise CannotRun(
            f"the bundle has no wheel of {e.name} for Python {sys.version.split()[0]}; "
            "rebuild it with PYTHON_VERSIONS including this version"
        ) from None


class Engine:
    """The host's engine if one answers, else Debian's engine from the bundle, privately."""

    def __init__(self, bundle: Path | None, work: Path, own: bool):
        self.bundle, self.work, self.own = bundle, work, own
        self.procs: list[subprocess.Popen] = []
        self.client = None

    def start(self, report: Report):
        import docker

        if not self.own:
            try:
                self.client = docker.from_env(timeout=120)
                self.client.ping()
                report.add("engine", True, f"host engine {self.client.version().get('Version')}")
                return self.client
            except Exception:
                self.client = None
        if self.bundle is None:
            raise CannotRun("no Docker engine answers and no --bundle to bring one")
        eb = self.bundle / "engine"
        env = dict(
            os.environ,
            PATH=f"{eb / 'bin'}:{os.environ.get('PATH', '/usr/bin:/bin')}",
            LD_LIBRARY_PATH=str(eb / "lib"),
        )
        root = self.work / "engine"
        root.mkdir(exist_ok=True)
        csock, dsock = root / "containerd.sock", root / "docker.sock"
        log = open(root / "engine.log", "ab")
        t0 = time.monotonic()
        self.procs.append(
            subprocess.Popen(
                [
                    "containerd",
                    "--address",
                    str(csock),
                    "--root",
                    str(root / "containerd"),
                    "--state",
                    str(root / "containerd-state"),
                ],
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        # dockerd with --bridge=none DELETES a docker0 interface it finds (another engine's
        # default bridge), so it runs in a network namespace of its own; containers here
        # need no network anyway (network_mode none).
        netns = ["unshare", "--net"] if shutil.which("unshare") else []
        if not netns and Path("/sys/class/net/docker0").exists():
            raise CannotRun(
                "another engine's docker0 bridge exists and `unshare` (util-linux) is missing: "
                "starting the bundled dockerd would delete that bridge"
            )
        self.procs.append(
            subprocess.Popen(
                netns
                + [
                    "dockerd",
                    f"--containerd={csock}",
                    f"--host=unix://{dsock}",
                    "--iptables=false",
                    "--bridge=none",
                    f"--data-root={root / 'data'}",
                    f"--exec-root={root / 'exec'}",
                    f"--pidfile={root / 'docker.pid'}",
                ],
                env=env,
                stdout=log,
                stderr=log,
            )
        )
        self.client = None
        for _ in range(
            120
        ):  # dockerd answers within seconds; the client asks its API version at once
            try:
                self.client = docker.DockerClient(base_url=f"unix://{dsock}", timeout=120)
                self.client.ping()
                break
            except Exception:
                self.client = None
                if any(p.poll() is not None for p in self.procs):
                    break
                time.sleep(0.5)
        if self.client is None:
            tail = (root / "engine.log").read_text(errors="replace")[-2000:]
            raise CannotRun(f"the bundled engine did not start; last log lines:\n{tail}")
        report.add(
            "engine",
            True,
            f"bundled dockerd {self.client.version().get('Version')} started in "
            f"{time.monotonic() - t0:.1f} s ({self.client.info().get('Driver')})",
        )
        return self.client

    def stop(self) -> None:
        for p in reversed(self.procs):
            p.terminate()
            try:
                p.wait(20)
            except subprocess.TimeoutExpired:
                p.kill()


def load_image(client, bundle: Path | None, image: str, report: Report) -> str:
    try:
        client.images.get(image)
        report.add("probe image", True, f"{image} present")
        return image
    except Exception:
        pass
    if bundle is None or not (bundle / "image.tar").exists():
        raise CannotRun(f"image {image} is not in the engine and no bundle image.tar to load")
    t0 = time.monotonic()
    with open(bundle / "image.tar", "rb") as f:
        client.images.load(f)
    report.add("probe image", True, f"loaded {image} in {time.monotonic() - t0:.1f} s")
    return image


# ------------------------------------------------------- containers under test


def notebook_container(
    client, cfg, profile_name: str, image: str, dev_root: Path, scope: dict, extra_binds=None
):
    """Create (and start) the container for a profile the way the hub does: the GPU grant from
    hubstack.hub.gpu (GPUAllocator.reserve), identity and lockdown from
    hubstack.hub.container_spec, the very functions the spawner calls."""
    from hubstack.hub import container_spec
    from hubstack.hub.gpu import GPUAllocator

    profile = cfg.profile(profile_name)
    api = client.api
    name = f"hubstack-gpu-check-{profile_name}-{uuid.uuid4().hex[:6]}"
    uid, gid = (int(x) for x in ANALYST.split(":"))
    ident = {"uid": uid, "gid": gid, "groups": [], "home": "/tmp"}

    def create(grant):
        kwargs = container_spec.create_kwargs(
            "gpu-check-analyst", profile_name, ident, scope, grant.labels if grant else None
        )
        host_config = container_spec.host_config(
            ident, grant_host_config=grant.host_config if grant else None
        )
        host_config.update(network_mode="none", init=True)
        if extra_binds:
            host_config["binds"] = {**host_config.get("binds", {}), **extra_binds}
        c = api.create_container(
            image,
            command=["sleep", "900"],
            name=name,
            environment=(grant.environment if grant else {}),
            host_config=api.create_host_config(**host_config),
            **kwargs,
        )
        api.start(c["Id"])
        return c["Id"]

    async def spawn():
        if profile.gpus == 0:
            return create(None), None
        alloc = GPUAllocator(cfg, client, devices_root=dev_root, scope_labels=scope)
        async with alloc.reserve(
            "gpu-check-analyst", profile.gpus, profile_name=profile_name
        ) as grant:
            return await asyncio.to_thread(create, grant), grant

    return asyncio.run(spawn())


def run_in(client, cid: str, argv: list[str], env: dict | None = None) -> tuple[int, str]:
    r = client.api.exec_create(cid, argv, environment=env or {})
    out = client.api.exec_start(r["Id"]).decode(errors="replace")
    return client.api.exec_inspect(r["Id"])["ExitCode"], out.strip()


def last_json(text: str) -> dict:
    for line in reversed(text.splitlines()):
        if line.startswith("{"):
            try:
                return json.loads(line)
            except ValueError:
                break
    return {}


def torch_python_mounts(torch_python: str) -> tuple[str, dict]:
    """Interpreter path and read-only binds that make a host Python with torch usable inside."""
    info = json.loads(
        subprocess.check_output(
            [
                torch_python,
                "-c",
                "import sys, json, os, torch; "
                "print(json.dumps({'exe': os.path.realpath(sys.executable), "
                "'prefixes': sorted({sys.prefix, sys.base_prefix}), 'torch': "
                "os.path.dirname(torch.__file__)}))",
            ],
            text=True,
        )
    )
    for p in info["prefixes"]:
        if p in ("/usr", "/usr/local", "/"):
            raise CannotRun(
                f"{torch_python}'s torch lives in the system Python ({p}), which cannot be mounted "
                "over the "
                "container's; use a self-contained Python (conda, uv/python-build-standalone, or a "
                "venv of one)"
            )
    binds = {p: {"bind": p, "mode": "ro"} for p in info["prefixes"]}
    return torch_python, binds


# ------------------------------------------------------------------ the check


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument(
        "--bundle",
        type=Path,
        help="unpacked bundle folder from make-bundle.sh (engine, image, wheels)",
    )
    ap.add_argument(
        "--dev-root",
        type=Path,
        default=Path("/dev"),
        help="where the /dev/nvidia* nodes are (default /dev)",
    )
    ap.add_argument(
        "--driver-dir",
        type=Path,
        default=None,
        help="driver folder with bin/nvidia-smi and lib64/libcuda.so.1 "
        "(default: gpu.driver_dir, /usr/local/nvidia)",
    )
    ap.add_argument(
        "--config", help="hubstack platform config (default: built-in defaults; gpu.mode auto)"
    )
    ap.add_argument(
        "--image",
        help="probe image (default: the bundle's image.name, else hubstack-gpu-check:bookworm)",
    )
    ap.add_argument(
        "--torch-python",
        help="a host Python that imports torch (self-contained prefix), for the matmul step",
    )
    ap.add_argument(
        "--own-engine", action="store_true", help="start the bundle's engine even if one answers"
    )
    ap.add_argument(
        "--keep", action="store_true", help="leave the containers (and a started engine) running"
    )
    args = ap.parse_args(argv)

    report = Report()
    bundle = args.bundle.resolve() if args.bundle else None
    src = (
        (bundle / "src")
        if bundle and (bundle / "src" / "hubstack").is_dir()
        else HERE.parent.parent
    )
    sys.path.insert(0, str(src))
    work = Path(tempfile.mkdtemp(prefix="hubstack-gpu-check-"))
    engine = None
    client = None
    scope = {LABEL_SCOPE: uuid.uuid4().hex[:10]}
    try:
        nodes = find_gpu_nodes(args.dev_root)
        report.add("device nodes", True, " ".join(nodes))
        python_deps_from_bundle(bundle, work)
        from hubstack.config import load_config, parse_config
        from hubstack.hub.gpu import detect_mode

        cfg = load_config(args.config) if args.config else parse_config({})
        if args.driver_dir:
            cfg = cfg.model_copy(
                update={"gpu": cfg.gpu.model_copy(update={"driver_dir": args.driver_dir})}
            )
        driver = Path(cfg.gpu.driver_dir)
        if not (driver / "bin" / "nvidia-smi").exists():
            raise CannotRun(
                f"no {driver}/bin/nvidia-smi: point --driver-dir (or gpu.driver_dir) at the driver "
                "folder"
            )
        report.add("driver folder", True, str(driver))

        engine = Engine(bundle, work, args.own_engine)
        client = engine.start(report)
        mode = detect_mode(cfg, client)
        report.add(
            "GPU mode",
            True,
            f"{mode} (engine runtimes: {sorted(client.info().get('Runtimes') or {})})",
        )
        image = args.image or (
            (bundle / "image.name").read_text().strip()
            if bundle and (bundle / "image.name").exists()
            else "hubstack-gpu-check:bookworm"
        )
        load_image(client, bundle, image, report)

        torch_py, torch_binds = None, {}
        if args.torch_python:
            torch_py, torch_binds = torch_python_mounts(args.torch_python)

        # 1. The GPU profile's container, through hubstack's code.
        gpu_profile = next((p.name for p in cfg.profiles if p.gpus > 0), None)
        if gpu_profile is None:
            raise CannotRun("the config has no profile with gpus > 0")
        cid, grant = notebook_container(
            client, cfg, gpu_profile, image, args.dev_root, scope, torch_binds
        )
        report.add(
            f"create '{gpu_profile}' container",
            True,
            f"GPUs {list(grant.indices)} via {grant.mode}, user {ANALYST}",
        )
        rc, out = run_in(
            client, cid, ["sh", "-c", "id -u; grep -E '^(CapEff|NoNewPrivs)' /proc/self/status"]
        )
        ok = (
            rc == 0
            and out.splitlines()[0] == ANALYST.split(":")[0]
            and "CapEff:\t0000000000000000" in out
            and "NoNewPrivs:\t1" in out
        )
        report.add(
            "non-root analyst, no capabilities, no-new-privileges", ok, out.replace("\n", "; ")
        )
        rc, out = run_in(client, cid, ["nvidia-smi", "-L"])
        report.add(
            "nvidia-smi -L lists the granted GPU",
            rc == 0 and "GPU 0" in out,
            out.replace("\n", "; "),
        )
        rc, out = run_in(client, cid, ["python3", "-c", CUDA_PROBE])
        probe = last_json(out)
        report.add(
            "CUDA probe: cuInit, context, 1 GiB allocation",
            rc == 0,
            json.dumps(probe) if probe else out[-500:],
        )
        if torch_py:
            rc, out = run_in(client, cid, [torch_py, "-c", TORCH_PROBE])
            report.add(
                "torch bf16 matrix product",
                rc == 0 and last_json(out).get("finite") is True,
                out[-500:],
            )
        else:
            report.add("torch bf16 matrix product", None, "no --torch-python given")

        # 2. The default profile's container sees no GPU.
        cid0, _ = notebook_container(client, cfg, "default", image, args.dev_root, scope)
        rc, out = run_in(
            client,
            cid0,
            ["sh", "-c", "ls /dev/nvidia* 2>/dev/null; command -v nvidia-smi; echo end"],
        )
        report.add("default profile sees no GPU", out.strip() == "end", out.replace("\n", "; "))

        # 3. Control: driver folder and environment, no device nodes -> cuInit fails.
        ctl_binds = {str(driver): {"bind": str(driver), "mode": "ro"}}
        cid1, _ = notebook_container(client, cfg, "default", image, args.dev_root, scope, ctl_binds)
        env = {k: v for k, v in grant.environment.items() if k in ("LD_LIBRARY_PATH", "PATH")} or {
            "LD_LIBRARY_PATH": f"{driver}/lib64:{driver}/lib"
        }
        rc, out = run_in(client, cid1, ["python3", "-c", CUDA_PROBE], env)
        ctl = last_json(out)
        report.add(
            "without device nodes cuInit fails (the nodes are the grant)",
            rc != 0 and ctl.get("cuInit", 0) != 0,
            json.dumps(ctl) if ctl else out[-300:],
        )
    except CannotRun as e:
        report.add("host can run the GPU check", False, str(e))
        print(report.summary())
        return 2
    except Exception as e:  # an unexpected failure is a failed check, said plainly
        traceback.print_exc()
        report.add("unexpected error", False, f"{type(e).__name__}: {e}")
    finally:
        if client is not None and not args.keep:
            for c in client.api.containers(
                all=True, filters={"label": f"{LABEL_SCOPE}={scope[LABEL_SCOPE]}"}
            ):
                client.api.remove_container(c["Id"], force=True)
        if engine is not None and not args.keep:
            engine.stop()
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    print(report.summary())
    return 1 if report.failed else 0


if __name__ == "__main__":
    sys.exit(main())

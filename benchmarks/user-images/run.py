"""Per-user images: cache hit vs fresh one-package build vs building the notebook image,
all in one run against the platform of CONFIG (its registry running, the hierarchy pushed
under hub.notebook_image_tag), plus the bytes the new layers hold beyond the package.

    .venv/bin/python benchmarks/user-images/run.py [-c hubstack.yaml] [--package cowsay==6.1]

Baselines, both without the layer cache: the full notebook image (base, python, spark,
notebook: what an analyst's environment would cost without per-user images), and the
notebook image's own steps on its warm parents.

Targets (issue 12): a hit adds <= 0.2 s to a spawn; a one-package build < 10 % of the
notebook image's build; the new layers hold the package plus at most 1 MB.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

import docker

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from hubstack.config import load_config
from hubstack.images import user as ui
from hubstack.images.build import ImageBuilder
from hubstack.registry import USERS, RegistryClient, auth_config


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("-c", "--config")
    ap.add_argument("--package", default="cowsay==6.1")
    args = ap.parse_args()
    cfg = load_config(args.config)
    client = docker.from_env(timeout=900)
    ref = cfg.image_ref("notebook", cfg.hub.notebook_image_tag)
    info = client.api.inspect_distribution(ref, auth_config=auth_config(cfg))
    parent = f"{ref.rsplit(':', 1)[0]}@{info['Descriptor']['digest']}"
    ident = {"uid": 29999, "gid": 29999, "groups": [], "home": "/home/benchuser"}
    # A unique account line per run: the account layers are fresh, the package layer is
    # forced fresh with nocache below.
    env = ui.UserEnv(pip=(args.package,))
    p = ui.plan(cfg, f"bench{int(time.time()) % 100000}", ident, env, "notebook", parent)

    images = ui.UserImages(cfg, client)
    images.nocache = True
    t = time.monotonic()
    built = images.resolve(p)
    build_s = time.monotonic() - t

    def hit_seconds() -> float:
        t = time.monotonic()
        hit = ui.UserImages(cfg, client).resolve(
            ui.plan(cfg, p.user, ident, env, "notebook", parent)
        )
        assert not hit.built
        return time.monotonic() - t

    # On the host that built it (its engine holds the tag), then as a host that never saw
    # it (tag removed: the registry is asked).
    local_hit_s = statistics.median(hit_seconds() for _ in range(5))
    repo = built.ref.rsplit(":", 1)[0]
    client.api.tag(built.image, repo, "bench-keep")  # keeps the image while its tag goes
    client.images.remove(built.ref)
    registry_hit_s = statistics.median(hit_seconds() for _ in range(5))

    bench_tag = "bench-user-images"
    builder = ImageBuilder(cfg, client, nocache=True, progress=lambda _line: None)
    t = time.monotonic()
    own = builder.build("notebook", tag=bench_tag, parent_tag=cfg.images.tag)  # local
    notebook_own_s = time.monotonic() - t
    assert own.ok, own.error
    t = time.monotonic()
    chain = builder.build_many(["notebook"], tag=bench_tag)
    notebook_s = time.monotonic() - t
    assert all(r.ok for r in chain), [r.error for r in chain if not r.ok]

    history = client.api.history(built.image)
    parent_layers = {h["Id"] for h in client.api.history(parent)}
    new_bytes = sum(h["Size"] for h in history if h["Id"] not in parent_layers)
    files = client.containers.run(
        built.image,
        [
            "python",
            "-c",
            "import importlib.metadata as m, os; d = m.distribution("
            f"{args.package.split('=')[0]!r}); "
            "print(sum(os.path.getsize(f.locate()) for f in d.files "
            "if os.path.exists(f.locate())))",
        ],
        remove=True,
        network_mode="none",
    )
    package_bytes = int(files.decode().strip())
    print(f"cache hit on the building host, median of 5: {local_hit_s:.3f} s (target <= 0.2 s)")
    print(f"cache hit from the registry, median of 5: {registry_hit_s:.3f} s (target <= 0.2 s)")
    print(f"fresh build of {args.package} on a warm parent, incl. push: {build_s:.1f} s")
    print(f"notebook image, full build (base to notebook, no cache): {notebook_s:.1f} s")
    print(f"ratio build / full notebook build: {build_s / notebook_s:.1%} (target < 10 %)")
    print(f"notebook image's own steps on warm parents (no cache): {notebook_own_s:.1f} s")
    print(f"ratio build / notebook's own steps: {build_s / notebook_own_s:.1%}")
    print(
        f"new layers: {new_bytes / 1e6:.2f} MB; package files {package_bytes / 1e6:.2f} MB; "
        f"beyond the package: {(new_bytes - package_bytes) / 1e6:.2f} MB (target <= 1 MB)"
    )
    for r in chain:
        client.images.remove(r.ref)
    # The throwaway analyst's image: locally, and its manifest in the users registry (the
    # next `hubstack images prune-users` garbage collection frees its blobs).
    client.images.remove(f"{repo}:bench-keep")
    registry = RegistryClient(cfg, role=USERS)
    name = ui.repository_name(p.user)
    registry.delete_manifest(name, registry.tag_digests(name)[p.hash])


if __name__ == "__main__":
    main()

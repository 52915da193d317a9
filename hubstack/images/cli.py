"""`hubstack images ...`: graph, bootstrap, build, push, diff, lock."""

from __future__ import annotations

import argparse

from hubstack.config import PlatformConfig
from hubstack.engine import docker_client
from hubstack.errors import CommandError
from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import ImageBuilder, push_image
from hubstack.images.graph import GraphError, ImageGraph
from hubstack.images.lock import lock_images, lockable, stale_reason
from hubstack.images.lockdiff import format_changes, image_diff
from hubstack.images.user import list_user_images, prune_user_images


def _graph(cfg: PlatformConfig) -> ImageGraph:
    try:
        return ImageGraph.from_config(cfg)
    except GraphError as e:
        raise CommandError(str(e)) from None


def cmd_list(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    graph = _graph(cfg)
    defaults = set(graph.default_targets(cfg))
    for name in graph.order():
        ctx = graph[name]
        parent = ctx.parent or (ctx.external[0] if ctx.external else "-")
        note = "" if name in defaults else "  (on demand)"
        print(f"{name:16} FROM {parent:24} {ctx.path.relative_to(cfg.source_root)}{note}")
    return 0


def cmd_bootstrap(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    bootstrap(cfg, docker_client())
    return 0


def _targets(cfg: PlatformConfig, graph: ImageGraph, names: list[str]) -> list[str]:
    try:
        return graph.with_ancestors(names or graph.default_targets(cfg))
    except GraphError as e:
        raise CommandError(str(e)) from None


def cmd_build(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    graph = _graph(cfg)
    client = docker_client()
    order = _targets(cfg, graph, args.names)
    at_once = cfg.images.parallel_builds
    side_by_side = f" (siblings {at_once} at a time)" if at_once > 1 else ""
    print(f"building {len(order)} image(s), parents first{side_by_side}: {' -> '.join(order)}")
    results = ImageBuilder(cfg, client, graph, verbose=args.verbose).build_many(order, tag=args.tag)
    failed = [r for r in results if not r.ok]
    if failed:
        raise CommandError("; ".join(f"{r.name}: {r.error}" for r in failed))
    if args.push:
        for r in results:
            push_image(cfg, client, r.name, args.tag)
    return 0


def cmd_push(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    graph = _graph(cfg)
    client = docker_client()
    for name in _targets(cfg, graph, args.names):
        push_image(cfg, client, name, args.tag)
    return 0


def cmd_diff(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    print("\n".join(format_changes(image_diff(cfg, docker_client(), args.old, args.new))))
    return 0


def cmd_lock(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    graph = _graph(cfg)
    try:
        names = lockable(graph, args.names)
    except GraphError as e:
        raise CommandError(str(e)) from None
    if args.check:
        stale = [r for r in (stale_reason(graph, n) for n in names) if r]
        for line in stale:
            print(line)
        if stale:
            print("refresh with `hubstack images lock` and commit the lock files")
            return 1
        print(f"locks up to date: {', '.join(names) or 'none'}")
        return 0
    results = lock_images(
        cfg, docker_client(), names, tag=args.tag, upgrade=args.upgrade, dpkg=args.dpkg
    )
    print("summary (review with `git diff images/`, then commit the lock files):")
    for r in results:
        print(f"  {r.name}: {r.file}: {r.summary}")
        for change in r.changes:
            print(f"    {change.format()}")
    return 0


def _size(n: int) -> str:
    return f"{n / 1e6:.1f} MB" if n < 1e9 else f"{n / 1e9:.2f} GB"


def cmd_users(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    records = list_user_images(cfg, docker_client())
    if not records:
        print("no per-user images in the registry")
        return 0
    print(f"{'ANALYST':16} {'HASH':32} {'SIZE':>9}  {'BUILT':16}  {'LAST USED':16}  IN USE")
    for r in records:
        built, used = (t.strftime("%Y-%m-%d %H:%M") if t else "-" for t in (r.built, r.used))
        note = "yes" if r.in_use else "no"
        note += "" if r.newest else "  (superseded)"
        print(f"{r.user:16} {r.tag:32} {_size(r.size):>9}  {built:16}  {used:16}  {note}")
    return 0


def cmd_prune_users(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    if args.older_than is not None and args.older_than < 0:
        raise CommandError("--older-than must be 0 or more days")
    removed = prune_user_images(cfg, docker_client(), args.older_than, dry_run=args.dry_run)
    verb = "would remove" if args.dry_run else "removed"
    print(f"{verb} {len(removed)} per-user image(s)")
    return 0


def register(sub: argparse._SubParsersAction) -> None:
    images = sub.add_parser(
        "images", help="the image hierarchy: list, bootstrap, build, push, diff, lock"
    )
    isub = images.add_subparsers(dest="images_command", metavar="ACTION", required=True)

    p = isub.add_parser(
        "list", help="the images in build order, with their parents (from the FROM lines)"
    )
    p.set_defaults(func=cmd_list)

    p = isub.add_parser(
        "bootstrap", help="make sure the base and registry images exist (pull, else build offline)"
    )
    p.set_defaults(func=cmd_bootstrap)

    p = isub.add_parser("build", help="build images and everything they need, in dependency order")
    p.add_argument(
        "names", nargs="*", metavar="NAME", help="images to build (default: all but on-demand ones)"
    )
    p.add_argument("--tag", help="tag to build (default: images.tag)")
    p.add_argument("--push", action="store_true", help="push what was built to the registry")
    p.set_defaults(func=cmd_build)

    p = isub.add_parser(
        "push", help="push images (and their parents) to the registry with its credentials"
    )
    p.add_argument("names", nargs="*", metavar="NAME")
    p.add_argument("--tag", help="tag to push (default: images.tag)")
    p.set_defaults(func=cmd_push)

    p = isub.add_parser(
        "diff",
        help="packages (pip, dpkg) added, removed or changed from image OLD to image NEW",
        description="Compare the package locks two local images carry (read without running "
        "them). Each image is a tag, an image id, REPO@sha256:... or NAME:TAG of ours "
        "(short for REGISTRY/NAMESPACE/NAME:TAG).",
    )
    p.add_argument("old", metavar="OLD", help="the image to compare from")
    p.add_argument("new", metavar="NEW", help="the image to compare to")
    p.set_defaults(func=cmd_diff)

    p = isub.add_parser(
        "users",
        help="per-user images in the registry: analyst, hash, size, built, in use",
        description="Every per-user image (REGISTRY/NAMESPACE/user/NAME:HASH), its size as "
        "stored, when it was built, whether a container of this engine runs it, and whether "
        "a newer one of the same analyst superseded it.",
    )
    p.set_defaults(func=cmd_users)

    p = isub.add_parser(
        "prune-users",
        help="delete per-user images no server uses, then run the registry's GC",
        description="Without --older-than: delete each analyst's superseded per-user images "
        "(all but their newest). With --older-than DAYS: delete every per-user image neither "
        "built nor used for a server start in DAYS; the analyst's next start rebuilds it. "
        "Never an image a container uses. Deletes through the registry API, then runs its "
        "garbage collection.",
    )
    p.add_argument("--older-than", type=float, metavar="DAYS", help="days since built or last used")
    p.add_argument("--dry-run", action="store_true", help="say what would go, delete nothing")
    p.set_defaults(func=cmd_prune_users)

    p = isub.add_parser(
        "lock",
        help="refresh the package locks images are built from (requirements.txt, dpkg.lock)",
        description="For each image with a requirements.in, compile requirements.txt with "
        "pip-compile --generate-hashes in a container of its parent image, its ancestors' "
        "locks as constraints; for each image with a dpkg.lock (or all named, with --dpkg), "
        "build it once without it and record the Debian packages that build installed. "
        "Parents first. Prints what changed; review with git diff and commit.",
    )
    p.add_argument(
        "names",
        nargs="*",
        metavar="IMAGE",
        help="images to lock (default: every image with a requirements.in or a dpkg.lock)",
    )
    p.add_argument("--tag", help="tag of the parent images to resolve in (default: images.tag)")
    p.add_argument(
        "--upgrade",
        action="store_true",
        help="move every package to its newest allowed version (default: keep the pins that "
        "still fit)",
    )
    p.add_argument(
        "--dpkg",
        action="store_true",
        help="also write dpkg.lock for the named images that have none yet (a build each)",
    )
    p.add_argument(
        "--check",
        action="store_true",
        help="run nothing: exit 1 if a requirements.txt is older than its requirements.in or "
        "its ancestors' locks",
    )
    p.set_defaults(func=cmd_lock)

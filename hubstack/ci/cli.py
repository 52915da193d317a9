"""`hubstack ci plan|build|test|promote|release|releases|prune|serve`."""

from __future__ import annotations

import argparse

import tornado.ioloop

from hubstack.ci.plan import make_plan
from hubstack.ci.promote import STABLE, promote
from hubstack.ci.rebuild import rebuild_and_report
from hubstack.ci.release import load_release, release, release_versions, retire
from hubstack.ci.retention import prune
from hubstack.ci.sandbox import run_image_tests
from hubstack.ci.webhook import WebhookBuilder, listen
from hubstack.engine import docker_client
from hubstack.images.graph import ImageGraph
from hubstack.registry import RegistryClient


def cmd_plan(cfg, args) -> int:
    plan = make_plan(cfg, None if args.all else args.since)
    print(plan.to_json() if args.json else plan.format_text())
    return 0


def cmd_build(cfg, args) -> int:
    plan = make_plan(cfg, None if args.all else args.since)
    report = rebuild_and_report(
        cfg, docker_client(), plan, push=args.push, concurrency=args.concurrency or 0
    )
    return 0 if report.ok else 1


def cmd_test(cfg, args) -> int:
    """Run image NAME's test_image.py against NAME:TAG in the sandbox `ci build` uses."""
    folder = ImageGraph.from_config(cfg)[args.name].path  # an unknown NAME: its error
    ref = cfg.image_ref(args.name, args.tag)
    print(f"testing {ref} with {folder}/test_image.py", flush=True)
    passed, output = run_image_tests(cfg, docker_client(), folder, ref)
    print(output)
    return 0 if passed else 1


def cmd_promote(cfg, args) -> int:
    for p in promote(cfg, docker_client(), args.tag, to=args.to, names=args.image or None):
        print(f"  {p.name}: {p.detail}")
    return 0


def cmd_release(cfg, args) -> int:
    rec = release(cfg, docker_client(), args.version, source=args.source)
    print()
    print(rec.format_notes())
    print(f"release notes: {cfg.state_dir / 'releases' / (rec.version + '.md')}")
    print(f"analysts get it once you promote it: hubstack ci promote {rec.version}")
    return 0


def cmd_releases(cfg, args) -> int:
    """Every release in the registry, newest first, with its date and what `stable` is."""
    registry = RegistryClient(cfg)
    names = ImageGraph.from_config(cfg).order()
    anchor = names[-1] if "notebook" not in names else "notebook"
    stable = registry.digest(anchor, STABLE)
    versions = release_versions(registry.tags(anchor))
    if not versions:
        print("no releases yet: hubstack ci release X.Y.Z")
        return 0
    for v in reversed(versions):
        rec = load_release(cfg, str(v))
        digest = registry.digest(anchor, str(v))
        mark = "  <- stable" if digest == stable else ""
        mark += "  (retired)" if rec and rec.retired else ""
        print(f"{v!s:<12} {rec.released[:10] if rec else '(no record here)':<16}{mark}")
    return 0


def cmd_retire(cfg, args) -> int:
    rec = retire(cfg, args.version, undo=args.undo)
    if rec.retired:
        print(
            f"release {rec.version} retired: the spawn form no longer offers it; servers "
            "running it keep it, and analysts who chose it start on stable next time"
        )
    else:
        print(f"release {rec.version} is offered again")
    return 0


def cmd_prune(cfg, args) -> int:
    prune(cfg, docker_client(), keep_releases=args.keep, dry_run=args.dry_run)
    return 0


def cmd_serve(cfg, args) -> int:
    builder = WebhookBuilder(cfg, docker_client(), repository=args.repo or "")
    host, port = args.host or cfg.ci.host, args.port or cfg.ci.port
    listen(builder, host, port)
    builder.start()
    print(
        f"hubstack ci builder on http://{host}:{port}/ (hook: POST /hook, branches "
        f"{', '.join(cfg.ci.branches)}; "
        f"secret in {cfg.webhook_secret_file})",
        flush=True,
    )
    try:
        tornado.ioloop.IOLoop.current().start()
    finally:
        builder.stop(timeout=5)
    return 0


def add_since_arguments(p: argparse.ArgumentParser) -> None:
    """--since REF | --all: which images a rebuild takes (ci build, ci plan, upgrade)."""
    g = p.add_mutually_exclusive_group(required=True)
    g.add_argument(
        "--since",
        metavar="REF",
        help="git revision to compare HEAD with (e.g. origin/main, HEAD~1)",
    )
    g.add_argument(
        "--all", action="store_true", help="every image, as if nothing had been built before"
    )


def register(subparsers) -> None:
    ci = subparsers.add_parser(
        "ci", help="change detection, rebuild and promotion of images; webhook builder"
    )
    sub = ci.add_subparsers(dest="ci_command", metavar="ACTION", required=True)

    p = sub.add_parser(
        "plan", help="list, in build order, the images changed since REF and those built FROM them"
    )
    add_since_arguments(p)
    p.add_argument("--json", action="store_true", help="machine-readable output")
    p.set_defaults(func=cmd_plan)

    p = sub.add_parser(
        "build", help="rebuild, test and tag the plan; with --push move latest in the registry"
    )
    add_since_arguments(p)
    p.add_argument(
        "--push",
        action="store_true",
        help="push NAME:<commit> and move NAME:latest after tests pass",
    )
    p.add_argument(
        "--concurrency",
        type=int,
        metavar="N",
        help="images built at once (default images.parallel_builds)",
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "test",
        help="run image NAME's test_image.py against NAME:TAG in the sandbox `ci build` uses",
    )
    p.add_argument("name", metavar="NAME", help="an image of the graph (`hubstack images list`)")
    p.add_argument("--tag", help="the tag to test (default images.tag)")
    p.set_defaults(func=cmd_test)

    p = sub.add_parser(
        "promote", help="move `stable` to a release or tested commit (roll back: an older one)"
    )
    p.add_argument(
        "tag", metavar="TAG", help="a release X.Y.Z, or a commit tag `ci build --push` produced"
    )
    p.add_argument("--to", default="stable", help="the tag to move (default stable)")
    p.add_argument("--image", action="append", metavar="NAME", help="only this image (repeatable)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "release",
        help="tag every image's tested build as X.Y.Z and X.Y (never re-tags X.Y.Z); "
        "write release notes",
    )
    p.add_argument("version", metavar="X.Y.Z", help="the release's semantic version")
    p.add_argument(
        "--from",
        dest="source",
        metavar="TAG",
        help="the tag to release: images.tag (default, what CI tested last) or a commit",
    )
    p.set_defaults(func=cmd_release)

    p = sub.add_parser(
        "retire", help="stop offering release X.Y.Z on the spawn form (running servers keep it)"
    )
    p.add_argument("version", metavar="X.Y.Z")
    p.add_argument("--undo", action="store_true", help="offer it again")
    p.set_defaults(func=cmd_retire)

    p = sub.add_parser("releases", help="list the releases in the registry, newest first")
    p.set_defaults(func=cmd_releases)

    p = sub.add_parser(
        "prune",
        help="remove old releases and commit tags from the registry (keeps stable, latest, "
        "the newest ci.keep_releases releases and images in use), then garbage-collect",
    )
    p.add_argument(
        "--keep", type=int, metavar="N", help="releases to keep (default ci.keep_releases)"
    )
    p.add_argument("--dry-run", action="store_true", help="say what would go, remove nothing")
    p.set_defaults(func=cmd_prune)

    p = sub.add_parser(
        "serve", help="webhook builder: GitHub/Gitea push events -> builds, with a status page"
    )
    p.add_argument("--host", help="listen address (default ci.host)")
    p.add_argument("--port", type=int, help="listen port (default ci.port)")
    p.add_argument("--repo", help="git URL or path to clone and build (default: source_dir)")
    p.set_defaults(func=cmd_serve)

"""`hubstack ci plan|build|promote|serve`."""

from __future__ import annotations

import argparse

import tornado.ioloop

from hubstack.ci.plan import make_plan
from hubstack.ci.promote import promote
from hubstack.ci.rebuild import rebuild_and_report
from hubstack.ci.webhook import WebhookBuilder, listen
from hubstack.engine import docker_client


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


def cmd_promote(cfg, args) -> int:
    for p in promote(cfg, docker_client(), args.tag, to=args.to, names=args.image or None):
        print(f"  {p.name}: {p.detail}")
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
        "--concurrency", type=int, metavar="N", help="images built at once (default ci.concurrency)"
    )
    p.set_defaults(func=cmd_build)

    p = sub.add_parser(
        "promote", help="move `stable` to a tested commit tag (roll back: an older tag)"
    )
    p.add_argument("tag", metavar="TAG", help="a commit tag that `ci build --push` produced")
    p.add_argument("--to", default="stable", help="the tag to move (default stable)")
    p.add_argument("--image", action="append", metavar="NAME", help="only this image (repeatable)")
    p.set_defaults(func=cmd_promote)

    p = sub.add_parser(
        "serve", help="webhook builder: GitHub/Gitea push events -> builds, with a status page"
    )
    p.add_argument("--host", help="listen address (default ci.host)")
    p.add_argument("--port", type=int, help="listen port (default ci.port)")
    p.add_argument("--repo", help="git URL or path to clone and build (default: source_dir)")
    p.set_defaults(func=cmd_serve)

"""`hubstack upgrade --since REF`: new images to a running platform, analysts left working.

1. rebuild: the images changed since REF and those built FROM them, tested, pushed as
   NAME:<commit>; `latest` moves only for images whose tests passed (hubstack.ci.rebuild).
   Any failure stops the upgrade here: `stable` and the running services stay as they are.
2. promote: `stable` moves to the commit tag (hubstack.ci.promote).
3. restart: `docker compose up -d --wait` recreates only the services whose image changed
   (the hub); notebook servers and their Spark clusters are not touched, and the hub finds them
   again from its database.
4. report: who still runs an older image (hubstack.envreport), and how to ask them to
   restart (`hubstack announce`). Nobody's server is restarted behind their back.
"""

from __future__ import annotations

from hubstack.ci.cli import add_since_arguments
from hubstack.ci.plan import make_plan
from hubstack.ci.promote import STABLE, promote
from hubstack.ci.rebuild import rebuild_and_report
from hubstack.config import PlatformConfig
from hubstack.engine import docker_client
from hubstack.envreport import env_report
from hubstack.errors import CommandError
from hubstack.stack import Stages, compose, render_env, wait_for_hub

STAGES = ("rebuild", "promote", "restart", "report")


def cmd_upgrade(cfg: PlatformConfig, args) -> int:
    stage = Stages("upgrade", STAGES)
    client = docker_client()
    plan = make_plan(cfg, None if args.all else args.since)
    stage("rebuild", f"{len(plan.items)} image(s): build, test, push; latest moves after tests")
    if plan.items:
        report = rebuild_and_report(cfg, client, plan, push=True)
        if not report.ok:
            raise CommandError(
                "upgrade stopped after the rebuild: "
                + ", ".join(f"{f.name} ({f.stage})" for f in report.failed)
                + f" failed; {STABLE} and the running services are unchanged"
            )
        stage("promote", f"{STABLE} -> {report.tag}")
        for p in promote(cfg, client, report.tag, to=STABLE):
            print(f"  {p.name}: {p.detail}", flush=True)
    else:
        stage("promote", "nothing was rebuilt: nothing to promote")
    stage("restart", "services whose image changed (notebook servers untouched)")
    render_env(cfg)
    compose(cfg, "up", "-d", "--wait")
    wait_for_hub(cfg)
    stage("report", "who runs an older image")
    entries, note = env_report(cfg, client, STABLE)
    if note:
        print(f"note: {note}")
    old = [e for e in entries if e.status == "outdated"]
    for e in old:
        print(f"  {e.analyst} ({e.kind}, {e.container}): {len(e.changes or [])} package change(s)")
    print(
        f"hubstack upgraded in {stage.total()}; "
        f"{len(old)} of {len(entries)} running container(s) on an older image"
        + (
            " (details: `hubstack env report`; ask them to restart: "
            "`hubstack announce 'New environment: please restart your server'`)"
            if old
            else ""
        )
    )
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "upgrade",
        help="rebuild changed images, test, move stable, restart the hub; servers untouched",
        description="Rebuild the images changed since REF (and those built FROM them), test "
        "and push them, move stable, recreate the services whose image changed, and list "
        "the analysts still on an older image. Running notebook servers are never restarted.",
    )
    add_since_arguments(p)
    p.set_defaults(func=cmd_upgrade)

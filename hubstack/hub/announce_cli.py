"""`hubstack announce TEXT | --clear`: set the hub's banner (hubstack.hub.announce)."""

from __future__ import annotations

import io
import tarfile
import time

from hubstack.config import PlatformConfig
from hubstack.engine import docker_client, service_container
from hubstack.errors import CommandError
from hubstack.hub.announce import ANNOUNCEMENT_FILE, MAX_CHARS


def set_announcement(cfg: PlatformConfig, client, text: str) -> None:
    """Write TEXT (empty: no banner) into the running hub's volume; the engine writes it,
    nothing runs in the hub."""
    if len(text) > MAX_CHARS:
        raise CommandError(f"the announcement has {len(text)} characters; at most {MAX_CHARS}")
    data = text.strip().encode("utf-8")
    info = tarfile.TarInfo(ANNOUNCEMENT_FILE.name)
    info.size, info.mode, info.mtime = len(data), 0o644, int(time.time())
    archive = io.BytesIO()
    with tarfile.open(fileobj=archive, mode="w") as tar:
        tar.addfile(info, io.BytesIO(data))
    hub = service_container(cfg, client, "hub")
    if hub is None:
        raise CommandError("the hub is not running: `hubstack up` first")
    hub.put_archive(str(ANNOUNCEMENT_FILE.parent), archive.getvalue())


def cmd_announce(cfg: PlatformConfig, args) -> int:
    if not args.clear and not args.text:
        raise CommandError("give the announcement's TEXT, or --clear")
    set_announcement(cfg, docker_client(), "" if args.clear else args.text)
    print("announcement cleared" if args.clear else "announcement shown on every hub page")
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "announce",
        help="show a banner on every hub page (e.g. 'restart your server for the new image')",
        description="Set or clear the banner JupyterHub shows on every page. Takes effect at "
        "the next page load; no restart.",
    )
    p.add_argument("text", metavar="TEXT", nargs="?", help="the banner's text (plain text)")
    p.add_argument("--clear", action="store_true", help="remove the banner")
    p.set_defaults(func=cmd_announce)

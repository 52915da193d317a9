"""`hubstack` command line: one entry point, one sub-command group per area.

Each area registers its own sub-commands (``register(subparsers)``) in its own
module, so the CLI mirrors the package: images, registry, users, stack, ci.
"""

from __future__ import annotations

import argparse
import importlib
import logging
import sys

from hubstack import __version__
from hubstack.config import ConfigError, load_config
from hubstack.errors import CommandError

# Modules that add sub-commands; each exposes register(subparsers).
COMMAND_MODULES = (
    "hubstack.images.cli",
    "hubstack.hub.users_cli",
    "hubstack.hub.gpus_cli",
    "hubstack.nodes",
    "hubstack.hub.announce_cli",
    "hubstack.stack",
    "hubstack.envreport",
    "hubstack.backup",
    "hubstack.upgrade",
    "hubstack.ci.cli",
    "hubstack.doctor",
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="hubstack",
        description="Build, run and operate the hubstack JupyterHub platform.",
    )
    parser.add_argument("--version", action="version", version=f"hubstack {__version__}")
    parser.add_argument(
        "-c",
        "--config",
        metavar="FILE",
        help="platform config (default: $HUBSTACK_CONFIG, ./hubstack.yaml, "
        "/etc/hubstack/hubstack.yaml, else the defaults)",
    )
    parser.add_argument("-v", "--verbose", action="store_true", help="log debug details")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMAND_MODULES:
        # No fallback: a command module that does not import is a bug, not an absent feature.
        importlib.import_module(name).register(sub)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(message)s",
    )
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        cfg = load_config(args.config)
        return args.func(cfg, args) or 0
    except (ConfigError, CommandError) as e:
        print(f"hubstack: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("hubstack: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())

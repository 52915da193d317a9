"""`hubstack gpus`: this node's GPUs and which analyst holds each (hubstack.hub.gpu)."""

from __future__ import annotations

import argparse
import os

from hubstack.config import PlatformConfig
from hubstack.engine import docker_client
from hubstack.hub.gpu import SCAN_ROOT_ENV, format_gpu_status


def cmd_gpus(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    print("\n".join(format_gpu_status(cfg, docker_client(), args.dev)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser("gpus", help="show this node's GPUs and which analyst holds each")
    p.add_argument(
        "--dev",
        default=os.environ.get(SCAN_ROOT_ENV) or "/dev",
        help=f"where the /dev/nvidia* device nodes are (default ${SCAN_ROOT_ENV} or /dev)",
    )
    p.set_defaults(func=cmd_gpus)

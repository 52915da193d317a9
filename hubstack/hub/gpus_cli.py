"""`hubstack gpus`: the GPUs and which analyst holds each: this node's (hubstack.hub.gpu), or
in swarm mode every node's, as the hub hands them out (hubstack.hub.swarm_gpu)."""

from __future__ import annotations

import argparse
import os

from hubstack.config import PlatformConfig
from hubstack.engine import docker_client
from hubstack.hub import swarm_gpu
from hubstack.hub.gpu import SCAN_ROOT_ENV, format_gpu_status


def cmd_gpus(cfg: PlatformConfig, args: argparse.Namespace) -> int:
    client = docker_client()
    if cfg.cluster.mode == "swarm":
        print("\n".join(swarm_gpu.format_gpu_status(cfg, client.api)))
    else:
        print("\n".join(format_gpu_status(cfg, client, args.dev)))
    return 0


def register(subparsers: argparse._SubParsersAction) -> None:
    p = subparsers.add_parser(
        "gpus", help="show the GPUs (in swarm mode every node's) and which analyst holds each"
    )
    p.add_argument(
        "--dev",
        default=os.environ.get(SCAN_ROOT_ENV) or "/dev",
        help=f"where the /dev/nvidia* device nodes are (default ${SCAN_ROOT_ENV} or /dev)",
    )
    p.set_defaults(func=cmd_gpus)

"""Swarm-mode platform configs for unit tests of the stack's shared storage (hub_data,
registry_data) and of backup: secrets and the rendered env written under TMP_PATH."""

from __future__ import annotations

from hubstack import stack
from hubstack.config import PlatformConfig, parse_config


def swarm_config(tmp_path, **cluster) -> PlatformConfig:
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "registry": {"address": "127.0.0.1:25990", "pull_address": "10.1.2.3:25991"},
            "cluster": {"mode": "swarm", **cluster},
        }
    )
    stack.ensure_secrets(cfg)
    stack.render_env(cfg)
    return cfg

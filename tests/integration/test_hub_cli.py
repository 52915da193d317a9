"""`hubstack up` on bad input: a clear error naming the problem; secrets made once, 0600."""

from __future__ import annotations

import stat

import pytest

from hubstack.config import load_config
from tests.integration.hubstack_e2e import hubstack, write_config

pytestmark = pytest.mark.integration


def test_up_without_images_names_the_missing_images_and_keeps_secrets(tmp_path, docker_client):
    config = write_config(tmp_path, "hubtest-noimages", image_ns="hubtest-noimages")
    cfg = load_config(config)
    r = hubstack(config, "up", "--no-build")
    assert r.returncode == 2
    assert "the stack needs images that do not exist here: " in r.stderr
    for name in ("hub", "notebook", "spark-executor"):
        assert cfg.image_ref(name) in r.stderr
    assert cfg.image_ref("gpu") not in r.stderr, "the GPU image is built on demand"
    names = sorted(p.name for p in cfg.secrets_dir.iterdir())
    assert names == [
        "jupyterhub-cookie-secret",
        "jupyterhub-crypt-key",
        "proxy-token",
        "registry-credentials.json",
        "registry-pull-credentials.json",  # the hub's pull-only account (registry roles)
        "registry-pull.htpasswd",
        "registry-users-credentials.json",  # the hub's account for per-user images
        "registry-users.htpasswd",
        "registry.htpasswd",
    ]
    before = {p.name: p.read_text() for p in cfg.secrets_dir.iterdir()}
    for p in cfg.secrets_dir.iterdir():
        assert stat.S_IMODE(p.stat().st_mode) == 0o600
        assert p.read_text().strip() not in r.stdout + r.stderr
    hubstack(config, "up", "--no-build")
    assert {p.name: p.read_text() for p in cfg.secrets_dir.iterdir()} == before, (
        "secrets are made once"
    )
    assert (cfg.state_dir / "hub" / "compose.env").read_text().count("HUBSTACK_HUB_PORT=") == 1

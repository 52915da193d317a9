"""Backup and restore on the real stack: `hubstack backup` of the running shared platform
(hub database, users, secrets, homes, registry storage), then `hubstack restore` into a
second state directory and project on the same engine, `hubstack up` there, and the same
analysts log in, keep their API tokens (they live only in the hub database), and start a
server with the same UID and home contents."""

from __future__ import annotations

import json
import os
import shutil
import stat
import tempfile
from pathlib import Path

import docker
import pytest

from hubstack.backup import volume_name
from hubstack.ci.promote import record_promotion, releases_dir, stable_tag
from hubstack.config import load_config
from hubstack.engine import created_container
from hubstack.hub.container_spec import USER_LABEL
from hubstack.images import user as ui
from hubstack.networks import network_name
from hubstack.stack import local_images
from tests.integration.conftest import ANALYSTS
from tests.integration.hubstack_e2e import HubClient, hubstack, remove_platform, write_config

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def _write_marker(cfg, user: str, text: str) -> Path:
    """A file the analyst owns in their home, as if they had saved a notebook."""
    _, uid, gid, _ = ANALYSTS[user]
    home = cfg.home_root / user
    home.mkdir(parents=True, exist_ok=True)
    os.chown(home, uid, gid)
    home.chmod(0o700)
    marker = home / "backup-marker.txt"
    marker.write_text(text)
    os.chown(marker, uid, gid)
    return marker


@pytest.fixture
def second_platform(hub_stack, docker_client):
    """A second, empty platform on the same engine: own state, ports and project; the same
    image namespace, so the restored registry storage serves its images."""
    cfg, _, _ = hub_stack
    tmp = Path(tempfile.mkdtemp(prefix="hubrestore-"))
    config = write_config(tmp, f"hubrestore-{os.getpid()}", image_ns=cfg.images.namespace)
    cfg2 = load_config(config)
    for name in local_images(cfg, docker_client):  # built once, named for this registry
        docker_client.images.get(cfg.image_ref(name)).tag(cfg2.image_ref(name))
    try:
        yield cfg2, config
    finally:
        hubstack(config, "down")
        remove_platform(cfg2, docker_client)
        shutil.rmtree(tmp, ignore_errors=True)


def test_backup_of_a_running_hub_restores_into_a_second_platform(
    hub_stack, clients, second_platform, docker_client, tmp_path
):
    cfg, config, _ = hub_stack
    cfg2, config2 = second_platform
    alice = clients["alice"]
    marker = _write_marker(cfg, "alice", "saved before the backup\n")
    record_promotion(cfg, "0123456789ab")  # platform state the spawn page reads
    # bob's own packages (he does not start here, so nothing is built).
    ui.save_env(cfg, "bob", ui.UserEnv(pip=("cowsay==6.1",)))
    spec = ui.env_file(cfg, "bob").read_bytes()

    # Backup while the hub runs.
    dest = tmp_path / "backup"
    r = hubstack(config, "backup", str(dest), "--homes", "--registry")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "SECRETS" in r.stdout, "the command says the backup holds secrets"
    manifest = json.loads((dest / "manifest.json").read_text())
    assert {
        "hub/jupyterhub.sqlite",
        "users.yaml",
        "homes.tar.gz",
        "registry.tar",
        "releases/stable.json",
        "envs/bob.yaml",
    } <= set(manifest["files"])
    (releases_dir(cfg) / "stable.json").unlink()
    ui.clear_env(cfg, "bob")
    secrets = [dest / rel for rel in manifest["files"] if rel.startswith("secrets/")]
    assert {p.name for p in secrets} >= {"jupyterhub-crypt-key", "registry-credentials.json"}
    for path in secrets:
        assert stat.S_IMODE(path.stat().st_mode) == 0o600, path
    assert not [p for p in tmp_path.iterdir() if p.name != "backup"], "no partial folder left"

    # A second backup into the same folder is refused; a running platform is not overwritten.
    again = hubstack(config, "backup", str(dest))
    assert again.returncode == 2 and "not empty" in again.stderr
    users_before = cfg.users_file.read_bytes()
    onto_running = hubstack(config, "restore", str(dest))
    assert onto_running.returncode == 2 and "is running" in onto_running.stderr
    assert cfg.users_file.read_bytes() == users_before

    # Restore into the second platform and start it.
    r = hubstack(config2, "restore", str(dest))
    assert r.returncode == 0, r.stdout + r.stderr
    assert (cfg2.home_root / "alice" / marker.name).stat().st_uid == ANALYSTS["alice"][1]
    assert stable_tag(cfg2) == "0123456789ab"
    assert ui.env_file(cfg2, "bob").read_bytes() == spec
    volumes = {volume_name(cfg2, "registry-data"): {"bind": "/r", "mode": "ro"}}
    with created_container(docker_client, cfg2.base.image, volumes=volumes) as storage:
        # The registry's storage came back: the notebook's tag is there before any push.
        tags = f"/r/docker/registry/v2/repositories/{cfg.repository_path('notebook')}/_manifests"
        storage.get_archive(f"{tags}/tags/{cfg.images.tag}")
    r = hubstack(config2, "up", "--no-build")
    assert r.returncode == 0, r.stdout + r.stderr
    assert "log in with an account from the users file" in r.stdout, "no new admin was made"

    # Same analysts, same passwords; alice's API token lives only in the database.
    base2 = f"http://{cfg2.hub.host}:{cfg2.hub.port}"
    for name, (password, *_rest) in ANALYSTS.items():
        assert HubClient(base2, name).login(password).status_code == 302, name
    restored = HubClient(base2, "alice")
    restored.token = alice.token
    assert restored.api("GET", "/hub/api/users/alice").status_code == 200

    # Her server on the restored platform runs as her UID:GID, on her restored home.
    restored.start("default")
    try:
        (container,) = [
            c
            for c in docker_client.containers.list(filters={"label": f"{USER_LABEL}=alice"})
            if network_name(cfg2, "alice") in c.attrs["NetworkSettings"]["Networks"]
        ]
        out = container.exec_run(["sh", "-c", "id -u; id -g; cat ~/backup-marker.txt"])
        assert out.output.decode().split("\n")[:3] == [
            str(ANALYSTS["alice"][1]),
            str(ANALYSTS["alice"][2]),
            "saved before the backup",
        ]
    finally:
        try:
            restored.stop()
        except (AssertionError, docker.errors.APIError):
            pass


def test_restore_refuses_a_damaged_backup(hub_stack, tmp_path):
    cfg, config, _ = hub_stack
    dest = tmp_path / "backup"
    assert hubstack(config, "backup", str(dest)).returncode == 0
    with (dest / "users.yaml").open("a") as f:
        f.write("# edited after the backup\n")
    fresh = tmp_path / "fresh.yaml"
    fresh.write_text(config.read_text().replace(str(cfg.state_dir), str(tmp_path / "state")))
    r = hubstack(fresh, "restore", str(dest))
    assert r.returncode == 2
    assert "users.yaml does not match its checksum" in r.stderr
    assert not (tmp_path / "state" / "users.yaml").exists(), "nothing written"

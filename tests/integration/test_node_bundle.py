"""`hubstack nodes bundle` written for real and installed for real: the engine's packages
as apt resolves them and `apt-get download` fetches them, the platform CA, a `docker save`
of the harness's tiny image from its registry (not the 2 GB notebook hierarchy: the same
code path, a small fraction of the CI time), and the bundle's install.sh run twice:

- in a container of the platform's base image (a minimal Debian bookworm, the system the
  packages are resolved against) with no network at all, with --no-images: dpkg installs
  the engine from the bundle alone, so nothing a bare bookworm node lacks is missing;
- on a fresh engine of the swarm harness (tests/integration/swarm_nodes.py), in its own
  mount namespace as a node's root, with --no-packages: that engine is installed already
  (Debian's own dockerd, the one the suite runs), so its dpkg step has nothing to show.
  The CA lands where the node's engine reads it and the images load into it.
"""

from __future__ import annotations

import json
import os
import subprocess
import time

import docker
import pytest

from hubstack.cli import main
from hubstack.registry import PULL, PUSH, RegistryClient, load_credentials
from tests.conftest import SESSION_ID, write_config
from tests.integration.swarm_nodes import TINY_IMAGE

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def bundle_cfg(swarm_registry, tmp_path_factory):
    """The harness registry's config (same state: its CA and accounts) with one profile on
    the tiny image."""
    data = swarm_registry.cfg.model_dump(mode="json", exclude={"path"})
    data["profiles"] = [{"name": "tiny", "display_name": "Tiny", "image": TINY_IMAGE}]
    return write_config(tmp_path_factory.mktemp("bundle-cfg") / "hubstack.yaml", data)


def test_a_bundle_installs_the_engine_offline_and_loads_the_images_on_a_node(
    swarm, swarm_registry, bundle_cfg, docker_client, tmp_path, capsys
):
    cfg = bundle_cfg
    out = tmp_path / "node-bundle"
    tag = cfg.images.tag
    argv = ["-c", str(cfg.path), "nodes", "bundle", str(out), "--profile", "tiny"]

    # A tag the registry lacks: named, with who needs it, and nothing written.
    assert main([*argv, "--tag", "nosuch"]) == 2
    err = capsys.readouterr().err
    assert f"has no {cfg.images.namespace}/{TINY_IMAGE}:nosuch (profile tiny)" in err
    assert list(tmp_path.iterdir()) == []

    started = time.monotonic()
    assert main([*argv, "--tag", tag]) == 0
    progress = capsys.readouterr().err
    with capsys.disabled():
        print(f"\n[bundle] written in {time.monotonic() - started:.1f}s")
    assert "[bundle] packages: " in progress and "[bundle] images.tar: " in progress
    assert sorted(p.name for p in tmp_path.iterdir()) == ["node-bundle"]  # no partial left

    manifest = json.loads((out / "manifest.json").read_text())
    debs = {p["name"] for p in manifest["packages"]}
    assert {"docker.io", "containerd", "runc", "iptables"} <= debs
    assert len(list((out / "packages").glob("*.deb"))) == len(debs)
    target = f"{cfg.pull_repository(TINY_IMAGE)}:{tag}"
    (image,) = manifest["images"]
    assert image["reference"] == target and image["for"] == ["profile tiny"]
    assert image["digest"] == RegistryClient(cfg).digest(TINY_IMAGE, tag)
    # Every file, each with its sha256, and sha256sum agrees.
    assert set(manifest["files"]) >= {"install.sh", "bundle.env", "images.tar"}
    subprocess.run(["sha256sum", "--quiet", "--strict", "-c", "SHA256SUMS"], cwd=out, check=True)
    # No secret: neither account's password, in any file.
    for role in (PUSH, PULL):
        password = load_credentials(cfg, create=False, role=role).password.encode()
        for f in out.rglob("*"):
            assert not f.is_file() or password not in f.read_bytes(), f"{role} password in {f}"
    assert "token" not in (out / "bundle.env").read_text().lower()
    # The host engine keeps only its own names for the image.
    with pytest.raises(docker.errors.ImageNotFound):
        docker_client.images.get(target)

    # The packages: a bare bookworm with no network installs the engine from them alone.
    started = time.monotonic()
    ran = docker_client.containers.run(
        cfg.base.image,
        ["sh", "-c", "sh /bundle/install.sh --no-images && dockerd --version && runc --version"],
        name=f"hubtest-bundle-{SESSION_ID}",
        network_mode="none",
        volumes={str(out): {"bind": "/bundle", "mode": "ro"}},
        remove=True,
        stderr=True,
    ).decode()
    assert f"installing {len(debs)} packages with dpkg" in ran
    assert "Docker version 20.10" in ran and "runc version" in ran
    assert "To join the swarm: on a manager run 'hubstack nodes join-command" in ran
    with capsys.disabled():
        print(f"[bundle] dpkg install offline in {time.monotonic() - started:.1f}s")
    started = time.monotonic()

    # The CA and the images, on a node's engine of the harness.
    with swarm.extra_node("bundled") as node:
        ca = node.etc_docker / "certs.d" / cfg.registry.pull_address / "ca.crt"
        assert not ca.exists()
        ran_on_node = subprocess.run(
            ["nsenter", "-t", str(node.process.pid), "-m", "-n", "-u"]
            + ["sh", str(out / "install.sh"), "--no-packages"],
            env={**os.environ, "DOCKER_HOST": node.socket},
            capture_output=True,
            text=True,
        )
        assert ran_on_node.returncode == 0, ran_on_node.stdout + ran_on_node.stderr
        assert ca.read_text() == swarm_registry.ca_file.read_text()
        users_ca = node.etc_docker / "certs.d" / cfg.registry.users_address / "ca.crt"
        assert users_ca.read_text() == ca.read_text()  # per-user images pull over TLS too
        loaded = node.client.images.get(target)
        assert loaded.labels["io.hubstack.test"] == "swarm-tiny"
        assert loaded.id == docker_client.images.get(cfg.image_ref(TINY_IMAGE, tag)).id
        # What a service names (the image by digest) is then the loaded image: the node
        # fetches the manifest with the pull account over TLS (the CA just placed), no layer.
        events = list(
            node.client.api.pull(
                cfg.pull_repository(TINY_IMAGE),
                tag=image["digest"],
                auth_config=swarm_registry.pull_auth,
                stream=True,
                decode=True,
            )
        )
        statuses = [e.get("status", "") for e in events]
        assert not [e for e in events if "error" in e], events
        assert not any(s in ("Downloading", "Pull complete") for s in statuses), statuses
        by_digest = f"{cfg.pull_repository(TINY_IMAGE)}@{image['digest']}"
        assert node.client.images.get(by_digest).id == loaded.id
    with capsys.disabled():
        print(f"[bundle] node: CA and images in {time.monotonic() - started:.1f}s")

"""Registry roles on the real stack (`hubstack up`): the pull-only account the hub and the
nodes hold reads the registry but cannot push or delete; the builder's push account can; the
hub's users account pushes per-user images to their own instance and cannot reach the
blessed images; the hub holds no other credential, and a spawned notebook shows none."""

from __future__ import annotations

import io
import json
import tarfile
import uuid

import docker
import pytest
import requests

from hubstack.engine import service_container
from hubstack.errors import CommandError
from hubstack.hub.container_spec import USER_LABEL
from hubstack.registry import PULL, PUSH, USERS, RegistryClient, auth_config, load_credentials

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PROBE = "roles-probe"  # a repository of this test's own: nothing the stack needs


def unique_image(docker_client, repository: str, tag: str) -> str:
    """A one-file image with content no other image has, so its manifest is this test's."""
    data = f"roles probe {uuid.uuid4()}\n".encode()
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("probe.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    docker_client.api.import_image_from_data(buf.getvalue(), repository=repository, tag=tag)
    return f"{repository}:{tag}"


def push(docker_client, repository: str, tag: str, auth: dict) -> str:
    """The engine's push; returns its error, or '' when it worked."""
    for line in docker_client.images.push(
        repository, tag, stream=True, decode=True, auth_config=auth
    ):
        if "error" in line:
            return line["error"]
    return ""


def passwords(cfg) -> dict[str, str]:
    return {
        role: load_credentials(cfg, create=False, role=role).password
        for role in (PUSH, PULL, USERS)
    }


def test_pull_credential_reads_but_its_push_and_delete_are_refused(hub_stack, docker_client):
    cfg, _, _ = hub_stack
    pull, builder = RegistryClient(cfg, role=PULL), RegistryClient(cfg)
    tag = cfg.images.tag
    # Reads work: the same manifests as the push address, from the same storage.
    digest = pull.digest("notebook", tag)
    assert digest and digest == builder.digest("notebook", tag)
    assert tag in pull.tags("notebook")

    # A manifest PUT (a new tag) and a manifest DELETE: refused by the registry.
    with pytest.raises(CommandError, match="HTTP 405"):
        pull.copy_tag("notebook", tag, "pushed-by-the-pull-account")
    with pytest.raises(CommandError, match="HTTP 405"):
        pull.delete_manifest("notebook", digest)
    assert builder.digest("notebook", tag) == digest, "the image is still there"
    assert "pushed-by-the-pull-account" not in builder.tags("notebook")

    # An engine push of a new image with the pull account: refused at the read-only address,
    # and the push address does not know the account at all.
    repo = f"{cfg.registry.pull_address}/{cfg.images.namespace}/{PROBE}"
    ref = unique_image(docker_client, repo, "pull")
    try:
        assert "405" in push(docker_client, repo, "pull", auth_config(cfg, PULL))
    finally:
        docker_client.images.remove(ref, force=True)
    assert pull.tags(PROBE) == []
    creds = load_credentials(cfg, create=False, role=PULL)
    at_push = requests.get(
        f"http://{cfg.registry.address}/v2/", auth=(creds.username, creds.password), timeout=30
    )
    assert at_push.status_code == 401


def test_push_credential_pushes_tags_and_deletes(hub_stack, docker_client):
    cfg, _, _ = hub_stack
    pull, builder = RegistryClient(cfg, role=PULL), RegistryClient(cfg)
    repo = cfg.image_repository(PROBE)
    ref = unique_image(docker_client, repo, "push")
    try:
        assert push(docker_client, repo, "push", auth_config(cfg)) == ""
    finally:
        docker_client.images.remove(ref, force=True)
    digest = builder.copy_tag(PROBE, "push", "tagged")
    # What the builder pushed, the hub's account reads at once (one storage).
    assert pull.digest(PROBE, "tagged") == digest
    builder.delete_manifest(PROBE, digest)
    assert builder.digest(PROBE, "push") is None and pull.digest(PROBE, "push") is None


def test_users_credential_pushes_per_user_images_but_cannot_touch_the_blessed_ones(
    hub_stack, docker_client
):
    cfg, _, _ = hub_stack
    users, builder = RegistryClient(cfg, role=USERS), RegistryClient(cfg)
    creds = load_credentials(cfg, create=False, role=USERS)
    # Neither blessed instance knows the account: no read, push or delete there.
    for address in (cfg.registry.address, cfg.registry.pull_address):
        r = requests.get(f"http://{address}/v2/", auth=(creds.username, creds.password), timeout=30)
        assert r.status_code == 401, address
    repo = cfg.image_repository(PROBE)
    ref = unique_image(docker_client, repo, "users")
    try:
        assert push(docker_client, repo, "users", auth_config(cfg, USERS)) != ""
    finally:
        docker_client.images.remove(ref, force=True)
    assert builder.tags(PROBE) == []
    # Its own instance is another storage: the blessed images are not there to delete.
    assert users.tags("notebook") == [] and builder.digest("notebook", cfg.images.tag)
    own = cfg.user_image_repository(PROBE)
    ref = unique_image(docker_client, own, "users")
    try:
        assert push(docker_client, own, "users", auth_config(cfg, USERS)) == ""
    finally:
        docker_client.images.remove(ref, force=True)
    digest = users.digest(PROBE, "users")
    assert digest and builder.digest(PROBE, "users") is None
    users.delete_manifest(PROBE, digest)
    assert users.digest(PROBE, "users") is None


def test_hub_container_holds_only_the_pull_and_users_credentials(hub_stack, docker_client):
    cfg, _, _ = hub_stack
    secret = passwords(cfg)
    hub = service_container(cfg, docker_client, "hub")
    listing = hub.exec_run(["ls", "/run/secrets"]).output.decode().split()
    assert "registry_pull_credentials" in listing and "registry_credentials" not in listing
    held = json.loads(hub.exec_run(["cat", "/run/secrets/registry_pull_credentials"]).output)
    assert held["password"] == secret[PULL] and held["username"] == cfg.registry.pull_username
    held = json.loads(hub.exec_run(["cat", "/run/secrets/registry_users_credentials"]).output)
    assert held["password"] == secret[USERS] and held["username"] == cfg.registry.users_username
    # The push password nowhere in the hub: not in its secrets, config, state or environment.
    found = hub.exec_run(
        ["grep", "-rlsF", secret[PUSH], "/run/secrets", "/etc/hubstack", "/srv/jupyterhub"]
    )
    assert found.exit_code != 0 and not found.output.strip(), f"found in: {found.output!r}"
    assert secret[PUSH] not in json.dumps(hub.attrs)


def test_notebook_container_and_images_show_no_credential(hub_stack, clients, docker_client):
    cfg, _, _ = hub_stack
    secret = passwords(cfg)
    alice = clients["alice"]
    alice.start()
    try:
        pulled = cfg.pull_repository("notebook")
        mine = [
            c
            for c in docker_client.containers.list(filters={"label": f"{USER_LABEL}=alice"})
            if c.attrs["Config"]["Image"].startswith(pulled)
        ]
        assert len(mine) == 1, "alice's server runs the image pulled from the read-only address"
        inspected = json.dumps(mine[0].attrs) + json.dumps(
            docker_client.api.inspect_image(mine[0].attrs["Image"])
        )
        for role, password in secret.items():
            assert password not in inspected, f"the {role} password is in `docker inspect`"
    finally:
        alice.stop()


def test_no_credential_in_any_layer_of_the_hub_image(hub_stack, docker_client):
    """The hub image is the one that runs next to a credential: none may be baked into it."""
    cfg, _, _ = hub_stack
    needles = [p.encode() for p in passwords(cfg).values()]
    tail = b""
    keep = max(len(n) for n in needles)
    try:
        chunks = docker_client.images.get(cfg.image_ref(cfg.hub.image)).save(chunk_size=1 << 20)
    except docker.errors.ImageNotFound:
        pytest.fail(f"{cfg.image_ref(cfg.hub.image)} is not in the engine")
    for chunk in chunks:
        window = tail + chunk
        assert not any(n in window for n in needles), "a registry password is in an image layer"
        tail = window[-keep:]

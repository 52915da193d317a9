"""What analysts start from, on the real stack: `stable` (which the first `hubstack up` set
to its tested build), not whatever CI pushed as `latest` since; `preview` (latest) only for
those `hub.preview` names."""

from __future__ import annotations

import io

import pytest

from hubstack.ci.promote import STABLE, ensure_local, promote
from hubstack.engine import platform_containers
from hubstack.hub.container_spec import USER_LABEL
from hubstack.images.build import push_image
from hubstack.registry import RegistryClient
from tests.integration.hubstack_e2e import hub_config_changed

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# What a CI build moving `latest` would bring: the notebook image plus one marker file.
NEWER = b"""\
ARG BASE
FROM ${BASE}
USER root
RUN echo preview > /etc/hubstack-preview
USER 1000:100
"""


def _image_of(cfg, docker_client, user: str) -> str:
    (server,) = platform_containers(cfg, docker_client, f"{USER_LABEL}={user}", False)
    return server.attrs["Config"]["Image"]


def test_analysts_start_on_stable_and_preview_only_for_those_named(
    hub_stack, clients, docker_client
):
    cfg, _, _ = hub_stack
    registry = RegistryClient(cfg)
    repo, latest = cfg.image_repository("notebook"), cfg.images.tag
    stable = registry.digest("notebook", STABLE)
    assert stable and stable == registry.digest("notebook", latest), "up set stable itself"

    # CI moves latest; nothing is promoted. (Earlier tests may have dropped this node's
    # copies: take both from the registry, as a node would.)
    ensure_local(cfg, docker_client, ["notebook"], STABLE)
    ensure_local(cfg, docker_client, ["notebook"], latest)
    built = docker_client.images.get(cfg.image_ref("notebook", latest))
    base = docker_client.images.get(cfg.image_ref("notebook", STABLE)).id
    newer, _ = docker_client.images.build(
        fileobj=io.BytesIO(NEWER), buildargs={"BASE": base}, rm=True, pull=False
    )
    newer.tag(repo, latest)
    try:
        preview = push_image(cfg, docker_client, "notebook", latest, progress=lambda line: None)
        assert preview != stable

        bob, alice = clients["bob"], clients["alice"]
        bob.start()
        assert _image_of(cfg, docker_client, "bob") == f"{repo}@{stable}"
        bob.stop()

        with hub_config_changed(
            cfg, docker_client, lambda data: data["hub"].update(preview={"users": ["alice"]})
        ):
            r = bob.api("POST", "/hub/api/users/bob/server", json={"version": "preview"})
            assert r.status_code == 403 and "preview" in r.json()["message"], r.text
            alice.start(version="preview")
            assert _image_of(cfg, docker_client, "alice") == f"{repo}@{preview}"
            marker = alice.run_code("print(open('/etc/hubstack-preview').read())")
            assert marker.strip() == "preview"
            alice.stop()
            alice.start()  # no choice: stable again
            assert _image_of(cfg, docker_client, "alice") == f"{repo}@{stable}"
            alice.stop()
    finally:
        built.tag(repo, latest)
        push_image(cfg, docker_client, "notebook", latest, progress=lambda line: None)


def test_promote_and_rollback_change_the_next_start_and_nothing_running(
    hub_stack, clients, docker_client
):
    cfg, _, _ = hub_stack
    registry = RegistryClient(cfg)
    repo = cfg.image_repository("notebook")
    ensure_local(cfg, docker_client, ["notebook"], STABLE)
    current = docker_client.images.get(cfg.image_ref("notebook", STABLE))
    newer, _ = docker_client.images.build(
        fileobj=io.BytesIO(NEWER), buildargs={"BASE": current.id}, rm=True, pull=False
    )
    # Two commit tags, as `ci build --push` leaves them: the build that is stable now, and a
    # newer tested one.
    old_tag, new_tag = "00000000a0a0", "00000000a1a1"
    for image, tag in ((current, old_tag), (newer, new_tag)):
        image.tag(repo, tag)
        push_image(cfg, docker_client, "notebook", tag, progress=lambda line: None)
    old, new = registry.digest("notebook", old_tag), registry.digest("notebook", new_tag)
    assert old == registry.digest("notebook", STABLE) and new != old

    bob, alice = clients["bob"], clients["alice"]
    bob.start()
    try:
        promote(cfg, docker_client, new_tag, names=["notebook"])
        alice.start()
        assert _image_of(cfg, docker_client, "alice") == f"{repo}@{new}"
        assert alice.run_code("print(open('/etc/hubstack-preview').read())").strip() == "preview"
        alice.stop()
        # Bob's server started before the promotion: still there, still on the old image.
        assert bob.running() and _image_of(cfg, docker_client, "bob") == f"{repo}@{old}"

        promote(cfg, docker_client, old_tag, names=["notebook"])  # the rollback
        alice.start()
        assert _image_of(cfg, docker_client, "alice") == f"{repo}@{old}"
        alice.stop()
    finally:
        if registry.digest("notebook", STABLE) != old:
            promote(cfg, docker_client, old_tag, names=["notebook"])
        bob.stop()

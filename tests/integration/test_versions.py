"""What analysts start from, on the real stack: `stable` (which the first `hubstack up` set
to its tested build), not whatever CI pushed as `latest` since; `preview` (latest) only for
those `hub.preview` names."""

from __future__ import annotations

import html
import io

import pytest

from hubstack import spark, spark_cluster
from hubstack.ci.promote import STABLE, ensure_local, promote, releases_dir
from hubstack.ci.release import release, retire
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
    """The image of USER's notebook server (their Spark containers carry their label too)."""
    (server,) = [
        c
        for c in platform_containers(cfg, docker_client, f"{USER_LABEL}={user}", False)
        if spark_cluster.CLUSTER_LABEL not in c.labels
    ]
    return server.attrs["Config"]["Image"]


def test_analysts_start_on_stable_and_preview_only_for_those_named(
    hub_stack, clients, docker_client
):
    cfg, _, _ = hub_stack
    registry = RegistryClient(cfg)
    repo, latest = cfg.image_repository("notebook"), cfg.images.tag
    pulled = cfg.pull_repository("notebook")  # the hub pulls from the read-only address
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
        assert _image_of(cfg, docker_client, "bob") == f"{pulled}@{stable}"
        bob.stop()

        with hub_config_changed(
            cfg, docker_client, lambda data: data["hub"].update(preview={"users": ["alice"]})
        ):
            r = bob.api("POST", "/hub/api/users/bob/server", json={"version": "preview"})
            assert r.status_code == 403 and "preview" in r.json()["message"], r.text
            alice.start(version="preview")
            assert _image_of(cfg, docker_client, "alice") == f"{pulled}@{preview}"
            marker = alice.run_code("print(open('/etc/hubstack-preview').read())")
            assert marker.strip() == "preview"
            alice.stop()
            alice.start()  # no choice: stable again
            assert _image_of(cfg, docker_client, "alice") == f"{pulled}@{stable}"
            alice.stop()
    finally:
        built.tag(repo, latest)
        push_image(cfg, docker_client, "notebook", latest, progress=lambda line: None)


# A release candidate that differs from stable in one Debian package (less is purged) and
# carries the preview marker; its lock is rewritten, as every image's last root step does.
WITHOUT_LESS = NEWER.replace(
    b"USER 1000:100", b"RUN dpkg --purge less && hubstack-write-lock notebook\nUSER 1000:100"
)


def test_releases_on_the_spawn_page_kept_per_analyst_promoted_and_retired(
    hub_stack, clients, docker_client
):
    cfg, _, _ = hub_stack
    registry = RegistryClient(cfg)
    repo, latest = cfg.image_repository("notebook"), cfg.images.tag
    pulled = cfg.pull_repository("notebook")  # the hub pulls from the read-only address
    quiet = lambda line: None  # noqa: E731
    ensure_local(cfg, docker_client, ["notebook"], STABLE)
    ensure_local(cfg, docker_client, ["notebook"], latest)
    built = docker_client.images.get(cfg.image_ref("notebook", latest))
    old = registry.digest("notebook", STABLE)
    assert old == registry.digest("notebook", latest)
    bob, alice = clients["bob"], clients["alice"]
    try:
        release(cfg, docker_client, "9.0.0", progress=quiet)  # what stable is now
        newer, _ = docker_client.images.build(
            fileobj=io.BytesIO(WITHOUT_LESS), buildargs={"BASE": built.id}, rm=True, pull=False
        )
        newer.tag(repo, latest)
        push_image(cfg, docker_client, "notebook", latest, progress=quiet)
        release(cfg, docker_client, "9.1.0", progress=quiet)
        new = registry.digest("notebook", "9.1.0")
        assert new != old

        bob.start()  # before the promotion: stable is 9.0.0's images
        promote(cfg, docker_client, "9.1.0")

        form = html.unescape(alice.http.get(f"{alice.base}/hub/spawn", timeout=30).text)
        assert "9.1.0 (released" in form and "this is stable" in form
        assert "9.0.0 (released" in form and "less (none) ->" in form, form

        alice.start(version="9.0.0")
        assert _image_of(cfg, docker_client, "alice") == f"{pulled}@{old}"
        alice.stop()
        alice.start()  # no choice given: the release she picked is kept
        assert _image_of(cfg, docker_client, "alice") == f"{pulled}@{old}"
        home = alice.http.get(f"{alice.base}/hub/home", timeout=30).text
        assert "older than stable (9.1.0)" in home
        alice.stop()

        # The promotion left Bob's running server alone; his next start gets it.
        assert bob.running() and _image_of(cfg, docker_client, "bob") == f"{pulled}@{old}"
        bob.stop()
        bob.start()
        assert _image_of(cfg, docker_client, "bob") == f"{pulled}@{new}"
        bob.stop()

        # A release on the Spark profile: the analyst's own cluster runs that release too.
        alice.start(profile="spark", version="9.1.0")
        assert _image_of(cfg, docker_client, "alice") == f"{pulled}@{new}"
        executor = registry.digest(spark.EXECUTOR_IMAGE, "9.1.0")
        cluster = platform_containers(cfg, docker_client, f"{USER_LABEL}=alice", False)
        assert {
            c.attrs["Config"]["Image"] for c in cluster if spark_cluster.CLUSTER_LABEL in c.labels
        } == {f"{cfg.pull_repository(spark.EXECUTOR_IMAGE)}@{executor}"}
        alice.stop()

        retire(cfg, "9.0.0")
        assert "9.0.0 (released" not in alice.http.get(f"{alice.base}/hub/spawn", timeout=30).text
        r = alice.api("POST", "/hub/api/users/alice/server", json={"version": "9.0.0"})
        assert r.status_code == 400 and "not offered" in r.json()["message"], r.text
        alice.start()  # her retired choice: stable now
        assert _image_of(cfg, docker_client, "alice") == f"{pulled}@{new}"
        alice.stop()

        promote(cfg, docker_client, "9.0.0")  # the rollback
        bob.start()
        assert _image_of(cfg, docker_client, "bob") == f"{pulled}@{old}"
        bob.stop()
    finally:
        for c in (alice, bob):
            if c.running():
                c.stop()
        if registry.digest("notebook", STABLE) != old:
            promote(cfg, docker_client, "9.0.0")
        built.tag(repo, latest)
        push_image(cfg, docker_client, "notebook", latest, progress=quiet)
        # Other tests' spawn forms know nothing of these releases.
        for path in releases_dir(cfg).iterdir():
            path.unlink()

"""Per-user images on the real engine and registry (the users instance, beside the
session's blessed one): built once per hash, found in the registry afterwards (even by a
fresh process), rebuilt for a changed spec, the package layer shared by two analysts, one
build for ten concurrent requests, and a package that does not exist failing with pip's
own message."""

from __future__ import annotations

import threading

import docker
import pytest

from hubstack.images import user as ui

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACKAGE = "cowsay==6.1"
"""A small pure-Python package from PyPI that no image of the hierarchy holds."""
ALICE = {"uid": 23101, "gid": 23101, "groups": [23500], "home": "/home/ualice"}
BOB = {"uid": 23102, "gid": 23102, "groups": [], "home": "/home/ubob"}


@pytest.fixture(scope="module")
def parent(hierarchy) -> str:
    return hierarchy["notebook"]["repo_digest"]


@pytest.fixture(scope="module")
def made(platform_config, docker_client):
    """Local tags this module made, removed afterwards (the registry is the session's)."""
    refs: list[str] = []
    yield refs
    for ref in refs:
        try:
            docker_client.images.remove(ref, force=True)
        except docker.errors.APIError:
            pass


def _plan(cfg, user, ident, pip, parent):
    return ui.plan(cfg, user, ident, ui.UserEnv(pip=tuple(pip)), "notebook", parent)


def _run(client, image, command):
    return client.containers.run(
        image, ["/bin/bash", "-c", command], remove=True, network_mode="none"
    ).decode()


def test_a_spec_is_built_once_and_then_found_in_the_registry(
    platform_config, docker_client, registry, users_registry, parent, made
):
    cfg = platform_config
    p = _plan(cfg, "ualice", ALICE, [PACKAGE], parent)
    images = ui.UserImages(cfg, docker_client)
    lines: list[str] = []
    first = images.resolve(p, lines.append)
    made.append(first.ref)
    assert first.built and images.builds_run == 1
    assert first.ref.endswith(f"/user/ualice:{p.hash}")
    assert users_registry.tags("user/ualice") == [p.hash]
    # In the users instance only: the blessed images' storage never holds a per-user image.
    assert first.ref.startswith(f"{cfg.registry.users_address}/")
    assert registry.tags("user/ualice") == []
    digest = users_registry.digest("user/ualice", p.hash)
    assert first.image.endswith(f"@{digest}")
    assert any(line.startswith("[ualice] user: Step ") for line in lines), lines[:5]
    assert any("Pushing" in line for line in lines)
    # The parent's layers went over as the registry stores them (no gzip by the engine):
    # the first per-user image on a platform no longer pushes the whole notebook.
    assert any(line.startswith("Copied ") and "layers of" in line for line in lines), lines[-8:]

    out = _run(
        docker_client,
        first.image,
        "python -c 'import cowsay; print(cowsay.__name__)'; id; getent group g23500",
    )
    assert out.splitlines()[0] == "cowsay"
    # Baked in: the first process is the analyst by name (the spawner adds the groups).
    assert "uid=23101(ualice) gid=23101(ualice)" in out
    assert "g23500:x:23500:ualice" in out
    lock = _run(docker_client, first.image, "cat /usr/share/hubstack/lock/user/pip-freeze.txt")
    assert "cowsay==6.1" in lock.splitlines()
    labels = docker_client.images.get(first.image).labels
    assert labels[ui.LABEL_USER] == "ualice" and labels[ui.LABEL_HASH] == p.hash
    assert labels[ui.LABEL_PARENT] == parent

    # A fresh process (a restarted hub): this engine's tag answers, no build.
    again = ui.UserImages(cfg, docker_client)
    second = again.resolve(_plan(cfg, "ualice", ALICE, [PACKAGE], parent))
    assert not second.built and again.builds_run == 0
    assert second.image == first.image
    # Another host, whose engine never saw it (the tag removed here): a registry hit.
    repo = first.ref.rsplit(":", 1)[0]
    docker_client.api.tag(first.image, repo, "kept-by-test")  # the image outlives its tag
    made.append(f"{repo}:kept-by-test")
    docker_client.images.remove(first.ref)
    third = ui.UserImages(cfg, docker_client).resolve(
        _plan(cfg, "ualice", ALICE, [PACKAGE], parent)
    )
    assert not third.built and third.image == first.image
    assert users_registry.tags("user/ualice") == [p.hash]


def test_a_changed_spec_builds_a_new_tag(
    platform_config, docker_client, users_registry, parent, made
):
    cfg = platform_config
    old = _plan(cfg, "ualice", ALICE, [PACKAGE], parent)
    new = _plan(cfg, "ualice", ALICE, [PACKAGE, "pyjokes==0.8.3"], parent)
    images = ui.UserImages(cfg, docker_client)
    got = images.resolve(new)
    made.append(got.ref)
    assert got.built and new.hash != old.hash
    assert set(users_registry.tags("user/ualice")) == {old.hash, new.hash}


def test_two_analysts_with_one_spec_share_the_package_layer(
    platform_config, docker_client, users_registry, parent, made
):
    cfg = platform_config
    images = ui.UserImages(cfg, docker_client)
    alice = images.resolve(_plan(cfg, "ualice", ALICE, [PACKAGE], parent))
    lines: list[str] = []
    bob = images.resolve(_plan(cfg, "ubob", BOB, [PACKAGE], parent), lines.append)
    made.append(bob.ref)
    layers = {
        who: docker_client.images.get(r.image).attrs["RootFS"]["Layers"]
        for who, r in (("alice", alice), ("bob", bob))
    }
    # Everything up to the package install is one set of layers; only the account differs.
    assert layers["alice"][:-2] == layers["bob"][:-2]
    assert layers["alice"][-2:] != layers["bob"][-2:]
    assert not any("Collecting cowsay" in line for line in lines), "bob's packages were rebuilt"


def test_ten_requests_at_once_run_one_build(
    platform_config, docker_client, users_registry, parent, made
):
    cfg = platform_config
    images = ui.UserImages(cfg, docker_client)
    p = _plan(cfg, "ualice", ALICE, ["pyjokes==0.8.3"], parent)
    results: list[ui.Resolved] = []
    errors: list[BaseException] = []

    def one():
        try:
            results.append(images.resolve(p))
        except BaseException as e:
            errors.append(e)

    threads = [threading.Thread(target=one) for _ in range(10)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(600)
    assert not errors, errors
    made.append(results[0].ref)
    assert images.builds_run == 1
    assert sum(r.built for r in results) == 1
    assert len({r.image for r in results}) == 1


def test_a_package_that_does_not_exist_fails_with_pips_message(
    platform_config, docker_client, users_registry, parent
):
    cfg = platform_config
    p = _plan(cfg, "ualice", ALICE, ["no-such-package-hubstack-12==1.0"], parent)
    with pytest.raises(ui.UserImageError, match="no-such-package-hubstack-12") as failed:
        ui.UserImages(cfg, docker_client).resolve(p)
    assert "No matching distribution" in str(failed.value) or "Could not find" in str(failed.value)
    assert p.hash not in users_registry.tags("user/ualice")


def test_listing_and_pruning_never_touch_an_image_in_use(
    platform_config, docker_client, users_registry, parent, made
):
    cfg = platform_config
    records = ui.list_user_images(cfg, docker_client)
    mine = [r for r in records if r.user == "ualice"]
    assert len(mine) >= 2 and sum(r.newest for r in mine) == 1
    assert all(r.size > 1_000_000 and r.built is not None for r in mine)
    # A server on an older, superseded image of alice's: it must survive every prune.
    oldest = min(mine, key=lambda r: r.built)
    assert not oldest.newest
    image = f"{cfg.user_image_repository('user/ualice')}@{oldest.digest}"
    server = docker_client.containers.run(image, ["sleep", "300"], detach=True)
    try:
        assert any(r.in_use for r in ui.list_user_images(cfg, docker_client) if r.tag == oldest.tag)
        lines: list[str] = []
        removed = ui.prune_user_images(cfg, docker_client, progress=lines.append)
        assert oldest.tag in users_registry.tags("user/ualice")
        assert any(f"kept {oldest.tag}: a container uses it" in line for line in lines), lines
        assert all(not r.newest for r in removed)
        assert any(line.startswith("garbage collection") for line in lines) or not removed
        ui.prune_user_images(cfg, docker_client, older_than_days=0, progress=lines.append)
        assert users_registry.tags("user/ualice") == [oldest.tag]
        assert users_registry.tags("user/ubob") == []
    finally:
        server.remove(force=True)

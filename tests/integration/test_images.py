"""The real hierarchy: built once, pushed, pulled back by digest on an empty engine,
with true locks and labels, unprivileged users and a registry that wants a password."""

from __future__ import annotations

import subprocess
import time

import docker
import pytest
import requests

from hubstack.errors import CommandError
from hubstack.images.build import ImageBuilder, context_digest, push_image
from hubstack.images.graph import ImageGraph
from hubstack.registry import Credentials, RegistryClient, auth_config
from tests.conftest import SESSION_ID
from tests.second_engine import second_engine

pytestmark = [pytest.mark.integration, pytest.mark.slow]

CORE = ["base", "python", "spark", "notebook"]


def run(client: docker.DockerClient, image: str, command: str, **kw) -> str:
    return client.containers.run(image, ["/bin/sh", "-c", command], remove=True, **kw).decode()


@pytest.fixture(scope="module")
def empty_engine():
    """A second dockerd with its own empty image store: a fresh node pulling from the registry."""
    with second_engine() as client:
        assert client.images.list() == []
        yield client


def test_notebook_pulls_back_by_digest_on_an_empty_engine(hierarchy, platform_config, empty_engine):
    nb = hierarchy["notebook"]
    image = empty_engine.images.pull(nb["repo_digest"], auth_config=auth_config(platform_config))
    assert nb["digest"] in " ".join(image.attrs["RepoDigests"])
    assert image.id == nb["image_id"], "the pulled image is not the one that was built"
    out = run(
        empty_engine,
        nb["repo_digest"],
        'python -c "import jupyterlab, pyspark, pandas; print(pyspark.__version__, '
        'pandas.__version__)"; id -u',
        network_mode="none",
    )
    versions, uid = out.split("\n")[:2]
    assert versions.startswith("4.") and uid == "1000"


def test_every_image_runs_unprivileged_by_default(hierarchy, docker_client):
    for name in CORE:
        assert run(docker_client, hierarchy[name]["ref"], "id -u; id -g").split() == [
            "1000",
            "100",
        ], name


def test_locks_are_true(hierarchy, docker_client):
    for name in CORE:
        ref = hierarchy[name]["ref"]
        lock = f"/usr/share/hubstack/lock/{name}"
        dpkg_lock = run(docker_client, ref, f"cat {lock}/dpkg.txt")
        dpkg_now = run(
            docker_client, ref, "dpkg-query --show --showformat='${Package}=${Version}\\n' | sort"
        )
        assert dpkg_lock == dpkg_now and "tini=" in dpkg_lock, name
        pip_lock = run(docker_client, ref, f"cat {lock}/pip-freeze.txt")
        if name == "base":
            assert pip_lock == ""
        else:
            pip_now = run(docker_client, ref, "/opt/venv/bin/python -m pip freeze --all | sort")
            assert pip_lock == pip_now and "jupyterlab==" in pip_lock, name
    assert "pyspark==" in run(
        docker_client,
        hierarchy["notebook"]["ref"],
        "cat /usr/share/hubstack/lock/notebook/pip-freeze.txt",
    )


def test_labels_are_true(hierarchy, docker_client, platform_config):
    cfg = platform_config
    graph = ImageGraph.from_config(cfg)
    for name in CORE:
        labels = docker_client.images.get(hierarchy[name]["ref"]).labels
        digest = context_digest(cfg, graph[name], cfg.source_root)
        assert labels["io.hubstack.image"] == name
        assert labels["io.hubstack.context-digest"] == digest
        assert labels["org.opencontainers.image.version"] == digest[:12]
        head = subprocess.run(
            [
                "git",
                "-C",
                str(cfg.source_root),
                "log",
                "-1",
                "--format=%H",
                "--",
                str(graph[name].path),
            ],
            capture_output=True,
            text=True,
        ).stdout.strip()
        assert labels["org.opencontainers.image.revision"].split("-")[0] == (head or "unknown")
        assert labels["org.opencontainers.image.created"].endswith("Z")
        assert labels["org.opencontainers.image.source"]


def test_rebuild_with_nothing_changed_is_a_cache_hit(hierarchy, docker_client, platform_config):
    builder = ImageBuilder(platform_config, docker_client, progress=lambda line: None)
    for r in builder.build_many(["notebook"], tag="test"):
        assert r.ok and r.cached, r.name
        assert r.image_id == hierarchy[r.name]["image_id"], f"{r.name} changed without a change"


def test_extra_ca_is_trusted_in_every_image(hierarchy, docker_client, platform_config):
    ca = platform_config.base.extra_ca_bundle
    if ca is None:
        pytest.fail("the test config always sets an extra CA bundle")
    first_cert = (
        ca.read_text()
        .split("-----END CERTIFICATE-----")[0]
        .split("-----BEGIN CERTIFICATE-----")[1]
        .strip()
    )
    bundle = run(
        docker_client, hierarchy["notebook"]["ref"], "cat /etc/ssl/certs/ca-certificates.crt"
    )
    assert first_cert.splitlines()[0] in bundle


def test_anonymous_push_is_refused(hierarchy, docker_client, platform_config, registry):
    repo = platform_config.image_repository("base")
    out = list(
        docker_client.api.push(
            repo, "test", stream=True, decode=True, auth_config={"username": "", "password": ""}
        )
    )
    assert any("error" in c for c in out), out
    assert "no basic auth credentials" in str(out) or "unauthorized" in str(out).lower()
    # and the HTTP API, without credentials, answers 401

    assert (
        requests.get(
            f"http://{platform_config.registry.address}/v2/_catalog", timeout=10
        ).status_code
        == 401
    )


def test_wrong_password_is_refused(hierarchy, docker_client, platform_config, registry):
    with pytest.raises(
        CommandError, match="push of .*/base:test failed: .*(unauthorized|authentication required)"
    ):
        push_image(
            platform_config,
            docker_client,
            "base",
            "test",
            progress=lambda line: None,
            auth={
                "username": registry.creds.username,
                "password": "not-the-password",
                "serveraddress": platform_config.registry.address,
            },
        )
    with pytest.raises(CommandError, match="refused user 'hubstack': wrong credentials"):
        RegistryClient(platform_config, Credentials(registry.creds.username, "nope")).tags("base")


def test_registry_lists_what_was_pushed(hierarchy, registry):
    for name in hierarchy:
        assert "test" in registry.tags(name)
        assert registry.digest(name, "test") == hierarchy[name]["digest"]


def test_credentials_file_is_private_and_never_in_the_repo(platform_config, registry):
    path = platform_config.registry_credentials_file
    assert path.stat().st_mode & 0o777 == 0o600
    assert platform_config.source_root.resolve() not in path.resolve().parents
    assert "password=***" in repr(registry.creds)


def test_registry_reports_healthy_when_its_image_has_a_health_check(registry, docker_client):
    """`docker ps` says healthy, not unhealthy: the offline registry image's HEALTHCHECK
    really runs (registry:2 from Docker Hub declares none; compose adds its own)."""
    container = docker_client.containers.get(f"hubstack-test-registry-{SESSION_ID}")
    if not container.image.attrs["Config"].get("Healthcheck"):
        return
    deadline = time.monotonic() + 90
    while True:
        container.reload()
        health = container.attrs["State"]["Health"]
        if health["Status"] == "healthy":
            return
        assert time.monotonic() < deadline, health["Log"][-1:]
        time.sleep(2)

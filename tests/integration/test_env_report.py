"""Who runs which environment: `hubstack env report` and `hubstack images diff` through the
real CLI, on two tiny images FROM the session's real `base` whose locks differ in exactly one
pip package, one of them tagged `stable` and pushed to the session's registry."""

from __future__ import annotations

import io
import json

import docker
import pytest

from hubstack import spark
from hubstack.hub.container_spec import PROFILE_LABEL, USER_LABEL
from hubstack.images.build import IMAGE_LABEL, LINEAGE_LABEL_PREFIX, push_image
from tests.conftest import SESSION_ID, config_data, write_config
from tests.integration.hubstack_e2e import hubstack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

# The image's own lock, plus one fake package whose version is the build argument.
DOCKERFILE = b"""\
ARG BASE
FROM ${BASE}
ARG MARKER_VERSION
USER root
RUN hubstack-write-lock notebook \\
 && echo "envtest-marker==${MARKER_VERSION}" >> /usr/share/hubstack/lock/notebook/pip-freeze.txt
USER 1000:100
"""
CHANGE = "pip    envtest-marker 1.0 -> 2.0"


def build(client, base: str, version: str, tag: str) -> str:
    image, _ = client.images.build(
        fileobj=io.BytesIO(DOCKERFILE),
        tag=tag,
        buildargs={"BASE": base, "MARKER_VERSION": version},
        # What the builder would set (hubstack.images.build.image_labels) for this image.
        labels={IMAGE_LABEL: "notebook", f"{LINEAGE_LABEL_PREFIX}notebook": f"digest-{version}"},
        rm=True,
        pull=False,
    )
    return image.id


def test_env_report_and_images_diff(tmp_path, docker_client, platform_config, hierarchy):
    name = f"envtest-{SESSION_ID}"
    # A platform of its own (namespace, network) on the session's registry, where the report
    # looks `stable` up as the spawner would.
    cfg = write_config(
        tmp_path / "hubstack.yaml",
        config_data(
            tmp_path / "state",
            platform_config.registry.port,
            registry={"credentials_file": str(platform_config.registry_credentials_file)},
            images={"namespace": name, "tag": "latest"},
            hub={"network": name},
        ),
    )
    config = tmp_path / "hubstack.yaml"
    base = docker_client.images.get(hierarchy["base"]["ref"])
    old_ref, stable_ref = cfg.image_ref("notebook", "previous"), cfg.image_ref("notebook", "stable")
    containers, network = [], None
    try:
        old_id = build(docker_client, hierarchy["base"]["ref"], "1.0", old_ref)
        new_id = build(docker_client, hierarchy["base"]["ref"], "2.0", stable_ref)
        stable_digest = push_image(cfg, docker_client, "notebook", "stable")
        network = docker_client.networks.create(name)

        def start(image: str, suffix: str, labels: dict) -> None:
            containers.append(
                docker_client.containers.run(
                    image,
                    ["sleep", "600"],
                    name=f"{name}-{suffix}",
                    labels=labels,
                    network=name,
                    detach=True,
                )
            )

        start(old_id, "nb-alice", {USER_LABEL: "alice", PROFILE_LABEL: "default"})
        start(stable_ref, "nb-bob", {USER_LABEL: "bob", PROFILE_LABEL: "spark"})
        key, _, value = spark.CLUSTER_LABEL.partition("=")
        # carol's Spark worker (an analyst's own cluster carries their user label too).
        start(stable_ref, "nb-carol-spark-worker-1", {key: value, USER_LABEL: "carol"})

        r = hubstack(config, "env", "report", "--json")
        assert r.returncode == 0, r.stderr
        report = json.loads(r.stdout)
        assert report["note"] == "", "the registry was asked"
        by_who = {e["analyst"]: e for e in report["containers"]}
        assert set(by_who) == {"alice", "bob", "carol"}, report
        alice, bob, carol = by_who["alice"], by_who["bob"], by_who["carol"]
        assert (alice["status"], alice["compared_with"]) == ("outdated", stable_ref)
        assert alice["changes"] == [
            {
                "manager": "pip",
                "name": "envtest-marker",
                "old": "1.0",
                "new": "2.0",
                "kind": "changed",
            }
        ]
        assert (alice["image_id"], alice["profile"], alice["container"]) == (
            old_id,
            "default",
            f"{name}-nb-alice",
        )
        assert (bob["status"], bob["changes"], bob["image_id"]) == ("current", None, new_id)
        assert bob["digest"] == stable_digest
        assert (carol["kind"], carol["status"]) == ("spark", "current")
        # The lineage labels, parents first: base's own (inherited through FROM), then ours.
        assert list(alice["lineage"]) == ["base", "notebook"]
        assert alice["lineage"]["base"] == base.labels[f"{LINEAGE_LABEL_PREFIX}base"]
        assert bob["lineage"]["notebook"] == "digest-2.0"

        r = hubstack(config, "env", "report")
        assert r.returncode == 0, r.stderr
        text = r.stdout.splitlines()
        alice_block = text[text.index(f"alice  (profile default)  container {name}-nb-alice") :]
        assert alice_block[3] == f"  status   OUTDATED ({stable_ref})"
        assert alice_block[4] == f"    {CHANGE}"
        assert sum(line.startswith(("    pip", "    dpkg")) for line in text) == 1
        assert f"  status   current ({stable_ref})" in text
        assert text[-1] == "3 container(s): 1 outdated, 2 current, 0 unknown"

        # images diff: an image id, and NAME:TAG short for this platform's repository.
        r = hubstack(config, "images", "diff", old_id, "notebook:stable")
        assert (r.returncode, r.stdout) == (0, CHANGE + "\n"), r.stderr
        r = hubstack(config, "images", "diff", stable_ref, stable_ref)
        assert (r.returncode, r.stdout) == (0, "no package differences\n"), r.stderr
        r = hubstack(config, "images", "diff", old_ref, "notebook:nosuchtag")
        assert r.returncode == 2
        assert "no image 'notebook:nosuchtag' in this engine" in r.stderr
    finally:
        for c in containers:
            c.remove(force=True)
        if network is not None:
            network.remove()
        for ref in (old_ref, stable_ref):
            try:
                docker_client.images.remove(ref, force=True)
            except docker.errors.ImageNotFound:
                pass

"""The webhook builder as a compose service (compose/ci.yaml) beside the platform's stack:
built FROM the hub image, started by plain `docker compose` with compose/.env's settings,
healthy, off the host's network with ci.port published on loopback, reaching the registry's
API from the platform network, answering with the secret from the state dir."""

from __future__ import annotations

import json
import subprocess

import docker
import pytest
import requests

from hubstack import stack
from hubstack.ci.webhook import load_or_create_secret, sign
from hubstack.engine import project_name
from tests.integration.hubstack_e2e import REPO

pytestmark = [pytest.mark.integration, pytest.mark.slow]


def test_webhook_builder_runs_as_a_compose_service(hub_stack, docker_client):
    cfg, _, _ = hub_stack
    stack.render_env(cfg)
    compose = [
        "docker",
        "compose",
        "-f",
        "compose/compose.yaml",
        "-f",
        "compose/ci.yaml",
        "--env-file",
        str(stack.env_file(cfg)),
        "-p",
        project_name(cfg),
    ]
    url = f"http://127.0.0.1:{cfg.ci.port}"
    try:
        r = subprocess.run(
            [*compose, "up", "-d", "--build", "--wait", "ci-builder"],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=900,
        )
        if r.returncode != 0:
            logs = subprocess.run(
                [*compose, "logs", "ci-builder"], cwd=REPO, capture_output=True, text=True
            )
            pytest.fail(
                f"ci-builder did not become healthy:\n{r.stderr[-2000:]}\nits "
                f"log:\n{logs.stdout[-3000:]}"
            )
        assert requests.get(f"{url}/health", timeout=10).json() == {"status": "ok"}
        # Off the host's network, published on loopback only (ci.host, the default).
        (container,) = docker_client.containers.list(
            filters={
                "label": [
                    f"com.docker.compose.project={project_name(cfg)}",
                    "com.docker.compose.service=ci-builder",
                ]
            }
        )
        host_config = container.attrs["HostConfig"]
        assert host_config["NetworkMode"] == cfg.hub.network
        bound = host_config["PortBindings"][f"{cfg.ci.port}/tcp"]
        assert [(b["HostIp"], b["HostPort"]) for b in bound] == [("127.0.0.1", str(cfg.ci.port))]
        # From there it reaches the registry's API by its service name, with its own config.
        probe = container.exec_run(
            [
                "python",
                "-c",
                "from hubstack.config import load_config; from hubstack.registry import "
                "RegistryClient; c = RegistryClient(load_config()); "
                "print(c.base_url, c.digest('hub', c.cfg.images.tag))",
            ]
        )
        assert probe.exit_code == 0, probe.output.decode()
        base_url, digest = probe.output.decode().split()
        assert base_url == "http://registry:5000/v2" and digest.startswith("sha256:")

        body = json.dumps(
            {"ref": "refs/heads/feature", "before": "1" * 40, "after": "2" * 40}
        ).encode()
        headers = {"Content-Type": "application/json", "X-GitHub-Event": "push"}
        bad = requests.post(
            f"{url}/hook",
            data=body,
            timeout=10,
            headers={**headers, "X-Hub-Signature-256": "sha256=" + "0" * 64},
        )
        assert bad.status_code == 401
        # Signed with the secret the service read from the state dir: accepted, and ignored
        # because the branch is not configured, so no build starts.
        secret = load_or_create_secret(cfg.webhook_secret_file)
        ok = requests.post(
            f"{url}/hook",
            data=body,
            timeout=10,
            headers={**headers, "X-Hub-Signature-256": "sha256=" + sign(secret, body)},
        )
        assert ok.status_code == 202 and ok.json()["status"] == "ignored", ok.text
        token = load_or_create_secret(cfg.ci_token_file).decode()
        assert requests.get(f"{url}/api/builds", timeout=10).status_code == 401
        builds = requests.get(
            f"{url}/api/builds", timeout=10, headers={"Authorization": f"token {token}"}
        )
        assert builds.json() == {"builds": []}
    finally:
        subprocess.run(
            [*compose, "rm", "--stop", "--force", "ci-builder"],
            cwd=REPO,
            capture_output=True,
            timeout=120,
        )
        try:
            docker_client.images.remove(f"{cfg.image_ref(cfg.hub.image)}-ci-builder")
        except docker.errors.APIError:
            pass

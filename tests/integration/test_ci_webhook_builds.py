"""The webhook builder end to end: real tornado server on a loopback port, real HTTP
pushes, a clone of a temporary git repo of tiny images, a real engine and registry."""

from __future__ import annotations

import json
import time

import pytest
import requests

from hubstack.ci.rebuild import commit_tag
from hubstack.ci.webhook import WebhookBuilder
from tests.ci_support import (
    WebhookServer,
    change,
    git,
    gitea_headers,
    github_headers,
    manifest_digest,
    push_payload,
    tiny_env,
)

pytestmark = pytest.mark.integration
ZERO = "0" * 40


def wait_for(url: str, build_id: str, statuses: set[str], token: str, limit: float = 300) -> dict:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        rec = requests.get(f"{url}/api/builds/{build_id}?token={token}", timeout=10).json()
        if rec["status"] in statuses:
            return rec
        time.sleep(0.2)
    raise AssertionError(f"build {build_id} never reached {statuses}: {rec}")


def post(url: str, body: bytes, headers: dict) -> dict:
    r = requests.post(f"{url}/hook", data=body, headers=headers, timeout=30)
    assert r.status_code == 202, r.text
    return r.json()


def test_pushes_during_a_build_coalesce_to_one_build_of_the_last_commit(
    request, tmp_path_factory, docker_client
):
    cfg, repo, _ = tiny_env(request, tmp_path_factory, docker_client, "ci-webhook")
    builder = WebhookBuilder(cfg, docker_client, repository=str(repo))
    secret = builder.secret
    a = git(repo, "rev-parse", "HEAD").strip()
    with WebhookServer(builder) as srv:
        # First push of the branch: nothing to compare with, so everything is built.
        body = push_payload(a, ZERO)
        first = post(srv.url, body, github_headers(secret, body))
        assert first["status"] == "queued"
        wait_for(srv.url, first["build"], {"running"}, builder.token)

        # Two pushes while that build runs (one via Gitea): they become one queued build of the
        # last.
        b = change(repo, "leaf", "from-push-b")
        c = change(repo, "mid", "from-push-c")
        body = push_payload(b, a)
        second = post(srv.url, body, github_headers(secret, body))
        body = push_payload(c, b)
        third = post(srv.url, body, gitea_headers(secret, body))
        assert (second["status"], third["status"]) == ("queued", "coalesced")
        assert third["build"] == second["build"]

        done1 = wait_for(srv.url, first["build"], {"ok", "failed", "error"}, builder.token)
        done2 = wait_for(srv.url, second["build"], {"ok", "failed", "error"}, builder.token)
        assert done1["status"] == "ok", done1
        assert done2["status"] == "ok", done2
        builds = requests.get(f"{srv.url}/api/builds?token={builder.token}", timeout=10)
        builds = builds.json()["builds"]
        assert [(x["sha"], x["status"]) for x in builds] == [(c, "ok"), (a, "ok")]
        assert done2["pushes"] == [b, c]
        # One at a time: the second build started only after the first finished.
        assert done1["finished"] <= done2["started"]
        # The coalesced build covered both pushes' changes, built once at the last commit.
        assert [(i["name"], i["status"]) for i in done2["images"]] == [
            ("mid", "ok"),
            ("leaf", "ok"),
        ]
        assert manifest_digest(cfg, "leaf", commit_tag(b)) is None
        assert manifest_digest(cfg, "leaf", "latest") == manifest_digest(cfg, "leaf", commit_tag(c))
        out = docker_client.containers.run(
            cfg.image_ref("leaf"),
            ["cat", "/usr/share/citest/leaf.txt", "/usr/share/citest/mid.txt"],
            remove=True,
        ).decode()
        assert "from-push-b" in out and "from-push-c" in out
        page = requests.get(f"{srv.url}/?token={builder.token}", timeout=10).text
        assert c[:12] in page and a[:12] in page


def test_a_pushed_release_tag_releases_its_built_commit(request, tmp_path_factory, docker_client):
    cfg, repo, _ = tiny_env(request, tmp_path_factory, docker_client, "ci-webhook-tags")
    cfg = cfg.model_copy(update={"images": cfg.images.model_copy(update={"namespace": "tagt"})})
    builder = WebhookBuilder(cfg, docker_client, repository=str(repo))
    secret, token = builder.secret, builder.token

    def push(ref: str, sha: str) -> dict:
        body = json.dumps({"ref": ref, "before": ZERO, "after": sha}).encode()
        r = requests.post(f"{srv.url}/hook", data=body, headers=github_headers(secret, body))
        assert r.status_code == 202, r.text
        return r.json()

    head = git(repo, "rev-parse", "HEAD").strip()
    git(repo, "checkout", "-q", "-b", "topic")
    topic = change(repo, "leaf", "unreviewed")
    git(repo, "checkout", "-q", "main")
    with WebhookServer(builder) as srv:
        built = push("refs/heads/main", head)
        assert wait_for(srv.url, built["build"], {"ok", "failed", "error"}, token)["status"] == "ok"

        ignored = push("refs/tags/nightly", head)
        assert ignored["status"] == "ignored" and "vX.Y.Z" in ignored["reason"]

        released = push("refs/tags/v1.0.0", head)
        rec = wait_for(srv.url, released["build"], {"ok", "failed", "error", "refused"}, token)
        assert rec["status"] == "ok", rec
        for name in ("root", "mid", "side", "leaf"):
            assert manifest_digest(cfg, name, "1.0.0") == manifest_digest(
                cfg, name, commit_tag(head)
            )

        # A tag on a commit no watched branch holds releases nothing.
        refused = push("refs/tags/v1.1.0", topic)
        rec = wait_for(srv.url, refused["build"], {"ok", "failed", "error", "refused"}, token)
        assert rec["status"] == "refused" and "ci.branches" in rec["error"], rec
        assert manifest_digest(cfg, "leaf", "1.1.0") is None

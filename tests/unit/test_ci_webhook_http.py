"""The webhook builder's HTTP side, on a real tornado server and real HTTP requests.

Nothing here reaches a build: every request below is refused or ignored, and the
tests check that the history stays empty. Builds are in tests/integration/test_ci_webhook_builds.py.
"""

import json
import stat
import time

import pytest
import requests

from hubstack.ci.webhook import PushEvent, WebhookBuilder, load_or_create_secret
from hubstack.config import parse_config
from tests.ci_support import (
    WebhookServer,
    commit,
    git,
    gitea_headers,
    github_headers,
    make_repo,
    push_payload,
    tiny_config,
)

SHA = "a" * 40


@pytest.fixture
def cfg(tmp_path):
    repo = make_repo(tmp_path / "repo")
    base = tiny_config(parse_config({}), repo, tmp_path / "state")
    return base.model_copy(
        update={"ci": base.ci.model_copy(update={"max_body_bytes": 4096, "branches": ["main"]})}
    )


@pytest.fixture
def server(cfg):
    with WebhookServer(WebhookBuilder(cfg, client=None)) as srv:
        yield srv


def read(server, path: str) -> requests.Response:
    """GET a page that needs the builder's token, with it."""
    auth = {"Authorization": f"token {server.builder.token}"}
    return requests.get(server.url + path, headers=auth, timeout=10)


def hook(server, body: bytes, sign=github_headers, **header_options) -> requests.Response:
    """POST BODY to the builder's /hook, signed with its secret (GitHub's headers unless SIGN
    says otherwise)."""
    headers = sign(server.builder.secret, body, **header_options)
    return requests.post(server.url + "/hook", data=body, headers=headers, timeout=10)


def builds(server):
    return read(server, "/api/builds").json()["builds"]


def test_secret_is_generated_private_and_reused(cfg):
    s1 = load_or_create_secret(cfg.webhook_secret_file)
    assert stat.S_IMODE(cfg.webhook_secret_file.stat().st_mode) == 0o600
    assert len(s1) >= 32 and load_or_create_secret(cfg.webhook_secret_file) == s1


@pytest.mark.parametrize(
    "headers",
    [
        {"X-GitHub-Event": "push"},
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "sha256=" + "0" * 64},
        {"X-GitHub-Event": "push", "X-Hub-Signature-256": "0" * 64},
        {"X-Gitea-Event": "push", "X-Gitea-Signature": "f" * 64},
    ],
    ids=["unsigned", "github-wrong", "github-no-prefix", "gitea-wrong"],
)
def test_bad_signature_is_401_and_builds_nothing(server, headers):
    r = requests.post(server.url + "/hook", data=push_payload(SHA), headers=headers, timeout=10)
    assert r.status_code == 401
    assert "signature" in r.json()["error"]
    assert builds(server) == []


def test_signature_of_another_body_is_401(server):
    secret = server.builder.secret
    headers = github_headers(secret, push_payload("b" * 40))
    r = requests.post(server.url + "/hook", data=push_payload(SHA), headers=headers, timeout=10)
    assert r.status_code == 401 and builds(server) == []


@pytest.mark.parametrize(
    "body, problem",
    [
        (b"{not json", "not JSON"),
        (b"[1, 2]", "JSON object"),
        (json.dumps({"ref": "refs/heads/main", "after": "xyz"}).encode(), "'after' commit id"),
        (json.dumps({"after": SHA}).encode(), "without a ref"),
    ],
)
def test_malformed_push_is_400(server, body, problem):
    r = hook(server, body)
    assert r.status_code == 400
    assert problem in r.json()["error"]
    assert builds(server) == []


def test_oversized_body_is_400(server, cfg):
    body = b'{"pad": "' + b"x" * (cfg.ci.max_body_bytes + 10) + b'"}'
    r = hook(server, body)
    assert r.status_code == 400
    assert "over the limit" in r.json()["error"]
    assert builds(server) == []


def test_other_branches_and_events_are_ignored(server):
    body = push_payload(SHA, branch="feature")
    r = hook(server, body)
    assert (
        r.status_code == 202 and r.json()["status"] == "ignored" and "feature" in r.json()["reason"]
    )
    body = push_payload(SHA, branch="feature")
    r = hook(server, body, gitea_headers)
    assert r.json()["status"] == "ignored"
    r = hook(server, b"{}", event="ping")
    assert r.status_code == 200 and r.json()["status"] == "pong"
    r = hook(server, b"{}", event="issues")
    assert r.json()["status"] == "ignored"
    assert builds(server) == []
    assert read(server, "/").status_code == 200


def test_history_survives_a_restart(cfg):
    # The worker is never started, so the build stays queued; a restart marks it interrupted.
    builder = WebhookBuilder(cfg, client=None)

    rec, coalesced = builder.submit(PushEvent("main", SHA, "0" * 40, "github"))
    again, coalesced_again = builder.submit(PushEvent("main", "c" * 40, SHA, "github"))
    assert not coalesced and coalesced_again and again.id == rec.id and again.sha == "c" * 40
    with WebhookServer(WebhookBuilder(cfg, client=None)) as srv:
        listed = builds(srv)
        assert [(b["id"], b["sha"], b["status"], b["pushes"]) for b in listed] == [
            (rec.id, "c" * 40, "interrupted", [SHA, "c" * 40])
        ]
        detail = read(srv, f"/api/builds/{rec.id}").json()
        assert detail["sha"] == "c" * 40
        assert read(srv, "/api/builds/nope").status_code == 404


@pytest.mark.parametrize("path", ["/", "/api/builds", "/api/builds/x"])
def test_build_pages_and_logs_need_the_token(server, cfg, path):
    for headers in ({}, {"Authorization": "token wrong"}, {"Authorization": "token \u00e9"}):
        r = requests.get(server.url + path, headers=headers, timeout=10)
        assert r.status_code == 401, r.text
        assert str(cfg.ci_token_file) in r.json()["error"]
    r = requests.get(f"{server.url}{path}?token={server.builder.token}", timeout=10)
    assert r.status_code in (200, 404)
    assert requests.get(server.url + "/health", timeout=10).status_code == 200
    assert stat.S_IMODE(cfg.ci_token_file.stat().st_mode) == 0o600


def test_a_replayed_delivery_builds_nothing_the_second_time(cfg):
    body = push_payload(SHA)
    with WebhookServer(WebhookBuilder(cfg, client=None)) as srv:
        headers = {**github_headers(srv.builder.secret, body), "X-GitHub-Delivery": "d-1"}
        first = requests.post(srv.url + "/hook", data=body, headers=headers, timeout=10)
        assert first.status_code == 202 and first.json()["status"] == "queued"
        again = requests.post(srv.url + "/hook", data=body, headers=headers, timeout=10)
        assert again.status_code == 200, again.text
        assert again.json() == {
            "status": "duplicate",
            "delivery": "d-1",
            "first": first.json()["build"],
        }
        assert len(builds(srv)) == 1
    # Recorded across a restart of the builder.
    with WebhookServer(WebhookBuilder(cfg, client=None)) as srv:
        again = requests.post(srv.url + "/hook", data=body, headers=headers, timeout=10)
        assert again.json()["status"] == "duplicate" and len(builds(srv)) == 1


def test_a_commit_not_on_the_pushed_branch_builds_nothing(cfg):
    repo = cfg.source_root
    git(repo, "checkout", "-q", "-b", "feature")
    (repo / "images" / "leaf" / "marker.txt").write_text("from a feature branch\n")
    sha = commit(repo, "not on main")
    git(repo, "checkout", "-q", "main")
    body = push_payload(sha)  # claims refs/heads/main
    with WebhookServer(WebhookBuilder(cfg, client=None)) as srv:
        r = hook(srv, body)
        assert r.status_code == 202
        deadline = time.monotonic() + 60
        while (rec := builds(srv)[0])["status"] in ("queued", "running"):
            assert time.monotonic() < deadline, rec
            time.sleep(0.2)
    assert rec["status"] == "refused", rec
    assert "is not on branch 'main'" in rec["error"] and rec["images"] == []

"""The hub's REST API fuzzed from JupyterHub's own OpenAPI document (schemathesis), against
the real hub with hubstack's authenticator and spawner: no request may get a 5xx from
hubstack's code.

The document comes from the sdist of the very JupyterHub version the hub image pins (PyPI
is reachable where the suite runs; the wheel does not ship it). A 5xx from JupyterHub's own
handlers is listed, with its request and upstream reference, in
tests/data/jupyterhub-api-5xx.yaml: known and short, not ignored. A 5xx anywhere else fails.
"""

from __future__ import annotations

import re
import subprocess
import sys
import tarfile
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path

import pytest
import schemathesis
import yaml
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis.errors import HypothesisException
from schemathesis import GenerationMode

from hubstack.engine import service_container
from hubstack.hub.users import users_file_for
from tests.integration.hubstack_e2e import REPO, HubClient

pytestmark = [pytest.mark.integration, pytest.mark.slow, pytest.mark.disrupts_hub]

KNOWN_5XX = REPO / "tests/data/jupyterhub-api-5xx.yaml"
EXAMPLES_PER_OPERATION = 25
"""Per operation and generation mode (valid and invalid requests)."""
EXCLUDED = {("POST", "/shutdown"), ("PATCH", "/proxy")}
"""Stop the hub under test, or point it at another proxy (the shared stack's routes)."""
FUZZ_ADMIN = ("fuzzadmin", "fuzz-admin-pw-19e4", 23090)


def _pinned_jupyterhub() -> str:
    m = re.search(
        r"^jupyterhub==([0-9][0-9a-z.]*)", (REPO / "hub/requirements.txt").read_text(), re.M
    )
    assert m, "hub/requirements.txt (the hub image's lock) pins jupyterhub==VERSION"
    return m.group(1)


@pytest.fixture(scope="module")
def openapi_document(tmp_path_factory) -> Path:
    """docs/source/_static/rest-api.yml from the sdist of the hub image's JupyterHub."""
    version = _pinned_jupyterhub()
    tmp = tmp_path_factory.mktemp("jupyterhub-sdist")
    subprocess.run(
        [sys.executable, "-m", "pip", "download", "-q", "--no-deps", "--no-binary", ":all:"]
        + ["--disable-pip-version-check", "-d", str(tmp), f"jupyterhub=={version}"],
        check=True,
        timeout=600,
    )
    member = f"jupyterhub-{version}/docs/source/_static/rest-api.yml"
    with tarfile.open(next(tmp.glob("jupyterhub-*.tar.gz"))) as sdist:
        sdist.extract(member, tmp, filter="data")
    return tmp / member


@dataclass
class ServerError:
    operation: str
    status: int
    request: str
    answer: str


@pytest.fixture(scope="module")
def admin(hub_stack) -> HubClient:
    cfg, _, _ = hub_stack
    name, password, uid = FUZZ_ADMIN
    users_file_for(cfg).add(name, uid, uid, admin=True, password=password)
    client = HubClient(f"http://{cfg.hub.host}:{cfg.hub.port}", name)
    assert client.login(password).status_code == 302
    client.make_token()
    return client


def test_bad_start_requests_get_a_4xx_that_says_why(admin, clients):
    """The three mistakes the first fuzzing found as 500s or silent acceptance."""
    # An account made through the REST API alone has no UID/GID in the users file.
    assert admin.api("POST", "/hub/api/users/dave").status_code in (201, 409)
    r = admin.api("POST", "/hub/api/users/dave/server", json={})
    assert r.status_code == 409, r.text
    assert "hubstack users add dave" in r.json()["message"]

    alice = clients["alice"]
    r = alice.api("POST", "/hub/api/users/alice/server", json={"cores": "lots"})
    assert r.status_code == 400 and "'cores'" in r.json()["message"], r.text
    r = alice.api("POST", "/hub/api/users/alice/server", json={"profile": 5})
    assert r.status_code == 400 and "profile" in r.json()["message"], r.text
    r = alice.api("POST", "/hub/api/users/alice/server", json={"profile": "nope"})
    assert r.status_code == 400 and "default" in r.json()["message"], r.text
    assert not alice.running(), "a refused request started nothing"


def uncaught_exceptions(hub_log: str) -> list[str]:
    """Each traceback JupyterHub logged for a request ("Uncaught exception METHOD PATH")."""
    blocks = hub_log.split("Uncaught exception ")[1:]
    return [block.split("\n[", 1)[0] for block in blocks]


def test_no_request_gets_a_5xx_from_hubstack(
    hub_stack, admin, openapi_document, docker_client, capsys
):
    cfg, _, _ = hub_stack
    started = datetime.now(UTC)
    name = admin.name
    headers = {"Authorization": f"token {admin.token}"}
    base_url = f"{admin.base}/hub/api"
    # The shared stack's analysts (and the fuzzer itself) keep their accounts and servers.
    protected = {name, "alice", "bob"}

    schema = schemathesis.openapi.from_path(openapi_document)
    sent = 0
    errors: list[ServerError] = []

    def send(case) -> None:
        nonlocal sent
        if (case.path_parameters or {}).get("name") in protected:
            return
        response = case.call(base_url=base_url, headers=headers, timeout=60)
        sent += 1
        if response.status_code >= 500:
            errors.append(
                ServerError(
                    f"{case.method.upper()} {case.path}",
                    response.status_code,
                    case.as_curl_command(headers={"Authorization": "token ADMIN"}),
                    response.text[:300],
                )
            )

    operations = [result.ok() for result in schema.get_all_operations()]
    for operation in operations:
        if (operation.method.upper(), operation.path) in EXCLUDED:
            continue
        for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):

            @settings(
                max_examples=EXAMPLES_PER_OPERATION,
                deadline=None,
                database=None,
                phases=[Phase.generate],
                suppress_health_check=list(HealthCheck),
            )
            @given(case=operation.as_strategy(generation_mode=mode))
            def fuzz(case) -> None:
                send(case)

            try:
                fuzz()
            except HypothesisException:
                pass  # no invalid request can be made for this operation: nothing to send

    hub_log = service_container(cfg, docker_client, "hub").logs(since=started).decode()
    tracebacks = uncaught_exceptions(hub_log)
    in_hubstack = [t for t in tracebacks if "/hubstack/" in t]
    assert not in_hubstack, "hubstack's code raised on a request:\n" + "\n\n".join(in_hubstack[:3])
    known = {entry["operation"]: entry for entry in yaml.safe_load(KNOWN_5XX.read_text())}
    ours = [e for e in errors if e.operation not in known]
    upstream = sorted({e.operation for e in errors if e.operation in known})
    # Shown even when the test passes: how much was sent, and what upstream still raises.
    with capsys.disabled():
        for cause in sorted({t.strip().splitlines()[-1][:200] for t in tracebacks}):
            print(f"\n  upstream exception: {cause}", end="")
        print(
            f"\nREST API fuzz: {sent} requests to {len(operations)} operations "
            f"(JupyterHub {_pinned_jupyterhub()}); {len(errors)} answered 5xx, "
            f"{len(errors) - len(ours)} of them in JupyterHub's own handlers listed in "
            f"{KNOWN_5XX.name}: {', '.join(upstream) or 'none'}"
        )
    assert sent > 500, "the fuzzer sent too few requests to mean anything"
    assert not ours, "5xx outside the known upstream list:\n" + "\n\n".join(
        f"{e.operation} -> {e.status}: {e.answer}\n  {e.request}" for e in ours[:10]
    )

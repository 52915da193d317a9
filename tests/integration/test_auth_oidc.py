"""OpenID Connect login on the real stack, against a real provider: panva's oidc-provider
(certified), built by this module FROM the project's base image and started on the platform
network, with one client and three people: olivia (the directory's UID/GID in claims),
oscar (none: the hub allocates them) and cora (outside the allowed groups).

For this module the shared platform serves HTTPS (hub.tls self-signed) and runs with
`auth.sources: [file, oidc]`: the config file is changed the way a platform engineer would
and `hubstack up --no-build` run; afterwards it goes back as it was, without this module's
people. The issuer URL is the same for the browser and the hub: http://NAME:PORT, which the
hub resolves on the platform network and Chromium maps to the port the provider is
published on (--host-resolver-rules). Chromium trusts the platform CA's key (SPKI flag).
Screenshots go to artifacts/."""

from __future__ import annotations

import ast
import contextlib
import shutil
import tempfile
import time
from pathlib import Path

import docker
import pytest
import requests
import yaml
from selenium.common.exceptions import WebDriverException
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from hubstack import stack, tls
from hubstack.engine import service_container
from hubstack.hub.users import users_file_for
from hubstack.secretfiles import write_private
from tests.conftest import SESSION_ID, free_port
from tests.integration.browser import (
    ARTIFACTS,
    lab_wait,
    notebook_launcher_card,
    printed_by_a_new_notebook,
    reloading,
    start_chromium,
)
from tests.integration.hubstack_e2e import HubClient, hubstack, reconfigured_stack, url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HERE = Path(__file__).parent / "oidc_provider"
CLIENT_ID = "hubstack-test"
OPS = ("oidcops", "oidcops-pw-5c1e", 23950)  # the users file's admin beside the provider
PEOPLE = ["olivia", "oscar", "cora"]
UID_RANGE = [61000, 61999]
OLIVIA = (52001, 52500)  # her UID and GID claims (provider.mjs)


def admin_client(cfg) -> HubClient:
    ops = HubClient.at(cfg, OPS[0])
    r = ops.login(OPS[1])
    assert r.status_code == 302, f"the users file's admin is refused: {r.status_code}"
    ops.make_token()
    return ops


def forget_people(cfg) -> None:
    """This module's people out of the hub (servers stopped), the accounts table and the
    OIDC UID table: the shared stack goes back as it was."""
    with contextlib.suppress(AssertionError, requests.RequestException):
        ops = admin_client(cfg)
        for name in PEOPLE:
            ops.remove_user(name)
    if cfg.accounts_file.is_file():
        data = yaml.safe_load(cfg.accounts_file.read_text()) or {}
        accounts = data.get("accounts") or {}
        for name in PEOPLE:
            accounts.pop(name, None)
        write_private(cfg.accounts_file, yaml.safe_dump({"accounts": accounts}))
    cfg.oidc_ids_file.unlink(missing_ok=True)


@pytest.fixture(scope="module")
def oidc_hub(hub_stack, docker_client):
    cfg, config, _ = hub_stack
    tmp = Path(tempfile.mkdtemp(prefix="hubtest-oidc-"))
    idp_host, idp_port = f"hubtest-oidc-{SESSION_ID}-idp", free_port()
    image = f"hubtest-oidc-provider:{SESSION_ID}"
    issuer = f"http://{idp_host}:{idp_port}"
    secret = tmp / "client-secret"
    write_private(secret, f"client-secret-{SESSION_ID}\n")

    def https_and_oidc(data: dict) -> None:
        data["hub"]["tls"] = {"mode": "self-signed", "http_port": free_port()}
        data["auth"] = {
            "sources": ["file", "oidc"],
            "oidc": {
                "issuer": issuer,
                "insecure_http": True,  # a provider of the test's own, on this host
                "client_id": CLIENT_ID,
                "client_secret_file": str(secret),
                "scopes": ["openid", "profile", "groups", "posix"],
                "uid_claim": "uid_number",
                "gid_claim": "gid_number",
                "allowed_groups": ["analysts"],
                "uid_range": UID_RANGE,
                "button_label": "Test IdP",
            },
        }

    users_file_for(cfg).add(OPS[0], OPS[2], OPS[2], admin=True, password=OPS[1])
    idp = None
    try:
        docker_client.images.build(
            path=str(HERE),
            tag=image,
            buildargs={"BASE": cfg.image_ref("base")},
            rm=True,
            forcerm=True,
            pull=False,
        )
        with reconfigured_stack(Path(config), https_and_oidc) as (oidc_cfg, _):
            idp = docker_client.containers.run(
                image,
                name=idp_host,
                detach=True,
                environment={
                    "ISSUER": issuer,
                    "PORT": str(idp_port),
                    "CLIENT_ID": CLIENT_ID,
                    "CLIENT_SECRET": secret.read_text().strip(),
                    "REDIRECT_URI": f"{oidc_cfg.hub.public_url}hub/oauth_callback",
                },
                ports={f"{idp_port}/tcp": ("127.0.0.1", idp_port)},
                network=cfg.hub.network,  # where its name resolves for the hub
            )
            _wait_for(f"http://127.0.0.1:{idp_port}/.well-known/openid-configuration", idp)
            try:
                yield oidc_cfg, idp_host
            finally:
                forget_people(oidc_cfg)
    finally:
        if idp is not None:
            print(idp.logs().decode(errors="replace")[-3000:])
            idp.remove(force=True)
        users_file_for(cfg).remove(OPS[0])
        with contextlib.suppress(docker.errors.APIError):
            docker_client.images.remove(image, force=True)
        shutil.rmtree(tmp, ignore_errors=True)


def _wait_for(url: str, container, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            if requests.get(url, timeout=5).status_code == 200:
                return
        except requests.RequestException:
            pass
        time.sleep(0.5)
    raise AssertionError(f"the provider did not answer: {container.logs().decode()[-2000:]}")


def new_browser(cfg, idp_host: str):
    """Chromium trusting exactly the platform CA's key (as start_chromium_trusting_platform_ca),
    and finding the provider's name on this host's loopback, where it is published."""
    ca = tls.CertificateAuthority(cfg.tls_ca_cert_file, cfg.tls_ca_key_file)
    return start_chromium(
        f"--ignore-certificate-errors-spki-list={ca.spki_sha256}",
        f"--host-resolver-rules=MAP {idp_host} 127.0.0.1",
    )


@pytest.fixture
def browser(oidc_hub):
    """A browser of its own per test: no session at the provider or the hub yet."""
    b = new_browser(*oidc_hub)
    yield b
    b.quit()


def sign_in_at_provider(browser, cfg, sub: str) -> None:
    """The hub's login page -> "Sign in with Test IdP" -> the provider's login and consent
    pages (oidc-provider's development pages, whose login is the account's `sub`) -> back
    at the hub."""
    wait = WebDriverWait(browser, 60)
    browser.get(f"{url(cfg)}/hub/login")
    # Both sources on one page: the users file's form, then the provider's button.
    assert browser.find_element(By.ID, "password_input")
    browser.find_element(By.ID, "oidc_login_button").click()
    wait.until(EC.presence_of_element_located((By.NAME, "login"))).send_keys(sub)
    browser.find_element(By.NAME, "password").send_keys("any")
    browser.find_element(By.CSS_SELECTOR, "button[type=submit]").click()
    # The consent page is the one without the login field. Not `staleness_of` the button:
    # asked mid-navigation, Chromium can answer "Node with given id does not belong to the
    # document" (a WebDriverException, not a stale element), which failed a CI run. Such
    # answers mean "not there yet" here, so the wait polls again.
    WebDriverWait(browser, 60, ignored_exceptions=(WebDriverException,)).until(
        lambda b: not b.find_elements(By.NAME, "login")
    )
    # Consent ("Continue"), the provider's second page.
    wait.until(EC.element_to_be_clickable((By.CSS_SELECTOR, "button[type=submit]"))).click()
    wait.until(lambda b: b.current_url.startswith(url(cfg)))


def start_and_print_identity(browser) -> str:
    """From the spawn page: start the server, open a notebook, print UID, GID, groups and
    the working folder (home); returns the line "ID UID GID [GROUPS] HOME"."""
    wait = lab_wait(browser)
    wait.until(reloading(lambda b: "/hub/spawn" in b.current_url or "/user/" in b.current_url))
    if browser.find_elements(By.CSS_SELECTOR, "#spawn_form"):
        browser.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
    # On an empty workspace (a second session in the same home would reopen the last
    # notebook), reloading a page Chromium dropped when the spawn changed the host's network.
    code = "import os; print('ID', os.getuid(), os.getgid(), sorted(os.getgroups()), os.getcwd())"
    return printed_by_a_new_notebook(wait, notebook_launcher_card(browser, wait), code, "ID ")


def identity(printed: str) -> tuple[int, int, list[int], str]:
    """(uid, gid, groups, home) from the cell's line."""
    _, uid, gid, rest = printed.split(" ", 3)
    groups, home = rest.rsplit(" ", 1)
    return int(uid), int(gid), ast.literal_eval(groups), home


def ids_table(cfg) -> dict:
    return yaml.safe_load(cfg.oidc_ids_file.read_text())["people"]


def users_list(config) -> dict[str, list[str]]:
    r = hubstack(config, "users", "list")
    assert r.returncode == 0, r.stderr
    return {line.split()[0]: line.split() for line in r.stdout.splitlines()[1:]}


def test_users_file_admin_still_logs_in_with_a_password(oidc_hub):
    cfg, _ = oidc_hub
    me = admin_client(cfg).api("GET", "/hub/api/user").json()
    assert me["name"] == OPS[0] and me["admin"] is True


def test_person_outside_the_allowed_groups_gets_a_clear_page(oidc_hub, browser):
    cfg, _ = oidc_hub
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        sign_in_at_provider(browser, cfg, "cora-0003")
        page = browser.find_element(By.TAG_NAME, "body").text
    finally:
        browser.save_screenshot(str(ARTIFACTS / "oidc-not-in-allowed-group.png"))
    assert "403" in page
    assert "none of the groups allowed to use this hub (analysts)" in page, page
    assert not cfg.oidc_ids_file.exists() or "cora-0003" not in ids_table(cfg)


def test_analyst_signs_in_at_the_provider_and_runs_as_the_directorys_uid(oidc_hub, browser):
    cfg, _ = oidc_hub
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        sign_in_at_provider(browser, cfg, "olivia-0001")
        session = [c for c in browser.get_cookies() if c["name"] == "jupyterhub-hub-login"]
        assert session and session[0]["secure"], browser.get_cookies()
        printed = start_and_print_identity(browser)
    finally:
        browser.save_screenshot(str(ARTIFACTS / "oidc-notebook-identity.png"))
    uid, gid = OLIVIA
    assert identity(printed) == (uid, gid, [gid], "/home/olivia"), printed
    olivia = admin_client(cfg).api("GET", "/hub/api/users/olivia").json()
    assert olivia["groups"] == ["analysts"] and olivia["admin"] is False
    row = users_list(cfg.path)["olivia"]
    assert row[1:4] == ["oidc", str(uid), str(gid)], row


def test_allocated_uid_is_the_same_after_a_hub_restart(oidc_hub, browser, docker_client):
    cfg, idp_host = oidc_hub
    first = UID_RANGE[0]
    sign_in_at_provider(browser, cfg, "oscar-0002")
    assert ids_table(cfg)["oscar-0002"]["uid"] == first

    # A restarted hub (its database kept, as always) reads the same table; oscar signs in
    # afresh, from a new browser, and his server runs as the UID he was given.
    service_container(cfg, docker_client, "hub").restart(timeout=20)
    stack.wait_for_hub(cfg)
    again = new_browser(cfg, idp_host)
    try:
        sign_in_at_provider(again, cfg, "oscar-0002")
        printed = start_and_print_identity(again)
    finally:
        again.save_screenshot(str(ARTIFACTS / "oidc-allocated-uid-after-restart.png"))
        again.quit()
    assert identity(printed) == (first, first, [first], "/home/oscar"), printed
    assert [s for s in ids_table(cfg) if s.startswith("oscar")] == ["oscar-0002"]

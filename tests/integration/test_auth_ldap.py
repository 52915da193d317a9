"""LDAP login on the real stack, against a real slapd (Debian's, LDAPS with a CA made here).

For this module the shared platform serves HTTPS (hub.tls self-signed) and runs with
`auth.sources: [file, ldap]` and `auth.ldap` pointing at the directory (search-then-bind
with a search account whose password is a 0600 file, the CA from the config, allowed group
`analysts`, posixGroups under ou=groups): the config is changed the way a platform engineer
would and `hubstack up` run; afterwards it goes back as it was. Checked as an analyst sees
it: carol (directory) logs in in Chromium over HTTPS and over the REST API, starts a
server, and a notebook prints the directory's UID, GID and groups; a users-file admin still
logs in; a wrong password, dave (outside the allowed groups) and a stopped slapd each get
their own answer; with slapd stopped, carol's running server and session keep working."""

from __future__ import annotations

import asyncio
import json
import shutil
import tempfile
from pathlib import Path

import docker
import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait
from traitlets.config import Config

from hubstack.hub.ldap import DirectoryUnavailable, LDAPSource, authenticator_settings
from hubstack.hub.users import users_file_for
from tests.conftest import SESSION_ID, free_port
from tests.integration import ldap_directory as directory
from tests.integration.browser import (
    ARTIFACTS,
    lab_wait,
    log_in,
    notebook_launcher_card,
    start_chromium_trusting_platform_ca,
    uid_printed_by_a_new_notebook,
)
from tests.integration.hubstack_e2e import HubClient, hubstack, reconfigured_stack, url

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HOST = "directory.hubtest.org"
CAROL = directory.Person("carol", "carol-pw-91c4", 24001, 24001)
DAVE = directory.Person("dave", "dave-pw-2e7a", 24002, 24002)
GROUPS = {
    "analysts": (24500, ["carol"]),
    "spark-users": (24501, ["carol", "dave"]),
    "staff": (24600, ["dave"]),
}
OPS = ("ldapops", "ldapops-pw-6b03", 23900)  # a users-file admin beside the directory


def remove_hub_users(cfg, names: list[str]) -> None:
    """Stop NAMES' servers and delete them from the hub, as the users-file admin."""
    ops = HubClient.at(cfg, OPS[0])
    if ops.login(OPS[1]).status_code != 302:
        return
    ops.make_token()
    for name in names:
        ops.remove_user(name)


@pytest.fixture(scope="module")
def ldap_hub(hub_stack, docker_client):
    cfg, config, _ = hub_stack
    tmp = Path(tempfile.mkdtemp(prefix="hubtest-ldap-"))
    image = f"hubtest-ldap-slapd:{SESSION_ID}"
    container_name = f"hubtest-ldap-{SESSION_ID}"
    ca, cert, key = directory.make_ca_and_server_cert(HOST)
    (tmp / "ca.pem").write_bytes(ca)
    secret = tmp / "search-password"
    secret.write_text(directory.SEARCH_PW + "\n")
    secret.chmod(0o600)

    def https_and_ldap(data: dict) -> None:
        data["hub"]["tls"] = {"mode": "self-signed", "http_port": free_port()}
        data["auth"] = {
            "sources": ["file", "ldap"],
            "ldap": {
                "server": HOST,
                "tls": "ldaps",
                "ca_file": str(tmp / "ca.pem"),
                "lookup_dn": True,
                "search_user_dn": directory.SEARCH_DN,
                "search_password_file": str(secret),
                "user_search_base": directory.PEOPLE,
                "allowed_groups": [f"cn=analysts,{directory.GROUPS}"],
                "group_search_base": directory.GROUPS,
                "timeout": 10,
            },
        }

    users_file_for(cfg).add(OPS[0], OPS[2], OPS[2], admin=True, password=OPS[1])
    container = None
    try:
        directory.build_image(docker_client, cfg.image_ref("base"), image)
        container = directory.start_directory(
            docker_client, image, container_name, cfg.hub.network, HOST, ca, cert, key,
            directory.tree([CAROL, DAVE], GROUPS),
        )  # fmt: skip
        with reconfigured_stack(Path(config), https_and_ldap) as (ldap_cfg, _):
            try:
                yield ldap_cfg, config, container
            finally:
                # the shared hub goes back without them
                remove_hub_users(ldap_cfg, [CAROL.name, DAVE.name])
    finally:
        users_file_for(cfg).remove(OPS[0])
        if container is not None:
            container.remove(force=True)
        try:
            docker_client.images.remove(image, force=True)
        except docker.errors.APIError:
            pass
        shutil.rmtree(tmp, ignore_errors=True)


@pytest.fixture(scope="module")
def browser(ldap_hub):
    """Chromium trusting exactly the platform CA's key (the hub serves HTTPS)."""
    cfg, _, _ = ldap_hub
    b = start_chromium_trusting_platform_ca(cfg)
    yield b
    b.quit()


def test_in_chromium_a_directory_analyst_logs_in_and_a_notebook_runs_as_their_uid(
    ldap_hub, browser
):
    cfg, _, _ = ldap_hub
    ARTIFACTS.mkdir(exist_ok=True)
    wait = lab_wait(browser)
    try:
        # dave's password is right, but he is not in `analysts`: the page says so.
        log_in(browser, url(cfg), DAVE.name, DAVE.password)
        error = wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, ".login_error")))
        assert "not in a group allowed to use this hub (analysts)" in error.text
        browser.save_screenshot(str(ARTIFACTS / "ldap-not-in-allowed-group.png"))

        log_in(browser, url(cfg), CAROL.name, CAROL.password)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#spawn_form")))
        browser.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
        card = notebook_launcher_card(browser, wait)
        assert uid_printed_by_a_new_notebook(wait, card) == f"UID {CAROL.uid}"
    finally:
        browser.save_screenshot(str(ARTIFACTS / "ldap-notebook-uid.png"))


@pytest.fixture(scope="module")
def carol(ldap_hub) -> HubClient:
    cfg, _, _ = ldap_hub
    client = HubClient.at(cfg, CAROL.name)
    assert client.login(CAROL.password).status_code == 302
    client.make_token()
    return client


def test_the_server_has_the_directorys_uid_gid_and_groups(ldap_hub, carol):
    cfg, config, _ = ldap_hub
    if not carol.running():  # the browser test started it; alone, start it here
        carol.start()
    out = carol.run_code(
        "import os, pwd; print(os.getuid(), os.getgid(), sorted(os.getgroups()), "
        "pwd.getpwuid(os.getuid()).pw_name, os.environ['HOME'])"
    ).strip()
    uid, gid, rest = out.split(" ", 2)
    assert (int(uid), int(gid)) == (CAROL.uid, CAROL.gid)
    groups = json.loads(rest.split("]")[0] + "]")
    assert {24500, 24501} <= set(groups) and 24600 not in groups, out
    assert out.endswith("carol /home/carol"), out

    # The directory's group names are carol's JupyterHub groups (profile access by group).
    ops = HubClient.at(cfg, OPS[0])
    assert ops.login(OPS[1]).status_code == 302, "a users-file admin logs in beside LDAP"
    ops.make_token()
    model = ops.api("GET", f"/hub/api/users/{CAROL.name}").json()
    assert sorted(model["groups"]) == ["analysts", "spark-users"]
    assert model["admin"] is False

    listing = hubstack(Path(config), "users", "list")
    assert listing.returncode == 0, listing.stderr
    rows = {line.split()[0]: line.split() for line in listing.stdout.splitlines()[1:]}
    assert rows[CAROL.name][1:4] == ["ldap", str(CAROL.uid), str(CAROL.gid)]
    assert rows[OPS[0]][1:5] == ["file", str(OPS[2]), str(OPS[2]), "yes"]
    assert rows["alice"][1] == "file"
    assert DAVE.name not in rows, "a refused login is not recorded"


def test_the_directorys_certificate_must_name_the_server(ldap_hub, docker_client):
    """The same directory, CA and password, reached by its address instead of the name its
    certificate holds: the TLS check refuses it (the hub would say the directory is down)."""
    cfg, _, container = ldap_hub
    container.reload()
    address = container.attrs["NetworkSettings"]["Networks"][cfg.hub.network]["IPAddress"]
    settings = authenticator_settings(cfg.auth.ldap)
    settings.update(server_address=address, tls_kwargs={**settings["tls_kwargs"], "sni": address})
    c = Config()
    for key, value in settings.items():
        setattr(c.HubstackLDAPAuthenticator, key, value)
    with pytest.raises(DirectoryUnavailable):
        asyncio.run(LDAPSource(config=c).verify(CAROL.name, CAROL.password))


def test_each_refusal_has_its_own_answer(ldap_hub):
    cfg, _, _ = ldap_hub
    wrong = HubClient.at(cfg, CAROL.name).login("not-her-password")
    assert wrong.status_code == 403 and "Invalid username or password" in wrong.text
    unknown = HubClient.at(cfg, "nobody-here").login("pw")
    assert unknown.status_code == 403 and "Invalid username or password" in unknown.text
    outside = HubClient.at(cfg, DAVE.name).login(DAVE.password)
    assert outside.status_code == 403
    assert "not in a group allowed to use this hub" in outside.text
    # A token request with the password in its body is refused too (JupyterHub's token API
    # answers every failed authentication with a bare 403, whatever the reason).
    dave = HubClient.at(cfg, DAVE.name)
    token = dave.http.post(
        f"{dave.base}/hub/api/users/{DAVE.name}/tokens",
        json={"auth": {"username": DAVE.name, "password": DAVE.password}},
        timeout=60,
        verify=dave.verify,
    )
    assert token.status_code == 403


def test_with_the_directory_down_running_servers_and_sessions_keep_working(
    ldap_hub, carol, browser
):
    cfg, _, container = ldap_hub
    if not carol.running():
        carol.start()
    container.stop(timeout=5)
    try:
        down = HubClient.at(cfg, CAROL.name).login(CAROL.password)
        assert down.status_code == 503, down.status_code
        assert f"The directory ({HOST}:636) cannot be reached right now" in down.text
        # What she had keeps working: her server, her token, her browser session.
        assert carol.running()
        assert carol.run_code("import os; print(os.getuid())").strip() == str(CAROL.uid)
        browser.get(f"{url(cfg)}/hub/home")
        WebDriverWait(browser, 60).until(
            EC.presence_of_element_located((By.ID, "start"))
        )  # the home page's server button: still logged in, not sent to the login form
        assert "/hub/login" not in browser.current_url
        # Users-file accounts never needed the directory.
        assert HubClient.at(cfg, OPS[0]).login(OPS[1]).status_code == 302
    finally:
        browser.save_screenshot(str(ARTIFACTS / "ldap-directory-down.png"))
        container.start()

"""hub.subdomain_host in a real browser (Debian's Chromium, which resolves every *.localhost
name to loopback, as Firefox does): the shared stack's hub restarts with
`subdomain_host: http://localhost:PORT` for this module and goes back as it was after. An
analyst logs in, starts a server from the spawn page and lands on NAME.localhost, where a
notebook cell runs; a script on that page cannot read another analyst's server or the hub,
which are now other origins. Screenshots are kept under artifacts/."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from tests.integration.browser import (
    ARTIFACTS,
    lab_wait,
    log_in,
    notebook_launcher_card,
    start_chromium,
    uid_printed_by_a_new_notebook,
)
from tests.integration.conftest import ANALYSTS
from tests.integration.hubstack_e2e import hub_config_changed, stop_servers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture(scope="module")
def subdomain_host(hub_stack, clients, docker_client):
    """The shared hub on subdomains of localhost; servers stopped before it goes back."""
    cfg, _, _ = hub_stack
    host = f"http://localhost:{cfg.hub.port}"

    def on_subdomains(data: dict) -> None:
        data["hub"]["subdomain_host"] = host

    with hub_config_changed(cfg, docker_client, on_subdomains):
        try:
            yield host
        finally:
            stop_servers(clients)


@pytest.fixture(scope="module")
def browser():
    """One browser for the module: the second test reads the page the first one opened."""
    b = start_chromium()
    b.set_script_timeout(60)
    yield b
    b.quit()


def server_origin(host: str, name: str) -> str:
    scheme, rest = host.split("://")
    return f"{scheme}://{name}.{rest}"


def test_jupyterlab_runs_code_on_the_analysts_own_subdomain(subdomain_host, clients, browser):
    name = "alice"
    password, uid, _gid, _groups = ANALYSTS[name]
    wait = lab_wait(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        log_in(browser, subdomain_host, name, password)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#spawn_form")))
        browser.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
        card = notebook_launcher_card(browser, wait)
        assert browser.current_url.startswith(
            f"{server_origin(subdomain_host, name)}/user/{name}/lab"
        ), browser.current_url
        assert uid_printed_by_a_new_notebook(wait, card) == f"UID {uid}"
    finally:
        browser.save_screenshot(str(ARTIFACTS / "subdomain-notebook-uid.png"))
    # The hub's REST answers name the server by its own origin, too.
    model = clients[name].api("GET", f"/hub/api/users/{name}").json()
    assert model["servers"][""]["url"] == f"{server_origin(subdomain_host, name)}/user/{name}/"


FETCH = """
const [url, withXsrf, done] = [arguments[0], arguments[1], arguments[arguments.length - 1]];
// Jupyter Server takes a cookie-authorised API request with the page's XSRF token only,
// as JupyterLab sends it; the cross-origin requests go without, as simple requests.
const xsrf = (document.cookie.match(/(?:^|; )_xsrf=([^;]*)/) || [])[1] || "";
fetch(url, {credentials: "include", headers: withXsrf ? {"X-XSRFToken": xsrf} : {}})
  .then(r => done(`read ${r.status}`))
  .catch(e => done(`refused ${e.name}`));
"""


def test_a_page_script_cannot_read_another_analysts_server_or_the_hub(
    subdomain_host, clients, browser
):
    """Same origin, alice's page would read whatever her cookies open; on subdomains bob's
    server and the hub are other origins, which answer no CORS, so the browser keeps the
    answers from her page's scripts."""
    alice, bob = "alice", "bob"
    assert browser.current_url.startswith(server_origin(subdomain_host, alice)), (
        "the previous test leaves alice's JupyterLab open"
    )
    clients[bob].start()
    bob_server = clients[bob].api("GET", f"/hub/api/users/{bob}").json()["servers"][""]["url"]
    assert bob_server == f"{server_origin(subdomain_host, bob)}/user/{bob}/"

    own = browser.execute_async_script(FETCH, f"/user/{alice}/api/status", True)
    assert own == "read 200", "a script reads its own server's API"
    for other in (f"{bob_server}api/status", f"{subdomain_host}/hub/api/user"):
        assert browser.execute_async_script(FETCH, other, False) == "refused TypeError", other

"""In a real browser (Debian's Chromium, headless): log in, start the server from the spawn
page, wait for JupyterLab, run a notebook cell printing os.getuid(), read it from the page.
The screenshot is kept under artifacts/ as a test artefact."""

from __future__ import annotations

import pytest
from selenium.webdriver.common.by import By

from tests.integration.browser import (
    ARTIFACTS,
    lab_wait,
    log_in,
    notebook_launcher_card,
    reloading,
    start_chromium,
    uid_printed_by_a_new_notebook,
)
from tests.integration.conftest import ANALYSTS
from tests.integration.hubstack_e2e import logged_in_clients, stop_servers

pytestmark = [pytest.mark.integration, pytest.mark.slow]


@pytest.fixture
def browser():
    b = start_chromium()
    yield b
    b.quit()


def test_notebook_cell_prints_the_analysts_uid(hub_stack, browser):
    cfg, _, _ = hub_stack
    name = "bob"
    password, uid, _gid, _groups = ANALYSTS[name]
    ARTIFACTS.mkdir(exist_ok=True)
    wait = lab_wait(browser)
    try:
        log_in(browser, f"http://{cfg.hub.host}:{cfg.hub.port}", name, password)
        # Either the spawn form (profiles) or straight to a server already running.
        wait.until(reloading(lambda b: "/hub/spawn" in b.current_url or "/user/" in b.current_url))
        if "/hub/spawn" in browser.current_url and browser.find_elements(
            By.CSS_SELECTOR, "#spawn_form"
        ):
            browser.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
        card = notebook_launcher_card(browser, wait)
        assert uid_printed_by_a_new_notebook(wait, card) == f"UID {uid}"
    finally:
        browser.save_screenshot(str(ARTIFACTS / "browser-notebook-uid.png"))
        stop_servers(logged_in_clients(cfg, {name: ANALYSTS[name]}))

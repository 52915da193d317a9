"""The suite's one browser: Debian's Chromium, headless, driven by its chromedriver, and the
steps every browser test takes in it (log in, open JupyterLab's launcher, run a cell)."""

from __future__ import annotations

import shutil

from selenium import webdriver
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.common.by import By
from selenium.webdriver.common.keys import Keys
from selenium.webdriver.support import expected_conditions as EC
from selenium.webdriver.support.ui import WebDriverWait

from hubstack import tls
from tests.integration.hubstack_e2e import REPO

ARTIFACTS = REPO / "artifacts"
CHROMIUM_FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--disable-dev-shm-usage",
    "--window-size=1400,900",
]


def start_chromium(*extra_flags: str) -> webdriver.Chrome:
    """Debian's Chromium, headless, driven by its chromedriver (the suite's one browser)."""
    chromium, driver = shutil.which("chromium"), shutil.which("chromedriver")
    assert chromium and driver, (
        "install Debian's chromium and chromium-driver (apt-get install -y chromium "
        "chromium-driver)"
    )
    opts = webdriver.ChromeOptions()
    opts.binary_location = chromium
    for flag in [*CHROMIUM_FLAGS, *extra_flags]:
        opts.add_argument(flag)
    return webdriver.Chrome(service=Service(driver), options=opts)


def start_chromium_trusting_platform_ca(cfg) -> webdriver.Chrome:
    """Chromium for a hub with hub.tls self-signed: it trusts exactly the platform CA's key
    (the flag names one SPKI hash, the CA's, which the hub sends in its chain), not every
    certificate error."""
    ca = tls.CertificateAuthority(cfg.tls_ca_cert_file, cfg.tls_ca_key_file)
    return start_chromium(f"--ignore-certificate-errors-spki-list={ca.spki_sha256}")


def log_in(browser: webdriver.Chrome, hub_url: str, name: str, password: str) -> None:
    """Fill in and send the hub's login form at HUB_URL (scheme://host:port)."""
    browser.get(f"{hub_url}/hub/login")
    browser.find_element(By.ID, "username_input").send_keys(name)
    browser.find_element(By.ID, "password_input").send_keys(password)
    browser.find_element(By.ID, "login_submit").click()


def notebook_launcher_card(browser: webdriver.Chrome, wait: WebDriverWait):
    """Once the server's JupyterLab opens: the launcher's Notebook card, on an empty
    workspace. An analyst who used the browser before gets their last layout back (the
    shared stack's analysts do, from earlier modules), and its open notebook asks for a
    kernel in a dialog over the launcher."""
    wait.until(reloading(lambda b: "/user/" in b.current_url and "/lab" in b.current_url))
    browser.get(browser.current_url.split("/lab")[0] + "/lab?reset")
    return wait.until(
        reloading(
            EC.element_to_be_clickable(
                (By.CSS_SELECTOR, '.jp-LauncherCard[data-category="Notebook"]')
            )
        )
    )


# Chromium drops a page load when this host's network changes (ERR_NETWORK_CHANGED), and a
# spawn changes it: the analyst's network is a new bridge here. The page then stays on
# Chromium's error page, which a person would reload.
NETWORK_CHANGED = "ERR_NETWORK_CHANGED"


def reloading(condition):
    """CONDITION for WebDriverWait.until, reloading a page Chromium gave up on because the
    host's network changed."""

    def check(b):
        if NETWORK_CHANGED in b.page_source:
            b.refresh()
            return False
        return condition(b)

    return check


def lab_wait(browser: webdriver.Chrome, timeout: float = 240) -> WebDriverWait:
    """A wait for pages up to JupyterLab's. JupyterLab replaces widgets while it loads (a
    cell's editor once the kernel attaches), so an element found a moment ago may be gone
    when the wait checks it: the wait then looks again, as a person's eyes would."""
    return WebDriverWait(browser, timeout, ignored_exceptions=(StaleElementReferenceException,))


CELL_EDITOR = (By.CSS_SELECTOR, ".jp-NotebookPanel .jp-Cell .cm-content")


def printed_by_a_new_notebook(wait: WebDriverWait, card, code: str, prefix: str) -> str:
    """Open a notebook from the launcher CARD, run CODE in its first cell, and return the
    output line that starts with PREFIX. WAIT: a lab_wait."""
    card.click()
    wait.until(EC.element_to_be_clickable(CELL_EDITOR))
    # Typing before the kernel is attached would "run" the cell with no kernel: wait for Idle.
    wait.until(lambda b: "| Idle" in b.find_element(By.ID, "jp-main-statusbar").text)
    # Found again: the editor found before the kernel attached may have been replaced since.
    editor = wait.until(EC.element_to_be_clickable(CELL_EDITOR))
    editor.click()
    editor.send_keys(code)
    editor.send_keys(Keys.SHIFT, Keys.ENTER)
    out = wait.until(
        lambda b: next(
            (
                e.text
                for e in b.find_elements(By.CSS_SELECTOR, ".jp-OutputArea-output")
                if e.text.startswith(prefix)
            ),
            None,
        )
    )
    return out.strip()


def uid_printed_by_a_new_notebook(wait: WebDriverWait, card) -> str:
    """Open a notebook from the launcher CARD, run `print('UID', os.getuid())` in it, and
    return what the cell printed."""
    return printed_by_a_new_notebook(wait, card, "import os; print('UID', os.getuid())", "UID ")

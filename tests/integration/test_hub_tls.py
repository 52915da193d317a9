"""HTTPS at the hub on the shared stack, switched by `hubstack up` to hub.tls.mode
self-signed for this module: the proxy serves a certificate from
the platform's CA, which clients verify with STATE_DIR/tls/ca.pem and without it refuse;
plain HTTP is redirected to https; the login cookies are Secure; no HSTS while the
certificate is self-signed. Chromium, trusting exactly that CA's key, logs in over HTTPS
and a notebook cell prints the analyst's UID. Then the same stack switches to files mode
with "the site's" certificate from another CA: after `hubstack up` that certificate is
served, HSTS is sent, and the logged-in session still holds."""

from __future__ import annotations

import shutil
import ssl
import tempfile
from pathlib import Path

import pytest
import requests
import yaml
from cryptography import x509
from selenium.webdriver.common.by import By
from selenium.webdriver.support import expected_conditions as EC

from hubstack import tls
from tests.conftest import free_port
from tests.integration.browser import (
    ARTIFACTS,
    lab_wait,
    log_in,
    notebook_launcher_card,
    start_chromium_trusting_platform_ca,
    uid_printed_by_a_new_notebook,
)
from tests.integration.conftest import ANALYSTS
from tests.integration.hubstack_e2e import HubClient, hubstack, reconfigured_stack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

HSTS = "Strict-Transport-Security"


@pytest.fixture(scope="module")
def tls_stack(hub_stack, clients):
    """The shared platform switched to hub.tls.mode self-signed by `hubstack up`, as its
    engineer would, and back to plain HTTP after the module."""
    _, config, _ = hub_stack
    tmp = Path(tempfile.mkdtemp(prefix="hubtest-tls-"))

    def self_signed(data: dict) -> None:
        data["hub"]["tls"] = {"mode": "self-signed", "http_port": free_port()}

    try:
        with reconfigured_stack(Path(config), self_signed) as (cfg, out):
            yield cfg, Path(config), out, tmp
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def base(cfg) -> str:
    return f"https://{cfg.hub.host}:{cfg.hub.port}"


def served_fingerprint(cfg) -> str:
    pem = ssl.get_server_certificate((cfg.hub.host, cfg.hub.port), timeout=10)
    return tls.fingerprint(x509.load_pem_x509_certificate(pem.encode()))


@pytest.fixture(scope="module")
def alice(tls_stack):
    """alice, logged in over HTTPS through the login form (cookies), verifying with the CA."""
    cfg, _, _, _ = tls_stack
    client = HubClient(base(cfg), "alice", verify=str(cfg.tls_ca_cert_file))
    login = client.login(ANALYSTS["alice"][0])
    assert login.status_code == 302, login.text[:300]
    client.login_response = login
    return client


def test_https_verifies_with_the_platform_ca_and_only_with_it(tls_stack):
    cfg, _, out, _ = tls_stack
    ca = tls.CertificateAuthority(cfg.tls_ca_cert_file, cfg.tls_ca_key_file)
    # `up` says where the CA is, its fingerprint and how to trust it.
    assert "hubstack is up in" in out and f"{base(cfg)}/" in out
    assert f"CA certificate: {cfg.tls_ca_cert_file}" in out
    assert f"CA SHA-256 fingerprint: {ca.fingerprint}" in out
    assert f"curl --cacert {cfg.tls_ca_cert_file} {base(cfg)}/" in out
    assert cfg.tls_ca_key_file.stat().st_mode & 0o777 == 0o600
    assert cfg.hub_tls_key_file.stat().st_mode & 0o777 == 0o600

    r = requests.get(f"{base(cfg)}/hub/login", verify=str(cfg.tls_ca_cert_file), timeout=30)
    assert r.status_code == 200 and "login" in r.text.lower()
    with pytest.raises(requests.exceptions.SSLError, match="CERTIFICATE_VERIFY_FAILED"):
        requests.get(f"{base(cfg)}/hub/login", timeout=30)  # the system's CAs only
    assert served_fingerprint(cfg) == tls.fingerprint(tls.load_chain(cfg.hub_tls_cert_file)[0])


def test_plain_http_is_redirected_to_https(tls_stack):
    cfg, _, _, _ = tls_stack
    port = cfg.hub.redirect_port
    r = requests.get(
        f"http://{cfg.hub.host}:{port}/hub/login?next=%2Fhub%2Fhome",
        allow_redirects=False,
        timeout=30,
    )
    assert r.status_code == 301
    assert r.headers["Location"] == f"{base(cfg)}/hub/login?next=%2Fhub%2Fhome"
    # Followed, it lands on the login page over https.
    r = requests.get(
        f"http://{cfg.hub.host}:{port}/hub/login", verify=str(cfg.tls_ca_cert_file), timeout=30
    )
    assert r.status_code == 200 and r.url.startswith(f"{base(cfg)}/hub/login")


def test_login_cookies_are_secure_and_no_hsts_while_self_signed(tls_stack, alice):
    cookies = {c.name: c for c in alice.http.cookies}
    assert "jupyterhub-hub-login" in cookies, sorted(cookies)
    insecure = [name for name, c in cookies.items() if not c.secure]
    assert not insecure, f"cookies without Secure: {insecure}"
    set_cookie = alice.login_response.headers["Set-Cookie"]
    assert "jupyterhub-hub-login=" in set_cookie and "Secure" in set_cookie
    home = alice.http.get(
        f"{alice.base}/hub/home", allow_redirects=False, timeout=30, verify=alice.verify
    )
    assert home.status_code == 200, "the cookie logs alice in"
    assert HSTS not in home.headers and HSTS not in alice.login_response.headers


@pytest.fixture
def browser(tls_stack):
    """Chromium that trusts the platform CA's key, and nothing beyond the usual: the flag
    names one SPKI hash (the CA's, which the hub sends in its chain), not every error."""
    cfg, _, _, _ = tls_stack
    b = start_chromium_trusting_platform_ca(cfg)
    yield b
    b.quit()


def test_chromium_logs_in_over_https_and_a_cell_prints_the_uid(tls_stack, browser):
    cfg, _, _, _ = tls_stack
    name = "bob"
    password, uid, _gid, _groups = ANALYSTS[name]
    wait = lab_wait(browser)
    ARTIFACTS.mkdir(exist_ok=True)
    try:
        log_in(browser, base(cfg), name, password)
        wait.until(EC.presence_of_element_located((By.CSS_SELECTOR, "#spawn_form")))
        session = [c for c in browser.get_cookies() if c["name"] == "jupyterhub-hub-login"]
        assert session and session[0]["secure"], browser.get_cookies()
        browser.find_element(By.CSS_SELECTOR, "#spawn_form [type=submit]").click()
        card = notebook_launcher_card(browser, wait)
        assert browser.current_url.startswith(f"{base(cfg)}/user/{name}/lab")
        assert uid_printed_by_a_new_notebook(wait, card) == f"UID {uid}"
    finally:
        browser.save_screenshot(str(ARTIFACTS / "tls-notebook-uid.png"))
        bob = HubClient(base(cfg), name, verify=str(cfg.tls_ca_cert_file))
        if bob.login(password).status_code == 302:
            bob.make_token()
            if bob.running():
                bob.stop()


def test_files_mode_serves_the_sites_certificate_keeps_the_session_sends_hsts(tls_stack, alice):
    cfg, config, _, tmp = tls_stack
    # "The site's" certificate: another CA, as a company CA or certbot would have issued it.
    site_ca = tls.CertificateAuthority.ensure(
        tmp / "site" / "ca.pem", tmp / "site" / "ca-key.pem", "Example Corp test CA"
    )
    site_cert = site_ca.issue(
        [cfg.hub.host, "localhost"], tmp / "site" / "fullchain.pem", tmp / "site" / "privkey.pem"
    )
    data = yaml.safe_load(config.read_text())
    site = tmp / "site"
    data["hub"]["tls"].update(
        mode="files", cert=str(site / "fullchain.pem"), key=str(site / "privkey.pem")
    )
    config.write_text(yaml.safe_dump(data))
    r = hubstack(config, "up", "--no-build")
    assert r.returncode == 0, f"hubstack up failed:\n{r.stdout}\n{r.stderr}"
    assert "HTTPS: your certificate" in r.stdout and tls.fingerprint(site_cert) in r.stdout

    assert served_fingerprint(cfg) == tls.fingerprint(site_cert)
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(f"{base(cfg)}/hub/login", verify=str(cfg.tls_ca_cert_file), timeout=30)
    # alice's browser session (her cookie) holds across the hub's restart.
    alice.verify = str(site_ca.cert_file)
    home = alice.http.get(
        f"{alice.base}/hub/home", allow_redirects=False, timeout=30, verify=alice.verify
    )
    assert home.status_code == 200, f"session lost: {home.status_code} {home.headers}"
    assert home.headers[HSTS] == "max-age=31536000"
    login = requests.get(f"{base(cfg)}/hub/login", verify=str(site_ca.cert_file), timeout=30)
    assert login.headers[HSTS] == "max-age=31536000"

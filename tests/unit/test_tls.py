"""HTTPS at the hub without an engine: the CA module (hubstack.tls) checked with real TLS
handshakes through Python's ssl module, the hub.tls config rules, and what the hub and
compose are told."""

from __future__ import annotations

import base64
import datetime as dt
import hashlib
import socket
import ssl
import threading

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from traitlets.config import Config

from hubstack import stack, tls
from hubstack.config import ConfigError, load_config, parse_config
from hubstack.hub import setup


@pytest.fixture
def ca(tmp_path):
    return tls.CertificateAuthority.ensure(
        tmp_path / "tls" / "ca.pem", tmp_path / "secrets" / "ca-key.pem", "test CA"
    )


def handshake(cert_file, key_file, cafile, server_hostname: str) -> str:
    """A real TLS handshake: a server on loopback with CERT_FILE/KEY_FILE, a client that
    trusts CAFILE and connects by SERVER_HOSTNAME. Returns 'ok' or the client's error."""
    server_ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_ctx.load_cert_chain(cert_file, key_file)
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]

    def serve():
        conn, _ = listener.accept()
        try:
            with server_ctx.wrap_socket(conn, server_side=True):
                pass
        except (ssl.SSLError, OSError):
            pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=10) as raw:
            with client_ctx.wrap_socket(raw, server_hostname=server_hostname):
                return "ok"
    except ssl.SSLCertVerificationError as e:
        return e.verify_message
    finally:
        t.join(10)
        listener.close()


# --- the CA module ---------------------------------------------------------------------
def test_the_ca_is_made_once_with_a_private_key(tmp_path, ca):
    assert ca.key_file.stat().st_mode & 0o777 == 0o600
    assert ca.key_file.parent.stat().st_mode & 0o777 == 0o700
    again = tls.CertificateAuthority.ensure(ca.cert_file, ca.key_file, "another name")
    assert again.fingerprint == ca.fingerprint
    assert again.common_name == "test CA"
    cert = x509.load_pem_x509_certificate(ca.cert_file.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca


def test_fingerprint_and_spki_hash_are_the_usual_ones(ca):
    cert = ca.certificate
    assert ca.fingerprint == cert.fingerprint(hashes.SHA256()).hex(":").upper()
    assert len(ca.fingerprint.split(":")) == 32
    # What `openssl x509 -pubkey | openssl pkey -pubin -outform der | sha256 | base64` gives.
    der = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    assert ca.spki_sha256 == base64.b64encode(hashlib.sha256(der).digest()).decode()


def test_half_a_ca_is_refused_not_replaced(ca):
    ca.key_file.unlink()
    with pytest.raises(tls.CertificateError, match="missing while .*ca.pem exists"):
        tls.CertificateAuthority.ensure(ca.cert_file, ca.key_file, "test CA")


def test_a_ca_key_others_can_read_is_refused(ca):
    ca.key_file.chmod(0o644)
    with pytest.raises(tls.CertificateError, match="chmod 600"):
        tls.CertificateAuthority.ensure(ca.cert_file, ca.key_file, "test CA")


def test_a_server_certificate_names_dns_and_ip_and_verifies_with_the_ca(tmp_path, ca):
    crt, key = tmp_path / "hub.pem", tmp_path / "secrets" / "hub-key.pem"
    issued = ca.ensure_server_certificate(["Hub.Example.org", "10.1.2.3", "::1"], crt, key)
    assert issued.reissued and issued.reason == "none yet"
    assert issued.names == {"hub.example.org", "10.1.2.3", "::1"}
    assert key.stat().st_mode & 0o777 == 0o600
    chain = tls.load_chain(crt)
    assert [c.subject for c in chain] == [issued.certificate.subject, ca.certificate.subject]
    assert handshake(crt, key, ca.cert_file, "hub.example.org") == "ok"
    assert "mismatch" in handshake(crt, key, ca.cert_file, "other.example.org").lower()
    other = tls.CertificateAuthority.ensure(tmp_path / "o.pem", tmp_path / "o-key.pem", "other")
    assert "self-signed" in handshake(crt, key, other.cert_file, "hub.example.org")


def test_a_fitting_certificate_is_kept_and_a_changed_one_reissued(tmp_path, ca):
    crt, key = tmp_path / "hub.pem", tmp_path / "hub-key.pem"
    first = ca.ensure_server_certificate(["hub.example.org", "127.0.0.1"], crt, key)
    kept = ca.ensure_server_certificate(["127.0.0.1", "HUB.example.org"], crt, key)
    assert not kept.reissued and kept.fingerprint == first.fingerprint

    renamed = ca.ensure_server_certificate(["hub.example.org", "lab.example.org"], crt, key)
    assert renamed.reissued
    assert renamed.reason == "names changed (+lab.example.org, -127.0.0.1)"

    short = ca.issue(["hub.example.org", "lab.example.org"], crt, key, days=10)
    renewed = ca.ensure_server_certificate(["hub.example.org", "lab.example.org"], crt, key)
    assert renewed.reissued and renewed.reason.startswith("expires in ")
    assert renewed.not_after > short.not_valid_after_utc + dt.timedelta(days=300)

    other = tls.CertificateAuthority.ensure(tmp_path / "o.pem", tmp_path / "o-key.pem", "o")
    other.issue(["hub.example.org", "lab.example.org"], crt, key)
    assert ca.reissue_reason(["hub.example.org", "lab.example.org"], crt, key) == (
        "issued by another CA"
    )
    ca.issue(["hub.example.org"], crt, key)
    ca.issue(["hub.example.org"], tmp_path / "x.pem", tmp_path / "x-key.pem")
    key.write_bytes((tmp_path / "x-key.pem").read_bytes())
    assert "is not its key" in ca.reissue_reason(["hub.example.org"], crt, key)


def test_served_files_are_checked_before_the_proxy_gets_them(tmp_path, ca):
    crt, key = tmp_path / "site.pem", tmp_path / "site-key.pem"
    ca.issue(["hub.example.org"], crt, key)
    assert tls.check_served_files(crt, key)[0].subject.rfc4514_string() == ("CN=hub.example.org")
    ca.issue(["hub.example.org"], tmp_path / "x.pem", tmp_path / "x-key.pem")
    with pytest.raises(tls.CertificateError, match="is not the key of the first certificate"):
        tls.check_served_files(crt, tmp_path / "x-key.pem")
    ca.issue(["hub.example.org"], crt, key, days=0)  # not after == now - 5 min: expired
    with pytest.raises(tls.CertificateError, match="expired on"):
        tls.check_served_files(crt, key)
    secret = ec.generate_private_key(ec.SECP256R1()).private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.BestAvailableEncryption(b"pw"),
    )
    key.write_bytes(secret)
    with pytest.raises(tls.CertificateError, match="without a passphrase"):
        tls.check_served_files(crt, key)
    (tmp_path / "empty.pem").write_text("not a certificate\n")
    with pytest.raises(tls.CertificateError, match="holds no PEM certificate"):
        tls.check_served_files(tmp_path / "empty.pem", key)


def test_wildcards_cover_one_label(tmp_path, ca):
    cert = ca.issue(["*.hub.example.org"], tmp_path / "w.pem", tmp_path / "w-key.pem")
    assert tls.covers(cert, "alice.hub.example.org")
    assert not tls.covers(cert, "a.b.hub.example.org")
    assert not tls.covers(cert, "hub.example.org")


# --- the config ----------------------------------------------------------------------
def error(data: dict) -> str:
    with pytest.raises(ConfigError) as e:
        parse_config(data)
    return str(e.value)


def test_defaults_keep_plain_http_on_loopback():
    cfg = parse_config({})
    assert cfg.hub.tls.mode == "off" and not cfg.hub.tls.enabled
    assert cfg.hub.public_url == "http://127.0.0.1:8000/"
    assert cfg.hub.redirect_port is None


def test_clear_text_off_loopback_is_refused_and_says_why_and_what_to_set():
    msg = error({"hub": {"host": "0.0.0.0"}})
    assert msg.startswith("<config>: hub.tls: mode is off and hub.host 0.0.0.0 is not a loopback")
    assert "passwords and session cookies would cross the network in clear text" in msg
    assert "hub.tls.mode: self-signed" in msg and "hub.tls.insecure_ok: true" in msg
    assert parse_config({"hub": {"host": "0.0.0.0", "tls": {"insecure_ok": True}}})
    assert parse_config({"hub": {"host": "127.0.0.2"}})
    assert parse_config({"hub": {"host": "10.0.0.5", "tls": {"mode": "self-signed"}}})


def test_files_mode_needs_both_paths_and_other_modes_take_none():
    assert "mode files needs cert and key" in error({"hub": {"tls": {"mode": "files"}}})
    msg = error({"hub": {"tls": {"mode": "self-signed", "key": "/k.pem"}}})
    assert "hub.tls: key is read only in mode files (mode is self-signed)" in msg
    assert "hub.tls.names: 'hub_1' is neither" in error({"hub": {"tls": {"names": ["hub_1"]}}})
    assert "hub.tls.mode: Input should be" in error({"hub": {"tls": {"mode": "on"}}})


def test_relative_certificate_paths_are_the_config_files(tmp_path):
    f = tmp_path / "hubstack.yaml"
    f.write_text("hub:\n  tls:\n    mode: files\n    cert: certs/full.pem\n    key: certs/k.pem\n")
    cfg = load_config(f)
    assert cfg.hub_tls_cert_file == tmp_path / "certs" / "full.pem"
    assert cfg.hub_tls_key_file == tmp_path / "certs" / "k.pem"


def test_the_redirect_port_and_the_public_url():
    on = {"mode": "self-signed"}
    assert parse_config({"hub": {"tls": on}}).hub.redirect_port == 8001
    assert parse_config({"hub": {"port": 443, "tls": on}}).hub.redirect_port == 80
    cfg = parse_config({"hub": {"port": 8443, "tls": {**on, "http_port": 8080}}})
    assert cfg.hub.redirect_port == 8080
    assert cfg.hub.public_url == "https://127.0.0.1:8443/"
    msg = error({"hub": {"port": 8443, "tls": {**on, "http_port": 8443}}})
    assert "tls.http_port: must be a port other than hub.port (8443)" in msg
    cfg = parse_config(
        {"hub": {"host": "0.0.0.0", "port": 443, "tls": {**on, "names": ["Hub.Example.org"]}}}
    )
    assert cfg.hub.public_url == "https://hub.example.org/"


def test_subdomain_host_follows_the_hubs_own_tls():
    on = {"mode": "self-signed"}
    msg = error({"hub": {"port": 8000, "tls": on, "subdomain_host": "http://localhost:8000"}})
    assert "the hub serves https, so write https://" in msg
    msg = error({"hub": {"port": 8443, "tls": on, "subdomain_host": "https://hub.example.org"}})
    assert "has port 443, not hub.port 8443" in msg
    assert parse_config(
        {"hub": {"port": 443, "tls": on, "subdomain_host": "https://hub.example.org"}}
    )
    # tls off: an https URL is a terminator's in front, on any port
    assert parse_config({"hub": {"port": 8000, "subdomain_host": "https://hub.example.org"}})


# --- what the hub and compose are told ---------------------------------------------------
def hub_settings(tmp_path, monkeypatch, data: dict) -> Config:
    for name in ("cookie_secret", "proxy_token", "crypt_key"):
        (tmp_path / name).write_text("x" * 64)
    monkeypatch.setattr(setup, "SECRETS", tmp_path)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "x" * 64)
    c = Config()
    setup.configure_hub(c, parse_config(data))
    return c


def test_the_proxy_serves_tls_redirects_http_and_cookies_are_secure(tmp_path, monkeypatch):
    c = hub_settings(tmp_path, monkeypatch, {"hub": {"port": 8443, "tls": {"mode": "self-signed"}}})
    assert c.JupyterHub.ssl_cert == str(tmp_path / "tls_cert")
    assert c.JupyterHub.ssl_key == str(tmp_path / "tls_key")
    assert c.JupyterHub.bind_url == "https://0.0.0.0:8000"
    assert c.ConfigurableHTTPProxy.command == [
        "configurable-http-proxy",
        "--redirect-port",
        "8080",
        "--redirect-to",
        "8443",
    ]
    settings = c.JupyterHub.tornado_settings
    assert settings["cookie_options"] == {"secure": True}
    assert "Strict-Transport-Security" not in settings.get("headers", {})

    files = {"mode": "files", "cert": "/c.pem", "key": "/k.pem"}
    c = hub_settings(tmp_path, monkeypatch, {"hub": {"tls": files}})
    assert c.JupyterHub.tornado_settings["headers"] == {
        "Strict-Transport-Security": "max-age=31536000"
    }

    c = hub_settings(tmp_path, monkeypatch, {})
    assert "ssl_cert" not in c.JupyterHub and "cookie_options" not in c.JupyterHub.tornado_settings


def test_compose_gets_the_tls_file_and_the_certificate_digest(tmp_path):
    cfg = parse_config(
        {"state_dir": str(tmp_path), "hub": {"port": 8443, "tls": {"mode": "self-signed"}}}
    )
    assert [f.name for f in stack.compose_files(cfg)] == ["compose.yaml", "tls.yaml"]
    stack.ensure_hub_certificate(cfg)
    env = stack.compose_env(cfg)
    assert env["HUBSTACK_HUB_HTTP_PORT"] == "8444"
    assert env["HUBSTACK_TLS_CERT"] == str(tmp_path / "tls" / "hub.pem")
    assert env["HUBSTACK_TLS_KEY"] == str(tmp_path / "secrets" / "tls-hub-key.pem")
    first = env["HUBSTACK_TLS_CERT_SHA256"]
    assert len(first) == 64
    cfg = cfg.model_copy(
        update={
            "hub": cfg.hub.model_copy(
                update={"tls": cfg.hub.tls.model_copy(update={"names": ["hub.example.org"]})}
            )
        }
    )
    stack.ensure_hub_certificate(cfg)  # new names: a new certificate, a new digest
    assert stack.compose_env(cfg)["HUBSTACK_TLS_CERT_SHA256"] != first
    off = parse_config({"state_dir": str(tmp_path)})
    assert [f.name for f in stack.compose_files(off)] == ["compose.yaml"]
    assert "HUBSTACK_TLS_CERT" not in stack.compose_env(off)


def test_the_self_signed_certificate_names_what_people_type(tmp_path):
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "hub": {
                "host": "10.0.0.5",
                "port": 443,
                "tls": {"mode": "self-signed", "names": ["hub.example.org"]},
                "subdomain_host": "https://lab.example.org",
            },
        }
    )
    names = stack.hub_certificate_names(cfg)
    assert names == [
        "hub.example.org",
        "10.0.0.5",
        "localhost",
        "127.0.0.1",
        "lab.example.org",
        "*.lab.example.org",
    ]
    cert = stack.ensure_hub_certificate(cfg)
    assert cert is not None and cert.ca is not None
    assert tls.certificate_names(cert.leaf) == set(names)
    lines = "\n".join(stack.https_lines(cfg, cert))
    assert f"CA certificate: {tmp_path / 'tls' / 'ca.pem'}" in lines
    assert cert.ca.fingerprint in lines
    assert f"curl --cacert {tmp_path / 'tls' / 'ca.pem'} https://lab.example.org/" in lines
    assert "http://10.0.0.5:80/ redirects to https" in lines
    # The CA key and the hub's key are secrets (backed up with them, hidden from the hub).
    assert cfg.tls_ca_key_file.parent == cfg.secrets_dir == cfg.hub_tls_key_file.parent


def test_files_mode_problems_name_the_keys(tmp_path, ca):
    crt, key = tmp_path / "site.pem", tmp_path / "site-key.pem"
    ca.issue(["hub.example.org"], crt, tmp_path / "other-key.pem")
    ca.issue(["hub.example.org"], tmp_path / "x.pem", key)
    cfg = parse_config(
        {
            "state_dir": str(tmp_path),
            "hub": {"tls": {"mode": "files", "cert": str(crt), "key": str(key)}},
        }
    )
    with pytest.raises(Exception, match="hub.tls.cert / hub.tls.key: .*is not the key"):
        stack.ensure_hub_certificate(cfg)

"""`hubstack doctor`'s own logic: line format, verdicts, exit code, ports, disk thresholds,
credentials and the package-index verdicts. Ports and HTTP answers are real loopback
sockets and servers made here; nothing needs the Docker engine."""

from __future__ import annotations

import base64
import contextlib
import json
import socket
import ssl
import threading
from collections.abc import Callable, Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest

from hubstack import doctor
from hubstack.cli import build_parser
from hubstack.config import PlatformConfig, parse_config
from hubstack.doctor import FAIL, OK, WARN, Check, Context, GiB, Probe
from hubstack.errors import CommandError
from hubstack.registry import PULL, registry_certificate
from tests.conftest import free_port

PASSWORD = "s3cret-not-to-be-shown"


def make_cfg(tmp_path: Path, **sections) -> PlatformConfig:
    data: dict = {
        "state_dir": str(tmp_path / "state"),
        "registry": {"address": f"127.0.0.1:{free_port()}"},
        "hub": {"port": free_port()},
        "gpu": {"count": 0},
    }
    for key, value in sections.items():
        data.setdefault(key, {}).update(value)
    return parse_config(data)


@contextlib.contextmanager
def http_server(
    respond: Callable[[str, str | None], int],
    port: int = 0,
    tls_context: ssl.SSLContext | None = None,
) -> Iterator[int]:
    """A loopback HTTP server answering GET PATH with respond(path, Authorization header);
    HTTPS with TLS_CONTEXT."""

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self) -> None:
            self.send_response(respond(self.path, self.headers.get("Authorization")))
            self.send_header("Content-Length", "0")
            self.end_headers()

        def log_message(self, *args) -> None:  # keep the test output clean
            pass

    server = ThreadingHTTPServer(("127.0.0.1", port), Handler)
    if tls_context is not None:
        server.socket = tls_context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield server.server_address[1]
    finally:
        server.shutdown()
        server.server_close()


# --- format, summary, exit code ---------------------------------------------------------
def test_ok_line_is_aligned_and_has_no_fix():
    line = doctor.format_check(Check("engine", OK, "dockerd 20.10.24, API 1.41", "never shown"))
    assert line == "  ok    engine               dockerd 20.10.24, API 1.41"


def test_fail_line_has_the_fix_indented_below():
    text = doctor.format_check(Check("hub port", FAIL, "127.0.0.1:8000 is in use", "set hub.port"))
    assert text.splitlines() == [
        "  FAIL  hub port             127.0.0.1:8000 is in use",
        "        fix: set hub.port",
    ]


def test_summary_counts_and_exit_code():
    checks = [Check("a", OK, ""), Check("b", OK, ""), Check("c", WARN, "", "x")]
    assert doctor.format_summary(checks) == "2 ok, 1 warn, 0 FAIL"
    assert doctor.exit_code(checks) == 0, "warnings do not fail"
    checks.append(Check("d", FAIL, "", "y"))
    assert doctor.format_summary(checks) == "2 ok, 1 warn, 1 FAIL"
    assert doctor.exit_code(checks) == 1


def test_a_check_that_raises_becomes_one_fail_line(tmp_path):
    def broken(cfg, ctx):
        raise RuntimeError("statvfs exploded\n  on the second line")

    check = doctor.run_check("disk", broken, make_cfg(tmp_path), Context())
    assert check.verdict == FAIL
    assert (
        check.found == "the check itself failed: RuntimeError: statvfs exploded on the second line"
    )
    text = doctor.format_check(check)
    assert "Traceback" not in text and len(text.splitlines()) == 2


def test_checks_run_in_their_order_and_unknown_names_are_refused(tmp_path):
    cfg = make_cfg(tmp_path)
    assert [c.name for c in doctor.run_checks(cfg, ["gpus", "python"])] == ["python", "gpus"]
    with pytest.raises(CommandError, match="no check named 'bogus'"):
        doctor.run_checks(cfg, ["bogus"])
    assert set(doctor.cheap_checks) <= set(doctor.CHECKS)


def test_doctor_is_a_command():
    args = build_parser().parse_args(["doctor", "python", "gpus"])
    assert args.func is doctor.cmd_doctor and args.checks == ["python", "gpus"]


def test_python_and_gpus_on_this_host(tmp_path):
    cfg = make_cfg(tmp_path)
    assert doctor.check_python(cfg, Context()).verdict == OK  # the suite runs on 3.11
    gpus = doctor.check_gpus(cfg, Context())
    assert (gpus.verdict, gpus.found) == (OK, "none (GPU profiles are not offered)")


def test_compose_version_parsing():
    assert doctor.compose_major("2.40.3\n") == 2
    assert doctor.compose_major("v2.24.0") == 2
    assert doctor.compose_major("1.29.2") == 1
    assert doctor.compose_major("garbage") is None


# --- ports ------------------------------------------------------------------------------
def test_a_port_someone_holds_fails_and_names_the_key(tmp_path):
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        assert doctor.bind_error("127.0.0.1", port) is not None
        check = doctor.check_hub_port(make_cfg(tmp_path, hub={"port": port}), Context())
        assert check.verdict == FAIL
        assert f"127.0.0.1:{port} is in use by another program" in check.found
        assert "hub.port" in (check.fix or "")
    assert doctor.bind_error("127.0.0.1", port) is None
    check = doctor.check_hub_port(make_cfg(tmp_path, hub={"port": port}), Context())
    assert (check.verdict, check.found) == (OK, f"127.0.0.1:{port} free")


def test_our_running_hub_on_the_port_is_ok(tmp_path):
    with http_server(lambda path, auth: 200 if path == "/hub/health" else 404) as port:
        check = doctor.check_hub_port(make_cfg(tmp_path, hub={"port": port}), Context())
        # The `up` that switches hub.tls on finds the hub still serving plain HTTP.
        tls = {"mode": "self-signed"}
        switching = doctor.check_hub_port(
            make_cfg(tmp_path, hub={"port": port, "tls": tls}), Context()
        )
    assert (check.verdict, check.found) == (OK, f"the hub is already running on 127.0.0.1:{port}")
    assert (switching.verdict, switching.found) == (OK, check.found)


def test_the_https_redirect_port_is_checked_when_tls_is_on(tmp_path):
    off = doctor.check_hub_http_port(make_cfg(tmp_path), Context())
    assert (off.verdict, off.found) == (OK, "hub.tls is off: no redirect port")
    with socket.socket() as holder:
        holder.bind(("127.0.0.1", 0))
        port = holder.getsockname()[1]
        tls = {"mode": "self-signed", "http_port": port}
        check = doctor.check_hub_http_port(make_cfg(tmp_path, hub={"tls": tls}), Context())
    assert check.verdict == FAIL
    assert f"127.0.0.1:{port} is in use by another program" in check.found
    assert "hub.tls.http_port" in (check.fix or "")
    # Our own hub answers there with its redirect.
    with http_server(lambda path, auth: 301) as port:
        tls = {"mode": "self-signed", "http_port": port}
        check = doctor.check_hub_http_port(make_cfg(tmp_path, hub={"tls": tls}), Context())
    assert check.verdict == OK and "already redirects" in check.found


def test_registry_port_ours_when_v2_answers_401_else_fail(tmp_path):
    with http_server(lambda path, auth: 401 if path == "/v2/" else 404) as port:
        cfg = make_cfg(tmp_path, registry={"address": f"127.0.0.1:{port}"})
        assert doctor.check_registry_port(cfg, Context()).verdict == OK
    with http_server(lambda path, auth: 404) as port:
        cfg = make_cfg(tmp_path, registry={"address": f"127.0.0.1:{port}"})
        check = doctor.check_registry_port(cfg, Context())
    assert check.verdict == FAIL and "registry.address" in (check.fix or "")


def test_hub_host_that_is_not_here_fails(tmp_path):
    # Off loopback the hub serves TLS (or the config is refused, test_tls.py).
    hub = {"host": "192.0.2.1", "tls": {"mode": "self-signed"}}
    check = doctor.check_hub_port(make_cfg(tmp_path, hub=hub), Context())
    assert check.verdict == FAIL
    assert "192.0.2.1 is not an address of this machine" in check.found
    assert "hub.host" in (check.fix or "")


# --- disk -------------------------------------------------------------------------------
def test_disk_thresholds():
    assert doctor.disk_verdict(doctor.FIRST_BUILD_BYTES) == OK
    assert doctor.disk_verdict(doctor.FIRST_BUILD_BYTES - 1) == WARN
    assert doctor.disk_verdict(doctor.DISK_FAIL_BYTES) == WARN
    assert doctor.disk_verdict(doctor.DISK_FAIL_BYTES - 1) == FAIL


def test_disk_line_is_decided_by_the_fullest_filesystem():
    engine = ("engine data", Path("/var/lib/docker"), 40 * GiB)
    ok = doctor.judge_disk([engine, ("state dir", Path("/srv"), 20 * GiB)])
    assert ok.verdict == OK
    assert ok.found == (
        "40.0 GiB free at /var/lib/docker (engine data), 20.0 GiB free at /srv (state dir); "
        "a first build needs 12 GiB"
    )
    warn = doctor.judge_disk([engine, ("state dir", Path("/srv"), 5 * GiB)])
    assert warn.verdict == WARN and "state_dir" in (warn.fix or "")
    assert "/var/lib/docker" not in (warn.fix or ""), "only the short one needs freeing"
    fail = doctor.judge_disk([("engine data, state dir", Path("/"), 2 * GiB)])
    assert fail.verdict == FAIL and "docker builder prune" in (fail.fix or "")


def test_nearest_existing_parent(tmp_path):
    assert doctor.nearest_existing(tmp_path / "not" / "yet") == tmp_path


# --- registry credentials ---------------------------------------------------------------
def write_credentials(cfg: PlatformConfig, mode: int) -> Path:
    path = cfg.registry_credentials_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"username": "hubstack", "password": PASSWORD}))
    path.chmod(mode)
    return path


def test_credentials_not_generated_yet_is_a_warning(tmp_path):
    check = doctor.check_registry_credentials(make_cfg(tmp_path), Context())
    assert check.verdict == WARN and check.found.startswith("not generated yet")
    assert "hubstack up" in (check.fix or "")


def test_credentials_readable_by_others_fail(tmp_path):
    cfg = make_cfg(tmp_path)
    path = write_credentials(cfg, 0o644)
    check = doctor.check_registry_credentials(cfg, Context())
    assert check.verdict == FAIL and "mode 0644" in check.found
    assert check.fix == f"chmod 600 {path}"


def test_credentials_not_tried_when_no_registry_runs(tmp_path):
    cfg = make_cfg(tmp_path)
    write_credentials(cfg, 0o600)
    check = doctor.check_registry_credentials(cfg, Context())
    assert check.verdict == OK and "registry not running" in check.found


def test_credentials_accepted_or_refused_by_the_registry(tmp_path):
    good = "Basic " + base64.b64encode(f"hubstack:{PASSWORD}".encode()).decode()
    for accepted, want in ((good, OK), ("Basic nope", FAIL)):
        with http_server(lambda path, auth, ok=accepted: 200 if auth == ok else 401) as port:
            cfg = make_cfg(tmp_path, registry={"address": f"127.0.0.1:{port}"})
            write_credentials(cfg, 0o600)
            check = doctor.check_registry_credentials(cfg, Context())
        assert check.verdict == want
        if want == FAIL:
            assert "wrong credentials" in check.found
        assert PASSWORD not in doctor.format_check(check)


def test_swarm_modes_pull_credentials_are_tried_over_tls_trusting_the_platform_ca(tmp_path):
    """In swarm mode the read-only instance serves HTTPS with a certificate from the
    platform CA: doctor asks it as nodes do, not over plain HTTP (which it cannot answer)."""
    good = "Basic " + base64.b64encode(f"hubstack-pull:{PASSWORD}".encode()).decode()
    probe = make_cfg(tmp_path)
    port = free_port()
    cfg = make_cfg(
        tmp_path,
        cluster={"mode": "swarm"},
        registry={
            "address": probe.registry.address,
            "pull_address": f"127.0.0.1:{port}",
            "users_address": f"127.0.0.1:{free_port()}",
        },
    )
    issued = registry_certificate(cfg, PULL)
    tls_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    tls_context.load_cert_chain(issued.cert_file, issued.key_file)
    path = cfg.registry_pull_credentials_file
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps({"username": "hubstack-pull", "password": PASSWORD}))
    path.chmod(0o600)
    with http_server(lambda p, auth: 200 if auth == good else 401, port, tls_context):
        check = doctor.check_registry_pull_credentials(cfg, Context())
    assert check.verdict == OK, check
    assert f"accepted by the registry at 127.0.0.1:{port}" in check.found


# --- package indexes --------------------------------------------------------------------
WORKS = Probe(True, False, "HTTP 200")
UNTRUSTED = Probe(False, True, "certificate verify failed")
DOWN = Probe(False, False, "Name or service not known")
HOSTS = ("pypi.org", "registry.npmjs.org")


def test_indexes_reachable_with_stock_cas():
    check = doctor.judge_indexes({h: (WORKS, WORKS) for h in HOSTS}, None)
    assert check.verdict == OK and "Debian's stock CAs" in check.found


def test_resigned_tls_is_ok_with_the_bundle_and_fails_without():
    bundle = Path("/etc/ssl/certs/ca-certificates.crt")
    with_bundle = doctor.judge_indexes({h: (UNTRUSTED, WORKS) for h in HOSTS}, bundle)
    assert with_bundle.verdict == OK
    assert with_bundle.found.startswith("TLS is re-signed on this network")
    without = doctor.judge_indexes({h: (UNTRUSTED, WORKS) for h in HOSTS}, None)
    assert without.verdict == FAIL and "base.extra_ca_bundle" in (without.fix or "")


def test_unreachable_or_untrusted_index_fails():
    down = doctor.judge_indexes(
        {"pypi.org": (WORKS, WORKS), "registry.npmjs.org": (DOWN, DOWN)}, None
    )
    assert down.verdict == FAIL and "registry.npmjs.org: not reachable" in down.found
    untrusted = doctor.judge_indexes({h: (UNTRUSTED, UNTRUSTED) for h in HOSTS}, Path("/x.pem"))
    assert untrusted.verdict == FAIL and "not trusted, even with base.extra_ca_bundle" in (
        untrusted.found
    )


def test_an_index_that_refuses_is_named_and_a_timeout_is_not_resigning():
    refused = Probe(False, False, "HTTP 404")
    check = doctor.judge_indexes({"pypi.example": (refused, refused)}, None)
    assert check.verdict == FAIL and check.found == "pypi.example: answered HTTP 404"
    flaky = doctor.judge_indexes({"pypi.org": (DOWN, WORKS)}, None)
    assert flaky.verdict == OK and "re-signed" not in flaky.found

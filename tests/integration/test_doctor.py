"""`hubstack doctor` as a platform engineer runs it, against the real engine: one line per
check in order, the exit code follows the FAIL lines, and a hub port taken by another
program is a FAIL whose fix names hub.port."""

from __future__ import annotations

import re
import socket
from pathlib import Path

import pytest
import yaml

from hubstack import doctor
from hubstack.config import PlatformConfig, load_config
from tests.conftest import free_port
from tests.integration.hubstack_e2e import hubstack

pytestmark = pytest.mark.integration

LINE = re.compile(r"^  (ok|warn|FAIL) +(\S.{19}) (.*)$")
SUMMARY = re.compile(r"^(\d+) ok, (\d+) warn, (\d+) FAIL$")


def config_with_hub_port(platform_config: PlatformConfig, tmp_path: Path, port: int) -> Path:
    """The session's platform config, with the hub on PORT (8000 may be anyone's here)."""
    assert platform_config.path is not None
    data = yaml.safe_load(platform_config.path.read_text())
    data.setdefault("hub", {})["port"] = port
    path = tmp_path / "hubstack.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def check_lines(stdout: str) -> dict[str, tuple[str, str, str | None]]:
    """name -> (verdict, found, fix) from the doctor's output, which must be all lines."""
    lines = stdout.splitlines()
    assert SUMMARY.match(lines[-1]), lines[-1]
    checks: dict[str, tuple[str, str, str | None]] = {}
    name = ""
    for line in lines[:-1]:
        if line.startswith("        fix: "):
            verdict, found, _ = checks[name]
            checks[name] = (verdict, found, line.removeprefix("        fix: "))
            continue
        m = LINE.match(line)
        assert m, f"not a check line: {line!r}"
        name = m.group(2).strip()
        checks[name] = (m.group(1), m.group(3), None)
    return checks


def test_doctor_reports_every_check_in_order(platform_config, docker_client, tmp_path):
    config = config_with_hub_port(platform_config, tmp_path, free_port())
    r = hubstack(config, "doctor", timeout=180)
    assert "Traceback" not in r.stdout + r.stderr
    checks = check_lines(r.stdout)
    assert list(checks) == list(doctor.CHECKS)
    failed = [n for n, (verdict, _, _) in checks.items() if verdict == "FAIL"]
    assert r.returncode == (1 if failed else 0), r.stdout
    summary = SUMMARY.match(r.stdout.splitlines()[-1])
    assert summary is not None
    assert tuple(map(int, summary.groups())) == tuple(
        sum(1 for v, _, _ in checks.values() if v == want) for want in ("ok", "warn", "FAIL")
    )
    server = docker_client.version()
    engine = f"dockerd {server['Version']}, API {server['ApiVersion']}"
    assert checks["engine"][:2] == ("ok", engine), "the engine line names the server version"
    assert checks["python"][0] == "ok"
    assert checks["compose"][0] == "ok"
    assert checks["hub port"][0] == "ok"
    for verdict, _, fix in checks.values():
        assert (verdict == "ok") == (fix is None), "warn and FAIL lines carry a fix"


def test_hub_port_in_use_by_another_program_fails(platform_config, tmp_path):
    with socket.socket() as other:
        other.bind(("127.0.0.1", 0))
        other.listen(1)  # listens, never answers: not our hub
        port = other.getsockname()[1]
        config = config_with_hub_port(platform_config, tmp_path, port)
        r = hubstack(config, "doctor", *doctor.cheap_checks, timeout=120)
    assert r.returncode == 1, r.stdout + r.stderr
    checks = check_lines(r.stdout)
    assert list(checks) == list(doctor.cheap_checks)
    assert checks["engine"][0] == "ok"
    verdict, found, fix = checks["hub port"]
    assert (verdict, found) == ("FAIL", f"127.0.0.1:{port} is in use by another program")
    assert fix is not None and "hub.port" in fix


def test_preflight_passes_here(platform_config, docker_client, tmp_path):
    # What `hubstack up` runs before building: on the test machine none of it may fail.
    cfg = load_config(config_with_hub_port(platform_config, tmp_path, free_port()))
    checks = doctor.preflight(cfg, client=docker_client)
    assert [c.name for c in checks] == list(doctor.cheap_checks)
    assert not [c for c in checks if c.verdict == doctor.FAIL], "\n".join(
        map(doctor.format_check, checks)
    )

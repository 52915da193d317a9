"""The README's main job, as a new user runs it: a fresh clone, no config file, `bin/hubstack
up`, then log in with the printed admin, start a server, and `bin/hubstack down`.

Nothing here is overridden: the platform runs on the shipped defaults (state in
/var/lib/hubstack, hub on 127.0.0.1:8000, registry on 127.0.0.1:5000 and, read-only, 5001),
so a default that breaks a first install breaks this test. That is also why it refuses to run
where a platform with the defaults already lives: it would log in to, and stop, someone's
platform.
The session's hierarchy is built first, so the clone's build is layer-cache hits, and the
default registry's volume starts with the layers the session pushed (as a registry that
already holds them), so `up` does not gzip the 2 GB hierarchy again: pushing it into an empty
registry is the session's `hierarchy` fixture's work, on the same code.
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import socket
import subprocess
from pathlib import Path

import docker
import pytest

from hubstack.backup import volume_name
from hubstack.config import parse_config
from hubstack.stack import UP_STAGES
from tests.conftest import IN_CI, SESSION_REGISTRY_VOLUME
from tests.integration.hubstack_e2e import (
    HubClient,
    fresh_clone,
    remove_platform,
    seed_registry_volume,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
DEFAULTS = parse_config({})
DEFAULT_PORTS = (
    DEFAULTS.hub.port,
    DEFAULTS.registry.port,
    DEFAULTS.registry.pull_port,
    DEFAULTS.ci.port,
)


def _busy(port: int) -> bool:
    with socket.socket() as s:
        return s.connect_ex(("127.0.0.1", port)) == 0


def _refuse_if_a_platform_lives_here() -> None:
    problems = [f"port {p} is in use" for p in DEFAULT_PORTS if _busy(p)]
    if DEFAULTS.state_dir.exists():
        problems.append(f"{DEFAULTS.state_dir} exists")
    if problems:
        why = (
            "the first-run test needs the default ports and state dir to itself ("
            + "; ".join(problems)
            + "): it would touch an existing platform"
        )
        if IN_CI:
            pytest.fail(why, pytrace=False)
        pytest.skip(why)


def _launcher(clone: Path, *args: str, timeout: int) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if k not in ("HUBSTACK_CONFIG", "PYTHONPATH")}
    return subprocess.run(
        [str(clone / "bin" / "hubstack"), *args],
        cwd=clone,
        env=env,
        text=True,
        capture_output=True,
        timeout=timeout,
    )


@pytest.fixture
def first_run(tmp_path, docker_client, hierarchy, platform_config):
    _refuse_if_a_platform_lives_here()
    clone = fresh_clone(tmp_path / "hubstack")
    seed_registry_volume(
        docker_client, DEFAULTS, SESSION_REGISTRY_VOLUME, platform_config.images.namespace
    )
    try:
        yield clone, _launcher(clone, "up", timeout=2400)
    finally:
        down = _launcher(clone, "down", timeout=600)
        print(down.stdout, down.stderr)
        # Leave the machine as found: the default platform's volumes, tags and state go.
        remove_platform(DEFAULTS, docker_client)
        with contextlib.suppress(docker.errors.NotFound):  # seeded, and `up` failed early
            docker_client.volumes.get(volume_name(DEFAULTS, "registry-data")).remove(force=True)
        shutil.rmtree(DEFAULTS.state_dir, ignore_errors=True)


def test_readme_main_job_from_a_fresh_clone_with_no_config(first_run, capsys):
    clone, up = first_run
    with capsys.disabled():  # the stage lines and their times, in every CI log
        print("\n" + "\n".join(line for line in up.stdout.splitlines() if line.startswith("[up ")))
    assert up.returncode == 0, f"bin/hubstack up failed:\n{up.stdout[-6000:]}\n{up.stderr[-6000:]}"
    assert not (clone / "hubstack.yaml").exists(), "the run must use the defaults"
    assert (clone / ".venv" / "bin" / "hubstack").exists(), "hubstack lives in the checkout's venv"

    # One line per stage, in order, and the total time at the end.
    stages = re.findall(rf"^\[up (\d)/{len(UP_STAGES)}\] (\w+):", up.stdout, re.M)
    assert [name for _, name in stages] == list(UP_STAGES), up.stdout[-3000:]
    # Nothing was promoted on this fresh install: up tested its build and made it stable.
    assert "notebook: stable -> this build (first install)" in up.stdout, up.stdout[-3000:]
    m = re.search(r"hubstack is up in \d+s: (http://\S+)", up.stdout)
    assert m, up.stdout[-2000:]
    assert m.group(1) == f"http://{DEFAULTS.hub.host}:{DEFAULTS.hub.port}/"

    # The first admin's login, printed once, works; and their server starts.
    login = re.search(r"log in as (\S+) with password (\S+)", up.stdout)
    assert login, up.stdout[-2000:]
    admin = HubClient(m.group(1), login.group(1))
    assert admin.login(login.group(2)).status_code == 302
    admin.make_token()
    admin.start("default")
    assert admin.running()

    # `down` with an analyst's server running stops it too and exits 0 (it used to die on
    # the engine's 409 "removal already in progress"); a second `down` has nothing to stop.
    down = _launcher(clone, "down", timeout=600)
    assert down.returncode == 0, f"{down.stdout}\n{down.stderr}"
    assert f"stopped notebook server of {login.group(1)}" in down.stdout
    assert "hubstack is down" in down.stdout
    again = _launcher(clone, "down", timeout=600)
    assert again.returncode == 0 and "nothing to stop" in again.stdout, again.stdout

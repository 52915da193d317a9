"""Per-user images through the real hub: an analyst's own package imports in their kernel
and on their Spark executors, the second start builds nothing, a package that does not
exist fails the spawn with pip's message and the plain image still starts, and a refused
spec builds nothing; the spawn form's package box (user_images.form) shows, refuses and
sets the list."""

from __future__ import annotations

import time

import pytest

from hubstack.images import user as ui
from hubstack.registry import USERS, RegistryClient
from tests.integration.hubstack_e2e import hub_config_changed, hubstack, start_messages

pytestmark = [pytest.mark.integration, pytest.mark.slow]

PACKAGE = "cowsay==6.1"
"""A small pure-Python package from PyPI that no image of the hierarchy holds."""
MISSING = "no-such-package-hubstack-12==1.0"


def spawn_events(client, timeout: float = 600, **body) -> list[dict]:
    """Start the server and follow its progress to the end, ready or failed."""
    r = client.api("POST", f"/hub/api/users/{client.name}/server", json=body)
    assert r.status_code in (201, 202, 400, 500), r.text
    if r.status_code in (400, 500):
        return [{"failed": True, "message": r.text, "status": r.status_code}]
    return client.progress(timeout)


def server_image(cfg, docker_client, name: str) -> str:
    return docker_client.containers.get(f"{cfg.hub.network}-nb-{name}").attrs["Config"]["Image"]


@pytest.fixture
def packages(hub_stack, clients):
    """Set an analyst's packages with the real CLI; cleared (and servers stopped) after."""
    cfg, config, _ = hub_stack
    names = []

    def give(name: str, *args: str) -> None:
        r = hubstack(config, "users", "env", name, "--clear", *args)
        assert r.returncode == 0, r.stderr
        names.append(name)

    yield give
    for name in names:
        hubstack(config, "users", "env", name, "--clear")
        if clients[name].running():
            clients[name].stop()


def test_own_package_imports_in_the_kernel_and_the_second_start_builds_nothing(
    hub_stack, clients, docker_client, packages
):
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    packages("alice", f"--pip={PACKAGE}")
    events = spawn_events(alice, profile="default")
    assert events[-1].get("ready"), events[-3:]
    messages = [e.get("message", "") for e in events]
    assert any("Building your image: step" in m for m in messages), messages
    # The hub gave the users registry the notebook's layers as stored (through the
    # instances' service names), so the engine pushed only the package's layers.
    assert any(m.startswith("Copied ") for m in messages), messages
    image = server_image(cfg, docker_client, "alice")
    assert image.startswith(f"{cfg.registry.users_address}/{cfg.images.namespace}/user/alice@")
    out = alice.run_code(
        "import cowsay, subprocess\n"
        "print(cowsay.__name__)\n"
        "print(subprocess.run(['id'], capture_output=True, text=True).stdout)"
    )
    assert out.splitlines()[0] == "cowsay"
    assert "uid=23001(alice) gid=23001(alice)" in out

    registry = RegistryClient(cfg, role=USERS)
    tags = registry.tags("user/alice")
    assert len(tags) == 1
    alice.stop()
    since = int(time.time())
    events = spawn_events(alice, profile="default")
    assert events[-1].get("ready"), events[-3:]
    messages = start_messages(cfg, docker_client, events, since)
    assert not any("Building your image" in m for m in messages), messages[-20:]
    assert any("Your packages are ready" in m for m in messages), messages[-20:]
    assert registry.tags("user/alice") == tags
    assert server_image(cfg, docker_client, "alice") == image
    alice.stop()
    # `hubstack images users` says when it was last used: by these starts.
    (record,) = [r for r in ui.list_user_images(cfg, docker_client) if r.user == "alice"]
    assert record.used is not None and record.used >= record.built


def test_spark_executors_import_the_analysts_package(hub_stack, clients, packages):
    alice = clients["alice"]
    packages("alice", f"--pip={PACKAGE}")
    events = spawn_events(alice, profile="spark")
    assert events[-1].get("ready"), events[-3:]
    out = alice.run_code(
        "import os\n"
        "from pyspark.sql import SparkSession\n"
        "sc = SparkSession.builder.getOrCreate().sparkContext\n"
        "def probe(_):\n"
        "    import cowsay, os, socket\n"
        "    return f'{cowsay.__name__} {os.getuid()} {socket.gethostname()}'\n"
        "print('EXECUTORS', sorted(set(sc.parallelize(range(8), 8).map(probe).collect())))\n",
        timeout=420,
    )
    line = [ln for ln in out.splitlines() if ln.startswith("EXECUTORS")][-1]
    assert "cowsay 23001" in line and "spark-worker" in line, line
    alice.stop()


def test_a_missing_package_fails_with_pips_message_and_plain_still_starts(
    hub_stack, clients, docker_client, packages
):
    cfg, _, _ = hub_stack
    bob = clients["bob"]
    packages("bob", f"--pip={MISSING}")
    events = spawn_events(bob, profile="default")
    assert events[-1].get("failed"), events[-3:]
    assert "no-such-package-hubstack-12" in events[-1]["message"], events[-1]
    assert "Start without my own packages" in events[-1]["message"]
    assert not bob.running()

    events = spawn_events(bob, profile="default", plain=True)
    assert events[-1].get("ready"), events[-3:]
    assert f"/{cfg.images.namespace}/notebook@sha256:" in server_image(cfg, docker_client, "bob")
    bob.stop()


def test_a_refused_spec_is_refused_at_start_and_builds_nothing(hub_stack, clients):
    cfg, _, _ = hub_stack
    bob = clients["bob"]
    path = cfg.user_envs_dir / "bob.yaml"
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written past the CLI, as a hand edit would be: the spawner validates it again.
    path.write_text("pip: ['--index-url https://evil.example/simple', 'requests; rm -rf /']\n")
    try:
        before = RegistryClient(cfg, role=USERS).tags("user/bob")
        events = spawn_events(bob, profile="default")
        assert events[-1].get("failed"), events[-1]
        assert "pip options" in events[-1]["message"] and "markers" in events[-1]["message"]
        assert RegistryClient(cfg, role=USERS).tags("user/bob") == before
        assert not bob.running()
    finally:
        ui.clear_env(cfg, "bob")


def test_the_spawn_forms_package_box_shows_refuses_and_sets_the_list(
    hub_stack, clients, docker_client, packages
):
    """user_images.form on (the hub restarts with it for this test): the box holds the
    analyst's list; a hostile line is refused on the form's page with nothing written; an
    emptied box clears the list, and the server starts on the plain image."""
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    packages("alice", f"--pip={PACKAGE}")
    before = ui.env_file(cfg, "alice").read_bytes()

    def form_on(data: dict) -> None:
        data.setdefault("user_images", {})["form"] = True

    spawn_page = f"{alice.base}/hub/spawn/alice"
    with hub_config_changed(cfg, docker_client, form_on):
        page = alice.http.get(spawn_page, timeout=30)
        assert f">{PACKAGE}</textarea>" in page.text
        hostile = f"{PACKAGE}\r\n--index-url https://evil.example/simple"
        form = {"profile": "default", "packages": hostile, "_xsrf": alice._xsrf()}
        r = alice.http.post(spawn_page, data=form, timeout=60)
        assert r.status_code == 400, r.status_code
        assert "nothing was changed" in r.text and "pip options" in r.text
        assert ui.env_file(cfg, "alice").read_bytes() == before
        assert not alice.running()

        form["packages"] = ""
        r = alice.http.post(spawn_page, data=form, timeout=60, allow_redirects=False)
        assert r.status_code == 302, (r.status_code, r.text[-500:])
        assert not ui.env_file(cfg, "alice").exists()
        deadline = time.monotonic() + 300
        while (
            not alice.api("GET", "/hub/api/users/alice").json()["servers"].get("", {}).get("ready")
        ):
            assert time.monotonic() < deadline, "the server did not start"
            time.sleep(2)
        assert f"/{cfg.images.namespace}/notebook@sha256:" in server_image(
            cfg, docker_client, "alice"
        )
        alice.stop()

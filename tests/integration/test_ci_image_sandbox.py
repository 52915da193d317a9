"""A pushed `test_image.py` is untrusted code: `hubstack ci build` runs it in a sandbox.

A tiny image of this test's own carries a `test_image.py` that looks around from where
it runs (the runner container) and from a container of the image under test that its
`run(...)` fixture starts, and asserts what it must not find: the Docker socket, the
platform's state dir and registry credentials, secret-looking environment, a network.
The real `hubstack ci build` builds the image and runs that module; the report must say
every check passed, so each absence is proven where the pushed code really runs.
"""

from __future__ import annotations

import json

import pytest

from hubstack.ci.rebuild import reports_dir
from hubstack.ci.sandbox import SANDBOX_LABEL
from hubstack.cli import main
from hubstack.registry import load_credentials
from tests.ci_support import commit, git
from tests.conftest import SESSION_ID

pytestmark = pytest.mark.integration

PROBE_DOCKERFILE = """\
ARG BASE_IMAGE=debian:bookworm-slim
FROM ${BASE_IMAGE}
COPY marker.txt /usr/share/probe/marker.txt
"""

# Formatted with the platform's paths; everything else is plain Python in the runner.
PROBE_TESTS = """\
import os
import socket
from pathlib import Path

import pytest
from hubstack_imagetest import ask_broker

STATE_DIR = {state_dir!r}
CREDENTIALS = {credentials!r}
WEBHOOK_SECRET = {webhook_secret!r}
SOURCE_DIR = {source_dir!r}
REGISTRY = ({registry_host!r}, {registry_port})
SECRET_WORDS = ("SECRET", "TOKEN", "PASSW", "CREDENTIAL", "KEY", "AUTH")
SOCKETS = ("/var/run/docker.sock", "/run/docker.sock")


def secret_looking(names):
    return [n for n in names if any(w in n.upper() for w in SECRET_WORDS)]


def interfaces(proc_net_dev: str) -> list[str]:
    return sorted(line.split(":")[0].strip() for line in proc_net_dev.splitlines()[2:])


def test_runner_has_no_docker_socket():
    assert [s for s in SOCKETS if Path(s).exists()] == []
    assert "DOCKER_HOST" not in os.environ


def test_runner_sees_no_state_dir_credentials_or_checkout():
    for path in (STATE_DIR, CREDENTIALS, WEBHOOK_SECRET, SOURCE_DIR):
        assert not Path(path).exists(), path


def test_runner_environment_holds_nothing_secret():
    assert secret_looking(os.environ) == []


def test_runner_has_no_network():
    assert interfaces(Path("/proc/net/dev").read_text()) == ["lo"]
    with pytest.raises(OSError):
        socket.create_connection(REGISTRY, timeout=5)


def test_runner_cannot_change_its_tests():
    with pytest.raises(OSError):
        Path(__file__).write_text("")


def test_image_under_test_runs_without_socket_secrets_or_network(run):
    paths = " ".join([*SOCKETS, STATE_DIR, CREDENTIALS, WEBHOOK_SECRET, SOURCE_DIR])
    found = run("sh", "-c", f"for p in {{paths}}; do [ -e $p ] && echo $p; done; true").check()
    assert found.strip() == ""
    assert interfaces(run("cat", "/proc/net/dev").check()) == ["lo"]
    names = [line.split("=")[0] for line in run("env").check().splitlines()]
    assert secret_looking(names) == [] and "DOCKER_HOST" not in names
    # ...and it is the image under test, started with what the test asked for.
    assert run("cat", "/usr/share/probe/marker.txt").check().strip() == "probe"
    assert run("sh", "-c", "echo $WANTED", env={{"WANTED": "given"}}).check().strip() == "given"
    assert run("id", "-u", user="4321").check().strip() == "4321"


def test_the_broker_starts_nothing_but_the_image_under_test(request):
    broker = request.config.getoption("--broker")
    reply = ask_broker(broker, {{"cmd": ["true"], "image": "debian:bookworm-slim"}}, 60)
    assert "unknown field" in reply["error"]
    reply = ask_broker(broker, {{"cmd": ["true"], "volumes": ["/:/host"]}}, 60)
    assert "unknown field" in reply["error"]
"""


@pytest.fixture
def probe(platform_config, docker_client, tmp_path):
    """(cfg, config file) for a repository of one image, `probe`, whose test_image.py looks
    for what it must not see; its state dir holds a registry credential and a webhook
    secret for the probe to look for."""
    repo = tmp_path / "repo"
    folder = repo / "images" / "probe"
    folder.mkdir(parents=True)
    git(repo, "init", "-q", "-b", "main")
    git(repo, "config", "user.email", "ci-tests@hubstack.invalid")
    git(repo, "config", "user.name", "hubstack ci tests")
    images = platform_config.images.model_copy(
        update={"namespace": f"sandbox-{SESSION_ID}", "contexts": ["images/*"], "on_demand": []}
    )
    cfg = platform_config.model_copy(
        update={
            "source_dir": repo,
            "state_dir": tmp_path / "state",
            "images": images,
            "registry": platform_config.registry.model_copy(update={"credentials_file": None}),
        }
    )
    load_credentials(cfg)  # a real credentials file in the state dir, as on a platform
    cfg.webhook_secret_file.parent.mkdir(parents=True, exist_ok=True)
    cfg.webhook_secret_file.write_text("not-to-be-seen\n")
    host, port = cfg.registry.address.rsplit(":", 1)
    (folder / "Dockerfile").write_text(PROBE_DOCKERFILE)
    (folder / "marker.txt").write_text("probe\n")
    (folder / "test_image.py").write_text(
        PROBE_TESTS.format(
            state_dir=str(cfg.state_dir),
            credentials=str(cfg.registry_credentials_file),
            webhook_secret=str(cfg.webhook_secret_file),
            source_dir=str(repo),
            registry_host=host,
            registry_port=int(port),
        )
    )
    commit(repo, "a probe image")
    conf = tmp_path / "hubstack.yaml"
    conf.write_text(json.dumps(json.loads(cfg.model_dump_json(exclude={"path"}))))
    yield cfg, conf
    for img in docker_client.images.list(name=cfg.image_repository("probe")):
        for tag in img.tags:
            docker_client.images.remove(tag)


def test_image_tests_see_no_docker_socket_secrets_or_network(probe, docker_client, capsys):
    cfg, conf = probe
    assert main(["-c", str(conf), "ci", "build", "--all"]) == 0
    (report,) = [json.loads(p.read_text()) for p in reports_dir(cfg).glob("*.json")]
    (image,) = report["images"]
    assert (image["name"], image["status"]) == ("probe", "ok"), image
    assert "7 passed" in image["test_output"], image["test_output"]
    # Nothing of the sandbox is left behind: no container, no broker folder.
    assert docker_client.containers.list(all=True, filters={"label": SANDBOX_LABEL}) == []
    assert list((cfg.state_dir / "ci" / "imagetest").iterdir()) == []
    # By hand, `hubstack ci test` runs the same sandbox.
    capsys.readouterr()
    assert main(["-c", str(conf), "ci", "test", "probe", "--tag", report["tag"]]) == 0
    assert "7 passed" in capsys.readouterr().out


def test_a_test_that_finds_the_socket_fails_the_build(probe):
    """The probe's checks can fail: a module asserting the socket IS there fails the image."""
    cfg, conf = probe
    module = cfg.source_root / "images" / "probe" / "test_image.py"
    module.write_text(
        "from pathlib import Path\n\n\ndef test_socket_is_there():\n"
        "    assert Path('/var/run/docker.sock').exists()\n"
    )
    commit(cfg.source_root, "a probe that wants the socket")
    assert main(["-c", str(conf), "ci", "build", "--all"]) == 1
    (report,) = [json.loads(p.read_text()) for p in reports_dir(cfg).glob("*.json")]
    (image,) = report["images"]
    assert (image["status"], image["stage"]) == ("failed", "test")
    assert "1 failed" in image["test_output"]

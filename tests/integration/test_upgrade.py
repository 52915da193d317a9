"""`hubstack upgrade` on the real stack with an analyst working: a commit adds one package
to the notebook image; the upgrade rebuilds notebook and spark-executor (tests included),
moves `stable`, recreates the Spark cluster, and leaves alice's server running on the old
image. `hubstack env report` then shows alice outdated by exactly that package, and bob,
who starts after the upgrade, current.

The package is a wheel made here, installed with --no-index: the test needs no index."""

from __future__ import annotations

import json
import subprocess
import zipfile
from pathlib import Path

import docker
import pytest
import yaml

from tests.integration.hubstack_e2e import fresh_clone, hubstack

pytestmark = [pytest.mark.integration, pytest.mark.slow]

MARKER = "hubstack-upgrade-marker"
WHEEL = "hubstack_upgrade_marker-1.0-py3-none-any.whl"


def _wheel(path: Path) -> None:
    """The smallest wheel pip installs: one module and its dist-info."""
    info = "hubstack_upgrade_marker-1.0.dist-info"
    files = {
        "hubstack_upgrade_marker/__init__.py": "VERSION = '1.0'\n",
        f"{info}/METADATA": f"Metadata-Version: 2.1\nName: {MARKER}\nVersion: 1.0\n",
        f"{info}/WHEEL": "Wheel-Version: 1.0\nGenerator: hubstack-tests\nRoot-Is-Purelib: true\n"
        "Tag: py3-none-any\n",
    }
    files[f"{info}/RECORD"] = "".join(f"{name},,\n" for name in [*files, f"{info}/RECORD"])
    with zipfile.ZipFile(path, "w") as z:
        for name, text in files.items():
            z.writestr(name, text)


def _commit_a_new_package(clone: Path) -> None:
    folder = clone / "images" / "notebook"
    _wheel(folder / WHEEL)
    dockerfile = folder / "Dockerfile"
    text = dockerfile.read_text()
    # By name from a wheel folder, as from an index: the lock then says NAME==VERSION.
    step = (
        f"COPY {WHEEL} /tmp/wheels/\n"
        "RUN /opt/venv/bin/pip install --no-deps --no-index --find-links /tmp/wheels "
        f"{MARKER}==1.0 \\\n && rm -r /tmp/wheels && hubstack-write-lock notebook\n"
    )
    dockerfile.write_text(text.replace("EXPOSE 8888\n", step + "EXPOSE 8888\n"))
    git = ["git", "-C", str(clone), "-c", "user.name=t", "-c", "user.email=t@example.org"]
    subprocess.run([*git, "add", "-A"], check=True)
    subprocess.run([*git, "commit", "-qm", f"notebook: add {MARKER}"], check=True)


@pytest.fixture
def upgraded_checkout(hub_stack, tmp_path, docker_client):
    """The shared platform's config, pointed at a checkout one commit ahead."""
    cfg, config, _ = hub_stack
    clone = fresh_clone(tmp_path / "checkout")
    _commit_a_new_package(clone)
    data = yaml.safe_load(config.read_text())
    data["source_dir"] = str(clone)
    ahead = tmp_path / "hubstack.yaml"
    ahead.write_text(yaml.safe_dump(data))
    try:
        yield ahead
    finally:
        # The commit and stable tags this test made; `latest` goes with the platform.
        for image in docker_client.images.list():
            for tag in image.tags:
                if tag.startswith(cfg.image_prefix + "/") and not tag.endswith(
                    f":{cfg.images.tag}"
                ):
                    try:
                        docker_client.images.remove(tag)
                    except docker.errors.APIError:
                        pass


def test_upgrade_leaves_servers_running_and_reports_who_is_behind(
    hub_stack, clients, docker_client, upgraded_checkout
):
    alice, bob = clients["alice"], clients["bob"]
    if bob.running():
        bob.stop()
    if not alice.running():
        alice.start()
    alice.run_code("open('before-upgrade.txt', 'w').write('still running')\n")

    r = hubstack(upgraded_checkout, "upgrade", "--since", "HEAD~1", timeout=2400)
    assert r.returncode == 0, r.stdout[-6000:] + r.stderr[-3000:]
    stages = [line.split(":")[0] for line in r.stdout.splitlines() if line.startswith("[upgrade ")]
    assert stages == [
        "[upgrade 1/4] rebuild",
        "[upgrade 2/4] promote",
        "[upgrade 3/4] restart",
        "[upgrade 4/4] report",
    ], r.stdout[-3000:]
    assert "notebook: ok (pushed" in r.stdout and "spark-executor: ok (pushed" in r.stdout

    # Alice was not restarted: her kernel's file is there, her server never stopped.
    assert alice.running()
    assert alice.run_code("print(open('before-upgrade.txt').read())").strip() == "still running"
    bob.start()

    report = hubstack(upgraded_checkout, "env", "report", "--json")
    assert report.returncode == 0, report.stderr
    by_analyst = {
        e["analyst"]: e for e in json.loads(report.stdout)["containers"] if e["kind"] == "notebook"
    }
    assert by_analyst["alice"]["status"] == "outdated"
    changes = [
        (c["manager"], c["name"], c["old"], c["new"]) for c in by_analyst["alice"]["changes"]
    ]
    assert changes == [("pip", MARKER, None, "1.0")], changes
    assert by_analyst["bob"]["status"] == "current"
    text = hubstack(upgraded_checkout, "env", "report").stdout
    assert f"pip  + {MARKER} 1.0" in text, text

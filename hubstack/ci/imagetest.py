"""Per-image tests: each image folder may hold `test_image.py`, run against a fresh image.

Like docker-stacks' tests/by_image/, every image has its own small test module,
but it lives next to its Dockerfile (so a change to an image's tests counts as a
change to the image and re-runs them). `hubstack ci build` runs::

    python -m pytest -p hubstack.ci.imagetest IMAGE_FOLDER/test_image.py --image REF

This module is that pytest plugin. It gives the tests two fixtures:

* ``image``: the reference under test (``--image`` or ``$HUBSTACK_TEST_IMAGE``);
* ``run``: ``run("cmd", "arg", user=None, env=None, entrypoint=None)`` starts a throw-away
  container of that image (its own entrypoint, its own default user unless
  ``user`` is given) and returns a :class:`Ran` with ``exit_code`` and ``output``.
"""

from __future__ import annotations

import os
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import docker
import pytest

TEST_MODULE = "test_image.py"


@dataclass
class Ran:
    exit_code: int
    output: str

    def check(self) -> str:
        assert self.exit_code == 0, f"exit code {self.exit_code}:\n{self.output}"
        return self.output


def pytest_addoption(parser):
    parser.addoption(
        "--image", default=os.environ.get("HUBSTACK_TEST_IMAGE"), help="image reference under test"
    )


@pytest.fixture(scope="session")
def image(request) -> str:
    ref = request.config.getoption("--image")
    if not ref:
        pytest.fail(
            "no image under test: pass --image REF (or set HUBSTACK_TEST_IMAGE)", pytrace=False
        )
    return ref


@pytest.fixture(scope="session")
def run(image):
    client = docker.from_env(timeout=300)

    def _run(
        *cmd: str,
        user: str | None = None,
        env: dict | None = None,
        entrypoint: list[str] | None = None,
        timeout: int = 240,
    ) -> Ran:
        container = client.containers.run(
            image, list(cmd), user=user, environment=env, entrypoint=entrypoint, detach=True
        )
        try:
            status = container.wait(timeout=timeout)
            out = container.logs(stdout=True, stderr=True).decode(errors="replace")
            return Ran(int(status.get("StatusCode", -1)), out)
        finally:
            container.remove(force=True)

    yield _run
    client.close()


def find_test_module(folder: Path) -> Path | None:
    path = Path(folder) / TEST_MODULE
    return path if path.is_file() else None


def run_image_tests(folder: Path, ref: str, timeout: int = 900) -> tuple[bool, str]:
    """Run FOLDER's test module against REF in a fresh pytest process: (passed, output).

    An image without a test module passes, and the output says it has none.
    """
    module = find_test_module(folder)
    if module is None:
        return True, f"no {TEST_MODULE} in {folder}: nothing to test"
    package_root = Path(__file__).resolve().parents[2]
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(package_root), env.get("PYTHONPATH")]))
    # No __pycache__ or .pytest_cache in the image folder: it is a build context.
    env["PYTHONDONTWRITEBYTECODE"] = "1"
    cmd = [
        sys.executable,
        "-m",
        "pytest",
        "-q",
        "-p",
        "hubstack.ci.imagetest",
        "-p",
        "no:cacheprovider",
        "--rootdir",
        str(module.parent),
        "-c",
        os.devnull,
        str(module),
        "--image",
        ref,
    ]
    try:
        proc = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=timeout)
    except subprocess.TimeoutExpired as e:
        output = e.stdout.decode(errors="replace") if isinstance(e.stdout, bytes) else e.stdout
        return False, f"image tests timed out after {timeout}s\n{output or ''}"
    return proc.returncode == 0, (proc.stdout + proc.stderr).strip()

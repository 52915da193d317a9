"""Per-image tests: each image folder may hold `test_image.py`, run against a fresh image.

Like docker-stacks' tests/by_image/, every image has its own small test module,
but it lives next to its Dockerfile (so a change to an image's tests counts as a
change to the image and re-runs them). `hubstack ci build` runs::

    python -m pytest -p hubstack.ci.imagetest IMAGE_FOLDER/test_image.py --image REF

This module is that pytest plugin (the runner is :func:`hubstack.ci.rebuild.run_image_tests`,
so that hubstack itself runs without pytest installed). It gives the tests two fixtures:

* ``image``: the reference under test (``--image`` or ``$HUBSTACK_TEST_IMAGE``);
* ``run``: ``run("cmd", "arg", user=None, env=None, entrypoint=None)`` starts a throw-away
  container of that image (its own entrypoint, its own default user unless
  ``user`` is given) and returns a :class:`Ran` with ``exit_code`` and ``output``.
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import docker
import pytest


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

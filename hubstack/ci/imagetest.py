"""Per-image tests: each image folder may hold `test_image.py`, run against a fresh image.

Like docker-stacks' tests/by_image/, every image has its own small test module,
but it lives next to its Dockerfile (so a change to an image's tests counts as a
change to the image and re-runs them). A pushed test module is untrusted code, so
`hubstack ci build` never imports it: :func:`hubstack.ci.sandbox.run_image_tests` runs
pytest with this plugin in a runner container of its own (no Docker socket, no
secrets, no network), and the runner asks a broker in the builder, over a unix
socket, to start the image under test beside it.

This module is that pytest plugin. It is copied into the runner as
``hubstack_imagetest.py`` and must import nothing but the standard library and pytest.
It gives the tests two fixtures:

* ``image``: the reference under test (``--image`` or ``$HUBSTACK_TEST_IMAGE``);
* ``run``: ``run("cmd", "arg", user=None, env=None, entrypoint=None, timeout=240)``
  starts a throw-away container of that image (its own entrypoint, its own default
  user unless ``user`` is given), through the broker at ``--broker`` (or
  ``$HUBSTACK_IMAGETEST_BROKER``), and returns a :class:`Ran` with ``exit_code`` and
  ``output``. The broker, not the test, fixes the image and the container's limits:
  no network, no mounts, no capabilities, no new privileges.
"""

from __future__ import annotations

import json
import os
import socket
from dataclasses import dataclass

import pytest

BROKER_ENV = "HUBSTACK_IMAGETEST_BROKER"
# Replies carry the container's whole output; the broker caps it well below this.
MAX_REPLY_BYTES = 8 << 20


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
    parser.addoption(
        "--broker",
        default=os.environ.get(BROKER_ENV),
        help="unix socket of the broker that starts containers of the image under test",
    )


@pytest.fixture(scope="session")
def image(request) -> str:
    ref = request.config.getoption("--image")
    if not ref:
        pytest.fail(
            "no image under test: pass --image REF (or set HUBSTACK_TEST_IMAGE)", pytrace=False
        )
    return ref


def ask_broker(path: str, request: dict, timeout: float) -> dict:
    """One JSON request to the broker at PATH, one JSON reply."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_STREAM) as sock:
        sock.settimeout(timeout)
        sock.connect(path)
        sock.sendall(json.dumps(request).encode() + b"\n")
        sock.shutdown(socket.SHUT_WR)
        chunks, size = [], 0
        while chunk := sock.recv(65536):
            chunks.append(chunk)
            size += len(chunk)
            if size > MAX_REPLY_BYTES:
                raise RuntimeError(f"the broker's reply is over {MAX_REPLY_BYTES} bytes")
    return json.loads(b"".join(chunks) or b"{}")


@pytest.fixture(scope="session")
def run(image, request):
    broker = request.config.getoption("--broker")
    if not broker:
        pytest.fail(
            "no broker to start the image under test: run the image's tests with "
            f"`hubstack ci build` (or pass --broker / set {BROKER_ENV})",
            pytrace=False,
        )

    def _run(
        *cmd: str,
        user: str | None = None,
        env: dict | None = None,
        entrypoint: list[str] | None = None,
        timeout: int = 240,
    ) -> Ran:
        ask = {
            "cmd": list(cmd),
            "user": user,
            "env": env,
            "entrypoint": entrypoint,
            "timeout": timeout,
        }
        # The broker stops the container at TIMEOUT; the answer may take a little longer.
        reply = ask_broker(broker, ask, timeout + 60)
        if "error" in reply:
            pytest.fail(f"the broker refused run{tuple(cmd)!r}: {reply['error']}", pytrace=False)
        return Ran(int(reply["exit_code"]), str(reply["output"]))

    return _run

"""The image-test broker's refusals, over its real unix socket and the plugin's own client:
a test module may choose a command, user, environment and entrypoint, never the image,
a mount or anything else, and malformed requests get a clear error (no engine needed:
nothing here reaches one)."""

import os
import threading

import pytest

from hubstack.ci.imagetest import ask_broker
from hubstack.ci.sandbox import Broker


@pytest.fixture
def broker(tmp_path):
    # A deep folder: the socket's path is over the 107 bytes a unix socket allows.
    folder = tmp_path / ("x" * 60) / ("y" * 60)
    folder.mkdir(parents=True)
    server = Broker(folder / "broker.sock", client=None, image="the-image-under-test")
    threading.Thread(target=server.serve_forever, daemon=True).start()
    # The runner connects to a short path (/imagetest/broker.sock); here, the folder's
    # descriptor gives one.
    fd = os.open(folder, os.O_RDONLY | os.O_DIRECTORY)
    yield f"/proc/self/fd/{fd}/broker.sock"
    os.close(fd)
    server.shutdown()
    server.server_close()


@pytest.mark.parametrize(
    "request_, error",
    [
        ({"cmd": ["true"], "image": "debian"}, "unknown field(s) ['image']"),
        ({"cmd": ["true"], "volumes": ["/:/host"]}, "unknown field(s) ['volumes']"),
        ({"cmd": ["true"], "network_mode": "host"}, "unknown field(s) ['network_mode']"),
        ({"cmd": "true"}, "cmd must be a list of strings"),
        ({"cmd": ["true"], "env": {"A": 1}}, "env must map strings to strings"),
        ({"cmd": ["true"], "user": 0}, "user must be a string"),
        ({"cmd": ["true"], "timeout": -1}, "timeout must be a positive number"),
        (["true"], "a request is a JSON object"),
    ],
)
def test_broker_refuses_what_a_test_may_not_choose(broker, request_, error):
    reply = ask_broker(broker, request_, timeout=10)
    assert error in reply["error"], reply

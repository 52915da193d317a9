"""A failed build says what to change in one line, for the failures a new site meets first.
The log lines are what the engine really streamed (see test_build_failures for the real
build): stderr arrives in chunks, with colour codes that can split a message mid-word."""

from __future__ import annotations

from hubstack.config import parse_config
from hubstack.images.build import diagnose_failure

CURL_TLS = [
    "Step 5/12 : RUN update-ca-certificates && curl -fsS https://pypi.org/simple/pip/",
    "\x1b[91murl: (60) SSL cer\x1b[0m",
    "\x1b[91mti\x1b[0m",
    "\x1b[91mficate problem: self-signed certificate in certificate chain",
]
NPM_TLS = ["npm ERR! code SELF_SIGNED_CERT_IN_CHAIN", "npm ERR! errno SELF_SIGNED_CERT_IN_CHAIN"]
PIP_UNREACHABLE = [
    "WARNING: Retrying (Retry(total=4)) after connection broken by 'NewConnectionError(",
    "'<pip._vendor.urllib3.connection.HTTPSConnection>: Failed to establish a new connection: "
    "[Errno -3] Temporary failure in name resolution')': /simple/jupyterlab/",
]


def test_tls_failures_name_the_ca_key_and_its_value():
    cfg = parse_config({"base": {"extra_ca_bundle": "none"}})
    for log in (CURL_TLS, NPM_TLS):
        msg = diagnose_failure(cfg, log)
        assert msg and "base.extra_ca_bundle" in msg and "it is `none`" in msg
        assert "\n" not in msg


def test_an_unreachable_index_names_the_index_keys():
    msg = diagnose_failure(parse_config({"base": {"pip_index_url": "pypi"}}), PIP_UNREACHABLE)
    assert msg and "base.pip_index_url" in msg and "PyPI" in msg


def test_other_failures_are_left_to_the_log():
    log = ["Step 3/4 : RUN exit 3", "The command '/bin/sh -c exit 3' returned a non-zero code: 3"]
    assert diagnose_failure(parse_config({}), log) is None


def test_a_full_disk_says_so_and_how_to_free_space():
    log = [
        "Step 2/2 : RUN head -c 1G /dev/zero > /fill",
        "\x1b[91mhead: error writing 'standard output': No space left on device\x1b[0m",
    ]
    msg = diagnose_failure(parse_config({}), log)
    assert msg and "ran out of disk space" in msg and "docker image prune" in msg

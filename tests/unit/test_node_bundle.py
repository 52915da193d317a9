"""The plan of `hubstack nodes bundle` (hubstack.node_bundle): which images for which
profiles, which packages apt says a node lacks, what the bundle tells install.sh, and what
a failure leaves behind. The bundle written for real, installed on a swarm node, is in
tests/integration/test_node_bundle.py."""

from __future__ import annotations

import subprocess
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest

from hubstack import node_bundle
from hubstack.config import parse_config
from hubstack.errors import CommandError
from hubstack.node_bundle import DebPackage, needed_images, parse_simulated_install

DEFAULT = parse_config({})
NO_ENGINE: Any = None
"""Where the bundle stops before it talks to the engine."""


def _plan(cfg, *profiles):
    return {i.name: i.needed_by for i in needed_images(cfg, profiles)}


def test_by_default_every_profiles_image_and_the_spark_executor():
    assert _plan(DEFAULT) == {
        "notebook": ("profile default", "profile spark"),
        "spark-executor": ("profile spark's executors", "Spark executors"),
        "gpu": ("profile gpu",),
    }


def test_a_gpu_node_gets_the_gpu_image_only():
    assert _plan(DEFAULT, "gpu") == {"gpu": ("profile gpu",)}


def test_a_spark_profile_brings_its_executor_image():
    assert _plan(DEFAULT, "spark") == {
        "notebook": ("profile spark",),
        "spark-executor": ("profile spark's executors",),
    }
    assert _plan(DEFAULT, "default", "default") == {"notebook": ("profile default",)}


def test_a_profile_of_its_own_image_and_an_unknown_profile():
    cfg = parse_config(
        {"profiles": [{"name": "lab", "display_name": "Lab", "image": "lab-img", "gpus": 1}]}
    )
    assert _plan(cfg) == {"lab-img": ("profile lab",), "spark-executor": ("Spark executors",)}
    with pytest.raises(CommandError, match=r"--profile: no profile named 'gpu' \(profiles: lab\)"):
        needed_images(cfg, ["gpu"])


APT_OUTPUT = """\
NOTE: This is only a simulation!
Reading package lists...
The following NEW packages will be installed:
  containerd docker.io runc
Inst libc6 [2.36-9+deb12u4] (2.36-9+deb12u14 Debian-Security:12/oldstable-security [amd64])
Inst runc (1.1.5+ds1-1+deb12u1 Debian:12.15/oldstable, Debian-Security:12/oldstable [amd64])
Inst netbase (6.4 Debian:12.15/oldstable [all])
Inst docker.io (20.10.24+dfsg1-1+deb12u1+b6 Debian:12.15/oldstable [amd64])
Conf runc (1.1.5+ds1-1+deb12u1 Debian:12.15/oldstable [amd64])
"""


def test_apt_simulation_is_read_for_new_and_upgraded_packages():
    assert parse_simulated_install(APT_OUTPUT) == [
        DebPackage("libc6", "2.36-9+deb12u14", "amd64"),
        DebPackage("runc", "1.1.5+ds1-1+deb12u1", "amd64"),
        DebPackage("netbase", "6.4", "all"),
        DebPackage("docker.io", "20.10.24+dfsg1-1+deb12u1+b6", "amd64"),
    ]
    assert DebPackage("runc", "1.1.5", "amd64").pin == "runc=1.1.5"


def test_apt_is_asked_against_the_reference_status_without_recommends():
    cmd = node_bundle.apt_resolve_command(Path("/x/status"))
    assert cmd[:2] == ["apt-get", "--simulate"]
    assert "--no-install-recommends" in cmd
    assert cmd[cmd.index("-o") + 1] == "Dir::State::status=/x/status"
    assert cmd[-3:] == ["docker.io", "containerd", "runc"]


def _run_giving(rc: int, out: str = "", err: str = ""):
    return lambda *a, **kw: SimpleNamespace(returncode=rc, stdout=out, stderr=err)


def test_apt_failures_are_named_with_the_fix():
    locate = r"(?s)Unable to locate package docker.io.*apt-get update"
    with pytest.raises(CommandError, match=locate):
        node_bundle.resolve_packages(
            Path("s"), run=_run_giving(100, err="E: Unable to locate package docker.io")
        )
    with pytest.raises(CommandError, match="has the engine already.*--node-status"):
        node_bundle.resolve_packages(Path("s"), run=_run_giving(0, out="Reading...\n"))


def test_bundle_env_is_read_back_by_sh_as_written():
    cfg = parse_config(
        {"registry": {"pull_address": "10.0.0.5:5001", "users_address": "10.0.0.5:5002"}}
    )
    images = ["10.0.0.5:5001/hubstack/gpu:stable", "10.0.0.5:5001/hubstack/notebook:stable"]
    env = node_bundle.bundle_env(cfg, "amd64", images, ["10.0.0.5:2377"])
    assert "password" not in env.lower() and "token" not in env.lower()
    shown = subprocess.run(
        ["sh", "-c", f'{env}\nprintf "%s|%s|%s|%s" "$PULL_ADDRESS" "$ARCH" "$IMAGES" "$MANAGERS"'],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    assert shown == f"10.0.0.5:5001|amd64|{' '.join(images)}|10.0.0.5:2377"
    # The CA goes where the engine looks for both addresses a node pulls from.
    cas = subprocess.run(
        ["sh", "-c", f'{env}\nprintf "%s" "$CA_ADDRESSES"'], capture_output=True, text=True
    ).stdout
    assert cas == "10.0.0.5:5001 10.0.0.5:5002"


def test_an_image_the_registry_lacks_is_named_and_nothing_is_written(tmp_path, monkeypatch):
    cfg = parse_config({"state_dir": str(tmp_path / "state")})
    have = {"notebook", "spark-executor"}
    monkeypatch.setattr(
        node_bundle.RegistryClient,
        "digest",
        lambda self, name, ref: "sha256:" + "a" * 64 if name in have else None,
    )
    out = tmp_path / "out"
    out.mkdir()
    with pytest.raises(CommandError) as failed:
        node_bundle.write_bundle(cfg, NO_ENGINE, out / "bundle", progress=lambda _: None)
    message = str(failed.value)
    assert message.startswith(
        "the registry 127.0.0.1:5000 has no hubstack/gpu:stable (profile gpu)"
    )
    assert "--profile" in message
    assert list(out.iterdir()) == []


def test_an_existing_folder_is_not_overwritten(tmp_path):
    with pytest.raises(CommandError, match="exists already"):
        node_bundle.write_bundle(DEFAULT, NO_ENGINE, tmp_path, progress=lambda _: None)


def test_install_sh_stops_on_a_file_that_differs_from_the_bundle(tmp_path):
    (tmp_path / "bundle.env").write_text("PULL_ADDRESS=x:1\nARCH=amd64\nIMAGES=\nMANAGERS=\n")
    (tmp_path / "images.tar").write_text("changed on the way")
    (tmp_path / "SHA256SUMS").write_text(f"{'0' * 64}  images.tar\n")
    # install.sh reads the bundle.env and SHA256SUMS beside itself: a copy in the folder.
    script = tmp_path / "install.sh"
    script.write_bytes(node_bundle.INSTALL_SCRIPT.read_bytes())
    ran = subprocess.run(["sh", str(script), "--no-packages"], capture_output=True, text=True)
    assert ran.returncode == 1
    assert "a file of the bundle is missing or differs from SHA256SUMS" in ran.stderr
    assert not Path("/etc/docker/certs.d/x:1").exists()
    ran = subprocess.run(["sh", str(script), "--bogus"], capture_output=True, text=True)
    assert ran.returncode == 2 and "unknown option --bogus" in ran.stderr

"""Losing the hub's node does not lose the hub's database (cluster.hub_data) nor its
registry's images (cluster.registry_data): on a swarm of three real managers of its own,
`hubstack up` on manager m1 runs the hub with its database on shared storage and the
registries with theirs on shared storage too, and pushes an image there; an analyst logs in
and gets a record (her user, an API token with a note); then m1 is lost (its engine
stopped, then demoted and removed from the swarm by m2, as an operator removes a dead
manager), `hubstack up --no-build` on m2 starts the hub there, pushing nothing: its
registry holds every image of before (the same digests), and her record is still there,
read through the new hub's REST API with her old token.

The shared storage: folders of this host, the same paths in every node's mount namespace,
and cluster.hub_data and cluster.registry_data binds of them ({type: none, o: bind,
device: FOLDER}). On this one machine that IS what a shared file system mounted at the
same path on each manager (an NFS mount in their fstab) is on real nodes; an NFS volume
itself (type: nfs) cannot be mounted here: this kernel has no NFS client
(docs/multi-node.md, "Homes across nodes").

Its own swarm (nodes m1, m2, m3, all managers: raft keeps its quorum with two of three),
so destroying a node breaks no other test's. Three managers because one of two is no
quorum: with m1 gone, m2 could neither demote it nor deploy.

As the other stack tests: `up` runs with --no-build; the shared registry folder is seeded
once, before m1's `up`, with the session registry's hub image (standing in for the build
and push of the first `up`), and the base and registry images are loaded into m1's and
m2's engines. The profile's image is on demand, so the hub's is the only one `up` needs.
A one-file image in m1's engine (PROBE) is what m1's `up` really pushes, through the push
instance onto the shared folder. m2's registry is not seeded: what it serves is what m1's
left on the shared folder.
"""

from __future__ import annotations

import contextlib
import io
import shutil
import sqlite3
import subprocess
import tarfile
import tempfile
import time
from pathlib import Path

import pytest

from hubstack.engine import project_name
from hubstack.registry import PULL, RegistryClient, registry_certificate
from tests.conftest import (
    SESSION_ID,
    SESSION_REGISTRY_VOLUME,
    TEST_TAG,
    config_data,
    free_port,
    write_config,
)
from tests.integration.hubstack_e2e import HubClient, add_user, seed_registry_volume
from tests.integration.swarm_nodes import on_manager, running_tasks, swarm_cluster, wait_until

pytestmark = pytest.mark.integration

ALICE = ("alice", "alice-pw-3f9e", 23421, 23421)
PROBE = "moved-probe"  # a one-file image m1's `up` pushes onto the shared registry folder


def _bind(folder: Path) -> dict:
    return {"driver": "local", "driver_opts": {"type": "none", "o": "bind", "device": str(folder)}}


def _config(state: Path, file: str, node, shared: dict[str, Path], name: str, ports: dict):
    """The platform's config as run on NODE: its registry's read-only instance and the hub
    published on that node's address (on a real site, names an operator moves to the new
    manager, and the config stays as it was). Same state dir, so the same secrets; the
    hub's database and the registry's storage in the SHARED folders. Returns (its path, the
    config)."""
    path = state / file
    cfg = write_config(
        path,
        config_data(
            state,
            ports["registry"],
            registry={
                "pull_address": f"{node.address}:{ports['pull']}",
                "users_address": f"127.0.0.1:{ports['users']}",
            },
            images={"namespace": name, "tag": TEST_TAG, "on_demand": ["notebook", "gpu"]},
            hub={
                "network": name,
                "port": ports["hub"],
                "host": node.address,
                "notebook_image_tag": TEST_TAG,
                "tls": {"insecure_ok": True},  # the harness's private segment
            },
            cluster={
                "mode": "swarm",
                "hub_data": _bind(shared["hub"]),
                "registry_data": _bind(shared["registry"]),
            },
            profiles=[{"name": "default", "display_name": "Default", "image": "notebook"}],
        ),
    )
    return path, cfg


def _prepare(node, cfg, images: Path) -> None:
    """What the manager NODE needs before `up --no-build` there: the platform CA for the
    read-only instance, the base and registry images in its engine."""
    registry_certificate(cfg, PULL)
    node.install_ca(cfg.registry.pull_address, cfg.tls_ca_cert_file)
    with images.open("rb") as tar:
        subprocess.run(["docker", "-H", node.socket, "load", "-q"], stdin=tar, check=True)


def _import_probe(node, ref: str) -> None:
    """A one-file image REF in NODE's engine (`docker import` of a tar holding one file)."""
    data = b"pushed on m1 before the move\n"
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        info = tarfile.TarInfo("probe.txt")
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    subprocess.run(
        ["docker", "-H", node.socket, "import", "-", ref], input=buf.getvalue(), check=True,
        capture_output=True,
    )  # fmt: skip


def _images(cfg) -> dict[str, str | None]:
    """The hub's and PROBE's digests in the registry, read through the read-only instance."""
    registry = RegistryClient(cfg, role=PULL)
    return {name: registry.digest(name, TEST_TAG) for name in (cfg.hub.image, PROBE)}


def _lose(swarm, lost, survivor) -> None:
    """LOST's engine stopped (the machine gone), then as an operator does on SURVIVOR: wait
    until the swarm sees it down, demote it (a manager cannot be removed), remove it."""
    node_id = lost.node_id
    swarm.stop_node(lost)
    api = survivor.client.api
    wait_until(
        f"{lost.name} down in the swarm",
        lambda: api.inspect_node(node_id)["Status"]["State"] == "down",
        timeout=90,
    )
    for cmd in (["node", "demote", node_id], ["node", "rm", "--force", node_id]):
        done = subprocess.run(
            ["docker", "-H", survivor.socket, *cmd], capture_output=True, text=True, timeout=60
        )
        assert done.returncode == 0, f"docker {' '.join(cmd)}: {done.stderr}"
    assert node_id not in {n["ID"] for n in api.nodes()}


def test_losing_the_hubs_node_keeps_the_hub_database(
    hierarchy, platform_config, docker_client, tmp_path_factory
):
    started = time.monotonic()
    state = tmp_path_factory.mktemp("swarm-hub-move")
    # "The NFS mounts", on every node: the hub's database folder, the registry's storage.
    shared = {
        "hub": Path(tempfile.mkdtemp(prefix="hs-hubdata-")),
        "registry": Path(tempfile.mkdtemp(prefix="hs-registrydata-")),
    }
    for folder in shared.values():
        folder.chmod(0o755)  # as a fresh export's folder: the hub makes its own root's
    name = f"hubtest-swarmdb-{SESSION_ID}"
    ports = {k: free_port() for k in ("registry", "pull", "users", "hub")}
    images = state / "base-and-registry.tar"
    specs = [(n, {}, []) for n in ("m1", "m2", "m3")]
    with swarm_cluster(specs, managers=3, tag="m") as swarm:
        m1, m2 = swarm.node("m1"), swarm.node("m2")
        # Heartbeats every second (Swarm's default: 5 s), so that the lost node is marked
        # down within seconds: the wait is not what the test is about.
        m1.client.swarm.update(dispatcher_heartbeat_period=10**9)
        assert all(n["Spec"]["Role"] == "manager" for n in m1.client.api.nodes()), "three managers"
        config1, cfg = _config(state, "hubstack-m1.yaml", m1, shared, name, ports)
        add_user(cfg, ALICE[0], ALICE[1], ALICE[2], ALICE[3], [])
        subprocess.run(
            ["docker", "save", "-o", str(images), cfg.base.image, cfg.registry.image], check=True
        )
        _prepare(m1, cfg, images)
        # The hub's image in the shared registry folder (the first `up`'s build and push).
        assert seed_registry_volume(
            docker_client,
            cfg,
            SESSION_REGISTRY_VOLUME,
            platform_config.images.namespace,
            names=[cfg.hub.image],
            into=shared["registry"],
        )
        _import_probe(m1, cfg.image_ref(PROBE))
        print(f"[hub move] 3 managers, m1 ready in {time.monotonic() - started:.1f}s")
        config2 = None
        try:
            t = time.monotonic()
            up = on_manager(m1, config1, "up", "--no-build")
            assert up.returncode == 0, f"up on m1 failed:\n{up.stdout}\n{up.stderr}"
            print(f"[hub move] `up` on m1 in {time.monotonic() - t:.1f}s")
            print("\n".join(line for line in up.stdout.splitlines() if line.startswith("[up ")))
            project = project_name(cfg)
            hub = m1.client.api.inspect_container(f"{project}-hub")
            (mount,) = [m for m in hub["Mounts"] if m["Destination"] == "/srv/jupyterhub"]
            assert mount["Name"].startswith(f"{project}_hub-data-"), mount
            # PROBE pushed through the push instance, onto the shared folder.
            assert f"pushing {cfg.image_ref(PROBE)}" in up.stdout, up.stdout
            pushed = _images(cfg)
            assert all(pushed.values()), pushed
            repositories = shared["registry"] / "docker/registry/v2/repositories" / name
            assert {p.name for p in repositories.iterdir()} == {cfg.hub.image, PROBE}

            # Her record: the user the login made (with its creation time), a token.
            alice = HubClient(f"http://{m1.address}:{ports['hub']}", ALICE[0])
            assert alice.login(ALICE[1]).status_code == 302
            token = alice.make_token()
            before = alice.api("GET", "/hub/api/users/alice")
            assert before.status_code == 200, before.text
            # The database is on the shared folder, the hub's root's alone.
            database = shared["hub"] / "jupyterhub.sqlite"
            assert database.is_file()
            hub_folder = shared["hub"].stat()
            assert hub_folder.st_uid == 0 and hub_folder.st_mode & 0o777 == 0o700

            t = time.monotonic()
            _lose(swarm, m1, m2)
            print(f"[hub move] m1 lost and removed in {time.monotonic() - t:.1f}s")

            # `up` on m2: the registries move there with the hub, onto the same storage.
            config2, cfg2 = _config(state, "hubstack-m2.yaml", m2, shared, name, ports)
            _prepare(m2, cfg2, images)  # its registry not seeded: nothing of ours in m2
            for node in swarm.nodes:
                node.install_ca(cfg2.registry.pull_address, cfg2.tls_ca_cert_file)
            t = time.monotonic()
            up = on_manager(m2, config2, "up", "--no-build")
            assert up.returncode == 0, f"up on m2 failed:\n{up.stdout}\n{up.stderr}"
            print(f"[hub move] `up` on m2 in {time.monotonic() - t:.1f}s")
            print("\n".join(line for line in up.stdout.splitlines() if line.startswith("[up ")))
            api = m2.client.api
            for service in ("registry", "registry-pull", "registry-users"):
                (task,) = running_tasks(api, f"{project}_{service}")
                assert task["NodeID"] == m2.node_id, service
            # Every image of before, with the same digests, and nothing built or pushed.
            assert _images(cfg2) == pushed
            assert "push: 0 images from this engine" in up.stdout, up.stdout
            assert "pushing " not in up.stdout, up.stdout
            assert "build: skipped (--no-build)" in up.stdout, up.stdout

            # The same record, read through the new hub's REST API with her old token.
            moved = HubClient(f"http://{m2.address}:{ports['hub']}", ALICE[0])
            moved.token = token
            after = moved.api("GET", "/hub/api/users/alice")
            assert after.status_code == 200, after.text
            assert after.json()["created"] == before.json()["created"]
            tokens = moved.api("GET", "/hub/api/users/alice/tokens")
            assert tokens.status_code == 200, tokens.text
            assert [t["note"] for t in tokens.json()["api_tokens"]] == ["e2e"]
            # Her password login works there too (the users file, in the state dir).
            assert HubClient(moved.base, ALICE[0]).login(ALICE[1]).status_code == 302

            # `hubstack backup` on m2 reads the database and the registry's storage where
            # the platform keeps them, the shared folders; a restore refuses to write there.
            t = time.monotonic()
            dest = state / "backup"
            backup = on_manager(m2, config2, "backup", str(dest), "--registry")
            assert backup.returncode == 0, backup.stdout + backup.stderr
            assert f"(cluster.hub_data: {shared['hub']})" in backup.stdout, backup.stdout
            assert f"(cluster.registry_data: {shared['registry']})" in backup.stdout
            with contextlib.closing(sqlite3.connect(dest / "hub" / "jupyterhub.sqlite")) as db:
                assert ("alice",) in db.execute("SELECT name FROM users").fetchall()
            with tarfile.open(dest / "registry.tar") as tar:
                tag = f"/repositories/{name}/{PROBE}/_manifests/tags/{TEST_TAG}/current/link"
                assert any(n.endswith(tag) for n in tar.getnames())
            print(f"[hub move] backup on m2 in {time.monotonic() - t:.1f}s")
            restore = on_manager(m2, config2, "restore", str(dest))
            assert restore.returncode != 0
            refused = restore.stderr.strip().splitlines()[-1]  # one line, after bootstrap's
            assert refused.startswith("hubstack: error: restore writes only where"), refused
            assert "is running (`hubstack down` first)" in refused
            assert f"(cluster.hub_data: {shared['hub']}) holds jupyterhub.sqlite" in refused
            shutil.rmtree(dest)
        finally:
            t = time.monotonic()
            for config, node in ((config2, m2), (config1, m1)):
                if config is not None and node in swarm.nodes:
                    down = on_manager(node, config, "down")
                    print(down.stdout, down.stderr)
                    break
            for folder in shared.values():
                shutil.rmtree(folder, ignore_errors=True)
            print(f"[hub move] down in {time.monotonic() - t:.1f}s")
    print(f"[hub move] the whole test, its swarm's teardown included: "
          f"{time.monotonic() - started:.1f}s")  # fmt: skip

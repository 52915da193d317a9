"""The spawner's pure parts: account lines, pull progress, progress events, hub config."""

import asyncio
import io
import os
import tarfile
import threading
import time
from pathlib import Path
from types import SimpleNamespace

from tornado import web
from traitlets.config import Config

from hubstack.config import parse_config
from hubstack.hub import container_spec, setup
from hubstack.hub.container_spec import merge_account_file, passwd_entries
from hubstack.hub.progress import PullProgress, SpawnProgress
from hubstack.hub.spawner import HubstackSpawner
from hubstack.stack import compose_env, hub_config

IMAGE_PASSWD = "root:x:0:0:root:/root:/bin/bash\njovyan:x:1000:100::/home/jovyan:/bin/bash\n"


def test_passwd_entry_replaces_clashing_uid_and_keeps_the_rest():
    passwd, group = passwd_entries("alice", 1000, 1000, [1000, 2000], "/home/alice")
    merged = merge_account_file(IMAGE_PASSWD, passwd, 2)
    assert "alice:x:1000:1000:alice:/home/alice:/bin/bash" in merged.splitlines()
    assert not any(line.startswith("jovyan:") for line in merged.splitlines())
    assert merged.startswith("root:x:0:0")
    assert group.splitlines() == ["alice:x:1000:", "g2000:x:2000:alice"]


class ArchiveEngine:
    """The engine's archive export of a container's file, counted (what a start costs)."""

    def __init__(self):
        self.reads: list[tuple[str, str]] = []

    def get_archive(self, container_id, path):
        self.reads.append((container_id, path))
        data = IMAGE_PASSWD.encode() if path == "/etc/passwd" else b"root:x:0:\n"
        out = io.BytesIO()
        with tarfile.open(fileobj=out, mode="w") as tar:
            info = tarfile.TarInfo(path.rsplit("/", 1)[1])
            info.size = len(data)
            tar.addfile(info, io.BytesIO(data))
        return [out.getvalue()], {}


def test_the_images_account_files_are_read_once_per_image_digest():
    engine = ArchiveEngine()
    ident = {"uid": 3001, "gid": 3001, "groups": [], "home": "/home/alice"}
    image = "reg/ns/notebook@sha256:" + "a" * 64
    first = container_spec.account_files(engine, "c1", "alice", ident, image)
    bob_ident = {**ident, "uid": 3002, "home": "/home/bob"}
    again = container_spec.account_files(engine, "c2", "bob", bob_ident, image)
    assert len(engine.reads) == 2  # passwd and group of c1; c2 of the same image asks nothing
    assert "alice:x:3001:3001" in first["/etc/passwd"].data.decode()
    bob = again["/etc/passwd"].data.decode()
    assert "bob:x:3002:3001" in bob and "alice" not in bob and bob.startswith("root:x:0:0")
    # A tag may move: read from the container itself every time.
    container_spec.account_files(engine, "c3", "alice", ident, "reg/ns/notebook:stable")
    container_spec.account_files(engine, "c4", "alice", ident, "reg/ns/notebook:stable")
    assert [cid for cid, _ in engine.reads[2:]] == ["c3", "c3", "c4", "c4"]


def test_account_files_are_mounted_from_files_named_by_their_content(tmp_path):
    ident = {"uid": 3001, "gid": 3001, "groups": [3100], "home": "/home/alice"}
    texts = container_spec.account_texts("alice", ident, IMAGE_PASSWD, "root:x:0:\n")
    mounts = container_spec.account_mounts(tmp_path, "alice", texts)
    assert sorted(m["bind"] for m in mounts.values()) == ["/etc/group", "/etc/passwd"]
    assert all(m["mode"] == "ro" for m in mounts.values())  # the analyst cannot change them
    by_target = {m["bind"]: Path(path) for path, m in mounts.items()}
    passwd = by_target["/etc/passwd"]
    assert passwd.parent == tmp_path / "alice" and passwd.stat().st_mode & 0o777 == 0o644
    assert "alice:x:3001:3001" in passwd.read_text()
    assert "g3100:x:3100:alice" in by_target["/etc/group"].read_text()
    # The same content: the same files, nothing new written.
    assert container_spec.account_mounts(tmp_path, "alice", texts) == mounts
    assert len(list((tmp_path / "alice").iterdir())) == 2
    # A new identity gets new files; the old ones stay while a day has not passed since
    # their last use (a running container may still mount them), then go.
    moved = container_spec.account_texts("alice", {**ident, "uid": 3009}, IMAGE_PASSWD, "")
    container_spec.account_mounts(tmp_path, "alice", moved)
    assert len(list((tmp_path / "alice").iterdir())) == 4
    day_ago = time.time() - container_spec.ACCOUNT_FILE_KEPT_S - 60
    for path in by_target.values():
        os.utime(path, (day_ago, day_ago))
    container_spec.account_mounts(tmp_path, "alice", moved)
    assert sorted(p.name for p in (tmp_path / "alice").iterdir()) == sorted(
        Path(p).name for p in container_spec.account_mounts(tmp_path, "alice", moved)
    )


def test_pull_progress_counts_bytes_across_layers():
    p = PullProgress()
    p.update({"id": "a", "status": "Pulling fs layer"})
    p.update({"id": "b", "status": "Pulling fs layer"})
    p.update({"id": "a", "status": "Downloading", "progressDetail": {"current": 50, "total": 100}})
    p.update({"id": "b", "status": "Downloading", "progressDetail": {"current": 0, "total": 100}})
    assert p.fraction == 0.25
    p.update({"id": "a", "status": "Pull complete"})
    p.update({"id": "b", "status": "Pull complete"})
    assert p.fraction == 1.0 and p.describe() == "100% (2/2 layers)"


def test_spawn_progress_never_goes_back_and_replays_for_late_readers():
    async def main():
        sp = SpawnProgress()
        sp.emit(10, "pull")
        sp.emit(5, "create")
        got = []

        async def read():
            async for ev in sp.events():
                got.append(ev)
                if len(got) == 3:
                    return

        task = asyncio.create_task(read())
        await asyncio.sleep(0)
        sp.emit(90, "wait")
        await asyncio.wait_for(task, 5)
        return got

    got = asyncio.run(main())
    assert [e["progress"] for e in got] == [10, 10, 90]
    assert [e["message"] for e in got] == ["pull", "create", "wait"]


def test_hub_sees_container_paths_and_compose_gets_host_paths(tmp_path):
    cfg = parse_config({"state_dir": str(tmp_path), "hub": {"port": 8123, "network": "hn"}})
    hub = hub_config(cfg)
    # The hub pulls from the read-only instance with the pull-only account, nothing else.
    assert hub["registry"]["credentials_file"] == "/run/secrets/registry_pull_credentials"
    assert hub["registry"]["address"] == cfg.registry.pull_address == "127.0.0.1:5001"
    assert hub["hub"]["home_root"] == str(tmp_path / "home")
    assert parse_config(hub).hub.users_file.name == "users.yaml"
    env = compose_env(cfg)
    assert env["HUBSTACK_HUB_PORT"] == "8123" and env["HUBSTACK_NETWORK"] == "hn"
    assert env["HUBSTACK_HOME_ROOT"] == str(tmp_path / "home")
    # Written by the hub, mounted by the engine: the same path for both.
    assert env["HUBSTACK_CONTAINER_ACCOUNTS_DIR"] == str(cfg.container_accounts_dir)
    assert parse_config(hub).container_accounts_dir == cfg.container_accounts_dir


def test_a_blocked_docker_call_does_not_hold_up_another():
    """Stock DockerSpawner's single thread would run the second call only after the first."""

    release = threading.Event()
    pool = HubstackSpawner().executor
    slow = pool.submit(release.wait, 30)  # stands in for a slow pull
    try:
        assert pool.submit(lambda: "created").result(timeout=10) == "created"
        assert not slow.done()
    finally:
        release.set()
    assert slow.result(timeout=10)


def test_starts_asking_for_one_tag_at_once_share_one_registry_lookup():
    calls = []

    class Asking:
        _auth = staticmethod(lambda ref: None)

        async def docker(self, method, ref, auth_config=None):
            calls.append(ref)
            await asyncio.sleep(0.05)
            if ref.endswith(":gone"):
                raise RuntimeError("manifest unknown")
            return {"Descriptor": {"digest": f"sha256:{len(calls)}"}}

    async def burst():
        ask = HubstackSpawner._ask_registry
        spawner = Asking()
        first = await asyncio.gather(*(ask(spawner, "r/n:stable") for _ in range(5)))
        assert calls == ["r/n:stable"]  # five starts, one lookup, one answer
        assert {a["Descriptor"]["digest"] for a in first} == {"sha256:1"}
        # Once answered, the next start asks again: a moved tag is seen.
        assert (await ask(spawner, "r/n:stable"))["Descriptor"]["digest"] == "sha256:2"
        # Another tag is its own lookup; a failure reaches every start that waited on it.
        failed = await asyncio.gather(
            *(ask(spawner, "r/n:gone") for _ in range(3)), return_exceptions=True
        )
        assert calls[2:] == ["r/n:gone"] and all(isinstance(e, RuntimeError) for e in failed)
        assert not HubstackSpawner._registry_asks

    asyncio.run(burst())


def test_a_profile_is_offered_and_started_only_for_those_it_allows():
    cfg = parse_config(
        {
            "profiles": [
                {"name": "team", "display_name": "Team", "allow": {"groups": ["gpu"]}},
                {"name": "default", "display_name": "Default"},
                {"name": "solo", "display_name": "Solo", "allow": {"users": ["carol"]}},
            ]
        }
    )

    def spawner(name: str, groups: list[str]) -> HubstackSpawner:
        s = HubstackSpawner(platform=cfg)
        s.user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])
        return s

    def refused(s: HubstackSpawner, options: dict) -> web.HTTPError | None:
        s.user_options = options
        try:
            s.apply_user_options(s, options)
        except web.HTTPError as e:
            return e
        return None

    bob, alice, carol = spawner("bob", []), spawner("alice", ["gpu"]), spawner("carol", [])
    assert 'value="team"' not in bob._render_form() and 'value="solo"' not in bob._render_form()
    assert 'value="team"' in alice._render_form() and 'value="solo"' in carol._render_form()
    error = refused(bob, {"profile": "team"})
    assert error is not None and error.status_code == 403
    assert "only for group gpu" in (error.log_message or "")
    assert refused(alice, {"profile": "team"}) is None
    assert refused(carol, {"profile": "solo"}) is None
    # No profile asked for: the first one this analyst may use, never a refusal.
    bob.user_options = {}
    assert bob._profile().name == "default"
    assert alice._profile().name == "team"


def test_stable_by_default_and_preview_only_for_those_named():
    cfg = parse_config({"hub": {"preview": {"groups": ["early"]}}})
    s = HubstackSpawner(platform=cfg)

    def tag(name: str, groups: list[str], options: dict) -> str | int:
        s.user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])
        s.user_options = options
        try:
            return s._image_tag(s._profile())
        except web.HTTPError as e:
            return e.status_code

    assert tag("bob", [], {}) == "stable"
    assert tag("bob", [], {"version": "stable"}) == "stable"
    assert tag("bob", [], {"version": "preview"}) == 403
    assert tag("alice", ["early"], {"version": "preview"}) == "latest"
    # A Spark profile's own cluster runs the server's version: preview is preview there too.
    assert tag("alice", ["early"], {"version": "preview", "profile": "spark"}) == "latest"
    for name, groups, offered in (("alice", ["early"], True), ("bob", [], False)):
        form = HubstackSpawner(platform=cfg)
        form.user = SimpleNamespace(name=name, groups=[SimpleNamespace(name=g) for g in groups])
        assert ('value="preview"' in form._render_form()) is offered


def test_the_hub_serves_servers_on_subdomains_only_when_configured(tmp_path, monkeypatch):
    for name in ("cookie_secret", "proxy_token", "crypt_key"):
        (tmp_path / name).write_text("x" * 64)
    monkeypatch.setattr(setup, "SECRETS", tmp_path)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "x" * 64)

    def hub_settings(data: dict) -> Config:
        c = Config()
        setup.configure_hub(c, parse_config(data))
        return c

    assert "subdomain_host" not in hub_settings({}).JupyterHub
    c = hub_settings({"hub": {"port": 8123, "subdomain_host": "http://localhost:8123"}})
    assert c.JupyterHub.subdomain_host == "http://localhost:8123"
    # The proxy keeps listening where compose publishes it from.
    assert c.JupyterHub.bind_url == "http://0.0.0.0:8000"


def test_the_cluster_mode_picks_the_spawner_and_swarm_servers_get_the_hubs_container(
    tmp_path, monkeypatch
):
    for name in ("cookie_secret", "proxy_token", "crypt_key"):
        (tmp_path / name).write_text("x" * 64)
    monkeypatch.setattr(setup, "SECRETS", tmp_path)
    monkeypatch.setenv("JUPYTERHUB_CRYPT_KEY", "x" * 64)
    monkeypatch.setenv("HUBSTACK_HUB_CONTAINER", "hubstack-hub")
    single, swarm = Config(), Config()
    setup.configure_hub(single, parse_config({}))
    setup.configure_hub(swarm, parse_config({"cluster": {"mode": "swarm"}}))
    assert single.JupyterHub.spawner_class == "hubstack.hub.spawner.HubstackSpawner"
    assert "HubstackSwarmSpawner" not in single
    assert swarm.JupyterHub.spawner_class == "hubstack.hub.swarm_spawner.HubstackSwarmSpawner"
    # No shared network: each server is on its analyst's own, which the hub's container
    # (named by `up`) joins at their start.
    assert "service_networks" not in swarm.HubstackSwarmSpawner
    assert swarm.HubstackSwarmSpawner.hub_container == "hubstack-hub"
    # The settings both share are made once, on the parent class.
    assert swarm.HubstackSpawner.platform.cluster.mode == "swarm"

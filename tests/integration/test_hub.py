"""End to end over HTTP on the real stack: `hubstack up`, two analysts log in through the
login form, start servers, run code in kernels through the hub's proxy."""

from __future__ import annotations

import subprocess
import time
import warnings

import pytest
import requests

from hubstack import networks, stack
from hubstack.engine import platform_containers, project_name, service_container
from hubstack.hub.users import users_file_for
from hubstack.networks import network_name
from tests.integration.conftest import ANALYSTS
from tests.integration.hubstack_e2e import (
    REPO,
    HubClient,
    add_user,
    forget_local_digest,
    hub_config_changed,
    hubstack,
    read_back_after_restart,
    start_messages,
    url,
)

pytestmark = [pytest.mark.integration, pytest.mark.slow]

WHOAMI = (
    "import os, pwd, grp, getpass, subprocess\n"
    "print(os.getuid(), os.getgid(), sorted(os.getgroups()), getpass.getuser(), os.environ['HOME'],"
    " pwd.getpwuid(os.getuid()).pw_dir, os.getcwd(), subprocess.run(['whoami'], "
    "capture_output=True, text=True).stdout.strip())\n"
    "print(open('/proc/self/status').read().split('CapEff:')[1].split()[0])\n"
    "print(open('/proc/self/status').read().split('NoNewPrivs:')[1].split()[0])\n"
)


def test_up_prints_url_and_login(hub_stack):
    cfg, _, stdout = hub_stack
    assert f"http://{cfg.hub.host}:{cfg.hub.port}/" in stdout
    assert "log in" in stdout


def test_wrong_password_is_refused(hub_stack):
    cfg, _, _ = hub_stack
    c = HubClient(url(cfg), "alice")
    r = c.login("not-her-password")
    assert r.status_code == 403
    assert "Invalid username or password" in r.text
    assert c.http.get(f"{url(cfg)}/hub/api/user", timeout=30).status_code == 403


def test_identity_home_and_isolation(hub_stack, clients, docker_client):
    cfg, _, _ = hub_stack
    alice, bob = clients["alice"], clients["bob"]
    forget_local_digest(docker_client, cfg, "notebook")
    since = int(time.time())
    # A start done within the hub's first second shows only "ready" on its progress
    # stream; the hub's log has every message.
    messages = " | ".join(start_messages(cfg, docker_client, alice.start(), since))
    assert "Pulling image" in messages and "Creating the container" in messages, messages
    bob.start()

    for name, c in clients.items():
        pw, uid, gid, groups = ANALYSTS[name]
        lines = c.run_code(WHOAMI).splitlines()
        home = f"/home/{name}"
        assert (
            lines[0] == f"{uid} {gid} {sorted({gid, *groups})} {name} {home} {home} {home} {name}"
        )
        assert int(lines[1], 16) == 0, "no capabilities at all"
        assert lines[2] == "1", "no-new-privileges is set"

    # A file written in the home is owned by the analyst's UID:GID on the host.
    alice.run_code("open('notes.txt', 'w').write('kept')\n")
    host_file = cfg.home_root / "alice" / "notes.txt"
    st = host_file.stat()
    assert (st.st_uid, st.st_gid) == (23001, 23001)
    assert (cfg.home_root / "alice").stat().st_mode & 0o777 == 0o700

    # No Docker socket, limits from the config, image pinned by digest.
    c = platform_containers(cfg, docker_client, "io.hubstack.user=alice", False)[0]
    hc = c.attrs["HostConfig"]
    assert hc["CapDrop"] == ["ALL"] and "no-new-privileges" in hc["SecurityOpt"]
    # The shipped defaults (resources: cpu_limit 2.0, mem_limit 4G): the stack keeps them.
    assert (cfg.resources.cpu_limit, cfg.resources.mem_limit) == (2.0, "4G")
    assert hc["Memory"] == 4 << 30 and hc["NanoCpus"] in (0, None) and hc["CpuQuota"] == 200_000
    assert not any("docker.sock" in (m.get("Source") or "") for m in c.attrs["Mounts"])
    assert "@sha256:" in c.attrs["Config"]["Image"]
    assert (
        alice.run_code("import os; print(os.path.exists('/var/run/docker.sock'))").strip()
        == "False"
    )

    # Bob cannot reach Alice's server, with his token or his cookies.
    with pytest.raises(PermissionError):
        bob.run_code("print(1)", owner="alice")
    r = bob.http.get(f"{url(cfg)}/user/alice/api/status", timeout=30)
    assert r.status_code == 403, (r.status_code, r.url)


def test_stop_respawn_and_hub_restart_keep_the_file(hub_stack, clients, docker_client):
    cfg, config, _ = hub_stack
    alice = clients["alice"]
    if not alice.api("GET", "/hub/api/users/alice").json()["servers"]:
        alice.start()
    alice.run_code("open('respawn.txt', 'w').write('still here')\n")
    alice.stop()
    alice.start()
    assert alice.run_code("print(open('respawn.txt').read())").strip() == "still here"

    # Restart the hub container while the server runs: the server stays reachable.
    hub = docker_client.containers.list(
        filters={
            "label": [
                f"com.docker.compose.project={cfg.hub.network}",
                "com.docker.compose.service=hub",
            ]
        }
    )[0]
    hub.restart(timeout=20)
    assert read_back_after_restart(cfg, alice, "respawn.txt") == "still here"


def test_status_lists_running_servers(hub_stack, clients):
    cfg, config, _ = hub_stack
    r = hubstack(config, "status")
    assert r.returncode == 0, r.stderr
    assert "hub" in r.stdout and "registry" in r.stdout
    assert "alice" in r.stdout


def test_plain_docker_compose_starts_the_platform(hub_stack, clients, docker_client):
    """Once `hubstack up` has run, what it writes to compose/.env lets plain `docker compose`
    drive the stack."""
    cfg, _, _ = hub_stack
    alice = clients["alice"]
    if not alice.running():
        alice.start()
    alice.run_code("open('compose.txt', 'w').write('plain compose')\n")
    # The same lines as compose/.env, from the copy under state_dir: the other platforms of
    # this checkout (ci/test.sh's standalone stream runs some at the same time) rewrite
    # compose/.env at each `up`, and compose would then stop and start theirs.
    env = stack.render_env(cfg)
    plain = ["docker", "compose", "-f", "compose/compose.yaml", "--env-file", str(env)]
    r = subprocess.run([*plain, "stop"], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert r.returncode == 0, r.stderr
    with pytest.raises(requests.RequestException):
        requests.get(f"{url(cfg)}/hub/health", timeout=5)
    r = subprocess.run(
        [*plain, "up", "-d", "--wait"], cwd=REPO, capture_output=True, text=True, timeout=600
    )
    if r.returncode != 0:
        # A stopped or restarting container reads "unhealthy" to compose, so a hub that
        # exits during its start fails `--wait` at once: then say how often and why.
        (hub,) = docker_client.containers.list(
            all=True,
            filters={
                "label": [
                    f"com.docker.compose.project={project_name(cfg)}",
                    "com.docker.compose.service=hub",
                ]
            },
        )
        if hub.status != "running" or hub.attrs["RestartCount"]:
            raise AssertionError(
                f"{r.stderr}\nhub: {hub.status}, restarted {hub.attrs['RestartCount']} times; "
                f"its log ends:\n{hub.logs(tail=80).decode(errors='replace')}"
            )
        # Seen once in CI and once in eight runs of this module here: `--wait` gave up on an
        # "unhealthy" hub whose log showed a normal start under way. A hub that is running
        # and never restarted is judged by its own health below; the warning keeps it seen.
        warnings.warn(f"compose --wait failed, the hub running: {r.stderr[-300:]}", stacklevel=1)
    assert read_back_after_restart(cfg, alice, "compose.txt") == "plain compose"


def test_announcement_shows_on_every_page_and_clears_without_a_restart(hub_stack, clients):
    cfg, config, _ = hub_stack
    alice = clients["alice"]
    text = "Restart your server for the new image <today>"
    r = hubstack(config, "announce", text)
    assert r.returncode == 0, r.stderr
    page = alice.http.get(f"{url(cfg)}/hub/home", timeout=30).text
    assert "Restart your server for the new image &lt;today&gt;" in page, "escaped, shown"
    assert hubstack(config, "announce", "--clear").returncode == 0
    assert "Restart your server" not in alice.http.get(f"{url(cfg)}/hub/home", timeout=30).text


def test_down_with_servers_running_then_up_keeps_users_tokens_and_homes(
    hub_stack, clients, docker_client
):
    """`hubstack down` with an analyst working, then `hubstack up`: the same platform back.
    Her API token lives only in the hub database, her file only in her home. `down` leaves
    no analyst network, even one a hub that died without `down` left."""
    cfg, config, _ = hub_stack
    alice = clients["alice"]
    if not alice.running():
        alice.start()
    alice.run_code("open('across-down.txt', 'w').write('kept across down and up')\n")

    down = hubstack(config, "down")
    assert down.returncode == 0, down.stdout + down.stderr
    assert "stopped notebook server of alice" in down.stdout
    assert "hubstack is down" in down.stdout
    with pytest.raises(requests.RequestException):
        requests.get(f"{url(cfg)}/hub/health", timeout=5)
    assert networks.analyst_networks(cfg, docker_client) == []
    networks.ensure_network(cfg, docker_client, "left-by-a-dead-hub", starting=False)
    again = hubstack(config, "down")
    assert "nothing to stop" in again.stdout, again.stdout + again.stderr
    assert networks.analyst_networks(cfg, docker_client) == []

    up = hubstack(config, "up", "--no-build")
    assert up.returncode == 0, up.stdout[-3000:] + up.stderr[-3000:]
    assert "log in with an account from the users file" in up.stdout, "no new admin"
    assert alice.api("GET", "/hub/api/users/alice").status_code == 200, "token kept"
    assert not alice.running(), "servers start again on the analyst's next login"
    password = ANALYSTS["alice"][0]
    assert HubClient(url(cfg), "alice").login(password).status_code == 302
    alice.start()
    assert alice.run_code("print(open('across-down.txt').read())").strip() == (
        "kept across down and up"
    )
    alice.stop()


def test_env_report_page_is_for_admins_only(hub_stack, clients):
    """The report as a page in the hub (a JupyterHub service behind its login): an admin
    sees every running server with its image; an analyst is refused by the hub."""
    cfg, _, _ = hub_stack
    alice, bob = clients["alice"], clients["bob"]
    if not alice.running():
        alice.start()
    users_file_for(cfg).add("carol", 23009, 23009, admin=True, password="carol-pw-51d0")
    try:
        carol = HubClient(url(cfg), "carol")
        assert carol.login("carol-pw-51d0").status_code == 302
        page = carol.http.get(f"{url(cfg)}/services/env-report/", timeout=120)
        assert page.status_code == 200, page.text[:500]
        assert "Who runs which environment" in page.text
        assert "<td>alice</td><td>profile default</td>" in page.text
        refused = bob.http.get(f"{url(cfg)}/services/env-report/", timeout=60)
        assert refused.status_code == 403, (refused.status_code, refused.url)
    finally:
        users_file_for(cfg).remove("carol")
        alice.stop()


def test_a_profile_for_a_group_refuses_everyone_else_with_403(hub_stack, clients, docker_client):
    """profiles[].allow: the gpu profile given to the JupyterHub group `gpu`. bob, outside
    it, gets 403 naming the group; alice, in it, passes the check (and, with no GPU on this
    machine, gets the no-GPU answer instead). The spawn form shows a group's profile to its
    members only: spark, given to the same group, stands in for gpu there, which a node
    without GPUs offers nobody. The hub restarts to read the changed config; running
    servers would not notice."""
    cfg, _, _ = hub_stack

    def gpu_for_group(data: dict) -> None:
        for profile in data["profiles"]:
            if profile["name"] in ("gpu", "spark"):
                profile["allow"] = {"groups": ["gpu"], "users": []}

    users_file_for(cfg).add("dana", 23010, 23010, admin=True, password="dana-pw-0c71")
    try:
        with hub_config_changed(cfg, docker_client, gpu_for_group):
            dana = HubClient(url(cfg), "dana")
            assert dana.login("dana-pw-0c71").status_code == 302
            dana.make_token()
            assert dana.api("POST", "/hub/api/groups/gpu").status_code in (201, 409)
            r = dana.api("POST", "/hub/api/groups/gpu/users", json={"users": ["alice"]})
            assert r.status_code == 200, r.text

            bob, alice = clients["bob"], clients["alice"]
            r = bob.api("POST", "/hub/api/users/bob/server", json={"profile": "gpu"})
            assert r.status_code == 403, r.text
            assert "only for group gpu" in r.json()["message"]
            r = alice.api("POST", "/hub/api/users/alice/server", json={"profile": "gpu"})
            assert r.status_code != 403 and "GPU" in r.json()["message"], r.text
            assert 'value="spark"' in alice.http.get(f"{alice.base}/hub/spawn", timeout=30).text
            bobs_form = bob.http.get(f"{bob.base}/hub/spawn", timeout=30).text
            assert 'value="default"' in bobs_form and 'value="spark"' not in bobs_form
            assert not bob.running() and not alice.running()
    finally:
        users_file_for(cfg).remove("dana")


def test_a_new_analysts_network_is_ready_before_her_first_login(hub_stack, docker_client):
    """While idle, the hub makes the networks of the analysts likeliest to start next
    (network.ready_ahead, on by default), so a burst of starts does not pay for them: one
    just added to the users file finds hers made, with the hub on it, and her first start
    runs on it. It stays after her stop, with only the hub on it."""
    cfg, _, _ = hub_stack
    password = "frank-pw-9d1e"
    add_user(cfg, "frank", password, 23010, 23010, [])
    name = network_name(cfg, "frank")
    hub = service_container(cfg, docker_client, "hub")
    deadline = time.monotonic() + 60
    while True:
        made = [n for n in docker_client.networks.list(names=[name]) if n.name == name]
        if made:
            made[0].reload()
            if hub.id in made[0].attrs["Containers"]:
                break
        assert time.monotonic() < deadline, "frank's network was not made within 60 s"
        time.sleep(1)
    net = made[0]
    assert any(
        "Analysts' networks made ahead" in line and "frank" in line
        for line in hub.logs().decode().splitlines()
    )

    frank = HubClient(url(cfg), "frank")
    assert frank.login(password).status_code == 302
    frank.make_token()
    frank.start()
    try:
        server = docker_client.containers.get(f"{cfg.hub.network}-nb-frank")
        assert server.attrs["NetworkSettings"]["Networks"][name]["NetworkID"] == net.id
    finally:
        frank.stop()
    net.reload()
    assert list(net.attrs["Containers"]) == [hub.id]

"""HubstackSpawner: DockerSpawner that runs each analyst as their own UID:GID.

What it adds to stock DockerSpawner:
- the image is the chosen profile's image from our registry, resolved to a digest at
  every start and pulled by digest with the registry credentials (no `docker login`);
- the container runs as UID:GID with the analyst's supplementary groups, no root, all
  capabilities dropped, no-new-privileges, memory/CPU/pids limits, no Docker socket;
- /etc/passwd and /etc/group get the analyst's entries (put_archive before start), so
  id, whoami, $HOME, pwd.getpwuid() and Java's user.home are right without root;
- the home is CONFIG home_root/<name>, created 0700 owned UID:GID, bind-mounted at
  /home/<name>; it is never deleted, so it survives stop, respawn and image upgrades;
- a network of the analyst's own (hubstack.networks): only their server, their Spark
  containers and the hub are on it;
- in a Spark profile, the analyst's own Spark cluster (hubstack.spark_cluster), started
  beside the server from the same version's spark-executor image, removed with it;
- an analyst with their own packages (hubstack.images.user) starts on their per-user
  image, looked up in the registry or built first with its progress on the spawn page; in
  a Spark profile their cluster runs the same image; `plain: true` starts without it;
- real progress on the spawn page (pull share, create, start, wait);
- a burst of spawns queues for hub.spawn.concurrent_starts start slots
  (hubstack.hub.start_queue), each told its place, instead of all slowing down together;
- Docker calls run on a pool, not on stock DockerSpawner's single class-wide thread,
  so one analyst's slow pull does not hold up another's spawn.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import socket
from concurrent.futures import ThreadPoolExecutor
from html import escape

import docker
from dockerspawner import DockerSpawner
from jupyterhub.utils import url_path_join, wait_for_http_server
from tornado import web
from traitlets import Dict, Float, Instance, Int, Unicode, default

from hubstack import networks, spark, spark_cluster
from hubstack.ci.release import load_release
from hubstack.config import PlatformConfig
from hubstack.engine import PLATFORM_LABEL, repo_digest
from hubstack.hub import container_spec, gpu, versions
from hubstack.hub.accounts import lookup_account
from hubstack.hub.ldap import check_home
from hubstack.hub.progress import PullProgress, SpawnProgress
from hubstack.hub.spawn_options import SpawnOptions, SpawnOptionsError, parse_spawn_options
from hubstack.hub.start_queue import StartQueue
from hubstack.hub.users import check_id
from hubstack.images import user as user_images
from hubstack.registry import auth_config, role_of

HOME_MODE = 0o700


CHOSEN_VERSION_STATE = "hubstack_version"
PLAIN_HINT = (
    "You can still start on the plain image: tick 'Start without my own packages' on the "
    "spawn form (server option plain: true), and ask an admin to fix your packages "
    "(`hubstack users env NAME`)"
)


async def port_open(host: str, port: int, timeout: float = 1.0) -> bool:
    """Whether HOST:PORT accepts a TCP connection now."""
    try:
        _, writer = await asyncio.wait_for(asyncio.open_connection(host, port), timeout)
    except (OSError, TimeoutError):
        return False
    writer.close()
    with contextlib.suppress(OSError):
        await writer.wait_closed()
    return True


def start_phases(marks: dict[str, float]) -> str:
    """One start's phases from its marks (begin, queued, turn, starting, started, answered),
    for the hub's log: what an operator reads to see where a slow start's time went."""
    # Created while queued, or (a GPU start) queued, then created: either way, what is not
    # queueing before the start is creating.
    created = marks["starting"] - marks["begin"] - (marks["turn"] - marks["queued"])
    return (
        f"{marks['turn'] - marks['queued']:.2f} s queued, {created:.2f} s creating the "
        f"container, {marks['started'] - marks['starting']:.2f} s starting it, "
        f"{marks['answered'] - marks['started']:.2f} s until the server answered"
    )


class HubstackSpawner(DockerSpawner):
    """Spawner for hubstack profiles; configured from the platform config."""

    docker_threads = Int(
        16,
        config=True,
        help="Threads for Docker calls, shared by all spawns (stock DockerSpawner uses 1).",
    )
    pids_limit = Int(
        container_spec.DEFAULT_PIDS_LIMIT,
        config=True,
        help="Most processes one notebook container may run.",
    )
    extra_labels = Dict(config=True, help="More labels for notebook containers.")
    answer_poll_interval = Float(
        0.1,
        config=True,
        help="Seconds between tries to reach a starting server's port. Its start slot is "
        "held until it answers, so a late look keeps the next analyst waiting.",
    )
    platform = Instance(
        PlatformConfig,
        config=True,
        allow_none=True,
        help="The platform config; hubstack.hub.setup.configure_hub sets it from the one "
        "hubstack.yaml the hub loads (the authenticator gets its settings the same way).",
    )

    chosen_version = Unicode(
        "",
        help="The release this analyst picked last; kept in the spawner's state (the hub's "
        "database) across stops until they pick another; '' for stable.",
    )

    _pool: ThreadPoolExecutor | None = None

    # --- the analyst's version choice, kept across stops --------------------------------
    def load_state(self, state):
        super().load_state(state)
        self.chosen_version = state.get(CHOSEN_VERSION_STATE, "")

    def get_state(self):
        state = super().get_state()
        if self.chosen_version:
            state[CHOSEN_VERSION_STATE] = self.chosen_version
        return state

    def clear_state(self):
        # JupyterHub clears the state after a stop; the choice must outlive the container.
        chosen = self.chosen_version
        super().clear_state()
        self.chosen_version = chosen

    # --- Docker calls on a pool ------------------------------------------------------
    @property
    def executor(self):
        """A pool shared by all spawners, wide enough that slow calls don't queue others."""
        cls = HubstackSpawner
        if cls._pool is None:
            cls._pool = ThreadPoolExecutor(self.docker_threads, thread_name_prefix="docker")
        return cls._pool

    # --- configuration ---------------------------------------------------------------
    @property
    def cfg(self) -> PlatformConfig:
        if self.platform is None:
            raise RuntimeError(
                "HubstackSpawner.platform is not set: the hub's config must call "
                "hubstack.hub.setup.configure_hub (hub/jupyterhub_config.py does)"
            )
        return self.platform

    @default("network_name")
    def _default_network(self):
        # Derived from the name alone, so a restarted hub finds a running server's network.
        return networks.network_name(self.cfg, self.user.name)

    @default("prefix")
    def _default_prefix(self):
        return f"{self.cfg.hub.network}-nb"

    @default("use_internal_ip")
    def _default_internal(self):
        return True

    @default("remove")
    def _default_remove(self):
        # The container is disposable: state lives in the home, which is never removed.
        return True

    @default("pull_policy")
    def _default_pull(self):
        # The image is always a digest, which never changes: pull it only when absent.
        return "ifnotpresent"

    @default("cmd")
    def _default_cmd_hubstack(self):
        return ["jupyterhub-singleuser"]

    @default("options_form")
    def _default_form(self):
        # A callable, which JupyterHub calls at each visit of the spawn page: a string would be
        # computed once per spawner and go stale (new releases, the analyst's packages).
        return HubstackSpawner._render_form

    def _render_form(self) -> str:
        rows = []
        offered = [p for p in self._offered_profiles() if self._may_use(p)]
        for i, p in enumerate(offered):
            checked = " checked" if i == 0 else ""
            rows.append(
                '<label class="form-check">'
                f'<input class="form-check-input" type="radio" name="profile" '
                f'value="{escape(p.name)}"{checked}> <strong>{escape(p.display_name)}</strong> '
                f"<small>{escape(p.description)}</small></label>"
            )
        image = offered[0].image if offered else self.cfg.profiles[0].image
        offers = versions.version_offers(self.cfg, image, self._may_preview())
        if len(offers) > 1:
            rows.append(versions.form_rows(offers, self._kept_version() or versions.STABLE))
        if self.cfg.user_images.enabled and self.cfg.user_images.form:
            rows.append(self._packages_row())
        if self.cfg.user_images.enabled:
            rows.append(
                '<label class="form-check"><input class="form-check-input" type="checkbox" '
                'name="plain" value="1"> Start without my own packages (the plain image)</label>'
            )
        return "\n".join(rows)

    def _offered_profiles(self) -> list:
        """The profiles this hub can serve: GPU ones only where this node has GPUs."""
        return gpu.offered_profiles(self.cfg, gpu.scan_root())

    def _packages_row(self) -> str:
        """The text area holding the analyst's own packages (user_images.form)."""
        try:
            current = user_images.form_text(user_images.load_env(self.cfg, self.user.name))
        except user_images.EnvSpecError as e:
            current = ""
            self.log.warning("%s's packages no longer pass: %s", self.user.name, e)
        apt = self.cfg.user_images.apt_allowlist
        apt_help = (
            f"; Debian packages as apt:NAME, from: {', '.join(apt)}"
            if apt
            else "; no Debian package is offered"
        )
        return (
            '<label for="hubstack-packages" class="form-label">Your own packages</label> '
            f"<small>one per line: a pip name and version such as polars==1.*{escape(apt_help)}. "
            "Built into an image of your own at this start, then cached.</small>"
            '<textarea class="form-control" id="hubstack-packages" name="packages" rows="4" '
            f'spellcheck="false">{escape(current)}</textarea>'
        )

    def options_from_form(self, formdata):
        chosen = {key: (formdata.get(key) or [""])[0] for key in ("profile", "version")}
        options: dict = {key: value for key, value in chosen.items() if value}
        if (formdata.get("plain") or [""])[0]:
            options["plain"] = True
        if "packages" in formdata:  # the text area is shown: what it holds is the list
            options["packages"] = (formdata.get("packages") or [""])[0]
        return options

    @default("apply_user_options")
    def _default_apply_user_options(self):
        # JupyterHub runs this before start(), for the form and the REST API alike, and
        # answers an HTTPError raised here with its status and message.
        def check(spawner: HubstackSpawner, options: dict) -> None:
            spawner._image_tag(spawner._profile())

        return check

    def _options(self) -> SpawnOptions:
        try:
            return parse_spawn_options(self.cfg, self.user_options)
        except SpawnOptionsError as e:
            raise web.HTTPError(400, str(e)) from None

    def _may_use(self, profile) -> bool:
        return profile.allow is None or profile.allow.admits(self.user.name, self._groups())

    def _groups(self) -> list[str]:
        return [g.name for g in getattr(self.user, "groups", [])]

    def _may_preview(self) -> bool:
        preview = self.cfg.hub.preview
        return preview is not None and preview.admits(self.user.name, self._groups())

    def _kept_version(self) -> str:
        """The release this analyst chose before, while it is still offered; '' otherwise."""
        kept = self.chosen_version
        rec = load_release(self.cfg, kept) if versions.is_release(kept) else None
        return kept if rec is not None and not rec.retired else ""

    def _version(self) -> str:
        """stable | preview | X.Y.Z: what this start asks for, else the kept release."""
        return self._options().version or self._kept_version() or versions.STABLE

    def _image_tag(self, profile) -> str:
        """The tag this start resolves: stable; preview for those allowed (else 403); a release
        that is offered (else 400). A Spark profile's cluster runs the same tag."""
        version = self._version()
        if version == versions.STABLE:
            return self.cfg.hub.notebook_image_tag
        if version == versions.PREVIEW and not self._may_preview():
            who = self.cfg.hub.preview.describe() if self.cfg.hub.preview else "nobody"
            raise web.HTTPError(
                403, f"the preview version is only for {who} (hub.preview); start on stable"
            )
        if version != versions.PREVIEW:
            offered = [r.version for r in versions.offered_releases(self.cfg)]
            if version not in offered:
                raise web.HTTPError(
                    400,
                    f"release {version} is not offered (retired, pruned or never made); "
                    f"versions: {', '.join(['stable', *offered])}",
                )
        return self.cfg.images.tag if version == versions.PREVIEW else version

    def _profile(self):
        """The requested profile (default: the first this analyst may use), checked: declared
        options (400) and who may use it (403)."""
        name = self._options().profile or next(
            (p.name for p in self.cfg.profiles if self._may_use(p)), self.cfg.profiles[0].name
        )
        profile = self.cfg.profile(name)
        if profile.allow is not None and not self._may_use(profile):
            raise web.HTTPError(
                403,
                f"the profile {profile.name!r} is only for {profile.allow.describe()}; "
                "an admin can add you (the hub's Admin page, Groups), or choose another profile",
            )
        return profile

    # --- progress --------------------------------------------------------------------
    _spawn_progress: SpawnProgress | None = None

    @property
    def spawn_progress(self) -> SpawnProgress:
        if self._spawn_progress is None:
            self._spawn_progress = self._new_progress()
        return self._spawn_progress

    def _new_progress(self) -> SpawnProgress:
        """A start's progress events, each also in the hub's log."""
        name = getattr(self.user, "name", "?")
        return SpawnProgress(lambda message: self.log.info("%s's start: %s", name, message))

    async def progress(self):
        async for event in self.spawn_progress.events():
            yield event

    # --- identity --------------------------------------------------------------------
    async def _identity(self) -> dict:
        """UID, GID, groups and home: from the login's auth state, else from the users file or
        the table of directory accounts (an account an admin created through the REST API
        has never logged in). Never from the directory itself: a spawn does not wait on it."""
        state = await self.user.get_auth_state() or {}
        if "uid" not in state or "gid" not in state:
            record = await asyncio.get_running_loop().run_in_executor(
                self.executor, lookup_account, self.cfg, self.user.name
            )
            if record is None:
                raise web.HTTPError(
                    409,
                    f"user {self.user.name} has no UID/GID: they are not in the users file, "
                    "and have not logged in from a directory. "
                    f"An admin adds them with `hubstack users add {self.user.name} --uid UID "
                    "--gid GID`; then start the server again",
                )
            state = {
                "uid": record.uid,
                "gid": record.gid,
                "groups": list(record.groups),
                "home": record.home,
            }
        try:
            hub = self.cfg.hub
            uid = check_id(state["uid"], "uid", hub.min_uid, hub.allow_nobody_id)
            gid = check_id(state["gid"], "gid", hub.min_uid, hub.allow_nobody_id)
            groups = [
                check_id(g, "groups", hub.min_uid, hub.allow_nobody_id)
                for g in state.get("groups") or []
            ]
            home = f"/home/{self.user.name}"
            if state.get("home") and state["home"] != home:
                home = check_home(state["home"])  # a directory's homeDirectory
        except ValueError as e:
            raise web.HTTPError(403, f"user {self.user.name}: {e}") from None
        return {"uid": uid, "gid": gid, "groups": groups, "home": home}

    def _ensure_home(self, uid: int, gid: int) -> str:
        """Create CONFIG home_root/<name> owned uid:gid, mode 0700 (runs in the hub, as root)."""
        home = self.cfg.home_root / self.user.name
        home.mkdir(parents=True, exist_ok=True)
        st = home.stat()
        if (st.st_uid, st.st_gid) != (uid, gid):
            os.chown(home, uid, gid)
        os.chmod(home, HOME_MODE)
        return str(home)

    # --- image -----------------------------------------------------------------------
    def _auth(self, ref: str = "") -> dict | None:
        """The account for REF's registry instance: the pull account for our images, the
        users account for a per-user image (registry.users_address)."""
        return auth_config(self.cfg, role_of(self.cfg, ref))

    async def _resolve_digest(self, ref: str) -> str:
        """REPO:TAG -> REPO@sha256:..., asked of the registry through the engine. When the
        registry cannot answer, the digest this node recorded when it last pulled or pushed
        REF: a registry outage must not stop analysts whose image is already here."""
        repo = ref.rsplit(":", 1)[0]
        try:
            info = await self._ask_registry(ref)
            return f"{repo}@{info['Descriptor']['digest']}"
        except docker.errors.APIError as e:
            asked = e.explanation or str(e)
        try:
            local = await self.docker("inspect_image", ref)
        except docker.errors.ImageNotFound:
            local = {}
        here = repo_digest(local, repo)
        if not here:
            raise web.HTTPError(
                503,
                f"the registry {self.cfg.registry.address} cannot give image {ref} ({asked}) "
                "and this node has no copy of it; ask an admin to check the registry "
                "(`hubstack status`, `hubstack doctor`)",
            )
        self.log.warning("registry did not resolve %s (%s); using this node's %s", ref, asked, here)
        self.spawn_progress.emit(4, "The registry did not answer: using the image on this node")
        return here

    _registry_asks: dict[str, asyncio.Future] = {}

    async def _ask_registry(self, ref: str) -> dict:
        """The registry's answer for REF (inspect_distribution), one request for all the
        starts that ask while it is out: in a burst, the registry, the engine and the hub
        answer one lookup where each start used to make its own. A start that joins gets an
        answer asked for at most one lookup's time (milliseconds) before its own ask; a tag
        moved in that moment is seen from the next lookup on."""
        asks = HubstackSpawner._registry_asks
        ask = asks.get(ref)
        if ask is None:
            ask = asyncio.ensure_future(
                self.docker("inspect_distribution", ref, auth_config=self._auth(ref))
            )
            asks[ref] = ask

            def done(f: asyncio.Future) -> None:
                asks.pop(ref, None)
                if not f.cancelled():
                    f.exception()  # retrieved, even when every start waiting on it went away

            ask.add_done_callback(done)
        return await asyncio.shield(ask)

    async def pull_image(self, image):
        """Pull by digest, streaming per-layer progress to the spawn page."""
        loop = asyncio.get_running_loop()
        pull = PullProgress()
        progress = self.spawn_progress
        auth = self._auth(image)

        def run():
            stream = self.client.pull(image, stream=True, decode=True, auth_config=auth)
            for ev in stream:
                if "error" in ev:
                    raise RuntimeError(ev["error"])
                if pull.update(ev):
                    loop.call_soon_threadsafe(
                        progress.emit,
                        10 + int(60 * pull.fraction),
                        f"Pulling image: {pull.describe()}",
                    )

        if image == self._pulled:
            return  # pulled before the start slot (_start_server); DockerSpawner asks again
        if self.pull_policy.lower() != "always":
            try:
                here = await self.docker("inspect_image", image)
                progress.emit(70, "Image already on this node")
                ref = getattr(self, "_tag_ref", "")
                if ref not in (here.get("RepoTags") or []):  # tagged already: nothing to write
                    await self._remember_tag(image, ref)
                self._pulled = image
                return
            except docker.errors.ImageNotFound:
                if self.pull_policy.lower() == "never":
                    raise web.HTTPError(
                        500, f"image {image} is not on this node and pull_policy is never"
                    ) from None
        progress.emit(10, f"Pulling image {image}")
        await asyncio.wrap_future(self.executor.submit(run))
        progress.emit(70, "Image ready")
        await self._remember_tag(image, getattr(self, "_tag_ref", ""))
        self._pulled = image

    async def _remember_tag(self, image: str, ref: str) -> None:
        """Tag IMAGE (REPO@digest) with REF (REPO:tag), the tag it was resolved from: when the
        registry is down, _resolve_digest falls back to this node's copy of that tag. A pull by
        digest alone leaves no tag, and the hub's registry is the read-only one, whose names
        nothing else on the node carries."""
        repo, _, tag = ref.rpartition(":")
        if ref and image.startswith(repo + "@"):
            await self.docker("tag", image, repo, tag)

    # --- containers ------------------------------------------------------------------
    def _spark_environment(self, profile) -> dict:
        """Spark driver settings for a spark profile (hubstack.spark owns them)."""
        return spark.driver_environment(self.cfg, self.container_name, self.user.name)

    def _gpu_allocator(self, profile):
        """The GPU allocator (hubstack.hub.gpu owns it), once it has found that this node can
        serve the profile at all: a profile it can never serve is refused before any work."""
        alloc = gpu.allocator(self.cfg, self.client)
        try:
            alloc.check(profile.gpus, profile.name)
        except gpu.GPUUnavailable as e:
            raise web.HTTPError(409, str(e)) from None
        return alloc

    async def create_object(self):
        ident = self._ident
        profile = self._profile_cfg
        self.spawn_progress.emit(72, "Creating the container")
        host_home = await asyncio.get_running_loop().run_in_executor(
            self.executor, self._ensure_home, ident["uid"], ident["gid"]
        )
        accounts = await self._in_pool(self._account_mounts, ident)
        self.volumes = {host_home: {"bind": ident["home"], "mode": "rw"}, **accounts}
        self.extra_create_kwargs = container_spec.create_kwargs(
            self.user.name,
            profile.name,
            ident,
            {PLATFORM_LABEL: self.cfg.hub.network, **self.extra_labels},
            self._extra_gpu.get("labels"),
        )
        self.extra_host_config = container_spec.host_config(
            ident, self.pids_limit, self._extra_gpu.get("host_config")
        )
        obj = await super().create_object()
        if profile.spark:
            await self._write_spark_files(obj["Id"], ident)
        return obj

    async def _write_spark_files(self, container_id: str, ident: dict) -> None:
        """Files a Spark-profile container needs beside its environment: the startup hook
        and the analyst's spark-defaults.conf with their cluster's secret (hubstack.spark and
        hubstack.spark_cluster own them)."""
        files, dirs = spark_cluster.secret_files(ident, self._spark_secret)
        for path, data in spark.driver_files(self.cfg).items():
            files[path] = container_spec.File(data)
        await self._in_pool(container_spec.put_files, self.client, container_id, files, dirs)

    async def _in_pool(self, fn, *args):
        return await asyncio.wrap_future(self.executor.submit(fn, *args))

    def get_env(self):
        env = super().get_env()
        env.update(
            HOME=(getattr(self, "_ident", None) or {}).get("home") or f"/home/{self.user.name}",
            USER=self.user.name,
            NB_USER=self.user.name,
            SHELL="/bin/bash",
        )
        env.update(getattr(self, "_extra_env", {}))
        return env

    def _account_mounts(self, ident: dict) -> dict:
        """The container's /etc/passwd and /etc/group, the image's plus the analyst's lines,
        as read-only mounts of files the hub keeps (container_spec.account_mounts)."""
        image_passwd, image_group = self._read_image_accounts(self.image)
        texts = container_spec.account_texts(self.user.name, ident, image_passwd, image_group)
        return container_spec.account_mounts(self.cfg.container_accounts_dir, self.user.name, texts)

    def _read_image_accounts(self, image: str) -> tuple[str, str]:
        """The image's own /etc/passwd and /etc/group, read from a container created (never
        started) on this engine (the manager's in swarm mode); once per digest, in
        container_spec's cache."""
        known = container_spec.known_image_accounts(image)
        if known is not None:
            return known
        try:
            self.client.inspect_image(image)
        except docker.errors.ImageNotFound:
            self._pull_quietly(image)
        created = self.client.create_container(image, command=["true"], labels={PLATFORM_LABEL: ""})
        try:
            return container_spec.image_account_files(self.client, created["Id"], image)
        finally:
            self.client.remove_container(created["Id"], force=True)

    # --- the analyst's network -------------------------------------------------------
    _hub_container: str | None = None

    def _hub_id(self) -> str:
        """The hub's own container (compose leaves its hostname as the container ID)."""
        cls = HubstackSpawner
        if cls._hub_container is None:
            try:
                cls._hub_container = self.client.inspect_container(socket.gethostname())["Id"]
            except docker.errors.NotFound:
                raise networks.NetworkError(
                    "the hub is not running in a container of this engine, so it cannot join "
                    "analysts' networks; start it with `hubstack up`"
                ) from None
        return cls._hub_container

    @property
    def engine(self) -> docker.DockerClient:
        """The high-level client over DockerSpawner's low-level one (same connection), for
        hubstack.networks and hubstack.spark_cluster; made once."""
        if getattr(self, "_engine", None) is None:
            self._engine = docker.DockerClient.__new__(docker.DockerClient)
            self._engine.api = self.client
        return self._engine

    def _join_network(self) -> None:
        networks.ensure_joined(self.cfg, self.engine, self.user.name, self._hub_id())

    def _leave_network(self) -> None:
        # Kept for the analyst's next start when networks are made ahead: the hub's keeper
        # (hubstack.hub.ready_networks) removes it once they are no longer likely next.
        if self.cfg.network.ready_ahead == 0:
            networks.remove_network(self.cfg, self.engine, self.user.name)

    async def poll(self):
        status = await super().poll()
        if status is None and not getattr(self, "_network_checked", False):
            # A restarted or recreated hub: join the networks of servers still running.
            await self._in_pool(self._join_network)
            self._network_checked = True
        return status

    # --- the analyst's Spark cluster -------------------------------------------------
    _spark_secret: str = ""
    _cluster_lock: asyncio.Lock | None = None

    async def _start_cluster(self, tag: str, image: str | None = None) -> None:
        """Resolve, pull and start the analyst's cluster, from their per-user image (IMAGE)
        or the spark-executor image of the same tag as their server."""
        try:
            ref = ""  # a per-user image is found by its hash, never by a remembered tag
            if image is None:
                ref = self.cfg.image_ref(spark.EXECUTOR_IMAGE, tag)
                image = await self._resolve_digest(ref)
            try:
                await self.docker("inspect_image", image)
            except docker.errors.ImageNotFound:
                await self._in_pool(self._pull_quietly, image)
            await self._remember_tag(image, ref)
            spec = self._cluster_spec(image, self.network_name, self._spark_volumes)
            await self._in_pool(
                spark_cluster.start_cluster, self.cfg, self.engine, spec, self._spark_secret
            )
        finally:
            self._release_pending()
        self.spawn_progress.emit(85, "Your Spark cluster is ready")

    def _cluster_spec(
        self, image: str, network: str, volumes: dict | None = None
    ) -> spark_cluster.ClusterSpec:
        """The analyst's cluster: named after their server, run as them from IMAGE."""
        return spark_cluster.ClusterSpec(
            server=self.container_name,
            user=self.user.name,
            ident=self._ident,
            image=image,
            network=network,
            volumes=volumes or {},
        )

    def _pull_quietly(self, image: str) -> None:
        for ev in self.client.pull(image, stream=True, decode=True, auth_config=self._auth(image)):
            if "error" in ev:
                raise RuntimeError(ev["error"])

    _pending_cores = 0
    """Cores of clusters being started in this hub: counted by the cap before their
    containers exist."""

    async def _reserve_spark_cores(self) -> None:
        cls = HubstackSpawner
        if cls._cluster_lock is None:
            cls._cluster_lock = asyncio.Lock()
        async with cls._cluster_lock:
            try:
                await self._in_pool(self._check_spark_capacity, cls._pending_cores)
            except spark_cluster.ClusterError as e:
                raise web.HTTPError(409, str(e)) from None
            cls._pending_cores += spark.cluster_cores(self.cfg)
        self._holds_pending = True

    def _check_spark_capacity(self, pending: int) -> None:
        """Refuse a cluster past spark.max_total_cores (PENDING: cores being started)."""
        spark_cluster.check_capacity(self.cfg, self.engine, pending)

    def _release_pending(self) -> None:
        if getattr(self, "_holds_pending", False):
            HubstackSpawner._pending_cores -= spark.cluster_cores(self.cfg)
            self._holds_pending = False

    async def start(self):
        self._spawn_progress = self._new_progress()
        self._pulled = ""
        progress = self.spawn_progress
        profile = self._profile()
        self._profile_cfg = profile
        gpus = self._gpu_allocator(profile) if profile.gpus > 0 else None
        self._ident = await self._identity()
        self.mem_limit = profile.mem_limit or self.cfg.resources.mem_limit
        self.cpu_limit = profile.cpu_limit or self.cfg.resources.cpu_limit
        self._extra_env = self._spark_environment(profile) if profile.spark else {}
        self._extra_gpu = {}

        progress.emit(2, f"Looking up image {profile.image} in the registry")
        tag = self._image_tag(profile)
        ref = self.cfg.image_ref(profile.image, tag)
        # A release is kept for the next starts; stable or preview ends that choice.
        version = self._version()
        self.chosen_version = version if versions.is_release(version) else ""
        self.image = await self._resolve_digest(ref)
        self._tag_ref = ref
        progress.emit(5, f"Image {ref} is {self.image.rsplit('@', 1)[1][:19]}")
        own_image = await self._user_image(profile, tag)
        self.image = own_image or self.image

        try:
            await self._in_pool(self._join_network)
        except networks.NetworkError as e:
            raise web.HTTPError(503, str(e)) from None

        cluster = None
        if profile.spark:
            await self._reserve_spark_cores()
            self._spark_secret = spark_cluster.new_secret()
            home = {"bind": self._ident["home"], "mode": "rw"}
            self._spark_volumes = {str(self.cfg.home_root / self.user.name): home}
            progress.emit(6, f"Starting your Spark cluster ({self.cfg.spark.workers} workers)")
            # In parallel with the server: neither waits for the other.
            cluster = asyncio.ensure_future(self._start_cluster(tag, own_image))
        try:
            result = await self._start_server(profile, gpus)
        except BaseException:
            if cluster is not None:
                await asyncio.gather(cluster, return_exceptions=True)
                await self._in_pool(spark_cluster.stop_cluster, self.engine, self.container_name)
            raise
        if cluster is not None:
            try:
                await cluster
            except (spark_cluster.ClusterError, web.HTTPError, RuntimeError) as e:
                await self.stop(now=True)
                message = e.log_message if isinstance(e, web.HTTPError) else str(e)
                raise web.HTTPError(500, message) from None
        progress.emit(95, "Your server is up")
        return result

    # --- the analyst's own packages (hubstack.images.user) ------------------------------
    _builds_pool: ThreadPoolExecutor | None = None
    _build_pct = 6

    async def _user_image(self, profile, tag: str) -> str | None:
        """The analyst's per-user image when they have packages and did not ask for the
        plain one: a registry hit, or a build (one per hash in this hub) whose steps show on
        the spawn page. In a Spark profile it is built FROM spark-executor, so the server
        and the executors run it. None: the profile's own image."""
        options = self._options()
        if options.packages is not None:  # checked already (spawn_options); written now
            env = user_images.parse_form_text(self.cfg, options.packages)
            await self._in_pool(self._keep_packages, env)
        if not self.cfg.user_images.enabled or options.plain:
            return None
        try:
            env = await self._in_pool(user_images.load_env, self.cfg, self.user.name)
        except user_images.EnvSpecError as e:
            raise web.HTTPError(400, f"your packages are refused: {e}. {PLAIN_HINT}") from None
        if env.empty:
            return None
        parent_name = spark.EXECUTOR_IMAGE if profile.spark else profile.image
        parent = self.image
        if profile.spark:
            parent = await self._resolve_digest(self.cfg.image_ref(parent_name, tag))
        cls = HubstackSpawner
        if cls._builds_pool is None:  # waits on builds must not hold the Docker-call threads
            cls._builds_pool = ThreadPoolExecutor(64, thread_name_prefix="user-image")
        loop = asyncio.get_running_loop()

        def say(line: str) -> None:  # called on the build's thread
            loop.call_soon_threadsafe(self._built, line)

        self._build_pct = 6
        self.spawn_progress.emit(6, f"Looking up your packages' image ({env.describe()})")
        try:
            p = await self._in_pool(
                user_images.plan, self.cfg, self.user.name, self._ident, env, parent_name, parent
            )
            images = user_images.service(self.cfg, self.engine)
            resolved = await asyncio.wrap_future(cls._builds_pool.submit(images.resolve, p, say))
        except user_images.UserImageError as e:
            raise web.HTTPError(500, f"{e}. {PLAIN_HINT}") from None
        self.spawn_progress.emit(60, f"Your image: {resolved.ref}")
        try:  # for `hubstack images users` and prune-users --older-than
            await self._in_pool(user_images.record_use, self.cfg, self.user.name, p.hash)
        except OSError as e:
            self.log.warning("could not record the use of %s: %s", resolved.ref, e)
        return resolved.image

    def _keep_packages(self, env) -> None:
        """The form's list becomes the analyst's spec, the file `hubstack users env` edits."""
        if env.empty:
            user_images.clear_env(self.cfg, self.user.name)
        else:
            user_images.save_env(self.cfg, self.user.name, env)
        self.log.info("%s set their packages: %s", self.user.name, env.describe())

    def _built(self, line: str) -> None:
        """One line of the per-user build as a progress event: step N of M, the package
        pip is at, the parent's layers copied, the push."""
        text = line.split(": ", 1)[1] if line.startswith(f"[{self.user.name}] ") else line
        text = text.strip()
        step = text.startswith("Step ") and text.split(" ", 2)[1]
        if step and "/" in step:
            n, total = step.split("/")
            if n.isdigit() and total.isdigit():
                self._build_pct = 6 + int(50 * int(n) / int(total))
                text = f"Building your image: step {n} of {total}: {text.split(' : ', 1)[-1]}"
        elif text.startswith(("Collecting", "Downloading", "Installing", "Successfully")):
            text = f"Building your image: {text}"
        elif text.startswith("Pushing"):
            self._build_pct = 57
        elif not text.startswith(("Building", "Waiting", "Your", "Pulling", "Copied", "Copying")):
            return  # the engine's other chatter stays in the build log
        self.spawn_progress.emit(self._build_pct, text[:200])

    # --- the start queue (hubstack.hub.start_queue) --------------------------------------
    _start_queue: StartQueue | None = None
    _pulled = ""
    """The image pulled (or found) for this start, so DockerSpawner's own pull_image call
    inside the start slot asks the engine nothing again."""

    def _queue(self) -> StartQueue:
        """The hub's one start queue, sized by hub.spawn (made at the first spawn)."""
        cls = HubstackSpawner
        if cls._start_queue is None:
            cls._start_queue = StartQueue(self.cfg.hub.spawn.starts_at_once)
        return cls._start_queue

    def _tell_place(self, place: int) -> None:
        slots = self._queue().slots
        at_once = "one server starts" if slots == 1 else f"{slots} servers start"
        self.spawn_progress.emit(
            74, f"You are number {place} in the queue: {at_once} at a time on this hub"
        )

    _turn: contextlib.AsyncExitStack | None = None
    """The start slot this spawn holds, from its turn until its server answers."""
    _marks: dict[str, float] = {}

    def _mark(self, what: str) -> None:
        self._marks[what] = asyncio.get_running_loop().time()

    async def _take_turn(self) -> None:
        """Wait in the start queue (told the place), then hold a slot until _end_turn."""
        queue = self._queue()
        queued = queue.starting >= queue.slots or queue.waiting > 0
        self._mark("queued")
        turn = contextlib.AsyncExitStack()
        await turn.enter_async_context(queue.slot(self._tell_place))
        self._turn = turn
        self._mark("turn")
        if queued:
            self.spawn_progress.emit(76, "Your turn: starting your server")

    async def _end_turn(self) -> None:
        turn, self._turn = self._turn, None
        if turn is not None:
            await turn.aclose()

    async def start_object(self):
        # DockerSpawner.start() creates the container, then starts it here. So a queued
        # spawn has its container made while it waits (engine work, not the server's boot),
        # and its turn covers only what loads the CPU: the start and the server's imports.
        if self._turn is None:
            await self._take_turn()
        self._mark("starting")
        await super().start_object()

    async def _start_server(self, profile, gpus):
        # Pull before taking a start slot: a pull waits on the network, not on this host's
        # CPUs, and a long one must not hold up the queue (nor the GPU lock below).
        await self.pull_image(self.image)
        self._marks = {}
        self._mark("begin")
        try:
            if gpus:
                # The GPU lock is held from the reservation until the container exists: the
                # turn comes first, so a spawn waiting in the queue never holds that lock.
                await self._take_turn()
                try:
                    async with gpus.reserve(
                        owner=self.user.name, count=profile.gpus, profile_name=profile.name
                    ) as grant:
                        self._extra_gpu = {
                            "labels": grant.labels,
                            "host_config": grant.host_config,
                        }
                        self._extra_env.update(grant.environment)
                        result = await super().start()
                except gpu.GPUUnavailable as e:
                    raise web.HTTPError(409, str(e)) from None
            else:
                result = await super().start()
            self._mark("started")
            # The slot is held until the server answers: that boot is the CPU-heavy part.
            await self._until_answering(result)
            self._mark("answered")
        finally:
            await self._end_turn()
        self.log.info("%s's start: %s", self.user.name, start_phases(self._marks))
        return result

    async def _until_answering(self, ip_port) -> None:
        """Wait until the new server answers HTTP, as JupyterHub does next. A server that
        does not answer in http_timeout is left to JupyterHub's own wait, which reports it."""
        self.spawn_progress.emit(80, "Container started; waiting for the notebook server to answer")
        ip, port = ip_port
        base_url = self.server.base_url if self.server is not None else self.user.url
        loop = asyncio.get_running_loop()
        deadline = loop.time() + self.http_timeout
        # Not JupyterHub's wait alone: it sleeps up to 5 s between tries, doubling, so a
        # server up after 2 s went unnoticed for about a second more, its slot held idle.
        # Until the port opens, try every answer_poll_interval (a refused connect is cheap).
        while not await port_open(ip, port):
            if loop.time() >= deadline:
                self.log.warning(
                    "%s's server did not answer in %s s", self.user.name, self.http_timeout
                )
                return
            await asyncio.sleep(self.answer_poll_interval)
        try:
            await wait_for_http_server(
                url_path_join(f"http://{ip}:{port}", base_url),
                timeout=max(deadline - loop.time(), 1),
            )
        except TimeoutError:
            self.log.warning(
                "%s's server did not answer in %s s", self.user.name, self.http_timeout
            )

    async def stop(self, now=False):
        await super().stop(now=now)
        await self._in_pool(spark_cluster.stop_cluster, self.engine, self.container_name)
        await self._in_pool(self._leave_network)
        self._spawn_progress = None

"""Per-user images: an analyst's own packages on top of their profile's image.

An analyst's environment spec is a small YAML document beside the users file
(`USERS_DIR/envs/NAME.yaml`: `pip: [...]`, `apt: [...]`), edited with `hubstack users env`.
Every entry is validated before anything is written or built: pip entries with the
`packaging` library's PEP 508 parser, and only a name, extras and version specifiers pass
(no URL, path, option, marker or shell character); apt entries only from the platform's
allowlist. A refusal names each entry and why.

The image is `USERS_ADDRESS/NAMESPACE/user/NAME:HASH`, in the registry instance that holds
per-user images only (registry.users_address, its own storage and account: the hub, which
builds them at spawn time, may push there and nowhere else), built from the template in
images/user FROM the profile's image by digest, pulled from the blessed images' registry.
HASH covers the parent's digest, the template's bytes, the normalised spec and the
analyst's account lines (baked into the image), so the same spec on the same parent is
never built twice: the users registry is asked first (a hit is no build, across hub
restarts and hosts), and a new parent (a new `stable`) gives a new hash. Two analysts with
the same spec share the package layer: the template installs packages before it adds the
account, so the second build takes that layer from the cache and the registry stores it
once.

UserImages runs the lookups and builds of one process: one build per hash however many
spawns ask for it at once (the others wait on it and see its progress), at most
`user_images.max_concurrent_builds` builds at a time, through ImageBuilder (the one build
path) and push_image.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import threading
from collections.abc import Callable
from concurrent.futures import Future
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path

import docker
import requests
import yaml
from packaging.requirements import InvalidRequirement, Requirement
from packaging.utils import canonicalize_name

from hubstack.ci.retention import garbage_collect, images_in_use, prune_repository
from hubstack.config import APT_NAME_RE, PlatformConfig
from hubstack.engine import repo_digest
from hubstack.errors import CommandError
from hubstack.hub.container_spec import passwd_entries
from hubstack.hub.users import validate_name
from hubstack.images.build import ImageBuilder, context_digest, context_tar, push_image
from hubstack.images.graph import ImageContext, ImageGraph
from hubstack.registry import USERS, RegistryClient, auth_config

TEMPLATE_NAME = "user"
"""The template's image name: its lock is /usr/share/hubstack/lock/user/."""
REPOSITORY_PREFIX = "user/"
LABEL_USER = "io.hubstack.user-image.user"
LABEL_PARENT = "io.hubstack.user-image.parent"
LABEL_HASH = "io.hubstack.user-image.hash"
LABEL_SPEC = "io.hubstack.user-image.spec"
MAX_ENTRY_CHARS = 200
MAX_PROBLEMS_SHOWN = 12

# Characters a name, extras and version specifiers need; everything else is refused.
_PIP_CHARS = re.compile(r"^[A-Za-z0-9._\-\[\],<>=!~* ]+$")
_SHELL = set(";|&$`'\"(){}\\#?\n\r\t")


class EnvSpecError(ValueError):
    """A spec the platform refuses; PROBLEMS names each entry and why."""

    def __init__(self, problems: list[str]):
        self.problems = problems
        shown = problems[:MAX_PROBLEMS_SHOWN]
        more = len(problems) - len(shown)
        super().__init__("; ".join(shown) + (f"; and {more} more problem(s)" if more > 0 else ""))


class UserImageError(RuntimeError):
    """A per-user image could not be built or pushed; the message is the build's own."""


@dataclass(frozen=True)
class UserEnv:
    """A validated, normalised spec: canonical names, sorted."""

    pip: tuple[str, ...] = ()
    apt: tuple[str, ...] = ()

    @property
    def empty(self) -> bool:
        return not self.pip and not self.apt

    def data(self) -> dict[str, list[str]]:
        return {"pip": list(self.pip), "apt": list(self.apt)}

    def describe(self) -> str:
        parts = [*self.pip, *(f"apt:{a}" for a in self.apt)]
        return ", ".join(parts) or "(no packages)"


def _show(entry: object) -> str:
    text = repr(entry)
    return text if len(text) <= 60 else text[:57] + "..."


def check_pip_entry(entry: object) -> str:
    """ENTRY as `name[extras]specifiers`, canonical, or ValueError saying why not."""
    if not isinstance(entry, str):
        raise ValueError(f"must be a string, not {type(entry).__name__}")
    if len(entry) > MAX_ENTRY_CHARS:
        raise ValueError(f"is longer than {MAX_ENTRY_CHARS} characters")
    if "\n" in entry or "\r" in entry:
        raise ValueError("contains a newline (one package per entry)")
    if not entry.isascii():
        raise ValueError("contains non-ASCII characters (look-alike letters are refused)")
    if any(not c.isprintable() for c in entry):
        raise ValueError("contains a control character")
    text = entry.strip()
    if not text:
        raise ValueError("is empty")
    if text.startswith("-"):
        raise ValueError(
            "pip options (-e, -r, --index-url, --extra-index-url, ...) are not allowed: "
            "give a package name and version only"
        )
    if "://" in text or "@" in text or text.lower().startswith(("git+", "hg+", "svn+", "bzr+")):
        raise ValueError("URLs and direct references are not allowed: packages come from the index")
    if ";" in text:
        raise ValueError("environment markers and ';' are not allowed")
    if "/" in text or "\\" in text or text.startswith((".", "~")):
        raise ValueError("local paths are not allowed: packages come from the index")
    bad = sorted({c for c in text if c in _SHELL or not _PIP_CHARS.match(c)})
    if bad:
        raise ValueError(
            f"character(s) {' '.join(bad)} not allowed (a name, [extras] and version "
            "specifiers such as ==1.2 or >=1,<2 only)"
        )
    try:
        req = Requirement(text)
    except InvalidRequirement as e:
        raise ValueError(f"is not a PEP 508 requirement: {str(e).splitlines()[0]}") from None
    if req.url or req.marker:  # ruled out above; the parser has the last word
        raise ValueError("URLs and environment markers are not allowed")
    for spec in req.specifier:
        if spec.operator == "===" or not spec.version:
            raise ValueError(
                f"version specifier {str(spec)!r} is not allowed (use ==, >=, <, ~=, !=)"
            )
    extras = f"[{','.join(sorted(canonicalize_name(x) for x in req.extras))}]" if req.extras else ""
    return f"{canonicalize_name(req.name)}{extras}{req.specifier}"


def check_pip_name(entry: str) -> str:
    """The canonical name an entry (valid or not) is about, for replacing an entry."""
    return canonicalize_name(re.split(r"[\[<>=!~ ;@]", entry.strip(), maxsplit=1)[0])


def check_apt_entry(cfg: PlatformConfig, entry: object) -> str:
    if not isinstance(entry, str):
        raise ValueError(f"must be a string, not {type(entry).__name__}")
    if not entry.isascii() or not APT_NAME_RE.match(entry):
        raise ValueError("is not a Debian package name (lowercase letters, digits, + - .)")
    allowed = cfg.user_images.apt_allowlist
    if entry not in allowed:
        offered = ", ".join(allowed) if allowed else "none"
        raise ValueError(
            f"is not in the platform's apt allowlist (user_images.apt_allowlist: {offered})"
        )
    return entry


def parse_env(cfg: PlatformConfig, data: object) -> UserEnv:
    """DATA (the YAML/JSON document) as a UserEnv, or EnvSpecError naming every problem."""
    if data is None:
        return UserEnv()
    if not isinstance(data, dict):
        raise EnvSpecError(
            [f"the spec must be a mapping with pip and apt lists, not {type(data).__name__}"]
        )
    problems: list[str] = []
    unknown = sorted(str(k)[:40] for k in data if k not in ("pip", "apt"))
    if unknown:
        problems.append(f"unknown key(s) {', '.join(map(repr, unknown))}: only pip and apt")
    lists: dict[str, list] = {}
    for key in ("pip", "apt"):
        value = data.get(key) or []
        if not isinstance(value, list):
            problems.append(f"{key}: must be a list of strings, not {type(value).__name__}")
            value = []
        lists[key] = value
    count = len(lists["pip"]) + len(lists["apt"])
    limit = cfg.user_images.max_packages
    if count > limit:
        problems.append(f"{count} packages: at most {limit} (user_images.max_packages)")
    pip: dict[str, str] = {}
    for entry in lists["pip"]:
        try:
            norm = check_pip_entry(entry)
        except ValueError as e:
            problems.append(f"pip entry {_show(entry)}: {e}")
            continue
        name = check_pip_name(norm)
        if name in pip:
            problems.append(f"pip entry {_show(entry)}: {name} is named twice")
        pip[name] = norm
    apt: set[str] = set()
    for entry in lists["apt"]:
        try:
            apt.add(check_apt_entry(cfg, entry))
        except ValueError as e:
            problems.append(f"apt entry {_show(entry)}: {e}")
    if problems:
        raise EnvSpecError(problems)
    return UserEnv(tuple(sorted(pip.values())), tuple(sorted(apt)))


# --- the spawn form's text area (user_images.form) -------------------------------------
FORM_APT_PREFIX = "apt:"
MAX_FORM_CHARS = 20_000


def form_text(env: UserEnv) -> str:
    """ENV as the spawn form shows it: one entry per line, Debian packages as apt:NAME."""
    return "\n".join([*env.pip, *(FORM_APT_PREFIX + a for a in env.apt)])


def parse_form_text(cfg: PlatformConfig, text: str) -> UserEnv:
    """The form's text area (one entry per line; blank lines and surrounding spaces ignored;
    apt:NAME for a Debian package) as a UserEnv, or EnvSpecError naming every problem."""
    if len(text) > MAX_FORM_CHARS:
        raise EnvSpecError([f"the package list is longer than {MAX_FORM_CHARS} characters"])
    data: dict[str, list[str]] = {"pip": [], "apt": []}
    # Only \n (and the \r\n a browser sends) ends a line: other Unicode breaks stay in
    # the entry, which refuses them as non-ASCII.
    for line in text.split("\n"):
        entry = line.removesuffix("\r").strip(" \t")
        if entry.startswith(FORM_APT_PREFIX):
            data["apt"].append(entry[len(FORM_APT_PREFIX) :].strip())
        elif entry:
            data["pip"].append(entry)
    return parse_env(cfg, data)


# --- storage beside the users file -----------------------------------------------------
def env_file(cfg: PlatformConfig, name: str) -> Path:
    return cfg.user_envs_dir / f"{validate_name(name)}.yaml"


def load_env(cfg: PlatformConfig, name: str) -> UserEnv:
    """NAME's validated spec; empty when they have none. A file that no longer passes (the
    allowlist shrank) raises EnvSpecError, which a spawn reports."""
    path = env_file(cfg, name)
    try:
        text = path.read_text()
    except FileNotFoundError:
        return UserEnv()
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as e:
        raise EnvSpecError([f"{path} is not valid YAML: {e}"]) from None
    return parse_env(cfg, data)


def save_env(cfg: PlatformConfig, name: str, env: UserEnv) -> Path:
    """Write NAME's spec atomically (a reader sees the old file or the new, never half)."""
    path = env_file(cfg, name)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.tmp{os.getpid()}")
    tmp.write_text(
        f"# {name}'s packages; edit with `hubstack users env {name}`\n"
        + yaml.safe_dump(env.data(), sort_keys=True)
    )
    os.replace(tmp, path)
    return path


def clear_env(cfg: PlatformConfig, name: str) -> bool:
    try:
        env_file(cfg, name).unlink()
        return True
    except FileNotFoundError:
        return False


def used_marker(cfg: PlatformConfig, user: str, image_hash: str) -> Path:
    """The file whose mtime says when USER's image IMAGE_HASH last started a server."""
    return cfg.user_envs_dir / ".used" / f"{validate_name(user)}.{image_hash}"


def record_use(cfg: PlatformConfig, user: str, image_hash: str) -> None:
    """Mark USER's image as used now (the hub, at each start on it)."""
    marker = used_marker(cfg, user, image_hash)
    marker.parent.mkdir(parents=True, exist_ok=True)
    marker.touch()


def last_used(cfg: PlatformConfig, user: str, image_hash: str) -> datetime | None:
    try:
        mtime = used_marker(cfg, user, image_hash).stat().st_mtime
    except (FileNotFoundError, ValueError):
        return None
    return datetime.fromtimestamp(mtime, UTC)


# --- what is built ---------------------------------------------------------------------
def template_context(cfg: PlatformConfig) -> ImageContext:
    path = cfg.user_image_template
    if not (path / "Dockerfile").is_file():
        raise UserImageError(
            f"the per-user image template {path}/Dockerfile is missing "
            "(user_images.template; the hub image carries it)"
        )
    return ImageContext(name=TEMPLATE_NAME, path=path)


def repository_name(user: str) -> str:
    """user/NAME: the repository of NAME's images under the platform's namespace."""
    return REPOSITORY_PREFIX + validate_name(user)


@dataclass(frozen=True)
class UserImagePlan:
    """Everything one per-user image is made of, and so its hash."""

    user: str
    ident: dict
    env: UserEnv
    parent_name: str
    """The profile's image (notebook, gpu) or spark-executor for a Spark profile."""
    parent: str
    """REPOSITORY@sha256:... of the parent."""
    template_digest: str
    account: tuple[str, str] = ("", "")

    @property
    def hash(self) -> str:
        doc = {
            "parent": self.parent.rsplit("@", 1)[-1],
            "template": self.template_digest,
            "spec": self.env.data(),
            "account": list(self.account),
        }
        return hashlib.sha256(json.dumps(doc, sort_keys=True).encode()).hexdigest()[:32]

    def generated_files(self) -> dict[str, bytes]:
        return {
            "requirements.txt": "".join(f"{p}\n" for p in self.env.pip).encode(),
            "apt.txt": "".join(f"{a}\n" for a in self.env.apt).encode(),
            "passwd.add": self.account[0].encode(),
            "group.add": self.account[1].encode(),
        }


def plan(
    cfg: PlatformConfig, user: str, ident: dict, env: UserEnv, parent_name: str, parent: str
) -> UserImagePlan:
    ctx = template_context(cfg)
    account = passwd_entries(
        user,
        ident["uid"],
        ident["gid"],
        ident.get("groups") or [],
        ident.get("home") or f"/home/{user}",
    )
    return UserImagePlan(
        user=user,
        ident=ident,
        env=env,
        parent_name=parent_name,
        parent=parent,
        template_digest=context_digest(cfg, ctx, cfg.source_root),
        account=account,
    )


Progress = Callable[[str], None]


@dataclass
class _InFlight:
    future: Future = field(default_factory=Future)
    listeners: list[Progress] = field(default_factory=list)
    lock: threading.Lock = field(default_factory=threading.Lock)

    def say(self, line: str) -> None:
        with self.lock:
            listeners = list(self.listeners)
        for listener in listeners:
            try:
                listener(line)
            except Exception:  # a closed spawn page must not break the build
                pass


@dataclass
class Resolved:
    image: str
    """REPOSITORY@sha256:... to run."""
    ref: str
    """REPOSITORY:HASH."""
    built: bool
    """This call ran the build (else: a registry hit, or another spawn's build)."""


class UserImages:
    """Lookups and builds of per-user images in this process (see the module docstring)."""

    def __init__(self, cfg: PlatformConfig, client: docker.DockerClient):
        self.cfg = cfg
        self.client = client
        self._lock = threading.Lock()
        self._inflight: dict[str, _InFlight] = {}
        self._slots = threading.BoundedSemaphore(cfg.user_images.max_concurrent_builds)
        self.builds_run = 0
        """Builds this process ran (the tests and the benchmark read it)."""
        self.nocache = False
        """Build every step again (the benchmark's fresh build)."""

    def ref(self, p: UserImagePlan) -> str:
        return f"{self.cfg.user_image_repository(repository_name(p.user))}:{p.hash}"

    def lookup(self, p: UserImagePlan) -> str | None:
        """REPOSITORY@DIGEST when this engine pushed the image under its tag (the host that
        built it: a local call, no registry round trip) or the registry has it (asked
        through the engine, as every pull is); None when neither has."""
        ref = self.ref(p)
        repo = ref.rsplit(":", 1)[0]
        try:  # content-addressed: the tag names these bits wherever they are
            local = repo_digest(self.client.api.inspect_image(ref), repo)
        except docker.errors.ImageNotFound:
            local = None
        if local:
            return local
        try:
            info = self.client.api.inspect_distribution(
                ref, auth_config=auth_config(self.cfg, USERS)
            )
        except docker.errors.APIError as e:
            text = str(e.explanation or e).lower()
            if any(w in text for w in ("not found", "unknown", "no such", "does not exist")):
                return None
            raise UserImageError(
                f"the registry {self.cfg.registry.users_address} did not answer for {ref}: "
                f"{e.explanation or e}"
            ) from None
        return f"{repo}@{info['Descriptor']['digest']}"

    def resolve(self, p: UserImagePlan, progress: Progress | None = None) -> Resolved:
        """The image for P: from the registry, from a build another caller runs, or built
        and pushed here. Raises UserImageError with the build's own message."""
        key = self.ref(p)
        with self._lock:
            flight = self._inflight.get(key)
            leader = flight is None
            if flight is None:
                flight = self._inflight[key] = _InFlight()
            if progress:
                with flight.lock:
                    flight.listeners.append(progress)
        if not leader:
            flight.say("Waiting for the build of the same packages another start runs")
            resolved = flight.future.result()
            return Resolved(resolved.image, resolved.ref, built=False)
        try:
            resolved = self._lookup_or_build(p, flight.say)
            flight.future.set_result(resolved)
            return resolved
        except BaseException as e:
            flight.future.set_exception(e)
            raise
        finally:
            with self._lock:
                self._inflight.pop(key, None)

    def _lookup_or_build(self, p: UserImagePlan, say: Progress) -> Resolved:
        ref = self.ref(p)
        found = self.lookup(p)
        if found:
            say(f"Your packages are ready: {ref}")
            return Resolved(found, ref, built=False)
        if not self._slots.acquire(blocking=False):
            say("Waiting for a build slot (user_images.max_concurrent_builds)")
            self._slots.acquire()
        try:
            found = self.lookup(p)  # built elsewhere while we waited
            if found:
                return Resolved(found, ref, built=False)
            self._ensure_parent(p, say)
            return Resolved(self._build_and_push(p, say), ref, built=True)
        finally:
            self._slots.release()

    def _ensure_parent(self, p: UserImagePlan, say: Progress) -> None:
        try:
            self.client.api.inspect_image(p.parent)
            return
        except docker.errors.ImageNotFound:
            pass
        say(f"Pulling {p.parent_name} to build on")
        for ev in self.client.api.pull(
            p.parent, stream=True, decode=True, auth_config=auth_config(self.cfg)
        ):
            if "error" in ev:
                raise UserImageError(f"pulling {p.parent} failed: {ev['error']}")

    def _build_and_push(self, p: UserImagePlan, say: Progress) -> str:
        ctx = template_context(self.cfg)
        ref = self.ref(p)
        say(f"Building your packages ({p.env.describe()}) on {p.parent_name}")
        builder = ImageBuilder(
            self.cfg,
            self.client,
            graph=ImageGraph({}),
            progress=say,
            verbose=True,
            nocache=self.nocache,
        )
        args = {
            "PARENT": p.parent,
            "PARENT_LOCK": p.parent_name,
            "HUBSTACK_UID": str(p.ident["uid"]),
            "HUBSTACK_GID": str(p.ident["gid"]),
        }
        labels = {
            "org.opencontainers.image.title": f"hubstack user image for {p.user}",
            "io.hubstack.image": TEMPLATE_NAME,
            "io.hubstack.context-digest": p.template_digest,
            LABEL_USER: p.user,
            LABEL_PARENT: p.parent,
            LABEL_HASH: p.hash,
            LABEL_SPEC: json.dumps(p.env.data(), sort_keys=True),
        }
        self.builds_run += 1
        result = builder.build_context(
            ctx,
            ref,
            args,
            labels,
            position=p.user,
            fileobj=context_tar(self.cfg, ctx, self.cfg.source_root, generated=p.generated_files()),
        )
        if not result.ok:
            raise UserImageError(build_failure(result.log, result.error))
        self._seed_layers(p, say)
        say("Pushing your image to the registry")
        try:
            digest = push_image(
                self.cfg,
                self.client,
                repository_name(p.user),
                p.hash,
                progress=say,
                role=USERS,
            )
        except CommandError as e:
            raise UserImageError(str(e)) from None
        return f"{self.cfg.user_image_repository(repository_name(p.user))}@{digest}"

    def _seed_layers(self, p: UserImagePlan, say: Progress) -> None:
        """Give the analyst's repository the parent's layers before the engine pushes, from
        another analyst's repository or else from the blessed images' registry as stored: the
        engine then finds them there and gzips and uploads only the packages' layers. Only
        a shortcut: when it fails the push does the whole work, as it would without it."""
        target = repository_name(p.user)
        users = RegistryClient(self.cfg, role=USERS)
        try:
            # The users instance holds per-user repositories only, and an analyst's own is
            # at most one of the first two: a mount candidate needs no full listing.
            own, prefix = users.repository(target), users.repository(REPOSITORY_PREFIX)
            others = [r for r in users.catalog(limit=2) if r != own and r.startswith(prefix)]
            copied, size = users.copy_layers(
                RegistryClient(self.cfg),
                p.parent_name,
                p.parent.rsplit("@", 1)[-1],
                target,
                mount_from=others[0] if others else None,
            )
        except (CommandError, requests.RequestException, KeyError, ValueError) as e:
            say(f"Copying {p.parent_name}'s layers first did not work ({e}); pushing them all")
            return
        if copied:
            say(f"Copied {copied} layers of {p.parent_name} ({size / 1e9:.2f} GB) to the registry")


def build_failure(log: list[str], error: str | None) -> str:
    """The lines of a failed build that say why: pip's and apt's own errors, else the tail."""
    own = [
        line.strip()
        for line in log
        if line.strip().startswith(("ERROR:", "E: ", "error:")) and "non-zero code" not in line
    ]
    cause = "; ".join(dict.fromkeys(own)) or "\n".join(log[-8:]) or (error or "unknown error")
    return f"the build of your packages failed: {cause}"


_services: dict[int, UserImages] = {}
_services_lock = threading.Lock()


def service(cfg: PlatformConfig, client: docker.DockerClient) -> UserImages:
    """The process's UserImages for this config (one per hub: one build per hash)."""
    with _services_lock:
        key = id(cfg)
        if key not in _services:
            _services[key] = UserImages(cfg, client)
        return _services[key]


# --- housekeeping: `hubstack images users` / `prune-users` ------------------------------
@dataclass
class UserImageRecord:
    user: str
    tag: str
    digest: str
    size: int
    built: datetime | None
    in_use: bool
    newest: bool = False
    """The analyst's most recently built image (what their next start most likely hits)."""
    used: datetime | None = None
    """When a server last started on it (None: never, or before the hub recorded it)."""

    @property
    def last_activity(self) -> datetime | None:
        """Built or last used, whichever is later: what --older-than measures from."""
        known = [t for t in (self.built, self.used) if t is not None]
        return max(known) if known else None


def list_user_images(
    cfg: PlatformConfig, client: docker.DockerClient, registry: RegistryClient | None = None
) -> list[UserImageRecord]:
    """Every per-user image in the users instance, with whether a container uses it."""
    registry = registry or RegistryClient(cfg, role=USERS)
    prefix = cfg.repository_path(REPOSITORY_PREFIX)
    in_use = images_in_use(client)
    out: list[UserImageRecord] = []
    for repo in registry.catalog():
        if not repo.startswith(prefix):
            continue
        name = repo[len(cfg.images.namespace) + 1 :]
        records = []
        for tag, digest in registry.tag_digests(name).items():
            config = registry.image_config(name, tag)
            created = config.get("created")
            built = (
                datetime.fromisoformat(created.replace("Z", "+00:00")[:26] + "+00:00")
                if created
                else None
            )
            records.append(
                UserImageRecord(
                    user=name.removeprefix(REPOSITORY_PREFIX),
                    tag=tag,
                    digest=digest,
                    size=registry.image_size(name, digest),
                    built=built,
                    in_use=f"{cfg.user_image_repository(name)}@{digest}" in in_use,
                    used=last_used(cfg, name.removeprefix(REPOSITORY_PREFIX), tag),
                )
            )
        if records:
            max(records, key=lambda r: r.built or datetime.min.replace(tzinfo=UTC)).newest = True
        out += records
    return sorted(out, key=lambda r: (r.user, r.tag))


def prune_user_images(
    cfg: PlatformConfig,
    client: docker.DockerClient,
    older_than_days: float | None = None,
    dry_run: bool = False,
    progress: Callable[[str], None] = print,
) -> list[UserImageRecord]:
    """Delete per-user images no container uses: without OLDER_THAN_DAYS those that are not
    their analyst's newest; with it, every one neither built nor used for that long (an
    analyst whose image went is rebuilt at their next start). Through prune_repository, the
    one prune path, then the users instance's garbage collection. Returns what was removed."""
    registry = RegistryClient(cfg, role=USERS)
    records = list_user_images(cfg, client, registry)
    now = datetime.now(UTC)

    def doomed(r: UserImageRecord) -> bool:
        if older_than_days is None:
            return not r.newest
        since = r.last_activity
        return since is None or (now - since).total_seconds() > older_than_days * 86400

    in_use = images_in_use(client)
    removed: list[UserImageRecord] = []
    for user in sorted({r.user for r in records}):
        mine = {r.tag: r for r in records if r.user == user}
        keep = {tag for tag, r in mine.items() if not doomed(r)}
        outcome = prune_repository(
            registry,
            repository_name(user),
            keep=lambda tag, keep=keep: tag in keep,  # type: ignore[misc]
            in_use=in_use,
            dry_run=dry_run,
            prunable=lambda tag, mine=mine: tag in mine,  # type: ignore[misc]
        )
        for line in outcome.lines():
            progress(line)
        for tags in outcome.removed.values():
            removed += [mine[t] for t in tags]
    if removed and not dry_run:
        progress(garbage_collect(cfg, client, USERS))
    return removed

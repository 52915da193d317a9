"""Hub users: the embedded users file and the pluggable source of identities.

The users file (YAML, mode 0600) is the default source of who may log in and
which POSIX identity (UID, GID, supplementary groups, home) each analyst gets::

    users:
      alice: {uid: 1001, gid: 1001, groups: [2000], admin: false, password: "scrypt$..."}

Every change validates the whole new state before anything is written, then
replaces the file atomically under an fcntl lock, so a refused change or a
crash never leaves a half-written file. The hub reads the file at each login,
so changes apply without a restart.

`UserSource` is the seam for other identity sources (LDAP, OIDC later): the
authenticator and the spawner only call ``get(name)`` and ``verify(name, pw)``.
"""

from __future__ import annotations

import base64
import contextlib
import fcntl
import hashlib
import hmac
import logging
import os
import secrets
import tempfile
from collections.abc import Iterator
from dataclasses import dataclass, field, replace
from pathlib import Path

import yaml

from hubstack.config import NAME_RE

log = logging.getLogger(__name__)


# Names that belong to the system or to images; an analyst must never map onto them.
RESERVED_NAMES = frozenset(
    {
        "root",
        "daemon",
        "bin",
        "sys",
        "sync",
        "games",
        "man",
        "lp",
        "mail",
        "news",
        "uucp",
        "proxy",
        "www-data",
        "backup",
        "list",
        "irc",
        "gnats",
        "nobody",
        "nogroup",
        "systemd-network",
        "systemd-resolve",
        "systemd-timesync",
        "messagebus",
        "sshd",
        "_apt",
        "admin-sys",
        "jovyan",
        "operator",
        "adm",
        "wheel",
        "staff",
        "users",
        "shadow",
        "sudo",
        "docker",
        "hubstack",
    }
)

# scrypt cost: ~16 MiB memory per hash, tens of ms; stdlib, no extra dependency.
SCRYPT_N, SCRYPT_R, SCRYPT_P = 2**14, 8, 1
SCRYPT_SALT_BYTES = 16
SCRYPT_DKLEN = 32


class UsersFileError(ValueError):
    """The users file or a requested change is invalid; the message names file, user and problem."""


class PasswordHashError(ValueError):
    """A stored password hash cannot be parsed."""


# ---------------------------------------------------------------- passwords


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def hash_password(password: str) -> str:
    """Hash a password as ``scrypt$n$r$p$salt_b64$hash_b64``."""
    if not isinstance(password, str) or not password:
        raise ValueError("password must not be empty")
    salt = secrets.token_bytes(SCRYPT_SALT_BYTES)
    digest = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=SCRYPT_N,
        r=SCRYPT_R,
        p=SCRYPT_P,
        dklen=SCRYPT_DKLEN,
    )
    return f"scrypt${SCRYPT_N}${SCRYPT_R}${SCRYPT_P}${_b64(salt)}${_b64(digest)}"


def _parse_hash(stored: str) -> tuple[int, int, int, bytes, bytes]:
    if not isinstance(stored, str):
        raise PasswordHashError("password hash must be a string")
    parts = stored.split("$")
    if len(parts) != 6 or parts[0] != "scrypt":
        raise PasswordHashError("password hash is not in the form scrypt$n$r$p$salt$hash")
    try:
        n, r, p = (int(x) for x in parts[1:4])
        salt = base64.b64decode(parts[4], validate=True)
        digest = base64.b64decode(parts[5], validate=True)
    except ValueError:
        raise PasswordHashError("password hash has a non-numeric cost or invalid base64") from None
    # Bound the cost so a tampered file can't make a login eat all memory.
    if n < 2 or n & (n - 1) or n > 2**20 or not (1 <= r <= 32) or not (1 <= p <= 16):
        raise PasswordHashError(
            f"password hash has unsupported scrypt parameters n={n} r={r} p={p}"
        )
    if len(salt) < 8 or len(digest) < 16:
        raise PasswordHashError("password hash has a too short salt or digest")
    return n, r, p, salt, digest


def check_hash(stored: str) -> None:
    """Raise PasswordHashError when ``stored`` is not a usable hash."""
    _parse_hash(stored)


def verify_password(password: str, stored: str) -> bool:
    """True when ``password`` matches ``stored``; raises PasswordHashError for a broken hash."""
    n, r, p, salt, digest = _parse_hash(stored)
    candidate = hashlib.scrypt(
        password.encode("utf-8"),
        salt=salt,
        n=n,
        r=r,
        p=p,
        dklen=len(digest),
        maxmem=256 * 1024 * 1024,
    )
    return hmac.compare_digest(candidate, digest)


# ---------------------------------------------------------------- records


@dataclass(frozen=True)
class UserRecord:
    """One analyst: POSIX identity plus hub admin flag and password hash.

    ``source`` says where the account comes from (``file``: the users file; ``ldap``,
    ``oidc``: a directory, whose accounts also carry their groups' names, which become
    JupyterHub groups, and may carry a home path of their own)."""

    name: str
    uid: int
    gid: int
    groups: tuple[int, ...] = ()
    admin: bool = False
    password_hash: str = field(default="", repr=False)
    source: str = "file"
    group_names: tuple[str, ...] = ()
    home_directory: str | None = None

    @property
    def home(self) -> str:
        """The home path inside the server: the directory's, when it gives one."""
        return self.home_directory or f"/home/{self.name}"

    def to_yaml(self) -> dict:
        return {
            "uid": self.uid,
            "gid": self.gid,
            "groups": list(self.groups),
            "admin": self.admin,
            "password": self.password_hash,
        }


def validate_name(name: object) -> str:
    """Return ``name`` if it is a valid, non-reserved POSIX user name, else raise ValueError."""
    if not isinstance(name, str) or not NAME_RE.match(name):
        raise ValueError(
            f"invalid user name {name!r}: use 1-32 characters, lowercase letters, digits, "
            "'_' or '-', starting with a letter or '_'"
        )
    if name in RESERVED_NAMES:
        raise ValueError(f"user name {name!r} is reserved for the system")
    return name


MAX_ID = 4294967294
"""The largest UID/GID Linux gives an account: 4294967295 is (uid_t)-1, "no ID" to the kernel."""
NOBODY_ID = 65534
"""nobody/nogroup: what NFS squashes unknown owners to; files owned by it belong to no one."""


class IdError(ValueError):
    """An invalid UID, GID or group; KEY names the field (uid, gid, groups)."""

    def __init__(self, key: str, problem: str):
        super().__init__(f"{key}: {problem}")
        self.key = key
        self.problem = problem


def check_id(value: object, key: str, min_id: int, allow_nobody: bool = False) -> int:
    """VALUE as an account ID in [min_id, MAX_ID], not nobody's unless allowed; else IdError."""
    # bool is an int subclass; `uid: true` is a typo, not UID 1.
    if isinstance(value, bool) or not isinstance(value, int):
        raise IdError(key, f"must be an integer, not {value!r}")
    if value == 0:
        raise IdError(key, "0 (root) is not allowed")
    if value < min_id:
        raise IdError(key, f"{value} is below the minimum {min_id} (hub.min_uid)")
    if value > MAX_ID:
        raise IdError(
            key,
            f"{value} is above {MAX_ID}, the largest ID Linux gives an account "
            "(4294967295 is (uid_t)-1, 'no ID')",
        )
    if value == NOBODY_ID and not allow_nobody:
        raise IdError(
            key,
            f"{NOBODY_ID} is nobody/nogroup, whose files belong to no one "
            "(set hub.allow_nobody_id: true to allow it)",
        )
    return value


def validate_ids(
    uid: object, gid: object, groups: object, min_uid: int, allow_nobody: bool = False
) -> tuple[int, int, tuple[int, ...]]:
    """The checked (uid, gid, groups), or IdError naming the field and the bound it breaks."""
    uid = check_id(uid, "uid", min_uid, allow_nobody)
    gid = check_id(gid, "gid", min_uid, allow_nobody)
    if groups is None:
        groups = []
    if not isinstance(groups, (list, tuple)):
        raise IdError("groups", f"must be a list of GIDs, not {groups!r}")
    out = []
    for g in groups:
        g = check_id(g, "groups", min_uid, allow_nobody)
        if g not in out:
            out.append(g)
    return uid, gid, tuple(out)


def _problem(where: str, name: object, e: ValueError) -> UsersFileError:
    """`FILE: users.NAME[.KEY]: problem`, the shape of every users-file error."""
    if isinstance(e, IdError):
        return UsersFileError(f"{where}: users.{name}.{e.key}: {e.problem}")
    return UsersFileError(f"{where}: users.{name}: {e}")


def validate_users(
    records: dict[str, UserRecord], min_uid: int, where: str, allow_nobody: bool = False
) -> None:
    """Validate a whole set of records; raise UsersFileError naming the first problem."""
    seen_uids: dict[int, str] = {}
    for name, rec in records.items():
        try:
            validate_name(name)
            validate_ids(rec.uid, rec.gid, rec.groups, min_uid, allow_nobody)
        except ValueError as e:
            raise _problem(where, name, e) from None
        if rec.uid in seen_uids:
            raise UsersFileError(
                f"{where}: users.{name}.uid: {rec.uid} is already used by user "
                f"{seen_uids[rec.uid]!r}"
            )
        seen_uids[rec.uid] = name


# ---------------------------------------------------------------- the file


# Parsed users files by (path, min_uid, allow_nobody), with the (inode, size, mtime) they
# were parsed at: the hub looks users up at every login, spawn and session refresh (a new
# UsersFile each time), and parsing the YAML costs milliseconds per analyst in the file;
# a stat tells whether it changed (mutations replace the file: a new inode).
_PARSED: dict[tuple[str, int, bool], tuple[tuple[int, int, int], dict[str, UserRecord]]] = {}


class UsersFile:
    """The YAML users file at ``path``; load() validates, mutations write atomically."""

    def __init__(self, path: str | os.PathLike, min_uid: int = 1000, allow_nobody: bool = False):
        self.path = Path(path)
        self.min_uid = int(min_uid)
        self.allow_nobody = bool(allow_nobody)

    def __repr__(self) -> str:
        return f"UsersFile({str(self.path)!r}, min_uid={self.min_uid})"

    # -- reading

    def load(self) -> dict[str, UserRecord]:
        """All users by name. A missing file means no users. Broken hashes are only
        reported by `broken_hashes()` / at login, so one bad entry can't lock out everyone."""
        try:
            st = self.path.stat()
            stamp = (st.st_ino, st.st_size, st.st_mtime_ns)
            key = (str(self.path), self.min_uid, self.allow_nobody)
            parsed = _PARSED.get(key)
            if parsed is not None and parsed[0] == stamp:
                return dict(parsed[1])
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise UsersFileError(f"{self.path}: cannot read users file: {e.strerror}") from None
        users = self._parse(text)
        _PARSED[key] = (stamp, users)
        return dict(users)

    def _parse(self, text: str) -> dict[str, UserRecord]:
        where = str(self.path)
        try:
            data = yaml.safe_load(text)
        except yaml.YAMLError as e:
            raise UsersFileError(f"{where}: not valid YAML: {e}") from None
        if data is None:
            return {}
        if not isinstance(data, dict) or set(data) - {"users"}:
            raise UsersFileError(f"{where}: expected a mapping with one key 'users'")
        users = data.get("users") or {}
        if not isinstance(users, dict):
            raise UsersFileError(f"{where}: 'users' must be a mapping of name to settings")
        records: dict[str, UserRecord] = {}
        for name, entry in users.items():
            try:
                validate_name(name)
                if not isinstance(entry, dict):
                    raise ValueError(
                        "settings must be a mapping (uid, gid, groups, admin, password)"
                    )
                unknown = set(entry) - {"uid", "gid", "groups", "admin", "password"}
                if unknown:
                    raise ValueError(f"unknown keys: {', '.join(sorted(map(str, unknown)))}")
                for key in ("uid", "gid", "password"):
                    if key not in entry:
                        raise ValueError(f"missing '{key}'")
                uid, gid, groups = validate_ids(
                    entry["uid"], entry["gid"], entry.get("groups"), self.min_uid, self.allow_nobody
                )
                admin = entry.get("admin", False)
                if not isinstance(admin, bool):
                    raise ValueError(f"admin must be true or false, not {admin!r}")
                password = entry["password"]
                if not isinstance(password, str):
                    raise ValueError("password must be a hash string")
            except ValueError as e:
                raise _problem(where, name, e) from None
            records[name] = UserRecord(name, uid, gid, groups, admin, password)
        validate_users(records, self.min_uid, where, self.allow_nobody)
        return records

    def get(self, name: str) -> UserRecord | None:
        return self.load().get(name)

    def broken_hashes(self) -> dict[str, str]:
        """Users whose stored hash is unusable, with the reason (for `users list`)."""
        out = {}
        for name, rec in self.load().items():
            try:
                check_hash(rec.password_hash)
            except PasswordHashError as e:
                out[name] = str(e)
        return out

    # -- writing

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, UserRecord]]:
        """Hold an exclusive lock (a sibling .lock file, since the data file is replaced)
        while reading the current state, so concurrent `users` commands can't lose updates."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        lock_path = self.path.with_name(self.path.name + ".lock")
        fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load()
        finally:
            os.close(fd)

    def _write(self, records: dict[str, UserRecord]) -> None:
        # Other users' broken hashes are kept as they are (only they are locked out).
        validate_users(records, self.min_uid, str(self.path), self.allow_nobody)
        data = {"users": {name: records[name].to_yaml() for name in sorted(records)}}
        text = yaml.safe_dump(data, sort_keys=False, default_flow_style=False)
        fd, tmp = tempfile.mkstemp(prefix=f".{self.path.name}.", dir=self.path.parent)
        try:
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as f:
                f.write(text)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, self.path)
        except BaseException:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(tmp)
            raise
        # Make the rename itself durable.
        with contextlib.suppress(OSError):
            dfd = os.open(self.path.parent, os.O_RDONLY)
            try:
                os.fsync(dfd)
            finally:
                os.close(dfd)

    def add(
        self,
        name: str,
        uid: int,
        gid: int,
        groups=(),
        admin: bool = False,
        password: str | None = None,
        password_hash: str | None = None,
    ) -> UserRecord:
        """Add a user; refuses an existing name, invalid ids or a duplicate UID."""
        where = str(self.path)
        try:
            validate_name(name)
            uid, gid, groups = validate_ids(uid, gid, list(groups), self.min_uid, self.allow_nobody)
        except ValueError as e:
            raise _problem(where, name, e) from None
        if password_hash is None:
            if not password:
                raise UsersFileError(f"{where}: users.{name}.password: must not be empty")
            password_hash = hash_password(password)
        try:
            check_hash(password_hash)
        except PasswordHashError as e:
            raise UsersFileError(f"{where}: users.{name}.password: {e}") from None
        with self._locked() as records:
            if name in records:
                raise UsersFileError(f"{where}: user {name!r} already exists")
            rec = UserRecord(name, uid, gid, groups, bool(admin), password_hash)
            self._write({**records, name: rec})
        return rec

    def remove(self, name: str) -> None:
        with self._locked() as records:
            if name not in records:
                raise UsersFileError(f"{self.path}: no user {name!r}")
            rest = dict(records)
            del rest[name]
            self._write(rest)

    def set_password(self, name: str, password: str) -> None:
        if not password:
            raise UsersFileError(f"{self.path}: users.{name}.password: must not be empty")
        new_hash = hash_password(password)
        with self._locked() as records:
            if name not in records:
                raise UsersFileError(f"{self.path}: no user {name!r}")
            self._write({**records, name: replace(records[name], password_hash=new_hash)})


# ---------------------------------------------------------------- sources


class UserSource:
    """Where identities come from. Subclass for LDAP/OIDC; the hub only needs these two."""

    def get(self, name: str) -> UserRecord | None:
        """The user's record, or None if unknown."""
        raise NotImplementedError

    def verify(self, name: str, password: str) -> UserRecord | None:
        """The user's record if ``password`` is right, else None."""
        raise NotImplementedError


class FileUserSource(UserSource):
    """Users from a `UsersFile`, re-read at every call so edits apply without a restart."""

    def __init__(self, users_file: UsersFile):
        self.users_file = users_file

    def get(self, name: str) -> UserRecord | None:
        return self.users_file.get(name)

    def verify(self, name: str, password: str) -> UserRecord | None:
        rec = self.get(name)
        if rec is None or not password:
            return None
        try:
            ok = verify_password(password, rec.password_hash)
        except PasswordHashError as e:
            # Only this user is locked out; the fix is `hubstack users passwd NAME`.
            log.error(
                "%s: user %r cannot log in: %s (reset it with `hubstack users passwd %s`)",
                self.users_file.path,
                name,
                e,
                name,
            )
            return None
        return rec if ok else None


def users_file_for(cfg) -> UsersFile:
    """The users file of a platform config."""
    return UsersFile(cfg.users_file, cfg.hub.min_uid, cfg.hub.allow_nobody_id)


def lookup_user(cfg, name: str) -> UserRecord | None:
    """The record for ``name`` (uid, gid, groups, home), or None; for the spawner."""
    return FileUserSource(users_file_for(cfg)).get(name)

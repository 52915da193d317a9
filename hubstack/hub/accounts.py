"""Accounts that came from a directory (LDAP, OIDC): the hub's table of who logged in.

The hub writes each directory account's identity here at every successful login
(``USERS_DIR/accounts/accounts.yaml``, mode 0600, replaced atomically under a lock)::

    accounts:
      carol: {source: ldap, uid: 30001, gid: 30001, groups: [31000],
              group_names: [analysts], home: /home/carol, last_login: '2026-12-05T04:30:00+00:00'}

It is a cache, never an authority: logins always ask the directory. It serves what must not
wait on the directory, or cannot reach it: `hubstack users list` (the SOURCE column), and
the spawner's identity for an account whose login state is gone. JupyterHub's own copy,
the encrypted auth_state in its database, stays what a spawn reads first.
"""

from __future__ import annotations

import contextlib
import fcntl
import logging
import os
import threading
from collections.abc import Iterator
from pathlib import Path

import yaml

from hubstack.clock import timestamp
from hubstack.hub.users import UserRecord, lookup_user, validate_ids, validate_name
from hubstack.secretfiles import write_private

log = logging.getLogger(__name__)

ACCOUNT_KEYS = {"source", "uid", "gid", "groups", "group_names", "home", "last_login"}


class AccountsTableError(ValueError):
    """The table cannot be read; the message names the file and the problem."""


class AccountsTable:
    """The directory accounts' table at ``path``."""

    _thread_lock = threading.Lock()  # the hub records logins from several threads at once

    def __init__(self, path: str | os.PathLike, min_uid: int = 1000, allow_nobody: bool = False):
        self.path = Path(path)
        self.min_uid = int(min_uid)
        self.allow_nobody = bool(allow_nobody)

    def load(self) -> dict[str, tuple[UserRecord, str]]:
        """Every account: name -> (record, last login). A missing table is an empty one; an
        entry that no longer passes the ID rules (hub.min_uid raised) is left out, logged."""
        try:
            text = self.path.read_text(encoding="utf-8")
        except FileNotFoundError:
            return {}
        except OSError as e:
            raise AccountsTableError(f"{self.path}: cannot read: {e.strerror}") from None
        try:
            data = yaml.safe_load(text) or {}
        except yaml.YAMLError as e:
            raise AccountsTableError(f"{self.path}: not valid YAML: {e}") from None
        accounts = data.get("accounts") if isinstance(data, dict) else None
        if not isinstance(accounts, dict):
            raise AccountsTableError(f"{self.path}: expected a mapping with one key 'accounts'")
        out = {}
        for name, entry in accounts.items():
            try:
                out[name] = self._record(name, entry)
            except ValueError as e:
                log.error("%s: accounts.%s: %s (left out)", self.path, name, e)
        return out

    def _record(self, name: object, entry: object) -> tuple[UserRecord, str]:
        validate_name(name)
        assert isinstance(name, str)
        if not isinstance(entry, dict) or set(entry) - ACCOUNT_KEYS:
            raise ValueError(f"must be a mapping of {', '.join(sorted(ACCOUNT_KEYS))}")
        uid, gid, groups = validate_ids(
            entry.get("uid"), entry.get("gid"), entry.get("groups"), self.min_uid, self.allow_nobody
        )
        names = entry.get("group_names") or []
        if not isinstance(names, list) or not all(isinstance(g, str) for g in names):
            raise ValueError("group_names must be a list of names")
        home = entry.get("home")
        if home is not None and not isinstance(home, str):
            raise ValueError("home must be a path")
        rec = UserRecord(
            name,
            uid,
            gid,
            groups,
            source=str(entry.get("source") or "ldap"),
            group_names=tuple(names),
            home_directory=home if home and home != f"/home/{name}" else None,
        )
        return rec, str(entry.get("last_login") or "")

    def get(self, name: str) -> UserRecord | None:
        found = self.load().get(name)
        return found[0] if found else None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[None]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        lock_path = self.path.with_name(self.path.name + ".lock")
        with self._thread_lock:
            fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
            try:
                fcntl.flock(fd, fcntl.LOCK_EX)
                yield
            finally:
                os.close(fd)

    def record(self, rec: UserRecord) -> None:
        """Add or replace REC's entry, stamped with the time of this login."""
        with self._locked():
            try:
                current = self.load()
            except AccountsTableError as e:
                log.error("%s; starting a new table", e)
                current = {}
            current[rec.name] = (rec, timestamp())
            accounts = {
                name: {
                    "source": r.source,
                    "uid": r.uid,
                    "gid": r.gid,
                    "groups": list(r.groups),
                    "group_names": list(r.group_names),
                    "home": r.home,
                    "last_login": seen,
                }
                for name, (r, seen) in sorted(current.items())
            }
            write_private(self.path, yaml.safe_dump({"accounts": accounts}, sort_keys=False))


def accounts_table_for(cfg) -> AccountsTable:
    """The platform's table of directory accounts (beside the users file)."""
    return AccountsTable(cfg.accounts_file, cfg.hub.min_uid, cfg.hub.allow_nobody_id)


def lookup_account(cfg, name: str) -> UserRecord | None:
    """NAME's record from the sources auth.sources lists, without asking a directory: the
    users file, then the table of directory accounts (what their last login recorded)."""
    sources = cfg.auth.sources
    if "file" in sources:
        rec = lookup_user(cfg, name)
        if rec is not None:
            return rec
    if any(s != "file" for s in sources):
        rec = accounts_table_for(cfg).get(name)
        if rec is not None and rec.source in sources:
            return rec
    return None

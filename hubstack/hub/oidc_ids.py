"""The UID/GID each OpenID Connect person runs as (auth.oidc; hubstack.hub.oidc logs them in).

From the provider's claims when it sends them, else allocated once from auth.oidc.uid_range
and kept in `IdTable` (USERS_DIR/oidc/ids.yaml) by the provider's `sub`, so the same person
gets the same UID whatever their display name. A UID another account holds (the users
file's, an LDAP account's as the accounts table recorded it) is never given or accepted.
No JupyterHub here: `hubstack users add` reads the table too.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
from collections.abc import Iterator
from dataclasses import asdict, dataclass
from pathlib import Path

import yaml

from hubstack.config import PlatformConfig
from hubstack.hub.users import NOBODY_ID, check_id
from hubstack.secretfiles import write_private


class IdentityError(ValueError):
    """A person who cannot be given a UID/GID; the message says why and what fixes it."""


@dataclass(frozen=True)
class OIDCIdentity:
    """One person of the provider as the hub runs them."""

    sub: str
    name: str
    uid: int
    gid: int
    allocated: bool
    """True: uid came from auth.oidc.uid_range; False: from the provider's uid claim."""


@dataclass(frozen=True)
class IdPolicy:
    """How UIDs and GIDs are chosen (auth.oidc and hub.min_uid/allow_nobody_id)."""

    uid_range: tuple[int, int]
    gid_policy: str | int = "uid"
    min_uid: int = 1000
    allow_nobody: bool = False


def _claimed_id(value: object, key: str, policy: IdPolicy) -> int | None:
    """A UID/GID claim as an int under the users file's rules; None when absent."""
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.strip().isdigit():
        value = int(value)  # providers often send numbers as strings
    try:
        return check_id(value, key, policy.min_uid, policy.allow_nobody)
    except ValueError as e:
        raise IdentityError(f"the provider's {e}") from None


def resolve(
    people: dict[str, OIDCIdentity],
    sub: str,
    name: str,
    claimed_uid: object,
    claimed_gid: object,
    policy: IdPolicy,
    taken: dict[int, str],
) -> OIDCIdentity:
    """The identity of person SUB (logging in as NAME) given the table PEOPLE and the UIDs
    other sources hold (TAKEN: uid -> who); pure, so the caller holds the lock and writes."""
    others = {p.uid: p for s, p in people.items() if s != sub}
    for s, p in people.items():
        if s != sub and p.name == name:
            raise IdentityError(
                f"the name {name!r} belongs to another person of the provider (sub {s!r}); "
                "ask the platform team"
            )
    uid = _claimed_id(claimed_uid, "uid", policy)
    allocated = False
    if uid is None:
        # Kept from the first login, claimed or allocated: the same person, the same UID.
        known = people.get(sub)
        if known:
            uid, allocated = known.uid, known.allocated
        else:
            uid, allocated = _allocate(people, policy, taken), True
    if uid in taken:
        raise IdentityError(
            f"UID {uid} of {name!r} is already {taken[uid]}'s: one UID must be one person. "
            "The platform team gives one of them another UID"
        )
    if uid in others:
        raise IdentityError(
            f"UID {uid} of {name!r} is already held by {others[uid].name!r} (sub "
            f"{others[uid].sub!r}) in this hub's OIDC table: one UID must be one person"
        )
    gid = _claimed_id(claimed_gid, "gid", policy)
    if gid is None:
        gid = uid if policy.gid_policy == "uid" else int(policy.gid_policy)
    return OIDCIdentity(sub, name, uid, gid, allocated)


def _allocate(people: dict[str, OIDCIdentity], policy: IdPolicy, taken: dict[int, str]) -> int:
    first, last = policy.uid_range
    used = {p.uid for p in people.values()} | set(taken) | {NOBODY_ID}
    # Lowest free first; the range is small enough to walk (people, not packets).
    for uid in range(max(first, policy.min_uid), last + 1):
        if uid not in used:
            return uid
    raise IdentityError(
        f"auth.oidc.uid_range [{first}, {last}] has no free UID left "
        f"({len(people)} people hold one): the platform team widens it"
    )


class IdTable:
    """The persisted table sub -> OIDCIdentity (YAML, mode 0600, replaced atomically under an
    fcntl lock, so two logins at once never get the same UID)."""

    def __init__(self, path: str | os.PathLike, policy: IdPolicy):
        self.path = Path(path)
        self.policy = policy

    def load(self) -> dict[str, OIDCIdentity]:
        try:
            data = yaml.safe_load(self.path.read_text(encoding="utf-8")) or {}
            people = data.get("people") or {}
            return {str(sub): OIDCIdentity(sub=str(sub), **entry) for sub, entry in people.items()}
        except FileNotFoundError:
            return {}
        except (OSError, yaml.YAMLError, AttributeError, TypeError) as e:
            # Never guess: a table that cannot be read could hand out a UID someone holds.
            raise IdentityError(f"the OIDC UID table {self.path} cannot be read: {e}") from None

    @contextlib.contextmanager
    def _locked(self) -> Iterator[dict[str, OIDCIdentity]]:
        self.path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
        fd = os.open(self.path.with_name(self.path.name + ".lock"), os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            yield self.load()
        finally:
            os.close(fd)

    def _write(self, people: dict[str, OIDCIdentity]) -> None:
        entries = {}
        for sub in sorted(people, key=lambda s: people[s].uid):
            entry = asdict(people[sub])
            del entry["sub"]
            entries[sub] = entry
        text = (
            "# Written by the hub at OIDC logins: the UID/GID of each person of the provider,\n"
            "# by their `sub`. Never give a UID here to anyone else.\n"
            + yaml.safe_dump({"people": entries}, sort_keys=False)
        )
        write_private(self.path, text)

    def assign(
        self,
        sub: str,
        name: str,
        claimed_uid: object = None,
        claimed_gid: object = None,
        taken: dict[int, str] | None = None,
    ) -> OIDCIdentity:
        """SUB's identity, allocated and recorded on first sight (see `resolve`)."""
        with self._locked() as people:
            ident = resolve(people, sub, name, claimed_uid, claimed_gid, self.policy, taken or {})
            if people.get(sub) != ident:
                self._write({**people, sub: ident})
            return ident

    def holder(self, uid: int) -> OIDCIdentity | None:
        """Who holds UID in the table (for refusing it elsewhere)."""
        return next((p for p in self.load().values() if p.uid == uid), None)


def uid_holder(cfg: PlatformConfig, uid: int) -> OIDCIdentity | None:
    """The OIDC person holding UID on this platform, if any (`hubstack users add` refuses
    to give it to a users-file account)."""
    oidc = cfg.auth.oidc
    policy = IdPolicy(oidc.uid_range if oidc else (1, 1))  # only read, never allocated from
    return IdTable(cfg.oidc_ids_file, policy).holder(uid)

"""Password sources the hub's login form tries: small traitlets-configured classes.

`HubstackAuthenticator` (hubstack.hub.auth) holds one instance per name in auth.sources
and asks them in turn. A source answers a login with the account's `UserRecord`, None
(unknown name or wrong password: the form's usual "Invalid username or password"), or a
`LoginRefused` that carries its own message for the login page (not in an allowed group,
directory down). A new source (another directory) is one more subclass registered in
`HubstackAuthenticator.source_classes`. A source that logs people in elsewhere (OIDC: at
the provider, hubstack.hub.oidc) answers no password and adds its own pages (`handlers`)
and a button to the login page (`login_button`).
"""

from __future__ import annotations

import asyncio

from tornado import web
from traitlets import Bool, Integer, Unicode
from traitlets.config import LoggingConfigurable

from hubstack.hub.users import FileUserSource, UserRecord, UsersFile


def auth_state_for(rec: UserRecord) -> dict:
    """The identity the spawner needs, as stored in JupyterHub's auth_state."""
    return {
        "uid": rec.uid,
        "gid": rec.gid,
        "groups": list(rec.groups),
        "home": rec.home,
        "source": rec.source,
        "group_names": list(rec.group_names),
    }


class LoginRefused(web.HTTPError):
    """A login the source recognised and refuses, with a message the person can act on.
    JupyterHub shows it on the login form, with its status (403, 503)."""

    def __init__(self, status_code: int, message: str):
        super().__init__(status_code, "%s", message)
        self.message = message

    def __str__(self) -> str:
        return self.message


class PasswordSource(LoggingConfigurable):
    """Where some accounts come from, asked with the login form's name and password."""

    name = "?"
    """The source's name in auth.sources and in `hubstack users list`."""

    min_uid = Integer(1000, help="Smallest UID/GID accepted (hub.min_uid).").tag(config=True)
    allow_nobody_id = Bool(False, help="Accept 65534 (hub.allow_nobody_id).").tag(config=True)

    def holds(self, name: str) -> bool:
        """Whether NAME is this source's own account, known without a password. A name a
        source holds is never accepted from another one."""
        return False

    async def verify(self, name: str, password: str) -> UserRecord | None:
        """NAME's record if PASSWORD is right; None if not (or NAME is unknown here)."""
        raise NotImplementedError

    def lookup(self, name: str) -> UserRecord | None:
        """NAME's record as this source knows it without asking anyone (a refresh)."""
        return None

    def uids_held(self) -> dict[int, str]:
        """UID -> account name, for the accounts this source itself keeps (the users file,
        the OIDC UID table): a UID one account holds is refused to every other."""
        return {}

    def handlers(self, app) -> list[tuple[str, type]]:
        """Pages of the hub's own this source needs (OIDC: the redirect and its callback)."""
        return []


class FileSource(PasswordSource):
    """The hubstack users file: local admins, service accounts, analysts without a directory."""

    name = "file"
    users_file = Unicode(
        "/var/lib/hubstack/users.yaml",
        help="Path of the hubstack users file (YAML, managed with `hubstack users`).",
    ).tag(config=True)

    def _source(self) -> FileUserSource:
        # Re-read at every call, so `hubstack users add/remove` apply without a restart.
        return FileUserSource(UsersFile(self.users_file, self.min_uid, self.allow_nobody_id))

    def holds(self, name: str) -> bool:
        try:
            return self.lookup(name) is not None
        except ValueError as e:
            # Unreadable: whether NAME is a local account is unknown, so no other source may
            # take the name over; the login is refused (verify says why in the log).
            self.log.error("Users file unreadable while looking up %r: %s", name, e)
            return True

    def lookup(self, name: str) -> UserRecord | None:
        """NAME's record, None when the file does not hold it; ValueError when unreadable."""
        return self._source().get(name)

    def uids_held(self) -> dict[int, str]:
        try:
            return {rec.uid: name for name, rec in self.records().items()}
        except ValueError:
            return {}  # the file's own errors are reported where it is used

    def records(self) -> dict[str, UserRecord]:
        """Every account of the file; ValueError when unreadable."""
        return self._source().users_file.load()

    async def verify(self, name: str, password: str) -> UserRecord | None:
        try:
            # scrypt takes tens of ms: off the hub's event loop.
            return await asyncio.to_thread(self._source().verify, name, password)
        except ValueError as e:
            # An invalid users file refuses every login, loudly, rather than guessing.
            self.log.error("Login refused for %r: %s", name, e)
            return None

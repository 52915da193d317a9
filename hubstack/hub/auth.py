"""JupyterHub authenticator: the password form, answered by hubstack's account sources.

Works for the normal login form and for REST token requests
(``POST /hub/api/users/NAME/tokens`` with ``{"auth": {"username", "password"}}``).
`sources` (auth.sources) names the sources (hubstack.hub.sources) a login asks, in order:
``file`` (the users file, re-read at every login, so users added, changed or removed take
effect at their next login without restarting the hub), ``ldap`` (hubstack.hub.ldap) and
``oidc`` (hubstack.hub.oidc: no password; the login page's button and the provider's
callback, which this authenticator mounts).
A name the users file holds is the file's alone: no directory account can take over a
local admin or service account. Other names go to the directory sources in order; the
first that accepts the password answers. A source's refusal with a reason (not in an
allowed group, directory down) is shown on the login page. A directory account's name and
UID must be no other account's (the users file's, another source's): files on shared
storage must tell people apart.

Each login stores the identity the spawner needs (uid, gid, groups, home, source) in
JupyterHub's encrypted auth_state, and a directory account's also in the accounts table
(hubstack.hub.accounts): a spawn never asks the directory.
"""

from __future__ import annotations

import asyncio

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Bool, Dict, Integer, List, Type, Unicode, default

from hubstack.hub.accounts import AccountsTable
from hubstack.hub.ldap import LDAPSource
from hubstack.hub.oidc import OIDCSource
from hubstack.hub.sources import FileSource, LoginRefused, PasswordSource, auth_state_for
from hubstack.hub.users import UserRecord


class HubstackAuthenticator(Authenticator):
    """Password login against hubstack's sources (the users file by default)."""

    sources = List(
        Unicode(),
        ["file"],
        help="Account sources a password login asks, in order (platform key auth.sources).",
    ).tag(config=True)
    source_classes = Dict(
        value_trait=Type(klass=PasswordSource),
        default_value={"file": FileSource, "ldap": LDAPSource, "oidc": OIDCSource},
        help="The class of each source name.",
    ).tag(config=True)

    users_file = Unicode(
        "/var/lib/hubstack/users.yaml",
        help="Path of the hubstack users file (YAML, managed with `hubstack users`).",
    ).tag(config=True)
    accounts_file = Unicode(
        "",
        help="The table of directory accounts (hubstack.hub.accounts); empty: not kept.",
    ).tag(config=True)

    min_uid = Integer(
        1000,
        help="Smallest UID/GID accepted in the users file (platform key hub.min_uid).",
    ).tag(config=True)
    allow_nobody_id = Bool(
        False,
        help="Accept 65534 (nobody/nogroup) in the users file (platform key hub.allow_nobody_id).",
    ).tag(config=True)

    # Everyone the sources know may log in; the sources themselves are the allow list.
    @default("allow_all")
    def _allow_all_default(self):
        return True

    @classmethod
    def from_platform_config(cls, cfg, **kwargs) -> HubstackAuthenticator:
        return cls(
            users_file=str(cfg.users_file),
            min_uid=cfg.hub.min_uid,
            allow_nobody_id=cfg.hub.allow_nobody_id,
            **kwargs,
        )

    _made: dict[str, PasswordSource] | None = None

    def source(self, name: str) -> PasswordSource:
        """The configured instance of source NAME (made once; config reaches it as its parent)."""
        if self._made is None:
            self._made = {}
        if name not in self._made:
            if name not in self.source_classes:
                raise ValueError(f"unknown account source {name!r}")
            common: dict[str, object] = {
                "min_uid": self.min_uid,
                "allow_nobody_id": self.allow_nobody_id,
            }
            if name == "file":
                common["users_file"] = self.users_file
            self._made[name] = self.source_classes[name](parent=self, log=self.log, **common)
        return self._made[name]

    def normalize_username(self, username):
        # The REST API hands over whatever JSON held (`{"usernames": [0.0]}`); the stock
        # method calls .lower() on it and the hub answers 500. A user name is text: 400.
        if not isinstance(username, str):
            raise web.HTTPError(400, f"a user name must be a string, not {type(username).__name__}")
        return super().normalize_username(username)

    def _owner(self, name: str) -> PasswordSource | None:
        """The source that holds NAME without a password (the users file's accounts)."""
        for source_name in self.sources:
            source = self.source(source_name)
            if source.holds(name):
                return source
        return None

    async def verify(self, name: str, password: str) -> UserRecord | None:
        """NAME's record from the first source that accepts the password; None when none
        does; a source's LoginRefused when one refused with a reason and none accepted."""
        owner = await asyncio.to_thread(self._owner, name)
        if owner is not None:
            return await owner.verify(name, password)
        refused: LoginRefused | None = None
        for source_name in self.sources:
            try:
                rec = await self.source(source_name).verify(name, password)
            except LoginRefused as e:
                refused = refused or e
                continue
            if rec is not None:
                await asyncio.to_thread(self._check_free, rec)
                return rec
        if refused is not None:
            raise refused
        return None

    def _check_free(self, rec: UserRecord) -> None:
        self.check_free_name(rec.name, rec.source)
        self.check_free_uid(rec)

    def get_handlers(self, app):
        handlers = list(super().get_handlers(app))
        for source_name in self.sources:
            handlers.extend(self.source(source_name).handlers(app))
        return handlers

    def _accounts(self) -> AccountsTable | None:
        if not self.accounts_file:
            return None
        return AccountsTable(self.accounts_file, self.min_uid, self.allow_nobody_id)

    def uids_taken(self, name: str, ignore_source: str | None = None) -> dict[int, str]:
        """UID -> who holds it, for every account but NAME: the sources' own (users file,
        OIDC table) and the directory accounts the table recorded. IGNORE_SOURCE's are left
        out (a source that keeps its own table checks it itself)."""
        taken: dict[int, str] = {}
        for source_name in self.sources:
            if source_name == ignore_source:
                continue
            for uid, holder in self.source(source_name).uids_held().items():
                if holder != name:
                    taken.setdefault(uid, f"the {source_name} account {holder!r}")
        table = self._accounts()
        if table is not None:
            try:
                recorded = table.load()
            except ValueError as e:
                self.log.error("%s", e)
                recorded = {}
            for other, (rec, _seen) in recorded.items():
                if other != name and rec.source != ignore_source:
                    taken.setdefault(rec.uid, f"the {rec.source} account {other!r}")
        return taken

    def check_free_name(self, name: str, source: str) -> None:
        """LoginRefused unless NAME is free for an account of SOURCE: not the users file's,
        not another source's account as the table recorded it."""
        holder = None
        if "file" in self.sources and source != "file" and self.source("file").holds(name):
            holder = "a local account of this hub (its users file)"
        table = self._accounts()
        if holder is None and table is not None:
            try:
                rec = table.get(name)
            except ValueError:
                rec = None
            if rec is not None and rec.source != source and rec.source in self.sources:
                holder = f"the {rec.source} account of that name"
        if holder is not None:
            self.log.error("%s login of %r refused: the name is %s", source, name, holder)
            raise LoginRefused(
                403,
                f"{name}: this name is already {holder}, so it cannot log in through "
                f"{source} too. Tell the platform team.",
            )

    def check_free_uid(self, rec: UserRecord) -> None:
        """A directory account's UID must be no other account's: files on shared storage
        would belong to two people. Within its own source the source is the authority (a
        directory's rename keeps the UID), so only other sources' accounts count."""
        held = self.uids_taken(rec.name, ignore_source=rec.source).get(rec.uid)
        if held is not None:
            self.log.error(
                "%s login of %r refused: UID %d is %s", rec.source, rec.name, rec.uid, held
            )
            raise LoginRefused(
                403,
                f"{rec.name}: your directory account's UID {rec.uid} is already the UID of "
                "another account on this hub, so your files could not be told apart. "
                "Tell the platform team.",
            )

    def remember(self, rec: UserRecord) -> None:
        """Record a directory account's login in the accounts table (`hubstack users list`,
        spawns without a login state)."""
        table = self._accounts()
        if rec.source != "file" and table is not None:
            try:
                table.record(rec)
            except OSError as e:
                # The table serves `users list` and spawns without a login state; a login
                # does not fail for it.
                self.log.error("Cannot record %r in %s: %s", rec.name, self.accounts_file, e)

    async def authenticate(self, handler, data):
        if not isinstance(data, dict):
            return None
        name = self.normalize_username(str(data.get("username") or ""))
        password = data.get("password") or ""
        if not name or not isinstance(password, str):
            return None
        rec = await self.verify(name, password)
        if rec is None:
            self.log.warning("Failed login for %r", name)
            return None
        await asyncio.to_thread(self.remember, rec)
        return {
            "name": rec.name,
            # Admins are the users file's; a directory account is never one by its login.
            "admin": rec.admin,
            # Directory accounts' groups become their JupyterHub groups (manage_groups);
            # None leaves a users-file account's groups to the admins.
            "groups": list(rec.group_names) if rec.source != "file" else None,
            "auth_state": auth_state_for(rec),
        }

    async def run_post_auth_hook(self, handler, auth_model):
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        # A token request (POST /hub/api/users/NAME/tokens with name and password)
        # only works for users already in the hub's database; the login page adds
        # them, the API does not. Register the user (and sync admin) here, as a
        # login would, so a user fresh from the users file can get a token at once.
        if auth_model and isinstance(handler, APIHandler):
            await handler.auth_to_user(auth_model)
        return auth_model

    async def refresh_user(self, user, handler=None):
        """Drop sessions of users removed from the file (checked every auth_refresh_age).

        A directory account is kept as its last login left it: a refresh never asks the
        directory, so an outage ends no session and stops no server. The directory decides
        again at the account's next login."""
        if "file" in self.sources:
            try:
                rec = self.source("file").lookup(user.name)
            except ValueError as e:
                self.log.error("Cannot refresh %r: %s", user.name, e)
                return True  # keep sessions when the file is broken; logins are refused anyway
            if rec is not None:
                return {"admin": rec.admin, "groups": None, "auth_state": auth_state_for(rec)}
        state = await user.get_auth_state() or {}
        if state.get("source") in self.sources and state.get("source") != "file":
            return True
        self.log.info("User %r is no longer in the users file; ending their session", user.name)
        return False

"""JupyterHub authenticator backed by a hubstack `UserSource` (the users file by default).

Works for the normal login form and for REST token requests
(``POST /hub/api/users/NAME/tokens`` with ``{"auth": {"username", "password"}}``).
The source is consulted at every login, so users added, changed or removed take
effect at their next login without restarting the hub.
"""

from __future__ import annotations

from jupyterhub.apihandlers.base import APIHandler
from jupyterhub.auth import Authenticator
from tornado import web
from traitlets import Bool, Integer, Unicode, default

from hubstack.hub.users import FileUserSource, UserRecord, UsersFile, UserSource


def auth_state_for(rec: UserRecord) -> dict:
    """The identity the spawner needs, as stored in JupyterHub's auth_state."""
    return {"uid": rec.uid, "gid": rec.gid, "groups": list(rec.groups), "home": rec.home}


class HubstackAuthenticator(Authenticator):
    """Password login against the hubstack users file; only users in the file may log in."""

    users_file = Unicode(
        "/var/lib/hubstack/users.yaml",
        help="Path of the hubstack users file (YAML, managed with `hubstack users`).",
    ).tag(config=True)

    min_uid = Integer(
        1000,
        help="Smallest UID/GID accepted in the users file (platform key hub.min_uid).",
    ).tag(config=True)
    allow_nobody_id = Bool(
        False,
        help="Accept 65534 (nobody/nogroup) in the users file (platform key hub.allow_nobody_id).",
    ).tag(config=True)

    # Everyone the source knows may log in; the source itself is the allow list.
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

    def normalize_username(self, username):
        # The REST API hands over whatever JSON held (`{"usernames": [0.0]}`); the stock
        # method calls .lower() on it and the hub answers 500. A user name is text: 400.
        if not isinstance(username, str):
            raise web.HTTPError(400, f"a user name must be a string, not {type(username).__name__}")
        return super().normalize_username(username)

    def user_source(self) -> UserSource:
        """The identity source; override for LDAP/OIDC-backed variants."""
        return FileUserSource(UsersFile(self.users_file, self.min_uid, self.allow_nobody_id))

    def _verify(self, name: str, password: str) -> UserRecord | None:
        try:
            return self.user_source().verify(name, password)
        except ValueError as e:
            # An invalid users file refuses every login, loudly, rather than guessing.
            self.log.error("Login refused for %r: %s", name, e)
            return None

    async def authenticate(self, handler, data):
        if not isinstance(data, dict):
            return None
        name = self.normalize_username(str(data.get("username") or ""))
        password = data.get("password") or ""
        if not name or not isinstance(password, str):
            return None
        rec = self._verify(name, password)
        if rec is None:
            self.log.warning("Failed login for %r", name)
            return None
        return {"name": rec.name, "admin": rec.admin, "auth_state": auth_state_for(rec)}

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
        """Drop sessions of users removed from the file (checked every auth_refresh_age)."""
        try:
            rec = self.user_source().get(user.name)
        except ValueError as e:
            self.log.error("Cannot refresh %r: %s", user.name, e)
            return True  # keep sessions when the file is broken; logins are refused anyway
        if rec is None:
            self.log.info("User %r is no longer in the users file; ending their session", user.name)
            return False
        return {"admin": rec.admin, "auth_state": auth_state_for(rec)}

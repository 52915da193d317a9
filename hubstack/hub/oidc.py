"""OpenID Connect accounts (auth.oidc): oauthenticator's GenericOAuthenticator signs people in
at the provider; hubstack gives each one a POSIX identity.

`OIDCSource` is the source `oidc` of auth.sources (hubstack.hub.sources), beside `file` and
`ldap`: it answers no password, but adds the provider's pages to the hub (`/hub/oauth_login`,
the redirect, and `/hub/oauth_callback`, where the provider sends people back) and the
"Sign in with LABEL" button to the login page (hubstack/hub/templates/login.html), with the
password form when a password source is configured too.

- Endpoints come from ISSUER/.well-known/openid-configuration, fetched at the first login
  (oauthenticator itself takes them one by one), so a provider that is down does not stop
  the hub from starting: that login gets a clear page instead.
- allowed_groups is checked on the groups claim by oauthenticator; the claim's groups become
  the person's JupyterHub groups. Nobody is an admin by an OIDC login (admins are the users
  file's, as with LDAP).
- UID/GID from the named claims when the provider sends them, else allocated once from
  auth.oidc.uid_range and kept by the provider's `sub` (hubstack.hub.oidc_ids), so the same
  person always gets the same UID. A name or UID another account holds (the users file's, an
  LDAP account's) is refused (HubstackAuthenticator.check_free).
- auth_state holds the identity the spawner needs (hubstack.hub.auth.auth_state_for) and the
  `sub`, not the provider's tokens: the hub never calls the provider on anyone's behalf.
"""

from __future__ import annotations

import asyncio
from typing import Any

from oauthenticator.generic import GenericOAuthenticator
from oauthenticator.oauth2 import OAuthLoginHandler
from tornado.httpclient import HTTPClientError
from traitlets import Instance, Integer, Tuple, Unicode, Union, default

from hubstack.hub.oidc_ids import IdentityError, IdPolicy, IdTable
from hubstack.hub.sources import LoginRefused, PasswordSource, auth_state_for
from hubstack.hub.users import UserRecord, validate_name

STATE_KEY = "oauth_user"
"""Where oauthenticator keeps the provider's claims in auth_state (user_auth_state_key)."""


class ProviderUnavailable(LoginRefused):
    def __init__(self, issuer: str, problem: str):
        super().__init__(
            503,
            f"The sign-in provider ({issuer}) cannot be used right now: {problem}. Running "
            "servers keep running; try again in a few minutes, or tell the platform team.",
        )


class DiscoveringLoginHandler(OAuthLoginHandler):
    """The redirect to the provider, once its endpoints are known."""

    async def get(self):
        await self.authenticator.discover()
        return super().get()


class OIDCAuthenticator(GenericOAuthenticator):
    """oauthenticator's generic one, with issuer discovery; its parent is the OIDCSource,
    which turns a login into a UserRecord."""

    login_handler = DiscoveringLoginHandler

    issuer = Unicode(help="Issuer URL; endpoints from its .well-known/openid-configuration.").tag(
        config=True
    )

    _discovery = Instance(dict, allow_none=True)

    @default("enable_pkce")
    def _pkce(self):
        return True

    @default("username_claim")
    def _username_claim(self):
        return "preferred_username"  # OpenID Connect's standard claim for it

    @default("manage_groups")
    def _manage_groups(self):
        return True

    @default("auth_state_groups_key")
    def _groups_key(self):
        return f"{STATE_KEY}.groups"

    async def discover(self) -> dict:
        """The provider's discovery document, fetched once; its endpoints become
        authorize_url, token_url and userdata_url."""
        if self._discovery is None:
            url = f"{self.issuer.rstrip('/')}/.well-known/openid-configuration"
            try:
                doc = await self.httpfetch(url, "discovering the OpenID provider", method="GET")
            except (HTTPClientError, OSError, ValueError) as e:
                self.log.error("OIDC discovery at %s failed: %s", url, e)
                raise ProviderUnavailable(self.issuer, f"it does not answer ({e})") from None
            found = doc.get("issuer") if isinstance(doc, dict) else doc
            if not isinstance(found, str) or found.rstrip("/") != self.issuer.rstrip("/"):
                # OpenID Connect Discovery 1.0, 4.3: the document must name the issuer asked for.
                self.log.error("%s names issuer %r, not %r", url, found, self.issuer)
                raise ProviderUnavailable(
                    self.issuer, f"its discovery document names issuer {found!r} (auth.oidc.issuer)"
                )
            self.authorize_url = doc["authorization_endpoint"]
            self.token_url = doc["token_endpoint"]
            self.userdata_url = doc.get("userinfo_endpoint", "")
            if not self.userdata_url:
                self.userdata_from_id_token = True
            self._discovery = doc
        return self._discovery

    async def get_token_info(self, handler, params):
        await self.discover()
        return await super().get_token_info(handler, params)

    async def token_to_user(self, token_info):
        await self.discover()
        return await super().token_to_user(token_info)

    def user_info_to_username(self, user_info):
        claim = self.username_claim if isinstance(self.username_claim, str) else "username"
        name = user_info.get(claim)
        if not isinstance(name, str) or not name:
            raise LoginRefused(
                403,
                f"The provider sent no {claim!r} claim, so there is no user name to log you "
                "in as. Tell the platform team (auth.oidc.username_claim, auth.oidc.scopes).",
            )
        try:
            return validate_name(name.lower())
        except ValueError as e:
            raise LoginRefused(
                403, f"Your {claim} {name!r} cannot be a user name on this hub: {e}."
            ) from None

    async def run_post_auth_hook(self, handler, auth_model):
        # After check_allowed: a person outside the allowed groups never gets a UID.
        auth_model = await super().run_post_auth_hook(handler, auth_model)
        source = self.parent
        assert isinstance(source, OIDCSource)
        return await source.admit(auth_model)


class OIDCSource(PasswordSource):
    """People of an OpenID Connect provider (auth.oidc)."""

    name = "oidc"

    ids_file = Unicode(
        "/etc/hubstack/users/oidc/ids.yaml", help="The persisted sub -> UID/GID table."
    ).tag(config=True)
    uid_claim = Unicode(None, allow_none=True, help="Claim holding the UID, if any.").tag(
        config=True
    )
    gid_claim = Unicode(None, allow_none=True, help="Claim holding the GID, if any.").tag(
        config=True
    )
    uid_range = Tuple(Integer(), Integer(), default_value=(100000, 199999)).tag(config=True)
    gid_policy = Union([Unicode(), Integer()], default_value="uid").tag(config=True)

    authenticator = Instance(OIDCAuthenticator)

    @default("authenticator")
    def _authenticator(self) -> OIDCAuthenticator:
        # parent=self: c.OIDCAuthenticator.* (and c.GenericOAuthenticator.*) configure it.
        return OIDCAuthenticator(parent=self, log=self.log)

    async def verify(self, name: str, password: str) -> UserRecord | None:
        return None  # people sign in at the provider, never with a password here

    def id_table(self) -> IdTable:
        uid_range = tuple(self.uid_range)
        policy = IdPolicy(uid_range, self.gid_policy, self.min_uid, self.allow_nobody_id)
        return IdTable(self.ids_file, policy)

    def uids_held(self) -> dict[int, str]:
        try:
            return {p.uid: p.name for p in self.id_table().load().values()}
        except IdentityError as e:
            self.log.error("%s", e)
            return {}

    def handlers(self, app) -> list[tuple[str, type]]:
        """oauthenticator's login and callback pages, bound to this source's authenticator
        (JupyterHub's own /logout serves every source)."""
        oidc = self.authenticator
        return [
            (path, type(f"OIDC{handler.__name__}", (handler,), {"authenticator": oidc}))
            for path, handler in oidc.get_handlers(app)
            if path != "/logout"
        ]

    def record(self, auth_model: dict) -> UserRecord:
        """The person's UserRecord (UID/GID assigned in the table); IdentityError if refused."""
        claims = (auth_model.get("auth_state") or {}).get(STATE_KEY) or {}
        name, sub = auth_model["name"], claims.get("sub")
        if not isinstance(sub, str) or not sub:
            raise IdentityError("the provider sent no `sub` claim, which keys each person's UID")
        hub = self.parent
        taken: dict[int, str] = {}
        if hub is not None:
            hub.check_free_name(name, self.name)
            taken = hub.uids_taken(name, ignore_source=self.name)
        ident = self.id_table().assign(
            sub,
            name,
            claims.get(self.uid_claim) if self.uid_claim else None,
            claims.get(self.gid_claim) if self.gid_claim else None,
            taken,
        )
        groups = auth_model.get("groups") or []
        return UserRecord(
            name, ident.uid, ident.gid, (), source=self.name, group_names=tuple(groups)
        )

    def _admit(self, auth_model: dict) -> dict[str, Any]:
        try:
            rec = self.record(auth_model)
        except IdentityError as e:
            self.log.warning("OIDC login of %r refused: %s", auth_model.get("name"), e)
            raise LoginRefused(403, f"{auth_model.get('name')}: sign-in refused: {e}.") from None
        hub = self.parent
        if hub is not None:
            hub.remember(rec)
        sub = auth_model["auth_state"][STATE_KEY]["sub"]
        return {
            "name": rec.name,
            "admin": False,  # admins are the users file's
            "groups": list(rec.group_names),
            "auth_state": {**auth_state_for(rec), "oidc_sub": sub},
        }

    async def admit(self, auth_model: dict) -> dict[str, Any]:
        """oauthenticator's model of an allowed person -> the hub's (name, groups, the
        identity in auth_state); LoginRefused with the reason when the person cannot be
        given a UID."""
        return await asyncio.to_thread(self._admit, auth_model)


def authenticator_settings(oidc, ca_file: str | None = None) -> dict[str, Any]:
    """OIDCAuthenticator's traits from the platform config's auth.oidc (OIDCConfig); the
    client secret is read by the hub from its compose secret (hubstack.hub.setup)."""
    groups = ", ".join(oidc.allowed_groups)
    settings: dict[str, Any] = {
        "issuer": oidc.issuer,
        "client_id": oidc.client_id,
        "scope": list(oidc.scopes),
        "username_claim": oidc.username_claim,
        "auth_state_groups_key": f"{STATE_KEY}.{oidc.groups_claim}",
        "manage_groups": True,
        "allowed_groups": set(oidc.allowed_groups),
        "allow_all": oidc.allow_all,
        "login_service": oidc.button_label,
        "custom_403_message": (
            f"You signed in at {oidc.button_label}, but your account is in none of the "
            f"groups allowed to use this hub ({groups}). Ask the platform team to add you "
            "to one of them."
        ),
    }
    if ca_file:
        settings["http_request_kwargs"] = {"ca_certs": ca_file}
    return settings

"""LDAP accounts: jupyterhub-ldapauthenticator binds, hubstack maps the entry to a POSIX identity.

`HubstackLDAPAuthenticator` is ldapauthenticator's own class plus one search on the
connection it has just bound as the user: the posixGroups whose memberUid lists them
(`group_search_base`), for their GIDs and names. `LDAPSource` is the password source the
hub's login form asks (hubstack.hub.sources): it runs the authenticator off the event loop
with a deadline, tells a wrong password (None) from a directory that cannot be reached
(`DirectoryUnavailable`) and from a person outside the allowed groups
(`NotInAllowedGroup`), and maps the entry with `record_from_entry`: UID and GID from
uidNumber/gidNumber under the users file's rules (hub.min_uid, nobody), supplementary groups
from the posixGroups, home from homeDirectory only when asked.
"""

from __future__ import annotations

import asyncio
import posixpath
import ssl
from concurrent.futures import ThreadPoolExecutor
from typing import Any

import ldap3
from ldap3.core.exceptions import LDAPException
from ldap3.utils.conv import escape_filter_chars
from ldap3.utils.dn import parse_dn
from ldapauthenticator import LDAPAuthenticator
from traitlets import Bool, Float, Instance, Unicode, default

from hubstack.hub.sources import LoginRefused, PasswordSource
from hubstack.hub.users import IdError, UserRecord, check_id, validate_name

POSIX_GROUPS = "hubstack.posixGroups"
"""Key of the posixGroups (name, gidNumber) in the attributes our authenticator returns: a
dot cannot start an LDAP attribute name, so it never clashes with one."""

# Where a directory's homeDirectory must not point inside a server: the image's own system.
SYSTEM_DIRS = ("/bin", "/boot", "/dev", "/etc", "/lib", "/lib64", "/opt", "/proc", "/root",
               "/run", "/sbin", "/sys", "/tmp", "/usr", "/var")  # fmt: skip


class DirectoryUnavailable(LoginRefused):
    def __init__(self, server: str):
        super().__init__(
            503,
            f"The directory ({server}) cannot be reached right now, so directory accounts "
            "cannot log in. Running servers keep running; try again in a few minutes, or "
            "tell the platform team if it lasts.",
        )


class NotInAllowedGroup(LoginRefused):
    def __init__(self, name: str, groups: list[str]):
        super().__init__(
            403,
            f"{name}: your password is right, but you are not in a group allowed to use "
            f"this hub ({', '.join(groups)}). Ask the platform team to add you to one.",
        )


class UnusableAccount(LoginRefused):
    def __init__(self, name: str, problem: str):
        super().__init__(
            403,
            f"{name}: your directory account cannot be used here: {problem}. "
            "Tell the platform team.",
        )


def rdn_value(dn: str) -> str:
    """The first RDN's value, the name people know a group by (cn=analysts,... -> analysts)."""
    try:
        return parse_dn(dn)[0][1]
    except (IndexError, LDAPException):
        return dn


def _one(attrs: dict[str, Any], key: str) -> Any:
    """An attribute's single value (entry_attributes_as_dict gives lists), or None. LDAP
    attribute names are case-insensitive: uidnumber finds the server's uidNumber."""
    values = attrs.get(key)
    if values is None:
        values = next((v for k, v in attrs.items() if k.lower() == key.lower()), None)
    if isinstance(values, (list, tuple)):
        return values[0] if len(values) == 1 else None
    return values


def _as_id(value: Any) -> Any:
    if isinstance(value, str) and value.strip().isdigit():
        return int(value)
    return value


def check_home(path: Any) -> str:
    """A directory's homeDirectory as the home path inside a server, or ValueError."""
    if not isinstance(path, str) or not path.startswith("/"):
        raise ValueError(f"homeDirectory {path!r} is not an absolute path")
    if posixpath.normpath(path) != path or path == "/" or "//" in path:
        raise ValueError(f"homeDirectory {path!r} is not a plain absolute path")
    if any(path == d or path.startswith(d + "/") for d in SYSTEM_DIRS):
        raise ValueError(f"homeDirectory {path!r} is inside a system folder")
    return path


def record_from_entry(
    name: str,
    attrs: dict[str, Any],
    *,
    min_uid: int = 1000,
    allow_nobody: bool = False,
    uid_attribute: str = "uidNumber",
    gid_attribute: str = "gidNumber",
    home_attribute: str = "homeDirectory",
    use_home: bool = False,
    log=None,
) -> UserRecord:
    """The POSIX identity of a directory entry's attributes (plus our posixGroups key).

    UID and GID pass the users file's rules (check_id) or the account is refused with
    ValueError naming the attribute. A posixGroup whose gidNumber breaks them still becomes
    a JupyterHub group, but never a supplementary group of the server (a directory's
    low-numbered system groups would otherwise reach the container).
    """
    ids = {}
    for key, attribute in (("uid", uid_attribute), ("gid", gid_attribute)):
        value = _as_id(_one(attrs, attribute))
        if value is None:
            raise ValueError(f"the entry has no single {attribute} (is it a posixAccount?)")
        try:
            ids[key] = check_id(value, key, min_uid, allow_nobody)
        except IdError as e:
            raise ValueError(f"{attribute}: {e.problem}") from None
    gids: list[int] = []
    names: list[str] = []
    for group_name, gid in attrs.get(POSIX_GROUPS) or []:
        if group_name not in names:
            names.append(group_name)
        try:
            gid = check_id(_as_id(gid), "groups", min_uid, allow_nobody)
        except IdError as e:
            if log:
                log.warning("%s: group %s is no supplementary group: %s", name, group_name, e)
            continue
        if gid not in gids and gid != ids["gid"]:
            gids.append(gid)
    home = None
    if use_home:
        home = check_home(_one(attrs, home_attribute))
    return UserRecord(
        name,
        ids["uid"],
        ids["gid"],
        tuple(gids),
        source="ldap",
        group_names=tuple(names),
        home_directory=home,
    )


class HubstackLDAPAuthenticator(LDAPAuthenticator):
    """ldapauthenticator, and the user's posixGroups read on the connection it bound."""

    group_search_base = Unicode(
        None,
        allow_none=True,
        help="Where posixGroups are searched for the user's memberUid; None: no groups.",
    ).tag(config=True)
    posix_group_filter = Unicode(
        "(&(objectClass=posixGroup)(memberUid={uid}))",
        help="Filter of the user's posixGroups; {uid} is their user_attribute value.",
    ).tag(config=True)

    def get_user_attributes(self, conn, userdn):
        attrs = dict(super().get_user_attributes(conn, userdn))
        if not self.group_search_base:
            return attrs
        uid = _one(attrs, self.user_attribute or "uid")
        if not isinstance(uid, str):
            self.log.warning("%s has no single %s: no posixGroups", userdn, self.user_attribute)
            return attrs
        conn.search(
            search_base=self.group_search_base,
            search_scope=ldap3.SUBTREE,
            search_filter=self.posix_group_filter.format(uid=escape_filter_chars(uid)),
            attributes=["cn", "gidNumber"],
        )
        groups = [e.entry_attributes_as_dict for e in conn.entries]
        attrs[POSIX_GROUPS] = [
            (str(_one(g, "cn")), _one(g, "gidNumber")) for g in groups if _one(g, "cn") is not None
        ]
        return attrs


class LDAPSource(PasswordSource):
    """Directory accounts (auth.ldap), through jupyterhub-ldapauthenticator."""

    name = "ldap"

    uid_attribute = Unicode("uidNumber").tag(config=True)
    gid_attribute = Unicode("gidNumber").tag(config=True)
    home_attribute = Unicode("homeDirectory").tag(config=True)
    use_home_directory = Bool(
        False, help="Take the home path inside the server from home_attribute."
    ).tag(config=True)
    timeout = Float(10.0, help="Seconds a login waits for the directory.").tag(config=True)

    authenticator = Instance(HubstackLDAPAuthenticator)

    @default("authenticator")
    def _authenticator(self) -> HubstackLDAPAuthenticator:
        # parent=self: c.HubstackLDAPAuthenticator.* (and c.LDAPAuthenticator.*) configure it.
        ldap = HubstackLDAPAuthenticator(parent=self, log=self.log)
        wanted = [self.uid_attribute, self.gid_attribute, ldap.user_attribute or "uid"]
        if self.use_home_directory:
            wanted.append(self.home_attribute)
        ldap.auth_state_attributes = list(dict.fromkeys(wanted))
        return ldap

    # ldap3 is blocking, and a directory that is down holds a connect for the OS's timeout:
    # the binds run in threads of their own, so the hub's event loop never waits on them.
    _pool = ThreadPoolExecutor(max_workers=8, thread_name_prefix="ldap-login")

    @property
    def server(self) -> str:
        return f"{self.authenticator.server_address}:{self.authenticator.server_port}"

    def _bind(self, name: str, password: str) -> dict | None:
        """ldapauthenticator's authenticate (a coroutine that never awaits) in this thread."""
        return asyncio.run(
            self.authenticator.authenticate(None, {"username": name, "password": password})
        )

    async def verify(self, name: str, password: str) -> UserRecord | None:
        try:
            validate_name(name)
        except ValueError:
            return None  # not a name an account here can have
        if not password or not password.strip():
            return None
        _ = self.authenticator  # made here, on the event loop, before any thread uses it
        loop = asyncio.get_running_loop()
        try:
            model = await asyncio.wait_for(
                loop.run_in_executor(self._pool, self._bind, name, password), self.timeout
            )
        except TimeoutError:
            self.log.error(
                "LDAP %s: no answer within %.0f s (login of %r)", self.server, self.timeout, name
            )
            raise DirectoryUnavailable(self.server) from None
        except LDAPException as e:
            self.log.error("LDAP %s: %s: %s (login of %r)", self.server, type(e).__name__, e, name)
            raise DirectoryUnavailable(self.server) from None
        if not model:
            return None
        state = model.get("auth_state") or {}
        allowed = self.authenticator.allowed_groups
        if allowed and not state.get("ldap_groups"):
            self.log.warning("LDAP login of %r refused: in none of the allowed groups", name)
            raise NotInAllowedGroup(name, [rdn_value(g) for g in allowed])
        try:
            return record_from_entry(
                name,
                state.get("user_attributes") or {},
                min_uid=self.min_uid,
                allow_nobody=self.allow_nobody_id,
                uid_attribute=self.uid_attribute,
                gid_attribute=self.gid_attribute,
                home_attribute=self.home_attribute,
                use_home=self.use_home_directory,
                log=self.log,
            )
        except ValueError as e:
            self.log.error("LDAP login of %r refused: %s", name, e)
            raise UnusableAccount(name, str(e)) from None


def authenticator_settings(ldap, secrets_dir=None) -> dict[str, Any]:
    """ldapauthenticator's traits from the platform config's auth.ldap (LDAPConfig)."""
    strategy = {"ldaps": "on_connect", "starttls": "before_bind", "plain": "insecure"}[ldap.tls]
    tls: dict[str, Any] = {"validate": ssl.CERT_REQUIRED, "sni": ldap.server}
    if ldap.ca_file:
        tls["ca_certs_file"] = str(ldap.ca_file)
    settings: dict[str, Any] = {
        "server_address": ldap.server,
        "server_port": ldap.server_port,
        "tls_strategy": strategy,
        "tls_kwargs": tls,
        "user_attribute": ldap.user_attribute,
        "user_search_base": ldap.user_search_base,
        "allowed_groups": list(ldap.allowed_groups),
        "group_search_base": ldap.group_search_base,
        # Names are checked against hubstack's own rule first (POSIX user names).
        "valid_username_regex": r"^[a-z_][a-z0-9_-]{0,31}$",
    }
    if ldap.lookup_dn:
        settings.update(
            lookup_dn=True,
            lookup_dn_user_dn_attribute=ldap.user_attribute,
            lookup_dn_search_user=ldap.search_user_dn,
            lookup_dn_search_password=(
                ldap.search_password_file.read_text().strip() if ldap.search_password_file else None
            ),
        )
    else:
        settings["bind_dn_template"] = list(ldap.bind_dn_templates)
    return settings

"""JupyterHub settings derived from the platform config (used by hub/jupyterhub_config.py).

Paths inside the hub container (set by compose/compose.yaml):
- /srv/jupyterhub: the hub database (volume hub-data)
- /run/jupyterhub: a tmpfs, empty at every start of the container
- /run/secrets/{cookie_secret,proxy_token,crypt_key,registry_pull_credentials,
  registry_users_credentials}: compose secrets; with hub.tls on also tls_cert and tls_key
  (compose/tls.yaml); oidc_client_secret (auth.oidc; /dev/null without it)
"""

from __future__ import annotations

import html
import os
import sys
from pathlib import Path

from hubstack import swarm_stack
from hubstack.config import HSTS_MAX_AGE, PlatformConfig
from hubstack.envreport import ENV_REPORT_PORT, ENV_REPORT_SERVICE
from hubstack.hub import cull, ldap, oidc, ready_networks, versions
from hubstack.hub.announce import read_announcement

SECRETS = Path(os.environ.get("HUBSTACK_SECRETS", "/run/secrets"))
TEMPLATES = Path(oidc.__file__).parent / "templates"
"""The hub's own page templates (the login page's OIDC button), over JupyterHub's."""
PROXY_REDIRECT_PORT = 8080
"""Inside the hub container: where the proxy answers plain HTTP with a redirect to https
(compose/tls.yaml publishes it on hub.host:hub.tls.http_port)."""


HUB_DB_DIR = Path("/srv/jupyterhub")


def keep_database_private(folder: Path = HUB_DB_DIR) -> None:
    """The database's folder readable by its owner only (the hub's root): it holds every
    analyst's record, token hashes and encrypted auth state. A local volume lives under the
    engine's root-only data root; on shared storage (cluster.hub_data: an NFS export, a
    shared file system's folder) anyone who may read that folder on any node could read the
    database, so its folder is made 0700 at every start (an NFS export that squashes root
    must hand the folder to the anonymous user for the hub to write it; then that user
    owns it, still 0700)."""
    try:
        st = folder.stat()
    except FileNotFoundError:
        return  # outside the hub's container (tests, `hubstack` on the host)
    if st.st_uid == os.geteuid() and st.st_mode & 0o077:
        folder.chmod(0o700)


def _secret(name: str) -> str:
    return (SECRETS / name).read_text().strip()


def configure_hub(c, cfg: PlatformConfig) -> None:
    """Fill JupyterHub's config object c from cfg."""
    c.JupyterHub.bind_url = "http://0.0.0.0:8000"
    # Notebooks reach the hub by its compose service name on the platform network.
    c.JupyterHub.hub_bind_url = "http://0.0.0.0:8081"
    c.JupyterHub.hub_connect_url = "http://hub:8081"
    keep_database_private()
    c.JupyterHub.db_url = f"sqlite:///{HUB_DB_DIR}/jupyterhub.sqlite"
    c.JupyterHub.cookie_secret_file = str(SECRETS / "cookie_secret")
    c.ConfigurableHTTPProxy.auth_token = _secret("proxy_token")
    # The proxy's pid file must die with the container. Kept on the volume, it outlives a
    # killed hub, and the restarted hub sends SIGTERM to whatever now has that pid (often
    # the hub itself: a restart loop).
    c.ConfigurableHTTPProxy.pid_file = "/run/jupyterhub/proxy.pid"
    # Notebook servers outlive a hub restart: the hub finds them again from its database.
    c.JupyterHub.cleanup_servers = False
    c.JupyterHub.cleanup_proxy = True
    if cfg.hub.subdomain_host:
        # Each analyst's server on its own origin, NAME.HOST (docs/subdomains.md). JupyterHub
        # derives the rest: public_url (this URL), the proxy's host routing, the hub's route
        # for every host, host-only cookies per origin, full server URLs in its REST answers.
        # The proxy still listens on bind_url; compose publishes it on hub.host:hub.port.
        c.JupyterHub.subdomain_host = cfg.hub.subdomain_host

    # Identity (uid, gid, groups, home) travels from authenticator to spawner in auth_state,
    # which JupyterHub stores encrypted with this key.
    os.environ.setdefault("JUPYTERHUB_CRYPT_KEY", _secret("crypt_key"))
    c.Authenticator.enable_auth_state = True
    configure_auth(c, cfg)

    # The one place the mode picks the spawner: a container on this engine, or a Swarm
    # service on the analyst's own overlay network, which the spawner connects the hub's
    # container to (its name: HUBSTACK_HUB_CONTAINER, set by `hubstack up`).
    # HubstackSwarmSpawner is a HubstackSpawner: the settings below apply to both.
    if cfg.cluster.mode == "swarm":
        c.JupyterHub.spawner_class = "hubstack.hub.swarm_spawner.HubstackSwarmSpawner"
        c.HubstackSwarmSpawner.hub_container = os.environ.get(swarm_stack.HUB_CONTAINER_ENV, "")
    else:
        c.JupyterHub.spawner_class = "hubstack.hub.spawner.HubstackSpawner"
    c.HubstackSpawner.platform = cfg
    c.Spawner.start_timeout = cfg.hub.start_timeout
    c.Spawner.http_timeout = 120
    c.Spawner.default_url = "/lab"
    c.JupyterHub.allow_named_servers = False
    # After 1 s a start request answers 202 and the browser gets the progress page: the
    # spawn's real steps (digest, pull share, container, server) are what analysts should see.
    # Refusals come sooner (a profile needing GPUs where there are none), so they answer
    # the request itself with their message.
    c.JupyterHub.tornado_settings = {"slow_spawn_timeout": 1}
    configure_tls(c, cfg)
    # A burst queues in the spawner (hub.spawn.concurrent_starts, hubstack.hub.start_queue);
    # JupyterHub's own limit, which answers 429, stays a safety valve far above it.
    c.JupyterHub.concurrent_spawn_limit = cfg.hub.spawn.max_pending
    # `hubstack env report` as a page for admins: a managed service behind the hub's login.
    # Only the admin role holds access:services, so analysts are refused by the hub itself.
    command = [sys.executable, "-m", "hubstack"] + (["-c", str(cfg.path)] if cfg.path else [])
    c.JupyterHub.services = [
        {
            "name": ENV_REPORT_SERVICE,
            "display": True,
            "url": f"http://127.0.0.1:{ENV_REPORT_PORT}",
            "command": [*command, "env", "serve", "--port", str(ENV_REPORT_PORT)],
            "oauth_no_confirm": True,
        }
    ]
    configure_culling(c, cfg)
    # Analysts' networks made while the hub is idle, not during a burst of starts.
    ready_networks.start_in_hub(cfg)

    # `hubstack announce`: read on each page render, so no restart is needed.
    # The home page adds a notice for an analyst whose kept release is older than stable.
    def home_banner(user) -> str:
        chosen = getattr(getattr(user, "spawner", None), "chosen_version", "")
        notice = html.escape(versions.version_notice(cfg, chosen))
        return "<br>".join(filter(None, [read_announcement(user), notice]))

    c.JupyterHub.template_vars = {
        "announcement": read_announcement,
        "announcement_home": home_banner,
        **login_page_vars(cfg),
    }


def configure_auth(c, cfg: PlatformConfig) -> None:
    """auth: the password form asks auth.sources in order (hubstack.hub.auth)."""
    c.JupyterHub.authenticator_class = "hubstack.hub.auth.HubstackAuthenticator"
    c.HubstackAuthenticator.sources = list(cfg.auth.sources)
    c.HubstackAuthenticator.users_file = str(cfg.users_file)
    c.HubstackAuthenticator.accounts_file = str(cfg.accounts_file)
    c.HubstackAuthenticator.min_uid = cfg.hub.min_uid
    c.HubstackAuthenticator.allow_nobody_id = cfg.hub.allow_nobody_id
    ldap_cfg = cfg.auth.ldap
    if "ldap" in cfg.auth.sources and ldap_cfg is not None:
        # A directory account's groups are its JupyterHub groups, so profile access by
        # group (profiles[].allow.groups) follows the directory.
        c.HubstackAuthenticator.manage_groups = True
        for key, value in ldap.authenticator_settings(ldap_cfg).items():
            setattr(c.HubstackLDAPAuthenticator, key, value)
        c.LDAPSource.uid_attribute = ldap_cfg.attributes.uid_number
        c.LDAPSource.gid_attribute = ldap_cfg.attributes.gid_number
        c.LDAPSource.home_attribute = ldap_cfg.attributes.home_directory
        c.LDAPSource.use_home_directory = ldap_cfg.use_home_directory
        c.LDAPSource.timeout = ldap_cfg.timeout
    oidc_cfg = cfg.auth.oidc
    if "oidc" in cfg.auth.sources and oidc_cfg is not None:
        c.HubstackAuthenticator.manage_groups = True
        ca = str(oidc_cfg.ca_file) if oidc_cfg.ca_file else None
        settings = oidc.authenticator_settings(oidc_cfg, ca)
        for key, value in settings.items():
            setattr(c.OIDCAuthenticator, key, value)
        c.OIDCAuthenticator.client_secret = cfg.oidc_client_secret_file.read_text().strip()
        # The redirect URI registered at the provider: where people open the hub.
        c.OIDCAuthenticator.oauth_callback_url = f"{cfg.hub.public_url}hub/oauth_callback"
        c.OIDCSource.ids_file = str(cfg.oidc_ids_file)
        c.OIDCSource.uid_claim = oidc_cfg.uid_claim
        c.OIDCSource.gid_claim = oidc_cfg.gid_claim
        c.OIDCSource.uid_range = tuple(oidc_cfg.uid_range)
        c.OIDCSource.gid_policy = oidc_cfg.gid_policy
        c.JupyterHub.template_paths = [str(TEMPLATES)]


def login_page_vars(cfg: PlatformConfig) -> dict:
    """What templates/login.html needs: the OIDC button's label, whether it comes before the
    password form (auth.sources' order), and whether there is a password form at all."""
    oidc_cfg = cfg.auth.oidc
    if "oidc" not in cfg.auth.sources or oidc_cfg is None:
        return {"hubstack_oidc": None}
    sources = cfg.auth.sources
    passwords = [s for s in sources if s != "oidc"]
    return {
        "hubstack_oidc": {
            "label": oidc_cfg.button_label,
            "first": not passwords or sources.index("oidc") < sources.index(passwords[0]),
            "password": bool(passwords),
        }
    }


def configure_tls(c, cfg: PlatformConfig) -> None:
    """hub.tls: the proxy serves HTTPS on the public port with the certificate and key
    compose gives as secrets, and redirects plain HTTP from a second port; cookies are
    Secure; HSTS only for a certificate browsers trust without being told (files mode),
    since a self-signed one pinned by HSTS leaves no way past a certificate warning."""
    if not cfg.hub.tls.enabled:
        return
    c.JupyterHub.ssl_cert = str(SECRETS / "tls_cert")
    c.JupyterHub.ssl_key = str(SECRETS / "tls_key")
    c.JupyterHub.bind_url = "https://0.0.0.0:8000"
    c.ConfigurableHTTPProxy.command = [
        "configurable-http-proxy",
        "--redirect-port",
        str(PROXY_REDIRECT_PORT),
        # The port browsers reach, which compose maps to 8000 inside.
        "--redirect-to",
        str(cfg.hub.port),
    ]
    settings = c.JupyterHub.tornado_settings
    # JupyterHub marks its cookies Secure when the request came over https (the proxy's
    # X-Forwarded-Proto); said here too, so no cookie goes out without it. JupyterHub also
    # hands these options to each server (JUPYTERHUB_COOKIE_OPTIONS) for its own cookie.
    settings["cookie_options"] = {"secure": True}
    if cfg.hub.tls.mode == "files":
        settings["headers"] = {"Strict-Transport-Security": f"max-age={HSTS_MAX_AGE}"}


def configure_culling(c, cfg: PlatformConfig) -> None:
    """hub.cull: the idle culler as a managed service with a token of its own scopes, and
    activity reported often enough that a working analyst is never taken for idle."""
    service = cull.culler_service(cfg)
    if service is None:
        return
    c.JupyterHub.services.append(service)
    c.JupyterHub.load_roles = [cull.culler_role()]
    # Activity reaches the hub from the proxy's routes (read every last_activity_interval)
    # and from each server's own reports (JUPYTERHUB_ACTIVITY_INTERVAL); both default to 300 s.
    interval = cfg.hub.cull.activity_interval
    c.JupyterHub.last_activity_interval = interval
    c.Spawner.environment = {"JUPYTERHUB_ACTIVITY_INTERVAL": str(interval)}

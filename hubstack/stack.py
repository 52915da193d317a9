"""`hubstack up | down | status`: the platform's compose stack driven by the platform config.

`up` makes what is missing (secrets, images), starts the registry, pushes, starts the
hub, waits until it answers and prints the URL and how to log in. `down` stops the
notebooks and the stack and keeps every volume, home and secret. compose/.env (written
by render_env) lets plain `docker compose -f compose/compose.yaml up -d` work afterwards.
"""

from __future__ import annotations

import hashlib
import json
import socket
import ssl
import subprocess
import sys
import time
import urllib.error
import urllib.request
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from urllib.parse import urlsplit

import docker
import yaml
from cryptography import x509

from hubstack import doctor, networks, spark, spark_cluster, swarm_stack, tls
from hubstack.ci.promote import STABLE, adopt_first_build, ensure_local, releases_dir
from hubstack.config import (
    NO_CA,
    PYPI,
    PlatformConfig,
    check_certificate_name,
    is_loopback,
    local_hub_url,
)
from hubstack.engine import docker_client, platform_containers, project_name
from hubstack.errors import CommandError
from hubstack.hub import gpu, swarm_gpu
from hubstack.hub.container_spec import PROFILE_LABEL, USER_LABEL
from hubstack.hub.users_cli import ensure_initial_admin
from hubstack.images.bootstrap import bootstrap
from hubstack.images.build import ImageBuilder, push_image
from hubstack.images.graph import ImageGraph
from hubstack.registry import PULL, PUSH, USERS, RegistryClient, auth_config, htpasswd_file
from hubstack.secretfiles import generated_secret

HUB_USERS_DIR = "/etc/hubstack/users"
HUB_USER_IMAGE_TEMPLATE = "/usr/share/hubstack/user-image"
CI_SOURCE_DIR = "/srv/hubstack"
GENERATED = "# Written by `hubstack up` from the platform config; edit that instead."
CI_EXTRA_CA = "/etc/hubstack/extra-ca.pem"
HUB_LDAP_CA = "/etc/hubstack/ldap-ca.pem"
HUB_LDAP_SEARCH_PASSWORD = "/run/secrets/ldap_search_password"
HUB_OIDC_CA = "/etc/hubstack/oidc-ca.pem"
HUB_OIDC_CLIENT_SECRET = "/run/secrets/oidc_client_secret"
# The registry as a container on the platform network reaches it: compose/compose.yaml's
# service name and the server's own port inside its container.
PLATFORM_REGISTRY_ADDRESS = "registry:5000"
# The read-only and per-user instances as the hub's own registry API calls reach them on the
# platform network (compose/compose.yaml's service names; the same in the Swarm stack).
PULL_REGISTRY_API_ADDRESS = "registry-pull:5000"
USERS_REGISTRY_API_ADDRESS = "registry-users:5000"


def compose_file(cfg: PlatformConfig) -> Path:
    return cfg.source_root / "compose" / "compose.yaml"


def compose_files(cfg: PlatformConfig) -> list[Path]:
    """compose.yaml, and with hub.tls on compose/tls.yaml: the hub's certificate and key as
    compose secrets and the plain-HTTP redirect port (a port compose cannot leave out)."""
    files = [compose_file(cfg)]
    if cfg.hub.tls.enabled:
        files.append(compose_file(cfg).parent / "tls.yaml")
    return files


# --- secrets -------------------------------------------------------------------------
def ensure_secrets(cfg: PlatformConfig) -> None:
    """Cookie secret, proxy token, crypt key and the three registry accounts: made once,
    mode 0600. An install from before the pull or users role gets that account here, on its
    next `up`; the accounts it has stay as they are."""
    for name in ("jupyterhub-cookie-secret", "proxy-token", "jupyterhub-crypt-key"):
        generated_secret(cfg.secrets_dir / name)
    for role in (PUSH, PULL, USERS):
        htpasswd_file(cfg, role)  # each instance's one account and its htpasswd


# --- HTTPS ---------------------------------------------------------------------------
@dataclass(frozen=True)
class HubCertificate:
    """What the hub's proxy serves (hub.tls), as `up` prints it."""

    cert_file: Path
    key_file: Path
    leaf: x509.Certificate
    ca: tls.CertificateAuthority | None
    """The platform CA (self-signed mode); None for a site's own certificate."""
    note: str

    @property
    def fingerprint(self) -> str:
        return tls.fingerprint(self.leaf)


def hub_certificate_names(cfg: PlatformConfig) -> list[str]:
    """What the self-signed certificate holds: hub.tls.names, hub.host (or, bound to every
    address, this machine's host names), localhost and 127.0.0.1, subdomain_host's host and
    *.HOST (analysts' servers)."""
    names = list(cfg.hub.tls.names)
    if cfg.hub.host in ("0.0.0.0", "::"):
        names += [socket.gethostname(), socket.getfqdn()]
    else:
        names.append(cfg.hub.host)
    names += ["localhost", "127.0.0.1"]
    if cfg.hub.subdomain_host:
        host = urlsplit(cfg.hub.subdomain_host).hostname or ""
        names += [host, f"*.{host}"]
    out = []
    for name in names:
        try:
            out.append(check_certificate_name(name))
        except ValueError:
            continue  # a host name no certificate can hold (e.g. with '_'): left out
    return list(dict.fromkeys(out))


def ensure_hub_certificate(cfg: PlatformConfig) -> HubCertificate | None:
    """The certificate and key the hub's proxy serves, checked (files mode) or issued by
    the platform CA when missing, no longer matching the names, or near expiry
    (self-signed); None with hub.tls off."""
    mode = cfg.hub.tls.mode
    where = cfg.path or "the config"
    try:
        if mode == "files":
            chain = tls.check_served_files(cfg.hub_tls_cert_file, cfg.hub_tls_key_file)
            leaf = chain[0]
            key_mode = cfg.hub_tls_key_file.stat().st_mode & 0o777
            note = f"{cfg.hub_tls_cert_file}, valid until {leaf.not_valid_after_utc:%Y-%m-%d}"
            if key_mode & 0o077:
                note += f"; WARNING: {cfg.hub_tls_key_file} is mode {key_mode:o}, chmod 600 it"
            return HubCertificate(cfg.hub_tls_cert_file, cfg.hub_tls_key_file, leaf, None, note)
        if mode == "self-signed":
            ca = tls.platform_ca(cfg)
            issued = ca.ensure_server_certificate(
                hub_certificate_names(cfg), cfg.hub_tls_cert_file, cfg.hub_tls_key_file
            )
            note = (
                f"issued ({issued.reason})"
                if issued.reissued
                else f"kept (valid until {issued.not_after:%Y-%m-%d})"
            )
            return HubCertificate(issued.cert_file, issued.key_file, issued.certificate, ca, note)
    except tls.CertificateError as e:
        key = "hub.tls.cert / hub.tls.key" if mode == "files" else "hub.tls (self-signed)"
        raise CommandError(f"{where}: {key}: {e}") from None
    return None


def https_lines(cfg: PlatformConfig, cert: HubCertificate) -> list[str]:
    """What `up` says about HTTPS: what is served, and how to trust the platform CA."""
    names = ", ".join(sorted(tls.certificate_names(cert.leaf))) or "(no names)"
    redirect = f"http://{cfg.hub.host}:{cfg.hub.redirect_port}/ redirects to https"
    if cert.ca is None:
        return [
            f"HTTPS: your certificate ({cert.note}) for {names}; HSTS on; {redirect}",
            f"  SHA-256 fingerprint {cert.fingerprint}",
        ]
    ca = cert.ca.cert_file
    return [
        f"HTTPS: certificate from the platform's own CA, {cert.note}, for {names}; {redirect}",
        f"  CA certificate: {ca}",
        f"  CA SHA-256 fingerprint: {cert.ca.fingerprint}",
        "  trust it once on each client (compare the fingerprint when you copy it):",
        f"    curl --cacert {ca} {cfg.hub.public_url}",
        "    browser: import ca.pem as an authority (Chrome: Settings > Privacy and security >"
        " Security > Manage certificates > Authorities; Firefox: Settings > Privacy &"
        " Security > View Certificates > Authorities)",
        "    OS (Debian/Ubuntu): cp ca.pem /usr/local/share/ca-certificates/hubstack.crt &&"
        " update-ca-certificates; macOS: security add-trusted-cert -d -r trustRoot -k"
        " /Library/Keychains/System.keychain ca.pem; Windows: certutil -addstore Root ca.pem",
    ]


def _file_sha256(path: Path) -> str:
    try:
        return hashlib.sha256(path.read_bytes()).hexdigest()
    except OSError:
        return ""


# --- compose -------------------------------------------------------------------------
def hub_config(cfg: PlatformConfig) -> dict:
    """The platform config as the hub container sees it (its paths, not the host's)."""
    data = cfg.model_dump(mode="json", exclude={"path"})
    data["state_dir"] = "/srv/jupyterhub/state"
    data["source_dir"] = "/srv/jupyterhub"
    # The hub only pulls: its registry is the read-only instance, its one credential the
    # pull account's (compose secret registry_pull_credentials). Everything in the hub that
    # names, resolves or pulls our images goes through these two, so no code there needs
    # to know the push address or could reach the push account.
    data["registry"]["address"] = cfg.registry.pull_address
    data["registry"]["pull_address"] = cfg.registry.pull_address
    data["registry"]["credentials_file"] = "/run/secrets/registry_pull_credentials"
    # Its second account: the per-user images' instance, where it pushes what it builds.
    data["registry"]["users_credentials_file"] = "/run/secrets/registry_users_credentials"
    # Its own API calls (the per-user images' layer copy, the environment report) go to the
    # instances by service name: the published addresses are the host's loopback.
    data["registry"]["api_address"] = PULL_REGISTRY_API_ADDRESS
    data["registry"]["users_api_address"] = USERS_REGISTRY_API_ADDRESS
    if cfg.cluster.mode == "swarm":
        # The read-only instance serves HTTPS there, with a certificate for pull_address
        # (not for its service name), and the hub reaches that address as every node does:
        # its API calls go there over TLS, trusting the platform CA the stack mounts
        # (hubstack.swarm_stack.HUB_PLATFORM_CA).
        data["registry"]["api_address"] = None
        # So does the per-user images' instance: every node pulls from it over TLS (the
        # same certificate names its host), and the hub's calls take the same way.
        data["registry"]["users_api_address"] = None
    data["hub"]["users_file"] = f"{HUB_USERS_DIR}/{cfg.users_file.name}"
    data["hub"]["home_root"] = str(cfg.home_root)  # mounted at the same path
    data["hub"]["accounts_dir"] = str(cfg.container_accounts_dir)  # the same
    # The hub builds only per-user images, FROM parents that already trust the site CA.
    data["base"]["extra_ca_bundle"] = NO_CA
    data["ci"]["webhook_secret_file"] = None
    data["ci"]["token_file"] = None
    data["gpu"]["driver_dir"] = str(cfg.gpu.driver_dir)
    data["user_images"]["template"] = HUB_USER_IMAGE_TEMPLATE  # baked into the hub image
    ldap = data.get("auth", {}).get("ldap")
    if ldap:
        # compose/compose.yaml mounts them there (compose_env: HUBSTACK_LDAP_*).
        if ldap.get("ca_file"):
            ldap["ca_file"] = HUB_LDAP_CA
        if ldap.get("search_password_file"):
            ldap["search_password_file"] = HUB_LDAP_SEARCH_PASSWORD
    oidc = data.get("auth", {}).get("oidc")
    if oidc:
        # compose/compose.yaml mounts them there (compose_env: HUBSTACK_OIDC_*).
        if oidc.get("ca_file"):
            oidc["ca_file"] = HUB_OIDC_CA
        oidc["client_secret_file"] = HUB_OIDC_CLIENT_SECRET
    return data


def ci_builder_config(cfg: PlatformConfig) -> dict:
    """The platform config as the webhook builder container sees it (compose/ci.yaml): the
    state dir is mounted at its host path, the checkout read-only at CI_SOURCE_DIR."""
    data = cfg.model_dump(mode="json", exclude={"path"})
    data["source_dir"] = CI_SOURCE_DIR
    data["base"]["extra_ca_bundle"] = NO_CA if cfg.base.extra_ca_bundle is None else CI_EXTRA_CA
    # The host's index, resolved here: the container must not guess its own.
    data["base"]["pip_index_url"] = cfg.base.index_url or PYPI
    if not cfg.ci.host_network:
        # Inside its own network namespace: compose publishes ci.port on ci.host only, and the
        # registry's API answers at its service name there (127.0.0.1 is the container's own).
        data["ci"]["host"] = "0.0.0.0"
        data["registry"]["api_address"] = PLATFORM_REGISTRY_ADDRESS
    return data


def ci_network_mode(cfg: PlatformConfig) -> str:
    """compose/ci.yaml's network_mode: the host's network only when ci.host_network asks,
    else the platform network (by its name), where the registry's service name resolves."""
    return "host" if cfg.ci.host_network else cfg.hub.network


def ci_health_url(cfg: PlatformConfig) -> str:
    """Where the builder's healthcheck, run inside its container, finds /health."""
    host = cfg.ci.host if cfg.ci.host_network and cfg.ci.host != "0.0.0.0" else "127.0.0.1"
    return f"http://{host}:{cfg.ci.port}/health"


HUB_NOTHING_TO_HIDE = "/run/hubstack-nothing-hidden"


def hub_hidden_secrets(cfg: PlatformConfig) -> str:
    """Where, in the hub, an empty tmpfs covers the secrets dir. The hub mounts the users
    file's folder (so that a users file replaced atomically shows at once), and by default
    that is state_dir, which holds secrets/: the push credential, the webhook secret and
    the CI token would all be readable in the hub. Outside that folder: nothing to cover."""
    users_dir = cfg.users_file.parent.resolve()
    secrets_dir = cfg.secrets_dir.resolve()
    if secrets_dir == users_dir or secrets_dir in users_dir.parents:
        raise CommandError(
            f"{cfg.path or 'the config'}: hub.users_file: {cfg.users_file} is inside the "
            f"secrets folder {cfg.secrets_dir}, which the hub must not see; move it"
        )
    private = [cfg.registry_credentials_file, cfg.webhook_secret_file, cfg.ci_token_file]
    if cfg.auth.oidc is not None:
        private.append(cfg.oidc_client_secret_file)
    exposed = [
        f
        for f in private
        if users_dir in f.resolve().parents and secrets_dir not in f.resolve().parents
    ]
    if exposed:
        raise CommandError(
            f"{cfg.path or 'the config'}: {', '.join(map(str, exposed))}: inside the users "
            f"file's folder {users_dir}, which the hub mounts: keep secrets in {secrets_dir}"
        )
    if users_dir in secrets_dir.parents:
        return f"{HUB_USERS_DIR}/{secrets_dir.relative_to(users_dir)}"
    return HUB_NOTHING_TO_HIDE


def compose_env(cfg: PlatformConfig) -> dict[str, str]:
    if cfg.registry.pull_address == cfg.registry.address:
        raise CommandError(
            f"{cfg.path or 'the config'}: registry.pull_address: must differ from "
            "registry.address (the read-only instance for pulls listens on its own port)"
        )
    if cfg.registry.users_address in (cfg.registry.address, cfg.registry.pull_address):
        raise CommandError(
            f"{cfg.path or 'the config'}: registry.users_address: must differ from "
            "registry.address and registry.pull_address (the per-user images' instance "
            "listens on its own port)"
        )
    ldap, oidc = cfg.auth.ldap, cfg.auth.oidc
    env = {
        "COMPOSE_PROJECT_NAME": project_name(cfg),
        "HUBSTACK_NETWORK": cfg.hub.network,
        "HUBSTACK_REGISTRY_IMAGE": cfg.registry.image,
        "HUBSTACK_REGISTRY_ADDRESS": cfg.registry.address,
        "HUBSTACK_REGISTRY_PULL_ADDRESS": cfg.registry.pull_address,
        "HUBSTACK_REGISTRY_USERS_ADDRESS": cfg.registry.users_address,
        "HUBSTACK_HUB_IMAGE": cfg.image_ref(cfg.hub.image),
        "HUBSTACK_HUB_HOST": cfg.hub.host,
        "HUBSTACK_HUB_PORT": str(cfg.hub.port),
        "HUBSTACK_HUB_CONFIG": str(container_config_file(cfg, "hub")),
        "HUBSTACK_USERS_DIR": str(cfg.users_file.parent),
        "HUBSTACK_HUB_HIDDEN_SECRETS": hub_hidden_secrets(cfg),
        "HUBSTACK_RELEASES_DIR": str(releases_dir(cfg)),
        "HUBSTACK_HOME_ROOT": str(cfg.home_root),
        "HUBSTACK_CONTAINER_ACCOUNTS_DIR": str(cfg.container_accounts_dir),
        "HUBSTACK_SECRETS_DIR": str(cfg.secrets_dir),
        "HUBSTACK_REGISTRY_PULL_CREDENTIALS": str(cfg.registry_pull_credentials_file),
        "HUBSTACK_REGISTRY_USERS_CREDENTIALS": str(cfg.registry_users_credentials_file),
        # compose/ci.yaml, the webhook builder
        "HUBSTACK_STATE_DIR": str(cfg.state_dir),
        "HUBSTACK_SOURCE_DIR": str(cfg.source_root),
        "HUBSTACK_CI_CONFIG": str(container_config_file(cfg, "ci")),
        "HUBSTACK_CI_HOST": cfg.ci.host,
        "HUBSTACK_CI_PORT": str(cfg.ci.port),
        "HUBSTACK_CI_NETWORK_MODE": ci_network_mode(cfg),
        "HUBSTACK_CI_HEALTH_URL": ci_health_url(cfg),
        "HUBSTACK_EXTRA_CA": str(cfg.base.extra_ca_bundle or "/dev/null"),
        # auth.ldap's CA and search password, mounted read-only into the hub (hub_config)
        "HUBSTACK_LDAP_CA": str((ldap and ldap.ca_file) or "/dev/null"),
        "HUBSTACK_LDAP_SEARCH_PASSWORD": str((ldap and ldap.search_password_file) or "/dev/null"),
        # auth.oidc's provider CA and client secret, the same way
        "HUBSTACK_OIDC_CA": str((oidc and oidc.ca_file) or "/dev/null"),
        "HUBSTACK_OIDC_CLIENT_SECRET": str(
            cfg.oidc_client_secret_file if oidc and "oidc" in cfg.auth.sources else "/dev/null"
        ),
    }
    if cfg.hub.tls.enabled:
        # compose/tls.yaml. The certificate's digest is in the hub's environment so that a
        # renewed certificate recreates the container at the next `up` (the proxy reads its
        # files once, at start); sessions survive it (cookie secret and database are kept).
        env |= {
            "HUBSTACK_HUB_HTTP_PORT": str(cfg.hub.redirect_port),
            "HUBSTACK_TLS_CERT": str(cfg.hub_tls_cert_file),
            "HUBSTACK_TLS_KEY": str(cfg.hub_tls_key_file),
            "HUBSTACK_TLS_CERT_SHA256": _file_sha256(cfg.hub_tls_cert_file),
        }
    return env


def render_env(cfg: PlatformConfig) -> Path:
    """Write compose/.env and the containers' copies of the config; returns the .env path."""
    for service, data in (("hub", hub_config(cfg)), ("ci", ci_builder_config(cfg))):
        path = container_config_file(cfg, service)
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(GENERATED + "\n" + yaml.safe_dump(data, sort_keys=False))
    cfg.user_envs_dir.mkdir(parents=True, exist_ok=True)  # also makes the users folder
    cfg.accounts_file.parent.mkdir(exist_ok=True, mode=0o700)  # the hub writes logins there
    releases_dir(cfg).mkdir(parents=True, exist_ok=True)
    cfg.home_root.mkdir(parents=True, exist_ok=True, mode=0o755)
    cfg.container_accounts_dir.mkdir(parents=True, exist_ok=True, mode=0o755)
    text = "\n".join([GENERATED, *(f"{k}={v}" for k, v in compose_env(cfg).items())]) + "\n"
    # Our commands read the copy under state_dir (two platforms can share one checkout);
    # compose/.env is what a plain `docker compose -f compose/compose.yaml` reads.
    env_file(cfg).write_text(text)
    (compose_file(cfg).parent / ".env").write_text(text)
    return env_file(cfg)


def container_config_file(cfg: PlatformConfig, service: str) -> Path:
    """The platform config as SERVICE's container sees it (hub_config, ci_builder_config)."""
    return cfg.state_dir / service / "hubstack.yaml"


def env_file(cfg: PlatformConfig) -> Path:
    return cfg.state_dir / "hub" / "compose.env"


def compose(
    cfg: PlatformConfig, *args: str, check: bool = True, capture: bool = False
) -> subprocess.CompletedProcess:
    cmd = [
        "docker",
        "compose",
        *(arg for f in compose_files(cfg) for arg in ("-f", str(f))),
        "--env-file",
        str(env_file(cfg)),
        "-p",
        project_name(cfg),
        *args,
    ]
    try:
        result = subprocess.run(cmd, text=True, capture_output=capture)
    except FileNotFoundError:
        raise CommandError("the docker CLI is not installed") from None
    if check and result.returncode != 0:
        detail = (result.stderr or "").strip()[-2000:] if capture else ""
        raise CommandError(
            f"`{' '.join(cmd[1:])}` failed (exit {result.returncode}) {detail}".strip()
        )
    return result


def compose_model(cfg: PlatformConfig) -> dict:
    """The compose files with the platform's .env, as compose itself resolves them."""
    return json.loads(compose(cfg, "config", "--format", "json", capture=True).stdout)


# --- images --------------------------------------------------------------------------
def build_images(cfg: PlatformConfig, client) -> None:
    """Build the default image set (and the hub) in dependency order."""
    graph = ImageGraph.from_config(cfg)
    targets = list(graph.default_targets(cfg))
    results = ImageBuilder(cfg, client, graph=graph).build_many(targets)
    failed = [r for r in results if not r.ok]
    if failed:
        raise CommandError(
            "image build failed: " + "; ".join(f"{r.name}: {r.error}" for r in failed)
        )


def ensure_registry_image(cfg: PlatformConfig, client) -> None:
    """Base and registry images present: pulled, else built offline (hubstack.images.bootstrap)."""
    bootstrap(cfg, client)


def in_registry(cfg: PlatformConfig, client, registry: RegistryClient, name: str) -> str | None:
    """The digest under which the registry already holds this engine's NAME:TAG, else None
    (the engine records a digest per registry repository once it pushed or pulled it)."""
    digest = registry.digest(name, cfg.images.tag)
    repo_digests = client.images.get(cfg.image_ref(name)).attrs.get("RepoDigests") or []
    return digest if f"{cfg.image_repository(name)}@{digest}" in repo_digests else None


def push_images(cfg: PlatformConfig, client, names: list[str]) -> None:
    auth = auth_config(cfg)
    registry = RegistryClient(cfg)
    for name in names:
        # An unchanged image is not pushed again: a second `up` takes seconds, not a minute.
        digest = in_registry(cfg, client, registry, name)
        if digest:
            print(f"{name}: {cfg.image_ref(name)} already in the registry @ {digest}", flush=True)
            continue
        print(f"pushing {cfg.image_ref(name)}", flush=True)
        push_image(cfg, client, name, auth=auth)


def _say(line: str) -> None:
    print(line, flush=True)


def serve_images(cfg: PlatformConfig, client, names: list[str]) -> None:
    """Analysts start from hub.notebook_image_tag (`stable`): on a fresh install, this build
    becomes it once its tests pass; later builds wait for a promotion, and `up` says so."""
    tag = cfg.hub.notebook_image_tag
    if tag == STABLE:
        adopted = adopt_first_build(
            cfg, client, names, progress=lambda line: print(line, flush=True)
        )
        registry = RegistryClient(cfg)
        waiting = [
            n
            for n in names
            if n not in adopted and registry.digest(n, tag) != registry.digest(n, cfg.images.tag)
        ]
        if waiting:
            print(
                f"{', '.join(waiting)}: this build is {cfg.images.tag}; analysts stay on {tag} "
                "until `hubstack upgrade` (or `hubstack ci promote TAG`) moves it",
                flush=True,
            )
    ensure_local(cfg, client, [spark.EXECUTOR_IMAGE], tag)


def stack_images(cfg: PlatformConfig) -> list[str]:
    """Images the platform needs before it starts: its services' and its profiles' (on-demand
    images, such as the GPU one, are built and pushed when a site wants them)."""
    names = {cfg.hub.image}
    if any(p.spark for p in cfg.profiles):
        names.add(spark.EXECUTOR_IMAGE)  # each Spark analyst's own cluster runs it
    names.update(p.image for p in cfg.profiles if p.image not in cfg.images.on_demand)
    return sorted(names)


def local_images(cfg: PlatformConfig, client) -> list[str]:
    """Our images present in the engine under the registry's name (what gets pushed)."""
    repo = f"{cfg.image_prefix}/"
    names = set()
    # One listing, not docker-py's images.list(): that inspects every image after listing,
    # so an image removed meanwhile (a prune, another build's cleanup) failed `up` with
    # ImageNotFound, and an engine with many images paid one call per image.
    for image in client.api.images():
        for tag in image.get("RepoTags") or []:
            if tag.startswith(repo) and tag.endswith(f":{cfg.images.tag}"):
                names.add(tag[len(repo) :].rsplit(":", 1)[0])
    return sorted(names)


# --- waiting -------------------------------------------------------------------------
def hub_url(cfg: PlatformConfig) -> str:
    """The hub where this host publishes it (health checks); people use cfg.hub.public_url."""
    return local_hub_url(cfg.hub)


def wait_for_hub(
    cfg: PlatformConfig, timeout: float = 180, logs: str = "`docker compose logs hub`"
) -> None:
    """Until the hub answers /hub/health where it is published. With TLS, also that the
    proxy serves the certificate in hub_tls_cert_file (a liveness check of our own port,
    unverified: clients check the names they reach the hub by)."""
    url = hub_url(cfg) + "hub/health"
    context = None
    if cfg.hub.tls.enabled:
        context = ssl.create_default_context()
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    deadline = time.monotonic() + timeout
    last = ""
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(url, timeout=5, context=context) as r:
                if r.status == 200:
                    break
        except (urllib.error.URLError, OSError) as e:
            last = str(e)
        time.sleep(1)
    else:
        raise CommandError(
            f"the hub did not answer on {url} within {timeout:.0f}s ({last}); see {logs}"
        )
    if cfg.hub.tls.enabled:
        pem = ssl.get_server_certificate((cfg.hub.host, cfg.hub.port), timeout=10)
        served = tls.fingerprint(x509.load_pem_x509_certificate(pem.encode()))
        expected = tls.fingerprint(tls.load_chain(cfg.hub_tls_cert_file)[0])
        if served != expected:
            raise CommandError(
                f"the hub on {url} serves a certificate with SHA-256 {served}, not the one "
                f"in {cfg.hub_tls_cert_file} ({expected}); `hubstack up` recreates the hub"
            )


# --- commands ------------------------------------------------------------------------
UP_STAGES = (
    "checks",
    "secrets",
    "bootstrap",
    "build",
    "registry",
    "push",
    "stable",
    "start",
    "health",
)


class Stages:
    """One line per stage of a long command ("[up 3/8] build: ..."), and its total time."""

    def __init__(self, command: str, names: tuple[str, ...]) -> None:
        self.command, self.names = command, names
        self.started = time.monotonic()

    def __call__(self, name: str, what: str) -> None:
        index = self.names.index(name) + 1
        took = time.monotonic() - self.started
        print(
            f"[{self.command} {index}/{len(self.names)}] {name}: {what} (+{took:.0f}s)", flush=True
        )

    def total(self) -> str:
        return f"{time.monotonic() - self.started:.0f}s"


def preflight(cfg: PlatformConfig, names: tuple[str, ...] | None = None) -> str:
    """The cheap checks of `hubstack doctor` (NAMES, default all of them): a busy port or a
    missing compose plugin is one line now rather than a failure after minutes of
    building. Returns the summary line; raises on a FAIL."""
    checks = doctor.run_checks(cfg, names) if names else doctor.preflight(cfg)
    for check in checks:
        if check.verdict != doctor.OK:
            print(doctor.format_check(check), flush=True)
    failed = [c for c in checks if c.verdict == doctor.FAIL]
    if failed:
        raise CommandError(
            "cannot start: "
            + "; ".join(f"{c.name}: {c.found}" for c in failed)
            + " (each fix is above; `hubstack doctor` runs every check)"
        )
    engine = next(c.found for c in checks if c.name == "engine")
    return f"{doctor.format_summary(checks)} ({engine})"


def bootstrap_and_build(
    cfg: PlatformConfig, client, stage: Stages, no_build: bool, instead: str
) -> None:
    """`up`'s bootstrap and build stages, in either mode (INSTEAD: what --no-build uses)."""
    # The roots first: every build starts FROM the base image, and `up` on a fresh
    # engine must not depend on a separate bootstrap step.
    stage("bootstrap", f"base and registry images ({cfg.base.image}, {cfg.registry.image})")
    ensure_registry_image(cfg, client)
    if no_build:
        stage("build", f"skipped (--no-build): {instead}")
    else:
        stage("build", "the image hierarchy, parents first (unchanged images: cache hits)")
        build_images(cfg, client)


def cmd_up(cfg: PlatformConfig, args) -> int:
    if cfg.cluster.mode == "swarm":
        return up_swarm(cfg, args)
    stage = Stages("up", UP_STAGES)
    stage("checks", preflight(cfg))
    client = docker_client()
    ensure_secrets(cfg)
    certificate = ensure_hub_certificate(cfg)
    render_env(cfg)
    stage("secrets", f"state, secrets and compose/.env under {cfg.state_dir}")
    bootstrap_and_build(cfg, client, stage, args.no_build, "using the images in the engine")
    names = local_images(cfg, client)
    missing = [n for n in stack_images(cfg) if n not in names]
    if missing:
        raise CommandError(
            "the stack needs images that do not exist here: "
            + ", ".join(cfg.image_ref(n) for n in missing)
            + "; run without --no-build"
        )
    stage(
        "registry",
        f"starting the registry on {cfg.registry.address} (push), "
        f"{cfg.registry.pull_address} (read-only, for pulls) and "
        f"{cfg.registry.users_address} (per-user images)",
    )
    compose(cfg, "up", "-d", "--wait", "registry", "registry-pull", "registry-users")
    stage("push", f"{len(names)} images to {cfg.image_prefix}")
    push_images(cfg, client, names)
    served_tag = cfg.hub.notebook_image_tag
    stage("stable", f"what analysts and their Spark clusters start from ({served_tag})")
    serve_images(cfg, client, [n for n in stack_images(cfg) if n != cfg.hub.image])
    stage("start", "the hub (docker compose up --wait), and the analysts' network rules")
    guard_problem = networks.install_guard(cfg)
    if guard_problem:
        print(
            f"WARNING: analysts' networks are not guarded ({guard_problem}): a notebook can "
            "reach this host's ports and private addresses (docs/security.md)",
            flush=True,
        )
    compose(cfg, "up", "-d", "--wait")
    stage("health", f"waiting for {hub_url(cfg)}hub/health")
    wait_for_hub(cfg)
    print(f"\nhubstack is up in {stage.total()}: {cfg.hub.public_url}")
    say_how_to_log_in(cfg, certificate)
    return 0


def say_how_to_log_in(cfg: PlatformConfig, certificate) -> None:
    if certificate is not None:
        print("\n".join(https_lines(cfg, certificate)))
    admin = ensure_initial_admin(cfg)
    if admin:
        name, password = admin
        print(
            f"log in as {name} with password {password}  (shown once: change it, or keep it safe)"
        )
    else:
        print("log in with an account from the users file (`hubstack users list`)")


# The same stages; the platform starts as one `docker stack deploy`.
SWARM_UP_STAGES = tuple("deploy" if name == "start" else name for name in UP_STAGES)
# No port checks: Swarm publishes each port on the node it places the task on, which need
# not be the machine `up` runs on.
SWARM_CHECKS = ("python", "engine", "compose", "disk")


def users_address_warning(cfg: PlatformConfig) -> str | None:
    """What `up` says in swarm mode when registry.users_address is this manager's loopback
    (the default: the host of registry.address): no other node reaches per-user images
    there, so an analyst with packages of their own starts only where the hub runs."""
    address = cfg.registry.users_address
    if not is_loopback(address.rsplit(":", 1)[0].strip("[]")):
        return None
    return (
        f"  warning: registry.users_address {address} is this manager's loopback: other "
        "nodes cannot pull per-user images from it. Set it to an address every node "
        f"reaches, as registry.pull_address ({cfg.registry.pull_address}) is, with a port "
        "of its own (docs/multi-node.md, Per-user images)"
    )


def up_swarm(cfg: PlatformConfig, args) -> int:
    """`up` with cluster.mode: swarm, on a manager (or DOCKER_HOST naming one's socket): the
    same stages as on one host up to the push, which goes to the stack's own registry on
    this manager's loopback; then the whole platform as one `docker stack deploy`
    (hubstack.swarm_stack) with the hub as a plain container on this manager beside it, and
    the hub's /hub/health where that container publishes it."""
    stage = Stages("up", SWARM_UP_STAGES)
    # Before anything is written: on an engine that is no manager, nothing could be deployed.
    client = docker_client()
    api = swarm_stack.manager_api(client)
    summary = preflight(cfg, SWARM_CHECKS)
    socket_path = swarm_stack.engine_socket()
    stage("checks", f"{summary}; this engine is a Swarm manager ({socket_path})")
    ensure_secrets(cfg)
    certificate = ensure_hub_certificate(cfg)
    render_env(cfg)
    model = compose_model(cfg)
    path = swarm_stack.render(cfg, model, client.info()["Swarm"]["NodeID"])
    hub = swarm_stack.hub_container_spec(cfg, model, socket_path)
    stage("secrets", f"state, secrets and the stack file {path}")
    # The registry's services run its image on managers as the engine has it (no registry
    # to pull it from yet): a second manager needs it loaded too (docs/multi-node.md).
    bootstrap_and_build(
        cfg, client, stage, args.no_build, "the images in the engine or the registry"
    )
    project = project_name(cfg)
    stage(
        "registry",
        f"deploying the registries (stack {project}, on managers): push on "
        f"{cfg.registry.address}, read-only over TLS on {cfg.registry.pull_address} "
        f"(every node pulls there), per-user images on {cfg.registry.users_address}",
    )
    warning = users_address_warning(cfg)
    if warning:
        _say(warning)
    swarm_stack.deploy(cfg, swarm_stack.registries_file(cfg))
    swarm_stack.wait_running(api, project, swarm_stack.REGISTRIES, timeout=180, say=_say)
    registry = RegistryClient(cfg)
    registry.wait_ready(120)
    names = local_images(cfg, client)
    # An image this engine lacks may already be in the stack's registry (put there before,
    # or by another builder): the nodes pull from there, so it serves as well.
    missing = [
        n
        for n in stack_images(cfg)
        if n not in names and registry.digest(n, cfg.images.tag) is None
    ]
    if missing:
        raise CommandError(
            "the stack needs images that are neither in this engine nor in its registry: "
            + ", ".join(cfg.image_ref(n) for n in missing)
            + "; run without --no-build"
        )
    stage("push", f"{len(names)} images from this engine to {cfg.image_prefix}")
    push_images(cfg, client, names)
    served_tag = cfg.hub.notebook_image_tag
    stage("stable", f"what analysts start from ({served_tag})")
    # No executor image kept in this engine (single mode's ensure_local): the nodes pull
    # what their tasks run.
    if served_tag == STABLE:
        serve_images(cfg, client, [n for n in stack_images(cfg) if n != cfg.hub.image])
    stage(
        "deploy",
        f"the whole stack: docker stack deploy {project} ({path}), and the hub as the "
        f"container {hub.name} on this manager",
    )
    swarm_stack.deploy(cfg, path)
    swarm_stack.run_hub(cfg, api, hub)
    _say(f"  hub: {swarm_stack.hub_state(cfg, api)}")
    stage("health", f"waiting for {hub_url(cfg)}hub/health")
    wait_for_hub(cfg, logs=f"`docker logs {hub.name}`")
    print(f"\nhubstack is up in {stage.total()}: {cfg.hub.public_url} (Swarm stack {project})")
    say_how_to_log_in(cfg, certificate)
    return 0


def notebook_containers(cfg: PlatformConfig, client) -> list:
    return platform_containers(cfg, client, USER_LABEL)


def _stop_server(container, timeout: int) -> str:
    """Stop and remove one notebook container. A container that is already stopping, being
    removed (409) or gone (404) is an outcome, not an error: the engine may be removing it
    on its own after the stop (auto-remove), or the hub may be stopping it right now."""
    who = f"notebook server of {container.labels.get(USER_LABEL, '?')} ({container.name})"
    try:
        container.stop(timeout=timeout)
    except docker.errors.NotFound:
        return f"{who}: already gone"
    except docker.errors.APIError as e:
        if e.status_code != 409:
            raise
    try:
        container.remove(force=True)
    except docker.errors.NotFound:
        pass
    except docker.errors.APIError as e:
        if e.status_code != 409:  # "removal ... is already in progress"
            raise
    return f"stopped {who}"


def stop_servers(cfg: PlatformConfig, client, timeout: int = 10) -> list[str]:
    """Stop every notebook server of this platform at once, then their Spark clusters; one
    line per server. Their networks go once the hub is stopped (cmd_down)."""
    servers = notebook_containers(cfg, client)
    lines = []
    if servers:
        with ThreadPoolExecutor(max_workers=min(16, len(servers))) as pool:
            lines = list(pool.map(lambda c: _stop_server(c, timeout), servers))
    # One removal per cluster, not one per container of it.
    clusters = {
        c.labels[spark_cluster.CLUSTER_LABEL]
        for c in platform_containers(cfg, client, spark_cluster.CLUSTER_LABEL)
    }
    for server in clusters:
        spark_cluster.stop_cluster(client, server)
    return lines


def down_swarm(cfg: PlatformConfig, args) -> int:
    """The hub's container, the analysts' services (their homes are volumes on the nodes and
    stay, as the stack's volumes do), then `docker stack rm` of the platform."""
    api = swarm_stack.manager_api(docker_client())
    # The hub first: its container is on each analyst's network, which it would otherwise hold.
    hub = swarm_stack.remove_hub(cfg, api)
    if hub:
        print(f"removed the hub's container {swarm_stack.hub_container_name(cfg)}", flush=True)
    stopped = [] if args.keep_servers else swarm_stack.stop_servers(cfg, api)
    for line in stopped:
        print(line, flush=True)
    removed = swarm_stack.remove(cfg, api)
    if not removed and not stopped and not hub:
        print("nothing to stop: hubstack is not running")
        return 0
    print(f"removed the stack {project_name(cfg)}: {', '.join(removed) or 'no services'}")
    print("hubstack is down; data kept (volumes, homes, secrets)")
    return 0


def cmd_down(cfg: PlatformConfig, args) -> int:
    if cfg.cluster.mode == "swarm":
        return down_swarm(cfg, args)
    client = docker_client()
    render_env(cfg)
    services = compose(cfg, "ps", "--all", "--services", capture=True).stdout.split()
    # Notebooks first: they hold the network; their homes stay on the host.
    stopped = [] if args.keep_servers else stop_servers(cfg, client, timeout=args.timeout)
    for line in stopped:
        print(line, flush=True)
    if not services and not stopped:
        # A hub that stopped without `down` (killed, or the machine restarted) leaves them.
        _remove_analyst_networks(cfg, client)
        print("nothing to stop: hubstack is not running")
        return 0
    if args.keep_servers:
        # Containers go, the network stays: the analysts' servers are still on it.
        compose(cfg, "stop")
        compose(cfg, "rm", "--force")
        kept = [c.name for c in notebook_containers(cfg, client) if c.status == "running"]
        print(f"stopped {', '.join(services)}; kept {len(kept)} notebook server(s) running")
    else:
        compose(cfg, "down")  # no -v: the hub database and the registry's images stay
        print(f"stopped {', '.join(services)}")
        _remove_analyst_networks(cfg, client)
    print("hubstack is down; data kept (volumes, homes, secrets)")
    return 0


def _remove_analyst_networks(cfg: PlatformConfig, client) -> None:
    """The platform's analyst networks, then the engine-wide guard rules once no platform
    needs them. Only with the hub stopped: a running hub makes networks ahead whenever it is
    idle."""
    networks.remove_analyst_networks(cfg, client)
    if not networks.guard_still_needed(client):
        networks.remove_guard()


def status_swarm(cfg: PlatformConfig) -> int:
    api = swarm_stack.manager_api(docker_client())
    print(f"hub: {cfg.hub.public_url}")
    hub = swarm_stack.hub_state(cfg, api) or "not there"
    print(f"hub container (this manager):\n  {swarm_stack.hub_container_name(cfg):<40} {hub}")
    print(f"services (Swarm stack {project_name(cfg)}):")
    for service in sorted(swarm_stack.stack_services(cfg, api), key=lambda s: s["Spec"]["Name"]):
        task = swarm_stack.service_task(api, service["ID"])
        print(f"  {service['Spec']['Name']:<40} {swarm_stack.describe_task(task)}")
    servers = [s for s in swarm_stack.server_services(cfg, api) if swarm_stack.is_server(s)]
    print(f"\nnotebook servers: {len(servers)} (`hubstack nodes` shows where)")
    for s in servers:
        labels = s["Spec"].get("Labels") or {}
        print(f"  {labels.get(USER_LABEL, '?'):<20} {s['Spec']['Name']}")
    print()  # as on one host: the GPUs last, here every node's (`hubstack gpus`)
    print("\n".join(swarm_gpu.format_gpu_status(cfg, api)))
    return 0


def cmd_status(cfg: PlatformConfig, args) -> int:
    if cfg.cluster.mode == "swarm":
        return status_swarm(cfg)
    client = docker_client()
    render_env(cfg)
    print(f"hub: {cfg.hub.public_url}")
    print("services:")
    sys.stdout.flush()
    compose(cfg, "ps", "--all")
    servers = [c for c in notebook_containers(cfg, client) if c.status == "running"]
    print(f"\nnotebook servers running: {len(servers)}")
    for c in servers:
        print(
            f"  {c.labels.get(USER_LABEL):<20} profile={c.labels.get(PROFILE_LABEL, '?'):<10} "
            f"{c.name}  image={c.attrs['Config']['Image'][-71:]}"
        )
    print()
    print("\n".join(gpu.format_gpu_status(cfg, client, gpu.scan_root())))
    return 0


def register(subparsers) -> None:
    p = subparsers.add_parser(
        "up", help="bootstrap, build, push, start the platform and wait until the hub answers"
    )
    p.add_argument("--no-build", action="store_true", help="use the images already in the engine")
    p.set_defaults(func=cmd_up)
    p = subparsers.add_parser("down", help="stop notebooks and the stack; keep all data")
    p.add_argument(
        "--keep-servers",
        action="store_true",
        help="stop only the platform services; analysts' servers keep running (hub upgrade)",
    )
    p.add_argument(
        "--timeout",
        type=int,
        default=10,
        metavar="S",
        help="seconds each notebook server gets to stop before it is killed (default 10)",
    )
    p.set_defaults(func=cmd_down)
    p = subparsers.add_parser("status", help="show services and running notebook servers")
    p.set_defaults(func=cmd_status)

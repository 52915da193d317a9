"""A real OpenLDAP directory for the tests: Debian's slapd in a container built FROM the
project's root image, a CA and server certificate made here with `cryptography`, LDAPS on
636, and a small posixAccount/posixGroup tree loaded with ldapadd.

The certificates and LDIFs go into the container (put_archive) before it starts, never
into the image; the image only installs slapd and ldap-utils."""

from __future__ import annotations

import io
import tarfile
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

import docker

from hubstack.tls import CertificateAuthority

SUFFIX = "dc=hubtest,dc=org"
ADMIN_DN, ADMIN_PW = f"cn=admin,{SUFFIX}", "admin-pw-5d1e"
SEARCH_DN, SEARCH_PW = f"cn=hub-search,{SUFFIX}", "search-pw-83b0"
PEOPLE, GROUPS = f"ou=people,{SUFFIX}", f"ou=groups,{SUFFIX}"

DOCKERFILE = """\
ARG BASE
FROM ${BASE}
USER root
RUN apt-get update \\
 && apt-get install -y --no-install-recommends slapd ldap-utils \\
 && rm -rf /var/lib/apt/lists/* /etc/ldap/slapd.d/* /var/lib/ldap/*
CMD ["sh", "/ldap/start.sh"]
"""

START = """\
set -e
if [ ! -e /var/lib/ldap/.configured ]; then
    slapadd -n0 -F /etc/ldap/slapd.d -l /ldap/config.ldif
    touch /var/lib/ldap/.configured
fi
exec slapd -h "ldap://127.0.0.1/ ldaps:///" -F /etc/ldap/slapd.d -d 256
"""

CONFIG = f"""\
dn: cn=config
objectClass: olcGlobal
cn: config
olcPidFile: /run/slapd.pid
olcTLSCACertificateFile: /ldap/ca.pem
olcTLSCertificateFile: /ldap/server.pem
olcTLSCertificateKeyFile: /ldap/server.key

dn: cn=module{{0}},cn=config
objectClass: olcModuleList
cn: module{{0}}
olcModulePath: /usr/lib/ldap
olcModuleLoad: back_mdb

dn: cn=schema,cn=config
objectClass: olcSchemaConfig
cn: schema

include: file:///etc/ldap/schema/core.ldif
include: file:///etc/ldap/schema/cosine.ldif
include: file:///etc/ldap/schema/nis.ldif
include: file:///etc/ldap/schema/inetorgperson.ldif

dn: olcDatabase={{-1}}frontend,cn=config
objectClass: olcDatabaseConfig
objectClass: olcFrontendConfig
olcDatabase: {{-1}}frontend

dn: olcDatabase={{0}}config,cn=config
objectClass: olcDatabaseConfig
olcDatabase: {{0}}config
olcAccess: {{0}}to * by * none

dn: olcDatabase={{1}}mdb,cn=config
objectClass: olcDatabaseConfig
objectClass: olcMdbConfig
olcDatabase: {{1}}mdb
olcSuffix: {SUFFIX}
olcRootDN: {ADMIN_DN}
olcRootPW: {ADMIN_PW}
olcDbDirectory: /var/lib/ldap
olcAccess: {{0}}to attrs=userPassword by self auth by anonymous auth by * none
olcAccess: {{1}}to * by users read by * none
"""


@dataclass(frozen=True)
class Person:
    name: str
    password: str
    uid: int
    gid: int


def tree(people: list[Person], groups: dict[str, tuple[int, list[str]]]) -> str:
    """The directory's entries: the people (posixAccount) and posixGroups with memberUid."""
    out = [
        f"dn: {SUFFIX}\nobjectClass: dcObject\nobjectClass: organization\no: hubtest\ndc: hubtest",
        f"dn: {PEOPLE}\nobjectClass: organizationalUnit\nou: people",
        f"dn: {GROUPS}\nobjectClass: organizationalUnit\nou: groups",
        f"dn: {SEARCH_DN}\nobjectClass: organizationalRole\nobjectClass: simpleSecurityObject\n"
        f"cn: hub-search\nuserPassword: {SEARCH_PW}",
    ]
    for p in people:
        out.append(
            f"dn: uid={p.name},{PEOPLE}\nobjectClass: inetOrgPerson\nobjectClass: posixAccount\n"
            f"uid: {p.name}\ncn: {p.name}\nsn: {p.name}\nuidNumber: {p.uid}\ngidNumber: {p.gid}\n"
            f"homeDirectory: /home/{p.name}\nuserPassword: {p.password}"
        )
    for cn, (gid, members) in groups.items():
        lines = [f"dn: cn={cn},{GROUPS}", "objectClass: posixGroup", f"cn: {cn}"]
        lines += [f"gidNumber: {gid}", *(f"memberUid: {m}" for m in members)]
        out.append("\n".join(lines))
    return "\n\n".join(out) + "\n"


def make_ca_and_server_cert(host: str) -> tuple[bytes, bytes, bytes]:
    """(CA certificate, server certificate chain for HOST, server key), PEM: a CA of the
    test's own, made with the product's CA module (hubstack.tls)."""
    with tempfile.TemporaryDirectory() as tmp:
        folder = Path(tmp)
        ca = CertificateAuthority.ensure(
            folder / "ca.pem", folder / "ca.key", "hubstack test directory CA", days=2
        )
        ca.issue([host], folder / "server.pem", folder / "server.key", days=2)
        return tuple((folder / f).read_bytes() for f in ("ca.pem", "server.pem", "server.key"))


def _tar(files: dict[str, bytes]) -> bytes:
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        for name, data in files.items():
            info = tarfile.TarInfo(name)
            info.size, info.mode = len(data), 0o600 if name.endswith(".key") else 0o644
            tar.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def build_image(client: docker.DockerClient, base_ref: str, tag: str) -> None:
    client.images.build(
        fileobj=io.BytesIO(DOCKERFILE.encode()),
        tag=tag,
        buildargs={"BASE": base_ref},
        rm=True,
        forcerm=True,
        pull=False,
    )


def start_directory(
    client: docker.DockerClient,
    image: str,
    name: str,
    network: str,
    host: str,
    ca_pem: bytes,
    cert_pem: bytes,
    key_pem: bytes,
    entries: str,
):
    """slapd on NETWORK as HOST (LDAPS), loaded with ENTRIES through ldapadd."""
    container = client.containers.create(image, name=name, detach=True)
    files = {
        "ldap/start.sh": START.encode(),
        "ldap/config.ldif": CONFIG.encode(),
        "ldap/data.ldif": entries.encode(),
        "ldap/ca.pem": ca_pem,
        "ldap/server.pem": cert_pem,
        "ldap/server.key": key_pem,
    }
    container.put_archive("/", _tar(files))
    client.networks.get(network).connect(container, aliases=[host])
    container.start()
    load = [
        "ldapadd", "-x", "-H", "ldap://127.0.0.1/", "-D", ADMIN_DN, "-w", ADMIN_PW,
        "-f", "/ldap/data.ldif",
    ]  # fmt: skip
    deadline = time.monotonic() + 60
    while True:
        r = container.exec_run(load)
        if r.exit_code == 0:
            return container
        container.reload()
        if container.status != "running" or time.monotonic() > deadline:
            raise AssertionError(
                f"slapd did not take the tree: {r.output.decode()[-1000:]}\n"
                + container.logs().decode()[-3000:]
            )
        time.sleep(0.5)

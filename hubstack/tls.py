"""Certificates: one private certificate authority per platform, and the server
certificates it issues (the hub's HTTPS; the registry's under Swarm), with the
`cryptography` library.

The CA is made once and kept: its certificate is what people trust (a browser, the OS
store, `curl --cacert`), so it must not change under them. Its key is a private file
(mode 0600); so is each server key. A server certificate is issued again only when it
no longer fits: other names, near its end, from another CA, or its key lost.

    ca = CertificateAuthority.ensure(cert_file, key_file, "hubstack CA on host")
    issued = ca.ensure_server_certificate(["hub.example.org", "10.0.0.5"], crt, key)
    issued.reissued, issued.reason, ca.fingerprint, ca.spki_sha256

`check_served_files()` checks a certificate and key someone else issued (a site's own,
certbot's) before they are served.
"""

from __future__ import annotations

import base64
import datetime as dt
import ipaddress
import socket
from collections.abc import Iterable
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec, padding, rsa
from cryptography.hazmat.primitives.asymmetric.types import CertificateIssuerPrivateKeyTypes
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from hubstack.config import PlatformConfig, check_certificate_name
from hubstack.secretfiles import write_private

CA_DAYS = 3650
"""The CA lives ten years: re-trusting it is a chore for every analyst."""
SERVER_DAYS = 365
RENEW_BEFORE = dt.timedelta(days=30)
"""A server certificate with less than this left is issued again."""
_BACKDATE = dt.timedelta(minutes=5)  # clocks of clients a little behind still accept it


class CertificateError(Exception):
    """A certificate or key that cannot be used; the message says which file and why."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def subject_alt_names(names: Iterable[str]) -> list[x509.GeneralName]:
    """DNS and IP entries for NAMES (canonical, duplicates dropped, order kept)."""
    out: list[x509.GeneralName] = []
    for name in dict.fromkeys(check_certificate_name(n) for n in names):
        try:
            out.append(x509.IPAddress(ipaddress.ip_address(name)))
        except ValueError:
            out.append(x509.DNSName(name))
    return out


def certificate_names(cert: x509.Certificate) -> set[str]:
    """The DNS names and IP addresses a certificate's subjectAltName holds."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return set()
    return {n.lower() for n in san.get_values_for_type(x509.DNSName)} | {
        str(ip) for ip in san.get_values_for_type(x509.IPAddress)
    }


def fingerprint(cert: x509.Certificate) -> str:
    """SHA-256 of the certificate, as browsers and `openssl x509 -fingerprint -sha256` show it
    (AB:CD:...)."""
    return cert.fingerprint(hashes.SHA256()).hex(":").upper()


def spki_sha256(cert: x509.Certificate) -> str:
    """Base64 SHA-256 of the certificate's public key (SubjectPublicKeyInfo): what HPKP pins
    and Chromium's --ignore-certificate-errors-spki-list name a key by."""
    spki = cert.public_key().public_bytes(
        serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    digest = hashes.Hash(hashes.SHA256())
    digest.update(spki)
    return base64.b64encode(digest.finalize()).decode()


def load_chain(path: Path) -> list[x509.Certificate]:
    """Every certificate in a PEM file, leaf first as servers send them."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CertificateError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        chain = x509.load_pem_x509_certificates(data)
    except ValueError:
        chain = []
    if not chain:
        raise CertificateError(f"{path}: holds no PEM certificate")
    return chain


def load_key(path: Path) -> CertificateIssuerPrivateKeyTypes:
    """A PEM private key without a passphrase (a server starts without anyone to type it)."""
    try:
        data = Path(path).read_bytes()
    except OSError as e:
        raise CertificateError(f"{path}: cannot read it ({e.strerror or e})") from None
    try:
        key = serialization.load_pem_private_key(data, password=None)
    except TypeError:
        raise CertificateError(
            f"{path}: the key is encrypted; the proxy needs it without a passphrase"
        ) from None
    except ValueError:
        raise CertificateError(f"{path}: holds no PEM private key") from None
    if not isinstance(key, rsa.RSAPrivateKey | ec.EllipticCurvePrivateKey):
        raise CertificateError(f"{path}: only RSA and EC keys are served, got {type(key)}")
    return key


def _key_pem(key: CertificateIssuerPrivateKeyTypes) -> str:
    return key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    ).decode()


def _cert_pem(*certs: x509.Certificate) -> str:
    return "".join(c.public_bytes(serialization.Encoding.PEM).decode() for c in certs)


def _key_usage(signs_certificates: bool) -> x509.KeyUsage:
    """Signatures (ECDSA handshakes), and for a CA also certificates and CRLs."""
    return x509.KeyUsage(
        digital_signature=True,
        content_commitment=False,
        key_encipherment=False,
        data_encipherment=False,
        key_agreement=False,
        key_cert_sign=signs_certificates,
        crl_sign=signs_certificates,
        encipher_only=False,
        decipher_only=False,
    )


def _write_public(path: Path, pem: str) -> None:
    """A certificate file: readable by all (it is public), its folder made when missing."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(pem)
    path.chmod(0o644)


def _same_key(cert: x509.Certificate, key: CertificateIssuerPrivateKeyTypes) -> bool:
    def spki(k) -> bytes:
        return k.public_bytes(
            serialization.Encoding.DER, serialization.PublicFormat.SubjectPublicKeyInfo
        )

    return spki(cert.public_key()) == spki(key.public_key())


def _signed_by(cert: x509.Certificate, issuer: x509.Certificate) -> bool:
    if cert.issuer != issuer.subject:
        return False
    public = issuer.public_key()
    algorithm = cert.signature_hash_algorithm
    try:
        if isinstance(public, ec.EllipticCurvePublicKey) and algorithm is not None:
            public.verify(cert.signature, cert.tbs_certificate_bytes, ec.ECDSA(algorithm))
        elif isinstance(public, rsa.RSAPublicKey) and algorithm is not None:
            public.verify(cert.signature, cert.tbs_certificate_bytes, padding.PKCS1v15(), algorithm)
        else:
            return False
    except InvalidSignature:
        return False
    return True


def _new_key() -> ec.EllipticCurvePrivateKey:
    # P-256: what every browser and TLS library takes, and fast to make.
    return ec.generate_private_key(ec.SECP256R1())


@dataclass(frozen=True)
class Issued:
    """A server certificate as ensure_server_certificate left it."""

    cert_file: Path
    key_file: Path
    certificate: x509.Certificate
    reissued: bool
    reason: str
    """Why it was (re)issued, or why the existing one was kept."""

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def names(self) -> set[str]:
        return certificate_names(self.certificate)

    @property
    def not_after(self) -> dt.datetime:
        return self.certificate.not_valid_after_utc


@dataclass(frozen=True)
class CertificateAuthority:
    """A CA whose certificate (public) and key (mode 0600) live in two files."""

    cert_file: Path
    key_file: Path

    @classmethod
    def ensure(
        cls, cert_file: Path, key_file: Path, common_name: str, days: int = CA_DAYS
    ) -> CertificateAuthority:
        """The CA in these files, made there first if neither exists. One file without the
        other is an error (a half-restored backup): making a new CA would silently break
        every client that trusts the old one."""
        ca = cls(Path(cert_file), Path(key_file))
        if ca.cert_file.exists() != ca.key_file.exists():
            have, lost = (
                (ca.cert_file, ca.key_file)
                if ca.cert_file.exists()
                else (ca.key_file, ca.cert_file)
            )
            raise CertificateError(
                f"{lost}: missing while {have} exists; restore it from a backup, or remove "
                f"both to make a new CA (which everyone must then trust again)"
            )
        if not ca.cert_file.exists():
            ca._create(common_name, days)
        ca.check()
        return ca

    def _create(self, common_name: str, days: int) -> None:
        key = _new_key()
        name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common_name)])
        now = _now()
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(now + dt.timedelta(days=days))
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(_key_usage(signs_certificates=True), critical=True)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .sign(key, hashes.SHA256())
        )
        # Key first: a crash in between leaves a key without a certificate, which ensure()
        # reports, never a certificate nobody can sign with.
        write_private(self.key_file, _key_pem(key))
        _write_public(self.cert_file, _cert_pem(cert))

    @property
    def certificate(self) -> x509.Certificate:
        return load_chain(self.cert_file)[0]

    def _key(self) -> CertificateIssuerPrivateKeyTypes:
        return load_key(self.key_file)

    def check(self) -> None:
        """The files hold a CA certificate and its own key, with the key file private."""
        cert = self.certificate
        if not _same_key(cert, self._key()):
            raise CertificateError(f"{self.key_file}: is not the key of {self.cert_file}")
        mode = self.key_file.stat().st_mode & 0o777
        if mode & 0o077:
            raise CertificateError(
                f"{self.key_file}: mode {mode:o}, readable by others; `chmod 600` it"
            )

    @property
    def fingerprint(self) -> str:
        return fingerprint(self.certificate)

    @property
    def spki_sha256(self) -> str:
        return spki_sha256(self.certificate)

    def certificate_pem(self) -> str:
        """The CA's certificate, PEM: what clients and nodes are given to trust."""
        return _cert_pem(self.certificate)

    @property
    def common_name(self) -> str:
        return str(self.certificate.subject.get_attributes_for_oid(NameOID.COMMON_NAME)[0].value)

    def issue(
        self, names: Iterable[str], cert_file: Path, key_file: Path, days: int = SERVER_DAYS
    ) -> x509.Certificate:
        """A new key and a server certificate for NAMES (the first one is also the subject's
        CN), written to CERT_FILE (leaf, then this CA) and KEY_FILE (mode 0600)."""
        sans = subject_alt_names(names)
        if not sans:
            raise CertificateError("a server certificate needs at least one name")
        ca_cert, ca_key = self.certificate, self._key()
        key = _new_key()
        now = _now()
        not_after = min(now + dt.timedelta(days=days), ca_cert.not_valid_after_utc)
        cert = (
            x509.CertificateBuilder()
            .subject_name(
                x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, str(sans[0].value)[:64])])
            )
            .issuer_name(ca_cert.subject)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - _BACKDATE)
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName(sans), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(_key_usage(signs_certificates=False), critical=True)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), False)
            .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_key.public_key()), False
            )
            .sign(ca_key, hashes.SHA256())
        )
        write_private(key_file, _key_pem(key))
        # The chain a server sends: its own certificate, then the CA's.
        _write_public(Path(cert_file), _cert_pem(cert, ca_cert))
        return cert

    def reissue_reason(
        self, names: Iterable[str], cert_file: Path, key_file: Path, renew_before=RENEW_BEFORE
    ) -> str | None:
        """Why the server certificate in CERT_FILE/KEY_FILE must be issued again for NAMES;
        None when it still fits."""
        cert_file, key_file = Path(cert_file), Path(key_file)
        if not cert_file.exists() or not key_file.exists():
            return "none yet"
        try:
            cert = load_chain(cert_file)[0]
            key = load_key(key_file)
        except CertificateError as e:
            return f"unreadable ({e})"
        wanted = {str(n.value) for n in subject_alt_names(names)}
        have = certificate_names(cert)
        if wanted != have:
            added, dropped = sorted(wanted - have), sorted(have - wanted)
            parts = [f"+{n}" for n in added] + [f"-{n}" for n in dropped]
            return f"names changed ({', '.join(parts)})"
        if not _signed_by(cert, self.certificate):
            return "issued by another CA"
        if not _same_key(cert, key):
            return f"{key_file} is not its key"
        left = cert.not_valid_after_utc - _now()
        if left < renew_before:
            return f"expires in {max(left.days, 0)} days"
        return None

    def ensure_server_certificate(
        self,
        names: Iterable[str],
        cert_file: Path,
        key_file: Path,
        days: int = SERVER_DAYS,
        renew_before: dt.timedelta = RENEW_BEFORE,
    ) -> Issued:
        """The server certificate for NAMES in these files: kept when it still fits,
        otherwise issued again (Issued.reason says why)."""
        names = list(names)
        reason = self.reissue_reason(names, cert_file, key_file, renew_before)
        if reason is None:
            cert = load_chain(Path(cert_file))[0]
            return Issued(Path(cert_file), Path(key_file), cert, False, "still valid")
        cert = self.issue(names, cert_file, key_file, days)
        return Issued(Path(cert_file), Path(key_file), cert, True, reason)


def check_served_files(cert_file: Path, key_file: Path) -> list[x509.Certificate]:
    """A certificate chain and key that someone else issued, checked before the proxy serves
    them: both readable PEM, the key is the leaf's, the leaf valid now. Returns the chain."""
    chain = load_chain(cert_file)
    key = load_key(key_file)
    leaf = chain[0]
    if not _same_key(leaf, key):
        raise CertificateError(
            f"{key_file}: is not the key of the first certificate in {cert_file} "
            "(the chain must start with the server's own certificate)"
        )
    now = _now()
    if leaf.not_valid_after_utc <= now:
        raise CertificateError(
            f"{cert_file}: expired on {leaf.not_valid_after_utc:%Y-%m-%d %H:%M} UTC; renew it"
        )
    if leaf.not_valid_before_utc > now:
        raise CertificateError(
            f"{cert_file}: not valid before {leaf.not_valid_before_utc:%Y-%m-%d %H:%M} UTC"
        )
    return chain


def covers(cert: x509.Certificate, name: str) -> bool:
    """Whether a client connecting to NAME accepts CERT's names (one `*.` label matches one
    label, as RFC 6125 says)."""
    name = check_certificate_name(name)
    have = certificate_names(cert)
    if name in have:
        return True
    first, _, rest = name.partition(".")
    return bool(rest) and f"*.{rest}" in have


def platform_ca(cfg: PlatformConfig) -> CertificateAuthority:
    """The platform's one CA (STATE_DIR/tls/ca.pem, its key in STATE_DIR/secrets): it issues
    the hub's self-signed certificate and the registry's, so a browser and every node trust
    one certificate. Made on first use."""
    return CertificateAuthority.ensure(
        cfg.tls_ca_cert_file,
        cfg.tls_ca_key_file,
        f"hubstack CA ({socket.gethostname()}:{cfg.state_dir})"[:64],
    )

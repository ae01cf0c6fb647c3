"""TLS for the lean front: certificates signed by mitmproxy's CA, as the mitmproxy front presents.

Clients that trust ``~/.mitmproxy/mitmproxy-ca-cert.pem`` for the mitmproxy front
trust the lean front too. The CA is read from the same files mitmproxy keeps
(``mitmproxy-ca.pem``: key and certificate); where there is none yet it is made in
mitmproxy's layout, so that mitmproxy uses it later. Like mitmproxy, leaves use the
CA's key and name the host the client asked for (SNI), else the listening names.

Nothing here imports mitmproxy, and nothing runs before the first TLS ClientHello.
"""

from __future__ import annotations

import datetime
import ipaddress
import os
import ssl
import tempfile
import threading
from typing import Any
from pathlib import Path

DEFAULT_CONFDIR = "~/.mitmproxy"
BASENAME = "mitmproxy"
LEAF_DAYS = 365


def _now() -> datetime.datetime:
    return datetime.datetime.now(datetime.UTC)


def _create_ca(confdir: Path):
    """A CA in mitmproxy's layout and naming (CN and O 'mitmproxy'), written to confdir."""
    from cryptography import x509
    from cryptography.hazmat.primitives import hashes, serialization
    from cryptography.hazmat.primitives.asymmetric import rsa
    from cryptography.hazmat.primitives.serialization import pkcs12
    from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

    key = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    name = x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, BASENAME),
                      x509.NameAttribute(NameOID.ORGANIZATION_NAME, BASENAME)])
    now = _now()
    cert = (
        x509.CertificateBuilder()
        .serial_number(x509.random_serial_number())
        .subject_name(name)
        .issuer_name(name)
        .not_valid_before(now - datetime.timedelta(days=2))
        .not_valid_after(now + datetime.timedelta(days=3650))
        .public_key(key.public_key())
        .add_extension(x509.BasicConstraints(ca=True, path_length=None), critical=True)
        .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
        .add_extension(x509.KeyUsage(digital_signature=False, content_commitment=False, key_encipherment=False,
                                     data_encipherment=False, key_agreement=False, key_cert_sign=True,
                                     crl_sign=True, encipher_only=False, decipher_only=False), critical=True)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(key.public_key()), critical=False)
        .sign(key, hashes.SHA256())
    )
    key_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.TraditionalOpenSSL,
                                serialization.NoEncryption())
    cert_pem = cert.public_bytes(serialization.Encoding.PEM)
    confdir.mkdir(parents=True, exist_ok=True)
    old_umask = os.umask(0o077)
    try:
        (confdir / f"{BASENAME}-ca.pem").write_bytes(key_pem + cert_pem)
        (confdir / f"{BASENAME}-ca.p12").write_bytes(
            pkcs12.serialize_key_and_certificates(BASENAME.encode(), key, cert, None, serialization.NoEncryption()))
    finally:
        os.umask(old_umask)
    (confdir / f"{BASENAME}-ca-cert.pem").write_bytes(cert_pem)
    (confdir / f"{BASENAME}-ca-cert.cer").write_bytes(cert_pem)
    (confdir / f"{BASENAME}-ca-cert.p12").write_bytes(
        pkcs12.serialize_key_and_certificates(BASENAME.encode(), None, None, [cert], serialization.NoEncryption()))
    return key, cert


def ensure_ca(confdir: str | os.PathLike = DEFAULT_CONFDIR) -> Path:
    """The CA certificate clients are told to trust, made first if there is none (as mitmproxy does at start)."""
    path = Path(os.path.expanduser(str(confdir)))
    if not (path / f"{BASENAME}-ca.pem").exists():
        _create_ca(path)
    return path / f"{BASENAME}-ca-cert.pem"


def _load_ca(confdir: Path):
    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    path = confdir / f"{BASENAME}-ca.pem"
    if not path.exists():
        return _create_ca(confdir)
    data = path.read_bytes()
    return serialization.load_pem_private_key(data, None), x509.load_pem_x509_certificate(data)


class TlsCertificates:
    """Server SSL contexts with leaves signed by the CA in ``confdir``, one per host name, made on demand."""

    def __init__(self, confdir: str | os.PathLike = DEFAULT_CONFDIR, names: tuple[str, ...] = ()):
        self.confdir = Path(os.path.expanduser(str(confdir)))
        self.names = tuple(dict.fromkeys(n for n in (*names, "localhost", "127.0.0.1", "::1") if n))
        self._ca: tuple[Any, Any] | None = None  # (private key, CA certificate), loaded on first use
        self._contexts: dict[str, ssl.SSLContext] = {}
        self._lock = threading.Lock()

    def context(self) -> ssl.SSLContext:
        """The context the server wraps a connection in; SNI picks (or makes) the leaf for the asked name."""
        default = self._context_for(self.names)

        def pick(sock: ssl.SSLObject, server_name: str | None, _ctx: ssl.SSLContext) -> None:
            if server_name and server_name.lower() not in self.names:
                sock.context = self._context_for((server_name.lower(), *self.names))

        default.sni_callback = pick
        return default

    def _context_for(self, names: tuple[str, ...]) -> ssl.SSLContext:
        with self._lock:
            found = self._contexts.get(names[0])
            if found is None:
                found = self._contexts[names[0]] = self._make_context(names)
            return found

    def _load(self) -> tuple[Any, Any]:
        if self._ca is None:
            self._ca = _load_ca(self.confdir)
        return self._ca

    def _make_context(self, names: tuple[str, ...]) -> ssl.SSLContext:
        from cryptography.hazmat.primitives import serialization

        key, ca_cert = self._load()
        leaf = self._leaf(names)
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.set_alpn_protocols(["http/1.1"])
        # The stdlib loads a chain from files only: write one readable by this user alone, load it, remove it.
        fd, path = tempfile.mkstemp(prefix="ucsproxy-leaf-", suffix=".pem")
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                          serialization.NoEncryption()))
                f.write(leaf.public_bytes(serialization.Encoding.PEM))
                f.write(ca_cert.public_bytes(serialization.Encoding.PEM))
            ctx.load_cert_chain(path)
        finally:
            os.unlink(path)
        return ctx

    def _leaf(self, names: tuple[str, ...]):
        from cryptography import x509
        from cryptography.hazmat.primitives import hashes
        from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

        key, ca_cert = self._load()
        alt: list[x509.GeneralName] = []
        for n in names:
            try:
                alt.append(x509.IPAddress(ipaddress.ip_address(n)))
            except ValueError:
                alt.append(x509.DNSName(n))
        now = _now()
        return (
            x509.CertificateBuilder()
            .serial_number(x509.random_serial_number())
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, names[0][:64])]))
            .issuer_name(ca_cert.subject)
            .not_valid_before(now - datetime.timedelta(days=2))
            .not_valid_after(now + datetime.timedelta(days=LEAF_DAYS))
            .public_key(key.public_key())
            .add_extension(x509.SubjectAlternativeName(alt), critical=False)
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(x509.AuthorityKeyIdentifier.from_issuer_public_key(ca_cert.public_key()),
                           critical=False)
            .sign(key, hashes.SHA256())
        )

"""The proxy's local certificate authority: what lets the engine intercept CONNECT tunnels.

On first use :meth:`LocalCA.load_or_create` makes an EC P-256 self-signed CA (10 years) in the
given folder (0700):

- ``ca.pem``: the CA certificate (0644), what agents trust;
- ``ca-key.sealed``: the CA's private key sealed with the vault's sealer (aad ``b"proxy-ca"``),
  or, without a sealer, ``ca-key.pem`` (0600);
- ``bundle.pem``: the system CA bundle followed by ``ca.pem``, for ``SSL_CERT_FILE`` and friends
  (tools that replace rather than extend their trust store still reach the real internet).

Creation holds an exclusive ``flock`` on ``ca.lock`` and re-checks inside it, so two processes
starting at once end up with one CA. Leaf certificates (one per host name or IP, signed by the
CA, ~397 days) are minted when a host is first intercepted and kept in an in-memory LRU as ready
``ssl.SSLContext`` objects; every leaf shares one EC key made at start-up, so minting is one
signature. Nothing here logs or raises with key material.
"""

from __future__ import annotations

import base64
import contextlib
import datetime as dt
import fcntl
import ipaddress
import json
import os
import socket
import ssl
import tempfile
import threading
from collections import OrderedDict
from collections.abc import Iterator
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from valetkey_hookspecs import Sealed, Sealer
from valetkey_hookspecs.files import atomic_write, private_dir

#: the associated data of the sealed CA key
SEAL_AAD = b"proxy-ca"
CA_VALIDITY = dt.timedelta(days=3650)
LEAF_VALIDITY = dt.timedelta(days=397)
LEAF_CACHE_SIZE = 1000


class CAError(Exception):
    """The CA files cannot be read or used (never carries key material)."""


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


@contextlib.contextmanager
def _locked(path: Path) -> Iterator[None]:
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        fcntl.flock(fd, fcntl.LOCK_UN)
        os.close(fd)


def _encode_sealed(sealed: Sealed) -> bytes:
    doc = {
        "version": 1,
        "key_id": sealed.key_id,
        "wrapped_key": base64.b64encode(sealed.wrapped_key).decode(),
        "ciphertext": base64.b64encode(sealed.ciphertext).decode(),
    }
    return json.dumps(doc).encode()


def _decode_sealed(data: bytes) -> Sealed:
    try:
        doc = json.loads(data)
        return Sealed(
            ciphertext=base64.b64decode(doc["ciphertext"]),
            wrapped_key=base64.b64decode(doc["wrapped_key"]),
            key_id=str(doc["key_id"]),
        )
    except (ValueError, KeyError, TypeError) as exc:
        raise CAError("ca-key.sealed is not a sealed key file") from exc


def _system_bundle() -> bytes:
    """The system's CA bundle (PEM), or b"" when this Python knows none."""
    paths = ssl.get_default_verify_paths()
    for candidate in (paths.cafile, paths.openssl_cafile):
        if candidate and os.path.isfile(candidate):
            with contextlib.suppress(OSError):
                return Path(candidate).read_bytes()
    return b""


class LocalCA:
    """A loaded CA: its certificate, its key (in memory only) and the leaf cache."""

    def __init__(
        self, folder: Path, cert: x509.Certificate, key: ec.EllipticCurvePrivateKey
    ) -> None:
        self.folder = folder
        self.cert = cert
        self._key = key
        self._leaf_key = ec.generate_private_key(ec.SECP256R1())
        self._leaf_key_pem = self._leaf_key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        self._ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        self._contexts: OrderedDict[str, ssl.SSLContext] = OrderedDict()
        self._mutex = threading.Lock()
        self.minted = 0

    # ------------------------------------------------------------------ files

    @property
    def cert_path(self) -> Path:
        """``ca.pem``: the CA certificate agents trust."""
        return self.folder / "ca.pem"

    @property
    def bundle_path(self) -> Path:
        """``bundle.pem``: the system CAs plus ours."""
        return self.folder / "bundle.pem"

    @classmethod
    def load_or_create(cls, folder: Path, sealer: Sealer | None) -> LocalCA:
        """The CA in ``folder``, made there first if there is none (under a file lock)."""
        private_dir(folder)
        with _locked(folder / "ca.lock"):
            cert_path = folder / "ca.pem"
            sealed_path, pem_path = folder / "ca-key.sealed", folder / "ca-key.pem"
            if cert_path.exists() and (sealed_path.exists() or pem_path.exists()):
                ca = cls._load(folder, sealer)
            else:
                ca = cls._create(folder, sealer)
            if not ca.bundle_path.exists():
                ca._write_bundle()
            return ca

    @classmethod
    def _load(cls, folder: Path, sealer: Sealer | None) -> LocalCA:
        sealed_path, pem_path = folder / "ca-key.sealed", folder / "ca-key.pem"
        if sealed_path.exists():
            if sealer is None:
                raise CAError(f"{sealed_path} is sealed and no sealer is configured")
            key_pem = sealer.open(_decode_sealed(sealed_path.read_bytes()), SEAL_AAD)
        else:
            key_pem = pem_path.read_bytes()
        try:
            key = serialization.load_pem_private_key(key_pem, password=None)
            cert = x509.load_pem_x509_certificate((folder / "ca.pem").read_bytes())
        except ValueError:
            raise CAError(f"the proxy CA in {folder} cannot be read") from None
        if not isinstance(key, ec.EllipticCurvePrivateKey):
            raise CAError(f"the proxy CA key in {folder} is not an EC key")
        return cls(folder, cert, key)

    @classmethod
    def _create(cls, folder: Path, sealer: Sealer | None) -> LocalCA:
        key = ec.generate_private_key(ec.SECP256R1())
        name = x509.Name(
            [
                x509.NameAttribute(
                    NameOID.COMMON_NAME, f"valetkey local proxy CA {socket.gethostname()}"[:64]
                ),
                x509.NameAttribute(NameOID.ORGANIZATION_NAME, "valetkey"),
            ]
        )
        now = _now()
        ski = x509.SubjectKeyIdentifier.from_public_key(key.public_key())
        cert = (
            x509.CertificateBuilder()
            .subject_name(name)
            .issuer_name(name)
            .public_key(key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(now + CA_VALIDITY)
            .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=True,
                    crl_sign=True,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(ski, critical=False)
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(ski),
                critical=False,
            )
            .sign(key, hashes.SHA256())
        )
        key_pem = key.private_bytes(
            serialization.Encoding.PEM,
            serialization.PrivateFormat.PKCS8,
            serialization.NoEncryption(),
        )
        # key first: a ca.pem without its key is treated as "no CA" and made again
        if sealer is not None:
            atomic_write(folder / "ca-key.sealed", _encode_sealed(sealer.seal(key_pem, SEAL_AAD)))
            with contextlib.suppress(FileNotFoundError):
                (folder / "ca-key.pem").unlink()
        else:
            atomic_write(folder / "ca-key.pem", key_pem)
        atomic_write(folder / "ca.pem", cert.public_bytes(serialization.Encoding.PEM), 0o644)
        ca = cls(folder, cert, key)
        ca._write_bundle()
        return ca

    def _write_bundle(self) -> None:
        system = _system_bundle()
        if system and not system.endswith(b"\n"):
            system += b"\n"
        ours = self.cert.public_bytes(serialization.Encoding.PEM)
        atomic_write(self.bundle_path, system + ours, 0o644)

    # ------------------------------------------------------------------ leaves

    def server_context(self, host: str) -> ssl.SSLContext:
        """A server-side TLS context presenting a leaf certificate for ``host`` (minted on first
        use, then cached; ALPN ``http/1.1``)."""
        host = host.lower()
        with self._mutex:
            ctx = self._contexts.get(host)
            if ctx is not None:
                self._contexts.move_to_end(host)
                return ctx
        ctx = self._make_context(host)
        with self._mutex:
            self._contexts[host] = ctx
            self._contexts.move_to_end(host)
            while len(self._contexts) > LEAF_CACHE_SIZE:
                self._contexts.popitem(last=False)
        return ctx

    def leaf_certificate(self, host: str) -> x509.Certificate:
        """A freshly signed leaf certificate for ``host`` (DNS name or IP address)."""
        try:
            san: x509.GeneralName = x509.IPAddress(ipaddress.ip_address(host))
        except ValueError:
            san = x509.DNSName(host)
        now = _now()
        not_after = min(now + LEAF_VALIDITY, self.cert.not_valid_after_utc)
        common = host if len(host) <= 64 else "valetkey intercepted host"
        self.minted += 1
        return (
            x509.CertificateBuilder()
            .subject_name(x509.Name([x509.NameAttribute(NameOID.COMMON_NAME, common)]))
            .issuer_name(self.cert.subject)
            .public_key(self._leaf_key.public_key())
            .serial_number(x509.random_serial_number())
            .not_valid_before(now - dt.timedelta(days=1))
            .not_valid_after(not_after)
            .add_extension(x509.SubjectAlternativeName([san]), critical=False)
            .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
            .add_extension(
                x509.KeyUsage(
                    digital_signature=True,
                    content_commitment=False,
                    key_encipherment=False,
                    data_encipherment=False,
                    key_agreement=False,
                    key_cert_sign=False,
                    crl_sign=False,
                    encipher_only=False,
                    decipher_only=False,
                ),
                critical=True,
            )
            .add_extension(x509.ExtendedKeyUsage([ExtendedKeyUsageOID.SERVER_AUTH]), critical=False)
            .add_extension(
                x509.SubjectKeyIdentifier.from_public_key(self._leaf_key.public_key()),
                critical=False,
            )
            .add_extension(
                x509.AuthorityKeyIdentifier.from_issuer_subject_key_identifier(self._ski),
                critical=False,
            )
            .sign(self._key, hashes.SHA256())
        )

    def _make_context(self, host: str) -> ssl.SSLContext:
        leaf = self.leaf_certificate(host)
        chain = leaf.public_bytes(serialization.Encoding.PEM) + self._leaf_key_pem
        ctx = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        ctx.minimum_version = ssl.TLSVersion.TLSv1_2
        ctx.set_alpn_protocols(["http/1.1"])
        _load_chain(ctx, chain)
        return ctx


def _load_chain(ctx: ssl.SSLContext, pem: bytes) -> None:
    """``ctx.load_cert_chain`` from memory: an anonymous memfd on Linux, else a private temp
    file removed at once (``ssl`` only loads chains from paths)."""
    memfd = getattr(os, "memfd_create", None)
    if memfd is not None:
        fd = memfd("valetkey-leaf", 0)
        try:
            os.write(fd, pem)
            ctx.load_cert_chain(f"/proc/self/fd/{fd}")
            return
        except OSError:
            pass
        finally:
            os.close(fd)
    with tempfile.TemporaryDirectory(prefix="valetkey-leaf-") as tmp:
        path = Path(tmp) / "leaf.pem"
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
        with os.fdopen(fd, "wb") as handle:
            handle.write(pem)
        ctx.load_cert_chain(path)

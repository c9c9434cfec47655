"""The proxy's local CA (``ca.py``): made once and reused, its key sealed with the real local
sealer (or 0600 without one), private folder, leaves that verify for their host and are cached,
one CA when several processes start at once."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives import serialization

from valetkey_hookspecs import SealError
from valetkey_proxy.ca import LocalCA
from valetkey_sealer_local.sealer import LocalSealer


class DictSecrets:
    """A dict-backed secret store for the real sealer."""

    description = "memory"

    def __init__(self) -> None:
        self.data: dict[str, str] = {}

    def get(self, key: str) -> str | None:
        return self.data.get(key)

    def set(self, key: str, value: str) -> None:
        self.data[key] = value

    def delete(self, key: str) -> None:
        self.data.pop(key, None)


@pytest.fixture
def sealer(tmp_path: Path) -> LocalSealer:
    return LocalSealer(DictSecrets(), home=tmp_path / "vault", environ={})


def _mode(path: Path) -> int:
    return path.stat().st_mode & 0o777


def test_created_once_then_reused(tmp_path: Path) -> None:
    folder = tmp_path / "proxy" / "ca"
    first = LocalCA.load_or_create(folder, None)
    again = LocalCA.load_or_create(folder, None)
    assert first.cert.serial_number == again.cert.serial_number
    assert first.cert_path == folder / "ca.pem"
    cert = x509.load_pem_x509_certificate(first.cert_path.read_bytes())
    assert cert.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    assert cert.extensions.get_extension_for_class(x509.KeyUsage).value.key_cert_sign
    assert "valetkey local proxy CA" in cert.subject.rfc4514_string()
    assert (cert.not_valid_after_utc - cert.not_valid_before_utc).days >= 3650
    assert _mode(folder) == 0o700
    assert _mode(folder / "ca.pem") == 0o644
    assert _mode(folder / "ca-key.pem") == 0o600
    assert b"PRIVATE KEY" in (folder / "ca-key.pem").read_bytes()
    assert not (folder / "ca-key.sealed").exists()


def test_key_is_sealed_when_there_is_a_sealer(tmp_path: Path, sealer: LocalSealer) -> None:
    folder = tmp_path / "ca"
    first = LocalCA.load_or_create(folder, sealer)
    sealed = (folder / "ca-key.sealed").read_bytes()
    assert b"PRIVATE KEY" not in sealed
    assert not (folder / "ca-key.pem").exists()
    assert _mode(folder / "ca-key.sealed") == 0o600
    for path in folder.iterdir():  # no file holds the key in the clear
        assert b"PRIVATE KEY" not in path.read_bytes()
    again = LocalCA.load_or_create(folder, sealer)
    assert again.cert.serial_number == first.cert.serial_number
    # the reloaded key is the CA's: a leaf it signs verifies against ca.pem
    leaf = again.leaf_certificate("api.github.test")
    leaf.verify_directly_issued_by(first.cert)
    other = LocalSealer(DictSecrets(), home=tmp_path / "other-vault", environ={})
    with pytest.raises(SealError):  # another vault's sealer cannot open it
        LocalCA.load_or_create(folder, other)


def test_bundle_holds_the_system_store_and_our_ca(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "ca", None)
    bundle = ca.bundle_path.read_bytes()
    ours = ca.cert.public_bytes(serialization.Encoding.PEM)
    assert bundle.endswith(ours)
    paths = ssl.get_default_verify_paths()
    system = paths.cafile or paths.openssl_cafile
    if system and os.path.isfile(system):
        assert bundle.count(b"BEGIN CERTIFICATE") > 1
    ctx = ssl.create_default_context(cafile=str(ca.bundle_path))
    assert ctx.cert_store_stats()["x509_ca"] >= 1


def _handshake(server_ctx: ssl.SSLContext, cafile: Path, name: str) -> str | None:
    """A TLS handshake in memory: a client trusting ``cafile`` checks ``name``."""
    client_ctx = ssl.create_default_context(cafile=str(cafile))
    client_ctx.set_alpn_protocols(["h2", "http/1.1"])
    c_in, c_out, s_in, s_out = (ssl.MemoryBIO() for _ in range(4))
    client = client_ctx.wrap_bio(c_in, c_out, server_hostname=name)
    server = server_ctx.wrap_bio(s_in, s_out, server_side=True)
    done = {"c": False, "s": False}
    for _ in range(10):
        for key, side in (("c", client), ("s", server)):
            if not done[key]:
                try:
                    side.do_handshake()
                    done[key] = True
                except ssl.SSLWantReadError:
                    pass
        s_in.write(c_out.read())
        c_in.write(s_out.read())
        if all(done.values()):
            break
    assert all(done.values())
    return client.selected_alpn_protocol()


def test_leaf_verifies_for_its_host_and_is_cached(tmp_path: Path) -> None:
    ca = LocalCA.load_or_create(tmp_path / "ca", None)
    ctx = ca.server_context("API.GitHub.test")
    assert ca.server_context("api.github.test") is ctx
    assert ca.minted == 1
    assert _handshake(ctx, ca.cert_path, "api.github.test") == "http/1.1"
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ctx, ca.cert_path, "evil.test")
    ip_ctx = ca.server_context("127.0.0.1")
    _handshake(ip_ctx, ca.cert_path, "127.0.0.1")
    assert ca.minted == 2
    # a client that does not trust our CA refuses the leaf
    stranger = LocalCA.load_or_create(tmp_path / "other", None)
    with pytest.raises(ssl.SSLCertVerificationError):
        _handshake(ctx, stranger.cert_path, "api.github.test")


def test_concurrent_load_or_create_makes_one_ca(tmp_path: Path) -> None:
    folder = tmp_path / "ca"
    code = (
        "import sys; from pathlib import Path; from valetkey_proxy.ca import LocalCA; "
        "print(LocalCA.load_or_create(Path(sys.argv[1]), None).cert.serial_number)"
    )
    procs = [
        subprocess.Popen(
            [sys.executable, "-c", code, str(folder)], stdout=subprocess.PIPE, text=True
        )
        for _ in range(6)
    ]
    serials = {p.communicate(timeout=60)[0].strip() for p in procs}
    assert all(p.returncode == 0 for p in procs)
    assert len(serials) == 1
    assert LocalCA.load_or_create(folder, None).cert.serial_number == int(serials.pop())

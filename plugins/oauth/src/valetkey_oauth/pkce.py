"""PKCE (RFC 7636) and the ``state`` parameter: random values, base64url without padding."""

from __future__ import annotations

import base64
import hashlib
import secrets

#: what the authorization URL says about the challenge
CHALLENGE_METHOD = "S256"


def _b64url(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode("ascii")


def new_verifier() -> str:
    """A code verifier: 32 random bytes, base64url without padding — 43 characters, the
    shortest RFC 7636 allows, from its unreserved alphabet."""
    return _b64url(secrets.token_bytes(32))


def challenge(verifier: str) -> str:
    """The S256 code challenge: ``base64url(sha256(ascii(verifier)))`` without padding."""
    return _b64url(hashlib.sha256(verifier.encode("ascii")).digest())


def new_state() -> str:
    """A ``state`` value against CSRF: 32 random bytes, base64url without padding."""
    return _b64url(secrets.token_bytes(32))

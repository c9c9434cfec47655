"""OpenID Connect sign-in for box activation and the admin UI (``[plugin.boxes.oidc]``).

:class:`OidcClient` speaks to one provider: issuer discovery
(``<issuer>/.well-known/openid-configuration``, whose ``issuer`` must be the configured one), the
authorization-code request with PKCE (S256), state and nonce, the code exchange (the client
secret sent with ``client_secret_basic``, or ``client_secret_post`` when that is all the provider
offers; no secret: a public client), and the ID token's validation by joserfc: the signature
against the provider's JWKS (asymmetric algorithms only; re-fetched once for an unknown key id),
``iss``, ``aud`` (and ``azp`` when several audiences), ``exp``/``iat``/``nbf`` and the ``nonce``.
Claims the ID token lacks (``email``, ``email_verified``, ``hd`` — a provider that conforms to
the code flow puts them in userinfo) come from the userinfo endpoint, for the same ``sub``.

:func:`refusal` is the policy: a verified e-mail, the hosted domain (``hd``) when configured, and
the allow-lists (domains, e-mails); :func:`is_admin` checks ``[plugin.boxes] admins``.

Nothing secret (client secret, code, verifier, tokens) appears in an error message or a log line.
"""

from __future__ import annotations

import asyncio
import base64
import hashlib
import time
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote, urlencode

import httpx
from joserfc import jwt
from joserfc.errors import JoseError
from joserfc.jwk import KeySet

from valetkey_hookspecs import Unauthorized
from valetkey_hookspecs.redaction import register_secret

from .config import BoxesConfig, OidcConfig

#: signature algorithms an ID token may use (never ``none``, never a shared-secret HMAC)
ASYMMETRIC = (
    "RS256",
    "RS384",
    "RS512",
    "PS256",
    "PS384",
    "PS512",
    "ES256",
    "ES384",
    "ES512",
    "EdDSA",
)
#: seconds discovery and the JWKS are cached
METADATA_TTL = 3600.0
#: clock skew tolerated on exp / iat / nbf
LEEWAY = 60
HTTP_TIMEOUT = 10.0


class SignInRefused(Unauthorized):
    """The provider or the policy refused a sign-in (the message is safe to show)."""

    def __init__(self, message: str, status: int = 401) -> None:
        super().__init__(message)
        self.status = status


@dataclass(frozen=True)
class Identity:
    """Who signed in, as the provider vouches (from a validated ID token / userinfo)."""

    issuer: str
    sub: str
    email: str
    email_verified: bool
    hd: str = ""
    name: str = ""

    @property
    def domain(self) -> str:
        """The e-mail's domain, lower case."""
        return self.email.rsplit("@", 1)[-1].lower() if "@" in self.email else ""

    def as_data(self) -> dict[str, Any]:
        """For a web-session record."""
        return {
            "issuer": self.issuer,
            "sub": self.sub,
            "email": self.email,
            "email_verified": self.email_verified,
            "hd": self.hd,
            "name": self.name,
        }

    @classmethod
    def from_data(cls, data: Any) -> Identity:
        """From :meth:`as_data`."""
        return cls(
            issuer=str(data.get("issuer") or ""),
            sub=str(data.get("sub") or ""),
            email=str(data.get("email") or ""),
            email_verified=data.get("email_verified") is True,
            hd=str(data.get("hd") or ""),
            name=str(data.get("name") or ""),
        )


def refusal(config: OidcConfig, identity: Identity) -> str | None:
    """Why ``identity`` may not activate boxes, or None when it may."""
    if not identity.email or "@" not in identity.email:
        return "the provider did not give an e-mail address"
    if not identity.email.isascii():
        # str.lower() folds look-alikes (the Kelvin sign K → k): compare plain ASCII only
        return "this e-mail address has non-ASCII characters; ask for an ASCII address"
    if not identity.email_verified:
        return "the provider has not verified this e-mail address"
    if config.hosted_domain and identity.hd != config.hosted_domain:
        return "this account is not in the required hosted domain"
    email = identity.email.lower()
    if email in config.allowed_emails or identity.domain in config.allowed_domains:
        return None
    return "this account is not on the list of people who may activate boxes"


def is_admin(config: BoxesConfig, identity: Identity) -> bool:
    """A verified e-mail on ``[plugin.boxes] admins`` (and in the hosted domain, if set)."""
    if not identity.email_verified or not identity.email or not identity.email.isascii():
        return False
    if config.oidc.hosted_domain and identity.hd != config.oidc.hosted_domain:
        return False
    return identity.email.lower() in config.admins


def pkce_challenge(verifier: str) -> str:
    """The S256 code challenge of a verifier (RFC 7636)."""
    digest = hashlib.sha256(verifier.encode("ascii")).digest()
    return base64.urlsafe_b64encode(digest).rstrip(b"=").decode("ascii")


class OidcClient:
    """One OpenID Connect provider, discovered lazily and cached."""

    def __init__(self, config: OidcConfig, http: httpx.AsyncClient | None = None) -> None:
        self.config = config
        self._http = http
        self._metadata: dict[str, Any] | None = None
        self._metadata_at = 0.0
        self._jwks: KeySet | None = None
        self._jwks_at = 0.0
        self._lock = asyncio.Lock()
        register_secret(config.client_secret)

    def _client(self) -> httpx.AsyncClient:
        if self._http is None:
            self._http = httpx.AsyncClient(timeout=HTTP_TIMEOUT, follow_redirects=False)
        return self._http

    async def aclose(self) -> None:
        """Close the HTTP client."""
        if self._http is not None:
            await self._http.aclose()
            self._http = None

    async def _get_json(self, url: str, what: str, **kwargs: Any) -> dict[str, Any]:
        try:
            response = await self._client().get(url, **kwargs)
        except httpx.HTTPError as exc:
            raise SignInRefused(
                f"cannot reach the sign-in provider ({what}): {type(exc).__name__}", 502
            ) from None
        if response.status_code != 200:
            raise SignInRefused(
                f"the sign-in provider answered {response.status_code} ({what})", 502
            )
        try:
            data = response.json()
        except ValueError:
            raise SignInRefused(f"the sign-in provider sent no JSON ({what})", 502) from None
        if not isinstance(data, dict):
            raise SignInRefused(f"the sign-in provider sent no JSON object ({what})", 502)
        return data

    async def metadata(self) -> dict[str, Any]:
        """The provider's discovery document (cached for an hour)."""
        async with self._lock:
            if self._metadata is None or time.monotonic() - self._metadata_at > METADATA_TTL:
                issuer = self.config.issuer.rstrip("/")
                doc = await self._get_json(
                    f"{issuer}/.well-known/openid-configuration", "discovery"
                )
                if doc.get("issuer") != self.config.issuer:
                    raise SignInRefused(
                        "the provider's discovery names another issuer than "
                        "[plugin.boxes] oidc.issuer",
                        502,
                    )
                for key in ("authorization_endpoint", "token_endpoint", "jwks_uri"):
                    if not isinstance(doc.get(key), str):
                        raise SignInRefused(f"the provider's discovery has no {key}", 502)
                methods = doc.get("code_challenge_methods_supported")
                if isinstance(methods, list) and "S256" not in methods:
                    raise SignInRefused("the provider does not offer PKCE with S256", 502)
                self._metadata, self._metadata_at = doc, time.monotonic()
            return self._metadata

    async def _keyset(self, refresh: bool = False) -> KeySet:
        meta = await self.metadata()
        async with self._lock:
            stale = time.monotonic() - self._jwks_at > METADATA_TTL
            if self._jwks is None or refresh or stale:
                data = await self._get_json(str(meta["jwks_uri"]), "keys")
                try:
                    self._jwks = KeySet.import_key_set(data)  # type: ignore[arg-type]
                except (JoseError, ValueError, TypeError, KeyError):
                    raise SignInRefused("the provider's keys (JWKS) are not usable", 502) from None
                self._jwks_at = time.monotonic()
            return self._jwks

    def _algorithms(self, meta: dict[str, Any]) -> list[str]:
        offered = meta.get("id_token_signing_alg_values_supported")
        if not isinstance(offered, list):
            return ["RS256"]
        algs = [a for a in offered if a in ASYMMETRIC]
        return algs or ["RS256"]

    async def authorization_url(
        self, redirect_uri: str, state: str, nonce: str, verifier: str
    ) -> str:
        """Where to send the person: an authorization-code request with PKCE (S256)."""
        meta = await self.metadata()
        params = {
            "response_type": "code",
            "client_id": self.config.client_id,
            "redirect_uri": redirect_uri,
            "scope": " ".join(self.config.scopes),
            "state": state,
            "nonce": nonce,
            "code_challenge": pkce_challenge(verifier),
            "code_challenge_method": "S256",
        }
        if self.config.hosted_domain:
            params["hd"] = self.config.hosted_domain  # a hint for Google; checked on return
        endpoint = str(meta["authorization_endpoint"])
        return endpoint + ("&" if "?" in endpoint else "?") + urlencode(params)

    async def exchange(self, code: str, verifier: str, redirect_uri: str) -> dict[str, Any]:
        """Trade the code for tokens (``SignInRefused`` names only the provider's error code)."""
        register_secret(code)
        meta = await self.metadata()
        form = {
            "grant_type": "authorization_code",
            "code": code,
            "redirect_uri": redirect_uri,
            "code_verifier": verifier,
        }
        headers = {"Accept": "application/json"}
        secret = self.config.client_secret
        methods = meta.get("token_endpoint_auth_methods_supported") or ["client_secret_basic"]
        if not secret:
            form["client_id"] = self.config.client_id
        elif "client_secret_basic" in methods or "client_secret_post" not in methods:
            pair = f"{quote(self.config.client_id, safe='')}:{quote(secret, safe='')}"
            headers["Authorization"] = "Basic " + base64.b64encode(pair.encode()).decode()
        else:
            form.update(client_id=self.config.client_id, client_secret=secret)
        try:
            response = await self._client().post(
                str(meta["token_endpoint"]), data=form, headers=headers
            )
        except httpx.HTTPError as exc:
            raise SignInRefused(
                f"cannot reach the sign-in provider (token): {type(exc).__name__}", 502
            ) from None
        try:
            body = response.json()
        except ValueError:
            body = {}
        if response.status_code != 200 or not isinstance(body, dict):
            error = body.get("error") if isinstance(body, dict) else None
            safe = error if isinstance(error, str) and error.replace("_", "").isalpha() else ""
            raise SignInRefused(
                f"the sign-in provider refused the code ({safe or response.status_code})"
            )
        for key in ("access_token", "id_token", "refresh_token"):
            if isinstance(body.get(key), str):
                register_secret(body[key])
        if not isinstance(body.get("id_token"), str):
            raise SignInRefused("the sign-in provider returned no ID token", 502)
        return body

    async def validate_id_token(self, id_token: str, nonce: str) -> dict[str, Any]:
        """The ID token's claims once joserfc checked signature, iss, aud, exp and nonce."""
        meta = await self.metadata()
        algorithms = self._algorithms(meta)
        try:
            token = jwt.decode(id_token, await self._keyset(), algorithms=algorithms)
        except JoseError as exc:
            if type(exc).__name__ not in ("MissingKeyError", "InvalidKeyIdError"):
                raise SignInRefused("the ID token's signature is not valid") from None
            try:  # the provider may have rotated its keys
                token = jwt.decode(id_token, await self._keyset(True), algorithms=algorithms)
            except JoseError:
                raise SignInRefused("the ID token's signature is not valid") from None
        except ValueError:
            raise SignInRefused("the ID token is malformed") from None
        registry = jwt.JWTClaimsRegistry(
            leeway=LEEWAY,
            iss={"essential": True, "value": self.config.issuer},
            aud={"essential": True, "value": self.config.client_id},
            sub={"essential": True},
            exp={"essential": True},
            iat={"essential": True},
            nonce={"essential": True, "value": nonce},
        )
        try:
            registry.validate(token.claims)
        except JoseError as exc:
            claim = getattr(exc, "claim", None) or getattr(exc, "description", "") or "a claim"
            raise SignInRefused(f"the ID token is not valid ({exc.error}: {claim})") from None
        aud = token.claims.get("aud")
        if (
            isinstance(aud, list)
            and len(aud) > 1
            and token.claims.get("azp") != self.config.client_id
        ):
            raise SignInRefused("the ID token is not valid (azp)")
        return dict(token.claims)

    async def userinfo(self, access_token: str) -> dict[str, Any]:
        """The userinfo endpoint's claims (``{}`` when the provider has none)."""
        meta = await self.metadata()
        endpoint = meta.get("userinfo_endpoint")
        if not isinstance(endpoint, str) or not access_token:
            return {}
        return await self._get_json(
            endpoint, "userinfo", headers={"Authorization": f"Bearer {access_token}"}
        )

    async def identity(self, code: str, verifier: str, redirect_uri: str, nonce: str) -> Identity:
        """Finish a sign-in: exchange the code, validate the ID token, read the claims."""
        tokens = await self.exchange(code, verifier, redirect_uri)
        claims = await self.validate_id_token(tokens["id_token"], nonce)
        if "email" not in claims or "email_verified" not in claims:
            info = await self.userinfo(str(tokens.get("access_token") or ""))
            if info and info.get("sub") != claims["sub"]:
                raise SignInRefused("the provider's userinfo is about someone else")
            claims = {**info, **claims}
        return Identity(
            issuer=str(claims["iss"]),
            sub=str(claims["sub"]),
            email=str(claims.get("email") or "").strip(),
            # some providers send the string "true"
            email_verified=claims.get("email_verified") in (True, "true"),
            hd=str(claims.get("hd") or ""),
            name=str(claims.get("name") or "")[:200],
        )

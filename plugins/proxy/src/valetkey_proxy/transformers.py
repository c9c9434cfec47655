"""The response transformers the proxy ships (registered by kind through
``valetkey_register_response_transformers``; a run names them per host):

- ``response-scrub``: a JSON or text response (up to 512 KiB) that contains a real credential
  injected into the request — an echo endpoint, an error page quoting the header, a token
  introspection result — gets the run's placeholder in its place, so the agent never reads it.
- ``oauth-endpoint-workaround``: agent CLIs that hold only a placeholder call their provider's
  OAuth account endpoints (profile, usage, roles) at start-up; the injected token may lack the
  scope those endpoints want and the provider answers 401/403, which makes the CLI drop its
  session. A 401/403 from a path containing ``/oauth/`` becomes ``200 {}`` (marked with
  ``X-Valetkey-Transformed``); every other response is untouched.
"""

from __future__ import annotations

from valetkey_hookspecs import ProxiedResponse, ProxyExchange

SCRUB_MAX_BODY = 512 * 1024
_TEXTUAL = ("application/json", "text/", "+json", "application/x-www-form-urlencoded", "xml")


class ResponseScrub:
    """Replace real credential values by their placeholders in textual responses."""

    max_body = SCRUB_MAX_BODY

    def transform(self, exchange: ProxyExchange, response: ProxiedResponse) -> ProxiedResponse:
        """Scrub the body and headers; untouched when nothing real appears."""
        if not exchange.scrub:
            return response
        content_type = (response.header("content-type") or "").lower()
        encoding = (response.header("content-encoding") or "identity").lower()
        body = response.body
        changed = False
        if encoding == "identity" and (
            not content_type or any(t in content_type for t in _TEXTUAL)
        ):
            for real, placeholder in exchange.scrub.items():
                needle = real.encode()
                if real and needle in body:
                    body = body.replace(needle, placeholder.encode())
                    changed = True
        headers = []
        for name, value in response.headers:
            for real, placeholder in exchange.scrub.items():
                if real and real in value:
                    value = value.replace(real, placeholder)
                    changed = True
            headers.append((name, value))
        if not changed:
            return response
        return ProxiedResponse(response.status, tuple(headers), body)


class OAuthEndpointWorkaround:
    """401/403 from an ``/oauth/`` path → ``200 {}``."""

    max_body = 64 * 1024

    def transform(self, exchange: ProxyExchange, response: ProxiedResponse) -> ProxiedResponse:
        """Only 401/403 under ``/oauth/`` change."""
        path = exchange.path.split("?", 1)[0]
        if response.status not in (401, 403) or "/oauth/" not in path:
            return response
        headers = tuple(
            (k, v)
            for k, v in response.headers
            if k.lower() not in ("content-type", "content-length", "www-authenticate")
        )
        headers += (
            ("Content-Type", "application/json"),
            ("X-Valetkey-Transformed", "oauth-endpoint-workaround"),
        )
        return ProxiedResponse(200, headers, b"{}")

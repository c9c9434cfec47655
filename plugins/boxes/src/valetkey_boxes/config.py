"""``[plugin.boxes]``: the default image, the auth page's public URL, the reaper, how each
image's login runs, and executable lifecycle hooks."""

from __future__ import annotations

import re
from dataclasses import dataclass, field

from valetkey_hookspecs import ConfigError

DEFAULT_URL_PATTERN = r"https?://[^\s\"'<>]+"
DEFAULT_READY_PATTERN = r"(?im)^\s*(valetkey-ready|ready)\b"
DEFAULT_ERROR_PATTERN = r"(?im)^\s*(error|login failed|invalid code)\b.*$"


@dataclass(frozen=True)
class LoginSpec:
    """How the login of one image runs and how its output is read."""

    #: the box's main process (it reads the code on stdin); empty: the image's own command
    command: list[str] = field(default_factory=list)
    #: the login URL the box prints for the person to open (first match before the code)
    url_pattern: str = DEFAULT_URL_PATTERN
    #: output after the code that means the box is ready
    ready_pattern: str = DEFAULT_READY_PATTERN
    #: output after the code that means the login failed (the matching line is shown)
    error_pattern: str = DEFAULT_ERROR_PATTERN
    #: the session URL shown when ready (last match after the code; none: no URL)
    session_url_pattern: str = DEFAULT_URL_PATTERN
    #: seconds to wait for ready after the code was sent
    ready_timeout: float = 60.0

    def __post_init__(self) -> None:
        for name in ("url_pattern", "ready_pattern", "error_pattern", "session_url_pattern"):
            try:
                re.compile(getattr(self, name))
            except re.error as exc:
                raise ConfigError(
                    f"[plugin.boxes] login.{name}: not a regular expression ({exc})"
                ) from None
        if not self.ready_timeout > 0:
            raise ConfigError("[plugin.boxes] login.ready_timeout: must be positive")


@dataclass(frozen=True)
class OidcConfig:
    """``[plugin.boxes.oidc]``: the OpenID Connect provider people sign in with before they may
    activate a box (and, for ``admins``, use ``/admin``). No ``issuer``: activation is open."""

    #: the provider's issuer URL (discovery at ``<issuer>/.well-known/openid-configuration``)
    issuer: str = ""
    client_id: str = ""
    #: the client secret, usually a ``{ "$env" = ... }`` or ``{ "$file" = ... }`` reference
    client_secret: str = field(default="", repr=False)
    scopes: list[str] = field(default_factory=lambda: ["openid", "email", "profile"])
    #: e-mail domains whose people may activate boxes (``example.com``)
    allowed_domains: list[str] = field(default_factory=list)
    #: e-mail addresses that may activate boxes
    allowed_emails: list[str] = field(default_factory=list)
    #: the hosted domain (``hd`` claim, Google Workspace) every sign-in must carry; empty: any
    hosted_domain: str = ""
    #: seconds a sign-in stays valid
    session_ttl: float = 8 * 3600.0
    #: seconds a started login (state, nonce, PKCE verifier) may wait for the provider
    login_ttl: float = 600.0

    @property
    def enabled(self) -> bool:
        """A provider is configured."""
        return bool(self.issuer)

    def __post_init__(self) -> None:
        where = "[plugin.boxes] oidc"
        for name in ("session_ttl", "login_ttl"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{where}.{name}: must be a positive number of seconds")
        if not self.enabled:
            return
        loopback = ("http://127.0.0.1", "http://localhost", "http://[::1]")
        if not self.issuer.startswith(("https://", *loopback)):
            raise ConfigError(f"{where}.issuer: must be https (or http on loopback)")
        if not self.client_id:
            raise ConfigError(f"{where}.client_id: required when an issuer is set")
        if "openid" not in self.scopes:
            raise ConfigError(f"{where}.scopes: must include openid")
        if not self.allowed_domains and not self.allowed_emails:
            raise ConfigError(
                f"{where}.allowed_domains / {where}.allowed_emails: an enabled provider needs "
                "at least one allowed domain or e-mail (otherwise nobody could activate a box)"
            )
        for domain in self.allowed_domains:
            if not domain or "@" in domain or domain != domain.strip().lower():
                raise ConfigError(
                    f"{where}.allowed_domains: {domain!r} is not a lower-case domain (no @)"
                )
        for email in self.allowed_emails:
            if email.count("@") != 1 or email != email.strip().lower():
                raise ConfigError(f"{where}.allowed_emails: {email!r} is not a lower-case e-mail")


@dataclass(frozen=True)
class HubConfig:
    """``[plugin.boxes.hub]``: ``valetkey serve`` as a hub that spokes dial in to
    (``/spoke/connect``); see "Fleet: hub and spokes" in the README."""

    #: serve ``/spoke/connect`` and route boxes of enrolled spokes to them
    enabled: bool = False
    #: seconds a call to a spoke may take (an exec gets its own timeout plus this)
    call_timeout: float = 60.0
    #: the largest WebSocket frame either side accepts
    max_frame_bytes: int = 8 * 1024 * 1024
    #: seconds between ``last_seen`` updates of a connected spoke
    heartbeat: float = 15.0

    def __post_init__(self) -> None:
        for name in ("call_timeout", "heartbeat"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[plugin.boxes] hub.{name}: must be positive")
        if self.max_frame_bytes < 64 * 1024:
            raise ConfigError("[plugin.boxes] hub.max_frame_bytes: at least 65536")


@dataclass(frozen=True)
class SpokeConfig:
    """``[plugin.boxes.spoke]``: this machine as a spoke (``valetkey spoke run``)."""

    #: images a hub may start here (shell-style patterns, ``ghcr.io/acme/*``); empty: none —
    #: ``spoke run`` refuses to start until the allow-list names some
    images: list[str] = field(default_factory=list)
    #: calls from the hub handled at once
    concurrency: int = 32

    def __post_init__(self) -> None:
        if self.concurrency < 1:
            raise ConfigError("[plugin.boxes] spoke.concurrency: at least 1")
        for pattern in self.images:
            if not pattern.strip():
                raise ConfigError("[plugin.boxes] spoke.images: an empty pattern")


@dataclass(frozen=True)
class BoxesConfig:
    """Box manager settings (all optional)."""

    #: the box runtime by name (empty: ``[select] box_runtime``)
    runtime: str = ""
    #: the image of a box whose request names none
    default_image: str = ""
    #: where people reach ``valetkey serve`` (auth page links are ``<public_url>/auth/<token>``)
    public_url: str = "http://127.0.0.1:8760"
    #: a box still pending (no code submitted) after this many seconds is destroyed
    auth_ttl: float = 300.0
    #: how often the reaper looks
    reap_every: float = 30.0
    #: network mode for boxes (empty: the runtime's default); boxes with grants must reach the
    #: proxy (``host`` on a single machine)
    network: str = ""
    #: let ``network = "host"`` through: a box on the host network reaches everything this
    #: machine serves on loopback — valetkey serve's /mcp included — so it is opt-in
    allow_host_network: bool = False
    #: whose connections box grants name (empty: $VALETKEY_OWNER, else the user name)
    owner: str = ""
    #: the proxy's address as boxes with grants see it
    proxy_host: str = "127.0.0.1"
    #: login per image (``[plugin.boxes.login."busybox:latest"]``); ``"*"`` applies to the rest
    login: dict[str, LoginSpec] = field(default_factory=dict)
    #: images boxes may use (shell-style patterns, ``ghcr.io/acme/*``); empty: any image.
    #: Set it when MCP callers (chat assistants) create boxes: the image decides what the box
    #: runs and which sign-in link the auth page shows
    allowed_images: list[str] = field(default_factory=list)
    #: allow exec_box before the box is signed in (its login process then still holds the code
    #: on stdin, and a command could read it)
    exec_before_ready: bool = False
    #: executable lifecycle hooks (JSON on stdin/stdout), run after the plugin hooks
    hooks: list[str] = field(default_factory=list)
    #: seconds an executable hook may take
    hook_timeout: float = 30.0
    #: sign-in before activation (``[plugin.boxes.oidc]``); no issuer: activation is open
    oidc: OidcConfig = field(default_factory=OidcConfig)
    #: e-mails (verified, via the OIDC provider) of the people who may use ``/admin``
    admins: list[str] = field(default_factory=list)
    #: this server as a hub of spokes (``[plugin.boxes.hub]``)
    hub: HubConfig = field(default_factory=HubConfig)
    #: this machine as a spoke (``[plugin.boxes.spoke]``)
    spoke: SpokeConfig = field(default_factory=SpokeConfig)

    def __post_init__(self) -> None:
        for name in ("auth_ttl", "reap_every", "hook_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[plugin.boxes] {name}: must be a positive number of seconds")
        loopback = ("http://127.0.0.1", "http://localhost", "http://[::1]")
        if not self.public_url.startswith(("https://", *loopback)):
            raise ConfigError("[plugin.boxes] public_url: must be https (or http on loopback)")
        if self.network == "host" and not self.allow_host_network:
            raise ConfigError(
                '[plugin.boxes] network = "host": a box on the host network reaches every '
                "loopback service of this machine (valetkey serve's /mcp too); set "
                "allow_host_network = true to accept that, or use a bridge network"
            )
        if self.admins and not self.oidc.enabled:
            raise ConfigError(
                "[plugin.boxes] admins: the admin UI signs people in with [plugin.boxes.oidc]: "
                "set its issuer"
            )
        for email in self.admins:
            if email.count("@") != 1 or email != email.strip().lower():
                raise ConfigError(f"[plugin.boxes] admins: {email!r} is not a lower-case e-mail")

    def login_for(self, image: str) -> LoginSpec:
        """The login spec of ``image`` (exact name, then ``"*"``, then the defaults)."""
        return self.login.get(image) or self.login.get("*") or LoginSpec()

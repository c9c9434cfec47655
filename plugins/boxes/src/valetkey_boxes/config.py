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
    #: whose connections box grants name (empty: $VALETKEY_OWNER, else the user name)
    owner: str = ""
    #: the proxy's address as boxes with grants see it
    proxy_host: str = "127.0.0.1"
    #: login per image (``[plugin.boxes.login."busybox:latest"]``); ``"*"`` applies to the rest
    login: dict[str, LoginSpec] = field(default_factory=dict)
    #: executable lifecycle hooks (JSON on stdin/stdout), run after the plugin hooks
    hooks: list[str] = field(default_factory=list)
    #: seconds an executable hook may take
    hook_timeout: float = 30.0

    def __post_init__(self) -> None:
        for name in ("auth_ttl", "reap_every", "hook_timeout"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"[plugin.boxes] {name}: must be a positive number of seconds")
        loopback = ("http://127.0.0.1", "http://localhost", "http://[::1]")
        if not self.public_url.startswith(("https://", *loopback)):
            raise ConfigError("[plugin.boxes] public_url: must be https (or http on loopback)")

    def login_for(self, image: str) -> LoginSpec:
        """The login spec of ``image`` (exact name, then ``"*"``, then the defaults)."""
        return self.login.get(image) or self.login.get("*") or LoginSpec()

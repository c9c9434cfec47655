"""The ``[plugin.store-postgres]`` table of plugins.toml, as the kernel validates it.

The DSN usually holds a password: give it by reference, ``dsn = { "$env" = "VALETKEY_PG_DSN" }``
or ``{ "$file" = "/run/secrets/pg-dsn" }``, never inline. The field is ``repr=False`` and every
message this plugin writes shows the DSN with its password masked (``redact_dsn``).
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from urllib.parse import urlsplit, urlunsplit

#: a ``password=...`` pair of a key/value DSN (``host=db user=vk password=s3cret``)
_KV_PASSWORD = re.compile(r"(?i)\b(password\s*=\s*)('(?:[^'\\]|\\.)*'|\S+)")


@dataclass(frozen=True)
class PostgresConfig:
    """Where the database is and how many connections each process keeps."""

    #: libpq connection string or URL (``postgresql://user:pass@host:5432/valetkey``); required
    dsn: str = field(default="", repr=False)
    #: a schema (created if missing) instead of ``public``: several deployments on one database
    schema: str = ""
    #: connections each process keeps open
    pool_min_size: int = 1
    #: at most this many connections per process
    pool_max_size: int = 10
    #: seconds to wait for a connection (to open one, or for a free one in the pool)
    connect_timeout: float = 10.0
    #: seconds one statement may run before the server cancels it (0: no limit)
    statement_timeout: float = 30.0


def redact_dsn(dsn: str) -> str:
    """The DSN with its password (URL user-info or ``password=``) replaced by ``***``."""
    text = _KV_PASSWORD.sub(r"\1***", dsn)
    if "://" not in text:
        return text
    try:
        parts = urlsplit(text)
    except ValueError:
        return "<unparsable dsn>"
    netloc = parts.netloc
    if "@" in netloc:
        userinfo, _, hostport = netloc.rpartition("@")
        user = userinfo.split(":", 1)[0]
        netloc = f"{user}:***@{hostport}" if ":" in userinfo else f"{user}@{hostport}"
    query = _KV_PASSWORD.sub(r"\1***", parts.query.replace("&", " ")).replace(" ", "&")
    return urlunsplit((parts.scheme, netloc, parts.path, query, parts.fragment))


def dsn_password(dsn: str) -> str | None:
    """The password inside a DSN, if any (registered for redaction, never printed)."""
    if "://" in dsn:
        try:
            password = urlsplit(dsn).password
        except ValueError:
            password = None
        if password:
            return password
    match = _KV_PASSWORD.search(dsn.replace("&", " "))
    return match.group(2).strip("'") if match else None

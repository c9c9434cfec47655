"""The ``aws`` grant: short-lived AWS credentials for a run at ``GET /_aws/credentials``.

A run registered with an ``aws`` grant and a role (``RunSpec.aws``) never holds the long-lived
access key. Its process gets ``AWS_CONTAINER_CREDENTIALS_FULL_URI=http://<proxy>/_aws/credentials``
and ``AWS_CONTAINER_AUTHORIZATION_TOKEN=<run token>``; every AWS SDK then asks this endpoint, as
it would ask the ECS agent, and receives the credentials of an assumed role::

    {"AccessKeyId": "ASIA…", "SecretAccessKey": "…", "Token": "…",
     "Expiration": "2025-01-01T00:00:00Z", "RoleArn": "arn:aws:iam::…:role/…"}

(the format botocore's ``ContainerProvider`` reads; the SDK sends the token as the bare value of
``Authorization``, which the gate accepts).

How: the run's aws connection is vended from the broker (``api_key`` = access key id,
``api_secret`` = secret access key), and STS ``AssumeRole`` is called with them (botocore, SigV4,
in a worker thread since botocore blocks). The assumed credentials are cached per run until five
minutes before they expire; concurrent callers share one STS call. ``VALETKEY_AWS_STS_ENDPOINT``
(or the ``sts_endpoint`` argument) sends STS calls elsewhere — tests point it at moto's server.

Errors: no aws role → 404; the grant cannot be vended → 502; STS refuses or cannot be reached →
502 with the STS error code and message. The long-lived keys never appear in a response, a log
line or an exception text.
"""

from __future__ import annotations

import json
import logging
import os
import re
import tempfile
import threading
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import anyio
import anyio.to_thread

from valetkey_hookspecs import KernelAPI, ValetkeyError
from valetkey_hookspecs.redaction import redact_text

from .config import ProxyConfig
from .exchange import Request, Response
from .runs import AwsSpec, Run

log = logging.getLogger("valetkey.proxy.aws")

#: the path the run's AWS SDK reads (``AWS_CONTAINER_CREDENTIALS_FULL_URI``)
CREDENTIALS_PATH = "/_aws/credentials"
#: the prefix to register in ``gate.local_handlers``
PREFIX = "/_aws/"
#: overrides the STS endpoint (``http://127.0.0.1:PORT`` for moto in tests)
ENDPOINT_ENV = "VALETKEY_AWS_STS_ENDPOINT"
#: assumed credentials are fetched again this long before they expire
REFRESH_MARGIN = 300.0
#: STS bounds for DurationSeconds (role chaining and the role's own maximum may lower the top)
MIN_DURATION, MAX_DURATION = 900, 43200
REDACTED = "[REDACTED]"
_SESSION_NAME_BAD = re.compile(r"[^\w+=,.@-]")


class AwsUnavailable(ValetkeyError):
    """botocore is not installed (``pip install 'valetkey-proxy[aws]'``)."""


class StsError(Exception):
    """STS refused or could not be reached; ``code`` and ``message`` never hold a secret."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message


@dataclass(frozen=True, slots=True)
class Assumed:
    """One set of assumed-role credentials."""

    access_key_id: str
    secret_access_key: str
    session_token: str
    expiration: datetime
    role_arn: str

    def __repr__(self) -> str:
        return f"Assumed(<redacted>, expiration={self.expiration.isoformat()})"

    __str__ = __repr__

    def body(self) -> bytes:
        """The container-credentials JSON document."""
        return json.dumps(
            {
                "AccessKeyId": self.access_key_id,
                "SecretAccessKey": self.secret_access_key,
                "Token": self.session_token,
                "Expiration": self.expiration.astimezone(UTC).strftime("%Y-%m-%dT%H:%M:%SZ"),
                "RoleArn": self.role_arn,
            }
        ).encode()


@dataclass(slots=True)
class _Entry:
    assumed: Assumed
    #: monotonic time after which the entry is refreshed
    fresh_until: float


def _botocore() -> Any:
    """``botocore.session`` and ``botocore.exceptions``, imported on first use."""
    try:
        import botocore.exceptions
        import botocore.session
    except ImportError as exc:  # pragma: no cover - exercised only without the extra
        raise AwsUnavailable(
            "the aws grant needs botocore: install valetkey-proxy[aws] "
            "(pip install 'valetkey-proxy[aws]')"
        ) from exc
    return botocore


class AwsCredentials:
    """The ``/_aws/credentials`` endpoint of one daemon (register ``handle`` under ``PREFIX``).

    ``config.extra_ca_file`` is added to botocore's CA bundle for TLS to STS; ``sts_endpoint``
    (else ``[plugin.proxy] aws_sts_endpoint``, else ``$VALETKEY_AWS_STS_ENDPOINT``, else AWS's
    regional endpoint) is where STS is called.
    botocore takes a CA bundle path, not an ``ssl.SSLContext``, hence the config here.
    """

    def __init__(
        self,
        kernel: KernelAPI,
        config: ProxyConfig | None = None,
        *,
        sts_endpoint: str | None = None,
        timeout: float = 20.0,
    ) -> None:
        self._kernel = kernel
        self._config = config or ProxyConfig()
        self._endpoint = (
            sts_endpoint
            or (config.aws_sts_endpoint if config else None)
            or os.environ.get(ENDPOINT_ENV)
            or None
        )
        self._timeout = timeout
        self._cache: dict[tuple[str, str, AwsSpec], _Entry] = {}
        self._locks: dict[tuple[str, str, AwsSpec], anyio.Lock] = {}
        self._session: Any = None
        self._session_lock = threading.Lock()
        self._verify: bool | str | None = None

    # ------------------------------------------------------------------ endpoint

    async def handle(self, request: Request, run: Run) -> Response:
        """Answer one request under ``/_aws/`` for an authenticated ``run``."""
        path = request.target.split("?", 1)[0]
        if path != CREDENTIALS_PATH:
            return _error(
                404, f"no such endpoint: {path} (the credentials are at {CREDENTIALS_PATH})"
            )
        if request.method not in ("GET", "HEAD"):
            response = _error(405, f"{request.method} is not allowed here: use GET")
            response.headers.append(("Allow", "GET, HEAD"))
            return response
        spec = run.spec.aws
        connection_id = getattr(run.resolved, "aws_connection_id", None)
        if spec is None or connection_id is None:
            return _error(
                404,
                f"run {run.run_id} has no aws grant: register it with an aws grant and a role "
                "(--grant aws --aws-role ARN)",
            )
        try:
            assumed = await self.credentials(run)
        except StsError as exc:
            return _error(502, f"AWS STS AssumeRole failed: {exc.code}: {exc.message}")
        except ValetkeyError as exc:
            return _error(502, f"valetkey could not use the aws grant: {redact_text(str(exc))}")
        body = assumed.body()
        headers = [("Content-Type", "application/json"), ("Cache-Control", "no-store")]
        return Response(200, headers, b"" if request.method == "HEAD" else body)

    async def credentials(self, run: Run) -> Assumed:
        """The run's assumed-role credentials: cached until five minutes before they expire,
        one STS call for concurrent callers."""
        spec = run.spec.aws
        connection_id = getattr(run.resolved, "aws_connection_id", None)
        if spec is None or connection_id is None:
            raise StsError("NoRole", f"run {run.run_id} has no aws role")
        key = (run.token, connection_id, spec)
        entry = self._cache.get(key)
        if entry is not None and time.monotonic() < entry.fresh_until:
            return entry.assumed
        lock = self._locks.setdefault(key, anyio.Lock())
        async with lock:
            entry = self._cache.get(key)
            if entry is not None and time.monotonic() < entry.fresh_until:
                return entry.assumed
            secret = await self._kernel.broker.vend(
                run.spec.owner, connection_id, actor=f"proxy:{run.run_id}"
            )
            access_key, secret_key = secret.api_key or "", secret.api_secret or ""
            if not access_key or not secret_key:
                raise StsError(
                    "IncompleteGrant",
                    f"the aws connection {connection_id} needs an access key id (api_key) and a "
                    "secret access key (api_secret)",
                )
            assumed = await anyio.to_thread.run_sync(
                self._assume_role, access_key, secret_key, spec, _session_name(run.run_id)
            )
            lifetime = (assumed.expiration - datetime.now(UTC)).total_seconds()
            self._prune()
            self._cache[key] = _Entry(assumed, time.monotonic() + lifetime - REFRESH_MARGIN)
            return assumed

    def close(self) -> None:
        """Drop every cached credential and the combined CA bundle file (if one was written)."""
        self._cache.clear()
        self._locks.clear()
        if isinstance(self._verify, str):
            Path(self._verify).unlink(missing_ok=True)
        self._verify = None

    def forget(self, run: Run) -> None:
        """Drop a run's cached credentials (call when the run leaves)."""
        for key in [k for k in self._cache if k[0] == run.token]:
            self._cache.pop(key, None)
            self._locks.pop(key, None)

    def _prune(self) -> None:
        now = time.monotonic()
        for key in [k for k, e in self._cache.items() if e.fresh_until <= now]:
            self._cache.pop(key, None)
            lock = self._locks.get(key)
            if lock is not None and not lock.locked():
                self._locks.pop(key, None)

    # ------------------------------------------------------------------ STS (worker thread)

    def _assume_role(
        self, access_key: str, secret_key: str, spec: AwsSpec, session_name: str
    ) -> Assumed:
        botocore = _botocore()
        from botocore.config import Config

        with self._session_lock:  # botocore sessions are not thread-safe
            if self._session is None:
                self._session = botocore.session.Session()
            client = self._session.create_client(
                "sts",
                region_name=spec.region,
                endpoint_url=self._endpoint,
                aws_access_key_id=access_key,
                aws_secret_access_key=secret_key,
                verify=self._verify_setting(),
                config=Config(
                    connect_timeout=self._timeout,
                    read_timeout=self._timeout,
                    retries={"max_attempts": 2, "mode": "standard"},
                    user_agent_extra="valetkey-proxy",
                ),
            )
        args: dict[str, Any] = {
            "RoleArn": spec.role_arn,
            "RoleSessionName": session_name,
            "DurationSeconds": spec.session_duration,
        }
        if spec.external_id:
            args["ExternalId"] = spec.external_id
        secrets = (access_key, secret_key)
        try:
            answer = client.assume_role(**args)
        except botocore.exceptions.ClientError as exc:
            error = exc.response.get("Error", {})
            raise StsError(
                _clean(str(error.get("Code") or "Error"), secrets),
                _clean(str(error.get("Message") or "no message"), secrets),
            ) from None
        except botocore.exceptions.ParamValidationError as exc:
            raise StsError("InvalidParameter", _clean(str(exc), secrets)) from None
        except botocore.exceptions.BotoCoreError as exc:
            raise StsError(type(exc).__name__, _clean(str(exc), secrets)) from None
        finally:
            client.close()
        creds = answer["Credentials"]
        expiration = creds["Expiration"]
        if isinstance(expiration, str):
            expiration = datetime.fromisoformat(expiration.replace("Z", "+00:00"))
        if expiration.tzinfo is None:
            expiration = expiration.replace(tzinfo=UTC)
        log.info("assumed %s until %s", spec.role_arn, expiration.isoformat())
        return Assumed(
            access_key_id=creds["AccessKeyId"],
            secret_access_key=creds["SecretAccessKey"],
            session_token=creds["SessionToken"],
            expiration=expiration,
            role_arn=spec.role_arn,
        )

    def _verify_setting(self) -> bool | str:
        """True (botocore's bundle), or that bundle plus ``extra_ca_file`` in one file."""
        if self._verify is None:
            extra = self._config.extra_ca_file
            if not extra:
                self._verify = True
            else:
                from botocore.httpsession import get_cert_path

                bundle = Path(get_cert_path(True)).read_text() + "\n" + Path(extra).read_text()
                fd, path = tempfile.mkstemp(prefix="valetkey-aws-ca-", suffix=".pem")
                with os.fdopen(fd, "w") as out:
                    out.write(bundle)
                self._verify = path
        return self._verify


# ---------------------------------------------------------------------- helpers


def _session_name(run_id: str) -> str:
    """``valetkey-<run id>`` limited to STS's RoleSessionName alphabet and 64 characters."""
    return _SESSION_NAME_BAD.sub("-", f"valetkey-{run_id}")[:64]


def _clean(text: str, secrets: tuple[str, ...]) -> str:
    for value in secrets:
        if value:
            text = text.replace(value, REDACTED)
    return redact_text(text)


def _error(status: int, message: str) -> Response:
    body = json.dumps({"error": message}).encode()
    return Response(status, [("Content-Type", "application/json")], body)

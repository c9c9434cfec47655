"""The gate: what the proxy does with each request of a run (the engine's
:class:`~valetkey_proxy.exchange.Gatekeeper`).

- ``prepare`` turns a :class:`RunSpec` into a ready :class:`Run`: every grant resolved to one of
  the owner's connections, each vended once to prove it works, host patterns and transformers
  parsed. Only then may the run's token enter the registry.
- ``on_request`` applies, in order: the network policy, placeholder checks (a placeholder sent to
  a host its grant is not bound to is blocked and audited), token substitution, the credential
  header, removed and added headers. Credentials are vended from the broker on every request, so
  a refreshed or re-granted token is used at once.
- ``on_response`` runs the run's response transformers; ``on_complete`` writes the request log,
  with every injected value shown as ``[REDACTED]``.
"""

from __future__ import annotations

import base64
import binascii
import ipaddress
import logging
import re
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import unquote, urlsplit

from valetkey_hookspecs import (
    Connection,
    ConnectionStatus,
    Connector,
    Injection,
    InvalidInput,
    KernelAPI,
    NotFound,
    ProxiedResponse,
    ProxyExchange,
    ResponseTransformer,
    Revoked,
    Secret,
    ValetkeyError,
)
from valetkey_hookspecs.redaction import redact_text

from .config import ProxyConfig
from .exchange import Outcome, Request, Response, Verdict
from .hosts import HostPattern, first_match, parse_all
from .routing import ServiceRouter
from .runs import Registry, Run, RunSpec, is_token, new_run_id, new_token, placeholder_for

log = logging.getLogger("valetkey.proxy")

PLACEHOLDER_MARK = "vkph_"
#: the marker in any case, its ``_`` possibly percent-encoded: one scan, no copies (hot path)
_MARK = re.compile(r"vkph(?:_|%5f)", re.IGNORECASE)
_MARK_B = re.compile(rb"vkph(?:_|%5f)", re.IGNORECASE)
POLICIES = ("permissive", "strict")
SUBSTITUTIONS = ("headers", "anywhere")
AWS_CONNECTOR = "aws"
REDACTED = "[REDACTED]"


class RequestLogWriter(Protocol):
    """Where the gate writes one entry per request (``reqlog.RequestLog``)."""

    def record(self, run_id: str, entry: dict[str, Any]) -> None: ...


LocalHandler = Callable[[Request, "Run"], Awaitable[Response]]


@dataclass
class Binding:
    """A grant of a run, resolved: which connection, for which hosts, injected how."""

    grant: str
    connector: Connector
    connection_id: str
    injection: Injection
    patterns: tuple[HostPattern, ...]
    placeholder: str

    @property
    def env_var(self) -> str | None:
        """The variable that carries the placeholder inside the run (``GITHUB_TOKEN``)."""
        return self.injection.env_var


@dataclass
class Resolved:
    """Everything the gate needs per request, computed once at ``prepare``."""

    bindings: tuple[Binding, ...]
    strict: bool
    allow: tuple[HostPattern, ...]
    transformers: tuple[tuple[HostPattern, str, ResponseTransformer], ...]
    by_placeholder: dict[str, Binding]
    #: the ``aws`` grant's connection (access key id + secret), when the run has an aws role
    aws_connection_id: str | None = None
    #: swap placeholders in the path, query and body too (not only in headers)
    substitute_anywhere: bool = False
    #: (host, port) → the binding injected there (None: none), filled lazily
    binding_for: dict[tuple[str, int], Binding | None] = field(default_factory=dict)
    #: (host, port) → allowed under the network policy, filled lazily
    allowed: dict[tuple[str, int], bool] = field(default_factory=dict)


@dataclass
class Context:
    """What ``on_request`` hands to ``on_response`` and ``on_complete`` through the verdict."""

    rule: str | None = None
    injected: dict[str, str] = field(default_factory=dict)  # header name → [REDACTED]
    real_values: tuple[str, ...] = ()
    scrub: dict[str, str] = field(default_factory=dict)  # real value → placeholder
    transformers: list[tuple[str, ResponseTransformer]] = field(default_factory=list)
    logged_target: str = ""
    started: float = 0.0


class Gate:
    """The gatekeeper of one daemon: one kernel (broker, store, connectors), one registry."""

    def __init__(
        self,
        kernel: KernelAPI,
        registry: Registry,
        config: ProxyConfig,
        request_log: RequestLogWriter | None = None,
    ) -> None:
        self._kernel = kernel
        self._registry = registry
        self._config = config
        self._log = request_log
        self._auth_cache: dict[str, str] = {}
        self._upstream_map = {
            host.lower(): _split_host_port(target) for host, target in config.upstream_map.items()
        }
        #: local endpoints by path prefix (``/_aws/``, ``/mcp/``): ``handler(request, run)``
        self.local_handlers: dict[str, LocalHandler] = {}
        #: agents' named services (``/v1/routes/{agent}``)
        self.router: ServiceRouter | None = None

    # ------------------------------------------------------------------ runs

    async def prepare(self, spec: RunSpec, token: str | None = None) -> Run:
        """Validate and resolve ``spec``; raise (nothing registered) when anything is wrong."""
        owner = (spec.owner or "").strip()
        if not owner:
            raise InvalidInput("a run needs an owner")
        if token is not None and not is_token(token):
            raise InvalidInput("auth_token must be 64 lower-case hex characters")
        if spec.substitution not in SUBSTITUTIONS:
            raise InvalidInput(
                f"substitution {spec.substitution!r}: expected one of {', '.join(SUBSTITUTIONS)}"
            )
        if spec.network_policy not in POLICIES:
            raise InvalidInput(
                f"network_policy {spec.network_policy!r}: expected one of {', '.join(POLICIES)}"
            )
        token = token or new_token()
        run_id = spec.run_id or new_run_id()
        allow = parse_all(spec.network_allow)
        transformers = []
        for t in spec.response_transformers:
            transformers.append(
                (HostPattern.parse(t.host), t.kind, self._kernel.response_transformer(t.kind))
            )
        seen: set[str] = set()
        bindings: list[Binding] = []
        aws_connection_id: str | None = None
        for grant in spec.grants:
            if grant in seen:
                raise InvalidInput(f"grant {grant!r} is named twice")
            seen.add(grant)
            conn = await self._connection_for(owner, grant)
            if conn.connector == AWS_CONNECTOR:
                aws_connection_id = await self._bind_aws(owner, grant, conn, spec, run_id)
                continue
            bindings.append(await self._bind(owner, grant, conn, token, run_id))
        self._check_mcp_servers(spec, bindings)
        if spec.scrub:
            scrub = self._kernel.response_transformer("response-scrub")
            for binding in bindings:
                transformers.extend((p, "response-scrub", scrub) for p in binding.patterns)
        if spec.aws is not None and aws_connection_id is None:
            raise InvalidInput("an aws role needs an aws grant (--grant aws)")
        resolved = Resolved(
            bindings=tuple(bindings),
            strict=spec.network_policy == "strict",
            allow=allow,
            transformers=tuple(transformers),
            by_placeholder={b.placeholder: b for b in bindings},
            aws_connection_id=aws_connection_id,
            substitute_anywhere=spec.substitution == "anywhere",
        )
        run = Run(spec=spec, token=token, run_id=run_id)
        run.container_id = spec.container_id
        run.resolved = resolved
        return run

    @staticmethod
    def _check_mcp_servers(spec: RunSpec, bindings: list[Binding]) -> None:
        names: set[str] = set()
        bound = {b.grant: b for b in bindings}
        for server in spec.mcp_servers:
            if not server.name or "/" in server.name or server.name in names:
                raise InvalidInput(
                    f"mcp server {server.name!r}: names must be unique, non-empty, without '/'"
                )
            names.add(server.name)
            if (problem := url_problem(server.url)) is not None:
                raise InvalidInput(f"mcp server {server.name!r}: {problem}")
            if server.grant is None:
                continue
            binding = bound.get(server.grant)
            if binding is None:
                raise InvalidInput(
                    f"mcp server {server.name!r}: grant {server.grant!r} is not among the "
                    "run's grants"
                    + (" (or is the aws grant)" if server.grant in spec.grants else "")
                )
            parts = urlsplit(server.url)
            port = parts.port or (443 if parts.scheme == "https" else 80)
            if first_match(binding.patterns, (parts.hostname or "").lower(), port) is None:
                hosts = ", ".join(p.text for p in binding.patterns)
                raise InvalidInput(
                    f"mcp server {server.name!r}: {parts.hostname} is not one of grant "
                    f"{server.grant!r}'s hosts ({hosts}); its credential goes nowhere else"
                )

    async def _bind_aws(
        self, owner: str, grant: str, conn: Connection, spec: RunSpec, run_id: str
    ) -> str:
        """The aws grant signs nothing itself: its access key assumes ``spec.aws.role_arn`` and
        the run reads short-lived credentials from ``/_aws/credentials``."""
        if spec.aws is None:
            raise InvalidInput(
                f"grant {grant!r}: an aws grant needs a role to assume (aws.role_arn, "
                "'valetkey run --aws-role ARN')"
            )
        await self._kernel.broker.vend(owner, conn.id, actor=f"proxy:{run_id}")
        return conn.id

    async def _bind(
        self, owner: str, grant: str, conn: Connection, token: str, run_id: str
    ) -> Binding:
        connector = self._kernel.connectors.get(conn.connector)
        injection = connector.injection
        if injection is None or not injection.hosts:
            raise InvalidInput(
                f"grant {grant!r}: connector {connector.slug!r} has no injection rules "
                "(no hosts to add its credential to)"
            )
        # vend once: a grant that cannot produce a credential fails the registration, not the
        # agent's first request
        await self._kernel.broker.vend(owner, conn.id, actor=f"proxy:{run_id}")
        return Binding(
            grant=grant,
            connector=connector,
            connection_id=conn.id,
            injection=injection,
            patterns=parse_all(injection.hosts),
            placeholder=placeholder_for(token, grant),
        )

    async def _connection_for(self, owner: str, grant: str) -> Connection:
        broker = self._kernel.broker
        if grant.startswith("conn_"):
            return await broker.get_connection(owner, grant)
        connector = self._kernel.connectors.get(grant)  # NotFound names the known slugs
        usable = [
            c
            for c in await broker.list_connections(owner)
            if c.connector == connector.slug and c.status is not ConnectionStatus.REVOKED
        ]
        if not usable:
            raise NotFound(
                f"grant {grant!r}: {owner} has no {connector.slug} connection; "
                f"connect one with 'valetkey connect {connector.slug}' "
                f"or 'valetkey key add {connector.slug}'"
            )
        if len(usable) > 1:
            ids = ", ".join(c.id for c in usable)
            raise InvalidInput(
                f"grant {grant!r}: {owner} has several {connector.slug} connections ({ids}); "
                "grant one by its id"
            )
        return usable[0]

    def run_env(self, run: Run) -> dict[str, str]:
        """Placeholder variables for the run's process (``GITHUB_TOKEN=vkph_…``)."""
        resolved: Resolved = run.resolved
        env: dict[str, str] = {}
        for binding in resolved.bindings:
            if binding.env_var:
                env[binding.env_var] = binding.placeholder
        return env

    def placeholders(self, run: Run) -> dict[str, str]:
        """Grant → placeholder (the management API's ``placeholders``)."""
        resolved: Resolved = run.resolved
        return {b.grant: b.placeholder for b in resolved.bindings}

    # ------------------------------------------------------------------ Gatekeeper

    def authenticate(self, proxy_authorization: str | None) -> Run | None:
        """``Basic base64("valetkey:<run token>")`` → the run, or None."""
        if not proxy_authorization:
            return None
        token = self._auth_cache.get(proxy_authorization)
        if token is None:
            token = _token_from_basic(proxy_authorization)
            if token is None:
                return None
            if len(self._auth_cache) > 4096:
                self._auth_cache.clear()
            self._auth_cache[proxy_authorization] = token
        return self._registry.lookup(token)

    def on_connect(self, run: Run, host: str, port: int) -> Verdict:
        """A CONNECT is refused only by the network policy (placeholders are checked inside)."""
        if not self._allowed(run.resolved, host, port):
            return _blocked_by_policy(host, port, run.resolved.strict)
        return Verdict()

    async def on_request(self, run: Run, request: Request) -> Verdict:
        """Policy, placeholders, substitution, injection — see the module docstring. A grant that
        cannot produce a credential now (revoked, needs re-auth) answers 502 saying so."""
        try:
            return await self._decide(run, request)
        except ValetkeyError as exc:
            message = redact_text(str(exc))
            ctx = Context(rule="error:credential", logged_target=request.target)
            body = _json_response(502, f"valetkey could not add a credential: {message}")
            body.headers.append(("X-Valetkey-Error", "credential"))
            return Verdict(respond=body, context=ctx)

    async def _decide(self, run: Run, request: Request) -> Verdict:
        resolved: Resolved = run.resolved
        host, port = request.host, request.port
        ctx = Context(started=time.perf_counter(), logged_target=request.target)
        if self._registry.lookup(run.token) is not run:
            # unregistered (or re-registered) while this connection stayed open
            ctx.rule = "blocked:run-ended"
            return Verdict(
                block="run-ended", block_reason="this run is no longer registered", context=ctx
            )
        if not self._allowed(resolved, host, port):
            verdict = _blocked_by_policy(host, port, resolved.strict)
            ctx.rule = f"blocked:{verdict.block}"
            verdict.context = ctx
            return verdict
        binding = self._binding(resolved, host, port)
        secure = request.scheme == "https" or host in self._upstream_map
        secrets_by_grant: dict[str, Secret] = {}
        if resolved.by_placeholder and _mentions_placeholder(request):
            for other, where in _placeholders_in(request, resolved.by_placeholder):
                reason = None
                if other is not binding:
                    reason = (
                        f"the placeholder of grant {other.grant!r} may only be sent to "
                        f"{', '.join(p.text for p in other.patterns)}, not {host}"
                    )
                elif where != "header" and not resolved.substitute_anywhere:
                    reason = (
                        f"the placeholder of grant {other.grant!r} is only swapped in headers; "
                        f"this request carries it in its {where} (register the run with "
                        "substitution 'anywhere' to allow it)"
                    )
                elif not secure:
                    reason = (
                        f"valetkey sends the credential of grant {other.grant!r} over HTTPS only"
                    )
                if reason is not None:
                    await self._audit_leak(run, other, host, port, where)
                    ctx.rule = f"blocked:placeholder:{other.grant}"
                    return Verdict(
                        block=f"placeholder:{other.grant}", block_reason=reason, context=ctx
                    )
            if binding is not None:
                secret = await self.vend(run, binding)
                secrets_by_grant[binding.grant] = secret
                _substitute(request, binding.placeholder, secret.token or "")
                ctx.scrub[secret.token or ""] = binding.placeholder
                ctx.rule = f"substitute:{binding.grant}"
        if binding is not None:
            if not secure:
                ctx.rule = f"blocked:insecure:{binding.grant}"
                return Verdict(
                    block=f"insecure:{binding.grant}",
                    block_reason=(
                        f"valetkey adds the credential of grant {binding.grant!r} over HTTPS "
                        f"only: use https://{host}"
                    ),
                    context=ctx,
                )
            secret = secrets_by_grant.get(binding.grant) or await self.vend(run, binding)
            self._inject(request, binding, secret, ctx)
            ctx.rule = ctx.rule or f"inject:{binding.grant}"
        verdict = Verdict(context=ctx, connect_to=self._upstream_map.get(host))
        if resolved.transformers:
            for pattern, kind, transformer in resolved.transformers:
                if pattern.matches(host, port):
                    ctx.transformers.append((kind, transformer))
                    verdict.buffer_response = max(verdict.buffer_response, transformer.max_body)
            if ctx.transformers:
                # a transformer must see the whole, unencoded body: never stream it past one
                verdict.buffer_required = True
        return verdict

    def on_response(
        self, run: Run, request: Request, response: Response, verdict: Verdict
    ) -> Response:
        """Run the transformers the run asked for on this host, in order."""
        ctx: Context = verdict.context
        if not ctx.transformers:
            return response
        exchange = ProxyExchange(
            run_id=run.run_id,
            method=request.method,
            host=request.host,
            path=ctx.logged_target,
            scrub=dict(ctx.scrub),
        )
        current = ProxiedResponse(response.status, tuple(response.headers), response.body)
        for kind, transformer in ctx.transformers:
            if len(current.body) > transformer.max_body:
                continue
            try:
                current = transformer.transform(exchange, current)
            except Exception as exc:  # a broken transformer must not break the run
                log.warning("response transformer %s failed: %s", kind, redact_text(f"{exc!r}"))
        return Response(current.status, list(current.headers), current.body, response.reason)

    def on_complete(self, run: Run, request: Request, verdict: Verdict, outcome: Outcome) -> None:
        """One request-log line; injected values never appear."""
        if self._log is None:
            return
        ctx: Context | None = verdict.context
        entry: dict[str, Any] = {
            "ts": time.time(),
            "method": request.method,
            "scheme": request.scheme,
            "host": request.host,
            "port": request.port,
            "path": ctx.logged_target if ctx else _redact_values(request.target, ()),
            "status": outcome.status,
            "bytes_out": outcome.bytes_out,
            "bytes_in": outcome.bytes_in,
            "duration_ms": round(outcome.duration_ms, 3),
            "rule": (ctx.rule if ctx else None)
            or (f"blocked:{verdict.block}" if verdict.block else None),
        }
        if ctx and ctx.injected:
            entry["injected"] = dict(ctx.injected)
        if outcome.error:
            entry["error"] = outcome.error
        self._log.record(run.run_id, entry)

    async def local(self, request: Request, proxy_authorization: str | None) -> Response | None:
        """Requests to the proxy itself: an agent's named service by host
        (``<service>.<agent>.localhost``, see ``routing.py``), else by path prefix to
        ``local_handlers``."""
        if self.router is not None and (base := self.router.target(request.host)) is not None:
            return await self.router.forward(request, base)
        for prefix, handler in self.local_handlers.items():
            if request.target.startswith(prefix):
                run = self.authenticate(proxy_authorization) or self._run_from_authorization(
                    request.header("authorization")
                )
                if run is None:
                    return _json_response(401, "a valetkey run token is required")
                return await handler(request, run)
        return None

    # ------------------------------------------------------------------ internals

    def _run_from_authorization(self, value: str | None) -> Run | None:
        """``Authorization: Bearer <token>``, ``Basic …`` or the bare token (what AWS SDKs send
        from ``AWS_CONTAINER_AUTHORIZATION_TOKEN``)."""
        if not value:
            return None
        scheme, _, rest = value.partition(" ")
        if scheme.lower() == "basic":
            return self.authenticate(value)
        token = rest.strip() if scheme.lower() == "bearer" else value.strip()
        return self._registry.lookup(token) if is_token(token) else None

    def _allowed(self, resolved: Resolved, host: str, port: int) -> bool:
        key = (host, port)
        allowed = resolved.allowed.get(key)
        if allowed is None:
            listed = first_match(resolved.allow, host, port) is not None or any(
                first_match(b.patterns, host, port) for b in resolved.bindings
            )
            if resolved.strict:
                allowed = listed
            else:  # permissive: everything but this machine and link-local (cloud metadata)
                allowed = listed or not _local_address(host) or host in self._upstream_map
            if len(resolved.allowed) > 4096:
                resolved.allowed.clear()
            resolved.allowed[key] = allowed
        return allowed

    @staticmethod
    def _binding(resolved: Resolved, host: str, port: int) -> Binding | None:
        key = (host, port)
        if key in resolved.binding_for:
            return resolved.binding_for[key]
        found: Binding | None = None
        best_has_port = False
        for binding in resolved.bindings:
            pattern = first_match(binding.patterns, host, port)
            if pattern is not None and (found is None or (pattern.port and not best_has_port)):
                found, best_has_port = binding, pattern.port is not None
        if len(resolved.binding_for) > 4096:
            resolved.binding_for.clear()
        resolved.binding_for[key] = found
        return found

    async def vend(self, run: Run, binding: Binding) -> Secret:
        """The binding's current secret; a slug grant whose connection was replaced is
        re-resolved once (re-granted), so the new connection is used at once. Not audited per
        request: ``prepare`` audits the grant (a ``vend`` by ``proxy``) and the run's request
        log records every use."""
        broker = self._kernel.broker
        owner = run.spec.owner
        try:
            return await broker.vend(
                owner, binding.connection_id, actor=f"proxy:{run.run_id}", audit=False
            )
        except (NotFound, Revoked):
            if binding.grant.startswith("conn_"):
                raise
            conn = await self._connection_for(owner, binding.grant)
            binding.connection_id = conn.id
            return await broker.vend(owner, conn.id, actor=f"proxy:{run.run_id}", audit=False)

    @staticmethod
    def _inject(request: Request, binding: Binding, secret: Secret, ctx: Context) -> None:
        request.headers, injected, real = inject_headers(request.headers, binding, secret)
        ctx.injected.update(injected)
        ctx.real_values = (*ctx.real_values, *real)
        for value in real:  # the token and the API secret both go back to the placeholder
            ctx.scrub.setdefault(value, binding.placeholder)

    async def _audit_leak(
        self, run: Run, binding: Binding, host: str, port: int, where: str = ""
    ) -> None:
        log.warning(
            "run %s: placeholder of grant %s sent to %s:%s; blocked",
            run.run_id,
            binding.grant,
            host,
            port,
        )
        try:
            await self._kernel.store.audit.append(
                "proxy.placeholder_blocked",
                actor=f"proxy:{run.run_id}",
                owner=run.spec.owner,
                connection_id=binding.connection_id,
                detail={"grant": binding.grant, "host": host, "port": port, "where": where},
            )
        except ValetkeyError as exc:
            log.error("could not audit a blocked placeholder: %s", exc)


# ---------------------------------------------------------------------- helpers


def inject_headers(
    headers: list[tuple[str, str]], binding: Binding, secret: Secret
) -> tuple[list[tuple[str, str]], dict[str, str], tuple[str, ...]]:
    """Apply a binding's injection rules to ``headers``: the credential header (replacing the
    client's), removed headers, added headers merged with the client's value comma-joined.
    Returns the new headers, ``{name: "[REDACTED]"}`` for every header that holds a secret, and
    the real values placed (for scrubbing)."""
    injection = binding.injection
    token = secret.token or ""
    api_secret = secret.api_secret or ""
    remove = {h.lower() for h in injection.remove_headers}
    remove.add(injection.header.lower())
    out = [(k, v) for k, v in headers if k.lower() not in remove]
    out.append((injection.header, _fill(injection.format, token, api_secret)))
    injected = {injection.header: REDACTED}
    for name, template in injection.add_headers.items():
        added = _fill(template, token, api_secret)
        lname = name.lower()
        for i, (key, existing) in enumerate(out):
            if key.lower() == lname:
                out[i] = (key, f"{existing}, {added}" if existing else added)
                break
        else:
            out.append((name, added))
        if "{token}" in template or "{secret}" in template:
            injected[name] = REDACTED
    return out, injected, tuple(v for v in (token, api_secret) if v)


def url_problem(url: str) -> str | None:
    """Why a remote MCP server url is refused (https, or plain http to a loopback host)."""
    try:
        parts = urlsplit(url)
        host = parts.hostname
    except ValueError:
        return "its url is not a URL"
    if parts.scheme == "https" and host:
        return None
    if parts.scheme == "http" and host in ("127.0.0.1", "localhost", "::1"):
        return None
    return "its url must be https:// (plain http:// only to a loopback host)"


def _token_from_basic(value: str) -> str | None:
    scheme, _, encoded = value.partition(" ")
    if scheme.lower() != "basic":
        return None
    try:
        decoded = base64.b64decode(encoded.strip(), validate=True).decode()
    except (binascii.Error, UnicodeDecodeError):
        return None
    user, sep, token = decoded.partition(":")
    if not sep or user != "valetkey" or not is_token(token):
        return None
    return token


def _split_host_port(target: str) -> tuple[str, int]:
    host, _, port = target.rpartition(":")
    return host.strip("[]"), int(port)


def _fill(template: str, token: str, api_secret: str) -> str:
    return template.replace("{token}", token).replace("{secret}", api_secret)


def _mentions_placeholder(request: Request) -> bool:
    """Cheap first look on every request: does anything hold the marker (any case, ``_`` maybe
    percent-encoded)? Only then are placeholders looked for one by one."""
    if _MARK.search(request.target):
        return True
    for _, value in request.headers:
        if _MARK.search(value):
            return True
    return bool(request.body) and _MARK_B.search(request.body) is not None


def _folded(text: str) -> str:
    return unquote(text).lower() if "%" in text else text.lower()


def _placeholders_in(
    request: Request, by_placeholder: dict[str, Binding]
) -> list[tuple[Binding, str]]:
    """Every placeholder of the run in the request, with where it is (``header``, ``path``,
    ``query``, ``body``); matched case-insensitively and percent-decoded, so an encoded copy
    sent to the wrong host is caught too."""
    path, _, query = request.target.partition("?")
    folded_path, folded_query = _folded(path), _folded(query)
    headers = [_folded(v) for _, v in request.headers]
    body = request.body.lower()
    found = []
    for placeholder, binding in by_placeholder.items():
        needle = placeholder.lower()
        if any(needle in v for v in headers):
            found.append((binding, "header"))
        if needle in folded_path:
            found.append((binding, "path"))
        if needle in folded_query:
            found.append((binding, "query"))
        if needle.encode() in body:
            found.append((binding, "body"))
    return found


def _substitute(request: Request, placeholder: str, real: str) -> None:
    request.target = request.target.replace(placeholder, real)
    request.headers = [(k, v.replace(placeholder, real)) for k, v in request.headers]
    if request.body:
        request.body = request.body.replace(placeholder.encode(), real.encode())


def _redact_values(text: str, values: tuple[str, ...]) -> str:
    for value in values:
        if value:
            text = text.replace(value, REDACTED)
    return text


def _blocked_by_policy(host: str, port: int, strict: bool) -> Verdict:
    why = (
        "is not in this run's allow-list (strict network policy)"
        if strict
        else "is this machine or a link-local address; allow it with --allow"
    )
    return Verdict(block="network-policy", block_reason=f"{host}:{port} {why}")


def _local_address(host: str) -> bool:
    """Loopback, link-local (169.254/16: cloud metadata), unspecified, or ``*.localhost``."""
    if host == "localhost" or host.endswith(".localhost"):
        return True
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        return False
    return address.is_loopback or address.is_link_local or address.is_unspecified


def _json_response(status: int, message: str) -> Response:
    import json

    body = json.dumps({"error": message}).encode()
    return Response(status, [("Content-Type", "application/json")], body)

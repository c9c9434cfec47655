"""Grants for boxes: a box created with grants gets a proxy run of its own (``box-<box id>``),
bound to its container so the proxy's liveness check follows the container, and starts with
the proxy settings, the proxy's CA and a placeholder for each grant — the agent inside calls
APIs with credentials it never holds.

The box must reach the proxy: on a bridge network the proxy listens on the bridge address
(``[plugin.proxy] listen_host``) and ``proxy_host`` names it; on one machine without bridges,
the host network (``network = "host"`` with ``allow_host_network = true``, a deliberate choice:
such a box reaches every loopback service).
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import anyio

from valetkey_hookspecs import BoxFile, InvalidInput, NotFound, ValetkeyError

#: where the proxy's CA lands inside a box
CA_PATH = "/etc/valetkey/proxy-ca.pem"
BUNDLE_PATH = "/etc/valetkey/proxy-ca-bundle.pem"
_PROXY_VARS = ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy")
_BUNDLE_VARS = ("SSL_CERT_FILE", "REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "GIT_SSL_CAINFO")


@dataclass
class BoxRun:
    """The proxy run of one box."""

    run_id: str
    token: str = field(repr=False)
    env: dict[str, str] = field(default_factory=dict, repr=False)
    files: list[BoxFile] = field(default_factory=list)


def run_id_for(box_id: str) -> str:
    """The proxy run id of a box."""
    return f"box-{box_id}"


def _client_module() -> Any:
    try:
        from valetkey_proxy import client
    except ImportError:
        raise InvalidInput(
            "grants for boxes need the proxy plugin (pip install valetkey-proxy)"
        ) from None
    return client


async def register(
    home: Path, owner: str, grants: list[str], box_id: str, proxy_host: str
) -> BoxRun:
    """Register the box's run with the proxy daemon (started if needed); errors name the grant."""
    client_mod = _client_module()
    run_id = run_id_for(box_id)

    def call() -> dict[str, Any]:
        with client_mod.ensure_running(home) as client:
            with contextlib.suppress(NotFound):  # left by a box that vanished undestroyed
                client.unregister_run_id(run_id)
            result: dict[str, Any] = client.register_run(
                {"owner": owner, "grants": grants, "run_id": run_id}
            )
            return result

    reg = await anyio.to_thread.run_sync(call)
    token = str(reg["auth_token"])
    host = f"[{proxy_host}]" if ":" in proxy_host else proxy_host
    url = f"http://valetkey:{token}@{host}:{reg['proxy_port']}"
    env = dict.fromkeys(_PROXY_VARS, url)
    env.update(dict.fromkeys(_BUNDLE_VARS, BUNDLE_PATH))
    env["NODE_EXTRA_CA_CERTS"] = CA_PATH
    env.update({str(k): str(v) for k, v in (reg.get("env") or {}).items()})
    env["VALETKEY_RUN_ID"] = run_id
    files = [
        BoxFile(CA_PATH, Path(reg["ca_cert"]).read_bytes(), 0o644),
        BoxFile(BUNDLE_PATH, Path(reg["ca_bundle"]).read_bytes(), 0o644),
    ]
    return BoxRun(run_id=run_id, token=token, env=env, files=files)


async def bind(home: Path, run: BoxRun, container_id: str | None) -> None:
    """Tell the daemon which container the run belongs to (liveness follows it)."""
    client_mod = _client_module()

    def call() -> None:
        with client_mod.ensure_running(home) as client:
            client.update_run(run.token, container_id)

    await anyio.to_thread.run_sync(call)


async def unregister(home: Path, run_id: str) -> None:
    """Remove the box's run; nothing to do when the daemon or the run is gone already."""
    try:
        client_mod = _client_module()
    except InvalidInput:
        return

    def call() -> None:
        client = client_mod.running_client(home)
        if client is None:
            return
        with client, contextlib.suppress(ValetkeyError):
            client.unregister_run_id(run_id)

    await anyio.to_thread.run_sync(call)

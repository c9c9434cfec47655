"""Shared by test_oidc.py and test_admin.py (loaded by path: the tests run with
``--import-mode=importlib``): the real oidc-provider (tests/fixtures/oidc), a kernel with the
boxes plugin configured for it, the web apps in-process (``/auth``, ``/login``, ``/admin``) and a
scripted person who signs in (the provider's real login and consent pages over HTTP)."""

from __future__ import annotations

import asyncio
import importlib.util
import sys
from pathlib import Path
from types import ModuleType
from typing import Any

import httpx
from starlette.applications import Starlette
from starlette.routing import Mount

from valetkey.kernel import load
from valetkey.policy import parse_policy

REPO = Path(__file__).resolve().parents[3]
PUBLIC_URL = "http://127.0.0.1:8760"
ADMIN = "admin@corp.test"
ALLOWED = "alice@corp.test"
GUEST = "guest@other.test"  # allowed by e-mail, not by domain
STRANGER = "mallory@evil.test"
UNVERIFIED = "unverified:bob@corp.test"
NOT_ALLOWED_ADMIN = "root@ops.test"  # an admin not on the activation allow-lists


def load_oidc_fixture() -> ModuleType:
    """``tests/fixtures/oidc/oidc_fixture.py`` (the same module object the root conftest uses)."""
    name = "valetkey_tests_fixtures_oidc"
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(
        name, REPO / "tests" / "fixtures" / "oidc" / "oidc_fixture.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


def oidc_table(server: Any, **overrides: Any) -> dict[str, Any]:
    """``[plugin.boxes.oidc]`` for the fixture's web client."""
    table = {
        "issuer": server.issuer,
        "client_id": server.web_client_id,
        "client_secret": server.web_client_secret,
        "allowed_domains": ["corp.test"],
        "allowed_emails": [GUEST],
    }
    table.update(overrides)
    return table


def web_kernel(home: Path, **boxes: Any) -> Any:
    """A kernel with the store, sealer and boxes plugin (no box runtime)."""
    doc = {
        "autoload": False,
        "enable": ["store-sqlite", "secrets-keyring", "sealer-local", "boxes"],
        "plugin": {"boxes": boxes},
    }
    return load(policy=parse_policy(doc), home=home)


def web_app(kernel: Any) -> Starlette:
    """The plugin's web routes as ``valetkey serve`` mounts them."""
    from valetkey_boxes.admin import build_admin_app
    from valetkey_boxes.authpage import build_auth_app
    from valetkey_boxes.websession import build_login_app

    return Starlette(
        routes=[
            Mount("/auth", build_auth_app(kernel)),
            Mount("/login", build_login_app(kernel)),
            Mount("/admin", build_admin_app(kernel)),
        ]
    )


def browser(kernel: Any) -> httpx.AsyncClient:
    """A cookie-keeping client talking to the web apps in-process."""
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=web_app(kernel)),
        base_url=PUBLIC_URL,
        follow_redirects=False,
    )


async def sign_in(
    client: httpx.AsyncClient, server: Any, account: str, return_to: str = "/admin/"
) -> httpx.Response:
    """Start at ``/login``, sign in at the provider as ``account``, open the callback."""
    started = await client.get("/login/", params={"return_to": return_to})
    assert started.status_code == 303, started.text
    callback = await asyncio.to_thread(
        server.approve_authorization, started.headers["location"], account
    )
    assert callback.startswith(f"{PUBLIC_URL}/login/callback?"), callback
    return await client.get(callback)


async def provider_callback(client: httpx.AsyncClient, server: Any, account: str) -> str:
    """Start a login and approve it, but do not open the callback: return its URL."""
    started = await client.get("/login/", params={"return_to": "/admin/"})
    assert started.status_code == 303, started.text
    return str(
        await asyncio.to_thread(server.approve_authorization, started.headers["location"], account)
    )

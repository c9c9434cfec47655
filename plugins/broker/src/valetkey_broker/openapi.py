"""The OpenAPI 3.1 document of the broker's REST API (served at ``/api/openapi.json``).

Written by hand next to the routes it describes (``api.py``); a test checks every route is in
it. The API is additive-only: fields and endpoints are added, never renamed or removed.
"""

from __future__ import annotations

from typing import Any

ERROR = {"$ref": "#/components/schemas/Error"}
CONNECTION = {"$ref": "#/components/schemas/Connection"}


def _responses(ok: dict[str, Any], *errors: int) -> dict[str, Any]:
    out: dict[str, Any] = dict(ok)
    for status in (401, *errors):
        out[str(status)] = {
            "description": "error",
            "content": {"application/json": {"schema": ERROR}},
        }
    return out


def _json(schema: dict[str, Any], description: str = "ok") -> dict[str, Any]:
    return {"description": description, "content": {"application/json": {"schema": schema}}}


def _body(properties: dict[str, Any], required: list[str] | None = None) -> dict[str, Any]:
    schema: dict[str, Any] = {
        "type": "object",
        "properties": properties,
        "additionalProperties": False,
    }
    if required:
        schema["required"] = required
    return {"required": bool(required), "content": {"application/json": {"schema": schema}}}


ID = [{"name": "id", "in": "path", "required": True, "schema": {"type": "string"}}]
STR = {"type": "string"}


def document() -> dict[str, Any]:
    """The document."""
    return {
        "openapi": "3.1.0",
        "info": {"title": "valetkey broker API", "version": "1"},
        "servers": [{"url": "/api"}],
        "security": [{"bearer": []}],
        "components": {
            "securitySchemes": {"bearer": {"type": "http", "scheme": "bearer"}},
            "schemas": {
                "Error": {
                    "type": "object",
                    "required": ["error"],
                    "properties": {
                        "error": {
                            "type": "object",
                            "required": ["code", "message"],
                            "properties": {"code": STR, "message": STR},
                        }
                    },
                },
                "Connection": {
                    "type": "object",
                    "properties": {
                        "id": STR,
                        "connector": STR,
                        "label": STR,
                        "status": {"enum": ["ACTIVE", "NEEDS_REAUTH", "REVOKED", "ERROR"]},
                        "error": {"type": ["string", "null"]},
                        "created_at": {"type": "string", "format": "date-time"},
                        "updated_at": {"type": "string", "format": "date-time"},
                    },
                },
            },
        },
        "paths": {
            "/connectors": {
                "get": {
                    "summary": "The connector catalog",
                    "responses": _responses({"200": _json({"type": "array"})}),
                }
            },
            "/connections": {
                "get": {
                    "summary": "The caller's connections",
                    "responses": _responses({"200": _json({"type": "array", "items": CONNECTION})}),
                },
                "post": {
                    "summary": "Create a connection (no credential yet)",
                    "requestBody": _body({"connector": STR, "label": STR}, ["connector"]),
                    "responses": _responses({"201": _json(CONNECTION)}, 400, 404),
                },
            },
            "/connections/{id}": {
                "parameters": ID,
                "get": {
                    "summary": "One connection",
                    "responses": _responses({"200": _json(CONNECTION)}, 404),
                },
                "patch": {
                    "summary": "Change the label, or revoke (status REVOKED)",
                    "requestBody": _body({"label": STR, "status": {"enum": ["REVOKED"]}}),
                    "responses": _responses({"200": _json(CONNECTION)}, 400, 404),
                },
                "delete": {
                    "summary": "Delete the connection and its credential",
                    "responses": _responses({"204": {"description": "deleted"}}, 404),
                },
            },
            "/connections/{id}/credentials": {
                "parameters": ID,
                "post": {
                    "summary": "Store a credential (write-only)",
                    "requestBody": _body(
                        {
                            "api_key": STR,
                            "api_secret": STR,
                            "access_token": STR,
                            "refresh_token": STR,
                            "expires_in": {"type": "number"},
                        }
                    ),
                    "responses": _responses({"204": {"description": "stored"}}, 400, 404),
                },
            },
            "/connections/{id}/token": {
                "parameters": ID,
                "post": {
                    "summary": "Vend the current token (refreshed first when near expiry)",
                    "responses": _responses(
                        {
                            "200": _json(
                                {
                                    "type": "object",
                                    "properties": {
                                        "token": STR,
                                        "token_type": STR,
                                        "api_secret": {"type": ["string", "null"]},
                                        "expires_at": {"type": ["string", "null"]},
                                    },
                                }
                            )
                        },
                        404,
                        409,
                        410,
                        429,
                    ),
                },
            },
            "/connections/{id}/oauth/start": {
                "parameters": ID,
                "post": {
                    "summary": "Start an authorization-code login; send the person to "
                    "authorization_url",
                    "requestBody": _body(
                        {"return_to": STR, "scopes": {"type": "array", "items": STR}}
                    ),
                    "responses": _responses(
                        {
                            "200": _json(
                                {
                                    "type": "object",
                                    "properties": {"authorization_url": STR, "expires_at": STR},
                                }
                            )
                        },
                        400,
                        404,
                    ),
                },
            },
            "/oauth/callback": {
                "get": {
                    "summary": "Where the provider redirects (single-use state, 10 min)",
                    "security": [],
                    "responses": _responses(
                        {"200": _json({"type": "object"}), "303": {"description": "to return_to"}},
                        400,
                    ),
                },
            },
        },
    }

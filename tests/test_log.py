"""The redacting log filter: registered secrets and credential-shaped values never reach a log
line, including exception text."""

from __future__ import annotations

import io
import logging

import pytest

from valetkey import log


@pytest.fixture
def captured():
    stream = io.StringIO()
    logger = logging.getLogger("valetkey.test-redaction")
    handler = logging.StreamHandler(stream)
    handler.addFilter(log.RedactingFilter())
    logger.addHandler(handler)
    logger.setLevel(logging.DEBUG)
    yield logger, stream
    logger.removeHandler(handler)


def test_registered_secrets_are_redacted_in_messages_and_args(captured):
    logger, stream = captured
    log.register_secret("gho_abcdef123456")
    logger.debug("token is %s", "gho_abcdef123456")
    logger.debug("inline gho_abcdef123456 too")
    assert "gho_abcdef123456" not in stream.getvalue()
    assert stream.getvalue().count("[REDACTED]") == 2


@pytest.mark.parametrize(
    "line",
    [
        "Authorization: Bearer ya29.a0AfH6SMBx",
        "proxy-authorization=Basic dmFsZXRrZXk6c2VjcmV0",
        '{"access_token": "at-9f8e7d6c5b4a", "expires_in": 3600}',
        "refresh_token=rt-0123456789&grant_type=refresh_token",
        "client_secret=cs-abcdefgh",
        "x-api-key: sk-live-1234567890",
        "{'access_token': 'at-9f8e7d6c5b4a'}",
        "headers={'Authorization': 'token ya29.a0AfH6SMBx'}",
        "PRIVATE-TOKEN: cs-abcdefgh",
        "X-Auth-Token=sk-live-1234567890",
        "code=rt-0123456789&code_verifier=dmFsZXRrZXk6c2VjcmV0",
        "postgres://app:cs-abcdefgh@db.example/valetkey",
    ],
)
def test_credential_shaped_values_are_redacted(captured, line):
    logger, stream = captured
    logger.info(line)
    out = stream.getvalue()
    for secret in (
        "ya29.a0AfH6SMBx",
        "dmFsZXRrZXk6c2VjcmV0",
        "at-9f8e7d6c5b4a",
        "rt-0123456789",
        "cs-abcdefgh",
        "sk-live-1234567890",
    ):
        assert secret not in out
    assert "[REDACTED]" in out


def test_exception_text_is_redacted(captured):
    logger, stream = captured
    log.register_secret("sup3r-s3cret-value")
    try:
        raise RuntimeError("upstream said sup3r-s3cret-value")
    except RuntimeError:
        logger.exception("call failed")
    assert "sup3r-s3cret-value" not in stream.getvalue()
    assert "RuntimeError: upstream said [REDACTED]" in stream.getvalue()


def test_short_values_are_not_registered(captured):
    logger, stream = captured
    log.register_secret("abc")
    logger.info("abc def")
    assert stream.getvalue().strip() == "abc def"


def test_the_root_handler_redacts_every_library_and_chained_causes(tmp_path):
    """Run in a subprocess: log.setup() owns the root logger, so a third-party logger (the MCP
    SDK, httpx, uvicorn) and an exception whose cause holds the secret are redacted too."""
    import subprocess
    import sys

    script = """
import logging
from valetkey import log
log.setup()
log.register_secret("gho_topsecret123456")
logging.basicConfig(level=logging.INFO)  # what the MCP SDK does: must add nothing
other = logging.getLogger("mcp.server.lowlevel")
try:
    try:
        raise KeyError("gho_topsecret123456")
    except KeyError as inner:
        raise RuntimeError() from inner
except RuntimeError:
    other.exception("tool raised")
other.warning("Authorization: Bearer gho_topsecret123456")
"""
    proc = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, check=True
    )
    assert "gho_topsecret123456" not in proc.stderr
    assert "tool raised" in proc.stderr and "KeyError: '[REDACTED]'" in proc.stderr
    assert proc.stderr.count("[REDACTED]") >= 2

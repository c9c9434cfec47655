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

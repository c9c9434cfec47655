"""NotifierContract: what every notifier must do."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from ..interfaces import Notifier
from ..types import Notification


class NotifierContract:
    """Subclass and override ``notifier``; override ``delivered`` to return what was delivered
    so far (a list of strings or payloads) so the contract can check content."""

    pytestmark = pytest.mark.anyio

    @pytest.fixture
    def notifier(self) -> Notifier:
        raise NotImplementedError("override the 'notifier' fixture to return your notifier")

    @pytest.fixture
    def delivered(self) -> Callable[[], list[Any]]:
        raise NotImplementedError("override 'delivered' to return what the notifier delivered")

    def test_matches_the_protocol(self, notifier: Notifier) -> None:
        assert isinstance(notifier, Notifier)
        assert isinstance(notifier.name, str)
        assert notifier.name

    async def test_delivers_each_notification_once(
        self, notifier: Notifier, delivered: Callable[[], list[Any]]
    ) -> None:
        before = len(delivered())
        await notifier.notify(
            Notification(
                kind="needs_reauth",
                message="reconnect acme",
                owner="ann",
                connection_id="conn_1",
                connector="acme",
            )
        )
        await notifier.notify(
            Notification(kind="refresh_failed", message="still failing", owner="bob")
        )
        out = delivered()[before:]
        assert len(out) == 2
        assert "reconnect acme" in str(out[0])
        assert "conn_1" in str(out[0])
        assert "still failing" in str(out[1])

    async def test_data_fields_are_delivered(
        self, notifier: Notifier, delivered: Callable[[], list[Any]]
    ) -> None:
        await notifier.notify(
            Notification(
                kind="needs_reauth", message="m", data={"connect_url": "https://example.test/c"}
            )
        )
        assert "https://example.test/c" in str(delivered()[-1])

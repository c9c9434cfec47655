"""notify-log through the NotifierContract, plus its level handling and config errors."""

from __future__ import annotations

import logging

import pytest

from valetkey_hookspecs import ConfigError, Notification
from valetkey_hookspecs.testing import NotifierContract, PluginContract
from valetkey_notify_log.notifier import LogNotifier


class TestLogNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self):
        return LogNotifier()

    @pytest.fixture
    def delivered(self, caplog):
        caplog.set_level(logging.DEBUG, logger="valetkey.notify")
        return lambda: [r.getMessage() for r in caplog.records if r.name == "valetkey.notify"]


@pytest.mark.anyio
async def test_actionable_events_log_at_the_configured_level(caplog):
    caplog.set_level(logging.DEBUG, logger="valetkey.notify")
    notifier = LogNotifier(level="ERROR")
    await notifier.notify(
        Notification(kind="needs_reauth", message="reconnect github", owner="ann")
    )
    await notifier.notify(Notification(kind="refreshed", message="refreshed github", owner="ann"))
    levels = [(r.levelno, r.getMessage().split(" {")[0]) for r in caplog.records]
    assert levels == [(logging.ERROR, "reconnect github"), (logging.INFO, "refreshed github")]
    assert '"owner": "ann"' in caplog.records[0].getMessage()


def test_unknown_level_is_a_config_error_naming_the_key():
    with pytest.raises(
        ConfigError, match=r"\[plugin.notify-log\] level: unknown logging level 'LOUD'"
    ):
        LogNotifier(level="LOUD")


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "notify-log"

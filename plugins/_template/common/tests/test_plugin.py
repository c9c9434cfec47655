"""Generic plugin checks from valetkey's conformance kit: the entry point resolves, hooks are
known, config works with defaults."""

import pytest

from valetkey_hookspecs.testing import PluginContract


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "${name}"

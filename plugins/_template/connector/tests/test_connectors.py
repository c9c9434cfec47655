"""The conformance kit's connector checks, run against this plugin's connectors."""

import pytest

from valetkey_hookspecs.testing import ConnectorContract

from ${module} import CONNECTORS


class TestConnectors(ConnectorContract):
    @pytest.fixture
    def connectors(self):
        return list(CONNECTORS)

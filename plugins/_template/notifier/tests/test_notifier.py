"""The conformance kit's notifier checks, run against this plugin's notifier."""

import json

import pytest

from valetkey_hookspecs.testing import NotifierContract

from ${module} import ${cls}Notifier


class TestNotifier(NotifierContract):
    @pytest.fixture
    def notifier(self, tmp_path):
        return ${cls}Notifier(tmp_path / "out.jsonl")

    @pytest.fixture
    def delivered(self, tmp_path):
        def read():
            path = tmp_path / "out.jsonl"
            if not path.exists():
                return []
            return [json.loads(line) for line in path.read_text().splitlines()]

        return read

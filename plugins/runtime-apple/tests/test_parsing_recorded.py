"""Parsing of recorded ``list --format json`` / ``inspect`` output (shapes written from the CLI's
source, not captured from a real engine: see recorded/README.md)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from valetkey_hookspecs.errors import PluginError
from valetkey_runtime_apple import commands as c

from .conftest import recorded


def test_list_parses_every_container_and_keeps_only_managed_ones():
    containers = c.parse_containers(recorded("list.json"))
    assert [x.id for x in containers] == ["vk-one", "vk-two", "someones-db", "vk-fake-managed"]
    managed = c.managed_only(containers)
    # no label, and valetkey.managed=0, are both unmanaged
    assert [x.id for x in managed] == ["vk-one", "vk-two"]


def test_a_managed_container_becomes_a_box():
    one = c.parse_containers(recorded("inspect.json"))[0]
    box = one.to_box("apple")
    assert (box.id, box.runtime, box.image, box.state, box.container_id) == (
        "vk-one", "apple", "docker.io/library/alpine:3.20", "running", "vk-one")  # fmt: skip
    assert box.description == "first box"
    assert box.spoke == "mac-mini"
    # Swift's default date encoding: seconds since 2001-01-01
    assert box.created_at == datetime(2025, 7, 1, 0, 0, 0, 500000, tzinfo=UTC)


def test_missing_created_at_and_stopped_state():
    two = c.parse_containers(recorded("list.json"))[1].to_box("apple")
    assert two.created_at is None
    assert two.state == "stopped"
    assert two.description == ""


def test_iso_dates_are_read_too():
    item = {"status": "running", "configuration": {"id": "x", "image": {"reference": "i"},
            "metadata": {"createdAt": "2025-07-01T00:00:00Z"}}}  # fmt: skip
    assert c.parse_container(item).created_at == datetime(2025, 7, 1, tzinfo=UTC)


def test_empty_inspect_is_no_container():
    assert c.parse_containers(recorded("inspect_empty.json")) == []


@pytest.mark.parametrize("text", ["not json", '{"a": 1}', '[{"status": "running"}]'])
def test_unexpected_output_is_a_plugin_error_without_the_payload(text):
    with pytest.raises(PluginError) as caught:
        c.parse_containers(text)
    assert "running" not in str(caught.value)


def test_parse_errors_never_quote_the_environment():
    item = {"status": "running", "configuration": {"labels": {},
            "initProcess": {"environment": ["TOKEN=s3cret"]}}}  # fmt: skip
    with pytest.raises(PluginError) as caught:
        c.parse_container(item)
    assert "s3cret" not in str(caught.value)

"""The local sealer: the conformance contract, the key ring's sources and its persistence."""

from __future__ import annotations

import base64
import json
import logging
import os
import stat
import subprocess
import sys
import time
from datetime import UTC, datetime

import pytest

import valetkey_sealer_local as plugin
from valetkey_hookspecs import ConfigError, PluginContext, Sealer, SealError
from valetkey_hookspecs.files import private_dir
from valetkey_hookspecs.testing import PluginContract, SealerContract
from valetkey_sealer_local.config import LocalSealerConfig
from valetkey_sealer_local.sealer import ENV_KEK, LocalSealer, kek_id

KEK = os.urandom(32)
KEK_B64 = base64.b64encode(KEK).decode()


def _start(sealer):
    """Seal once (the first seal of a new vault makes the ring); the current key id."""
    return sealer.seal(b"first", b"cred_0").key_id


class TestSealerWithSecretStore(SealerContract):
    @pytest.fixture
    def sealer(self, secrets, no_env_kek):
        return LocalSealer(secrets)


class TestSealerWithEnvKek(SealerContract):
    @pytest.fixture
    def sealer(self, secrets, monkeypatch):
        monkeypatch.setenv(ENV_KEK, KEK_B64)
        sealer = LocalSealer(secrets)
        assert sealer.current_key_id() == kek_id(KEK)
        assert secrets.data == {}  # VALETKEY_KEK alone is not saved
        return sealer


class TestPlugin(PluginContract):
    @pytest.fixture
    def plugin_name(self):
        return "sealer-local"


# ---------------------------------------------------------------------------- VALETKEY_KEK


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("not base64 at all!", "not valid base64"),
        (base64.b64encode(b"k" * 16).decode(), "decodes to 16 bytes"),
        (base64.b64encode(b"k" * 31).decode(), "decodes to 31 bytes"),
        (base64.b64encode(b"k" * 33).decode(), "decodes to 33 bytes"),
        (base64.b64encode(b"k" * 64).decode(), "decodes to 64 bytes"),
        (KEK.hex(), "decodes to 48 bytes"),  # hex is valid base64 too, of the wrong length
    ],
)
def test_a_bad_env_kek_is_a_config_error_without_the_value(secrets, monkeypatch, value, expected):
    monkeypatch.setenv(ENV_KEK, value)
    sealer = LocalSealer(secrets)
    with pytest.raises(ConfigError) as info:
        sealer.seal(b"x", b"rec")
    message = str(info.value)
    assert ENV_KEK in message
    assert expected in message
    assert value not in message
    assert "base64 of exactly 32 random bytes" in message
    assert secrets.data == {}


def test_url_safe_base64_and_whitespace_are_accepted(secrets, monkeypatch):
    monkeypatch.setenv(ENV_KEK, "  " + base64.urlsafe_b64encode(KEK).decode() + "\n")
    assert LocalSealer(secrets).current_key_id() == kek_id(KEK)


def test_an_empty_env_kek_counts_as_unset(secrets, monkeypatch):
    monkeypatch.setenv(ENV_KEK, "")
    sealer = LocalSealer(secrets)
    assert _start(sealer) != kek_id(b"")
    assert "kek-ring" in secrets.data


def test_a_wrong_kek_shows_up_as_an_unknown_key_id(secrets, monkeypatch):
    monkeypatch.setenv(ENV_KEK, KEK_B64)
    sealed = LocalSealer(secrets).seal(b"payload", b"cred_1")
    monkeypatch.setenv(ENV_KEK, base64.b64encode(os.urandom(32)).decode())
    with pytest.raises(SealError) as info:
        LocalSealer(secrets).open(sealed, b"cred_1")
    assert kek_id(KEK) in str(info.value)
    assert "'cred_1'" in str(info.value)


def test_rotating_from_env_saves_the_env_key_into_the_ring(secrets, monkeypatch, sealer_log):
    monkeypatch.setenv(ENV_KEK, KEK_B64)
    sealer = LocalSealer(secrets)
    old = sealer.seal(b"sealed-under-env", b"cred_1")
    new_id = sealer.rotate_kek()
    ring = json.loads(secrets.data["kek-ring"])
    assert ring["current"] == new_id
    assert set(ring["keys"]) == {kek_id(KEK), new_id}
    (note,) = sealer_log.messages(logging.WARNING)
    assert "VALETKEY_KEK" in note
    assert "ignored" in note
    assert KEK_B64 not in note

    # a new process, VALETKEY_KEK still set: the ring wins, old records still open
    again = LocalSealer(secrets)
    assert again.current_key_id() == new_id
    assert again.open(old, b"cred_1") == b"sealed-under-env"
    assert sealer_log.messages(logging.WARNING) == [note]  # env key is in the ring: no warning


def test_an_env_kek_missing_from_the_ring_is_reported(secrets, monkeypatch, sealer_log):
    _start(LocalSealer(secrets))  # generates and saves a ring
    monkeypatch.setenv(ENV_KEK, KEK_B64)
    sealer = LocalSealer(secrets)
    assert sealer.current_key_id() != kek_id(KEK)
    (warning,) = sealer_log.messages(logging.WARNING)
    assert "VALETKEY_KEK is set but ignored" in warning
    assert kek_id(KEK) in warning
    assert KEK_B64 not in warning


# ---------------------------------------------------------------------------- the ring


def test_a_generated_kek_is_saved_exactly_once(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    for i in range(20):
        assert sealer.open(sealer.seal(b"v", f"r{i}".encode()), f"r{i}".encode()) == b"v"
    other = LocalSealer(secrets)
    assert other.current_key_id() == sealer.current_key_id()
    other.seal(b"v", b"r")
    assert secrets.writes["kek-ring"] == 1


def test_the_ring_persists_across_instances(secrets, no_env_kek):
    one = LocalSealer(secrets)
    first = one.seal(b"first", b"cred_1")
    rotated = one.rotate_kek()
    second = one.seal(b"second", b"cred_2")

    two = LocalSealer(secrets)
    assert two.current_key_id() == rotated
    assert two.key_ids() == one.key_ids()
    assert two.open(first, b"cred_1") == b"first"
    assert two.open(second, b"cred_2") == b"second"


def test_another_instances_rotation_is_picked_up_on_open(secrets, no_env_kek):
    server = LocalSealer(secrets)
    _start(server)
    cli = LocalSealer(secrets)
    new = cli.rotate_kek()
    sealed = cli.seal(b"from-the-cli", b"cred_9")
    assert server.open(sealed, b"cred_9") == b"from-the-cli"  # re-read the ring once
    assert server.current_key_id() == new


def test_rotate_and_retire_start_from_the_stored_ring(secrets, no_env_kek):
    a = LocalSealer(secrets)
    b = LocalSealer(secrets)
    first = _start(a)
    second = a.rotate_kek()
    third = b.rotate_kek()  # b had not seen `second`: it must not drop it
    assert b.key_ids() == [third, first, second]
    assert a.retire_keys([second]) == [first]
    assert LocalSealer(secrets).key_ids() == [third, second]


def test_retire_saves_only_when_something_is_dropped(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    _start(sealer)
    assert sealer.retire_keys([]) == []
    assert secrets.writes["kek-ring"] == 1


@pytest.mark.parametrize(
    "raw",
    [
        "not json",
        "[]",
        '{"current": "x"}',
        '{"current": "nope", "keys": {}}',
        '{"current": "abc", "keys": {"abc": "!!!"}}',
        '{"current": "abc", "keys": {"abc": "' + base64.b64encode(b"k" * 16).decode() + '"}}',
        '{"current": "abc", "keys": {"abc": "' + KEK_B64 + '"}}',
    ],
)
def test_a_corrupt_ring_is_a_config_error_without_key_bytes(secrets, no_env_kek, raw):
    secrets.data["kek-ring"] = raw
    with pytest.raises(ConfigError) as info:
        LocalSealer(secrets).seal(b"x", b"r")
    message = str(info.value)
    assert "'kek-ring'" in message
    assert KEK_B64 not in message
    assert secrets.writes["kek-ring"] == 0  # never overwritten


def test_repr_shows_key_ids_only(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    assert "not loaded" in repr(sealer)
    sealer.rotate_kek()
    text = repr(sealer) + str(sealer)
    for key_id, encoded in json.loads(secrets.data["kek-ring"])["keys"].items():
        assert key_id in text
        assert encoded not in text
        raw = base64.b64decode(encoded)
        assert raw.hex() not in text
        assert repr(raw) not in text
    assert not any(isinstance(v, bytes) for v in vars(sealer).values())


def test_errors_name_the_record_and_hide_binary_ids(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    sealed = sealer.seal(b"x", b"\xff\x00binary")
    with pytest.raises(SealError, match="<7 bytes: ff006f74686572>"):
        sealer.open(sealed, b"\xff\x00other")


def test_the_wire_format(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    sealed = sealer.seal(b"hello", b"cred_1")
    assert len(sealed.ciphertext) == 12 + 5 + 16
    assert len(sealed.wrapped_key) == 12 + 32 + 16
    assert len(sealed.key_id) == 16
    assert all(c in "0123456789abcdef" for c in sealed.key_id)


def test_isinstance_does_not_load_or_create_a_key(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    assert isinstance(sealer, Sealer)
    assert secrets.data == {}
    assert not secrets.reads
    assert "not loaded" in repr(sealer)


# ---------------------------------------------------------------------------- a running server


def _ring(secrets):
    return json.loads(secrets.data["kek-ring"])


def test_a_server_seals_under_the_new_key_once_its_ring_is_ring_ttl_old(
    secrets, no_env_kek, monotonic
):
    server = LocalSealer(secrets, ring_ttl=30.0, now=monotonic)
    old = _start(server)
    cli = LocalSealer(secrets)
    new = cli.rotate_kek()

    monotonic.advance(29.0)
    reads = secrets.reads["kek-ring"]
    early = server.seal(b"early", b"cred_1")
    assert early.key_id == old  # within ring_ttl: the server's view of the ring
    assert server.current_key_id() == old
    assert secrets.reads["kek-ring"] == reads  # no secret store read per seal

    monotonic.advance(1.0)
    late = server.seal(b"late", b"cred_2")
    assert late.key_id == new
    assert server.key_ids() == [new, old]
    assert secrets.reads["kek-ring"] == reads + 1
    assert cli.open(early, b"cred_1") == b"early"
    assert cli.open(late, b"cred_2") == b"late"

    monotonic.advance(29.0)
    server.seal(b"again", b"cred_3")
    assert secrets.reads["kek-ring"] == reads + 1  # read again only ring_ttl later


def test_rewrap_and_current_key_id_follow_the_ring_too(secrets, no_env_kek, monotonic):
    server = LocalSealer(secrets, ring_ttl=30.0, now=monotonic)
    sealed = server.seal(b"payload", b"cred_1")
    new = LocalSealer(secrets).rotate_kek()
    assert server.rewrap(sealed, b"cred_1") == sealed  # not stale yet: already current
    monotonic.advance(30.0)
    assert server.current_key_id() == new
    moved = server.rewrap(sealed, b"cred_1")
    assert moved.key_id == new
    assert server.open(moved, b"cred_1") == b"payload"


def test_ring_ttl_0_re_reads_before_every_seal(secrets, no_env_kek):
    server = LocalSealer(secrets, ring_ttl=0.0)
    _start(server)
    new = LocalSealer(secrets).rotate_kek()
    reads = secrets.reads["kek-ring"]
    assert server.seal(b"x", b"r").key_id == new
    server.seal(b"x", b"r")
    assert secrets.reads["kek-ring"] == reads + 2


def test_ring_ttl_with_the_real_clock(secrets, no_env_kek):
    server = LocalSealer(secrets, ring_ttl=0.05)
    old = _start(server)
    new = LocalSealer(secrets).rotate_kek()
    assert server.seal(b"x", b"r").key_id == old
    time.sleep(0.06)
    assert server.seal(b"x", b"r").key_id == new


def test_repr_does_not_re_read_the_ring(secrets, no_env_kek, monotonic):
    sealer = LocalSealer(secrets, ring_ttl=1.0, now=monotonic)
    _start(sealer)
    reads = secrets.reads["kek-ring"]
    monotonic.advance(60.0)
    repr(sealer)
    assert secrets.reads["kek-ring"] == reads


def test_a_failed_re_read_fails_the_seal(secrets, no_env_kek, monotonic):
    server = LocalSealer(secrets, ring_ttl=30.0, now=monotonic)
    _start(server)
    secrets.data["kek-ring"] = "not json"
    server.seal(b"x", b"r")  # not stale yet: the ring in memory
    monotonic.advance(30.0)
    with pytest.raises(ConfigError, match="not valid JSON"):
        server.seal(b"x", b"r")  # rather than sealing under a key that may be retired


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_ring_ttl_is_rejected(secrets, bad):
    with pytest.raises(ValueError, match="ring_ttl"):
        LocalSealer(secrets, ring_ttl=bad)


def test_rotate_records_when_the_old_key_was_superseded(secrets, no_env_kek, wall):
    sealer = LocalSealer(secrets, utc_now=wall)
    first = _start(sealer)
    assert _ring(secrets)["superseded_at"] == {}
    wall.advance(10)
    second = sealer.rotate_kek()
    assert _ring(secrets)["superseded_at"] == {first: "2025-06-01T12:00:10+00:00"}
    wall.advance(10)
    third = sealer.rotate_kek()
    assert _ring(secrets)["superseded_at"] == {
        first: "2025-06-01T12:00:10+00:00",
        second: "2025-06-01T12:00:20+00:00",
    }
    assert sealer.retire_keys([], min_age=0) == [first, second]
    ring = _ring(secrets)
    assert ring["superseded_at"] == {}
    assert list(ring["keys"]) == [third]


def test_retire_waits_min_age_after_the_rotation(secrets, no_env_kek, wall):
    cli = LocalSealer(secrets, utc_now=wall)
    old = _start(cli)
    cli.rotate_kek()
    wall.advance(599)
    assert cli.retire_keys([], min_age=600) == []
    assert old in LocalSealer(secrets).key_ids()
    wall.advance(1)
    assert cli.retire_keys([old], min_age=600) == []  # old enough, but in use
    assert cli.retire_keys([], min_age=600) == [old]


def test_rotation_with_a_running_server_loses_no_record(secrets, no_env_kek, monotonic, wall):
    """The ``valetkey vault rotate-kek`` sequence while ``valetkey serve`` keeps sealing."""
    server = LocalSealer(secrets, ring_ttl=30.0, now=monotonic, utc_now=wall)
    cli = LocalSealer(secrets, ring_ttl=30.0, now=monotonic, utc_now=wall)
    records = {b"cred_1": server.seal(b"one", b"cred_1")}
    old = _start(server)

    new = cli.rotate_kek()
    records = {aad: cli.rewrap(s, aad) for aad, s in records.items()}
    records[b"cred_2"] = server.seal(b"two", b"cred_2")  # the server has not seen the rotation
    assert records[b"cred_2"].key_id == old
    # the CLI counted the keys in use before cred_2 was stored, so it passes only the new key;
    # the grace keeps the old one
    assert cli.retire_keys([new], min_age=600) == []

    monotonic.advance(30.0)
    wall.advance(30)
    records[b"cred_3"] = server.seal(b"three", b"cred_3")
    assert records[b"cred_3"].key_id == new
    assert server.open(records[b"cred_2"], b"cred_2") == b"two"

    wall.advance(600)
    in_use = sorted({s.key_id for s in records.values()})
    assert cli.retire_keys(in_use, min_age=600) == []  # cred_2 still uses it
    records = {aad: cli.rewrap(s, aad) for aad, s in records.items()}
    assert cli.retire_keys(sorted({s.key_id for s in records.values()}), min_age=600) == [old]

    monotonic.advance(30.0)
    assert server.key_ids() == [new]
    opened = {aad: server.open(s, aad) for aad, s in records.items()}
    assert opened == {b"cred_1": b"one", b"cred_2": b"two", b"cred_3": b"three"}


def test_a_ring_without_superseded_at_counts_its_old_keys_superseded_at_retire(
    secrets, no_env_kek, wall
):
    sealer = LocalSealer(secrets)
    first = _start(sealer)
    second = sealer.rotate_kek()
    ring = _ring(secrets)
    del ring["superseded_at"]  # as saved before the field existed
    secrets.data["kek-ring"] = json.dumps(ring)

    cli = LocalSealer(secrets, utc_now=wall)
    writes = secrets.writes["kek-ring"]
    assert cli.retire_keys([], min_age=600) == []
    assert secrets.writes["kek-ring"] == writes + 1  # the time it was first seen is saved
    assert _ring(secrets)["superseded_at"] == {first: "2025-06-01T12:00:00+00:00"}
    wall.advance(300)
    assert cli.retire_keys([], min_age=600) == []
    assert secrets.writes["kek-ring"] == writes + 1  # not re-stamped
    wall.advance(300)
    assert LocalSealer(secrets, utc_now=wall).retire_keys([], min_age=600) == [first]
    assert LocalSealer(secrets).key_ids() == [second]


def test_a_ring_without_superseded_at_retires_at_once_with_min_age_0(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    first = _start(sealer)
    sealer.rotate_kek()
    ring = _ring(secrets)
    del ring["superseded_at"]
    secrets.data["kek-ring"] = json.dumps(ring)
    assert LocalSealer(secrets).retire_keys([]) == [first]


def test_superseded_at_times_survive_other_instances(secrets, no_env_kek, wall):
    a = LocalSealer(secrets, utc_now=wall)
    first = _start(a)
    a.rotate_kek()
    wall.advance(100)
    b = LocalSealer(secrets, utc_now=wall)
    b.rotate_kek()  # keeps the time `first` was superseded, does not reset it
    assert _ring(secrets)["superseded_at"][first] == "2025-06-01T12:00:00+00:00"
    wall.advance(500)
    assert b.retire_keys([], min_age=600) == [first]


def test_a_naive_superseded_at_time_is_taken_as_utc(secrets, no_env_kek):
    sealer = LocalSealer(secrets)
    first = _start(sealer)
    sealer.rotate_kek()
    ring = _ring(secrets)
    ring["superseded_at"] = {first: "2000-01-01T00:00:00"}
    secrets.data["kek-ring"] = json.dumps(ring)
    assert LocalSealer(secrets).retire_keys([], min_age=600) == [first]


@pytest.mark.parametrize(
    ("times", "expected"),
    [
        (lambda first: [], '"superseded_at" is not an object'),
        (lambda first: {first: "yesterday"}, "not an ISO 8601 time"),
        (lambda first: {first: 1700000000}, "not an ISO 8601 time"),
    ],
)
def test_corrupt_superseded_at_times_are_a_config_error(secrets, no_env_kek, times, expected):
    sealer = LocalSealer(secrets)
    first = _start(sealer)
    sealer.rotate_kek()
    ring = _ring(secrets)
    ring["superseded_at"] = times(first)
    secrets.data["kek-ring"] = json.dumps(ring)
    writes = secrets.writes["kek-ring"]
    with pytest.raises(ConfigError, match=expected):
        LocalSealer(secrets).retire_keys([])
    assert secrets.writes["kek-ring"] == writes


@pytest.mark.parametrize("bad", [-1.0, float("nan"), float("inf")])
def test_a_bad_min_age_is_rejected(secrets, no_env_kek, bad):
    with pytest.raises(ValueError, match="min_age"):
        LocalSealer(secrets).retire_keys([], min_age=bad)


def test_a_wall_clock_without_a_time_zone_is_taken_as_utc(secrets, no_env_kek):
    naive = datetime(2025, 6, 1, 12, 0)
    sealer = LocalSealer(secrets, utc_now=lambda: naive)
    first = _start(sealer)
    sealer.rotate_kek()
    assert _ring(secrets)["superseded_at"] == {first: "2025-06-01T12:00:00+00:00"}
    assert datetime.fromisoformat(_ring(secrets)["superseded_at"][first]).tzinfo == UTC
    assert sealer.retire_keys([], min_age=600) == []


# ---------------------------------------------------------------------------- the plugin


def test_registers_the_local_sealer_as_default_and_builds_lazily(secrets, no_env_kek, tmp_path):
    seen = []
    plugin.valetkey_register_sealers(
        lambda name, factory, *, default=False: seen.append((name, factory, default))
    )
    ((name, factory, default),) = seen
    assert (name, default) == ("local", True)

    calls = []
    home = tmp_path / "home"

    class Kernel:
        @property
        def secret_store(self):
            calls.append("secret_store")
            return secrets

        @property
        def home(self):
            calls.append("home")
            return private_dir(home)

    sealer = factory(PluginContext(plugin="sealer-local", config=None, kernel=Kernel()))
    assert calls == []  # the secret store and the home are reached on first use only
    assert not home.exists()
    sealer.seal(b"x", b"r")
    assert "secret_store" in calls
    assert "home" in calls
    assert isinstance(sealer, Sealer)
    assert "kek-ring" in secrets.data
    # the kernel's home gets the key ids and the lock, both private
    ids = json.loads((home / "kek-ids.json").read_text())
    assert ids == {
        "entry": "kek-ring",
        "key_ids": [sealer.current_key_id()],
        "secret_store": "memory",
    }
    for name in ("kek-ids.json", "kek-ring.lock"):
        assert stat.S_IMODE((home / name).stat().st_mode) == 0o600
    assert sorted(p.name for p in home.iterdir()) == ["kek-ids.json", "kek-ring.lock"]


def test_the_config_schema_sets_ring_ttl(secrets, no_env_kek, tmp_path):
    assert plugin.valetkey_config_schema() is LocalSealerConfig
    assert LocalSealerConfig().ring_ttl == 30.0
    ((_, factory, _),) = _registered()

    class Kernel:
        secret_store = secrets
        home = tmp_path

    config = LocalSealerConfig(ring_ttl=0.0)
    sealer = factory(PluginContext(plugin="sealer-local", config=config, kernel=Kernel()))
    _start(sealer)
    reads = secrets.reads["kek-ring"]
    sealer.seal(b"x", b"r")
    assert secrets.reads["kek-ring"] == reads + 1  # ring_ttl = 0: re-read before every seal


@pytest.mark.parametrize("bad", [-1, float("nan"), float("inf"), True, "30"])
def test_a_bad_ring_ttl_in_the_config_is_rejected(bad):
    with pytest.raises(ValueError, match="ring_ttl"):
        LocalSealerConfig(ring_ttl=bad)


def test_the_kernel_validator_converts_the_table():
    msgspec = pytest.importorskip("msgspec")
    assert msgspec.convert({"ring_ttl": 5}, type=LocalSealerConfig).ring_ttl == 5.0
    assert msgspec.convert({}, type=LocalSealerConfig) == LocalSealerConfig()
    with pytest.raises(msgspec.ValidationError):
        msgspec.convert({"ring_ttl": -1}, type=LocalSealerConfig)


def _registered():
    seen = []
    plugin.valetkey_register_sealers(
        lambda name, factory, *, default=False: seen.append((name, factory, default))
    )
    return seen


def test_importing_the_plugin_does_not_import_cryptography():
    code = "import sys, valetkey_sealer_local\nassert 'cryptography' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", code], check=True)

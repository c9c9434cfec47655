"""The key ring under concurrent writers, and never a second ring when the first is missing.

- Every read-change-write of the ring holds an exclusive flock on ``<home>/kek-ring.lock``:
  sealers starting together on a fresh vault agree on one KEK; rotate beside retire never loses
  the new key (threads, and processes).
- ``<home>/kek-ids.json`` lists the vault's key ids: when the secret store has no ring but the
  file lists keys (the OS keyring is not reachable in this session and the secret store fell back
  to its files), the sealer refuses to make a new ring. Reading (``key_ids``,
  ``current_key_id``, ``open``, ``retire_keys``) never creates a key.
"""

from __future__ import annotations

import base64
import fcntl
import inspect
import json
import logging
import os
import random
import stat
import subprocess
import sys
import textwrap
import threading
import time
from functools import partial
from pathlib import Path

import pytest

from valetkey_hookspecs import ConfigError, Sealed, SealError
from valetkey_hookspecs.files import atomic_write
from valetkey_hookspecs.testing import SealerContract
from valetkey_sealer_local.sealer import ENV_KEK, LocalSealer, kek_id

KEK = os.urandom(32)
KEK_B64 = base64.b64encode(KEK).decode()
ROUNDS = 40
BACKEND_HINT = (
    ": is the OS keyring unavailable in this session? Set [plugin.secrets-keyring] backend = "
    '"keyring" to fail instead of falling back, or restore the ring; VALETKEY_KEK can supply a '
    "key. Not making a new ring, which would leave the records sealed under those keys "
    "unreadable (to give them up and start afresh, delete {ids})"
)


class TestSealerWithAHome(SealerContract):
    @pytest.fixture
    def sealer(self, secrets, no_env_kek, tmp_path):
        return LocalSealer(secrets, home=tmp_path)


class TestSealerWithEnvKekAndAHome(SealerContract):
    @pytest.fixture
    def sealer(self, secrets, monkeypatch, tmp_path):
        monkeypatch.setenv(ENV_KEK, KEK_B64)
        return LocalSealer(secrets, home=tmp_path)


def _ids(home: Path) -> list[str]:
    return json.loads((home / "kek-ids.json").read_text())["key_ids"]


def _run_together(*jobs):
    """Run the jobs in threads released at once by a barrier; their results, in order."""
    barrier = threading.Barrier(len(jobs))
    results: list[object] = [None] * len(jobs)
    errors: list[BaseException] = []

    def run(index, job):
        try:
            barrier.wait()
            results[index] = job()
        except BaseException as exc:  # re-raised in the test's thread
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(i, job)) for i, job in enumerate(jobs)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(30)
    if errors:
        raise errors[0]
    return results


# ---------------------------------------------------------------------------- concurrent writers


def test_two_sealers_starting_together_on_a_fresh_vault_agree_on_one_kek(
    new_secrets, no_env_kek, tmp_path
):
    for round_ in range(ROUNDS):
        store = new_secrets()
        home = tmp_path / f"home-{round_}"
        one, two = LocalSealer(store, home=home), LocalSealer(store, home=home)
        sealed = _run_together(
            partial(one.seal, b"from one", b"cred_1"), partial(two.seal, b"from two", b"cred_2")
        )
        assert sealed[0].key_id == sealed[1].key_id, f"two KEKs generated in round {round_}"
        assert store.writes["kek-ring"] == 1
        fresh = LocalSealer(store, home=home)
        assert fresh.open(sealed[0], b"cred_1") == b"from one"
        assert fresh.open(sealed[1], b"cred_2") == b"from two"
        assert fresh.key_ids() == [sealed[0].key_id] == _ids(home)


def test_rotate_beside_retire_never_loses_the_new_key(new_secrets, no_env_kek, tmp_path):
    for round_ in range(ROUNDS):
        store = new_secrets()
        home = tmp_path / f"home-{round_}"
        setup = LocalSealer(store, home=home)
        first = setup.seal(b"one", b"cred_1").key_id
        second = setup.rotate_kek()
        rotator, retirer = LocalSealer(store, home=home), LocalSealer(store, home=home)
        new, retired = _run_together(rotator.rotate_kek, partial(retirer.retire_keys, []))
        assert first in retired

        fresh = LocalSealer(store, home=home)
        assert fresh.current_key_id() == new, f"the new key was lost in round {round_}"
        assert set(fresh.key_ids()) == {new, second} - set(retired)
        assert set(_ids(home)) == set(fresh.key_ids())
        sealed = rotator.seal(b"after", b"cred_2")
        assert sealed.key_id == new
        assert fresh.open(sealed, b"cred_2") == b"after"


def test_two_rotations_at_once_keep_both_new_keys(new_secrets, no_env_kek, tmp_path):
    for round_ in range(ROUNDS // 2):
        store = new_secrets()
        home = tmp_path / f"home-{round_}"
        first = LocalSealer(store, home=home).seal(b"x", b"r").key_id
        a, b = LocalSealer(store, home=home), LocalSealer(store, home=home)
        new_a, new_b = _run_together(a.rotate_kek, b.rotate_kek)
        fresh = LocalSealer(store, home=home)
        assert set(fresh.key_ids()) == {first, new_a, new_b}, f"a key was lost in round {round_}"
        assert fresh.current_key_id() in (new_a, new_b)


def test_the_lock_file_is_private_and_in_the_home(secrets, no_env_kek, tmp_path):
    home = tmp_path / "home"
    LocalSealer(secrets, home=home).seal(b"x", b"r")
    assert stat.S_IMODE(home.stat().st_mode) == 0o700
    assert stat.S_IMODE((home / "kek-ring.lock").stat().st_mode) == 0o600
    assert stat.S_IMODE((home / "kek-ids.json").stat().st_mode) == 0o600


def test_a_ring_change_waits_for_the_lock_and_then_times_out(secrets, no_env_kek, tmp_path):
    sealer = LocalSealer(secrets, home=tmp_path, lock_timeout=0.2)
    first = sealer.seal(b"x", b"r").key_id
    fd = os.open(tmp_path / "kek-ring.lock", os.O_RDWR)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)  # another process is changing the ring
        started = time.monotonic()
        with pytest.raises(SealError) as info:
            sealer.rotate_kek()
        assert time.monotonic() - started >= 0.2
        assert str(info.value) == (
            f"timed out after 0.2 s waiting for the key ring lock {tmp_path / 'kek-ring.lock'}: "
            "another valetkey process is changing the key ring (generating, rotating or "
            "retiring keys) and has not finished"
        )
        assert sealer.seal(b"y", b"r").key_id == first  # sealing takes no lock
    finally:
        os.close(fd)
    assert sealer.rotate_kek() != first


class FileSecrets:
    """A SecretStore of plain files, slow like a D-Bus round trip (for the multi-process test)."""

    description = "plain files"

    def __init__(self, folder):
        self.folder = folder

    def get(self, key):
        time.sleep(0.003)
        try:
            return (self.folder / key).read_text()
        except FileNotFoundError:
            return None

    def set(self, key, value):
        time.sleep(random.uniform(0, 0.01))
        atomic_write(self.folder / key, value.encode())

    def delete(self, key):
        (self.folder / key).unlink(missing_ok=True)


_CHILD = """
import base64, json, random, sys, time
from pathlib import Path
from valetkey_hookspecs.files import atomic_write
from valetkey_sealer_local.sealer import LocalSealer

{file_secrets}

home, name = Path(sys.argv[1]), sys.argv[2]
sealer = LocalSealer(FileSecrets(home / "secrets"), home=home, environ={{}})
(home / f"ready-{{name}}").touch()
while not (home / "go").exists():
    time.sleep(0.0005)
sealed = sealer.seal(name.encode(), name.encode())
print(json.dumps([base64.b64encode(sealed.ciphertext).decode(),
                  base64.b64encode(sealed.wrapped_key).decode(), sealed.key_id]))
"""


def test_two_processes_generating_on_a_fresh_vault_agree_on_one_kek(no_env_kek, tmp_path):
    script = tmp_path / "child.py"
    script.write_text(_CHILD.format(file_secrets=textwrap.dedent(inspect.getsource(FileSecrets))))
    for round_ in range(6):
        home = tmp_path / f"home-{round_}"
        home.mkdir(mode=0o700)
        names = ("cred_a", "cred_b")
        procs = [
            subprocess.Popen(
                [sys.executable, str(script), str(home), name], stdout=subprocess.PIPE, text=True
            )
            for name in names
        ]
        deadline = time.monotonic() + 60
        while not all((home / f"ready-{n}").exists() for n in names):
            assert time.monotonic() < deadline, "the child processes did not start"
            time.sleep(0.005)
        (home / "go").touch()
        outputs = [proc.communicate(timeout=60)[0] for proc in procs]
        assert [proc.returncode for proc in procs] == [0, 0]
        fresh = LocalSealer(FileSecrets(home / "secrets"), home=home)
        key_ids = set()
        for name, out in zip(names, outputs, strict=True):
            ciphertext, wrapped, key_id = json.loads(out)
            sealed = Sealed(base64.b64decode(ciphertext), base64.b64decode(wrapped), key_id)
            assert fresh.open(sealed, name.encode()) == name.encode()
            key_ids.add(key_id)
        assert len(key_ids) == 1, f"two KEKs generated in round {round_}"


# ---------------------------------------------------------------------------- reading makes no key


def test_reading_a_fresh_vault_creates_no_key(secrets, no_env_kek, tmp_path):
    sealer = LocalSealer(secrets, home=tmp_path)
    assert sealer.key_ids() == []
    assert sealer.current_key_id() == ""
    assert sealer.retire_keys([], min_age=0) == []
    stranger = Sealed(b"\0" * 40, b"\0" * 60, "0123456789abcdef")
    with pytest.raises(SealError) as info:
        sealer.open(stranger, b"cred_1")
    assert str(info.value) == (
        "cannot open record 'cred_1': it is sealed under key id '0123456789abcdef', which this "
        "sealer does not have (it has none: there is no key ring yet). Was VALETKEY_KEK or the "
        "key ring 'kek-ring' in the secret store replaced, or the key retired?"
    )
    with pytest.raises(SealError):
        sealer.rewrap(stranger, b"cred_1")
    assert secrets.data == {}
    assert not secrets.writes
    assert not (tmp_path / "kek-ids.json").exists()
    assert "not loaded" in repr(sealer)

    sealed = sealer.seal(b"x", b"cred_1")  # the first seal makes the ring
    assert sealer.current_key_id() == sealed.key_id
    assert sealer.key_ids() == [sealed.key_id] == _ids(tmp_path)
    assert secrets.writes["kek-ring"] == 1


def test_rotate_on_a_fresh_vault_makes_the_first_key(secrets, no_env_kek, tmp_path, sealer_log):
    sealer = LocalSealer(secrets, home=tmp_path)
    new = sealer.rotate_kek()
    assert sealer.key_ids() == [new] == _ids(tmp_path)
    assert any("generated a key-encryption key" in m for m in sealer_log.messages())


# ---------------------------------------------------------------------------- a missing ring


def _missing(desc, home, ids, *, saved_in=None, env=None):
    path = home / "kek-ids.json"
    message = (
        f"the KEK ring 'kek-ring' is missing from {desc}, but this vault has keys {ids} ({path})"
    )
    if saved_in:
        message += f", last saved to {saved_in}"
    if env:
        message += env
    return message + BACKEND_HINT.format(ids=path)


FALLBACK = "encrypted files in /srv/secrets (no OS keyring: NoKeyringError)"


@pytest.fixture
def vault(new_secrets, no_env_kek, tmp_path):
    """A vault whose ring lives in 'the OS keyring' (two keys), and an empty fallback store."""
    keyring = new_secrets(delay=0, description="OS keyring SecretService Keyring")
    sealer = LocalSealer(keyring, home=tmp_path)
    old = sealer.seal(b"old", b"cred_1")
    sealer.rotate_kek()
    new = sealer.seal(b"new", b"cred_2")
    fallback = new_secrets(delay=0, description=FALLBACK)
    return keyring, fallback, old, new


def test_a_missing_ring_is_never_replaced_by_a_new_one(vault, tmp_path):
    keyring, fallback, old, new = vault
    ids_before = (tmp_path / "kek-ids.json").read_bytes()
    expected = _missing(
        FALLBACK,
        tmp_path,
        f"{new.key_id}, {old.key_id}",
        saved_in="OS keyring SecretService Keyring",
    )
    session = LocalSealer(fallback, home=tmp_path)  # a session without the OS keyring
    for action in (
        lambda: session.seal(b"x", b"cred_3"),
        session.key_ids,
        session.current_key_id,
        lambda: session.open(new, b"cred_2"),
        session.rotate_kek,
        lambda: session.retire_keys([]),
    ):
        with pytest.raises(ConfigError) as info:
            action()
        assert str(info.value) == expected
    assert fallback.data == {}
    assert not fallback.writes
    assert (tmp_path / "kek-ids.json").read_bytes() == ids_before

    # back in a session with the keyring: everything opens
    back = LocalSealer(keyring, home=tmp_path)
    assert back.open(old, b"cred_1") == b"old"
    assert back.open(new, b"cred_2") == b"new"


def test_a_concurrently_deleted_ring_is_not_regenerated_either(vault, tmp_path):
    keyring, _, _, new = vault
    sealer = LocalSealer(keyring, home=tmp_path)
    assert sealer.current_key_id() == new.key_id
    del keyring.data["kek-ring"]  # deleted under its feet: the ring in memory may be written back
    assert sealer.rotate_kek() in json.loads(keyring.data["kek-ring"])["keys"]
    assert set(_ids(tmp_path)) == set(sealer.key_ids())


def test_the_env_kek_is_used_for_a_missing_ring_when_it_is_a_known_key(
    new_secrets, monkeypatch, tmp_path
):
    monkeypatch.setenv(ENV_KEK, KEK_B64)
    keyring = new_secrets(delay=0, description="OS keyring")
    sealer = LocalSealer(keyring, home=tmp_path)
    env_sealed = sealer.seal(b"env", b"cred_1")
    assert not (tmp_path / "kek-ids.json").exists()  # VALETKEY_KEK alone is not saved anywhere
    second = sealer.rotate_kek()  # saves the env key and the new one into the ring
    assert _ids(tmp_path) == [second, kek_id(KEK)]

    fallback = new_secrets(delay=0, description=FALLBACK)
    session = LocalSealer(fallback, home=tmp_path)
    assert session.key_ids() == [kek_id(KEK)]  # the env key is one of this vault's: fine
    assert session.open(env_sealed, b"cred_1") == b"env"
    assert session.seal(b"x", b"cred_2").key_id == kek_id(KEK)
    with pytest.raises(ConfigError) as info:
        session.rotate_kek()  # would save a ring without `second`
    assert str(info.value) == _missing(
        FALLBACK,
        tmp_path,
        f"{second}, {kek_id(KEK)}",
        saved_in="OS keyring",
        env=f"; VALETKEY_KEK holds only {kek_id(KEK)} of them",
    )
    assert fallback.data == {}


def test_an_env_kek_that_is_not_a_known_key_is_refused_for_a_missing_ring(
    vault, monkeypatch, tmp_path
):
    _, fallback, old, new = vault
    monkeypatch.setenv(ENV_KEK, KEK_B64)
    with pytest.raises(ConfigError) as info:
        LocalSealer(fallback, home=tmp_path).seal(b"x", b"cred_3")
    assert str(info.value) == _missing(
        FALLBACK,
        tmp_path,
        f"{new.key_id}, {old.key_id}",
        saved_in="OS keyring SecretService Keyring",
        env=f"; VALETKEY_KEK is set, but its key {kek_id(KEK)} is not one of them",
    )
    assert KEK_B64 not in str(info.value)


def test_the_env_kek_is_used_when_there_is_no_kek_ids_file(secrets, monkeypatch, tmp_path):
    monkeypatch.setenv(ENV_KEK, KEK_B64)
    sealer = LocalSealer(secrets, home=tmp_path)
    assert sealer.seal(b"x", b"r").key_id == kek_id(KEK)
    assert secrets.data == {}


def test_kek_ids_follows_rotation_and_retirement(secrets, no_env_kek, tmp_path):
    sealer = LocalSealer(secrets, home=tmp_path)
    first = sealer.seal(b"x", b"r").key_id
    assert _ids(tmp_path) == [first]
    second = sealer.rotate_kek()
    assert _ids(tmp_path) == [second, first]
    assert sealer.retire_keys([]) == [first]
    assert _ids(tmp_path) == [second]
    body = json.loads((tmp_path / "kek-ids.json").read_text())
    assert body == {"entry": "kek-ring", "key_ids": [second], "secret_store": "memory"}


def test_a_vault_without_kek_ids_gets_it_at_first_read(secrets, no_env_kek, tmp_path):
    first = LocalSealer(secrets).seal(b"x", b"r").key_id  # made before kek-ids.json existed
    assert not (tmp_path / "kek-ids.json").exists()
    writes = secrets.writes["kek-ring"]
    assert LocalSealer(secrets, home=tmp_path).key_ids() == [first]
    assert _ids(tmp_path) == [first]
    assert secrets.writes["kek-ring"] == writes  # the ring itself is not rewritten


def test_recording_the_ids_of_an_old_vault_is_best_effort(
    secrets, no_env_kek, tmp_path, monkeypatch, sealer_log
):
    import valetkey_sealer_local.sealer as module

    first = LocalSealer(secrets).seal(b"x", b"r").key_id  # made before kek-ids.json existed

    def read_only(path, data, mode=0o600):
        raise OSError(30, "Read-only file system")

    monkeypatch.setattr(module, "atomic_write", read_only)
    assert LocalSealer(secrets, home=tmp_path).key_ids() == [first]
    assert sealer_log.messages(logging.WARNING) == [
        f"could not record this vault's key ids: cannot write {tmp_path / 'kek-ids.json'} (the "
        "ids of this vault's key-encryption keys): Read-only file system"
    ]


def test_a_crash_during_retire_leaves_kek_ids_listing_no_key_the_ring_lacks(
    secrets, no_env_kek, tmp_path
):
    sealer = LocalSealer(secrets, home=tmp_path)
    first = sealer.seal(b"x", b"r").key_id
    second = sealer.rotate_kek()

    def broken(key, value):
        raise OSError("the keyring went away")

    secrets.set = broken
    with pytest.raises(SealError) as info:
        sealer.retire_keys([])
    assert str(info.value) == (
        "cannot save the key ring 'kek-ring' to the secret store (memory): "
        "OSError: the keyring went away"
    )
    assert _ids(tmp_path) == [second]  # shrunk first; the ring still holds both
    del secrets.set  # the keyring is back
    fresh = LocalSealer(secrets, home=tmp_path)
    assert fresh.key_ids() == [second, first]
    assert _ids(tmp_path) == [second, first]  # healed from the ring


def test_a_crash_during_rotate_leaves_kek_ids_without_the_new_key(secrets, no_env_kek, tmp_path):
    sealer = LocalSealer(secrets, home=tmp_path)
    first = sealer.seal(b"x", b"r").key_id

    def broken(key, value):
        raise OSError("the keyring went away")

    secrets.set = broken
    with pytest.raises(SealError):
        sealer.rotate_kek()
    assert _ids(tmp_path) == [first]


def test_a_ring_lacking_known_keys_is_warned_about_and_never_changed(
    vault, new_secrets, tmp_path, sealer_log
):
    _, fallback, old, new = vault
    # a second ring, made in a fallback session by an older valetkey
    LocalSealer(fallback).seal(b"elsewhere", b"cred_9")
    other = json.loads(fallback.data["kek-ring"])["current"]
    ids_before = (tmp_path / "kek-ids.json").read_bytes()
    session = LocalSealer(fallback, home=tmp_path)
    assert session.key_ids() == [other]
    (warning,) = sealer_log.messages(logging.WARNING)
    path = tmp_path / "kek-ids.json"
    lacking = f"{new.key_id}, {old.key_id}"
    start = (
        f"the KEK ring 'kek-ring' in {FALLBACK} lacks keys {lacking} that this vault has "
        f"({path}): is the OS keyring unavailable in this session, and this ring another one, or "
        "an old copy? "
    )
    assert warning == start + (
        "Records sealed under those keys cannot be opened in this session, and rotating or "
        "retiring keys is refused"
    )
    writes = fallback.writes["kek-ring"]
    for action in (session.rotate_kek, lambda: session.retire_keys([])):
        with pytest.raises(ConfigError) as info:
            action()
        assert str(info.value) == start + (
            "Not changing it, which would drop those keys for good; restore the ring that holds "
            f"them, or, if they were retired on purpose, delete {path}"
        )
    assert fallback.writes["kek-ring"] == writes
    assert (tmp_path / "kek-ids.json").read_bytes() == ids_before


@pytest.mark.parametrize("raw", ["not json", "[]", '{"key_ids": "abc"}', '{"key_ids": [1]}'])
def test_a_corrupt_kek_ids_file_is_a_config_error(secrets, no_env_kek, tmp_path, raw):
    (tmp_path / "kek-ids.json").write_text(raw)
    with pytest.raises(ConfigError) as info:
        LocalSealer(secrets, home=tmp_path).seal(b"x", b"r")
    assert str(info.value) == (
        f'{tmp_path / "kek-ids.json"} is not an object with a "key_ids" list (corrupted?): it '
        "lists the ids of this vault's key-encryption keys; delete it, and the next use of the "
        "key ring writes it again"
    )
    assert secrets.data == {}


# ---------------------------------------------------------------------------- a failing re-read


class _LockedAfterLoad:
    """A secret store that answers once, then fails like a locked keyring."""

    description = "OS keyring SecretService Keyring (service 'valetkey')"

    def __init__(self, inner, error):
        self.inner = inner
        self.error = error
        self.locked = False

    def get(self, key):
        if self.locked:
            raise self.error
        return self.inner.get(key)

    def set(self, key, value):
        self.inner.set(key, value)

    def delete(self, key):
        self.inner.delete(key)


@pytest.mark.parametrize(
    ("error", "reason"),
    [
        (
            RuntimeError("org.freedesktop.Secret.Error.IsLocked: collection locked\nmore"),
            "RuntimeError: org.freedesktop.Secret.Error.IsLocked: collection locked",
        ),
        (
            ConfigError("the OS keyring (SecretService Keyring) could not read 'kek-ring'"),
            "the OS keyring (SecretService Keyring) could not read 'kek-ring'",
        ),
    ],
)
def test_a_failing_re_read_is_a_seal_error_naming_the_secret_store(
    secrets, no_env_kek, monotonic, tmp_path, error, reason
):
    store = _LockedAfterLoad(secrets, error)
    server = LocalSealer(store, home=tmp_path, ring_ttl=30.0, now=monotonic)
    server.seal(b"x", b"r")
    store.locked = True
    server.seal(b"x", b"r")  # not stale: no read
    monotonic.advance(30.0)
    with pytest.raises(SealError) as info:
        server.seal(b"x", b"r")
    assert str(info.value) == (
        "cannot read the key ring 'kek-ring' from the secret store (OS keyring SecretService "
        f"Keyring (service 'valetkey')): {reason}"
    )
    assert info.value.__cause__ is error

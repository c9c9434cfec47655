"""``StoreContract``: the behaviour every ``Store`` implementation must show, as abstract tests.

Subclass it in a plugin's tests and override one fixture, ``store``: an async generator that
yields a fresh, OPENED, empty store and closes it afterwards::

    from valetkey_hookspecs.testing import StoreContract

    class TestMyStore(StoreContract):
        @pytest.fixture
        async def store(self, tmp_path):
            s = MyStore(tmp_path / "db")
            await s.open()
            yield s
            await s.close()

        async def tamper_audit(self, store, seq):
            ...  # change the stored audit event ``seq`` behind the store's back

Capability flags (class attributes, fsspec style):

- ``supports_tamper`` (default True): the subclass implements ``tamper_audit``, and the contract
  checks that ``verify_chain`` finds the tampered event. Set it to False only for a store whose
  events cannot be changed from outside.

The tests cover every repository of ``Store``: round trips (aware datetimes to the microsecond,
mappings as JSON, sealed bytes exactly), every error path (``NotFound`` for a missing record AND
for another owner's — never a different error — and ``Conflict`` for a duplicate id or a stale
version), single use of ``take`` and join tokens, lease exclusivity and expiry, and an audit chain
that verifies with ``valetkey_hookspecs.audit.verify_chain``. Lease and expiry tests sleep for a
few tenths of a second at most.

Where the docstrings in ``interfaces.py`` are silent, the contract pins what callers rely on:

- a ``NotFound`` or ``Conflict`` about a record names its id (hash lookups name nothing);
- ``credentials.put`` for a missing connection is ``NotFound``; a first credential has version 1
  and each replacement (``put`` again, ``replace``) adds one;
- ``connections.set_status(id, status)`` without ``error`` clears the error text;
  ``connections.update`` is ``NotFound`` for a missing or foreign id;
- ``add_join_token`` / ``add_access_token`` with an existing id are ``Conflict``;
- a join token is valid while ``now < expires_at``; "oldest first" ties are not tested;
- ``audit.append`` returns the event exactly as ``audit.list`` will return it later (``at`` in
  UTC to the microsecond, ``detail`` as JSON data), and seqs start at 1 with ``GENESIS``.
"""

from __future__ import annotations

import re
from datetime import UTC, datetime, timedelta, timezone
from typing import Any

import anyio
import pytest

from ..audit import GENESIS, verify_chain
from ..errors import Conflict, InvalidInput, NotFound
from ..interfaces import Rewrap, Store
from ..types import (
    ApiToken,
    BoxSession,
    BoxStatus,
    Connection,
    ConnectionStatus,
    Credential,
    CredentialKind,
    JoinToken,
    ProxyRun,
    RelayAccessToken,
    RelayRecord,
    Sealed,
    Spoke,
    TransientRecord,
    utcnow,
)

#: a fixed instant with microseconds, far from "now"
T0 = datetime(2031, 3, 4, 5, 6, 7, 123456, tzinfo=UTC)
#: the same kind of instant written in another time zone (must compare equal after a round trip)
T0_PLUS2 = datetime(2031, 3, 4, 7, 6, 7, 654321, tzinfo=timezone(timedelta(hours=2)))
#: JSON data with nesting, unicode, numbers, booleans and null
DOC: dict[str, Any] = {
    "text": "héllo ✓",
    "n": 42,
    "x": 1.5,
    "ok": True,
    "none": None,
    "list": [1, "two", {"three": 3}],
    "nested": {"a": {"b": []}},
}
#: bytes with NULs and every byte value: must come back exactly
RAW = b"\x00\xff\x00" + bytes(range(256))


def _id(text: str) -> str:
    """A ``match=`` pattern for an id inside an error message."""
    return re.escape(text)


def _connection(
    connection_id: str, owner: str = "alice", connector: str = "github", **changes: Any
) -> Connection:
    fields: dict[str, Any] = {
        "id": connection_id,
        "owner": owner,
        "connector": connector,
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(changes)
    return Connection(**fields)


def _sealed(tag: str = "a", key_id: str = "kek-1") -> Sealed:
    return Sealed(
        ciphertext=RAW + tag.encode(), wrapped_key=b"\x01wrapped\x00" + tag.encode(), key_id=key_id
    )


def _credential(
    connection_id: str,
    *,
    credential_id: str | None = None,
    key_id: str = "kek-1",
    expires_at: datetime | None = None,
    tag: str = "a",
) -> Credential:
    return Credential(
        id=credential_id or f"cred-{connection_id}",
        connection_id=connection_id,
        kind=CredentialKind.OAUTH2,
        sealed=_sealed(tag, key_id),
        expires_at=expires_at,
        updated_at=T0,
    )


def _box(box_id: str, token_hash: str | None = None, **changes: Any) -> BoxSession:
    fields: dict[str, Any] = {
        "box_id": box_id,
        "token_hash": token_hash or f"hash-{box_id}",
        "image": "busybox:latest",
        "runtime": "docker",
        "created_at": T0,
        "updated_at": T0,
    }
    fields.update(changes)
    return BoxSession(**fields)


def _transient(
    key: str, *, expires_in: float = 60.0, kind: str = "oauth-state", **changes: Any
) -> TransientRecord:
    fields: dict[str, Any] = {
        "kind": kind,
        "key": key,
        "expires_at": utcnow() + timedelta(seconds=expires_in),
        "created_at": T0,
    }
    fields.update(changes)
    return TransientRecord(**fields)


def _spoke(spoke_id: str, name: str | None = None, **changes: Any) -> Spoke:
    fields: dict[str, Any] = {
        "id": spoke_id,
        "name": name or f"name-{spoke_id}",
        "credential_hash": f"cred-hash-{spoke_id}",
        "created_at": T0,
    }
    fields.update(changes)
    return Spoke(**fields)


def _join_token(
    token_id: str, *, expires_at: datetime = T0, created_at: datetime = T0, digest: str = ""
) -> JoinToken:
    return JoinToken(
        id=token_id,
        token_hash=digest or f"jt-hash-{token_id}",
        expires_at=expires_at,
        created_at=created_at,
    )


def _access_token(
    token_id: str, relay_id: str = "relay-1", digest: str = "", **changes: Any
) -> RelayAccessToken:
    fields: dict[str, Any] = {
        "id": token_id,
        "relay_id": relay_id,
        "token_hash": digest or f"at-hash-{token_id}",
        "name": f"token {token_id}",
        "created_at": T0,
    }
    fields.update(changes)
    return RelayAccessToken(**fields)


def _api_token(token_id: str, owner: str = "alice", digest: str = "", **changes: Any) -> ApiToken:
    fields: dict[str, Any] = {
        "id": token_id,
        "owner": owner,
        "token_hash": digest or f"h-{token_id}",
    }
    fields.update(changes)
    return ApiToken(**fields)


def _relay(relay_id: str = "relay-1", digest: str = "", **changes: Any) -> RelayRecord:
    fields: dict[str, Any] = {"id": relay_id, "machine_token_hash": digest or f"mh-{relay_id}"}
    fields.update(changes)
    return RelayRecord(**fields)


class StoreContract:
    """Abstract conformance tests of ``valetkey_hookspecs.Store``; see the module docstring."""

    pytestmark = pytest.mark.anyio

    #: the subclass implements ``tamper_audit`` (set False only if events cannot be changed)
    supports_tamper: bool = True

    @pytest.fixture
    async def store(self) -> Store:
        """Override: an async generator fixture yielding a fresh, opened, empty store."""
        raise NotImplementedError(
            f"{type(self).__name__} must override the `store` fixture: an async generator "
            "fixture that yields an opened, empty Store and closes it afterwards"
        )

    async def tamper_audit(self, store: Store, seq: int) -> None:
        """Override: change the stored audit event ``seq`` (its action, say) behind the store's
        back, e.g. with an UPDATE on the underlying table."""
        raise NotImplementedError(
            f"{type(self).__name__} must implement tamper_audit(store, seq), or set "
            "supports_tamper = False if its audit events cannot be changed from outside"
        )

    # ------------------------------------------------------------------ store

    async def test_store_matches_the_protocol(self, store: Store) -> None:
        assert isinstance(store, Store)

    async def test_schema_version_is_positive(self, store: Store) -> None:
        assert await store.schema_version() > 0

    async def test_open_twice_is_idempotent(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        version = await store.schema_version()
        await store.open()
        assert await store.schema_version() == version
        assert (await store.connections.get("c1")).id == "c1"

    async def test_close_is_idempotent(self, store: Store) -> None:
        await store.close()
        await store.close()

    # ------------------------------------------------------------------ connections

    async def test_connection_round_trips(self, store: Store) -> None:
        original = _connection(
            "c1",
            status=ConnectionStatus.ERROR,
            label="work account",
            error="token endpoint said 500",
            created_at=T0_PLUS2,
            updated_at=T0,
            metadata=DOC,
        )
        assert await store.connections.create(original) == original
        got = await store.connections.get("c1")
        assert got == original
        assert got.created_at == T0_PLUS2
        assert got.created_at.utcoffset() is not None
        assert dict(got.metadata) == DOC

    async def test_connection_create_duplicate_id_conflicts(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        with pytest.raises(Conflict, match=_id("c1")):
            await store.connections.create(_connection("c1", owner="bob"))
        assert (await store.connections.get("c1")).owner == "alice"

    async def test_connection_get_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.connections.get("nope")

    async def test_connection_get_foreign_owner_is_not_found(self, store: Store) -> None:
        await store.connections.create(_connection("c1", owner="alice"))
        with pytest.raises(NotFound, match=_id("c1")):
            await store.connections.get("c1", owner="bob")
        assert (await store.connections.get("c1", owner="alice")).id == "c1"
        assert (await store.connections.get("c1")).id == "c1"  # owner=None: system access

    async def test_connection_list_is_scoped_by_owner_and_ordered_by_id(self, store: Store) -> None:
        for cid, owner in [("c3", "alice"), ("c1", "alice"), ("c2", "bob"), ("c0", "alice")]:
            await store.connections.create(_connection(cid, owner=owner))
        assert [c.id for c in await store.connections.list("alice")] == ["c0", "c1", "c3"]
        assert [c.id for c in await store.connections.list("bob")] == ["c2"]
        assert [c.id for c in await store.connections.list()] == ["c0", "c1", "c2", "c3"]
        assert await store.connections.list("carol") == []

    async def test_connection_list_filters_by_connector_and_status(self, store: Store) -> None:
        await store.connections.create(_connection("c1", connector="github"))
        await store.connections.create(_connection("c2", connector="slack"))
        await store.connections.create(
            _connection("c3", connector="github", status=ConnectionStatus.NEEDS_REAUTH)
        )
        assert [c.id for c in await store.connections.list(connector="github")] == ["c1", "c3"]
        reauth = await store.connections.list(status=ConnectionStatus.NEEDS_REAUTH)
        assert [c.id for c in reauth] == ["c3"]
        both = await store.connections.list(
            "alice", connector="github", status=ConnectionStatus.ACTIVE
        )
        assert [c.id for c in both] == ["c1"]

    async def test_connection_list_paginates_with_after_and_limit(self, store: Store) -> None:
        for n in range(5):
            await store.connections.create(_connection(f"a{n}"))
        await store.connections.create(_connection("b0", owner="bob"))
        pages: list[list[str]] = []
        after: str | None = None
        while True:
            page = await store.connections.list("alice", limit=2, after=after)
            if not page:
                break
            pages.append([c.id for c in page])
            after = page[-1].id
        assert pages == [["a0", "a1"], ["a2", "a3"], ["a4"]]

    async def test_connection_set_status_changes_status_and_error(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))  # updated_at=T0, years ahead
        before = utcnow() - timedelta(seconds=1)
        failed = await store.connections.set_status(
            "c1", ConnectionStatus.NEEDS_REAUTH, "refresh token rejected"
        )
        assert failed.status is ConnectionStatus.NEEDS_REAUTH
        assert failed.error == "refresh token rejected"
        assert before <= failed.updated_at <= utcnow() + timedelta(seconds=1)
        assert await store.connections.get("c1") == failed
        healthy = await store.connections.set_status("c1", ConnectionStatus.ACTIVE)
        assert (healthy.status, healthy.error) == (ConnectionStatus.ACTIVE, None)

    async def test_connection_set_status_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.connections.set_status("nope", ConnectionStatus.REVOKED)

    async def test_connection_update_changes_only_given_fields(self, store: Store) -> None:
        await store.connections.create(_connection("c1", label="old", metadata={"k": 1}))
        relabelled = await store.connections.update("c1", "alice", label="new")
        assert (relabelled.label, dict(relabelled.metadata)) == ("new", {"k": 1})
        remeta = await store.connections.update("c1", metadata=DOC)
        assert (remeta.label, dict(remeta.metadata)) == ("new", DOC)
        assert await store.connections.get("c1") == remeta

    async def test_connection_update_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.connections.update("nope", label="x")

    async def test_connection_update_foreign_owner_is_not_found(self, store: Store) -> None:
        await store.connections.create(_connection("c1", label="mine"))
        with pytest.raises(NotFound, match=_id("c1")):
            await store.connections.update("c1", "bob", label="stolen")
        assert (await store.connections.get("c1")).label == "mine"

    async def test_connection_delete_removes_it_and_its_credential(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1"))
        await store.connections.delete("c1", "alice")
        with pytest.raises(NotFound):
            await store.connections.get("c1")
        with pytest.raises(NotFound):
            await store.credentials.get("c1")
        assert await store.credentials.key_ids() == {}

    async def test_connection_delete_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.connections.delete("nope")

    async def test_connection_delete_foreign_owner_is_not_found(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1"))
        with pytest.raises(NotFound, match=_id("c1")):
            await store.connections.delete("c1", "bob")
        assert (await store.connections.get("c1")).id == "c1"
        assert (await store.credentials.get("c1")).id == "cred-c1"

    async def test_connection_count_per_owner_and_all(self, store: Store) -> None:
        for cid, owner in [("c1", "alice"), ("c2", "alice"), ("c3", "bob")]:
            await store.connections.create(_connection(cid, owner=owner))
        assert await store.connections.count("alice") == 2
        assert await store.connections.count("bob") == 1
        assert await store.connections.count("carol") == 0
        assert await store.connections.count() == 3

    # ------------------------------------------------------------------ credentials

    async def test_credential_round_trips_sealed_bytes_exactly(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        original = _credential("c1", expires_at=T0_PLUS2)
        stored = await store.credentials.put(original)
        assert stored.version == 1
        got = await store.credentials.get("c1")
        assert got == stored
        assert got.sealed == original.sealed
        assert got.sealed.ciphertext == original.sealed.ciphertext
        assert got.expires_at == T0_PLUS2
        assert (got.id, got.kind) == ("cred-c1", CredentialKind.OAUTH2)

    async def test_credential_without_expiry_round_trips(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1", expires_at=None))
        assert (await store.credentials.get("c1")).expires_at is None

    async def test_credential_put_again_replaces_and_bumps_version(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1", tag="first"))
        second = await store.credentials.put(
            _credential("c1", credential_id="cred-c1-v2", tag="second")
        )
        assert second.version == 2
        got = await store.credentials.get("c1")
        assert (got.id, got.sealed, got.version) == ("cred-c1-v2", _sealed("second"), 2)

    async def test_credential_put_for_missing_connection_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("ghost")):
            await store.credentials.put(_credential("ghost"))

    async def test_credential_get_missing_is_not_found(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        with pytest.raises(NotFound, match=_id("c1")):
            await store.credentials.get("c1")
        with pytest.raises(NotFound, match=_id("nope")):
            await store.credentials.get("nope")

    async def test_get_with_connection_returns_both(self, store: Store) -> None:
        connection = await store.connections.create(_connection("c1", metadata=DOC))
        credential = await store.credentials.put(_credential("c1", expires_at=T0))
        assert await store.credentials.get_with_connection("c1", "alice") == (
            connection,
            credential,
        )
        assert await store.credentials.get_with_connection("c1") == (connection, credential)

    async def test_get_with_connection_without_credential_is_none(self, store: Store) -> None:
        connection = await store.connections.create(_connection("c1"))
        assert await store.credentials.get_with_connection("c1", "alice") == (connection, None)

    async def test_get_with_connection_foreign_owner_is_not_found(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1"))
        with pytest.raises(NotFound, match=_id("c1")):
            await store.credentials.get_with_connection("c1", "bob")

    async def test_get_with_connection_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.credentials.get_with_connection("nope", "alice")

    async def test_replace_swaps_sealed_and_bumps_version(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        first = await store.credentials.put(_credential("c1", expires_at=T0))
        later = T0 + timedelta(hours=1)
        replaced = await store.credentials.replace("c1", _sealed("fresh", "kek-2"), later)
        assert (replaced.id, replaced.sealed, replaced.expires_at) == (
            first.id,
            _sealed("fresh", "kek-2"),
            later,
        )
        assert replaced.version == first.version + 1
        assert await store.credentials.get("c1") == replaced

    async def test_replace_with_current_expected_version_succeeds(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        first = await store.credentials.put(_credential("c1"))
        replaced = await store.credentials.replace(
            "c1", _sealed("fresh"), None, expected_version=first.version
        )
        assert replaced.version == first.version + 1
        assert replaced.expires_at is None

    async def test_replace_with_stale_expected_version_conflicts(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        first = await store.credentials.put(_credential("c1"))
        current = await store.credentials.replace(
            "c1", _sealed("second"), None, expected_version=first.version
        )
        with pytest.raises(Conflict, match=_id("c1")) as caught:
            await store.credentials.replace(
                "c1", _sealed("lost"), None, expected_version=first.version
            )
        assert "lost" not in str(caught.value)
        assert await store.credentials.get("c1") == current

    async def test_replace_missing_is_not_found(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        with pytest.raises(NotFound, match=_id("c1")):
            await store.credentials.replace("c1", _sealed(), None)

    async def test_due_is_soonest_first_before_the_limit(self, store: Store) -> None:
        for cid, hours in [("a", 3), ("b", 1), ("c", 2), ("late", 10)]:
            await store.connections.create(_connection(cid))
            await store.credentials.put(_credential(cid, expires_at=T0 + timedelta(hours=hours)))
        before = T0 + timedelta(hours=5)
        assert [c.connection_id for c in await store.credentials.due(before, 10)] == [
            "b",
            "c",
            "a",
        ]
        assert [c.connection_id for c in await store.credentials.due(before, 2)] == ["b", "c"]

    async def test_due_skips_non_active_and_unexpiring(self, store: Store) -> None:
        await store.connections.create(_connection("ok"))
        await store.credentials.put(_credential("ok", expires_at=T0))
        await store.connections.create(_connection("never"))
        await store.credentials.put(_credential("never", expires_at=None))
        for status in (
            ConnectionStatus.NEEDS_REAUTH,
            ConnectionStatus.REVOKED,
            ConnectionStatus.ERROR,
        ):
            await store.connections.create(_connection(status.value, status=status))
            await store.credentials.put(_credential(status.value, expires_at=T0))
        due = await store.credentials.due(T0 + timedelta(days=1), 10)
        assert [c.connection_id for c in due] == ["ok"]

    async def test_claim_due_leases_what_it_returns_and_skips_others_claims(
        self, store: Store
    ) -> None:
        for n in range(6):
            await store.connections.create(_connection(f"c{n}"))
            await store.credentials.put(_credential(f"c{n}", expires_at=T0 + timedelta(minutes=n)))
        before = T0 + timedelta(hours=1)
        first = await store.credentials.claim_due(before, 4, "server-a", 30)
        assert [c.connection_id for c in first] == ["c0", "c1", "c2", "c3"]
        assert await store.leases.holder("refresh:c0") == "server-a"
        second = await store.credentials.claim_due(before, 4, "server-b", 30)
        assert [c.connection_id for c in second] == ["c4", "c5"]
        assert await store.credentials.claim_due(before, 4, "server-c", 30) == []
        again = await store.credentials.claim_due(before, 10, "server-a", 30)
        assert [c.connection_id for c in again] == ["c0", "c1", "c2", "c3"]  # renewed
        await store.leases.release("refresh:c1", "server-a")
        freed = await store.credentials.claim_due(before, 10, "server-c", 30)
        assert [c.connection_id for c in freed] == ["c1"]

    async def test_claim_due_takes_over_expired_claims(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1", expires_at=T0))
        before = T0 + timedelta(hours=1)
        assert len(await store.credentials.claim_due(before, 10, "crashed", 0.1)) == 1
        assert await store.credentials.claim_due(before, 10, "survivor", 30) == []
        await anyio.sleep(0.2)
        (taken,) = await store.credentials.claim_due(before, 10, "survivor", 30)
        assert taken.connection_id == "c1"
        assert await store.leases.holder("refresh:c1") == "survivor"

    async def test_claim_due_skips_non_active_and_not_yet_due(self, store: Store) -> None:
        await store.connections.create(_connection("ok"))
        await store.credentials.put(_credential("ok", expires_at=T0))
        await store.connections.create(_connection("later"))
        await store.credentials.put(_credential("later", expires_at=T0 + timedelta(days=2)))
        await store.connections.create(_connection("reauth", status=ConnectionStatus.NEEDS_REAUTH))
        await store.credentials.put(_credential("reauth", expires_at=T0))
        claimed = await store.credentials.claim_due(T0 + timedelta(days=1), 10, "a", 30)
        assert [c.connection_id for c in claimed] == ["ok"]
        assert await store.credentials.claim_due(T0 + timedelta(days=1), 0, "b", 30) == []
        with pytest.raises(InvalidInput, match="ttl"):
            await store.credentials.claim_due(T0, 10, "a", 0)

    async def test_concurrent_claims_are_disjoint(self, store: Store) -> None:
        for n in range(30):
            await store.connections.create(_connection(f"c{n:02d}"))
            await store.credentials.put(_credential(f"c{n:02d}", expires_at=T0))
        got: list[str] = []

        async def claim(holder: str) -> None:
            while batch := await store.credentials.claim_due(
                T0 + timedelta(hours=1), 4, holder, 30
            ):
                got.extend(c.connection_id for c in batch)
                for c in batch:  # what a refresher does: store a later expiry, release
                    await store.credentials.replace(
                        c.connection_id, c.sealed, T0 + timedelta(days=1)
                    )
                    await store.leases.release(f"refresh:{c.connection_id}", holder)

        async with anyio.create_task_group() as tg:
            for n in range(3):
                tg.start_soon(claim, f"worker-{n}")
        assert sorted(got) == [f"c{n:02d}" for n in range(30)]

    async def test_key_ids_counts_credentials_per_key(self, store: Store) -> None:
        assert await store.credentials.key_ids() == {}
        for cid, key_id in [("a", "kek-1"), ("b", "kek-1"), ("c", "kek-2")]:
            await store.connections.create(_connection(cid))
            await store.credentials.put(_credential(cid, key_id=key_id))
        assert await store.credentials.key_ids() == {"kek-1": 2, "kek-2": 1}

    async def test_not_under_key_lists_other_keys_up_to_limit(self, store: Store) -> None:
        for cid, key_id in [("a", "kek-1"), ("b", "kek-2"), ("c", "kek-3")]:
            await store.connections.create(_connection(cid))
            await store.credentials.put(_credential(cid, key_id=key_id))
        others = await store.credentials.not_under_key("kek-1", 10)
        assert sorted(c.connection_id for c in others) == ["b", "c"]
        assert len(await store.credentials.not_under_key("kek-1", 1)) == 1
        assert await store.credentials.not_under_key("kek-9", 0) == []

    async def test_rewrap_writes_only_where_old_key_id_matches(self, store: Store) -> None:
        for cid, key_id in [("a", "kek-1"), ("b", "kek-1"), ("c", "kek-2")]:
            await store.connections.create(_connection(cid))
            await store.credentials.put(_credential(cid, key_id=key_id, tag=cid))
        written = await store.credentials.rewrap(
            [
                Rewrap("cred-a", b"\x00new-a", "kek-3", old_key_id="kek-1", version=1),
                Rewrap("cred-b", b"\x00new-b", "kek-3", old_key_id="kek-2", version=1),  # stale
                Rewrap("cred-c", b"\x00new-c", "kek-3", old_key_id="kek-2", version=1),
                Rewrap("cred-ghost", b"\x00new-x", "kek-3", old_key_id="kek-1", version=1),
            ]
        )
        assert written == 2
        a = await store.credentials.get("a")
        assert a.sealed == Sealed(_sealed("a").ciphertext, b"\x00new-a", "kek-3")
        assert a.version == 1  # a rewrap is not a new credential
        assert (await store.credentials.get("b")).sealed == _sealed("b", "kek-1")
        assert await store.credentials.key_ids() == {"kek-1": 1, "kek-3": 2}

    async def test_rewrap_skips_a_credential_replaced_since_it_was_read(self, store: Store) -> None:
        await store.connections.create(_connection("a"))
        read = await store.credentials.put(_credential("a", key_id="kek-1", tag="a"))
        fresh = _sealed("refreshed", "kek-1")
        await store.credentials.replace("a", fresh, None)  # a refresh under the same old KEK
        written = await store.credentials.rewrap(
            [Rewrap("cred-a", b"\x00new-a", "kek-3", old_key_id="kek-1", version=read.version)]
        )
        assert written == 0
        assert (await store.credentials.get("a")).sealed == fresh

    async def test_not_under_key_pages_with_after(self, store: Store) -> None:
        for cid in ("a", "b", "c", "d"):
            await store.connections.create(_connection(cid))
            await store.credentials.put(_credential(cid, key_id="kek-old"))
        first = await store.credentials.not_under_key("kek-new", 2)
        second = await store.credentials.not_under_key("kek-new", 2, after=first[-1].id)
        rest = await store.credentials.not_under_key("kek-new", 2, after=second[-1].id)
        ids = [c.id for c in first + second]
        assert ids == sorted(ids)
        assert len(set(ids)) == 4
        assert rest == []

    async def test_flush_makes_committed_work_durable_without_error(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.flush()
        assert (await store.connections.get("c1")).id == "c1"

    async def test_rewrap_nothing_writes_nothing(self, store: Store) -> None:
        assert await store.credentials.rewrap([]) == 0

    async def test_credential_delete_is_idempotent(self, store: Store) -> None:
        await store.connections.create(_connection("c1"))
        await store.credentials.put(_credential("c1"))
        await store.credentials.delete("c1")
        await store.credentials.delete("c1")
        await store.credentials.delete("nope")
        assert await store.credentials.get_with_connection("c1") == (
            await store.connections.get("c1"),
            None,
        )

    # ------------------------------------------------------------------ audit

    async def test_audit_append_many_chains_in_order_in_one_go(self, store: Store) -> None:
        from ..types import AuditEntry

        await store.audit.append("first", actor="a", at=T0)
        events = await store.audit.append_many(
            [AuditEntry("vend", "api", "alice", "c1", {"n": i}, T0) for i in range(5)]
        )
        assert [e.seq for e in events] == [2, 3, 4, 5, 6]
        assert [e.detail["n"] for e in events] == [0, 1, 2, 3, 4]
        listed = await store.audit.list()
        assert listed[1:] == events
        assert verify_chain(listed) is None
        assert await store.audit.append_many([]) == []

    async def test_concurrent_append_many_never_forks_the_chain(self, store: Store) -> None:
        from ..types import AuditEntry

        async def batch(tag: str) -> None:
            await store.audit.append_many([AuditEntry(tag, "x") for _ in range(10)])

        async with anyio.create_task_group() as group:
            for tag in ("a", "b", "c", "d"):
                group.start_soon(batch, tag)
        listed = await store.audit.list()
        assert [e.seq for e in listed] == list(range(1, 41))
        assert verify_chain(listed) is None

    async def test_audit_append_chains_from_genesis(self, store: Store) -> None:
        first = await store.audit.append("vend", actor="alice", at=T0)
        second = await store.audit.append("refresh", actor="scheduler", at=T0)
        assert (first.seq, first.prev_hash) == (1, GENESIS)
        assert (second.seq, second.prev_hash) == (2, first.hash)
        assert first.hash != second.hash

    async def test_audit_event_round_trips(self, store: Store) -> None:
        event = await store.audit.append(
            "connect",
            actor="alice",
            owner="alice",
            connection_id="c1",
            detail=DOC,
            at=T0_PLUS2,
        )
        (listed,) = await store.audit.list()
        assert listed == event
        assert (listed.at, dict(listed.detail), listed.owner, listed.connection_id) == (
            T0_PLUS2,
            DOC,
            "alice",
            "c1",
        )

    async def test_audit_at_defaults_to_now(self, store: Store) -> None:
        before = utcnow() - timedelta(seconds=1)
        event = await store.audit.append("vend", actor="alice")
        assert before <= event.at <= utcnow() + timedelta(seconds=1)

    async def test_audit_chain_verifies(self, store: Store) -> None:
        for n in range(5):
            await store.audit.append(f"action-{n}", actor="a", detail={"n": n})
        events = await store.audit.list()
        assert [e.seq for e in events] == [1, 2, 3, 4, 5]
        assert verify_chain(events) is None

    async def test_audit_concurrent_appends_keep_one_chain(self, store: Store) -> None:
        async def append(n: int) -> None:
            await store.audit.append("vend", actor=f"agent-{n}", detail={"n": n})

        async with anyio.create_task_group() as tg:
            for n in range(20):
                tg.start_soon(append, n)
        events = await store.audit.list()
        assert [e.seq for e in events] == list(range(1, 21))
        assert verify_chain(events) is None

    async def test_audit_list_filters_and_pages(self, store: Store) -> None:
        await store.audit.append("a", actor="x", owner="alice", connection_id="c1")
        await store.audit.append("b", actor="x", owner="bob", connection_id="c2")
        await store.audit.append("c", actor="x", owner="alice", connection_id="c3")
        await store.audit.append("d", actor="x", owner="alice", connection_id="c1")
        assert [e.action for e in await store.audit.list(owner="alice")] == ["a", "c", "d"]
        assert [e.action for e in await store.audit.list(connection_id="c1")] == ["a", "d"]
        assert [e.action for e in await store.audit.list(after_seq=2)] == ["c", "d"]
        assert [e.action for e in await store.audit.list(limit=2)] == ["a", "b"]
        page = await store.audit.list(owner="alice", after_seq=1, limit=1)
        assert [e.action for e in page] == ["c"]

    async def test_audit_tampered_event_is_detected(self, store: Store) -> None:
        if not self.supports_tamper:
            pytest.skip(f"{type(self).__name__} cannot tamper with its audit events")
        for n in range(3):
            await store.audit.append(f"action-{n}", actor="a")
        await self.tamper_audit(store, 2)
        assert verify_chain(await store.audit.list()) == 2

    # ------------------------------------------------------------------ leases

    async def test_lease_free_is_acquired(self, store: Store) -> None:
        assert await store.leases.holder("refresh:c1") is None
        assert await store.leases.acquire("refresh:c1", "worker-a", 5)
        assert await store.leases.holder("refresh:c1") == "worker-a"

    async def test_lease_held_by_another_is_refused(self, store: Store) -> None:
        assert await store.leases.acquire("refresh:c1", "worker-a", 5)
        assert not await store.leases.acquire("refresh:c1", "worker-b", 5)
        assert await store.leases.holder("refresh:c1") == "worker-a"
        assert await store.leases.acquire("refresh:c2", "worker-b", 5)  # names are separate

    async def test_lease_same_holder_renews(self, store: Store) -> None:
        assert await store.leases.acquire("l", "worker-a", 0.3)
        await anyio.sleep(0.2)
        assert await store.leases.acquire("l", "worker-a", 0.3)
        await anyio.sleep(0.2)  # past the first expiry, before the renewed one
        assert not await store.leases.acquire("l", "worker-b", 0.3)
        assert await store.leases.holder("l") == "worker-a"

    async def test_lease_expires_then_another_takes_it(self, store: Store) -> None:
        assert await store.leases.acquire("l", "worker-a", 0.05)
        await anyio.sleep(0.1)
        assert await store.leases.holder("l") is None
        assert await store.leases.acquire("l", "worker-b", 5)
        assert await store.leases.holder("l") == "worker-b"

    async def test_lease_release_by_holder_frees_it(self, store: Store) -> None:
        await store.leases.acquire("l", "worker-a", 5)
        await store.leases.release("l", "worker-a")
        assert await store.leases.holder("l") is None
        assert await store.leases.acquire("l", "worker-b", 5)

    async def test_lease_release_by_another_is_ignored(self, store: Store) -> None:
        await store.leases.acquire("l", "worker-a", 5)
        await store.leases.release("l", "worker-b")
        await store.leases.release("unknown", "worker-b")
        assert await store.leases.holder("l") == "worker-a"
        assert not await store.leases.acquire("l", "worker-b", 5)

    async def test_lease_concurrent_acquires_have_one_winner(self, store: Store) -> None:
        results: list[bool] = []

        async def contend(n: int) -> None:
            results.append(await store.leases.acquire("l", f"worker-{n}", 5))

        async with anyio.create_task_group() as tg:
            for n in range(10):
                tg.start_soon(contend, n)
        assert results.count(True) == 1

    # ------------------------------------------------------------------ api tokens

    async def test_api_token_round_trips_and_is_found_by_hash(self, store: Store) -> None:
        token = _api_token("t1", digest="h1", name="laptop", created_at=T0)
        assert await store.api_tokens.create(token) == token
        assert await store.api_tokens.find("h1") == token

    async def test_api_token_duplicate_id_conflicts(self, store: Store) -> None:
        await store.api_tokens.create(_api_token("t1", digest="h1"))
        with pytest.raises(Conflict, match=_id("t1")):
            await store.api_tokens.create(_api_token("t1", digest="h2"))

    async def test_api_token_duplicate_hash_conflicts(self, store: Store) -> None:
        await store.api_tokens.create(_api_token("t1", digest="h1"))
        with pytest.raises(Conflict):
            await store.api_tokens.create(_api_token("t2", "bob", digest="h1"))

    async def test_api_token_unknown_hash_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.api_tokens.find("nope")

    async def test_api_token_list_is_oldest_first_per_owner(self, store: Store) -> None:
        for tid, owner, minutes in [("t1", "alice", 2), ("t2", "bob", 1), ("t3", "alice", 0)]:
            await store.api_tokens.create(
                ApiToken(
                    id=tid,
                    owner=owner,
                    token_hash=f"h-{tid}",
                    created_at=T0 + timedelta(minutes=minutes),
                )
            )
        assert [t.id for t in await store.api_tokens.list("alice")] == ["t3", "t1"]
        assert [t.id for t in await store.api_tokens.list()] == ["t3", "t2", "t1"]

    async def test_api_token_touch_records_last_use(self, store: Store) -> None:
        await store.api_tokens.create(_api_token("t1", digest="h1"))
        await store.api_tokens.touch("t1", T0_PLUS2)
        assert (await store.api_tokens.find("h1")).last_used_at == T0_PLUS2

    async def test_api_token_delete_foreign_or_missing_is_not_found(self, store: Store) -> None:
        await store.api_tokens.create(_api_token("t1", digest="h1"))
        with pytest.raises(NotFound, match=_id("t1")):
            await store.api_tokens.delete("t1", "bob")
        with pytest.raises(NotFound, match=_id("nope")):
            await store.api_tokens.delete("nope")
        await store.api_tokens.delete("t1", "alice")
        with pytest.raises(NotFound):
            await store.api_tokens.find("h1")

    # ------------------------------------------------------------------ proxy runs

    async def test_run_round_trips(self, store: Store) -> None:
        run = ProxyRun(
            id="r1",
            owner="alice",
            grants=("github", "openai"),
            policy={"allow": ["api.github.com"], "deny_all": True},
            container_id="abc123",
            created_at=T0_PLUS2,
            data=DOC,
        )
        await store.runs.put(run)
        assert await store.runs.get("r1") == run

    async def test_run_put_replaces(self, store: Store) -> None:
        await store.runs.put(ProxyRun(id="r1", owner="alice", grants=("github",)))
        await store.runs.put(ProxyRun(id="r1", owner="alice", grants=(), container_id="c"))
        got = await store.runs.get("r1")
        assert (got.grants, got.container_id) == ((), "c")
        assert len(await store.runs.list()) == 1

    async def test_run_get_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.runs.get("nope")

    async def test_run_list_is_oldest_first(self, store: Store) -> None:
        for rid, minutes in [("r1", 2), ("r2", 0), ("r3", 1)]:
            await store.runs.put(
                ProxyRun(id=rid, owner="alice", created_at=T0 + timedelta(minutes=minutes))
            )
        assert [r.id for r in await store.runs.list()] == ["r2", "r3", "r1"]

    async def test_run_delete_is_idempotent(self, store: Store) -> None:
        await store.runs.put(ProxyRun(id="r1", owner="alice"))
        await store.runs.delete("r1")
        await store.runs.delete("r1")
        assert await store.runs.list() == []

    # ------------------------------------------------------------------ box sessions

    async def test_box_session_round_trips(self, store: Store) -> None:
        session = _box(
            "b1",
            status=BoxStatus.READY,
            description="scratch",
            spoke="spoke-1",
            error=None,
            session_url="http://127.0.0.1:8760/auth/b1",
            hook_state=DOC,
            created_at=T0_PLUS2,
        )
        await store.boxes.put(session)
        assert await store.boxes.get("b1") == session
        assert await store.boxes.find_by_token("hash-b1") == session

    async def test_box_session_put_replaces(self, store: Store) -> None:
        await store.boxes.put(_box("b1"))
        await store.boxes.put(_box("b1", status=BoxStatus.ERROR, error="image missing"))
        got = await store.boxes.get("b1")
        assert (got.status, got.error) == (BoxStatus.ERROR, "image missing")

    async def test_box_session_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.boxes.get("nope")
        with pytest.raises(NotFound):
            await store.boxes.find_by_token("nope")

    async def test_box_session_list_filters_by_spoke_oldest_first(self, store: Store) -> None:
        await store.boxes.put(_box("b1", spoke="s1", created_at=T0 + timedelta(minutes=2)))
        await store.boxes.put(_box("b2", spoke="s2", created_at=T0 + timedelta(minutes=1)))
        await store.boxes.put(_box("b3", spoke="s1", created_at=T0))
        assert [b.box_id for b in await store.boxes.list()] == ["b3", "b2", "b1"]
        assert [b.box_id for b in await store.boxes.list(spoke="s1")] == ["b3", "b1"]

    async def test_box_session_delete_is_idempotent(self, store: Store) -> None:
        await store.boxes.put(_box("b1"))
        await store.boxes.delete("b1")
        await store.boxes.delete("b1")
        with pytest.raises(NotFound):
            await store.boxes.get("b1")

    # ------------------------------------------------------------------ transient records

    async def test_transient_round_trips_with_sealed(self, store: Store) -> None:
        record = _transient("k1", owner="alice", data=DOC, sealed=_sealed("verifier"))
        await store.transient.put(record)
        got = await store.transient.get("oauth-state", "k1")
        assert got == record
        assert got.sealed is not None
        assert got.sealed.ciphertext == _sealed("verifier").ciphertext

    async def test_transient_round_trips_without_sealed(self, store: Store) -> None:
        record = _transient("k1")
        await store.transient.put(record)
        assert await store.transient.get("oauth-state", "k1") == record

    async def test_transient_put_replaces_by_kind_and_key(self, store: Store) -> None:
        await store.transient.put(_transient("k1", data={"v": 1}))
        await store.transient.put(_transient("k1", data={"v": 2}))
        await store.transient.put(_transient("k1", kind="web-session", data={"v": 3}))
        assert dict((await store.transient.get("oauth-state", "k1")).data) == {"v": 2}
        assert dict((await store.transient.get("web-session", "k1")).data) == {"v": 3}

    async def test_transient_missing_is_not_found(self, store: Store) -> None:
        await store.transient.put(_transient("k1"))
        with pytest.raises(NotFound, match=_id("nope")):
            await store.transient.get("oauth-state", "nope")
        with pytest.raises(NotFound):
            await store.transient.get("web-session", "k1")  # kinds are separate name spaces

    async def test_transient_expired_is_invisible(self, store: Store) -> None:
        await store.transient.put(_transient("old", expires_in=-1))
        with pytest.raises(NotFound):
            await store.transient.get("oauth-state", "old")
        with pytest.raises(NotFound):
            await store.transient.take("oauth-state", "old")

    async def test_transient_becomes_invisible_when_it_expires(self, store: Store) -> None:
        await store.transient.put(_transient("k1", expires_in=0.15))
        assert (await store.transient.get("oauth-state", "k1")).key == "k1"
        await anyio.sleep(0.2)
        with pytest.raises(NotFound):
            await store.transient.get("oauth-state", "k1")

    async def test_transient_take_is_single_use(self, store: Store) -> None:
        record = _transient("k1", sealed=_sealed())
        await store.transient.put(record)
        assert await store.transient.take("oauth-state", "k1") == record
        with pytest.raises(NotFound, match=_id("k1")):
            await store.transient.take("oauth-state", "k1")
        with pytest.raises(NotFound):
            await store.transient.get("oauth-state", "k1")

    async def test_transient_concurrent_takes_have_one_winner(self, store: Store) -> None:
        await store.transient.put(_transient("k1"))
        outcomes: list[str] = []

        async def take() -> None:
            try:
                await store.transient.take("oauth-state", "k1")
                outcomes.append("taken")
            except NotFound:
                outcomes.append("not found")

        async with anyio.create_task_group() as tg:
            for _ in range(5):
                tg.start_soon(take)
        assert sorted(outcomes) == ["not found"] * 4 + ["taken"]

    async def test_transient_delete_is_idempotent(self, store: Store) -> None:
        await store.transient.put(_transient("k1"))
        await store.transient.delete("oauth-state", "k1")
        await store.transient.delete("oauth-state", "k1")
        with pytest.raises(NotFound):
            await store.transient.get("oauth-state", "k1")

    async def test_transient_purge_removes_only_expired(self, store: Store) -> None:
        await store.transient.put(_transient("old-1", expires_in=-10))
        await store.transient.put(_transient("old-2", kind="web-session", expires_in=-5))
        await store.transient.put(_transient("fresh", expires_in=60))
        assert await store.transient.purge_expired(utcnow()) == 2
        assert await store.transient.purge_expired(utcnow()) == 0
        assert (await store.transient.get("oauth-state", "fresh")).key == "fresh"

    # ------------------------------------------------------------------ spokes

    async def test_spoke_round_trips(self, store: Store) -> None:
        spoke = _spoke("s1", name="rack-1", last_seen_at=T0_PLUS2, data=DOC)
        await store.spokes.put(spoke)
        assert await store.spokes.get("s1") == spoke
        assert await store.spokes.find_by_credential("cred-hash-s1") == spoke

    async def test_spoke_put_replaces_by_id(self, store: Store) -> None:
        await store.spokes.put(_spoke("s1", name="rack-1"))
        await store.spokes.put(_spoke("s1", name="rack-one", last_seen_at=T0))
        got = await store.spokes.get("s1")
        assert (got.name, got.last_seen_at) == ("rack-one", T0)

    async def test_spoke_duplicate_name_conflicts(self, store: Store) -> None:
        await store.spokes.put(_spoke("s1", name="rack-1"))
        with pytest.raises(Conflict, match=_id("rack-1")):
            await store.spokes.put(_spoke("s2", name="rack-1"))
        assert [s.id for s in await store.spokes.list()] == ["s1"]

    async def test_spoke_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.spokes.get("nope")
        with pytest.raises(NotFound):
            await store.spokes.find_by_credential("nope")
        with pytest.raises(NotFound, match=_id("nope")):
            await store.spokes.delete("nope")

    async def test_spoke_list_is_ordered_by_name(self, store: Store) -> None:
        for sid, name in [("s1", "zeta"), ("s2", "alpha"), ("s3", "mid")]:
            await store.spokes.put(_spoke(sid, name=name))
        assert [s.name for s in await store.spokes.list()] == ["alpha", "mid", "zeta"]

    async def test_spoke_delete_removes_it(self, store: Store) -> None:
        await store.spokes.put(_spoke("s1"))
        await store.spokes.delete("s1")
        with pytest.raises(NotFound):
            await store.spokes.get("s1")

    async def test_join_token_round_trips_oldest_first(self, store: Store) -> None:
        second = _join_token("j2", created_at=T0 + timedelta(minutes=1), expires_at=T0_PLUS2)
        first = _join_token("j1", created_at=T0)
        await store.spokes.add_join_token(second)
        await store.spokes.add_join_token(first)
        assert await store.spokes.list_join_tokens() == [first, second]

    async def test_join_token_duplicate_id_conflicts(self, store: Store) -> None:
        await store.spokes.add_join_token(_join_token("j1"))
        with pytest.raises(Conflict, match=_id("j1")):
            await store.spokes.add_join_token(_join_token("j1", digest="other"))

    async def test_join_token_is_consumed_once(self, store: Store) -> None:
        await store.spokes.add_join_token(_join_token("j1", expires_at=T0))
        now = T0 - timedelta(minutes=1)
        used = await store.spokes.consume_join_token("jt-hash-j1", now, "s1")
        assert (used.id, used.used_at, used.used_by) == ("j1", now, "s1")
        with pytest.raises(NotFound):
            await store.spokes.consume_join_token("jt-hash-j1", now, "s2")
        (listed,) = await store.spokes.list_join_tokens()
        assert (listed.used_at, listed.used_by) == (now, "s1")

    async def test_join_token_expired_is_not_found(self, store: Store) -> None:
        await store.spokes.add_join_token(_join_token("j1", expires_at=T0))
        with pytest.raises(NotFound):
            await store.spokes.consume_join_token("jt-hash-j1", T0 + timedelta(seconds=1), "s1")
        with pytest.raises(NotFound):
            await store.spokes.consume_join_token("jt-hash-j1", T0, "s1")  # expiry is exclusive

    async def test_join_token_unknown_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound):
            await store.spokes.consume_join_token("nope", T0, "s1")

    async def test_join_token_concurrent_consumes_have_one_winner(self, store: Store) -> None:
        await store.spokes.add_join_token(_join_token("j1", expires_at=T0))
        winners: list[str] = []

        async def consume(spoke: str) -> None:
            try:
                await store.spokes.consume_join_token("jt-hash-j1", T0 - timedelta(days=1), spoke)
                winners.append(spoke)
            except NotFound:
                pass

        async with anyio.create_task_group() as tg:
            for n in range(5):
                tg.start_soon(consume, f"s{n}")
        assert len(winners) == 1

    async def test_join_token_revoked_cannot_be_consumed(self, store: Store) -> None:
        await store.spokes.add_join_token(_join_token("j1", expires_at=T0))
        await store.spokes.revoke_join_token("j1")
        with pytest.raises(NotFound):
            await store.spokes.consume_join_token("jt-hash-j1", T0 - timedelta(days=1), "s1")
        with pytest.raises(NotFound, match=_id("j1")):
            await store.spokes.revoke_join_token("j1")

    # ------------------------------------------------------------------ relays

    async def test_relay_round_trips(self, store: Store) -> None:
        relay = _relay("relay-1", owner="alice", created_at=T0_PLUS2)
        await store.relays.put(relay)
        assert await store.relays.get("relay-1") == relay
        assert await store.relays.list() == [relay]

    async def test_relay_put_replaces_and_keeps_its_tokens(self, store: Store) -> None:
        await store.relays.put(_relay("relay-1", digest="mh-1"))
        await store.relays.add_access_token(_access_token("a1"))
        replacement = _relay("relay-1", digest="mh-2", owner="bob")
        await store.relays.put(replacement)
        assert await store.relays.get("relay-1") == replacement
        assert [t.id for t in await store.relays.list_access_tokens("relay-1")] == ["a1"]

    async def test_relay_list_is_oldest_first(self, store: Store) -> None:
        for rid, minutes in [("r1", 2), ("r2", 0), ("r3", 1)]:
            await store.relays.put(_relay(rid, created_at=T0 + timedelta(minutes=minutes)))
        assert [r.id for r in await store.relays.list()] == ["r2", "r3", "r1"]

    async def test_relay_missing_is_not_found(self, store: Store) -> None:
        with pytest.raises(NotFound, match=_id("nope")):
            await store.relays.get("nope")
        with pytest.raises(NotFound, match=_id("nope")):
            await store.relays.delete("nope")

    async def test_relay_delete_removes_its_access_tokens(self, store: Store) -> None:
        await store.relays.put(_relay("relay-1"))
        await store.relays.add_access_token(_access_token("a1"))
        await store.relays.delete("relay-1")
        with pytest.raises(NotFound):
            await store.relays.get("relay-1")
        with pytest.raises(NotFound):
            await store.relays.find_access_token("relay-1", "at-hash-a1")
        assert await store.relays.list_access_tokens("relay-1") == []

    async def test_access_token_round_trips_oldest_first(self, store: Store) -> None:
        await store.relays.put(_relay("relay-1"))
        second = _access_token("a2", created_at=T0 + timedelta(minutes=1))
        first = _access_token("a1", created_at=T0_PLUS2 - timedelta(days=1))
        await store.relays.add_access_token(second)
        await store.relays.add_access_token(first)
        assert await store.relays.find_access_token("relay-1", "at-hash-a2") == second
        assert await store.relays.list_access_tokens("relay-1") == [first, second]

    async def test_access_token_is_scoped_to_its_relay(self, store: Store) -> None:
        await store.relays.put(_relay("relay-1", digest="mh-1"))
        await store.relays.put(_relay("relay-2", digest="mh-2"))
        await store.relays.add_access_token(_access_token("a1", relay_id="relay-1"))
        with pytest.raises(NotFound):
            await store.relays.find_access_token("relay-2", "at-hash-a1")
        assert await store.relays.list_access_tokens("relay-2") == []

    async def test_access_token_duplicate_id_conflicts(self, store: Store) -> None:
        await store.relays.put(_relay("relay-1"))
        await store.relays.add_access_token(_access_token("a1"))
        with pytest.raises(Conflict, match=_id("a1")):
            await store.relays.add_access_token(_access_token("a1", digest="other"))

    async def test_access_token_delete(self, store: Store) -> None:
        await store.relays.put(_relay("relay-1"))
        await store.relays.add_access_token(_access_token("a1"))
        await store.relays.delete_access_token("a1")
        with pytest.raises(NotFound):
            await store.relays.find_access_token("relay-1", "at-hash-a1")
        with pytest.raises(NotFound, match=_id("a1")):
            await store.relays.delete_access_token("a1")

"""The broker against the real store, sealer and secret store: owner scoping, vend, refresh on
read, single flight in one process and across two, re-auth, rate limits, refresh-ahead, audit."""

from __future__ import annotations

import asyncio
from datetime import timedelta

import pytest

from valetkey_broker.broker import Broker
from valetkey_hookspecs import (
    ConnectionStatus,
    InvalidInput,
    NeedsReauth,
    NotFound,
    RateLimited,
    Revoked,
    Secret,
    Unauthorized,
    utcnow,
)
from valetkey_hookspecs.audit import verify_chain

pytestmark = pytest.mark.anyio


async def oauth_connection(broker, owner="ann", expires_in=3600.0, refresh="refresh-0-abcdefgh"):
    conn = await broker.create_connection(owner, "acme")
    await broker.store_secret(
        owner,
        conn.id,
        Secret(
            access_token="access-0-abcdefgh",
            refresh_token=refresh,
            expires_at=utcnow() + timedelta(seconds=expires_in),
        ),
    )
    return conn


async def test_create_needs_a_known_connector_and_a_valid_owner(make_kernel):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        with pytest.raises(NotFound, match="unknown connector 'nope'"):
            await broker.create_connection("ann", "nope")
        with pytest.raises(InvalidInput, match="invalid owner ''"):
            await broker.create_connection("", "acme")
        assert await kernel.store.connections.count() == 0


async def test_an_api_key_vends_as_stored_and_never_refreshes(make_kernel, plugin):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await broker.create_connection("ann", "keyco")
        await broker.store_secret("ann", conn.id, Secret(api_key="sk-test-123456"))
        secret = await broker.vend("ann", conn.id)
        assert secret.token == "sk-test-123456"
        assert plugin.provider.calls == 0


async def test_another_owner_cannot_see_vend_revoke_or_delete(make_kernel):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, owner="ann")
        for call in (
            broker.get_connection("bob", conn.id),
            broker.vend("bob", conn.id),
            broker.revoke("bob", conn.id),
            broker.delete("bob", conn.id),
            broker.refresh("bob", conn.id),
        ):
            with pytest.raises(NotFound) as info:
                await call
            assert "bob" not in str(info.value) and "ann" not in str(info.value)
        assert [c.id for c in await broker.list_connections("bob")] == []
        assert (await broker.get_connection("ann", conn.id)).status is ConnectionStatus.ACTIVE


async def test_a_warm_token_is_vended_without_calling_the_provider(make_kernel, plugin):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=3600)
        assert (await broker.vend("ann", conn.id)).access_token == "access-0-abcdefgh"
        assert plugin.provider.calls == 0


async def test_a_token_within_the_lead_is_refreshed_on_read(make_kernel, plugin):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=60)  # lead is 300 s
        secret = await broker.vend("ann", conn.id)
        assert secret.access_token == "access-1-abcdefgh"
        assert secret.refresh_token == "refresh-0-abcdefgh"  # kept when the provider omits one
        assert plugin.provider.calls == 1
        again = await broker.vend("ann", conn.id)
        assert again.access_token == "access-1-abcdefgh" and plugin.provider.calls == 1


async def test_fifty_concurrent_vends_cause_one_refresh(make_kernel, plugin):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=10)
        results = await asyncio.gather(*(broker.vend("ann", conn.id) for _ in range(50)))
        assert plugin.provider.calls == 1
        assert {s.access_token for s in results} == {"access-1-abcdefgh"}


async def test_two_processes_on_one_database_refresh_once(make_kernel, plugin):
    """Two kernels (separate store connections, separate brokers, separate lease holders) on one
    SQLite file behave like two processes."""
    plugin.provider.delay = 0.2
    async with make_kernel() as one, make_kernel() as two:
        first, second = Broker(one), Broker(two)
        conn = await oauth_connection(first, expires_in=10)
        vends = [first.vend("ann", conn.id) for _ in range(25)]
        vends += [second.vend("ann", conn.id) for _ in range(25)]
        results = await asyncio.gather(*vends)
        assert plugin.provider.calls == 1
        assert {s.access_token for s in results} == {"access-1-abcdefgh"}


async def test_a_dead_grant_flips_to_needs_reauth_notifies_once_and_stops_calling(
    make_kernel, plugin
):
    plugin.provider.fail = NeedsReauth("invalid_grant: refresh token revoked")
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=10)
        with pytest.raises(NeedsReauth, match=f"connection {conn.id} \\(acme\\) needs re-auth"):
            await broker.vend("ann", conn.id)
        assert (await broker.get_connection("ann", conn.id)).status is ConnectionStatus.NEEDS_REAUTH
        with pytest.raises(NeedsReauth):
            await broker.vend("ann", conn.id)
        assert plugin.provider.calls == 1
        await kernel.drain_notifications()
        (note,) = plugin.notifier.got
        assert (note.kind, note.owner, note.connection_id) == ("needs_reauth", "ann", conn.id)
        assert "valetkey connect acme" in note.data["connect_command"]
        actions = [e.action for e in await kernel.store.audit.list(connection_id=conn.id)]
        assert "reauth.required" in actions


async def test_rate_limited_refresh_returns_the_still_valid_token(make_kernel, plugin):
    plugin.provider.fail = RateLimited("acme: 5 requests per 60s used", retry_after=30)
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=60)
        assert (await broker.vend("ann", conn.id)).access_token == "access-0-abcdefgh"
        expired = await oauth_connection(broker, expires_in=-5)
        with pytest.raises(RateLimited):
            await broker.vend("ann", expired.id)


async def test_revoked_vends_nothing(make_kernel):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker)
        await broker.revoke("ann", conn.id)
        with pytest.raises(Revoked, match=f"connection {conn.id} is revoked"):
            await broker.vend("ann", conn.id)


async def test_refresh_due_refreshes_soonest_first_and_skips_inactive(make_kernel, plugin):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        late = await oauth_connection(broker, expires_in=200)
        soon = await oauth_connection(broker, expires_in=20)
        fresh = await oauth_connection(broker, expires_in=7200)
        revoked = await oauth_connection(broker, expires_in=10)
        await broker.revoke("ann", revoked.id)
        report = await broker.refresh_due()
        assert report.refreshed == [soon.id, late.id]
        assert plugin.provider.calls == 2
        assert fresh.id not in report.refreshed and revoked.id not in report.refreshed
        assert (await broker.refresh_due()).refreshed == []  # nothing is due any more


async def test_the_audit_chain_covers_every_action_and_verifies(make_kernel):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=10)
        await broker.vend("ann", conn.id)
        await broker.revoke("ann", conn.id)
        events = await kernel.store.audit.list()
        assert [e.action for e in events] == [
            "connection.create",
            "credential.store",
            "refresh",
            "vend",
            "connection.revoke",
        ]
        assert verify_chain(events) is None


async def test_no_token_is_readable_in_the_database_files(make_kernel, home):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=10)
        await broker.vend("ann", conn.id)
    blob = b"".join(p.read_bytes() for p in home.rglob("*") if p.is_file())
    for value in ("access-0-abcdefgh", "access-1-abcdefgh", "refresh-0-abcdefgh"):
        assert value.encode() not in blob


async def test_auto_refresh_retries_exactly_once_after_a_401(make_kernel, plugin):
    import httpx

    from valetkey_broker.autorefresh import with_auto_refresh

    seen = []

    async def call(secret):
        seen.append(secret.access_token)
        if secret.access_token == "access-0-abcdefgh":
            request = httpx.Request("GET", "https://api.acme.example/me")
            raise httpx.HTTPStatusError(
                "401", request=request, response=httpx.Response(401, request=request)
            )
        return "ok"

    async def always_refused(secret):
        seen.append(secret.access_token)
        raise Unauthorized("invalid_token")

    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker, expires_in=3600)
        assert await with_auto_refresh(broker, "ann", conn.id, call) == "ok"
        assert seen == ["access-0-abcdefgh", "access-1-abcdefgh"]
        assert plugin.provider.calls == 1
        seen.clear()
        with pytest.raises(Unauthorized):
            await with_auto_refresh(broker, "ann", conn.id, always_refused)
        assert len(seen) == 2 and plugin.provider.calls == 2  # one retry, then the answer


async def test_auto_refresh_does_not_retry_other_errors(make_kernel, plugin):
    from valetkey_broker.autorefresh import with_auto_refresh

    async def broken(secret):
        raise ValueError("server exploded")

    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker)
        with pytest.raises(ValueError, match="server exploded"):
            await with_auto_refresh(broker, "ann", conn.id, broken)
        assert plugin.provider.calls == 0


async def test_concurrent_vends_are_each_audited_in_fewer_transactions(make_kernel):
    async with make_kernel() as kernel:
        broker = Broker(kernel)
        conn = await oauth_connection(broker)
        writes = []
        original = kernel.store.audit.append_many

        async def counting(entries):
            writes.append(len(entries))
            return await original(entries)

        kernel.store.audit.append_many = counting
        await asyncio.gather(*(broker.vend("ann", conn.id) for _ in range(50)))
        assert sum(writes) == 50
        assert len(writes) < 50  # group commit: queued vends share a transaction
        events = await kernel.store.audit.list()
        assert [e.action for e in events].count("vend") == 50
        assert verify_chain(events) is None


async def test_the_scheduler_runs_full_passes_back_to_back(make_kernel, plugin):
    from valetkey_broker.config import BrokerConfig
    from valetkey_broker.scheduler import run_passes

    plugin.provider.delay = 0
    async with make_kernel() as kernel:
        broker = Broker(kernel, BrokerConfig(batch_size=3))
        for _ in range(7):
            await oauth_connection(broker, expires_in=20)
        assert await run_passes(broker, budget=30) == 7  # 3 + 3 + 1: until nothing is due
        assert plugin.provider.calls == 7
        assert (await broker.refresh_due()).refreshed == []


async def test_the_api_and_the_scheduler_of_one_server_share_one_broker(make_kernel, plugin):
    """One in-flight refresh per connection inside a server, whoever asked first."""
    from valetkey_broker.broker import serving_broker

    async with make_kernel() as kernel, make_kernel() as other:
        assert serving_broker(kernel) is serving_broker(kernel)
        assert serving_broker(kernel) is not serving_broker(other)
        # what other plugins reach (the proxy): the same broker, through the kernel
        assert kernel.broker is serving_broker(kernel)
        api_side, scheduler_side = serving_broker(kernel), serving_broker(kernel)
        conn = await oauth_connection(api_side, expires_in=10)
        await asyncio.gather(api_side.vend("ann", conn.id), scheduler_side.refresh_due())
        assert plugin.provider.calls == 1

"""Webhooks: subscriptions over the API, signed deliveries of the tenant's events in order and at
least once, retries with backoff while a receiver is down, a hanging receiver that holds back
only its own subscription, giving up after the retry period, and the deliveries listing."""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import Any

import asyncpg
import pytest

from service.webhooks import LOCK_WEBHOOKS, SIGNATURE_HEADER, Settings, WebhookSender, sign, verify
from service.workers import LeaderWorker
from tests.conftest import Api
from tests.helpers import at, hold, resource, service, weekday_ahead
from tests.receiver import Receiver
from tests.settle import settled

SECRET = "whsec_test_0123456789"
FAST = Settings(timeout=0.5, backoff_base=0.2, backoff_max=0.5)


@contextlib.asynccontextmanager
async def sending(
    database_url: str, pool: asyncpg.Pool, settings: Settings = FAST
) -> AsyncIterator[WebhookSender]:
    """The real webhook-sender worker (leader lock and all), in this process."""
    sender = WebhookSender(pool, settings)
    worker = LeaderWorker(
        "webhook-sender", database_url, LOCK_WEBHOOKS, sender.step, interval=0.05, retry=0.2
    )
    sender.wake = worker.wake
    worker.start()
    try:
        yield sender
    finally:
        await worker.stop()
        await sender.close()


async def eventually(check: Callable[[], Awaitable[bool]], within: float = 30) -> None:
    deadline = time.monotonic() + within
    while not await check():
        if time.monotonic() > deadline:
            raise AssertionError(f"not reached within {within} s")
        await asyncio.sleep(0.05)


async def subscribe(api: Api, url: str, events: list[str] | None = None, wid: str = "w1") -> None:
    body = {"url": url, "events": events or ["*"], "secret": SECRET}
    r = await api.put(f"/v1/webhooks/{wid}", body)
    assert r.status_code == 200, r.text


async def deliveries(api: Api, wid: str = "w1", **params: Any) -> list[dict[str, Any]]:
    out: list[dict[str, Any]] = []
    cursor = None
    while True:
        query = {**params, **({"cursor": cursor} if cursor else {})}
        r = await api.get(f"/v1/webhooks/{wid}/deliveries", params=query)
        assert r.status_code == 200, r.text
        out += r.json()["data"]
        cursor = r.json()["next_cursor"]
        if cursor is None:
            return out


async def feed_positions(api: Api) -> list[int]:
    await settled(api.pool)
    r = await api.get("/v1/events", params={"limit": 1000})
    return [e["position"] for e in r.json()["events"]]


async def book(api: Api, n: int, first_hour: int = 9) -> list[dict[str, Any]]:
    await resource(api, "host")
    await service(api, "consult", ["host"])
    made = []
    for i in range(n):
        made.append(await hold(api, "consult", at(weekday_ahead(0), f"{first_hour + i:02d}:00")))
    return made


class TestSubscriptions:
    async def test_put_get_delete(self, api: Api) -> None:
        r = await api.put(
            "/v1/webhooks/orders",
            {"url": "https://example.com/h", "events": ["SlotHeld"], "secret": SECRET},
        )
        assert r.status_code == 200
        view = r.json()
        assert view["id"] == "orders" and view["events"] == ["SlotHeld"]
        assert "secret" not in view
        assert (await api.get("/v1/webhooks/orders")).json()["url"] == "https://example.com/h"
        other = await api.new_tenant()
        assert (await other.get("/v1/webhooks/orders")).status_code == 404
        assert (
            await api.client.delete("/v1/webhooks/orders", headers=api.secret)
        ).status_code == 204
        assert (await api.get("/v1/webhooks/orders")).status_code == 404

    @pytest.mark.parametrize(
        ("body", "path"),
        [
            ({"url": "ftp://example.com/h", "events": ["*"], "secret": SECRET}, "url"),
            ({"url": "file:///etc/passwd", "events": ["*"], "secret": SECRET}, "url"),
            ({"url": "http:///nohost", "events": ["*"], "secret": SECRET}, "url"),
            ({"url": "https://example.com", "events": ["Nope"], "secret": SECRET}, "events[0]"),
            ({"url": "https://example.com", "events": [], "secret": SECRET}, "events"),
            ({"url": "https://example.com", "events": ["*"]}, "secret"),
        ],
    )
    async def test_only_http_urls_and_known_event_types(
        self, api: Api, body: dict[str, Any], path: str
    ) -> None:
        r = await api.put("/v1/webhooks/w", body)
        assert r.status_code == 422, r.text
        assert r.json()["error"]["details"]["errors"][0]["path"] == path


class TestDelivery:
    async def test_signed_events_in_order_after_the_receiver_was_down(
        self, api: Api, database_url: str
    ) -> None:
        receiver = Receiver()  # its port is reserved but nothing listens yet: "down"
        await subscribe(api, receiver.url)
        await book(api, 4)
        async with sending(database_url, api.pool):
            # Wait until the first delivery has failed a few times, with backoff in between.
            async def retried() -> bool:
                ds = await deliveries(api)
                return bool(ds) and ds[0]["attempt_count"] >= 3

            await eventually(retried)
            first = (await deliveries(api))[0]
            assert first["status"] == "pending"
            assert all(a["status_code"] is None and a["error"] for a in first["attempts"])
            # Nothing after the first was attempted while it was failing: order per subscription.
            assert all(d["attempt_count"] == 0 for d in (await deliveries(api))[1:])
            more = await book(api, 2, first_hour=14)  # events that happen during the outage
            receiver.start()
            try:
                expected = await feed_positions(api)

                async def all_delivered() -> bool:
                    ds = await deliveries(api)
                    return len(ds) == len(expected) and all(d["status"] == "delivered" for d in ds)

                await eventually(all_delivered)
            finally:
                receiver.close()
        got = [r.json["position"] for r in receiver.received]
        assert list(dict.fromkeys(got)) == expected  # every event, in log order
        assert got == sorted(got)  # at least once, never out of order
        for r in receiver.received:
            assert verify(SECRET, r.headers[SIGNATURE_HEADER], r.body)
            assert not verify("another-secret", r.headers[SIGNATURE_HEADER], r.body)
            payload = r.json
            assert set(payload) == {"id", "type", "position", "recorded_at", "data"}
            assert payload["id"] == f"evt_{payload['position']}"
        held = [r.json for r in receiver.received if r.json["type"] == "SlotHeld"]
        assert held[-1]["data"]["booking_id"] == more[-1]["id"]

    async def test_the_signature_is_hmac_sha256_of_timestamp_dot_body(self) -> None:
        import hashlib
        import hmac

        body = b'{"id":"evt_1"}'
        header = sign("k", 1700000000, body)
        mac = hmac.new(b"k", b"1700000000." + body, hashlib.sha256).hexdigest()
        assert header == f"t=1700000000,v1={mac}"
        assert verify("k", header, body, tolerance=None)
        assert not verify("k", header, body + b" ", tolerance=None)
        assert not verify("k", header, body)  # too old with the default tolerance

    async def test_only_subscribed_types_are_sent(self, api: Api, database_url: str) -> None:
        receiver = Receiver().start()
        try:
            await subscribe(api, receiver.url, ["BookingCancelled"])
            made = await book(api, 2)
            r = await api.post(
                f"/v1/bookings/{made[1]['id']}/cancel", {"reason": "r", "by": "owner"}
            )
            assert r.status_code == 200
            async with sending(database_url, api.pool):

                async def one() -> bool:
                    return len(await deliveries(api, status="delivered")) == 1

                await eventually(one)
        finally:
            receiver.close()
        # At least once: an attempt that outlived FAST's 0.5 s timeout on a busy machine is sent
        # again, so the one event may arrive twice, but nothing else may.
        assert {r.json["type"] for r in receiver.received} == {"BookingCancelled"}
        assert {r.json["data"]["booking_id"] for r in receiver.received} == {made[1]["id"]}

    async def test_a_hanging_receiver_holds_back_only_its_own_subscription(
        self, api: Api, database_url: str
    ) -> None:
        hanging = Receiver(mode="hang").start()
        healthy = Receiver().start()
        try:
            await subscribe(api, hanging.url, wid="slow")
            await subscribe(api, healthy.url, wid="fast")
            async with sending(database_url, api.pool):
                made = await book(api, 5)  # commands succeed while deliveries hang
                assert len(made) == 5
                expected = await feed_positions(api)

                async def fast_done() -> bool:
                    ds = await deliveries(api, "fast", status="delivered")
                    return len(ds) == len(expected)

                async def slow_timed_out() -> bool:
                    ds = await deliveries(api, "slow")
                    return bool(ds) and ds[0]["attempt_count"] >= 2

                await eventually(fast_done)
                await eventually(slow_timed_out)
                slow = await deliveries(api, "slow")
        finally:
            hanging.close()
            healthy.close()
        assert all(d["status"] == "pending" for d in slow)
        assert "timed out" in slow[0]["attempts"][0]["error"]
        assert all(d["attempt_count"] == 0 for d in slow[1:])
        got = [r.json["position"] for r in healthy.received]
        assert list(dict.fromkeys(got)) == expected  # every event, at least once (see above)
        assert got == sorted(got)  # never out of order

    async def test_gives_up_after_the_retry_period_and_moves_on(
        self, api: Api, database_url: str
    ) -> None:
        failing = Receiver(mode="fail").start()
        try:
            await subscribe(api, failing.url)
            await book(api, 1)
            settings = Settings(timeout=0.5, backoff_base=0.05, backoff_max=0.1, give_up_after=0.3)
            async with sending(database_url, api.pool, settings):

                async def all_failed() -> bool:
                    ds = await deliveries(api)
                    return bool(ds) and all(d["status"] == "failed" for d in ds)

                await eventually(all_failed)
        finally:
            failing.close()
        ds = await deliveries(api)
        assert all(d["attempt_count"] >= 2 for d in ds)
        assert all(a["status_code"] == 500 for d in ds for a in d["attempts"])
        assert all(d["completed_at"] and d["next_attempt_at"] is None for d in ds)
        assert len(await deliveries(api, status="failed")) == len(ds)
        assert await deliveries(api, status="pending") == []

    async def test_deliveries_are_cursor_paginated(self, api: Api, database_url: str) -> None:
        receiver = Receiver().start()
        try:
            await subscribe(api, receiver.url)
            await book(api, 2)
            async with sending(database_url, api.pool):
                n = len(await feed_positions(api))

                async def done() -> bool:
                    return len(await deliveries(api, status="delivered")) == n

                await eventually(done)
        finally:
            receiver.close()
        first = await api.get("/v1/webhooks/w1/deliveries", params={"limit": 2})
        page = first.json()
        assert len(page["data"]) == 2 and page["next_cursor"]
        paged = await deliveries(api, limit=2)
        assert [d["event"]["position"] for d in paged] == await feed_positions(api)
        bad = await api.get("/v1/webhooks/w1/deliveries", params={"cursor": "zz"})
        assert bad.status_code == 422
        assert (await api.get("/v1/webhooks/none/deliveries")).status_code == 404

"""/readyz and /metrics show what an operator needs: database reachability (503 when it is not),
projection lag in events and seconds, which workers this process leads, request counts and
latencies by route template, appended events, version conflicts and retries, the age of the
oldest open transaction, and the webhook backlog."""

from __future__ import annotations

import asyncio
import gc
import os
import re

import asyncpg
from prometheus_client.parser import text_string_to_metric_families
from starlette.applications import Starlette

from projections.runner import ProjectionRunner
from service import streams
from service.app import SERVING_COLLECTOR, create_app
from service.decider import Appends
from service.events import EventMeta, ResourceUpserted
from service.handler import Decide, Reader
from service.webhooks import Settings, WebhookSender
from tests.conftest import Api
from tests.helpers import at, hold, iso, resource, service, weekday_ahead
from tests.settle import settled


def samples(text: str) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    out: dict[tuple[str, tuple[tuple[str, str], ...]], float] = {}
    for family in text_string_to_metric_families(text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


async def scrape(api: Api) -> dict[tuple[str, tuple[tuple[str, str], ...]], float]:
    r = await api.client.get("/metrics")
    assert r.status_code == 200
    assert r.headers["content-type"].startswith("text/plain")
    return samples(r.text)


async def some_bookings(api: Api, n: int = 3, first_hour: int = 9) -> None:
    await resource(api, "host")
    await service(api, "consult", ["host"])
    for i in range(n):
        await hold(api, "consult", at(weekday_ahead(0), f"{first_hour + i:02d}:00"))


class TestReadyz:
    async def test_reports_database_workers_and_projection_lag(
        self, api: Api, app: Starlette
    ) -> None:
        await some_bookings(api)
        body = (await api.client.get("/readyz")).json()
        assert body["status"] == "ok"
        assert body["database"]["ok"] is True
        assert body["pid"] == os.getpid()
        # This test app runs no background workers, so it leads none of them.
        assert body["workers"] == {
            "hold-expirer": False,
            "projector": False,
            "webhook-sender": False,
        }
        stats = body["projections"]["stats"]
        assert stats["events_behind"] > 0
        assert stats["seconds_behind"] >= 0
        assert set(body["projections"]) == {"stats", "webhooks"}

        await settled(app.state.pool)
        await ProjectionRunner(app.state.pool).catch_up()
        caught_up = (await api.client.get("/readyz")).json()["projections"]["stats"]
        assert caught_up["events_behind"] == 0
        assert caught_up["seconds_behind"] == 0
        assert caught_up["checkpoint"] != "0-0"

    async def test_answers_503_with_retry_after_when_the_database_is_unreachable(
        self, api: Api, server_url: str, database_url: str
    ) -> None:
        name = database_url.rsplit("/", 1)[1].split("?", 1)[0]
        admin = await asyncpg.connect(server_url)
        try:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS false')
            await admin.execute(
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = $1", name
            )
            r = await api.client.get("/readyz")
            assert r.status_code == 503
            assert r.headers["retry-after"] == "1"
            assert r.json()["error"]["code"] == "unavailable"
            # /metrics still answers with what the process knows.
            assert (await api.client.get("/metrics")).status_code == 200
        finally:
            await admin.execute(f'ALTER DATABASE "{name}" WITH ALLOW_CONNECTIONS true')
            await admin.close()
        assert (await api.client.get("/readyz")).status_code == 200


class TestMetrics:
    async def test_requests_by_route_template_and_status_with_latency(self, api: Api) -> None:
        await some_bookings(api, 2)
        await api.get("/v1/bookings/bk_missing")
        m = await scrape(api)
        created = ("method", "POST"), ("route", "/v1/bookings"), ("status", "201")
        assert m[("slotlog_http_requests_total", created)] == 2
        missing = ("method", "GET"), ("route", "/v1/bookings/{id}"), ("status", "404")
        assert m[("slotlog_http_requests_total", missing)] == 1
        count = (
            "slotlog_http_request_duration_seconds_count",
            (("method", "POST"), ("route", "/v1/bookings")),
        )
        assert m[count] == 2
        assert any(k[0] == "slotlog_http_request_duration_seconds_bucket" for k in m)
        assert not any("bk_missing" in str(k) for k in m), "concrete paths must not be labels"

    async def test_appended_events_conflicts_and_retries(self, api: Api, app: Starlette) -> None:
        await resource(api, "host")
        before = await scrape(api)
        # Two commands on one stream that both read it before either appends: one wins, the
        # other meets a version conflict and is re-decided (a retry).
        stream = streams.resource(api.tenant["tenant_id"], "host")
        both_read = asyncio.Barrier(2)
        decisions = 0

        def upsert(name: str) -> Decide:
            async def decide(r: Reader) -> Appends:
                nonlocal decisions
                await r.read_latest(stream)
                decisions += 1
                if decisions <= 2:  # the first two wait for each other; the retry goes on
                    await asyncio.wait_for(both_read.wait(), 5)
                event = ResourceUpserted(
                    resource_id="host",
                    name=name,
                    timezone="UTC",
                    weekly={},
                    overrides={},
                    metadata={},
                )
                return {stream: [event]}

            return decide

        meta = EventMeta(tenant=api.tenant["tenant_id"], actor="test")
        commands = app.state.commands
        await asyncio.gather(commands.run(meta, upsert("a")), commands.run(meta, upsert("b")))
        m = await scrape(api)
        assert (
            m[("slotlog_events_appended_total", ())] - before[("slotlog_events_appended_total", ())]
            == 2
        )
        assert m[("slotlog_version_conflicts_total", ())] >= 1
        assert m[("slotlog_command_retries_total", ())] >= 1

    async def test_decision_cache_lookups(self, api: Api) -> None:
        await resource(api, "desk")
        r = await api.put(
            "/v1/services/chat", {"name": "Chat", "duration_minutes": 30, "resources": ["desk"]}
        )
        assert r.status_code == 200, r.text
        before = await scrape(api)
        day = weekday_ahead(2)
        for hhmm in ("09:00", "10:00"):  # the second hold decides on what the first left
            held = await api.post("/v1/bookings", {"service": "chat", "start": iso(at(day, hhmm))})
            assert held.status_code == 201, held.text
        m = await scrape(api)
        hits = ("slotlog_decision_cache_lookups_total", (("result", "hit"),))
        misses = ("slotlog_decision_cache_lookups_total", (("result", "miss"),))
        assert m[hits] - before.get(hits, 0) >= 3  # the service, the resource, the day
        assert m[misses] >= 1

    async def test_lag_oldest_transaction_and_webhook_backlog(
        self, api: Api, app: Starlette, database_url: str
    ) -> None:
        await some_bookings(api, 2)
        r = await api.put(
            "/v1/webhooks/dead",
            {"url": "http://127.0.0.1:9/hook", "events": ["*"], "secret": "s3cret-s3cret"},
        )
        assert r.status_code == 200, r.text
        await some_bookings(api, 1, first_hour=14)
        await settled(app.state.pool)
        sender = WebhookSender(app.state.pool, Settings(timeout=0.5, backoff_base=60))
        try:
            await sender.step()  # dispatch the new events; the first attempt fails (port 9)
        finally:
            await sender.close()
        holder = await asyncpg.connect(database_url)
        try:
            async with holder.transaction():
                await holder.execute("SELECT pg_current_xact_id()")  # an open writing transaction
                await asyncio.sleep(0.3)
                m = await scrape(api)
        finally:
            await holder.close()
        assert m[("slotlog_oldest_transaction_age_seconds", ())] >= 0.3
        assert m[("slotlog_projection_lag_events", (("projection", "stats"),))] > 0
        assert m[("slotlog_projection_lag_seconds", (("projection", "stats"),))] >= 0
        assert m[("slotlog_projection_lag_events", (("projection", "webhooks"),))] == 0
        assert m[("slotlog_webhook_backlog", ())] > 0
        assert m[("slotlog_worker_leading", (("worker", "projector"),))] == 0
        text = (await api.client.get("/metrics")).text
        assert re.search(r"^slotlog_webhook_backlog \d", text, re.M)


async def test_the_app_tunes_the_cycle_collector_while_it_serves(database_url: str) -> None:
    before = gc.get_threshold()
    assert before != SERVING_COLLECTOR
    application = create_app(database_url, background=False)
    async with application.router.lifespan_context(application):
        assert gc.get_threshold() == SERVING_COLLECTOR
        assert gc.get_freeze_count() > 0  # what exists at start-up is out of the collector's way
    assert gc.get_threshold() == before
    assert gc.get_freeze_count() == 0

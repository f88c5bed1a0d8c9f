"""Errors, keys, tenancy, idempotency and If-Match over HTTP through the real app: every error
has the SPEC §3 shape, names the problem, and a failed command leaves nothing behind."""

from __future__ import annotations

import asyncio
import base64
import hashlib
from datetime import timedelta
from typing import Any

import httpx
import pytest

from service.api import bookings as bookings_api
from tests.conftest import Api
from tests.helpers import at, hold, iso, resource, service, weekday_ahead


def error(r: httpx.Response, status: int, code: str) -> dict[str, Any]:
    assert r.status_code == status, r.text
    body = r.json()
    assert set(body) == {"error"}
    assert body["error"]["code"] == code
    assert isinstance(body["error"]["message"], str) and body["error"]["message"]
    assert isinstance(body["error"]["details"], dict)
    assert "Traceback" not in r.text
    return dict(body["error"])


async def event_count(api: Api) -> int:
    return int(await api.pool.fetchval("SELECT count(*) FROM events"))


@pytest.fixture
async def booked(api: Api) -> dict[str, Any]:
    day = weekday_ahead(0)
    await resource(api, "host")
    await service(api, "s", ["host"])
    return await hold(api, "s", at(day, "09:00"), customer={"name": "A"})


class TestBadInput:
    async def test_malformed_json(self, api: Api) -> None:
        r = await api.client.post(
            "/v1/bookings",
            content=b'{"service": ',
            headers={**api.secret, "content-type": "application/json"},
        )
        error(r, 400, "malformed_json")

    async def test_unknown_field_is_named(self, api: Api, booked: dict[str, Any]) -> None:
        r = await api.post(
            "/v1/bookings", {"service": "s", "start": booked["start"], "colour": "red"}
        )
        e = error(r, 422, "validation_error")
        assert e["details"]["errors"][0]["path"] == "colour"

    async def test_wrong_type_is_named(self, api: Api) -> None:
        r = await api.put(
            "/v1/services/x", {"name": "X", "duration_minutes": "long", "resources": ["a"]}
        )
        e = error(r, 422, "validation_error")
        assert e["details"]["errors"][0]["path"] == "duration_minutes"

    async def test_missing_field_is_named(self, api: Api) -> None:
        e = error(
            await api.post("/v1/bookings", {"start": "2030-01-01T00:00:00Z"}),
            422,
            "validation_error",
        )
        assert e["details"]["errors"][0]["path"] == "service"

    async def test_bad_timezone(self, api: Api) -> None:
        e = error(
            await api.put("/v1/resources/r", {"name": "R", "timezone": "Mars/Olympus"}),
            422,
            "validation_error",
        )
        assert e["details"]["errors"][0]["path"] == "timezone"
        await resource(api, "r")
        await service(api, "s", ["r"])
        day = weekday_ahead(0).isoformat()
        r = await api.get(
            "/v1/availability",
            params={"service": "s", "from": day, "to": day, "timezone": "Nowhere/Land"},
        )
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "timezone"

    async def test_bad_working_hours_are_named(self, api: Api) -> None:
        r = await api.put(
            "/v1/resources/r",
            {"name": "R", "weekly": {"mon": [["17:00", "09:00"]], "funday": []}},
        )
        paths = [x["path"] for x in error(r, 422, "validation_error")["details"]["errors"]]
        assert any(p.startswith("weekly.mon") for p in paths)
        assert any("funday" in p for p in paths)

    async def test_end_before_start_and_range_over_62_days(self, api: Api) -> None:
        await resource(api, "r")
        await service(api, "s", ["r"])
        day = weekday_ahead(0)
        r = await api.get(
            "/v1/availability",
            params={"service": "s", "from": iso(at(day, "12:00")), "to": iso(at(day, "09:00"))},
        )
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "to"
        r = await api.get(
            "/v1/availability",
            params={"service": "s", "from": "2030-01-01", "to": "2030-03-15"},
        )
        assert "62 days" in error(r, 422, "validation_error")["message"]
        r = await api.get(
            "/v1/availability", params={"service": "s", "from": "soon", "to": "later"}
        )
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "from"
        r = await api.get("/v1/availability", params={"from": "2030-01-01", "to": "2030-01-02"})
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "service"

    async def test_searches_at_the_ends_of_the_calendar_are_refused_not_500(self, api: Api) -> None:
        # A day either side of year 1 or 9999 overflowed datetime inside the search (500).
        await resource(api, "r")
        await service(api, "s", ["r"])
        for start, end, path in (
            ("0001-01-01", "0001-01-02", "from"),
            ("9999-12-29", "9999-12-30", "from"),
            ("0001-01-01T00:00:00Z", "2030-01-02", "from"),
            ("2030-01-01", "9999-12-31T23:59:59+00:00", "to"),
            ("2030-01-01", "9999-12-31", "to"),
        ):
            for where, params in (
                ("/v1/availability", {"service": "s", "from": start, "to": end}),
                ("/v1/bookings", {"from": start, "to": end}),
            ):
                r = await api.get(where, params=params)
                e = error(r, 422, "validation_error")
                assert e["details"]["errors"][0]["path"] == path, (where, start, end, e)
                assert "between the years 1900 and 9000" in e["message"]

    async def test_metadata_nested_too_deep_is_refused_before_it_becomes_an_event(
        self, api: Api
    ) -> None:
        # Events of about 975 levels were stored, then every read of their stream ran out of
        # Python's recursion limit: 500s for good on that resource or booking, and a hold
        # expirer stuck on them. Deeper still, decoding the request itself did (500).
        def nested(depth: int) -> str:  # JSON text: encoders refuse such depths themselves
            return '{"a":' + "[" * (depth - 1) + '"x"' + "]" * (depth - 1) + "}"

        await resource(api, "r")
        await service(api, "s", ["r"])
        start = iso(at(weekday_ahead(1), "10:00"))
        hold_ = f'{{"service": "s", "start": "{start}", '
        headers = {**api.secret, "Content-Type": "application/json"}
        for depth in (32, 33, 100, 5000):
            meta = nested(depth)
            for method, url, body, path in (
                ("PUT", "/v1/resources/deep", f'{{"name": "D", "metadata": {meta}}}', "metadata"),
                ("POST", "/v1/bookings", hold_ + f'"metadata": {meta}}}', "metadata"),
                (
                    "POST",
                    "/v1/bookings",
                    hold_ + f'"customer": {{"name": "C", "metadata": {meta}}}}}',
                    "customer.metadata",
                ),
            ):
                r = await api.client.request(method, url, content=body, headers=headers)
                if depth == 32:
                    assert r.status_code in (200, 201), r.text
                    if method == "POST":  # free the slot for the next body
                        await api.post(f"/v1/bookings/{r.json()['id']}/cancel", {"by": "owner"})
                    continue
                e = error(r, 422, "validation_error")
                if depth <= 100:  # decoded: the check names the field
                    assert e["details"]["errors"][0]["path"] == path, e
                    assert "32 deep at most" in e["message"]
                else:
                    assert "nest too deep" in e["message"]

    async def test_odd_digits_ids_with_a_final_newline_and_huge_cursors_are_422_not_500(
        self, api: Api
    ) -> None:
        # str.isdigit() takes "²", which int() refuses (500); Python's `$` let "abc\n" through as
        # an id; cursors past bigint reached the database, whose words came back in the answer.
        await resource(api, "r")
        await service(api, "s", ["r"])
        b = await hold(api, "s", at(weekday_ahead(1), "10:00"))
        r = await api.post(
            f"/v1/bookings/{b['id']}/cancel", {"by": "owner"}, headers={"If-Match": b'"\xb2"'}
        )
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "If-Match"
        hook = {"url": "https://example.com/h", "events": ["*"], "secret": "s3cret-enough"}
        assert (await api.put("/v1/webhooks/w1", hook)).status_code in (200, 201)
        cursor = base64.urlsafe_b64encode("²".encode()).decode().rstrip("=")
        r = await api.get("/v1/webhooks/w1/deliveries", params={"cursor": cursor})
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "cursor"
        huge = base64.urlsafe_b64encode(str(2**64).encode()).decode().rstrip("=")
        r = await api.get("/v1/webhooks/w1/deliveries", params={"cursor": huge})
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "cursor"
        for after in (f"{2**64}-1", f"1-{2**63}"):
            r = await api.get("/v1/events", params={"after": after})
            assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "after"
        r = await api.put("/v1/resources/abc%0A", {"name": "A"})
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "id"
        r = await api.post(
            "/v1/bookings",
            {"service": "s", "start": iso(at(weekday_ahead(1), "11:00")), "resources": ["r\n"]},
        )
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"].startswith(
            "resources"
        )

    async def test_a_correlation_id_unlike_an_id_is_not_kept(self, api: Api) -> None:
        await resource(api, "r")
        await service(api, "s", ["r"])
        for given, kept in (("order-42", True), ("x" * 129, False), ("a\tb", False)):
            r = await api.post(
                "/v1/bookings",
                {"service": "s", "start": iso(at(weekday_ahead(1), "10:00"))},
                headers={"X-Correlation-Id": given},
            )
            assert r.status_code == 201, r.text
            meta = (await api.get(f"/v1/bookings/{r.json()['id']}/history")).json()["events"][0]
            events = await api.pool.fetch(
                "SELECT metadata->>'correlation_id' AS c, metadata->>'request_id' AS r "
                "FROM events WHERE stream_id LIKE '%' || $1",
                r.json()["id"],
            )
            assert events and all(
                (e["c"] == given) if kept else (e["c"] == e["r"]) for e in events
            ), (given, events, meta)
            await api.post(f"/v1/bookings/{r.json()['id']}/cancel", {"by": "owner"})

    async def test_availability_names_its_own_parameters_and_counts_local_days(
        self, api: Api
    ) -> None:
        await resource(api, "r", zone="Europe/Paris")
        await service(api, "s", ["r"])  # 60 minutes only
        day = weekday_ahead(1).isoformat()
        r = await api.get(
            "/v1/availability", params={"service": "s", "from": day, "to": day, "duration": 45}
        )
        e = error(r, 422, "validation_error")
        assert e["details"]["errors"][0]["path"] == "duration", e
        # 62 days of the Paris calendar across the autumn change of the clocks: 62 days and an
        # hour of real time, which was refused.
        paris = {"service": "s", "from": "2030-09-01", "to": "2030-11-01"}
        r = await api.get("/v1/availability", params={**paris, "timezone": "Europe/Paris"})
        assert r.status_code == 200, r.text
        r = await api.get("/v1/availability", params={**paris, "to": "2030-11-02"})
        assert "62 days" in error(r, 422, "validation_error")["message"]

    async def test_who_cancels_and_a_seat_bookings_seats_and_customer_are_required(
        self, api: Api
    ) -> None:
        # SPEC 3 marks neither optional. `by` fell back to the owner, who may cancel inside the
        # customer's cancel window; seats fell back to 1 and the customer to none.
        await resource(api, "r")
        await service(api, "s", ["r"])
        b = await hold(api, "s", at(weekday_ahead(1), "10:00"))
        for body in ({}, {"reason": "no"}):
            r = await api.post(f"/v1/bookings/{b['id']}/cancel", body)
            assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "by"
        assert (await api.get(f"/v1/bookings/{b['id']}")).json()["status"] == "held"
        start = at(weekday_ahead(3), "10:00")
        session = {"resource": "r", "start": iso(start), "end": iso(start + timedelta(hours=1))}
        made = await api.put("/v1/sessions/c", {**session, "title": "C", "max_seats": 5})
        assert made.status_code == 201, made.text
        seat_bodies: list[tuple[dict[str, Any], str]] = [
            ({"customer": {"name": "A"}}, "seats"),
            ({"seats": 1}, "customer"),
        ]
        for seat_body, path in seat_bodies:
            r = await api.post("/v1/sessions/c/bookings", seat_body)
            assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == path

    async def test_a_timestamp_without_offset_is_refused(self, api: Api) -> None:
        await resource(api, "r")
        await service(api, "s", ["r"])
        r = await api.post("/v1/bookings", {"service": "s", "start": "2030-01-07T09:00:00"})
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "start"

    async def test_body_over_64_kib(self, api: Api) -> None:
        r = await api.post("/v1/bookings", {"service": "s", "notes": "x" * 70_000})
        error(r, 413, "payload_too_large")

    async def test_wrong_content_type(self, api: Api) -> None:
        r = await api.client.post(
            "/v1/bookings",
            content=b"service=s",
            headers={**api.secret, "content-type": "text/plain"},
        )
        error(r, 415, "unsupported_media_type")

    async def test_invalid_client_id(self, api: Api) -> None:
        r = await api.put("/v1/resources/bad%20id!", {"name": "R"})
        error(r, 422, "validation_error")

    async def test_unknown_route_and_method(self, api: Api) -> None:
        error(await api.get("/v1/nothing-here"), 404, "not_found")
        r = await api.client.delete("/v1/bookings", headers=api.secret)
        error(r, 405, "method_not_allowed")
        assert set(r.headers["allow"].split(", ")) == {"GET", "HEAD", "POST"}
        # GET and PUT of a path are two routes: the answer names both.
        for path in ("/v1/resources/a", "/v1/sessions/x", "/v1/webhooks/w"):
            r = await api.client.patch(path, headers=api.secret)
            error(r, 405, "method_not_allowed")
            assert {"GET", "PUT"} <= set(r.headers["allow"].split(", ")), (path, r.headers)

    async def test_service_must_name_existing_resources(self, api: Api) -> None:
        r = await api.put(
            "/v1/services/s", {"name": "S", "duration_minutes": 30, "resources": ["ghost"]}
        )
        assert error(r, 422, "validation_error")["details"]["errors"][0]["path"] == "resources[0]"

    async def test_a_failed_command_leaves_no_trace(self, api: Api, booked: dict[str, Any]) -> None:
        before = await event_count(api)
        r = await api.post("/v1/bookings", {"service": "s", "start": booked["start"]})
        error(r, 409, "slot_unavailable")
        r = await api.post("/v1/bookings", {"service": "nope", "start": booked["start"]})
        error(r, 404, "not_found")
        assert await event_count(api) == before


class TestInternalErrors:
    """A failure of slotlog's own answers 500 `internal_error` with the request's id, the one
    the server's log names it by (service/app.py; tests/test_app_routing.py shows that the
    stack's 500s, for requests that no route serves directly, carry it too)."""

    async def test_an_unexpected_failure_answers_500_naming_the_request(
        self, api: Api, booked: dict[str, Any], monkeypatch: pytest.MonkeyPatch
    ) -> None:
        def fail(*args: Any) -> Any:
            raise RuntimeError("a bug")

        monkeypatch.setattr(bookings_api, "check_customer", fail)
        monkeypatch.setattr(bookings_api, "booking_view", fail)
        before = await event_count(api)
        given = {**api.secret, "x-request-id": "req-from-client"}
        held = await api.client.post(
            "/v1/bookings", json={"service": "s", "start": booked["start"]}, headers=given
        )
        read = await api.client.get(f"/v1/bookings/{booked['id']}", headers=api.secret)
        for r in (held, read):
            e = error(r, 500, "internal_error")
            assert "a bug" not in e["message"]
        assert held.headers["x-request-id"] == "req-from-client"
        assert len(read.headers["x-request-id"]) == 32
        assert await event_count(api) == before


class TestKeys:
    async def test_missing_or_unknown_key_is_unauthorized(self, api: Api) -> None:
        error(await api.client.get("/v1/bookings"), 401, "unauthorized")
        r = await api.client.get("/v1/bookings", headers={"Authorization": "Bearer sk_nope"})
        error(r, 401, "unauthorized")

    async def test_public_key_reads_availability_only(self, api: Api) -> None:
        await resource(api, "r")
        await service(api, "s", ["r"])
        day = weekday_ahead(0).isoformat()
        r = await api.client.get(
            "/v1/availability",
            params={"service": "s", "from": day, "to": day},
            headers=api.public,
        )
        assert r.status_code == 200 and r.json()["data"]
        for method, url in [
            ("GET", "/v1/bookings"),
            ("POST", "/v1/bookings"),
            ("GET", "/v1/resources"),
            ("PUT", "/v1/resources/r"),
            ("GET", "/v1/services/s"),
        ]:
            resp = await api.client.request(method, url, headers=api.public, json={})
            error(resp, 403, "forbidden")

    async def test_keys_are_stored_as_their_sha256_digests_only(self, api: Api) -> None:
        keys = {kind: api.tenant[f"{kind}_key"] for kind in ("secret", "public")}
        rows = await api.pool.fetch(
            "SELECT key_hash, kind FROM api_keys WHERE tenant_id = $1", api.tenant["tenant_id"]
        )
        assert {bytes(r["key_hash"]): r["kind"] for r in rows} == {
            hashlib.sha256(key.encode()).digest(): kind for kind, key in keys.items()
        }
        # The key itself is in no column, as text or as bytes.
        dump = await api.pool.fetchval("SELECT string_agg(k::text, ' ') FROM api_keys AS k")
        for key in keys.values():
            assert key not in dump and key.encode().hex() not in dump


class TestTenancy:
    async def test_another_tenants_ids_answer_404(self, api: Api, booked: dict[str, Any]) -> None:
        other = await api.new_tenant()
        error(await other.get("/v1/resources/host"), 404, "not_found")
        error(await other.get("/v1/services/s"), 404, "not_found")
        error(await other.get(f"/v1/bookings/{booked['id']}"), 404, "not_found")
        error(await other.get(f"/v1/bookings/{booked['id']}/history"), 404, "not_found")
        error(
            await other.post(f"/v1/bookings/{booked['id']}/cancel", {"by": "owner"}),
            404,
            "not_found",
        )
        assert (await other.get("/v1/bookings")).json()["data"] == []
        # Same client ids in another tenant are separate objects.
        await resource(other, "host")
        await service(other, "s", ["host"])
        mine = await hold(other, "s", at(weekday_ahead(0), "09:00"))
        assert mine["status"] == "held"


class TestIdempotency:
    async def test_a_retry_with_the_same_key_appends_once_and_replays_the_answer(
        self, api: Api
    ) -> None:
        await resource(api, "host")
        await service(api, "s", ["host"])
        body = {"service": "s", "start": iso(at(weekday_ahead(0), "09:00"))}
        headers = {"Idempotency-Key": "checkout-42"}
        before = await event_count(api)
        first = await api.post("/v1/bookings", body, headers=headers)
        assert first.status_code == 201
        again = await api.post("/v1/bookings", body, headers=headers)
        assert again.status_code == 201
        assert again.headers["idempotent-replayed"] == "true"
        assert again.json() == first.json()
        assert await event_count(api) == before + 2  # SlotHeld + TimeClaimed, once
        other = await api.post("/v1/bookings", {**body, "notes": "x"}, headers=headers)
        error(other, 422, "idempotency_key_reused")

    async def test_concurrent_duplicates_have_one_effect(self, api: Api) -> None:
        await resource(api, "host")
        await service(api, "s", ["host"])
        body = {"service": "s", "start": iso(at(weekday_ahead(0), "10:00"))}
        answers = await asyncio.gather(
            *(api.post("/v1/bookings", body, headers={"Idempotency-Key": "same"}) for _ in range(8))
        )
        assert {a.status_code for a in answers} == {201}
        assert len({a.json()["id"] for a in answers}) == 1
        assert await api.pool.fetchval("SELECT count(*) FROM events WHERE type = 'SlotHeld'") == 1

    async def test_the_key_length_is_bounded(self, api: Api) -> None:
        r = await api.post("/v1/bookings", {"service": "s"}, headers={"Idempotency-Key": "k" * 256})
        error(r, 422, "validation_error")


class TestIfMatch:
    async def test_a_stale_version_answers_412_and_changes_nothing(
        self, api: Api, booked: dict[str, Any]
    ) -> None:
        url = f"/v1/bookings/{booked['id']}"
        etag = (await api.get(url)).headers["etag"]
        ok = await api.post(f"{url}/extend", {"seconds": 60}, headers={"If-Match": etag})
        assert ok.status_code == 200 and ok.json()["version"] == 2
        before = await event_count(api)
        stale = await api.post(f"{url}/cancel", {"by": "owner"}, headers={"If-Match": etag})
        e = error(stale, 412, "version_mismatch")
        assert e["details"]["current_version"] == 2
        assert await event_count(api) == before
        assert (await api.get(url)).json()["status"] == "held"
        fresh = await api.post(f"{url}/cancel", {"by": "owner"}, headers={"If-Match": '"2"'})
        assert fresh.json()["status"] == "cancelled"

"""Scenarios 5 and 6: commands and reads on resources with a long history, one worker.

5. Hold latency on a resource with 100,000 earlier confirmed bookings vs an empty resource.
   The bookings are seeded in bulk (bench/seed.py) at 100 a day on days 60 days ahead and on;
   holds are measured on fresh days 2+ days ahead (whose neighbouring day streams are as empty as
   the empty resource's), sequentially (one connection; the bar: p50 ratio ≤ 1.3) and with 64
   connections. Also shown: holds on the free day right before the seeded ones, whose next day's
   ledger (100 claims) a hold reads (round robin looks a day either side).
6. GET /v1/availability for one week of a resource with 50,000 bookings: 10 a day in that week,
   100 a day on the days around it; p99 over sequential requests (bar ≤ 30 ms), beside the same
   week of an empty resource. Also shown, with no bar: the longest search there is, 62 days of a
   round-robin service over a pool of 20 resources open all day (each start offered once, on the
   resource round robin would give it).
"""

from __future__ import annotations

import math
from datetime import date

import msgspec

from bench import processes
from bench.baselines import CONNECTIONS, endpoint_baseline
from bench.catalogue import (
    CUSTOMER,
    SLOTS_PER_DAY,
    at,
    body,
    day,
    get_json,
    iso,
    put_all,
    settle,
)
from bench.catalogue import resource as resource_body
from bench.catalogue import service as service_body
from bench.context import PUBLIC, SECRET, Bench
from bench.load import HttpRequest, LoadResult
from bench.report import Row, Section
from bench.seed import Plan, seed
from bench.stats import Latency, latency, ratio

HISTORY_BAR = 1.3
AVAILABILITY_BAR_MS = 30.0
SEED_FROM = 120  # days ahead: the first seeded day of scenario 5
SPREAD_DAYS = 80  # concurrent holds go round this many days: no two in flight share a day
PER_DAY = 100
POOL = 20  # resources of scenario 6's round-robin service
POOL_DAYS = 62  # the longest range a search may span


def _holds(service: str, first_day: int, n: int, days: int = 0) -> list[HttpRequest]:
    """n holds on distinct quarter hours from midnight of day `first_day`: consecutive ones, or
    with `days` going round that many days (hold k on day k mod days), so that holds in flight
    together append to different day streams and never contend."""
    out = []
    for k in range(n):
        if days:
            d, slot = k % days, k // days
        else:
            d, slot = k // SLOTS_PER_DAY, k % SLOTS_PER_DAY
        start = at(day(first_day + d), 15 * slot)
        payload = {"service": service, "start": iso(start), "customer": CUSTOMER}
        out.append(HttpRequest("POST", "/v1/bookings", body(payload)))
    return out


def _spread(total: int, days: list[date], per_day: int) -> dict[date, int]:
    out: dict[date, int] = {}
    for d in days:
        if total <= 0:
            break
        out[d] = min(per_day, total)
        total -= out[d]
    return out


def _lat(results: list[LoadResult]) -> Latency:
    return latency([o.seconds for r in results for o in r.outcomes])


def _non_201(results: list[LoadResult]) -> int:
    return sum(len(r.outcomes) - r.count(201) for r in results)


async def history(bench: Bench) -> Section:
    n = bench.scale.history_bookings
    seq, conc = bench.scale.history_sequential, bench.scale.history_concurrent
    with processes.slotlog(bench.url, workers=1, secret=SECRET, public=PUBLIC) as server:
        await put_all(
            server.base_url,
            [
                ("/v1/resources/big", resource_body("Busy")),
                ("/v1/resources/empty", resource_body("Empty")),
            ],
            [
                ("/v1/services/big", service_body(["big"])),
                ("/v1/services/empty", service_body(["empty"])),
            ],
        )
        tenant = await bench.tenant()
        days = [day(SEED_FROM + i) for i in range(math.ceil(n / PER_DAY))]
        bench.log(f"5. seeding {n} confirmed bookings on one resource over {len(days)} days")
        events, seconds = await seed(
            bench.url, [Plan(tenant, "big", "big", _spread(n, days, PER_DAY))]
        )
        bench.log(f"   {events} events with read models in {seconds:.1f} s")
        settled = await settle(server.base_url)
        bench.log(f"   the server's consumers caught up with the log in {settled:.1f} s")

        # Sequential: alternate halves so that a noisy neighbour hurts both resources alike.
        seq_days = math.ceil(seq / SLOTS_PER_DAY)
        sequential: dict[str, list[LoadResult]] = {"big": [], "empty": []}
        half = max(1, seq // 2)
        for part in range(2):
            for name in ("big", "empty"):
                requests = _holds(name, 2 + part * seq_days, half)
                sequential[name].append(await bench.drive(server.base_url, requests, concurrency=1))
        first = 2 + 2 * seq_days
        concurrent: dict[str, LoadResult] = {}
        for name in ("big", "empty"):
            requests = _holds(name, first, conc + CONNECTIONS, SPREAD_DAYS)
            concurrent[name] = await bench.drive(
                server.base_url, requests, concurrency=CONNECTIONS, warmup=CONNECTIONS
            )
        # Next to the seeded days: the hold's look-around reads a day stream with 100 claims.
        near = min(seq, SLOTS_PER_DAY)
        adjacent = {
            name: await bench.drive(
                server.base_url, _holds(name, SEED_FROM - 1, near), concurrency=1
            )
            for name in ("big", "empty")
        }
    s_big, s_empty = _lat(sequential["big"]), _lat(sequential["empty"])
    c_big, c_empty = _lat([concurrent["big"]]), _lat([concurrent["empty"]])
    a_big, a_empty = _lat([adjacent["big"]]), _lat([adjacent["empty"]])
    rate = {k: v.count(201) / v.elapsed for k, v in concurrent.items()}
    p50_ratio = ratio(s_big.p50, s_empty.p50)
    failures = (
        _non_201(sequential["big"] + sequential["empty"])
        + _non_201(list(concurrent.values()))
        + _non_201(list(adjacent.values()))
    )
    label = "empty resource"
    return Section(
        name="history",
        title=f"5. hold, {n:,} bookings",
        rows=[
            Row(
                figure="sequential p50",
                value=s_big.p50,
                unit="ms",
                baseline=s_empty.p50,
                baseline_label=label,
                ratio=p50_ratio,
                bar="≤ 1.3x",
                passed=p50_ratio is not None and p50_ratio <= HISTORY_BAR,
            ),
            Row(
                figure="sequential p99",
                value=s_big.p99,
                unit="ms",
                baseline=s_empty.p99,
                baseline_label=label,
                ratio=ratio(s_big.p99, s_empty.p99),
            ),
            Row(
                figure=f"{CONNECTIONS} conns: p50",
                value=c_big.p50,
                unit="ms",
                baseline=c_empty.p50,
                baseline_label=label,
                ratio=ratio(c_big.p50, c_empty.p50),
            ),
            Row(
                figure=f"{CONNECTIONS} conns: holds/s",
                value=rate["big"],
                unit="/s",
                baseline=rate["empty"],
                baseline_label=label,
                ratio=ratio(rate["big"], rate["empty"]),
            ),
            Row(
                figure="next to a full day: p50",
                value=a_big.p50,
                unit="ms",
                baseline=a_empty.p50,
                baseline_label=label,
                ratio=ratio(a_big.p50, a_empty.p50),
            ),
            Row(figure="answers other than 201", value=failures, unit=""),
        ],
        notes=[
            f"5: seeded {events:,} events ({n:,} confirmed bookings, {PER_DAY}/day) with read "
            f"models in {seconds:.1f} s through store.append + write_streams; sequential holds "
            f"{seq} per resource (alternating halves), concurrent {conc} per resource"
        ],
        details={
            "sequential": {
                "big": msgspec.to_builtins(s_big),
                "empty": msgspec.to_builtins(s_empty),
            },
            "concurrent": {
                "big": msgspec.to_builtins(c_big),
                "empty": msgspec.to_builtins(c_empty),
            },
            "adjacent": {"big": msgspec.to_builtins(a_big), "empty": msgspec.to_builtins(a_empty)},
            "seed_events_per_second": events / seconds if seconds else None,
        },
    )


async def availability(bench: Bench) -> Section:
    base = await endpoint_baseline(bench)
    n = bench.scale.availability_bookings
    requests_n = bench.scale.availability_requests
    week0 = 30  # the queried week starts 30 days ahead
    week = [day(week0 + i) for i in range(7)]
    with processes.slotlog(bench.url, workers=1, secret=SECRET, public=PUBLIC) as server:
        await put_all(
            server.base_url,
            [
                ("/v1/resources/cal", resource_body("Calendar")),
                ("/v1/resources/calempty", resource_body("Empty calendar")),
                *[(f"/v1/resources/pool{k}", resource_body(f"Pool {k}")) for k in range(POOL)],
            ],
            [
                ("/v1/services/cal", service_body(["cal"], 60)),
                ("/v1/services/calempty", service_body(["calempty"], 60)),
                ("/v1/services/pool", service_body([f"pool{k}" for k in range(POOL)], 60)),
            ],
        )
        tenant = await bench.tenant()
        in_week = {d: 10 for d in week}
        rest = n - sum(in_week.values())
        before = [day(week0 - 1 - i) for i in range(week0 - 2)]  # up to 2 days ahead
        after = [day(week0 + 7 + i) for i in range(math.ceil(rest / 100) + 1)]
        around: list[date] = []
        for i in range(max(len(before), len(after))):  # nearest days first, both sides
            around += [lst[i] for lst in (before, after) if i < len(lst)]
        bench.log(f"6. seeding {n} bookings on one resource, 10 a day in the queried week")
        events, seconds = await seed(
            bench.url,
            [
                Plan(tenant, "cal", "cal", in_week, minutes=30),
                Plan(tenant, "cal", "cal", _spread(rest, around, 100), minutes=10),
            ],
        )
        bench.log(f"   {events} events with read models in {seconds:.1f} s")
        settled = await settle(server.base_url)
        bench.log(f"   the server's consumers caught up with the log in {settled:.1f} s")

        def query(service: str, last: date = week[-1]) -> HttpRequest:
            q = f"service={service}&from={week[0].isoformat()}&to={last.isoformat()}"
            return HttpRequest("GET", f"/v1/availability?{q}")

        answer = await get_json(
            server.base_url,
            "/v1/availability",
            {"service": "cal", "from": week[0].isoformat(), "to": week[-1].isoformat()},
        )
        warm = max(10, requests_n // 10)
        results = {
            name: await bench.drive(
                server.base_url, [query(name)] * (warm + requests_n), concurrency=1, warmup=warm
            )
            for name in ("cal", "calempty")
        }
        pool_n = max(10, requests_n // 10)
        results["pool"] = await bench.drive(
            server.base_url,
            [query("pool", day(week0 + POOL_DAYS - 1))] * (2 + pool_n),
            concurrency=1,
            warmup=2,
        )
    full, empty = _lat([results["cal"]]), _lat([results["calempty"]])
    pool = _lat([results["pool"]])
    not_ok = sum(len(r.outcomes) - r.count(200) for r in results.values())
    return Section(
        name="availability",
        title=f"6. availability, {n:,} bookings",
        rows=[
            Row(
                figure="one week, sequential p99",
                value=full.p99,
                unit="ms",
                baseline=empty.p99,
                baseline_label="empty resource",
                ratio=ratio(full.p99, empty.p99),
                bar="≤ 30 ms",
                passed=full.p99 <= AVAILABILITY_BAR_MS,
            ),
            Row(
                figure="one week, sequential p50",
                value=full.p50,
                unit="ms",
                baseline=base.sequential.p50,
                baseline_label="b, 1 conn",
                ratio=ratio(full.p50, base.sequential.p50),
            ),
            Row(
                figure=f"{POOL_DAYS} days, {POOL}-resource pool, p99",
                value=pool.p99,
                unit="ms",
                baseline=empty.p99,
                baseline_label="a week, empty resource",
                ratio=ratio(pool.p99, empty.p99),
            ),
            Row(figure="answers other than 200", value=not_ok, unit=""),
        ],
        notes=[
            f"6: {requests_n} sequential requests per resource after {warm} warm-up; the week "
            f"answers {len(answer['data'])} free 60-min slots (15-min grid); seeded {events:,} "
            f"events in {seconds:.1f} s",
            f"6: the pool: {pool_n} sequential requests after 2 warm-up, {POOL_DAYS} days of a "
            f"round-robin service over {POOL} empty resources open all day (15-min grid)",
        ],
        details={
            "week": msgspec.to_builtins(full),
            "empty": msgspec.to_builtins(empty),
            "pool": msgspec.to_builtins(pool),
            "slots": len(answer["data"]),
        },
    )

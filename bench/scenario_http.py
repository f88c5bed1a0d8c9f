"""Scenarios 2-4, over HTTP through real `slotlog serve` processes:

2. holds on distinct slots, 64 connections, ONE worker, against baseline (b): 200 resources open
   all day, a 15-minute service on each, request k holds resource k mod 200 at its next free
   quarter hour, so no two holds share a stream. Bar: ≥ 50 % of (b)'s req/s; p50 and p99.
3. 200 concurrent holds of ONE slot, 2 workers: exactly one 201, 199 x 409, no 5xx; p99 < 500 ms.
4. 500 concurrent one-seat bookings (confirm: true) on a 100-seat session, 2 workers: exactly
   100 successes, no 5xx; successful seat bookings per second and p99.

A burst opens all its connections before the clock starts, then sends every request at once.
"""

from __future__ import annotations

from collections import Counter
from datetime import timedelta

import msgspec

from bench import processes
from bench.baselines import CONNECTIONS, endpoint_baseline, endpoint_run, wal_per
from bench.catalogue import (
    CUSTOMER,
    SLOTS_PER_DAY,
    at,
    body,
    day,
    iso,
    put_all,
    resource,
    service,
    settle,
)
from bench.context import PUBLIC, SECRET, Bench
from bench.load import HttpRequest, LoadResult
from bench.processes import CpuMeter
from bench.report import Row, Section
from bench.stats import latency, ratio

RESOURCES = 200
HOLD_BAR = 0.50
PAIRS = 3
ONE_SLOT = 200
SEATS, SEAT_REQUESTS = 100, 500
P99_BAR_MS = 500.0


def statuses(r: LoadResult) -> dict[str, int]:
    """Answer counts by status and error code, e.g. {"201": 1, "409 slot_unavailable": 199}."""
    return dict(Counter(f"{o.status} {o.code}" if o.code else str(o.status) for o in r.outcomes))


def hold_requests(first_day: int, n: int, prefix: str) -> list[HttpRequest]:
    """n holds on distinct slots: request k takes resource k mod RESOURCES, quarter hour
    k // RESOURCES counted from midnight of day `first_day`."""
    out = []
    for k in range(n):
        slot = k // RESOURCES
        start = at(day(first_day + slot // SLOTS_PER_DAY), 15 * (slot % SLOTS_PER_DAY))
        payload = {
            "service": f"{prefix}s{k % RESOURCES}",
            "start": iso(start),
            "customer": CUSTOMER,
        }
        out.append(HttpRequest("POST", "/v1/bookings", body(payload)))
    return out


async def holds(bench: Bench) -> Section:
    base = await endpoint_baseline(bench)
    n = bench.scale.holds // PAIRS
    warmup = max(100, n // 10)
    requests = hold_requests(2, PAIRS * (warmup + n), "h")
    bench.log(
        f"2. holds on distinct slots: {PAIRS} x {n} holds, 1 worker, {CONNECTIONS} connections, "
        "each run right after a bare-endpoint run"
    )
    pairs: list[tuple[LoadResult, CpuMeter, LoadResult, CpuMeter]] = []
    wal: dict[int, tuple[str, str]] = {}  # id(holds run) -> WAL per hold, per bare request
    settled = 0.0
    for i in range(PAIRS):
        bare, bare_cpu, bare_wal = await endpoint_run(bench, n)
        with processes.slotlog(bench.url, workers=1, secret=SECRET, public=PUBLIC) as server:
            if i == 0:
                await put_all(
                    server.base_url,
                    [(f"/v1/resources/hr{k}", resource(f"Room {k}")) for k in range(RESOURCES)],
                    [(f"/v1/services/hs{k}", service([f"hr{k}"])) for k in range(RESOURCES)],
                )
            settled += await settle(server.base_url)
            cpu = bench.cpu_meter(server.pid)
            wal0 = await bench.wal()
            r = await bench.drive(
                server.base_url,
                requests[i * (warmup + n) : (i + 1) * (warmup + n)],
                concurrency=CONNECTIONS,
                warmup=warmup,
                cpu=cpu,
            )
            wal[id(r)] = (wal_per(wal0, await bench.wal(), warmup + n), bare_wal)
        pairs.append((r, cpu, bare, bare_cpu))

    def rate(x: LoadResult) -> float:
        return x.count(201) / x.elapsed

    pairs.sort(key=lambda p: rate(p[0]) / rate(p[2]))
    r, cpu, bare, bare_cpu = pairs[len(pairs) // 2]
    lat = latency([o.seconds for p in pairs for o in p[0].outcomes])
    bare_lat = latency([o.seconds for p in pairs for o in p[2].outcomes])
    rr = ratio(rate(r), rate(bare))
    won = sum(p[0].count(201) for p in pairs)
    answers = sum(len(p[0].outcomes) for p in pairs)
    per = ", ".join(f"{k} {v:.3f} ms" for k, v in cpu.per(len(r.outcomes)).items())
    bare_per = ", ".join(f"{k} {v:.3f} ms" for k, v in bare_cpu.per(len(bare.outcomes)).items())
    return Section(
        name="holds",
        title="2. holds, distinct slots",
        rows=[
            Row(
                figure=f"holds/s, 1 worker, {CONNECTIONS} conns",
                value=rate(r),
                unit="/s",
                baseline=rate(bare),
                baseline_label="b, paired",
                ratio=rr,
                bar="≥ 0.50x (b)",
                passed=rr is not None and rr >= HOLD_BAR,
            ),
            Row(
                figure="  vs (b) measured first",
                value=rate(r),
                unit="/s",
                baseline=base.throughput,
                baseline_label="b",
                ratio=ratio(rate(r), base.throughput),
            ),
            Row(
                figure="p50",
                value=lat.p50,
                unit="ms",
                baseline=bare_lat.p50,
                baseline_label="b, paired",
                ratio=ratio(lat.p50, bare_lat.p50),
            ),
            Row(
                figure="p99",
                value=lat.p99,
                unit="ms",
                baseline=bare_lat.p99,
                baseline_label="b, paired",
                ratio=ratio(lat.p99, bare_lat.p99),
            ),
            Row(figure="answers other than 201", value=answers - won, unit=""),
        ],
        notes=[
            f"2: {PAIRS} pairs of a bare-endpoint run and a holds run, back to back, the median "
            "pair shown (p50/p99 over all runs); pairs (holds/s, req/s): "
            + ", ".join(f"({rate(p[0]):,.0f}, {rate(p[2]):,.0f})" for p in pairs),
            f"2: CPU while measured (median pair), in cores: {cpu.describe()}, load generator "
            f"{r.cpu_seconds / r.elapsed:.2f}; CPU per hold: {per} (bare endpoint per request: "
            f"{bare_per}); answers {statuses(r)}; waited {settled:.1f} s for the server's "
            "consumers to catch up with the log before measuring",
            f"2: WAL per hold (median pair, with the server's background work): "
            f"{wal[id(r)][0]}; per bare-endpoint request: {wal[id(r)][1]}",
        ],
        details={
            "statuses": statuses(r),
            "latency": msgspec.to_builtins(lat),
            "cpu": cpu.shares(),
            "cpu_ms_per_hold": cpu.per(len(r.outcomes)),
            "pairs": [[rate(p[0]), rate(p[2])] for p in pairs],
        },
    )


async def one_slot(bench: Bench) -> Section:
    rounds = bench.scale.one_slot_rounds
    bench.log(f"3. {ONE_SLOT} concurrent holds of one slot, 2 workers, {rounds} round(s)")
    results: list[LoadResult] = []
    with processes.slotlog(bench.url, workers=2, secret=SECRET, public=PUBLIC) as server:
        await put_all(
            server.base_url,
            [("/v1/resources/one", resource("One"))],
            [("/v1/services/one", service(["one"], 60))],
        )
        await settle(server.base_url)
        for n in range(rounds):
            start = iso(at(day(3 + n), 10 * 60))
            payload = body({"service": "one", "start": start, "customer": CUSTOMER})
            requests = [HttpRequest("POST", "/v1/bookings", payload)] * ONE_SLOT
            results.append(await bench.drive(server.base_url, requests, concurrency=ONE_SLOT))
    per_round = [statuses(r) for r in results]
    wins = [r.count(201) for r in results]
    conflicts = [r.count(409) for r in results]
    errors = [r.count_range(500, 600) + r.count(0) for r in results]
    p99 = max(latency([o.seconds for o in r.outcomes]).p99 for r in results)
    return Section(
        name="one-slot",
        title=f"3. {ONE_SLOT} holds, one slot",
        rows=[
            Row(
                figure="201 answers per round",
                value=max(wins),
                unit="",
                bar="exactly 1",
                passed=all(w == 1 for w in wins),
            ),
            Row(
                figure="409 answers per round",
                value=min(conflicts),
                unit="",
                bar=f"exactly {ONE_SLOT - 1}",
                passed=all(c == ONE_SLOT - 1 for c in conflicts),
            ),
            Row(
                figure="5xx / no answer",
                value=sum(errors),
                unit="",
                bar="0",
                passed=sum(errors) == 0,
            ),
            Row(
                figure="p99 (worst round)",
                value=p99,
                unit="ms",
                bar="< 500 ms",
                passed=p99 < P99_BAR_MS,
            ),
        ],
        notes=[f"3: 2 workers, {rounds} round(s) on different slots; answers {per_round}"],
        details={"rounds": per_round, "p99_ms": p99},
    )


async def seats(bench: Bench) -> Section:
    rounds = bench.scale.seat_rounds
    bench.log(f"4. {SEAT_REQUESTS} concurrent seat bookings on {SEATS} seats, 2 workers")
    results: list[LoadResult] = []
    with processes.slotlog(bench.url, workers=2, secret=SECRET, public=PUBLIC) as server:
        for n in range(rounds):
            start = at(day(14), (8 + n) * 60)
            await put_all(
                server.base_url,
                [(f"/v1/resources/studio{n}", resource(f"Studio {n}"))],
                [
                    (
                        f"/v1/sessions/class{n}",
                        {
                            "resource": f"studio{n}",
                            "start": iso(start),
                            "end": iso(start + timedelta(hours=1)),
                            "title": "Spin class",
                            "max_seats": SEATS,
                        },
                    ),
                ],
            )
            await settle(server.base_url)
            payload = body({"seats": 1, "customer": {"name": "x"}, "confirm": True})
            requests = [HttpRequest("POST", f"/v1/sessions/class{n}/bookings", payload)]
            results.append(
                await bench.drive(
                    server.base_url, requests * SEAT_REQUESTS, concurrency=SEAT_REQUESTS
                )
            )
    wins = [r.count(201) for r in results]
    errors = [r.count_range(500, 600) + r.count(0) for r in results]
    # Every request starts at the clock's start, so a latency is also its answer's time: the
    # seats are sold by the time the slowest successful booking is answered.
    sold_in = [
        max(o.seconds for o in r.outcomes if o.status == 201) for r in results if r.count(201)
    ]
    rates = sorted(SEATS / s for s in sold_in)
    rate = rates[len(rates) // 2] if rates else None
    p99 = max(latency([o.seconds for o in r.outcomes]).p99 for r in results)
    answers = sorted(len(r.outcomes) / r.elapsed for r in results)
    return Section(
        name="seats",
        title=f"4. {SEAT_REQUESTS} seat bookings",
        rows=[
            Row(
                figure="successes per round",
                value=max(wins),
                unit="",
                bar=f"exactly {SEATS}",
                passed=all(w == SEATS for w in wins),
            ),
            Row(
                figure="5xx / no answer",
                value=sum(errors),
                unit="",
                bar="0",
                passed=not any(errors),
            ),
            Row(figure="seat bookings/s (median round)", value=rate, unit="/s", bar="aim 1,000/s"),
            Row(figure="answers/s (median round)", value=answers[len(answers) // 2], unit="/s"),
            Row(figure="p99 (worst round)", value=p99, unit="ms"),
        ],
        notes=[
            f"4: 2 workers, {rounds} round(s), one session each; seat bookings/s = {SEATS} / time "
            "until the last successful booking was answered; answers "
            f"{[statuses(r) for r in results]}"
        ],
        details={"rounds": [statuses(r) for r in results], "seat_rates": rates},
    )

"""Does a hanging webhook receiver slow commands down? `python -m bench.webhook_isolation`.

One real `slotlog serve` process (it also runs the webhook sender, so a slow receiver would show
up in the same process's event loop and pool). Hold latency is measured in rounds that alternate
between no subscription and several subscriptions (every event type) to a receiver that accepts
connections and never answers, so every delivery attempt waits for the full timeout. Rounds
alternate to spread the machine's noise over both conditions. Prints p50/p95/p99 per condition,
the hanging deliveries' state, and the ratio. Uses DATABASE_URL's server or an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from typing import Any

import httpx

from bench.environment import fresh_database, server
from bench.processes import slotlog

SECRET = "sk_bench_webhook_isolation"
PUBLIC = "pk_bench_webhook_isolation"
AUTH = {"Authorization": f"Bearer {SECRET}"}
ALL_DAY = {d: [["00:00", "24:00"]] for d in ("mon", "tue", "wed", "thu", "fri", "sat", "sun")}


@contextmanager
def hanging_receiver() -> Iterator[str]:
    """A TCP listener that never accepts: the request is sent, no answer ever comes."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    sock.listen(1024)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}/hook"
    finally:
        sock.close()


def percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(p / 100 * (len(ordered) - 1)))]


async def holds(client: httpx.AsyncClient, day: date, first: int, n: int) -> list[float]:
    """`n` holds on distinct slots, one after another; returns latencies in ms."""
    out = []
    for i in range(first, first + n):
        start = datetime.combine(day, datetime.min.time(), UTC) + timedelta(minutes=15 * i)
        resource = f"r{i % 8}"
        t0 = time.perf_counter()
        r = await client.post(
            "/v1/bookings",
            json={"service": "any", "start": start.isoformat(), "resources": [resource]},
        )
        out.append((time.perf_counter() - t0) * 1e3)
        if r.status_code != 201:
            raise RuntimeError(f"hold failed: {r.status_code} {r.text}")
    return out


async def run(rounds: int, per_round: int, subscriptions: int) -> None:
    async with server() as (admin_url, source), fresh_database(admin_url) as (url, _):
        env_note = "SLOTLOG_WEBHOOK_TIMEOUT default (5 s)"
        with (
            slotlog(url, workers=1, secret=SECRET, public=PUBLIC) as srv,
            hanging_receiver() as hook,
        ):
            async with httpx.AsyncClient(base_url=srv.base_url, headers=AUTH, timeout=30) as c:
                for i in range(8):
                    r = await c.put(
                        f"/v1/resources/r{i}", json={"name": f"r{i}", "weekly": ALL_DAY}
                    )
                    r.raise_for_status()
                body: dict[str, Any] = {
                    "name": "Any",
                    "duration_minutes": 15,
                    "resources": [f"r{i}" for i in range(8)],
                }
                (await c.put("/v1/services/any", json=body)).raise_for_status()
                day = datetime.now(UTC).date() + timedelta(days=30)
                await holds(c, day - timedelta(days=1), 0, 50)  # warm-up
                quiet: list[float] = []
                hanging: list[float] = []
                n = 0
                for _ in range(rounds):
                    for w in range(subscriptions):
                        await c.delete(f"/v1/webhooks/hang{w}")
                    quiet += await holds(c, day, n, per_round)
                    n += per_round
                    for w in range(subscriptions):
                        sub = {"url": hook, "events": ["*"], "secret": "whsec_bench_secret"}
                        (await c.put(f"/v1/webhooks/hang{w}", json=sub)).raise_for_status()
                    hanging += await holds(c, day, n, per_round)
                    n += per_round
                await asyncio.sleep(6)  # let the head-of-line attempt reach its timeout
                deliveries = (await c.get("/v1/webhooks/hang0/deliveries?limit=200")).json()
                ready = (await c.get("/readyz")).json()
        data = deliveries["data"]
        attempted = [d for d in data if d["attempt_count"]]
        print(f"webhook isolation ({source}; {env_note}; {subscriptions} hanging subscriptions)")
        print(f"{'condition':<28}{'holds':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
        for name, values in (("no webhook", quiet), ("hanging receivers", hanging)):
            print(
                f"{name:<28}{len(values):>7}{percentile(values, 50):>10.2f}"
                f"{percentile(values, 95):>10.2f}{percentile(values, 99):>10.2f}"
            )
        ratio = statistics.median(hanging) / statistics.median(quiet)
        print(f"p50 ratio hanging / none: {ratio:.2f}")
        print(
            f"hang0 deliveries listed: {len(data)}, all pending: "
            f"{all(d['status'] == 'pending' for d in data)}, attempted: {len(attempted)} "
            f"(errors: {sorted({a['error'] for d in attempted for a in d['attempts']})}); "
            f"webhooks lag {ready['projections']['webhooks']}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=4)
    parser.add_argument("--per-round", type=int, default=100)
    parser.add_argument("--subscriptions", type=int, default=3)
    args = parser.parse_args()
    asyncio.run(run(args.rounds, args.per_round, args.subscriptions))


if __name__ == "__main__":
    main()

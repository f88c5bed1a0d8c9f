"""Does a hanging webhook receiver slow commands down? `python -m bench.webhook_isolation`.

One real `slotlog serve` process (it also runs the webhook sender, so a slow receiver would show
up in the same process's event loop and pool). Hold latency is measured in rounds that alternate
the same subscriptions (every event type, so the same dispatch work) between a healthy receiver
and one that accepts connections and never answers, so every delivery attempt waits for the full
timeout; a first round with no subscription shows the cost of dispatching itself. Rounds
alternate to spread the machine's noise over both conditions. Prints p50/p95/p99 per condition,
the ratio, and what stays pending. Uses DATABASE_URL's server or an embedded one.
"""

from __future__ import annotations

import argparse
import asyncio
import socket
import statistics
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, date, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
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


@contextmanager
def healthy_receiver() -> Iterator[str]:
    """Answers every POST with 204 at once."""

    class Handler(BaseHTTPRequestHandler):
        def do_POST(self) -> None:
            self.rfile.read(int(self.headers.get("content-length", "0")))
            self.send_response(204)
            self.end_headers()

        def log_message(self, format: str, *args: Any) -> None:
            return None

    httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.daemon_threads = True
    threading.Thread(target=httpd.serve_forever, daemon=True).start()
    try:
        yield f"http://127.0.0.1:{httpd.server_address[1]}/hook"
    finally:
        httpd.shutdown()
        httpd.server_close()


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


async def backlog(client: httpx.AsyncClient) -> float:
    text = (await client.get("/metrics")).text
    line = next(x for x in text.splitlines() if x.startswith("slotlog_webhook_backlog "))
    return float(line.split()[1])


async def point_to(client: httpx.AsyncClient, url: str, subscriptions: int) -> None:
    for w in range(subscriptions):
        sub = {"url": url, "events": ["*"], "secret": "whsec_bench_secret"}
        (await client.put(f"/v1/webhooks/hook{w}", json=sub)).raise_for_status()


def row(name: str, values: list[float]) -> str:
    return (
        f"{name:<28}{len(values):>7}{percentile(values, 50):>10.2f}"
        f"{percentile(values, 95):>10.2f}{percentile(values, 99):>10.2f}"
    )


async def run(rounds: int, per_round: int, subscriptions: int) -> None:
    async with server() as (admin_url, source), fresh_database(admin_url) as (url, _):
        with (
            slotlog(url, workers=1, secret=SECRET, public=PUBLIC) as srv,
            hanging_receiver() as hang,
            healthy_receiver() as ok,
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
                n = 0
                none = await holds(c, day, n, per_round)
                n += per_round
                healthy: list[float] = []
                hanging: list[float] = []
                for _ in range(rounds):
                    # The same subscriptions, dispatching the same events, pointed at a healthy
                    # receiver (its backlog drained first) and then at one that never answers.
                    await point_to(c, ok, subscriptions)
                    while True:
                        if not await backlog(c):
                            break
                        await asyncio.sleep(0.05)
                    healthy += await holds(c, day, n, per_round)
                    n += per_round
                    await point_to(c, hang, subscriptions)
                    hanging += await holds(c, day, n, per_round)
                    n += per_round
                await asyncio.sleep(6)  # let the head-of-line attempts reach their timeout
                deliveries = (await c.get("/v1/webhooks/hook0/deliveries?status=pending")).json()
                pending = await backlog(c)
        attempted = [d for d in deliveries["data"] if d["attempt_count"]]
        print(f"webhook isolation ({source}; attempt timeout 5 s; {subscriptions} subscriptions)")
        print(f"{'condition':<28}{'holds':>7}{'p50 ms':>10}{'p95 ms':>10}{'p99 ms':>10}")
        print(row("no subscription", none))
        print(row("healthy receivers", healthy))
        print(row("hanging receivers", hanging))
        ratio = statistics.median(hanging) / statistics.median(healthy)
        print(f"p50 ratio hanging / healthy: {ratio:.2f}")
        errors = sorted({a["error"] for d in attempted for a in d["attempts"]})
        print(
            f"left pending behind the hanging receiver: {pending:.0f} deliveries; errors: {errors}"
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

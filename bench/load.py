"""The load generator: a separate process (`python -m bench.load PLAN RESULT`) that sends a list of
HTTP requests over `concurrency` keep-alive connections and records each answer's status, error
code and latency. `drive(plan)` runs it from the orchestrator.

It runs apart from the servers it measures so that its own CPU time shows up as what it is: on a
2-core machine the generator, the servers and PostgreSQL share the cores. Two clients:

- `raw` (the default): a minimal HTTP/1.1 client on asyncio streams (uvloop): one connection per
  worker, requests pre-encoded, `Content-Length` or chunked bodies. On this project's 2-core
  machine it sends 9-24k req/s to a bare `/healthz` with 64 connections using under half a core.
- `httpx`: httpx.AsyncClient with a connection limit equal to the concurrency. Measured on the
  same endpoint it managed 100-600 req/s (fewer with more connections, its CPU mostly idle; see
  encode/httpx#3215), far below the servers under test, so it cannot be the default. Every run
  prints both clients' ceilings.

The result also carries the generator's own CPU seconds, so a saturated generator is visible.
Imports nothing from slotlog.
"""

from __future__ import annotations

import asyncio
import contextlib
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable
from pathlib import Path
from typing import Literal
from urllib.parse import urlsplit

import msgspec

from bench.processes import ROOT, child_env

Client = Literal["raw", "httpx"]
MAX_ERRORS_KEPT = 10


class HttpRequest(msgspec.Struct, frozen=True, array_like=True):
    method: str
    path: str
    body: str | None = None


class Plan(msgspec.Struct, kw_only=True):
    base_url: str
    requests: list[HttpRequest]
    concurrency: int
    headers: dict[str, str] = {}
    # The first `warmup` requests run (at the same concurrency) before the clock starts.
    warmup: int = 0
    client: Client = "raw"
    timeout: float = 120.0


class Outcome(msgspec.Struct, frozen=True, array_like=True):
    status: int  # 0: no HTTP answer (connection error, timeout)
    code: str | None  # error.code of a JSON error answer
    seconds: float


class LoadResult(msgspec.Struct, kw_only=True):
    client: str
    concurrency: int
    elapsed: float  # from the clock start to the last answer
    outcomes: list[Outcome]  # measured requests only, in request order
    cpu_seconds: float  # this generator's CPU time while measuring
    errors: list[str] = []

    @property
    def throughput(self) -> float:
        return len(self.outcomes) / self.elapsed if self.elapsed > 0 else 0.0

    def count(self, status: int) -> int:
        return sum(1 for o in self.outcomes if o.status == status)

    def count_range(self, lo: int, hi: int) -> int:
        return sum(1 for o in self.outcomes if lo <= o.status < hi)


class _ErrorBody(msgspec.Struct):
    error: _ErrorDetail


class _ErrorDetail(msgspec.Struct):
    code: str


_ERROR = msgspec.json.Decoder(_ErrorBody)


def error_code(status: int, body: bytes) -> str | None:
    if status < 400 or not body:
        return None
    try:
        return _ERROR.decode(body).error.code
    except msgspec.DecodeError:
        return None


# ── raw HTTP/1.1 ─────────────────────────────────────────────────────────────


class RawConnection:
    """One keep-alive HTTP/1.1 connection; reopened after the server closes it."""

    def __init__(self, host: str, port: int) -> None:
        self.host, self.port = host, port
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None

    async def open(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(self.host, self.port)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None

    async def send(self, raw: bytes) -> tuple[int, bytes]:
        if self.writer is None:
            await self.open()
        assert self.reader is not None and self.writer is not None
        reader = self.reader
        self.writer.write(raw)
        head = await reader.readuntil(b"\r\n\r\n")
        status = int(head[9:12])
        lower = head.lower()
        at = lower.find(b"\r\ncontent-length:")
        if at >= 0:
            end = lower.index(b"\r\n", at + 2)
            body = await reader.readexactly(int(lower[at + 17 : end]))
        elif b"\r\ntransfer-encoding: chunked" in lower:
            chunks = []
            while True:
                size = int((await reader.readuntil(b"\r\n"))[:-2].split(b";")[0], 16)
                chunks.append(await reader.readexactly(size + 2))
                if size == 0:
                    break
            body = b"".join(c[:-2] for c in chunks)
        else:
            body = b""
        if b"\r\nconnection: close" in lower:
            self.close()
        return status, body


def encode_request(req: HttpRequest, host: str, headers: dict[str, str]) -> bytes:
    lines = [f"{req.method} {req.path} HTTP/1.1", f"Host: {host}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    body = req.body.encode() if req.body is not None else b""
    if req.body is not None:
        lines.append("Content-Type: application/json")
    lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode() + body


Send = Callable[[int], Awaitable[tuple[int, bytes]]]


async def _phase(
    senders: list[Send], indices: range, per_request: float
) -> tuple[list[Outcome], list[str], float, float]:
    """Send requests `indices`, each worker (one per sender) taking the next one when free.
    Returns (outcomes in request order, first errors, elapsed seconds, CPU seconds)."""
    outcomes: list[Outcome | None] = [None] * len(indices)
    errors: list[str] = []
    queue = iter(range(len(indices)))

    async def worker(send: Send) -> None:
        for k in queue:
            t0 = time.perf_counter()
            try:
                status, body = await asyncio.wait_for(send(indices[k]), per_request)
            except Exception as exc:  # any failure to get an answer is an outcome, not a crash
                outcomes[k] = Outcome(0, type(exc).__name__, time.perf_counter() - t0)
                if len(errors) < MAX_ERRORS_KEPT:
                    errors.append(f"{type(exc).__name__}: {exc}")
                continue
            outcomes[k] = Outcome(status, error_code(status, body), time.perf_counter() - t0)

    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.gather(*(worker(s) for s in senders))
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    return [o for o in outcomes if o is not None], errors, elapsed, cpu


async def _measure(plan: Plan, senders: list[Send], client: str) -> LoadResult:
    if plan.warmup:
        await _phase(senders, range(plan.warmup), plan.timeout)
    outcomes, errors, elapsed, cpu = await _phase(
        senders, range(plan.warmup, len(plan.requests)), plan.timeout
    )
    return LoadResult(
        client=client,
        concurrency=plan.concurrency,
        elapsed=elapsed,
        outcomes=outcomes,
        cpu_seconds=cpu,
        errors=errors,
    )


def _raw_sender(conn: RawConnection, encoded: list[bytes]) -> Send:
    async def send(i: int) -> tuple[int, bytes]:
        try:
            return await conn.send(encoded[i])
        except BaseException:
            conn.close()
            raise

    return send


async def _raw(plan: Plan) -> LoadResult:
    parts = urlsplit(plan.base_url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    encoded = [encode_request(r, parts.netloc, plan.headers) for r in plan.requests]
    # Every connection is open before the clock starts (a burst then starts at once).
    conns = [RawConnection(host, port) for _ in range(min(plan.concurrency, len(encoded)))]
    try:
        await asyncio.gather(*(c.open() for c in conns))
        return await _measure(plan, [_raw_sender(c, encoded) for c in conns], "raw")
    finally:
        for c in conns:
            c.close()


async def _httpx(plan: Plan) -> LoadResult:
    import httpx

    limits = httpx.Limits(
        max_connections=plan.concurrency, max_keepalive_connections=plan.concurrency
    )
    headers = {**plan.headers, "Content-Type": "application/json"}
    async with httpx.AsyncClient(
        base_url=plan.base_url, limits=limits, timeout=plan.timeout, headers=headers
    ) as client:

        async def send(i: int) -> tuple[int, bytes]:
            r = plan.requests[i]
            answer = await client.request(r.method, r.path, content=r.body)
            return answer.status_code, answer.content

        workers = min(plan.concurrency, len(plan.requests))
        return await _measure(plan, [send] * workers, "httpx")


def run_plan(plan: Plan) -> LoadResult:
    import uvloop

    return uvloop.run(_raw(plan) if plan.client == "raw" else _httpx(plan))


def drive(plan: Plan, *, timeout: float = 900) -> LoadResult:
    """Run `plan` in a fresh load-generator process and return what it measured."""
    with tempfile.TemporaryDirectory(prefix="slotlog-load-") as tmp:
        plan_path, result_path = Path(tmp, "plan.json"), Path(tmp, "result.json")
        plan_path.write_bytes(msgspec.json.encode(plan))
        subprocess.run(
            [sys.executable, "-m", "bench.load", str(plan_path), str(result_path)],
            check=True,
            timeout=timeout,
            cwd=ROOT,
            env=child_env(),
        )
        return msgspec.json.decode(result_path.read_bytes(), type=LoadResult)


def main(argv: list[str]) -> None:
    plan_path, result_path = argv
    plan = msgspec.json.decode(Path(plan_path).read_bytes(), type=Plan)
    result = run_plan(plan)
    Path(result_path).write_bytes(msgspec.json.encode(result))


if __name__ == "__main__":
    with contextlib.suppress(KeyboardInterrupt):
        main(sys.argv[1:])

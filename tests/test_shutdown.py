"""A server's shutdown ends within seconds, also when the database has stopped answering (a
network partition, a dead host behind a firewall): the service's lifespan, with its background
workers and pool, is run against PostgreSQL through a TCP proxy that then stops forwarding
anything while keeping every socket open."""

from __future__ import annotations

import asyncio
import time
from typing import Any
from urllib.parse import parse_qsl, urlencode, urlsplit, urlunsplit

from service.app import create_app
from service.db import POOL_CLOSE_SECONDS
from tests.settle import within


class Blackhole:
    """Forwards to PostgreSQL until `cut()`, then forwards nothing and closes nothing."""

    def __init__(self, url: str) -> None:
        parts = urlsplit(url)
        query = dict(parse_qsl(parts.query))
        host = query.get("host") or parts.hostname or "127.0.0.1"
        self._upstream: tuple[str, int] | str = (
            f"{host}/.s.PGSQL.{parts.port or 5432}"
            if host.startswith("/")
            else (host, parts.port or 5432)
        )
        self._parts = parts._replace(query=urlencode({"sslmode": "disable"}))
        self._cut = asyncio.Event()
        self._writers: list[asyncio.StreamWriter] = []
        self._tasks: set[asyncio.Task[Any]] = set()
        self._server: asyncio.Server | None = None
        self.url = ""

    async def start(self) -> None:
        self._server = await asyncio.start_server(self._accept, "127.0.0.1", 0)
        port = self._server.sockets[0].getsockname()[1]
        user = self._parts.username or "postgres"
        auth = f"{user}:{self._parts.password}" if self._parts.password else user
        self.url = urlunsplit(self._parts._replace(netloc=f"{auth}@127.0.0.1:{port}"))

    def cut(self) -> None:
        self._cut.set()

    async def _accept(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._writers.append(writer)
        if self._cut.is_set():
            return  # accepted and never answered
        if isinstance(self._upstream, str):
            up_reader, up_writer = await asyncio.open_unix_connection(self._upstream)
        else:
            up_reader, up_writer = await asyncio.open_connection(*self._upstream)
        self._writers.append(up_writer)
        for source, sink in ((reader, up_writer), (up_reader, writer)):
            task = asyncio.ensure_future(self._pipe(source, sink))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _pipe(self, source: asyncio.StreamReader, sink: asyncio.StreamWriter) -> None:
        while data := await source.read(65536):
            if self._cut.is_set():
                await asyncio.Event().wait()  # swallowed: never forwarded, never closed
            sink.write(data)
            await sink.drain()
        sink.close()

    async def close(self) -> None:
        for task in self._tasks:
            task.cancel()
        for writer in self._writers:
            writer.transport.abort()
        if self._server is not None:
            self._server.close()


async def test_shutdown_ends_when_the_database_stopped_answering(database_url: str) -> None:
    """Before: the workers' connections closed one after another (2 s each), and the pool's
    graceful close then waited without a limit (still waiting after 20 s)."""
    proxy = Blackhole(database_url)
    await proxy.start()
    try:
        app = create_app(proxy.url, background=True)
        lifespan = app.router.lifespan_context(app)
        await within(lifespan.__aenter__(), 10)
        for _ in range(200):  # each worker holds its lock and its connection
            if all(w.leading for w in app.state.workers):
                break
            await asyncio.sleep(0.05)
        assert all(w.leading for w in app.state.workers)
        proxy.cut()
        started = time.monotonic()
        shutdown = asyncio.ensure_future(lifespan.__aexit__(None, None, None))
        done, _ = await asyncio.wait({shutdown}, timeout=POOL_CLOSE_SECONDS + 10)
        took = time.monotonic() - started
        if not done:
            shutdown.cancel()
            await asyncio.wait({shutdown}, timeout=10)
        assert done, f"the shutdown was still running after {took:.1f} s"
        assert shutdown.exception() is None
        assert took < POOL_CLOSE_SECONDS + 5, f"the shutdown took {took:.1f} s"
    finally:
        await proxy.close()

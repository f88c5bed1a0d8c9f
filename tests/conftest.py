"""Test harness: one real PostgreSQL per test session, a fresh database per test.

Without DATABASE_URL a throwaway embedded PostgreSQL (pgserver) is started in a temporary directory
and deleted at the end; with DATABASE_URL that server is used. Either way schema.sql is applied
once to a template database, and each test gets its own clone of it (CREATE DATABASE … TEMPLATE),
dropped afterwards. No test mocks the database.
"""

from __future__ import annotations

import asyncio
import os
import tempfile
import uuid
from collections.abc import AsyncIterator, Iterator
from pathlib import Path
from typing import Any

import asyncpg
import httpx
import pytest
from starlette.applications import Starlette

from service.app import create_app
from service.db import EmbeddedPostgres, create_pool, migrate, with_database
from service.tenants import create_tenant


@pytest.fixture(scope="session")
def server_url() -> Iterator[str]:
    """An admin URL for the PostgreSQL server the suite runs against."""
    url = os.environ.get("DATABASE_URL")
    if url:
        yield url
        return
    directory = Path(tempfile.mkdtemp(prefix="slotlog-test-"))
    embedded = EmbeddedPostgres(directory / "pg", delete_on_exit=True)
    try:
        yield with_database(embedded.admin_url, "postgres")
    finally:
        embedded.stop()


async def _admin(url: str) -> asyncpg.Connection:
    return await asyncpg.connect(url)


@pytest.fixture(scope="session")
def template_db(server_url: str) -> Iterator[str]:
    name = f"slotlog_tpl_{os.getpid()}_{uuid.uuid4().hex[:6]}"

    async def create() -> None:
        conn = await _admin(server_url)
        try:
            await conn.execute(f'CREATE DATABASE "{name}"')
        finally:
            await conn.close()
        await migrate(with_database(server_url, name))

    async def drop() -> None:
        conn = await _admin(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()

    asyncio.run(create())
    try:
        yield name
    finally:
        asyncio.run(drop())


async def clone_template(server_url: str, template_db: str) -> str:
    """A new database cloned from the schema template; returns its URL."""
    name = f"slotlog_t_{uuid.uuid4().hex[:12]}"
    conn = await _admin(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    return with_database(server_url, name)


async def drop_database(server_url: str, url: str) -> None:
    name = url.rsplit("/", 1)[1].split("?", 1)[0]
    conn = await _admin(server_url)
    try:
        await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
    finally:
        await conn.close()


@pytest.fixture(scope="module")
def module_database_url(server_url: str, template_db: str) -> Iterator[str]:
    """A fresh database shared by the tests of one module (for a long-lived server)."""
    url = asyncio.run(clone_template(server_url, template_db))
    try:
        yield url
    finally:
        asyncio.run(drop_database(server_url, url))


@pytest.fixture
async def database_url(server_url: str, template_db: str) -> AsyncIterator[str]:
    """A fresh database with the schema applied, for this test only."""
    name = f"slotlog_t_{uuid.uuid4().hex[:12]}"
    conn = await _admin(server_url)
    try:
        await conn.execute(f'CREATE DATABASE "{name}" TEMPLATE "{template_db}"')
    finally:
        await conn.close()
    try:
        yield with_database(server_url, name)
    finally:
        conn = await _admin(server_url)
        try:
            await conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')
        finally:
            await conn.close()


@pytest.fixture
async def pool(database_url: str) -> AsyncIterator[asyncpg.Pool]:
    p = await create_pool(database_url, min_size=1, max_size=60)
    try:
        yield p
    finally:
        await p.close()


class Api:
    """A real HTTP client on the real app, authenticated as one tenant's secret key."""

    def __init__(
        self, client: httpx.AsyncClient, tenant: dict[str, str], pool: asyncpg.Pool
    ) -> None:
        self.client = client
        self.pool = pool
        self.tenant = tenant
        self.secret = {"Authorization": f"Bearer {tenant['secret_key']}"}
        self.public = {"Authorization": f"Bearer {tenant['public_key']}"}

    async def get(self, url: str, **kw: Any) -> httpx.Response:
        kw.setdefault("headers", self.secret)
        return await self.client.get(url, **kw)

    async def post(self, url: str, body: Any = None, **kw: Any) -> httpx.Response:
        headers = {**self.secret, **kw.pop("headers", {})}
        if body is None:
            return await self.client.post(url, headers=headers, **kw)
        return await self.client.post(url, json=body, headers=headers, **kw)

    async def put(self, url: str, body: Any, **kw: Any) -> httpx.Response:
        headers = {**self.secret, **kw.pop("headers", {})}
        return await self.client.put(url, json=body, headers=headers, **kw)

    async def new_tenant(self, name: str | None = None) -> Api:
        tenant = await create_tenant(self.pool, name or uuid.uuid4().hex)
        return Api(self.client, tenant, self.pool)


@pytest.fixture
async def app(database_url: str) -> AsyncIterator[Starlette]:
    application = create_app(database_url, background=False)
    async with application.router.lifespan_context(application):
        yield application


@pytest.fixture
async def api(app: Starlette) -> AsyncIterator[Api]:
    transport = httpx.ASGITransport(app=app, raise_app_exceptions=False)
    async with httpx.AsyncClient(transport=transport, base_url="http://slotlog.test") as client:
        tenant = await create_tenant(app.state.pool, f"test-{uuid.uuid4().hex[:8]}")
        yield Api(client, tenant, app.state.pool)

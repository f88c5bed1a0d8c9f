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

import asyncpg
import pytest

from service.db import EmbeddedPostgres, create_pool, migrate, with_database


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

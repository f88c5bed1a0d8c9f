"""Waiting for the log's readers: `store.read_all` shows only events of transactions that ended
before every transaction still running anywhere on the server (xids are cluster-wide), so on a
shared server another database's open transaction can briefly hide the newest events."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable
from typing import Any, TypeVar

T = TypeVar("T")


async def settled(db: Any, within: float = 30) -> None:
    """Wait until every committed event is visible to `read_all`."""
    deadline = time.monotonic() + within
    while True:
        hidden = await db.fetchval(
            "SELECT EXISTS (SELECT 1 FROM events "
            "WHERE transaction_id >= pg_snapshot_xmin(pg_current_snapshot()))"
        )
        if not hidden:
            return
        if time.monotonic() > deadline:
            raise AssertionError(f"events still hidden by an open transaction after {within} s")
        await asyncio.sleep(0.02)


async def within(work: Awaitable[T], seconds: float) -> T:
    """`work`'s result, or AssertionError if it has not finished within `seconds` (then it is
    cancelled, and not waited for: Python 3.11's `asyncio.wait_for` waits, without a limit, for
    a cancelled task's clean-up, which can hang on a database that stopped answering)."""
    task = asyncio.ensure_future(work)
    done, _ = await asyncio.wait({task}, timeout=seconds)
    if not done:
        task.cancel()
        raise AssertionError(f"not finished within {seconds} s")
    return task.result()


async def answered_only_after(read: Awaitable[T], commit: Callable[[], Awaitable[Any]]) -> T:
    """`read`'s result, asserting that it has not answered after 0.5 s, while the write it
    waits for is uncommitted, and does within 5 s of `commit()`."""
    task = asyncio.ensure_future(read)
    try:
        done, _ = await asyncio.wait({task}, timeout=0.5)
        assert not done, "the read answered before the write it waits for was committed"
    finally:
        await commit()
    return await within(task, 5)

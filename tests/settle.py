"""Waiting for the log's readers: `store.read_all` shows only events of transactions that ended
before every transaction still running anywhere on the server (xids are cluster-wide), so on a
shared server another database's open transaction can briefly hide the newest events."""

from __future__ import annotations

import asyncio
import time
from typing import Any


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

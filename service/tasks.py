"""Stopping background tasks."""

from __future__ import annotations

import asyncio
from typing import Any


async def cancel_and_wait(*tasks: asyncio.Future[Any] | None) -> None:
    """Cancel `tasks` (or futures) and wait until each has ended; what they ended with is
    dropped (their owners report their own errors). A cancellation of the caller while it waits
    is its own and goes on to it: `with suppress(CancelledError): await task` could not tell it
    from the task's, swallowed it, and so let a shutdown outlive any time limit put on it."""
    running = [t for t in tasks if t is not None]
    for task in running:
        task.cancel()
    if running:
        await asyncio.wait(running)
    for task in running:
        if not task.cancelled():
            task.exception()  # retrieved: no "never retrieved" warning at exit

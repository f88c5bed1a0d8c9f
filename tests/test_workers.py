"""A background worker (service/workers.py) stops when asked, however busy it is: a server's
shutdown, and the tests' own, wait for every worker to stop."""

from __future__ import annotations

import asyncio

import pytest

from service.workers import LeaderWorker

KEY = 732019001  # an advisory lock no worker of the service takes


async def stops_within(worker: LeaderWorker, seconds: float) -> bool:
    stopping = asyncio.ensure_future(worker.stop())
    done, _ = await asyncio.wait({stopping}, timeout=seconds)
    return bool(done)


async def test_a_worker_with_work_left_stops_when_asked(database_url: str) -> None:
    """Its step wakes it again at once (as the webhook sender's does while deliveries are due).
    Python 3.11's `asyncio.wait_for` returned the wake-up instead of the cancellation when both
    came in one turn of the event loop, so such a worker never stopped: a webhook test hung in
    CI, and a server's shutdown would have."""
    busy = asyncio.Event()
    steps = 0

    async def step() -> None:
        nonlocal steps
        steps += 1
        if steps == 100:
            busy.set()
        worker.wake.set()

    worker = LeaderWorker("busy", database_url, KEY, step, interval=0.05)
    worker.start()
    try:
        await asyncio.wait_for(busy.wait(), 10)
        assert await stops_within(worker, 5), f"the worker ran on after stop() ({steps} steps)"
        assert not worker.leading
    finally:
        worker.step = _end  # a worker that ignored stop() ends at its next step
        if worker._task is not None:
            await asyncio.wait({worker._task}, timeout=5)


async def test_an_idle_worker_stops_when_asked(database_url: str) -> None:
    stepped = asyncio.Event()

    async def step() -> None:
        stepped.set()

    worker = LeaderWorker("idle", database_url, KEY, step, interval=0.05)
    worker.start()
    await asyncio.wait_for(stepped.wait(), 10)
    assert await stops_within(worker, 5)
    assert not worker.leading


async def test_a_time_limit_around_stop_holds(database_url: str) -> None:
    """A cancellation of stop()'s caller (a time limit on a shutdown, a second Ctrl-C) is the
    caller's: `with suppress(CancelledError): await task` swallowed it with the task's own, and
    the caller went on past its limit."""
    stepping = asyncio.Event()

    async def slow_to_stop() -> None:
        stepping.set()
        try:
            await asyncio.sleep(30)
        except asyncio.CancelledError:
            await asyncio.sleep(10)  # a clean-up that takes a while
            raise

    worker = LeaderWorker("slow", database_url, KEY, slow_to_stop, interval=0.05)
    worker.start()
    await asyncio.wait_for(stepping.wait(), 10)
    started = asyncio.get_running_loop().time()
    with pytest.raises(TimeoutError):
        async with asyncio.timeout(0.1):
            await worker.stop()
    assert asyncio.get_running_loop().time() - started < 5  # the limit, not the clean-up
    assert worker._task is not None
    worker._task.cancel()  # its clean-up too: the test need not sit through it
    await asyncio.wait({worker._task}, timeout=5)


async def _end() -> None:
    raise asyncio.CancelledError

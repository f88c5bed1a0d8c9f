"""The background side of one service process: the command shell (metered, poking the wake-up
notifier after each commit), the three leader-elected workers (hold expirer, projector, webhook
sender; exactly one of each runs per cluster), and the LISTEN connection that wakes them.

Built and started by service/app.py's lifespan; nothing imports this but app.py and the CLI.
"""

from __future__ import annotations

import asyncio

import asyncpg

from projections.runner import LOCK_PROJECTOR, Listener, Notifier, ProjectionRunner
from service.metrics import MeteredCommands, Metrics
from service.webhooks import LOCK_WEBHOOKS, WebhookSender
from service.workers import LOCK_EXPIRER, HoldExpirer, LeaderWorker


class Background:
    def __init__(self, url: str, pool: asyncpg.Pool, metrics: Metrics) -> None:
        self.notifier = Notifier(pool)
        self.commands = MeteredCommands(pool, metrics, on_commit=self.notifier.poke)
        self.expirer = HoldExpirer(pool, self.commands)
        self.projector = ProjectionRunner(pool)
        self.webhooks = WebhookSender(
            pool, on_attempt=lambda result: metrics.webhook_attempts.labels(result).inc()
        )
        self.workers = [
            LeaderWorker("hold-expirer", url, LOCK_EXPIRER, self.expirer.step, interval=1.0),
            LeaderWorker("projector", url, LOCK_PROJECTOR, self.projector.step, interval=1.0),
            LeaderWorker("webhook-sender", url, LOCK_WEBHOOKS, self.webhooks.step, interval=1.0),
        ]
        self.webhooks.wake = self.workers[2].wake
        self.listener = Listener(url, [w.wake for w in self.workers[1:]])
        self.started = False

    def start(self) -> None:
        self.notifier.start()
        self.listener.start()
        for w in self.workers:
            w.start()
        self.started = True

    async def stop(self) -> None:
        """Side by side: each stop may wait up to 2 s for its connection to close, when the
        database has stopped answering."""
        await asyncio.gather(
            *(w.stop() for w in self.workers), self.listener.stop(), self.notifier.stop()
        )
        await self.webhooks.close()

"""A background asyncio task with its own Redis client, repeating one step until closed."""

from __future__ import annotations

import abc
import asyncio
import contextlib

from router.kv_wire import redis_client


class RedisLoop(abc.ABC):
    """Runs ``_step`` over and over on the loop that called ``start``; ``close`` stops it and
    closes the client. The KV-event publisher and subscriber are both one of these."""

    def __init__(self, redis_url: str, name: str) -> None:
        self._redis = redis_client(redis_url)
        self._name = name
        self._task: asyncio.Task[None] | None = None
        self._closing = False

    def start(self) -> None:
        """Start the task; a second call does nothing."""
        if self._task is None:
            loop = asyncio.get_running_loop()
            self._task = loop.create_task(self._run(), name=self._name)

    async def close(self) -> None:
        """Stop the task and close the client. Re-raises what stopped the task, if anything."""
        self._closing = True  # stops the loop even if the cancel below is lost (see _run)
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        await self._redis.aclose()

    async def _run(self) -> None:
        # Not `while True`: on Python 3.11, asyncio.wait_for (which redis-py wraps around socket
        # writes) swallows a cancellation that lands as the write completes; close() would wait
        # forever on a loop that goes on.
        while not self._closing:
            await self._step()

    @abc.abstractmethod
    async def _step(self) -> None:
        """One round of work; errors it does not handle stop the task (``close`` re-raises)."""

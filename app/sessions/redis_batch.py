"""Redis calls made in one event-loop turn go out together: one pipeline (one write, one
read) per node, and one WAIT per pipeline covers every write in it.

Why: measured by bench/scaling.py, a replica spent more CPU talking to Redis (a send and a
receive per step, each a system call, plus packing) than running the model. Concurrent
steps on different sessions are independent, so the store hands their scripts to this
coalescer, which sends what arrived in the same turn as one pipeline per node, in order.
An error of one call comes back to that call only; a connection error fails that node's
group (the callers retry: their writes are idempotent), never another node's.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Hashable, Sequence
from typing import Any, NamedTuple

from app.sessions.redis_scripts import Script


class Op(NamedTuple):
    args: tuple[Any, ...]  # the command, e.g. ("EVALSHA", sha, 2, key, index, ...)
    key: str  # routes it (its slot's node on a cluster)
    wait: int  # WAIT for this many replicas after it; 0: none
    script: Script | None  # loaded again on NOSCRIPT


# (the reply, or the error of this call; the replicas that confirmed when it waited)
Reply = tuple[Any, int | None]
Group = Callable[[Sequence[Op]], Awaitable[list[tuple[Hashable, list[int]]]]]
Send = Callable[[Any, Sequence[Op]], Awaitable[list[Reply]]]


def _fail(items: Sequence[tuple[Op, asyncio.Future[Reply]]], error: BaseException) -> None:
    for _, fut in items:
        if not fut.done():
            fut.set_exception(error)


class Coalescer:
    """Collects ops for one loop turn, groups them by target, sends each group."""

    def __init__(
        self, group: Group, send: Send, slots: asyncio.Semaphore, max_batch: int = 256
    ) -> None:
        self._group = group
        self._send_group = send
        self._slots = slots  # one connection per group in flight
        self.max_batch = max_batch
        self._queue: list[tuple[Op, asyncio.Future[Reply]]] = []
        self._scheduled = False
        self._tasks: set[asyncio.Task[None]] = set()

    async def submit(self, op: Op) -> Reply:
        loop = asyncio.get_running_loop()
        fut: asyncio.Future[Reply] = loop.create_future()
        self._queue.append((op, fut))
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        return await fut

    def _flush(self) -> None:
        self._scheduled = False
        queue, self._queue = self._queue, []
        loop = asyncio.get_running_loop()
        for start in range(0, len(queue), self.max_batch):
            task = loop.create_task(self._send(queue[start : start + self.max_batch]))
            self._tasks.add(task)
            task.add_done_callback(self._tasks.discard)

    async def _send(self, batch: list[tuple[Op, asyncio.Future[Reply]]]) -> None:
        try:
            groups = await self._group([op for op, _ in batch])
        except asyncio.CancelledError:
            _cancel(batch)
            raise
        except Exception as e:
            _fail(batch, e)
            return
        await asyncio.gather(
            *(self._one(target, [batch[i] for i in idx]) for target, idx in groups)
        )

    async def _one(self, target: Any, items: list[tuple[Op, asyncio.Future[Reply]]]) -> None:
        try:
            async with self._slots:
                replies = await self._send_group(target, [op for op, _ in items])
        except asyncio.CancelledError:
            _cancel(items)
            raise
        except Exception as e:
            _fail(items, e)
            return
        for (_, fut), reply in zip(items, replies, strict=True):
            if not fut.done():
                fut.set_result(reply)


def _cancel(items: Sequence[tuple[Op, asyncio.Future[Reply]]]) -> None:
    for _, fut in items:
        fut.cancel()

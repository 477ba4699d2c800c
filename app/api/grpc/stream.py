"""ModelStreamInfer's bookkeeping: requests of one stream answered concurrently, in order per
sequence.

A stream may carry one sequence (a sensor feed) or many (tritonclient's `start_stream` is one
stream per client, shared by every `async_stream_infer`). Each request is answered as soon as
it can be, so that the steps of many sequences meet in one batch of the dynamic batcher, and
never before the earlier requests of its own sequence: a request waits for the one before it
with the same ordering key (model version and sequence id), as Triton's sequence batcher
keeps a sequence's requests in order. At most `MAX_IN_FLIGHT` requests of a stream are in
progress; past that the stream is not read, and HTTP/2 flow control holds the client back.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Awaitable, Callable, Hashable
from typing import Any

MAX_IN_FLIGHT = 256
_END = object()

Answer = Callable[[Any], Awaitable[Any]]  # request -> response; never raises
OrderKey = Callable[[Any], Hashable | None]  # None: no order to keep


async def answer_stream(answer: Answer, order_key: OrderKey,
                        requests: AsyncIterator[Any]) -> AsyncIterator[Any]:  # fmt: skip
    """The responses to `requests`, each as soon as it and its sequence's earlier ones are."""
    loop = asyncio.get_running_loop()
    out: asyncio.Queue[Any] = asyncio.Queue()
    slots = asyncio.Semaphore(MAX_IN_FLIGHT)
    tails: dict[Hashable, asyncio.Task[None]] = {}  # key -> its latest request's task
    running: set[asyncio.Task[None]] = set()

    async def one(request: Any, key: Hashable | None, before: asyncio.Task[None] | None) -> None:
        try:
            if before is not None and not before.done():
                await asyncio.wait((before,))
            out.put_nowait(await answer(request))
        finally:
            slots.release()
            task = asyncio.current_task()
            running.discard(task)
            if key is not None and tails.get(key) is task:
                del tails[key]

    async def read() -> None:
        try:
            async for request in requests:
                await slots.acquire()
                key = order_key(request)
                before = tails.get(key) if key is not None else None
                task = loop.create_task(one(request, key, before))
                running.add(task)
                if key is not None:
                    tails[key] = task
            if running:
                await asyncio.wait(set(running))
        finally:
            out.put_nowait(_END)

    reader = loop.create_task(read())
    try:
        while True:
            item = out.get_nowait() if out.qsize() else await out.get()
            if item is _END:
                break
            yield item
        if not reader.cancelled() and reader.exception() is not None:
            raise reader.exception()  # type: ignore[misc]
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()

"""ModelStreamInfer's bookkeeping: requests of one stream answered concurrently, in order per
sequence.

A stream may carry one sequence (a sensor feed) or many (tritonclient's `start_stream` is one
stream per client, shared by every `async_stream_infer`). Each request is answered as soon as
it can be, so that the steps of many sequences meet in one batch of the dynamic batcher, and
never before the earlier requests of its own sequence: a request waits for the one before it
with the same ordering key (model version and sequence id), as Triton's sequence batcher
keeps a sequence's requests in order. At most `MAX_IN_FLIGHT` requests of a stream are in
progress; past that the stream is not read, and HTTP/2 flow control holds the client back.

The stream is read with the call's `read()` and answered with its `write()` (grpc.aio's
context methods), not through async iterators: per message that is one task (its answer)
and no queue or generator hand-offs, the cost that counts when a step is a few floats.
"""

from __future__ import annotations

import asyncio
from collections import deque
from collections.abc import Awaitable, Callable, Hashable
from typing import Any

import grpc

MAX_IN_FLIGHT = 256

Answer = Callable[[Any], Awaitable[Any]]  # request -> response; never raises
OrderKey = Callable[[Any], Hashable | None]  # None: no order to keep
Read = Callable[[], Awaitable[Any]]  # the next request, or grpc.aio.EOF
Write = Callable[[Any], Awaitable[None]]


async def answer_stream(answer: Answer, order_key: OrderKey, read: Read, write: Write) -> None:
    """Answer every request `read` gives with `write`, each as soon as it and its sequence's
    earlier ones are answered; returns when the client has sent all and each is answered."""
    loop = asyncio.get_running_loop()
    ready: deque[Any] = deque()  # answers not yet written, in the order they came
    tails: dict[Hashable, asyncio.Task[None]] = {}  # key -> its latest request's task
    running: set[asyncio.Task[None]] = set()
    # wake-ups of the writer (an answer, or the end) and of the reader (room in the stream)
    writer, reader_room = asyncio.Event(), asyncio.Event()
    reading = True
    failure: list[BaseException] = []

    async def one(request: Any, key: Hashable | None, before: asyncio.Task[None] | None) -> None:
        try:
            if before is not None and not before.done():
                await asyncio.wait((before,))
            ready.append(await answer(request))
            writer.set()
        finally:
            task = asyncio.current_task()
            running.discard(task)
            if key is not None and tails.get(key) is task:
                del tails[key]
            if len(running) == MAX_IN_FLIGHT - 1:
                reader_room.set()
            if not running:
                writer.set()

    async def read_all() -> None:
        nonlocal reading
        try:
            while True:
                request = await read()
                if request is grpc.aio.EOF:
                    break
                while len(running) >= MAX_IN_FLIGHT:
                    reader_room.clear()
                    await reader_room.wait()
                key = order_key(request)
                before = tails.get(key) if key is not None else None
                task = loop.create_task(one(request, key, before))
                running.add(task)
                if key is not None:
                    tails[key] = task
        except BaseException as exc:
            failure.append(exc)
        finally:
            reading = False
            writer.set()

    reader = loop.create_task(read_all())
    try:
        while True:
            while ready:
                await write(ready.popleft())
            if failure:
                exc = failure[0]
                if isinstance(exc, Exception):
                    raise exc
                break  # the reader was cancelled: the call is going
            if not reading and not running:
                break
            writer.clear()
            await writer.wait()
    finally:
        reader.cancel()
        for task in list(running):
            task.cancel()

"""A TCP proxy that breaks connections on purpose, between the client and the servers.

It runs its own asyncio loop in a thread. Each connection goes to an upstream picked at
random (another one when that refuses, e.g. a replica just SIGKILLed). Then, at random:
- `cut`: a chunk the server sends back is dropped together with both connections: the
  request reached the server (its answer is the proof) and the answer never comes back;
- `delay`: a chunk the server sends back is held `hold` seconds, past the client's timeout;
- `late`: a chunk the client sends is held `hold` seconds before it goes on, so the server
  sees it after the client gave up on it (a stale duplicate of a request it retried).
`counts` says how many of each were injected. For focused tests, `cut_next`, `delay_next`
and `late_next` = n do the same to the next n chunks for sure, and with `record` set, `sent`
keeps every chunk the clients sent.
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import threading
from collections import Counter
from collections.abc import Callable

GRACE = 2.0  # seconds an upstream stays open after its client left, to finish late requests


class FaultProxy:
    def __init__(
        self,
        upstreams: Callable[[], list[int]],
        *,
        cut: float = 0.0,
        delay: float = 0.0,
        late: float = 0.0,
        hold: float = 1.0,
        seed: int = 0,
    ) -> None:
        self.upstreams = upstreams
        self.cut, self.delay, self.late, self.hold = cut, delay, late, hold
        self.random = random.Random(seed)
        self.counts: Counter[str] = Counter()
        self.faults = True  # False: a plain proxy (setup and checks)
        self.cut_next = self.delay_next = self.late_next = 0
        self.record = False
        self.sent: list[bytes] = []
        self.port = 0
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._server: asyncio.Server | None = None

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    def __enter__(self) -> FaultProxy:
        self._thread.start()
        asyncio.run_coroutine_threadsafe(self._listen(), self._loop).result(timeout=10)
        return self

    def __exit__(self, *exc: object) -> None:
        async def stop() -> None:
            assert self._server is not None
            self._server.close()
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        asyncio.run_coroutine_threadsafe(stop(), self._loop).result(timeout=10)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(timeout=10)
        self._loop.close()

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", 0)
        self.port = self._server.sockets[0].getsockname()[1]

    def _roll(self, p: float, next_: str) -> bool:
        if getattr(self, next_) > 0:
            setattr(self, next_, getattr(self, next_) - 1)
            return True
        return self.faults and self.random.random() < p

    async def _connect(self) -> tuple[asyncio.StreamReader, asyncio.StreamWriter] | None:
        ports = self.upstreams()
        self.random.shuffle(ports)
        for port in ports:
            try:
                return await asyncio.open_connection("127.0.0.1", port)
            except OSError:
                self.counts["refused"] += 1  # a dead replica: try the next one
        return None

    async def _handle(self, cr: asyncio.StreamReader, cw: asyncio.StreamWriter) -> None:
        self.counts["connections"] += 1
        up = await self._connect()
        if up is None:
            cw.transport.abort()
            return
        ur, uw = up
        writers = (cw, uw)
        to_server = asyncio.create_task(self._upstream(cr, uw))
        to_client = asyncio.create_task(self._downstream(ur, cw, writers))
        try:
            done, _ = await asyncio.wait((to_server, to_client), return_when="FIRST_COMPLETED")
            if to_client not in done:  # the client left: let late requests reach the server
                await asyncio.wait((to_client,), timeout=GRACE)
        except asyncio.CancelledError:
            pass  # the proxy is stopping
        finally:
            for task in (to_server, to_client):
                task.cancel()
            for w in writers:
                w.transport.abort()

    async def _upstream(self, cr: asyncio.StreamReader, uw: asyncio.StreamWriter) -> None:
        with contextlib.suppress(OSError):
            while data := await cr.read(65536):
                if self.record:
                    self.sent.append(data)
                if self._roll(self.late, "late_next"):
                    self.counts["late"] += 1
                    await asyncio.sleep(self.hold)
                uw.write(data)
                await uw.drain()

    async def _downstream(
        self,
        ur: asyncio.StreamReader,
        cw: asyncio.StreamWriter,
        writers: tuple[asyncio.StreamWriter, ...],
    ) -> None:
        with contextlib.suppress(OSError):
            while data := await ur.read(65536):
                if self._roll(self.cut, "cut_next"):
                    self.counts["cut"] += 1
                    for w in writers:
                        w.transport.abort()
                    return
                if self._roll(self.delay, "delay_next"):
                    self.counts["delayed"] += 1
                    await asyncio.sleep(self.hold)
                if not cw.is_closing():
                    cw.write(data)
                    with contextlib.suppress(OSError):
                        await cw.drain()

"""A session store opened in another process, driven over a pipe: the second worker of a test.

`open_store(spec)` opens the store a spec names, in whichever process calls it; `Remote` runs
a spawned process that opens stores by spec and calls them on request, so a test can create
in one process and read in the other, or change one session from both at once.
"""

from __future__ import annotations

import asyncio
import multiprocessing as mp
import random
from dataclasses import dataclass
from multiprocessing.connection import Connection
from typing import Any

from app.config import Settings
from app.errors import CapacityReached, PeepholeError, SessionNotFound, StoreConflict
from app.sessions.base import Session, SessionStore


@dataclass(frozen=True)
class Spec:
    """Which store: kind `memory`, `lmdb` (path) or `redis` (url, prefix); and its capacity."""

    kind: str
    max_sessions: int
    path: str = ""
    url: str = ""
    prefix: str = ""


def open_store(spec: Spec) -> SessionStore:
    """The store of `spec`; no background sweep within a test, so expiry on access is shown."""
    if spec.kind == "memory":
        from app.sessions.memory import MemorySessionStore

        return MemorySessionStore(max_sessions=spec.max_sessions, sweep_seconds=3600)
    if spec.kind == "lmdb":
        from app.sessions.lmdb import LMDBSessionStore

        return LMDBSessionStore(spec.path, spec.max_sessions, sweep_seconds=3600)
    from app.sessions.redis import RedisSessionStore

    settings = Settings(
        session_store="redis", redis_url=spec.url, redis_prefix=spec.prefix,
        max_sessions=spec.max_sessions,
    )  # fmt: skip
    return RedisSessionStore.from_settings(settings)


async def change(store: SessionStore, session_id: str, k: float = 1.0, hold: float = 0.0) -> int:
    """One increment of offset and state under `locked`, run again on StoreConflict as the
    data plane does; returns how many conflicts it met."""
    conflicts = 0
    while True:
        try:
            async with store.locked(session_id) as s:
                if hold:
                    await asyncio.sleep(hold)
                s.offset += 1
                s.state = {n: v + k for n, v in s.state.items()}
            return conflicts
        except StoreConflict:
            conflicts += 1
            await asyncio.sleep(random.uniform(0, 0.001 * min(conflicts, 20)))


def _raise(name: str, detail: str, retry_after: int) -> None:
    if name == "CapacityReached":
        raise CapacityReached(retry_after=retry_after, detail=detail)
    if name == "SessionNotFound":
        raise SessionNotFound(detail)
    raise RuntimeError(f"remote {name}: {detail}")


def _serve(conn: Connection) -> None:
    async def main() -> None:
        stores: dict[int, SessionStore] = {}
        opened = 0
        while True:
            op, *args = await asyncio.to_thread(conn.recv)
            try:
                result: Any = None
                if op == "open":
                    stores[opened] = open_store(args[0])
                    result, opened = opened, opened + 1
                elif op == "changes":
                    handle, sid, n = args
                    result = 0
                    for _ in range(n):
                        result += await change(stores[handle], sid)
                elif op == "create_each":  # create_if_absent of each: whether it created
                    handle, sessions = args
                    result = [(await stores[handle].create_if_absent(s))[1] for s in sessions]
                elif op == "close":
                    await stores.pop(args[0]).close()
                elif op == "exit":
                    for s in stores.values():
                        await s.close()
                    conn.send(("ok", None))
                    return
                else:  # a protocol method: create, create_if_absent, get, delete, count
                    handle, *rest = args
                    result = await getattr(stores[handle], op)(*rest)
                conn.send(("ok", result))
            except PeepholeError as e:
                retry = int(e.headers.get("Retry-After", 0))
                conn.send(("error", (type(e).__name__, e.detail, retry)))
            except Exception as e:  # reported to the test, which fails with it
                conn.send(("error", (type(e).__name__, str(e), 0)))

    asyncio.run(main())


class Remote:
    """The other process. Calls block until it answers; `start`/`finish` split a call so that
    the test's own process can work meanwhile."""

    def __init__(self) -> None:
        ctx = mp.get_context("spawn")
        self._conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_serve, args=(child,), daemon=True)
        self.proc.start()

    def start(self, op: str, *args: Any) -> None:
        self._conn.send((op, *args))

    async def finish(self) -> Any:
        status, value = await asyncio.to_thread(self._conn.recv)
        if status == "error":
            _raise(*value)
        return value

    async def call(self, op: str, *args: Any) -> Any:
        self.start(op, *args)
        return await self.finish()

    def close(self) -> None:
        if self.proc.is_alive():
            self._conn.send(("exit",))
            self._conn.recv()
            self.proc.join(10)
        if self.proc.is_alive():
            self.proc.kill()


class SplitStore:
    """One store seen from two processes: creates, delete and count go to the other process;
    get and locked run here. Every contract test through it crosses the process boundary."""

    def __init__(self, local: SessionStore, remote: Remote, handle: int) -> None:
        self.local, self.remote, self.handle = local, remote, handle

    async def start(self) -> None:
        await self.local.start()

    async def close(self) -> None:
        await self.local.close()
        await self.remote.call("close", self.handle)

    async def ping(self) -> None:
        await self.local.ping()

    async def count(self) -> int:
        return int(await self.remote.call("count", self.handle))

    async def create(self, session: Session) -> Session:
        created: Session = await self.remote.call("create", self.handle, session)
        return created

    async def create_if_absent(self, session: Session) -> tuple[Session, bool]:
        found: tuple[Session, bool] = await self.remote.call(
            "create_if_absent", self.handle, session
        )
        return found

    async def get(self, session_id: str) -> Session:
        return await self.local.get(session_id)

    def locked(self, session_id: str) -> Any:
        return self.local.locked(session_id)

    async def delete(self, session_id: str) -> None:
        await self.remote.call("delete", self.handle, session_id)

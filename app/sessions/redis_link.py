"""How the Redis store reaches Redis: one server, a Sentinel-managed master, or a Cluster.

A link runs a script on the node that owns its first key, optionally followed on the same
connection by `WAIT n timeout` (one round trip: both go out in one pipeline), and says how
many replicas confirmed. Scripts and reads of one event-loop turn share a pipeline per
node (redis_batch.py). It owns the retry policy for connection errors, because the store's
writes are safe to repeat (see redis_scripts.py): on an error it drops the idle connections
(after a Redis restart they are all dead, and handing them out one by one is what made
requests fail for seconds after Redis was back), refreshes the cluster's slot map or the
Sentinel's master address, and tries again at once, then with a short backoff, for at most
`retry_seconds`. redis-py's own retries are off so that this is the one policy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Hashable, Iterator, Sequence
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
import redis.asyncio.connection
import redis.connection
from redis.asyncio.cluster import ClusterNode, RedisCluster
from redis.asyncio.retry import Retry
from redis.asyncio.sentinel import Sentinel
from redis.backoff import NoBackoff
from redis.exceptions import (
    AskError,
    BusyLoadingError,
    ClusterDownError,
    ConnectionError,
    NoScriptError,
    RedisClusterException,
    ResponseError,
    TimeoutError,
    TryAgainError,
)

from app.config import Settings
from app.sessions.redis_batch import Coalescer, Op, Reply
from app.sessions.redis_scripts import Script

log = logging.getLogger("peephole.sessions.redis")
T = TypeVar("T")

# Worth another try: the node went away, is starting, failed over, or moved the slot.
# (MovedError is an AskError; BusyLoadingError a ConnectionError.)
RETRYABLE: tuple[type[BaseException], ...] = (
    ConnectionError,
    TimeoutError,
    OSError,
    ClusterDownError,
    TryAgainError,
    AskError,
    BusyLoadingError,
    RedisClusterException,
)


class Call(NamedTuple):
    script: Script
    keys: Sequence[str]
    args: Sequence[Any]


def _no_retry() -> Retry:
    return Retry(NoBackoff(), 0)


# redis-py's connection modules: an error raised from inside them is the connection's.
_CONNECTION_CODE = (redis.asyncio.connection.__file__, redis.connection.__file__)


def _from_redis_connection(error: BaseException) -> bool:
    tb = error.__traceback__
    while tb is not None:
        if tb.tb_frame.f_code.co_filename in _CONNECTION_CODE:
            return True
        tb = tb.tb_next
    return False


@contextlib.contextmanager
def torn_connections_as_errors() -> Iterator[None]:
    """A connection closed under a call in flight (a failover refreshing the slot map while a
    pipeline is being sent) surfaces from inside redis-py's connection code as an
    AttributeError (its writer already None) or, on uvloop, a RuntimeError (the transport's
    handle closed): that is a lost connection, retried like one, not a 500. The same errors
    raised anywhere else are left alone."""
    try:
        yield
    except (AttributeError, RuntimeError) as e:
        if not _from_redis_connection(e):
            raise
        raise ConnectionError(f"connection closed under the call ({e})") from e


class Link:
    """The common part: the retry loop, the coalescer, a bound on connections in use.
    Subclasses route and send."""

    client: Any  # the redis-py client of the subclass

    def __init__(self, retry_seconds: float, wait_timeout_ms: int, connections: int = 64) -> None:
        self.retry_seconds = retry_seconds
        self.wait_timeout_ms = wait_timeout_ms
        # redis-py's pools refuse a call past max_connections (MaxConnectionsError); a burst
        # of requests should queue for a connection instead.
        self._slots = asyncio.Semaphore(connections)
        self._batch = Coalescer(self._group, self._pipeline, self._slots)

    async def _retrying(
        self, attempt: Callable[[], Awaitable[T]], key: str | None, hold: bool = True
    ) -> T:
        """`attempt` until it succeeds, a non-transient error, or retry_seconds; `hold`: take
        a connection slot around it (batched ops take theirs when their group is sent)."""
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.0
        loads = 0
        while True:
            try:
                with torn_connections_as_errors():
                    if not hold:
                        return await attempt()
                    async with self._slots:
                        return await attempt()
            except NoScriptError:
                # A restarted or promoted node has an empty script cache: loaded, go again.
                loads += 1
                if loads > 3:
                    raise
            except RETRYABLE as e:
                await self._recover(e, key)
                if time.monotonic() + delay > deadline:
                    raise
                log.debug("redis: %s: %s; retrying", type(e).__name__, e)
                await asyncio.sleep(delay)
                delay = min(max(2 * delay, 0.01), 0.1)

    async def _recover(self, error: BaseException, key: str | None) -> None:
        """Make the next attempt use fresh connections / a fresh topology."""

    async def eval(self, call: Call, wait: int = 0) -> tuple[Any, int | None]:
        """Run the script; with `wait`, then WAIT for that many replicas (the count they
        reached comes back, else None)."""
        args = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        op = Op(args, call.keys[0], wait, call.script)
        return await self._retrying(lambda: self._submit(op), op.key, hold=False)

    async def read(self, *args: Any, key: str) -> Any:
        """A read command (HGETALL) routed by `key`, batched like scripts."""
        op = Op(args, key, 0, None)
        reply, _ = await self._retrying(lambda: self._submit(op), key, hold=False)
        return reply

    async def _submit(self, op: Op) -> Reply:
        reply, acked = await self._batch.submit(op)
        if isinstance(reply, NoScriptError) and op.script is not None:
            async with self._slots:
                await self._load(op.script, op.key)
        if isinstance(reply, BaseException):
            raise reply
        return reply, acked

    def _replies(self, ops: Sequence[Op], results: list[Any]) -> list[Reply]:
        """Per op (its result, the replicas the group's WAIT reached if it waited)."""
        n = len(ops)
        if len(results) == n:
            return [(r, None) for r in results]
        acked = results[n]
        if isinstance(acked, BaseException):  # WAIT refused: the writes that waited fail
            return [(acked if op.wait else r, None) for op, r in zip(ops, results, strict=False)]
        return [(r, int(acked) if op.wait else None) for op, r in zip(ops, results, strict=False)]

    async def eval_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run scripts (no WAIT); issued in one turn, they share a pipeline per node."""
        return [r for r, _ in await asyncio.gather(*(self.eval(c) for c in calls))]

    async def command(self, *args: Any, key: str | None = None) -> Any:
        """A plain command (GET, SET) routed by `key`."""
        return await self._retrying(lambda: self._command(*args, key=key), key)

    async def ping(self) -> None:
        await self._retrying(self._ping, None)

    async def _group(self, ops: Sequence[Op]) -> list[tuple[Hashable, list[int]]]:
        return [(None, list(range(len(ops))))]

    async def _pipeline(self, target: Any, ops: Sequence[Op]) -> list[Reply]:
        raise NotImplementedError

    async def _load(self, script: Script, key: str) -> None:
        raise NotImplementedError

    async def _command(self, *args: Any, key: str | None) -> Any:
        return await self.client.execute_command(*args)

    async def _ping(self) -> None:
        raise NotImplementedError

    async def close(self) -> None:
        raise NotImplementedError


class SingleLink(Link):
    """One master: a plain server, or the one Sentinel names (its pool asks the sentinels
    for the master's address whenever it dials, so a failover is one reconnect)."""

    def __init__(
        self, client: aioredis.Redis, retry_seconds: float, wait_timeout_ms: int, connections: int
    ) -> None:
        super().__init__(retry_seconds, wait_timeout_ms, connections)
        self.client = client

    async def _recover(self, error: BaseException, key: str | None) -> None:
        with contextlib.suppress(Exception):
            await self.client.connection_pool.disconnect(inuse_connections=False)

    async def _load(self, script: Script, key: str) -> None:
        await self.client.script_load(script.source)

    async def _pipeline(self, target: Any, ops: Sequence[Op]) -> list[Reply]:
        wait = max(op.wait for op in ops)
        if len(ops) == 1 and not wait:  # a lone call: no pipeline to build
            try:
                return [(await self.client.execute_command(*ops[0].args), None)]
            except ResponseError as e:  # this call's own error (NOSCRIPT, ...), not the link's
                return [(e, None)]
        pipe = self.client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op.args)
        if wait:
            pipe.execute_command("WAIT", wait, self.wait_timeout_ms)
        return self._replies(ops, await pipe.execute(raise_on_error=False))

    async def _ping(self) -> None:
        await self.client.ping()

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


class ClusterLink(Link):
    """A Redis Cluster through redis-py's asyncio cluster client. The script and its WAIT
    are sent to the node that owns the key's slot on one connection (a cluster pipeline
    groups commands by node); a MOVED or a dead node refreshes the slot map and goes again."""

    def __init__(
        self, client: RedisCluster, retry_seconds: float, wait_timeout_ms: int, connections: int
    ) -> None:
        super().__init__(retry_seconds, wait_timeout_ms, connections)
        self.client = client

    async def _group(self, ops: Sequence[Op]) -> list[tuple[Hashable, list[int]]]:
        await self.client.initialize()
        groups: dict[str, tuple[ClusterNode, list[int]]] = {}
        for i, op in enumerate(ops):
            node = self.client.get_node_from_key(op.key)
            groups.setdefault(node.name, (node, []))[1].append(i)
        return list(groups.values())

    async def _recover(self, error: BaseException, key: str | None) -> None:
        with contextlib.suppress(Exception):
            if key is not None and isinstance(error, ConnectionError | TimeoutError | OSError):
                await self.client.get_node_from_key(key).disconnect_free_connections()
        with contextlib.suppress(Exception):
            await self.client.nodes_manager.initialize()

    async def _load(self, script: Script, key: str) -> None:
        await self.client.initialize()
        node = self.client.get_node_from_key(key)
        await self.client.execute_command("SCRIPT", "LOAD", script.source, target_nodes=node)

    async def _pipeline(self, target: Any, ops: Sequence[Op]) -> list[Reply]:
        pipe = self.client.pipeline(transaction=False)
        for op in ops:
            pipe.execute_command(*op.args, target_nodes=target)
        wait = max(op.wait for op in ops)
        if wait:
            pipe.execute_command("WAIT", wait, self.wait_timeout_ms, target_nodes=target)
        return self._replies(
            ops, await pipe.execute(raise_on_error=False, allow_redirections=False)
        )

    async def _ping(self) -> None:
        await self.client.initialize()
        await self.client.ping(target_nodes=RedisCluster.RANDOM)

    async def close(self) -> None:
        with contextlib.suppress(Exception):
            await self.client.aclose()


def _address(hostport: str) -> tuple[str, int]:
    host, _, port = hostport.rpartition(":")
    return host.strip("[]"), int(port)


def make_link(settings: Settings) -> Link:
    """The link PEEPHOLE_REDIS_MODE names, with redis-py's retries off (ours apply)."""
    timeouts: dict[str, Any] = dict(
        socket_connect_timeout=settings.redis_timeout_seconds,
        socket_timeout=settings.redis_timeout_seconds,
        retry=_no_retry(),
    )
    retry_s, wait_ms = settings.redis_retry_seconds, int(settings.redis_wait_timeout_seconds * 1000)
    if settings.redis_mode == "cluster":
        cluster = RedisCluster.from_url(
            settings.redis_url, max_connections=settings.redis_max_connections, **timeouts
        )
        return ClusterLink(cluster, retry_s, wait_ms, settings.redis_max_connections)
    if settings.redis_mode == "sentinel":
        from redis.asyncio.connection import parse_url

        kw: dict[str, Any] = {
            k: v for k, v in parse_url(settings.redis_url).items() if k not in ("host", "port")
        }
        if kw.pop("connection_class", None) is not None:  # rediss://: TLS to the master
            kw["ssl"] = True
        sentinel = Sentinel(  # type: ignore[no-untyped-call]
            [_address(a) for a in settings.redis_sentinels],
            sentinel_kwargs={
                "socket_connect_timeout": settings.redis_timeout_seconds,
                "socket_timeout": settings.redis_timeout_seconds,
            },
        )
        master = sentinel.master_for(
            settings.redis_master_name,
            max_connections=settings.redis_max_connections,
            **timeouts,
            **kw,
        )
        return SingleLink(master, retry_s, wait_ms, settings.redis_max_connections)
    client = aioredis.Redis.from_url(
        settings.redis_url, max_connections=settings.redis_max_connections, **timeouts
    )
    return SingleLink(client, retry_s, wait_ms, settings.redis_max_connections)

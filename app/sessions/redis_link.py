"""How the Redis store reaches Redis: one server, a Sentinel-managed master, or a Cluster.

A link runs a script on the node that owns its first key, optionally followed on the same
connection by `WAIT n timeout` (one round trip: both go out in one pipeline), and says how
many replicas confirmed. It owns the retry policy for connection errors, because the store's
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
from collections.abc import Awaitable, Callable, Sequence
from typing import Any, NamedTuple, TypeVar

import redis.asyncio as aioredis
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
    TimeoutError,
    TryAgainError,
)

from app.config import Settings
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


def _raise_errors(results: list[Any]) -> None:
    for r in results:
        if isinstance(r, BaseException):
            raise r


class Link:
    """The common part: the retry loop, and a bound on calls in flight. Subclasses send."""

    def __init__(self, retry_seconds: float, wait_timeout_ms: int, connections: int = 64) -> None:
        self.retry_seconds = retry_seconds
        self.wait_timeout_ms = wait_timeout_ms
        # redis-py's pools refuse a call past max_connections (MaxConnectionsError); a burst
        # of requests should queue for a connection instead.
        self._slots = asyncio.Semaphore(connections)

    async def _retrying(self, attempt: Callable[[], Awaitable[T]], key: str | None) -> T:
        deadline = time.monotonic() + self.retry_seconds
        delay = 0.0
        loads = 0
        while True:
            try:
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
        key = call.keys[0]
        return await self._retrying(lambda: self._eval(call, wait), key)

    async def eval_many(self, calls: Sequence[Call]) -> list[Any]:
        """Run scripts in as few round trips as the topology allows (reads: no WAIT)."""
        return await self._retrying(lambda: self._eval_many(calls), None)

    async def command(self, *args: Any, key: str | None = None) -> Any:
        """A plain command (GET, SET) routed by `key`."""
        return await self._retrying(lambda: self._command(*args, key=key), key)

    async def ping(self) -> None:
        await self._retrying(self._ping, None)

    async def _eval(self, call: Call, wait: int) -> tuple[Any, int | None]:
        raise NotImplementedError

    async def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        raise NotImplementedError

    async def _command(self, *args: Any, key: str | None) -> Any:
        raise NotImplementedError

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

    async def _load(self, results: list[Any], scripts: Sequence[Script]) -> None:
        missing = {s for s, r in zip(scripts, results, strict=True) if isinstance(r, NoScriptError)}
        for s in missing:
            await self.client.script_load(s.source)
        if missing:
            raise NoScriptError("loaded")

    async def _eval(self, call: Call, wait: int) -> tuple[Any, int | None]:
        args = ("EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args)
        if not wait:
            try:
                return await self.client.execute_command(*args), None
            except NoScriptError:
                await self.client.script_load(call.script.source)
                raise
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command(*args)
        pipe.execute_command("WAIT", wait, self.wait_timeout_ms)
        results = await pipe.execute(raise_on_error=False)
        await self._load(results[:1], [call.script])
        _raise_errors(results)
        return results[0], int(results[1])

    async def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        pipe = self.client.pipeline(transaction=False)
        for c in calls:
            pipe.execute_command("EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args)
        results = await pipe.execute(raise_on_error=False)
        await self._load(results, [c.script for c in calls])
        _raise_errors(results)
        return list(results)

    async def _command(self, *args: Any, key: str | None) -> Any:
        return await self.client.execute_command(*args)

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

    async def _node(self, key: str) -> ClusterNode:
        await self.client.initialize()
        return self.client.get_node_from_key(key)

    async def _recover(self, error: BaseException, key: str | None) -> None:
        with contextlib.suppress(Exception):
            if key is not None and isinstance(error, ConnectionError | TimeoutError | OSError):
                await self.client.get_node_from_key(key).disconnect_free_connections()
        with contextlib.suppress(Exception):
            await self.client.nodes_manager.initialize()

    async def _load(self, failed: list[tuple[Script, ClusterNode]]) -> None:
        for script, node in {(s, n.name): (s, n) for s, n in failed}.values():
            await self.client.execute_command("SCRIPT", "LOAD", script.source, target_nodes=node)
        if failed:
            raise NoScriptError("loaded")

    async def _eval(self, call: Call, wait: int) -> tuple[Any, int | None]:
        node = await self._node(call.keys[0])
        pipe = self.client.pipeline(transaction=False)
        pipe.execute_command(
            "EVALSHA", call.script.sha, len(call.keys), *call.keys, *call.args, target_nodes=node
        )
        if wait:
            pipe.execute_command("WAIT", wait, self.wait_timeout_ms, target_nodes=node)
        results = await pipe.execute(raise_on_error=False, allow_redirections=False)
        if isinstance(results[0], NoScriptError):
            await self._load([(call.script, node)])
        _raise_errors(results)
        return results[0], int(results[1]) if wait else None

    async def _eval_many(self, calls: Sequence[Call]) -> list[Any]:
        await self.client.initialize()
        pipe = self.client.pipeline(transaction=False)
        nodes = [self.client.get_node_from_key(c.keys[0]) for c in calls]
        for c, node in zip(calls, nodes, strict=True):
            pipe.execute_command(
                "EVALSHA", c.script.sha, len(c.keys), *c.keys, *c.args, target_nodes=node
            )
        results = await pipe.execute(raise_on_error=False, allow_redirections=False)
        await self._load(
            [
                (c.script, n)
                for c, n, r in zip(calls, nodes, results, strict=True)
                if isinstance(r, NoScriptError)
            ]
        )
        _raise_errors(results)
        return list(results)

    async def _command(self, *args: Any, key: str | None) -> Any:
        return await self.client.execute_command(*args)

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
        sentinel = Sentinel(
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

"""A connection closed under a call in flight is a lost connection, retried like one: found
as a 500 in the cluster failover test (`AttributeError: 'NoneType' object has no attribute
'writelines'`, and on uvloop `RuntimeError: ... the handler is closed`, both from inside
redis-py's connection code while the slot map was refreshed)."""

from __future__ import annotations

import asyncio

import pytest
import redis.asyncio as aioredis
import uvloop
from redis.exceptions import ConnectionError

from app.config import Settings
from app.sessions.redis_link import make_link, torn_connections_as_errors
from tests.live import RedisServer

pytestmark = pytest.mark.redis


async def _send_on_a_closed_connection() -> None:
    """What redis-py does when a pipeline goes out on a connection closed meanwhile: its
    writer is None (a real redis-py frame raises, nothing of ours in between)."""
    await aioredis.Connection()._send_packed_command([b"PING\r\n"])


def test_an_attribute_error_inside_redis_py_is_a_connection_error() -> None:
    torn = pytest.raises(ConnectionError, match="closed under the call")
    with torn as e, torn_connections_as_errors():
        asyncio.run(_send_on_a_closed_connection())
    assert isinstance(e.value.__cause__, AttributeError)


def test_a_transport_closed_under_the_call_is_a_connection_error(
    redis_server: RedisServer,
) -> None:
    """The other face of the same race, on uvloop (the server's loop): the connection is up,
    its transport is closed under it, and redis-py's write meets a closed handle."""

    async def go() -> None:
        conn = aioredis.Connection(host="127.0.0.1", port=redis_server.port)
        await conn.connect()
        assert conn._writer is not None
        conn._writer.transport.close()
        await asyncio.sleep(0)
        with torn_connections_as_errors():
            await conn._send_packed_command([b"PING\r\n"])

    with pytest.raises(ConnectionError, match="closed under the call") as e:
        uvloop.run(go())
    assert isinstance(e.value.__cause__, RuntimeError)


def test_an_attribute_error_of_ours_is_left_alone() -> None:
    with pytest.raises(AttributeError, match="no_such_field"), torn_connections_as_errors():
        _ = Settings(_env_file=None).no_such_field  # type: ignore[attr-defined]
    with pytest.raises(RuntimeError, match="ours"), torn_connections_as_errors():
        raise RuntimeError("ours")


def test_the_link_retries_a_call_whose_connection_was_torn(redis_server: RedisServer) -> None:
    settings = Settings(session_store="redis", redis_url=redis_server.url, _env_file=None)
    calls: list[str] = []

    async def go() -> object:
        link = make_link(settings)

        async def attempt() -> object:
            calls.append("attempt")
            if len(calls) == 1:
                await _send_on_a_closed_connection()
            return await link.client.ping()

        try:
            return await link._retrying(attempt, None)
        finally:
            await link.close()

    assert asyncio.run(go()) is True and calls == ["attempt", "attempt"]

"""`AsyncClient` and `AsyncSession`: the protocol of peephole/protocol.py run over asyncio
(httpx.AsyncClient for HTTP, websockets' asyncio client for a session's stream)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import (
    AsyncIterable,
    AsyncIterator,
    Callable,
    Generator,
    Iterable,
    Mapping,
    Sequence,
)
from types import TracebackType
from typing import Any, Literal, overload

import httpx
import numpy as np
from websockets.asyncio.client import ClientConnection, connect

from peephole.base import ClientBase, SessionBase
from peephole.protocol import (
    Call,
    Message,
    Op,
    Outcome,
    Outputs,
    Pause,
    Prediction,
    SessionInfo,
    State,
    Step,
    T,
)
from peephole.transport import (
    SocketBase,
    failure,
    message_reply,
    reply_of,
    request_headers,
    socket_outcome,
)


class _Socket(SocketBase):
    conn: ClientConnection | None = None

    async def exchange(self, text: str) -> Outcome:
        try:
            async with asyncio.timeout(self.endpoint.timeout):
                if self.conn is None:
                    self.connecting()
                    self.conn = await connect(self.url, **self.endpoint.ws_options())
                await self.conn.send(text)
                return message_reply(await self.conn.recv())
        except Exception as e:
            self.abort()
            if (outcome := socket_outcome(e)) is None:
                raise
            return outcome

    def abort(self) -> None:
        """Drop the connection at once: an answer still on its way must never be read as
        the answer to the next message."""
        if self.conn is not None:
            self.conn.transport.abort()
        self.conn, self.broken = None, True

    async def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                await self.conn.close()
            self.conn = None


class AsyncClient(ClientBase):
    """The asyncio twin of `Client`: the same API, awaitable. Share one per event loop."""

    def _start(self) -> None:
        e = self.endpoint
        self._http = httpx.AsyncClient(base_url=e.url, headers=dict(e.headers), timeout=e.timeout)

    async def run(self, op: Op[T], ws: _Socket | None = None) -> T:
        """Drive one protocol operation to its result over this client's transport."""
        outcome: Outcome = None
        try:
            while True:
                action = op.send(outcome)
                if isinstance(action, Pause):
                    await asyncio.sleep(action.seconds)
                    outcome = None
                elif isinstance(action, Message):
                    assert ws is not None, "a stream message outside a stream"
                    outcome = await ws.exchange(action.text)
                else:
                    outcome = await self._call(action)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    async def _call(self, call: Call) -> Outcome:
        try:
            r = await self._http.request(
                call.method, call.path, content=call.body, headers=request_headers(call)
            )
        except Exception as e:
            if (f := failure(e)) is None:
                raise
            return f
        return reply_of(r)

    # models and prediction

    async def models(self) -> list[dict[str, Any]]:
        """Every served model: `{"name", "versions", "default_version"}`."""
        return await self.run(self.protocol.models())

    async def model(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A model's public card (newest version unless `version`), with its `provider`."""
        return await self.run(self.protocol.model(name, version))

    @overload
    async def predict(
        self,
        name: str,
        inputs: Any,
        version: int | None = None,
        *,
        state: State | Sequence[State | None] | None = None,
        return_state: Literal[False] = False,
        return_internals: Literal[False] = False,
        return_sequences: bool = True,
    ) -> Outputs: ...
    @overload
    async def predict(
        self,
        name: str,
        inputs: Any,
        version: int | None = None,
        *,
        state: State | Sequence[State | None] | None = None,
        return_state: bool = False,
        return_internals: bool = False,
        return_sequences: bool = True,
    ) -> Outputs | Prediction: ...
    async def predict(self, name: str, inputs: Any, version: int | None = None, **kw: Any) -> Any:
        """As `Client.predict`."""
        return await self.run(self.protocol.predict(name, inputs, version, **kw))

    # sessions

    def session(
        self,
        model: str,
        version: int | None = None,
        ttl: int | None = None,
        *,
        keep: bool = False,
    ) -> Opening:
        """`async with client.session(...) as s` (deleted on exit unless `keep`), or
        `s = await client.session(...)`."""
        return Opening(self, lambda: self.protocol.create_session(model, version, ttl), keep)

    def restore(
        self,
        model: str,
        state: Mapping[str, Any],
        offset: int,
        version: int | None = None,
        ttl: int | None = None,
        *,
        keep: bool = False,
    ) -> Opening:
        """A new session that starts from an exported `state` at `offset`."""
        return Opening(
            self, lambda: self.protocol.create_session(model, version, ttl, state, offset), keep
        )

    def attach(self, session_id: str, *, keep: bool = True) -> Opening:
        """An existing session by id, at the offset the server holds."""
        return Opening(self, lambda: self.protocol.session(session_id), keep)

    async def aclose(self) -> None:
        await self._http.aclose()

    async def __aenter__(self) -> AsyncClient:
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()


class Opening:
    """A session being opened: await it, or use it as an async context manager."""

    def __init__(self, client: AsyncClient, op: Callable[[], Op[SessionInfo]], keep: bool) -> None:
        self._client, self._op, self._keep = client, op, keep
        self._session: AsyncSession | None = None

    async def _open(self) -> AsyncSession:
        return AsyncSession(self._client, await self._client.run(self._op()), self._keep)

    def __await__(self) -> Generator[Any, None, AsyncSession]:
        return self._open().__await__()

    async def __aenter__(self) -> AsyncSession:
        self._session = await self._open()
        return self._session

    async def __aexit__(self, *exc: Any) -> None:
        assert self._session is not None
        await self._session.__aexit__(*exc)


class AsyncSession(SessionBase[AsyncClient]):
    """The asyncio twin of `Session`."""

    @overload
    async def step(self, x: Any, *, return_internals: Literal[False] = False) -> np.ndarray: ...
    @overload
    async def step(self, x: Any, *, return_internals: Literal[True]) -> Step: ...
    async def step(self, x: Any, *, return_internals: bool = False) -> np.ndarray | Step:
        """Feed `x` [T, input_size]; its outputs [T, output_size], applied exactly once."""
        op = self.client.protocol.step(self.info, x, return_internals=return_internals)
        r = await self.client.run(op)
        return r if return_internals else r.outputs

    async def stream(
        self, chunks: Iterable[Any] | AsyncIterable[Any], *, return_internals: bool = False
    ) -> AsyncIterator[Any]:
        """Each chunk's outputs over one WebSocket, in order, each applied exactly once."""
        ws = _Socket(self.client.endpoint, self.stream_path, self.client.stats)
        try:
            async for x in _aiter(chunks):
                op = self.client.protocol.step(
                    self.info, x, return_internals=return_internals, stream=True
                )
                r = await self.client.run(op, ws)
                yield r if return_internals else r.outputs
        finally:
            await ws.close()

    async def state(self) -> State:
        """The exported state (name -> array), restorable with `client.restore`."""
        return await self.client.run(self.client.protocol.export(self.info))

    async def reset(self) -> AsyncSession:
        await self.client.run(self.client.protocol.reset(self.info))
        return self

    async def migrate(self, version: int) -> AsyncSession:
        """Move to another version of the model with the same state layout (see Session)."""
        await self.client.run(self.client.protocol.migrate(self.info, version))
        return self

    async def refresh(self) -> AsyncSession:
        await self.client.run(self.client.protocol.refresh(self.info))
        return self

    def fork(self, ttl: int | None = None, *, keep: bool = False) -> Opening:
        """A new session from this one's state and offset (`async with s.fork() as f`)."""
        return Opening(self.client, lambda: self.client.protocol.fork(self.info, ttl), keep)

    async def delete(self) -> None:
        await self.client.run(self.client.protocol.delete(self.info))

    async def __aenter__(self) -> AsyncSession:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.keep:
            return
        try:
            await self.client.run(self.client.protocol.delete(self.info, missing_ok=True))
        except Exception:
            if kind is None:
                raise


async def _aiter(chunks: Iterable[Any] | AsyncIterable[Any]) -> AsyncIterator[Any]:
    if isinstance(chunks, AsyncIterable):
        async for x in chunks:
            yield x
    else:
        for x in chunks:
            yield x

"""`Client` and `Session`: the protocol of peephole/protocol.py run over blocking I/O
(httpx.Client for HTTP, websockets' sync client for a session's stream)."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterable, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, Literal, overload

import httpx
import numpy as np
from websockets.sync.client import ClientConnection, connect

from peephole.base import ClientBase, SessionBase
from peephole.protocol import (
    Call,
    Message,
    Op,
    Outcome,
    Outputs,
    Pause,
    Prediction,
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

    def exchange(self, text: str) -> Outcome:
        try:
            if self.conn is None:
                self.connecting()
                # Entered as a context manager: the form every websockets version supports.
                self.conn = connect(self.url, **self.endpoint.ws_options()).__enter__()
            self.conn.send(text)
            return message_reply(self.conn.recv(timeout=self.endpoint.timeout))
        except Exception as e:
            self.abort()
            if (outcome := socket_outcome(e)) is None:
                raise
            return outcome

    def abort(self) -> None:
        """Drop the connection at once: an answer still on its way must never be read as
        the answer to the next message."""
        if self.conn is not None:
            with contextlib.suppress(OSError):
                self.conn.socket.shutdown(socket.SHUT_RDWR)
            with contextlib.suppress(Exception):
                self.conn.close()
        self.conn, self.broken = None, True

    def close(self) -> None:
        if self.conn is not None:
            with contextlib.suppress(Exception):
                self.conn.close()
            self.conn = None


class Client(ClientBase):
    """A blocking client of one Peephole server.

    `Client(url, api_key=None, timeout=30.0, retries=Retry())`: `timeout` bounds each attempt
    (seconds); `retries` is the retry policy (an int: that many retries with the default
    backoff). Thread-safe: share one per process. `stats` counts what was retried.
    """

    def _start(self) -> None:
        e = self.endpoint
        self._http = httpx.Client(base_url=e.url, headers=dict(e.headers), timeout=e.timeout)

    # running an operation

    def run(self, op: Op[T], ws: _Socket | None = None) -> T:
        """Drive one protocol operation to its result over this client's transport."""
        outcome: Outcome = None
        try:
            while True:
                action = op.send(outcome)
                if isinstance(action, Pause):
                    time.sleep(action.seconds)
                    outcome = None
                elif isinstance(action, Message):
                    assert ws is not None, "a stream message outside a stream"
                    outcome = ws.exchange(action.text)
                else:
                    outcome = self._call(action)
        except StopIteration as done:
            return done.value  # type: ignore[no-any-return]

    def _call(self, call: Call) -> Outcome:
        try:
            r = self._http.request(
                call.method, call.path, content=call.body, headers=request_headers(call)
            )
        except Exception as e:
            if (f := failure(e)) is None:
                raise
            return f
        return reply_of(r)

    # models and prediction

    def models(self) -> list[dict[str, Any]]:
        """Every served model: `{"name", "versions", "default_version"}`."""
        return self.run(self.protocol.models())

    def model(self, name: str, version: int | None = None) -> dict[str, Any]:
        """A model's public card (newest version unless `version`), with its `provider`."""
        return self.run(self.protocol.model(name, version))

    @overload
    def predict(
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
    def predict(
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
    def predict(self, name: str, inputs: Any, version: int | None = None, **kw: Any) -> Any:
        """Whole sequences: `inputs` [T, I] -> [T, O]; [B, T, I] -> [B, T, O]; a list of
        [T_b, I] arrays (a ragged batch) -> a list of [T_b, O]. With `return_state` or
        `return_internals`, a `Prediction` (outputs, state, internals)."""
        return self.run(self.protocol.predict(name, inputs, version, **kw))

    # sessions

    def session(
        self,
        model: str,
        version: int | None = None,
        ttl: int | None = None,
        *,
        keep: bool = False,
    ) -> Session:
        """A new streaming session (created now). As a context manager it is deleted on
        exit unless `keep`. `ttl`: idle seconds before the server forgets it."""
        return Session(self, self.run(self.protocol.create_session(model, version, ttl)), keep)

    def restore(
        self,
        model: str,
        state: Mapping[str, Any],
        offset: int,
        version: int | None = None,
        ttl: int | None = None,
        *,
        keep: bool = False,
    ) -> Session:
        """A new session that starts from an exported `state` at `offset`."""
        op = self.protocol.create_session(model, version, ttl, state, offset)
        return Session(self, self.run(op), keep)

    def attach(self, session_id: str, *, keep: bool = True) -> Session:
        """An existing session by id, at the offset the server holds (e.g. after a restart)."""
        return Session(self, self.run(self.protocol.session(session_id)), keep)

    def close(self) -> None:
        self._http.close()

    def __enter__(self) -> Client:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


class Session(SessionBase[Client]):
    """A streaming session: the server keeps the LSTM state; this object keeps the offset."""

    @overload
    def step(self, x: Any, *, return_internals: Literal[False] = False) -> np.ndarray: ...
    @overload
    def step(self, x: Any, *, return_internals: Literal[True]) -> Step: ...
    def step(self, x: Any, *, return_internals: bool = False) -> np.ndarray | Step:
        """Feed `x` [T, input_size]; its outputs [T, output_size], applied exactly once."""
        r = self.client.run(
            self.client.protocol.step(self.info, x, return_internals=return_internals)
        )
        return r if return_internals else r.outputs

    def stream(self, chunks: Iterable[Any], *, return_internals: bool = False) -> Iterator[Any]:
        """Each chunk's outputs over one WebSocket, in order, each chunk applied exactly once
        (a dropped socket is reopened and the unanswered chunk sent again)."""
        ws = _Socket(self.client.endpoint, self.stream_path, self.client.stats)
        try:
            for x in chunks:
                op = self.client.protocol.step(
                    self.info, x, return_internals=return_internals, stream=True
                )
                r = self.client.run(op, ws)
                yield r if return_internals else r.outputs
        finally:
            ws.close()

    def state(self) -> State:
        """The exported state (name -> array), restorable with `client.restore`."""
        return self.client.run(self.client.protocol.export(self.info))

    def reset(self) -> Session:
        """Back to offset 0 and the initial state."""
        self.client.run(self.client.protocol.reset(self.info))
        return self

    def migrate(self, version: int) -> Session:
        """Move to another version of the model with the same state layout, state and offset
        kept (IncompatibleVersion when the layouts differ); `s.version` then says it."""
        self.client.run(self.client.protocol.migrate(self.info, version))
        return self

    def refresh(self) -> Session:
        """Adopt the server's offset and expiry (after an OffsetConflict you understand)."""
        self.client.run(self.client.protocol.refresh(self.info))
        return self

    def fork(self, ttl: int | None = None, *, keep: bool = False) -> Session:
        """A new session from this one's state and offset; the two go on independently."""
        return Session(
            self.client, self.client.run(self.client.protocol.fork(self.info, ttl)), keep
        )

    def delete(self) -> None:
        self.client.run(self.client.protocol.delete(self.info))

    def __enter__(self) -> Session:
        return self

    def __exit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        if self.keep:
            return
        try:
            self.client.run(self.client.protocol.delete(self.info, missing_ok=True))
        except Exception:
            if kind is None:
                raise

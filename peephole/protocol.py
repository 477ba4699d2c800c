"""The protocol, written once for both clients: requests as data, offsets, retries, errors.

Every operation is a generator that yields what it needs done -- an HTTP call (`Call`), one
message on a session's WebSocket (`Message`), a pause (`Pause`) -- and is sent back the
outcome (`Reply` or `Failure`). `Client` and `AsyncClient` only run these generators over
their transport, so request building, offset bookkeeping, retries, reconciliation and error
mapping exist once, and the sync and async clients cannot drift apart.

Exactly-once steps rest on the server's offset rule: a chunk sent with the offset the
session stands at is applied; the same chunk sent again with the same offset (a retry of
the last applied chunk) returns the stored outputs without applying it twice; anything else
is 409 with the server's offset. So a step whose answer was lost (timeout, cut connection,
502/503/504, a replica dying mid-request) is simply sent again, byte for byte.
"""

from __future__ import annotations

import itertools
import json
import uuid
from collections.abc import Generator, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar
from urllib.parse import quote

import numpy as np

from peephole.errors import (
    IncompatibleVersion,
    InvalidInput,
    OffsetConflict,
    PeepholeError,
    Unavailable,
    error_for,
)
from peephole.retry import Retry, RetryStats

T = TypeVar("T")

# -- what an operation asks its transport to do, and what comes back ------------------------


@dataclass(frozen=True)
class Call:
    """One HTTP request (JSON body already encoded, so every retry sends the same bytes)."""

    method: str
    path: str
    body: bytes | None = None
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Message:
    """One text message on the session's WebSocket; the transport (re)connects as needed and
    returns the one message that answers it."""

    text: str


@dataclass(frozen=True)
class Pause:
    seconds: float


@dataclass(frozen=True)
class Reply:
    """A server's answer: HTTP status (a WebSocket message's `status`, 200 when absent),
    parsed JSON body, lower-case headers."""

    status: int
    body: Any
    headers: Mapping[str, str] = field(default_factory=dict)


@dataclass(frozen=True)
class Failure:
    """No answer: `reason` is a short tag ("timeout", "connection", "closed")."""

    reason: str
    detail: str


Action = Call | Message | Pause
Outcome = Reply | Failure | None
Op = Generator[Action, Outcome, T]

RETRY_STATUSES = frozenset({502, 503, 504})

# -- values the API hands out ---------------------------------------------------------------

State = dict[str, np.ndarray]
Internals = dict[str, Any]  # {"cell_states", "cell_outputs": [T, cells], "gates": {...}}
Outputs = np.ndarray | list[np.ndarray]


@dataclass(frozen=True)
class Prediction:
    """`predict(..., return_state=True / return_internals=True)`: outputs as `predict` returns
    them, plus the final state(s) and internals (each a dict for one sequence, a list for a
    batch; None when not asked for)."""

    outputs: Outputs
    state: State | list[State] | None = None
    internals: Internals | list[Internals] | None = None


@dataclass(frozen=True)
class Step:
    """`session.step(x, return_internals=True)`: the chunk's outputs and internals."""

    outputs: np.ndarray
    internals: Internals | None = None


@dataclass
class SessionInfo:
    """What the client knows of a session; `offset` is where it believes the session stands."""

    id: str
    model: str
    version: int
    offset: int
    ttl_seconds: int
    created_at: str
    expires_at: str

    @classmethod
    def of(cls, body: Mapping[str, Any]) -> SessionInfo:
        return cls(
            id=str(body["session_id"]),
            model=str(body["model"]),
            version=int(body["version"]),
            offset=int(body["offset"]),
            ttl_seconds=int(body.get("ttl_seconds") or 0),
            created_at=str(body.get("created_at", "")),
            expires_at=str(body.get("expires_at", "")),
        )

    @property
    def path(self) -> str:
        return f"/v1/sessions/{quote(self.id, safe='')}"


# -- encoding ------------------------------------------------------------------------------


def dumps(body: Any) -> str:
    try:
        return json.dumps(body, allow_nan=False, separators=(",", ":"))
    except ValueError:
        raise InvalidInput("inputs or state contain NaN or infinity") from None


def sequence(x: Any, what: str = "inputs") -> np.ndarray:
    """One sequence as a float array [time, input_size], refused here when it cannot be."""
    try:
        a = np.asarray(x, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise InvalidInput(f"{what} must be numbers: {e}") from None
    if a.ndim != 2 or a.shape[0] == 0:
        raise InvalidInput(f"{what} must be [time, input_size] with time >= 1, got {a.shape}")
    return a


def batch(inputs: Any) -> tuple[list[np.ndarray], str]:
    """(sequences, form): an array [T, I] is one sequence ("one"), [B, T, I] a batch
    ("stack"); a list or tuple is a ragged batch of [T_b, I] arrays ("list")."""
    if isinstance(inputs, list | tuple):
        if not inputs:
            raise InvalidInput("an empty batch")
        return [sequence(x, f"inputs[{b}]") for b, x in enumerate(inputs)], "list"
    a = np.asarray(inputs)
    if a.ndim == 3:
        return [sequence(x, f"inputs[{b}]") for b, x in enumerate(a)], "stack"
    return [sequence(a)], "one"


def encode_state(state: Mapping[str, Any]) -> dict[str, Any]:
    return {str(k): np.asarray(v, dtype=np.float64).tolist() for k, v in state.items()}


def decode_state(body: Mapping[str, Any]) -> State:
    return {k: np.asarray(v, dtype=np.float32) for k, v in body.items()}


def decode_internals(body: Mapping[str, Any]) -> Internals:
    out: Internals = {k: np.asarray(v, dtype=np.float32) for k, v in body.items() if k != "gates"}
    out["gates"] = {k: np.asarray(v, dtype=np.float32) for k, v in body["gates"].items()}
    return out


def model_path(name: str, version: int | str | None) -> str:
    path = f"/v1/models/{quote(name, safe='')}"
    return path if version is None else f"{path}/versions/{quote(str(version), safe='')}"


def _shape(values: list[Any], form: str) -> Any:
    if form == "one":
        return values[0]
    if form == "stack" and all(isinstance(v, np.ndarray) for v in values):
        return np.stack(values)
    return values


# -- the operations ------------------------------------------------------------------------


class Protocol:
    """The operations of the native API as generators; one per client (its policy, stats)."""

    def __init__(self, retry: Retry, stats: RetryStats | None = None) -> None:
        self.retry = retry
        self.stats = stats or RetryStats()

    def exchange(self, action: Call | Message, what: str) -> Op[tuple[Reply, int]]:
        """Send until a final answer: timeouts, dropped connections and 502/503/504 are
        retried with the same bytes, with backoff, within the budget. (reply, attempts)."""
        waited = 0.0
        for attempt in itertools.count():
            outcome = yield action
            if isinstance(outcome, Reply) and outcome.status not in RETRY_STATUSES:
                return outcome, attempt + 1
            assert outcome is not None
            if isinstance(outcome, Reply):
                reason, why = str(outcome.status), _detail(outcome)
                after: float | None = _retry_after(outcome.headers)
            else:
                reason, why, after = outcome.reason, outcome.detail, None
            delay = self.retry.delay(attempt, after)
            if attempt >= self.retry.retries or waited + delay > self.retry.budget:
                self.stats.count("gave_up")
                status = outcome.status if isinstance(outcome, Reply) else None
                raise Unavailable(f"{what}: {why} (gave up after {attempt + 1} attempts)", status)
            self.stats.count(reason)
            waited += delay
            yield Pause(delay)
        raise AssertionError("unreachable")

    def request(self, call: Call, what: str, ok: int = 200, *, session: bool = False) -> Op[Any]:
        """`exchange` for calls with nothing to reconcile: the body, or the typed error."""
        reply, _ = yield from self.exchange(call, what)
        if reply.status != ok:
            raise error_for(reply.status, reply.body, dict(reply.headers), session=session)
        return reply.body

    # models and prediction

    def models(self) -> Op[list[dict[str, Any]]]:
        body = yield from self.request(Call("GET", "/v1/models"), "list models")
        return list(body["models"])

    def model(self, name: str, version: int | str | None = None) -> Op[dict[str, Any]]:
        body = yield from self.request(Call("GET", model_path(name, version)), f"model {name}")
        return dict(body)

    def predict(
        self,
        name: str,
        inputs: Any,
        version: int | str | None = None,
        *,
        state: State | Sequence[State | None] | None = None,
        return_state: bool = False,
        return_internals: bool = False,
        return_sequences: bool = True,
    ) -> Op[Outputs | Prediction]:
        """Whole sequences. Pure on the server, so every failure is simply retried."""
        seqs, form = batch(inputs)
        body: dict[str, Any] = {"inputs": [x.tolist() for x in seqs]}
        if not return_sequences:
            body["return_sequences"] = False
        if state is not None:
            states = [state] if form == "one" else list(state)  # type: ignore[arg-type]
            if len(states) != len(seqs) or any(not isinstance(s, Mapping | None) for s in states):
                raise InvalidInput("state: one dict of arrays per sequence (or None)")
            body["state"] = [None if s is None else encode_state(s) for s in states]
        if return_state:
            body["return_state"] = True
        if return_internals:
            body["return_internals"] = True
        call = Call("POST", model_path(name, version) + "/predict", dumps(body).encode())
        out = yield from self.request(call, f"predict {name}")
        outputs = _shape([np.asarray(y, dtype=np.float32) for y in out["outputs"]], form)
        if not (return_state or return_internals):
            return outputs
        st = [decode_state(s) for s in out["state"]] if return_state else None
        ints = [decode_internals(i) for i in out["internals"]] if return_internals else None
        return Prediction(
            outputs,
            None if st is None else _shape(st, "one" if form == "one" else "list"),
            None if ints is None else _shape(ints, "one" if form == "one" else "list"),
        )

    # sessions

    def create_session(
        self,
        model: str,
        version: int | None = None,
        ttl: int | None = None,
        state: Mapping[str, Any] | None = None,
        offset: int | None = None,
    ) -> Op[SessionInfo]:
        """POST /v1/sessions with an Idempotency-Key that every retry of this create reuses,
        so that a retry whose first attempt was applied gets that session back (the server
        answers it with `Idempotent-Replayed: true`) instead of opening a second one. A server
        that ignores the key would leave the first session to expire after its TTL.
        """
        body: dict[str, Any] = {"model": model}
        if version is not None:
            body["version"] = version
        if ttl is not None:
            body["ttl_seconds"] = ttl
        if state is not None:
            body["state"] = encode_state(state)
            body["offset"] = offset or 0
        headers = {"Idempotency-Key": str(uuid.uuid4())}
        call = Call("POST", "/v1/sessions", dumps(body).encode(), headers)
        out = yield from self.request(call, f"create a session of {model}", ok=201)
        return SessionInfo.of(out)

    def session(self, session_id: str) -> Op[SessionInfo]:
        path = f"/v1/sessions/{quote(session_id, safe='')}"
        out = yield from self.request(Call("GET", path), f"session {session_id}", session=True)
        return SessionInfo.of(out)

    def refresh(self, info: SessionInfo) -> Op[SessionInfo]:
        """Adopt the server's view (offset, expiry): the explicit way out of an OffsetConflict."""
        fresh = yield from self.session(info.id)
        info.offset, info.expires_at = fresh.offset, fresh.expires_at
        return info

    def export(self, info: SessionInfo) -> Op[State]:
        """The session's state; refused (OffsetConflict) when it does not stand where this
        client believes, since that state would not belong to `info.offset`."""
        out = yield from self.request(
            Call("GET", info.path + "/state"), f"state of session {info.id}", session=True
        )
        if int(out["offset"]) != info.offset:
            raise _moved(info, int(out["offset"]), info.offset, "its state is not this offset's")
        return decode_state(out["state"])

    def fork(self, info: SessionInfo, ttl: int | None = None) -> Op[SessionInfo]:
        """A new session from this one's exported state at its offset (same model version)."""
        state = yield from self.export(info)
        ttl = ttl or info.ttl_seconds or None
        return (yield from self.create_session(info.model, info.version, ttl, state, info.offset))

    def migrate(self, info: SessionInfo, version: int) -> Op[SessionInfo]:
        """Pin the session to another version of its model, state and offset kept (a rolling
        model update). Idempotent: a retry finds the session already there."""
        call = Call("POST", info.path + "/migrate", dumps({"version": int(version)}).encode())
        reply, _ = yield from self.exchange(call, f"migrate session {info.id}")
        if reply.status == 409:
            body = reply.body if isinstance(reply.body, dict) else {}
            raise IncompatibleVersion(str(body.get("detail") or "HTTP 409"), 409, body)
        if reply.status != 200:
            raise error_for(reply.status, reply.body, dict(reply.headers), session=True)
        fresh = SessionInfo.of(reply.body)
        info.version, info.expires_at = fresh.version, fresh.expires_at
        return info

    def reset(self, info: SessionInfo) -> Op[SessionInfo]:
        """Back to offset 0 (idempotent, so retried freely)."""
        out = yield from self.request(
            Call("POST", info.path + "/reset"), f"reset session {info.id}", session=True
        )
        info.offset, info.expires_at = int(out["offset"]), str(out.get("expires_at", ""))
        return info

    def delete(self, info: SessionInfo, missing_ok: bool = False) -> Op[None]:
        """DELETE; a 404 after a retry means an earlier attempt deleted it: done."""
        reply, attempts = yield from self.exchange(
            Call("DELETE", info.path), f"delete session {info.id}"
        )
        if reply.status == 204 or (reply.status == 404 and (missing_ok or attempts > 1)):
            return None
        raise error_for(reply.status, reply.body, dict(reply.headers), session=True)

    def step(
        self,
        info: SessionInfo,
        x: Any,
        *,
        return_internals: bool = False,
        stream: bool = False,
    ) -> Op[Step]:
        """One chunk, applied exactly once: sent with `info.offset`, retried byte for byte.

        Reconciliation after a 409: the server's offset tells what happened. A chunk the
        server applied and whose answer was lost never gets here (its retry matches the
        server's last chunk and returns the stored outputs); every other case means the
        session was moved by someone else (another writer, a reset, a restore), and raises
        OffsetConflict saying where the server stands, with nothing applied by this call.
        """
        chunk = sequence(x)
        start = info.offset
        body: dict[str, Any] = {"inputs": chunk.tolist(), "offset": start}
        if return_internals:
            body["return_internals"] = True
        text = dumps(body)
        action: Call | Message = (
            Message(text) if stream else Call("POST", info.path + "/steps", text.encode())
        )
        what = f"step at offset {start} of session {info.id}"
        reply, attempts = yield from self.exchange(action, what)
        if reply.status == 409:
            server = reply.body.get("offset") if isinstance(reply.body, dict) else None
            raise _conflict(info, reply, server, start, len(chunk), attempts)
        if reply.status != 200:
            raise error_for(reply.status, reply.body, dict(reply.headers), session=True)
        end = int(reply.body["offset"])
        if end != start + len(chunk):  # the offset rule makes this impossible; never hide it
            raise PeepholeError(
                f"session {info.id}: a chunk of {len(chunk)} steps at offset {start} came back "
                f"at offset {end}; the server broke the offset rule",
                200,
                reply.body,
            )
        info.offset = end
        outputs = np.asarray(reply.body["outputs"], dtype=np.float32)
        ints = reply.body.get("internals")
        return Step(outputs, None if ints is None else decode_internals(ints))


def _detail(reply: Reply) -> str:
    body = reply.body
    detail = body.get("detail") if isinstance(body, dict) else None
    return f"HTTP {reply.status}" + (f": {detail}" if detail else "")


def _retry_after(headers: Mapping[str, str]) -> float | None:
    try:
        return float(headers["retry-after"])
    except (KeyError, ValueError):
        return None


def _moved(info: SessionInfo, server: int, client: int, what: str) -> OffsetConflict:
    return OffsetConflict(
        f"session {info.id} stands at offset {server}, this client at {client}: {what}; it was "
        "stepped, reset or restored elsewhere (session.refresh() adopts the server's offset)",
        None,
        offset=server,
        client_offset=client,
    )


def _conflict(
    info: SessionInfo, reply: Reply, server: Any, start: int, n: int, attempts: int
) -> OffsetConflict:
    """The clearest true statement about a 409 on a step, with the server's own words."""
    if not isinstance(server, int):
        return OffsetConflict(_detail(reply), 409, reply.body, client_offset=start)
    if attempts > 1 and server > start + n:
        what = (
            f"an earlier attempt of the chunk at {start} may have been applied before the "
            "session moved on, so its outputs cannot be returned"
        )
    else:
        what = f"the chunk of {n} steps at {start} was not applied"
    err = _moved(info, server, start, f"{what} ({_detail(reply)})")
    err.status_code, err.body = 409, reply.body
    return err

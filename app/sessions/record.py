"""A session as bytes, for stores that keep sessions outside the process (the lmdb store).

Two parts, so that the frequent small change (a read extends the session's life) does not
rewrite the large one:
- the head, 32 bytes: incarnation, revision, expiry (integer microseconds, also the key of the
  expiry index) and TTL; see `HEAD`;
- the body: model, version, offset, created_at, the state as float32 in the order of a layout
  (names and shapes, JSON) and the last chunk kept for retries (offset, digest, outputs as
  float32, internals as JSON).
Floats are stored exactly (float32 bytes), the layout once per record; decoding caches
parsed layouts, so the common case parses no JSON.
"""

from __future__ import annotations

import struct
from typing import Any

import numpy as np
import orjson

from app.errors import InvalidInput
from app.sessions.base import Session

# version, offset, last offset, created_at, flags, len(model), len(layout), len(digest),
# last outputs rows and columns, len(internals JSON)
_BODY = struct.Struct("<qQQdBHHBIIQ")
_HAS_LAST, _HAS_INTERNALS = 1, 2
_U64 = 1 << 64
_LAYOUTS: dict[bytes, list[tuple[str, tuple[int, ...], int]]] = {}  # layout JSON -> parsed


# The head: incarnation (random per create, so that a change read before a replace never lands
# after it), revision (+1 per write), expiry (integer microseconds) and TTL (seconds). A plain
# tuple: it is read and rebuilt on every access.
HEAD = struct.Struct("<QQQq")
Head = tuple[int, int, int, int]


def to_us(t: float) -> int:
    return int(t * 1_000_000)


def _u64(name: str, value: int) -> int:
    if not 0 <= value < _U64:
        raise InvalidInput(f"{name} {value} is out of range (0 to 2**64 - 1)")
    return value


def pack_body(s: Session) -> bytes:
    """The session's body (everything but the head)."""
    layout = orjson.dumps([[k, list(v.shape)] for k, v in s.state.items()])
    model = s.model.encode()
    arrays = [np.ascontiguousarray(v, np.float32).tobytes() for v in s.state.values()]
    flags, digest, rows, cols, last_offset, internals = 0, b"", 0, 0, 0, b""
    if s.last_offset is not None and s.last_outputs is not None:
        flags |= _HAS_LAST
        out = np.ascontiguousarray(s.last_outputs, np.float32)
        rows, cols = out.shape
        arrays.append(out.tobytes())
        digest = (s.last_digest or "").encode()
        last_offset = _u64("offset", s.last_offset)
        if s.last_internals is not None:
            flags |= _HAS_INTERNALS
            internals = orjson.dumps(s.last_internals, option=orjson.OPT_SERIALIZE_NUMPY)
    head = _BODY.pack(
        s.version, _u64("offset", s.offset), last_offset, s.created_at, flags, len(model),
        len(layout), len(digest), rows, cols, len(internals),
    )  # fmt: skip
    return b"".join([head, model, layout, digest, *arrays, internals])


def _layout(raw: bytes) -> list[tuple[str, tuple[int, ...], int]]:
    found = _LAYOUTS.get(raw)
    if found is None:
        found = []
        for name, shape in orjson.loads(raw):
            n = 1
            for d in shape:
                n *= d
            found.append((name, tuple(shape), n))
        if len(_LAYOUTS) < 4096:
            _LAYOUTS[raw] = found
    return found


def unpack(session_id: str, head: Head, body: bytes) -> Session:
    """A Session (writable arrays of its own) from a head and a body."""
    _, _, expires_us, ttl = head
    (version, offset, last_offset, created, flags, n_model, n_layout, n_digest, rows, cols,
     n_internals) = _BODY.unpack_from(body)  # fmt: skip
    at = _BODY.size
    model = body[at : at + n_model].decode()
    at += n_model
    layout = _layout(body[at : at + n_layout])
    at += n_layout
    digest = body[at : at + n_digest].decode()
    at += n_digest
    n_floats = sum(n for _, _, n in layout) + rows * cols
    floats = np.frombuffer(body, np.float32, n_floats, at).copy()
    at += 4 * n_floats
    state: dict[str, np.ndarray] = {}
    k = 0
    for name, shape, n in layout:
        state[name] = floats[k : k + n].reshape(shape)
        k += n
    s = Session(
        session_id=session_id, model=model, version=version, ttl_seconds=ttl, state=state,
        offset=offset, created_at=created, expires_at=expires_us / 1e6,
    )  # fmt: skip
    if flags & _HAS_LAST:
        s.last_offset, s.last_digest = last_offset, digest or None
        s.last_outputs = floats[k : k + rows * cols].reshape(rows, cols)
        if flags & _HAS_INTERNALS:
            internals: dict[str, Any] = orjson.loads(body[at : at + n_internals])
            s.last_internals = internals
    return s

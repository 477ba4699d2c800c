"""A Session as the fields of a Redis hash: the state and the last chunk's outputs as raw
float32 bytes (compact, exact), the rest as short strings. Revision, times and expiry are
the scripts' to write (redis_scripts.py)."""

from __future__ import annotations

import secrets

import numpy as np
import orjson

from app.sessions.base import Session


def new_revision() -> str:
    """A fresh revision: random, so never reused (an integer, as the first release's HINCRBY
    needs while both releases run during a rolling update)."""
    return str(secrets.randbits(62))


def _pack_array(a: np.ndarray) -> tuple[bytes, bytes]:
    a = np.ascontiguousarray(a, dtype=np.float32)
    return a.tobytes(), orjson.dumps(list(a.shape))


def _unpack_array(data: bytes, shape: bytes) -> np.ndarray:
    return np.frombuffer(data, dtype=np.float32).reshape(orjson.loads(shape)).copy()


def encode(s: Session) -> list[bytes | str | int]:
    """The session's fields as a flat HSET argument list."""
    out: list[bytes | str | int] = [
        "model", s.model, "version", s.version, "ttl", s.ttl_seconds * 1000, "offset", s.offset,
        "state_names", orjson.dumps(list(s.state)),
    ]  # fmt: skip
    for name, value in s.state.items():
        data, shape = _pack_array(value)
        out += [f"state:{name}", data, f"shape:{name}", shape]
    if s.last_offset is not None and s.last_outputs is not None:
        data, shape = _pack_array(s.last_outputs)
        out += ["last_offset", s.last_offset, "last_digest", s.last_digest or "",
                "last_outputs", data, "last_shape", shape]  # fmt: skip
        if s.last_internals is not None:
            blob = orjson.dumps(s.last_internals, option=orjson.OPT_SERIALIZE_NUMPY)
            out += ["last_internals", blob]
    return out


def as_fields(encoded: list[bytes | str | int]) -> dict[str, bytes | str | int]:
    return dict(zip(encoded[::2], encoded[1::2], strict=True))  # type: ignore[arg-type]


def changes(
    new: dict[str, bytes | str | int], old: dict[str, bytes | str | int]
) -> tuple[list[bytes | str | int], list[str]]:
    """(field/value pairs that differ from `old`, fields of `old` that `new` lacks): what a
    write sends when the hash is known to hold `old` (its revision matched)."""
    flat: list[bytes | str | int] = []
    for k, v in new.items():
        if old.get(k) != v:
            flat += [k, v]
    return flat, [k for k in old if k not in new]


def pairs(raw: list[bytes]) -> dict[bytes, bytes]:
    return dict(zip(raw[::2], raw[1::2], strict=True))


def decode(session_id: str, h: dict[bytes, bytes]) -> tuple[Session, str]:
    """A Session and its revision from the hash."""
    names: list[str] = orjson.loads(h[b"state_names"])
    state = {n: _unpack_array(h[f"state:{n}".encode()], h[f"shape:{n}".encode()]) for n in names}
    s = Session(
        session_id=session_id,
        model=h[b"model"].decode(),
        version=int(h[b"version"]),
        ttl_seconds=int(h[b"ttl"]) // 1000,
        state=state,
        offset=int(h[b"offset"]),
        created_at=int(h[b"created_at"]) / 1000,
        expires_at=int(h[b"expires_at"]) / 1000,
    )
    if b"last_offset" in h:
        s.last_offset = int(h[b"last_offset"])
        s.last_digest = h[b"last_digest"].decode() or None
        s.last_outputs = _unpack_array(h[b"last_outputs"], h[b"last_shape"])
        if b"last_internals" in h:
            s.last_internals = orjson.loads(h[b"last_internals"])
    return s, h[b"rev"].decode()

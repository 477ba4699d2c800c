"""Sessions of one layout as columns, so that a live session costs its state, not Python objects.

A `SessionTable` holds the sessions of one layout -- model, version, state names and shapes --
by row: each state tensor is one float32 array `[rows, *shape]`, each field one numpy column,
all grown together (doubling) and rows reused once freed. Nothing per session is a Python
object except its key in the store's index, so a million sessions are a few arrays to the
garbage collector instead of millions of objects. A `Session` is built on access (`read`) and
written back field by field (`write`).

Within `locked()`, the working copy's `state` is a `RowState`: the row itself, copied out only
when a tensor is asked for. Its `batch()` is a `StateRows`, which the batcher gathers by row
index together with the other sessions of the batch (one copy per tensor for the whole batch,
app/inference/batcher.py) instead of copying each session's state out and then into the batch.

The last chunk (kept so that a retry is answered, not applied twice) goes into columns in the
common case -- one time step of outputs, a sha256 hex digest, no internals -- and into the
`_aside` dict otherwise (several steps, internals, another digest form).

Expiry: a heap of ints `ms << 32 | row`, ms being an expiry in milliseconds since the table's
epoch, holds every row at or before its expiry (each row's entry is for the expiry in
`_indexed`; an entry of another millisecond is stale). A touch that moves an expiry later,
the usual case, changes nothing in the heap: when the entry comes up, the row goes back in at
its actual expiry -- once per TTL for a busy session instead of once per use. Only a move
earlier than the entry (a replace with a shorter TTL, a clock stepped back) pushes a new
entry. So the heap holds about one entry per row, the soonest expiry is O(log n) to find, and
the expired rows come out soonest first.
"""

from __future__ import annotations

import heapq
import math
from array import array
from collections.abc import Hashable, Iterator, Mapping
from typing import Any

import numpy as np

from app.sessions.base import Session

Layout = tuple[tuple[str, tuple[int, ...]], ...]  # state names and shapes, in order
_ROW = (1 << 32) - 1
_NEVER = math.inf  # `_indexed` of a row without a heap entry
_IN_COLUMNS, _ASIDE = 1, 2  # `_flags`: where the last chunk is (0: there is none)
_DIGEST = 32  # bytes of a sha256 digest, which base.inputs_digest gives as 64 hex characters
# Per row: expiry and creation (s), TTL (s), offset, the last chunk's offset, the expiry its
# heap entry was made for (s; inf: none), where its last chunk is, and the chunk's digest.
_FIELDS = {"expires": "f8", "created": "f8", "ttl": "i8", "offset": "i8", "last_offset": "i8",
           "indexed": "f8", "flags": "u1", "digest": f"({_DIGEST},)u1"}  # fmt: skip


def layout_of(s: Session) -> Layout:
    return tuple((name, tuple(v.shape)) for name, v in s.state.items())


class StateRows(Mapping[str, np.ndarray]):
    """Some rows' states, `[len(rows), *shape]` per tensor when read: what the batcher gathers
    for a whole batch at once when every call's states share `arrays`. One row reads as a view
    of it: only a run reads it, while its session is locked (nothing else writes the row)."""

    __slots__ = ("arrays", "rows")

    def __init__(self, arrays: dict[str, np.ndarray], rows: list[int]) -> None:
        self.arrays = arrays  # name -> [capacity, *shape] (a table's, as of now)
        self.rows = rows

    def __getitem__(self, name: str) -> np.ndarray:
        rows = self.rows
        if len(rows) == 1:
            return self.arrays[name][rows[0] : rows[0] + 1]
        return self.arrays[name][rows]

    def __iter__(self) -> Iterator[str]:
        return iter(self.arrays)

    def __len__(self) -> int:
        return len(self.arrays)


class RowState(Mapping[str, np.ndarray]):
    """A session's state in its row, as `locked()` yields it: a tensor is copied out when first
    asked for, and that copy (the caller's to change in place) is what is written back."""

    __slots__ = ("_table", "_row", "copies")

    def __init__(self, table: SessionTable, row: int) -> None:
        self._table, self._row = table, row
        self.copies: dict[str, np.ndarray] | None = None  # (made when first needed)

    def __getitem__(self, name: str) -> np.ndarray:
        copies = self.copies
        if copies is None:
            copies = self.copies = {}
        v = copies.get(name)
        if v is None:
            v = copies[name] = self._table._states[name][self._row].copy()
        return v

    def __iter__(self) -> Iterator[str]:
        return iter(self._table._states)

    def __len__(self) -> int:
        return len(self._table._states)

    def batch(self) -> Mapping[str, np.ndarray]:
        """The state as a batch of one, `[1, *shape]` per tensor, for the runner."""
        if self.copies:  # (perhaps changed in place: those copies are the state now)
            return {k: v[None] for k, v in self.items()}
        return StateRows(self._table._states, [self._row])

    def detach(self) -> dict[str, np.ndarray]:
        """Every tensor as a copy of its own: for a Session that outlives the lock."""
        return {k: self[k] for k in self._table._states}


def _view(column: np.ndarray) -> Any:
    """A memoryview of a column (`ndarray.data`): its items are Python floats and ints, which
    typeshed's memoryview, typed for bytes, cannot say."""
    return column.data


class SessionTable:
    """The sessions of one layout, by row (see the module doc). No checks of ids or expiry
    here: the store (app/sessions/memory.py) owns the index, the locks and the rules.

    Scalar fields are read and written through memoryviews of their numpy columns: a Python
    float or int straight from the buffer, several times cheaper than numpy's scalar access."""

    def __init__(
        self, model: str, version: int, layout: Layout, epoch: float, rows: int = 1024
    ) -> None:
        self.model, self.version, self.layout, self.epoch = model, version, layout, epoch
        self.live = 0
        self._cap = 0
        self._used = 0  # rows ever handed out; those below it that are free are in `_free`
        self._free = array("q")
        self._keys: list[Hashable | None] = []  # row -> its key in the store's index
        self._states = {name: np.empty((0, *shape), np.float32) for name, shape in layout}
        self._columns = {name: np.empty(0, dtype) for name, dtype in _FIELDS.items()}
        self._out: np.ndarray | None = None  # [rows, output size]: one step's outputs
        self._aside: dict[int, tuple[str | None, np.ndarray, dict[str, Any] | None]] = {}
        self._heap: list[int] = []
        self._grow(rows)

    # -- rows ----------------------------------------------------------------------------------

    def _grow(self, rows: int) -> None:
        def grown(a: np.ndarray, fill: float = 0) -> np.ndarray:
            b = np.full((rows, *a.shape[1:]), fill, a.dtype)
            b[: self._cap] = a[: self._cap]
            return b

        self._states = {name: grown(a) for name, a in self._states.items()}
        c = self._columns = {k: grown(a, _NEVER if k == "indexed" else 0)
                             for k, a in self._columns.items()}  # fmt: skip
        self.expires, self._created = _view(c["expires"]), _view(c["created"])
        self._ttl, self._offset = _view(c["ttl"]), _view(c["offset"])
        self._last_offset, self._indexed = _view(c["last_offset"]), _view(c["indexed"])
        self._flags = _view(c["flags"])
        self._digest = _view(c["digest"]).cast("B")  # row r: bytes [32 r, 32 r + 32)
        if self._out is not None:
            self._out = grown(self._out)
        self._keys.extend([None] * (rows - self._cap))
        self._cap = rows

    def add(self, key: Hashable, s: Session) -> int | None:
        """A row for `s`, its expiry indexed; None (nothing stored) if `s` does not fit."""
        if not self._fits(s):
            return None
        if self._free:
            row = self._free.pop()
        else:
            if self._used == self._cap:
                self._grow(2 * self._cap)
            row = self._used
            self._used += 1
        self._keys[row] = key
        self._created[row] = s.created_at
        self._write(row, s)
        self.extend(row, s.expires_at)
        self.live += 1
        return row

    def remove(self, row: int) -> None:
        """Free the row (its heap entry goes when it comes up, or serves the row's next user)."""
        self._keys[row] = None
        if self._flags[row] == _ASIDE:
            del self._aside[row]
        self._flags[row] = 0
        self.expires[row] = 0.0  # (so that `count_live` needs no look at the keys)
        self._free.append(row)
        self.live -= 1

    def count_live(self, at: float) -> int:
        """Rows whose session still lives at `at`: one pass over the expiry column."""
        return int(np.count_nonzero(self._columns["expires"][: self._used] > at))

    def key(self, row: int) -> Hashable | None:
        return self._keys[row]

    def _fits(self, s: Session) -> bool:
        """Whether `s` has this table's model, version and state layout."""
        st = s.state
        if type(st) is RowState:
            return st._table is self and s.model == self.model and s.version == self.version
        if s.model != self.model or s.version != self.version or len(st) != len(self.layout):
            return False
        for name, shape in self.layout:
            v = st.get(name)
            if v is None or v.shape != shape:
                return False
        return True

    def read(self, row: int, session_id: str, lazy: bool = False) -> Session:
        """The session in `row` as a Session whose state arrays are its own (`lazy`: a
        RowState, copied out on demand)."""
        flags = self._flags[row]
        last_offset = digest = outputs = internals = None
        if flags:
            last_offset = self._last_offset[row]
            if flags == _IN_COLUMNS:
                digest = self._digest[_DIGEST * row : _DIGEST * row + _DIGEST].hex()
                assert self._out is not None
                outputs = self._out[row : row + 1].copy()
            else:  # kept aside; shared like any store's last chunk (never changed in place)
                digest, outputs, internals = self._aside[row]
        s = object.__new__(Session)
        s.__dict__ = {
            "session_id": session_id, "model": self.model, "version": self.version,
            "ttl_seconds": self._ttl[row],
            "state": RowState(self, row) if lazy else
                     {name: a[row].copy() for name, a in self._states.items()},
            "offset": self._offset[row], "created_at": self._created[row],
            "expires_at": self.expires[row], "last_offset": last_offset,
            "last_digest": digest, "last_outputs": outputs, "last_internals": internals,
        }  # fmt: skip
        return s

    def write(self, row: int, s: Session) -> bool:
        """Store what a change may alter -- state, offset, TTL, the last chunk -- from `s`;
        not its expiry (`extend` does that). False, with nothing written, if `s` does not fit."""
        if not self._fits(s):
            return False
        self._write(row, s)
        return True

    def _write(self, row: int, s: Session) -> None:
        st = s.state
        if type(st) is RowState:  # unchanged but for the tensors copied out
            st = st.detach() if st._row != row else st.copies or {}
        for name, v in st.items():
            self._states[name][row] = v
        self._offset[row] = s.offset
        self._ttl[row] = s.ttl_seconds
        if self._aside and self._flags[row] == _ASIDE:
            del self._aside[row]
        y = s.last_outputs
        if s.last_offset is None or y is None:
            self._flags[row] = 0
            return
        self._last_offset[row] = s.last_offset
        digest = s.last_digest
        raw = hex_bytes(digest) if digest is not None and len(digest) == 2 * _DIGEST else None
        if raw is not None and s.last_internals is None and y.ndim == 2 and y.shape[0] == 1:
            if self._out is None:
                self._out = np.zeros((self._cap, y.shape[1]), np.float32)
            if self._out.shape[1] == y.shape[1]:
                self._flags[row] = _IN_COLUMNS
                self._digest[_DIGEST * row : _DIGEST * row + _DIGEST] = raw
                self._out[row] = y[0]
                return
        self._flags[row] = _ASIDE
        self._aside[row] = (digest, np.array(y, np.float32), s.last_internals)

    # -- expiry --------------------------------------------------------------------------------

    def _ms(self, t: float) -> int:
        return math.floor((t - self.epoch) * 1000)

    def extend(self, row: int, expires: float) -> None:
        """Set the row's expiry, keeping its heap entry at or before it."""
        self.expires[row] = expires
        if expires < self._indexed[row]:
            self._indexed[row] = expires
            heapq.heappush(self._heap, self._ms(expires) << 32 | row)
            if len(self._heap) > 2 * self._used + 1024:
                self._rebuild()

    def index(self, row: int) -> None:
        """Make sure the row has a heap entry (at or before its expiry)."""
        self.extend(row, self.expires[row])

    def _rebuild(self) -> None:
        """One entry per live row (stale ones outnumbered them): a sorted list is a heap."""
        rows = np.array([r for r, k in enumerate(self._keys[: self._used]) if k is not None],
                        np.int64)  # fmt: skip
        expires = self._columns["expires"][rows]
        ms = np.floor((expires - self.epoch) * 1000).astype(np.int64)
        self._columns["indexed"][:] = _NEVER
        self._columns["indexed"][rows] = expires
        order = np.lexsort((rows, ms))  # (entries are Python ints: ms << 32 may pass 2**63)
        pairs = zip(ms[order].tolist(), rows[order].tolist(), strict=True)
        self._heap = [m << 32 | r for m, r in pairs]

    def _first(self, at_ms: int | None) -> int | None:
        """The row of the heap's first entry that is current and not merely extended, if its
        time is at most `at_ms` (None: any); stale, freed and extended entries met on the way
        are dropped or moved to the row's actual expiry."""
        heap, indexed = self._heap, self._indexed
        while heap:
            first = heap[0]
            row, ms = first & _ROW, first >> 32
            if at_ms is not None and ms > at_ms:
                return None
            at = indexed[row]
            if at == _NEVER or self._ms(at) != ms:  # stale
                heapq.heappop(heap)
            elif self._keys[row] is None:  # freed since
                heapq.heappop(heap)
                indexed[row] = _NEVER
            else:
                expires = self.expires[row]
                actual = self._ms(expires)
                if actual == ms:
                    return row
                indexed[row] = expires  # extended since: back in at its actual expiry
                heapq.heapreplace(heap, actual << 32 | row)
        return None

    def soonest(self) -> float | None:
        """The soonest expiry of a live row (to the millisecond), None when there is none."""
        row = self._first(None)
        return None if row is None else self.expires[row]

    def pop_expired(self, at: float) -> int | None:
        """A row expired at `at`, soonest first, its heap entry removed; None when there is
        none (a row expiring later within the same millisecond ends the search)."""
        row = self._first(self._ms(at))
        if row is None or self.expires[row] > at:
            return None
        heapq.heappop(self._heap)
        self._indexed[row] = _NEVER
        return row

    # -- what it costs -------------------------------------------------------------------------

    def footprint(self) -> dict[str, int]:
        """Bytes held, by part (arrays at their capacity; internals kept aside not counted)."""
        import sys

        aside = sys.getsizeof(self._aside) + sum(
            sys.getsizeof(v) + sys.getsizeof(v[0]) + sys.getsizeof(v[1]) + sys.getsizeof(row)
            for row, v in self._aside.items()
        )
        return {
            "state": sum(a.nbytes for a in self._states.values()),
            "fields": sum(a.nbytes for a in self._columns.values()) + sys.getsizeof(self._free),
            "last outputs (one step)": 0 if self._out is None else self._out.nbytes,
            "last chunks aside": aside,
            "row keys": sys.getsizeof(self._keys),
            "expiry heap": sys.getsizeof(self._heap) + sum(sys.getsizeof(e) for e in self._heap),
        }


def hex_bytes(text: str) -> bytes | None:
    """The bytes that `text` writes in lowercase hex (bytes.hex() gives it back), else None."""
    try:
        raw = bytes.fromhex(text)
    except ValueError:  # not hex (fromhex also refuses any non-ASCII character)
        return None
    # fromhex skips whitespace and reads A-F too: the length and the case rule those out
    return raw if 2 * len(raw) == len(text) and (text.islower() or text.isdigit()) else None

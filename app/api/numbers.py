"""Large JSON number arrays read into float32 without a Python object per number.

orjson turns `[[0.1], [0.2], ...]` into one list and one float object per number: 60 to 100
bytes for every 4 to 10 bytes of text, in small blocks the allocator seldom gives back to the
system. For a large body, `split_numbers` finds each object member whose value is an array of
numbers of at least MIN_SPAN bytes (`"inputs": [...]`, `"data": [...]`) and reads it in
chunks of CHUNK bytes: numpy checks the brackets and commas and counts the lists at every
depth, orjson reads each chunk's numbers as one flat list that is turned into float32 and
dropped before the next chunk. orjson then parses the rest of the body, with a placeholder
string in place of each array, which `substitute` swaps for a `NumberArray`.

Whatever this module is not sure of (a character that is not part of a number array,
numbers at different depths, a chunk orjson refuses) stays in the body for orjson to parse,
so a body means exactly what it means to orjson; only the memory differs. The codecs accept
a `NumberArray` wherever they accept nested lists of numbers, with the same checks.
"""

from __future__ import annotations

import secrets
from dataclasses import dataclass
from typing import Any

import numpy as np
import orjson

MIN_SPAN = 32 * 1024  # smaller arrays cost little as Python objects: orjson keeps them
CHUNK = 256 * 1024  # bytes of array text read at a time (bounds the temporaries)
MAX_DEPTH = 32  # deeper nesting is no tensor of ours: left to orjson
# Float64 values that round to a finite float32: below 2**128 * (1 - 2**-25).
FLOAT32_LIMIT = 2.0**128 * (1 - 2.0**-25)

# Character classes of array text, and which token may follow which.
BAD, OPEN, CLOSE, COMMA, NUM, WS = 0, 1, 2, 3, 4, 5
START = 0  # the "token" before the first one (same slot as BAD: nothing follows a BAD)
_CLASS = np.zeros(256, np.uint8)
_CLASS[ord("[")], _CLASS[ord("]")], _CLASS[ord(",")] = OPEN, CLOSE, COMMA
for _c in b"0123456789+-.eE":
    _CLASS[_c] = NUM
for _c in b" \t\r\n":
    _CLASS[_c] = WS
_FOLLOWS = np.zeros((5, 5), bool)  # _FOLLOWS[previous kind, kind]
_FOLLOWS[START, OPEN] = True
_FOLLOWS[OPEN, [OPEN, CLOSE, NUM]] = True
_FOLLOWS[CLOSE, [CLOSE, COMMA]] = True
_FOLLOWS[COMMA, [OPEN, NUM]] = True
_FOLLOWS[NUM, [CLOSE, COMMA]] = True


def _flat_list(raw: np.ndarray, is_num: np.ndarray, begins: np.ndarray) -> bytes:
    """The chunk's numbers as the text of one flat JSON list: `[n1,n2,...]`."""
    chars = raw[is_num]
    first = begins[is_num]
    out = np.full(chars.size + int(first.sum()) + 1, ord(","), np.uint8)
    out[0] = ord("[")
    out[np.arange(chars.size) + np.cumsum(first)] = chars
    out[-1] = ord("]")
    return out.tobytes()


@dataclass(slots=True, eq=False)
class Level:
    """How many children each list at one depth has, in document order."""

    lists: int  # lists at this depth
    same: int | None  # the count, when every list has the same one
    counts: np.ndarray | None  # else each list's count (int64)

    def all(self) -> np.ndarray:
        if self.counts is not None:
            return self.counts
        return np.full(self.lists, self.same, np.int64)


@dataclass(slots=True, eq=False)
class NumberArray:
    """A JSON array whose leaves are all numbers, all at one depth, read as float32."""

    values: np.ndarray  # float32, every number in document order
    depth: int  # depth of every number: 1 for a flat list
    levels: list[Level]  # levels[k]: children of each list at depth k + 1
    finite: bool  # every value finite in float32
    nbytes_text: int  # length of the array's text in the body

    def __len__(self) -> int:
        return int(self.levels[0].all()[0])


class _LevelBuilder:
    __slots__ = ("lists", "same", "parts")

    def __init__(self) -> None:
        self.lists = 0
        self.same: int | None = None
        self.parts: list[np.ndarray] | None = None  # set once counts differ

    def add(self, counts: np.ndarray) -> None:
        if not counts.size:
            return
        if self.parts is None:
            first = int(counts[0]) if self.same is None else self.same
            if bool((counts == first).all()):
                self.same = first
                self.lists += counts.size
                return
            self.parts = [np.full(self.lists, first, np.int64)] if self.lists else []
        self.parts.append(counts.astype(np.int64))
        self.lists += counts.size

    def level(self) -> Level:
        if self.parts is None:
            return Level(self.lists, self.same if self.same is not None else 0, None)
        return Level(self.lists, None, np.concatenate(self.parts))


def _cut(text: memoryview, start: int, n: int) -> int:
    """Where the chunk from `start` ends: just after a bracket or comma near CHUNK bytes on."""
    end = start + CHUNK
    if end >= n:
        return n
    lo = max(start, end - 4096)
    window = bytes(text[lo:end])
    i = max(window.rfind(b"["), window.rfind(b"]"), window.rfind(b","))
    return lo + i + 1 if i >= 0 else -1


def read_array(text: memoryview) -> NumberArray | None:
    """`text` (one JSON array, `[` to `]`) as a NumberArray, or None when it is not an
    array of numbers all at one depth that this reader is sure of."""
    n = len(text)
    depth = 0  # lists open at the chunk's start (levels 1..depth)
    last = START  # kind of the previous token
    leaf = 0  # depth of the numbers, once one is seen
    deepest = 0
    carried = np.zeros(MAX_DEPTH + 2, np.int64)  # commas so far in the open list at level k
    builders = [_LevelBuilder() for _ in range(MAX_DEPTH + 1)]
    # at most one number per two bytes; pages past the last number are never touched
    values = np.empty(n // 2 + 1, np.float32)
    count = 0
    finite = True
    start = 0
    while start < n:
        end = _cut(text, start, n)
        if end < 0:
            return None
        raw = np.frombuffer(text, np.uint8, end - start, start)
        cls = _CLASS[raw]
        if not cls.all():  # a byte that is no part of a number array
            return None
        is_num = cls == NUM
        begins = is_num.copy()
        begins[1:] &= ~is_num[:-1]
        kinds = cls[(cls != WS) & (~is_num | begins)]
        if not kinds.size:
            start = end
            continue
        before = np.empty_like(kinds)
        before[0], before[1:] = last, kinds[:-1]
        if not _FOLLOWS[before, kinds].all():
            return None
        d = depth + np.cumsum((kinds == OPEN).astype(np.int32) - (kinds == CLOSE))
        final = end == n
        inner = d[:-1] if final else d
        if d.max() > MAX_DEPTH or (inner.size and inner.min() < 1):
            return None  # too deep, or the array closed before its text ended
        if final and (d[-1] != 0 or kinds[-1] != CLOSE):
            return None
        at_num = d[kinds == NUM]
        if at_num.size:
            leaf = leaf or int(at_num[0])
            if bool((at_num != leaf).any()):
                return None  # numbers at different depths: orjson words the error
        deepest = max(deepest, int(d.max()))
        for k in range(1, max(int(d.max()), depth) + 1):
            opens = np.flatnonzero((kinds == OPEN) & (d == k))
            closes = np.flatnonzero((kinds == CLOSE) & (d == k - 1))
            commas = np.cumsum((kinds == COMMA) & (d == k))
            nonempty = (before[closes] != OPEN).astype(np.int64)
            if k <= depth:  # this level's list was open when the chunk began
                base = np.concatenate(([-carried[k]], commas[opens]))[: closes.size]
                still_open = opens.size == closes.size
            else:
                base = commas[opens][: closes.size]
                still_open = opens.size > closes.size
            if closes.size:
                builders[k].add(commas[closes] - base + nonempty)
            if still_open:
                last_open = commas[opens[-1]] if opens.size else -carried[k]
                carried[k] = commas[-1] - last_open
        if at_num.size:
            try:
                numbers = orjson.loads(_flat_list(raw, is_num, begins))
                wide = np.array(numbers, dtype=np.float64)
            except (orjson.JSONDecodeError, OverflowError, ValueError, TypeError):
                return None
            del numbers
            if wide.ndim != 1 or wide.size != at_num.size:
                return None
            finite = finite and bool(np.abs(wide).max() < FLOAT32_LIMIT)
            with np.errstate(over="ignore"):  # refused by the codecs when not `finite`
                values[count : count + wide.size] = wide
            count += wide.size
            del wide
        depth, last = int(d[-1]), int(kinds[-1])
        start = end
    if not leaf or leaf != deepest or depth != 0:
        return None
    levels = [builders[k].level() for k in range(1, leaf + 1)]
    return NumberArray(values[:count], leaf, levels, finite, n)


@dataclass(slots=True)
class Split:
    """A body with its large number arrays taken out (see `split_numbers`)."""

    skeleton: bytes
    arrays: dict[str, NumberArray]


def _strings(a: np.ndarray) -> np.ndarray | None:
    """Positions of the quotes that open and close strings (pairs), or None if unsure."""
    quotes = np.flatnonzero(a == ord('"'))
    if not quotes.size:
        return quotes
    slashes = np.flatnonzero(a == ord("\\"))
    if slashes.size:  # a quote is escaped after an odd run of backslashes
        run_start = np.flatnonzero(np.diff(slashes, prepend=-2) != 1)
        run_of = np.cumsum(np.diff(slashes, prepend=-2) != 1) - 1
        i = np.searchsorted(slashes, quotes) - 1
        ok = i >= 0
        touching = np.zeros(quotes.size, bool)
        touching[ok] = slashes[i[ok]] == quotes[ok] - 1
        length = np.zeros(quotes.size, np.int64)
        j = i[touching]
        length[touching] = quotes[touching] - slashes[run_start[run_of[j]]]
        quotes = quotes[(length % 2) == 0]
    return quotes if quotes.size % 2 == 0 else None


def split_numbers(body: bytes | bytearray | memoryview) -> Split | None:
    """The body with every member value that is a large array of numbers replaced by a
    placeholder string, or None when there is none (or the body is not for this reader)."""
    view = memoryview(body).cast("B")
    a = np.frombuffer(view, np.uint8)
    if np.count_nonzero(a == ord('"')) > max(1024, a.size // 256):
        return None  # text-heavy: not a tensor body
    quotes = _strings(a)
    if quotes is None:
        return None  # unbalanced quotes: orjson says why
    colons = np.flatnonzero(a == ord(":"))
    colons = colons[np.searchsorted(quotes, colons) % 2 == 0]  # outside strings
    if colons.size > 4096:
        return None  # a document of many members, not a tensor body
    token = secrets.token_hex(8)
    pieces: list[bytes | memoryview] = []
    arrays: dict[str, NumberArray] = {}
    done = 0
    for c in colons.tolist():
        if c < done:
            continue
        start = c + 1
        while start < a.size and int(a[start]) in b" \t\r\n":
            start += 1
        if start >= a.size or int(a[start]) != ord("["):
            continue
        end = _array_end(a, start)
        if end < 0 or end - start < MIN_SPAN:
            continue
        array = read_array(view[start:end])
        if array is None:
            continue
        key = f"\x00numbers:{token}:{len(arrays)}"
        arrays[key] = array
        pieces += [view[done:start], orjson.dumps(key)]
        done = end
    if not arrays:
        return None
    pieces.append(view[done:])
    return Split(b"".join(pieces), arrays)


def _array_end(a: np.ndarray, start: int) -> int:
    """End (exclusive) of the array that starts at `start` if all of its text is number-array
    text: then the next other byte closes the member (`,` + a quote, or `}`); else -1."""
    pos = start
    while pos < a.size:
        window = a[pos : pos + CHUNK]
        other = np.flatnonzero(_CLASS[window] == BAD)
        if other.size:
            stop = pos + int(other[0])
            break
        pos += window.size
    else:
        return -1
    closer = int(a[stop])
    if closer not in (ord('"'), ord("}")):
        return -1  # e.g. `true` or a string inside the array: not ours
    tail = a[start:stop]
    closes = np.flatnonzero(tail == ord("]"))
    if not closes.size:
        return -1
    end = start + int(closes[-1]) + 1
    rest = bytes(a[end:stop]).strip(b" \t\r\n")
    if (closer == ord('"') and rest != b",") or (closer == ord("}") and rest):
        return -1
    return end


def substitute(doc: Any, arrays: dict[str, NumberArray]) -> Any:
    """`doc` with every placeholder string replaced by its NumberArray (in objects only:
    placeholders stand for member values)."""
    todo = [doc]
    while todo:
        node = todo.pop()
        if type(node) is dict:
            for k, v in node.items():
                if type(v) is str:
                    if v in arrays:
                        node[k] = arrays[v]
                elif type(v) in (dict, list):
                    todo.append(v)
        elif type(node) is list:
            todo.extend(v for v in node if type(v) in (dict, list))
    return doc

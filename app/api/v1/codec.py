"""The native API's JSON numbers -> float32 numpy, strict and fast.

Bodies are parsed by orjson (app/api/wire.py: it already refuses NaN, Infinity and numbers
that overflow a double). Numbers are then checked in bulk, not per element through pydantic:
only JSON numbers count (`true` and `"1.5"` are refused although numpy would convert them),
the nesting must be exact, and every value must be finite in float32.
"""

from __future__ import annotations

from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from app.errors import InvalidInput, PayloadTooLarge
from app.inference.card import StateTensor

_NUMBER_TYPES = {int, float}
# The float64 values that round to a finite float32: below 2**128 * (1 - 2**-25).
_FLOAT32_LIMIT = 2.0**128 * (1 - 2.0**-25)
_JSON_TYPE_NAMES = {
    int: "a number",
    float: "a number",
    bool: "a boolean",
    str: "a string",
    type(None): "null",
    dict: "an object",
    list: "a list",
}


def _kind(v: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(v), type(v).__name__)


def _numbers(flat: list[Any], where: str) -> np.ndarray:
    """float32 array of a flat list that must hold only finite JSON numbers."""
    types = set(map(type, flat))
    if not types <= _NUMBER_TYPES:
        bad = next(t for t in types if t not in _NUMBER_TYPES)
        raise InvalidInput(
            f"{where}: only JSON numbers are accepted, found "
            f"{_JSON_TYPE_NAMES.get(bad, bad.__name__)}"
        )
    try:
        wide = np.array(flat, dtype=np.float64)
    except OverflowError as e:  # integers beyond float range
        raise InvalidInput(f"{where}: a number is out of range") from e
    # One reduction, checked before the cast (no overflow warning, no errstate context):
    # NaN compares false; infinity and whatever would round to infinity in float32 are out.
    if not np.abs(wide).max() < _FLOAT32_LIMIT:
        raise InvalidInput(f"{where}: numbers must be finite and within float32 range")
    return wide.astype(np.float32)


def sequence(seq: Any, input_size: int, where: str, max_steps: int) -> np.ndarray:
    """One sequence `[time][input_size]` -> float32 [T, input_size]."""
    if type(seq) is not list:
        raise InvalidInput(f"{where} must be a list of time steps, got {_kind(seq)}")
    if not seq:
        raise InvalidInput(f"{where} is empty: a sequence needs at least one time step")
    if len(seq) > max_steps:
        raise PayloadTooLarge(f"{where} has {len(seq)} time steps; the limit is {max_steps}")
    if set(map(type, seq)) != {list}:
        bad = next(s for s in seq if type(s) is not list)
        raise InvalidInput(
            f"{where}: each time step must be a list of {input_size} numbers, found {_kind(bad)}"
        )
    widths = set(map(len, seq))
    if widths != {input_size}:
        got = sorted(widths - {input_size})[0]
        raise InvalidInput(
            f"{where}: each time step needs {input_size} features, found one with {got}"
        )
    return _numbers(list(chain.from_iterable(seq)), where).reshape(len(seq), input_size)


def ragged_batch(
    inputs: Any, input_size: int, max_batch: int, max_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """`[batch][time][input_size]`, lengths may differ -> x [B, T_max, I] zero-padded, lengths."""
    if type(inputs) is not list:
        raise InvalidInput(
            f"inputs must be a list of sequences [batch][time][{input_size}], got {_kind(inputs)}"
        )
    if not inputs:
        raise InvalidInput("inputs is empty: send at least one sequence")
    if len(inputs) > max_batch:
        raise PayloadTooLarge(f"inputs has {len(inputs)} sequences; the limit is {max_batch}")
    seqs = [sequence(s, input_size, f"inputs[{b}]", max_steps) for b, s in enumerate(inputs)]
    lengths = np.array([len(s) for s in seqs], np.int64)
    T = int(lengths.max())
    if bool(np.all(lengths == T)):
        return np.stack(seqs), lengths
    x = np.zeros((len(seqs), T, input_size), np.float32)
    for b, s in enumerate(seqs):
        x[b, : len(s)] = s
    return x, lengths


def _tensor(value: Any, shape: Sequence[int], where: str) -> np.ndarray:
    """A nested list of exactly `shape` -> float32 array."""
    level = [value]
    for depth, n in enumerate(shape):
        if any(type(v) is not list for v in level):
            raise InvalidInput(
                f"{where} must be nested lists of shape {list(shape)} (level {depth})"
            )
        if any(len(v) != n for v in level):
            raise InvalidInput(
                f"{where} must have shape {list(shape)} (level {depth} needs {n} entries)"
            )
        level = list(chain.from_iterable(level))
    return _numbers(level, where).reshape(tuple(shape))


def state(value: Any, specs: Sequence[StateTensor], where: str) -> dict[str, np.ndarray]:
    """`{<state name>: nested list}` with exactly the card's names -> arrays without batch dim."""
    if type(value) is not dict:
        raise InvalidInput(
            f"{where} must be an object {{state name: nested list}}, got {_kind(value)}"
        )
    names = {s.name for s in specs}
    if set(value) != names:
        raise InvalidInput(
            f"{where} must have exactly the state tensors {sorted(names)}, got {sorted(value)}"
        )
    return {s.name: _tensor(value[s.name], s.shape, f"{where}.{s.name}") for s in specs}


def batch_states(
    values: Any, specs: Sequence[StateTensor], batch: int
) -> dict[str, np.ndarray] | None:
    """Per-sequence start states (null entries start from zeros) -> [B, *shape] arrays."""
    if values is None:
        return None
    if type(values) is not list or len(values) != batch:
        raise InvalidInput(f"state must be a list with one entry per sequence ({batch})")
    out = {s.name: np.zeros((batch, *s.shape), np.float32) for s in specs}
    for b, v in enumerate(values):
        if v is None:
            continue
        for name, arr in state(v, specs, f"state[{b}]").items():
            out[name][b] = arr
    return out


def contiguous(a: np.ndarray) -> np.ndarray:
    """orjson serialises only C-contiguous arrays."""
    return np.ascontiguousarray(a)

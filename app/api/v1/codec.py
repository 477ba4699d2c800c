"""The native API's JSON numbers -> float32 numpy, strict and fast.

Bodies are parsed by orjson (app/api/wire.py: it already refuses NaN, Infinity and numbers
that overflow a double). Numbers are then checked in bulk, not per element through pydantic:
only JSON numbers count (`true` and `"1.5"` are refused although numpy would convert them),
the nesting must be exact, and every value must be finite in float32. A large array arrives
as a `NumberArray` (app/api/numbers.py: already float32, with the length of every list);
it gets the same checks, in the same order, with the same messages.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from itertools import chain
from typing import Any

import numpy as np

from app.api.numbers import FLOAT32_LIMIT, NumberArray
from app.api.wire import json_size
from app.errors import InvalidInput, PayloadTooLarge
from app.inference.card import StateTensor
from app.inference.engine import Engine

_NUMBER_TYPES = {int, float}
_JSON_TYPE_NAMES = {
    int: "a number",
    float: "a number",
    bool: "a boolean",
    str: "a string",
    type(None): "null",
    dict: "an object",
    list: "a list",
    NumberArray: "a list",
}


def _kind(v: Any) -> str:
    return _JSON_TYPE_NAMES.get(type(v), type(v).__name__)


# Up to this many numbers, a Python loop over the values checks them faster than numpy can set
# up its reductions (a step of a few features is the common streaming request).
FEW = 64
# Integers up to 2**53 are exact in float64, so float32 gets them with one rounding, as from
# the float64 array of `_numbers`.
_EXACT_INT = 2**53


def _few_numbers(flat: list[Any]) -> np.ndarray | None:
    """float32 array of a short flat list of finite numbers; None when anything is out of
    the ordinary (then `_numbers` decides, and words the error)."""
    for v in flat:
        t = type(v)
        if t is float:
            if not -FLOAT32_LIMIT < v < FLOAT32_LIMIT:  # (NaN compares false)
                return None
        elif t is not int or not -_EXACT_INT < v < _EXACT_INT:
            return None
    return np.array(flat, np.float32)


def _few_steps(seq: list[Any], input_size: int) -> np.ndarray | None:
    """`sequence` of a short list of steps that passes every check, else None."""
    flat: list[Any] = []
    for step in seq:
        if type(step) is not list or len(step) != input_size:
            return None
        flat += step
    x = _few_numbers(flat)
    return None if x is None else x.reshape(len(seq), input_size)


def _numbers(flat: list[Any], where: str) -> np.ndarray:
    """float32 array of a flat list that must hold only finite JSON numbers."""
    if len(flat) <= FEW:
        few = _few_numbers(flat)
        if few is not None:
            return few
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
    if not np.abs(wide).max() < FLOAT32_LIMIT:
        raise _out_of_range(where)
    return wide.astype(np.float32)


def _out_of_range(where: str) -> InvalidInput:
    return InvalidInput(f"{where}: numbers must be finite and within float32 range")


def _check_steps(length: int, input_size: int, where: str, max_steps: int) -> None:
    if not length:
        raise InvalidInput(f"{where} is empty: a sequence needs at least one time step")
    if length > max_steps:
        raise PayloadTooLarge(f"{where} has {length} time steps; the limit is {max_steps}")


def _check_widths(widths: set[int], input_size: int, where: str) -> None:
    if widths != {input_size}:
        got = sorted(widths - {input_size})[0]
        raise InvalidInput(
            f"{where}: each time step needs {input_size} features, found one with {got}"
        )


def _not_a_step(input_size: int, where: str, found: str) -> InvalidInput:
    return InvalidInput(
        f"{where}: each time step must be a list of {input_size} numbers, found {found}"
    )


def sequence(seq: Any, input_size: int, where: str, max_steps: int) -> np.ndarray:
    """One sequence `[time][input_size]` -> float32 [T, input_size]."""
    if type(seq) is NumberArray:
        return _sequences(seq, input_size, where, max_steps, batch=False)[0][0]
    if type(seq) is not list:
        raise InvalidInput(f"{where} must be a list of time steps, got {_kind(seq)}")
    if 0 < len(seq) <= max_steps and len(seq) * input_size <= FEW:
        x = _few_steps(seq, input_size)
        if x is not None:
            return x
    _check_steps(len(seq), input_size, where, max_steps)
    if set(map(type, seq)) != {list}:
        bad = next(s for s in seq if type(s) is not list)
        raise _not_a_step(input_size, where, _kind(bad))
    _check_widths(set(map(len, seq)), input_size, where)
    return _numbers(list(chain.from_iterable(seq)), where).reshape(len(seq), input_size)


def _sequences(
    arr: NumberArray, input_size: int, where: str, max_steps: int, batch: bool
) -> tuple[list[np.ndarray], np.ndarray]:
    """The sequences of a NumberArray (`batch`: [batch][time][input], else [time][input])
    checked in the order and words of `sequence`: (per-sequence [T, I] views, lengths)."""
    seq_depth = 2 if batch else 1  # depth of the sequence lists
    if arr.depth < seq_depth:  # numbers where sequences should be
        raise InvalidInput(f"{where}[0] must be a list of time steps, got a number")
    lengths = arr.levels[seq_depth - 1].all() if batch else np.array([len(arr)], np.int64)
    names = [f"{where}[{b}]" for b in range(len(lengths))] if batch else [where]
    widths = arr.levels[seq_depth].all() if arr.depth > seq_depth else None
    out: list[np.ndarray] = []
    row = pos = 0
    for name, length in zip(names, lengths.tolist(), strict=True):
        _check_steps(length, input_size, name, max_steps)
        if widths is None:  # the time steps are numbers
            raise _not_a_step(input_size, name, "a number")
        _check_widths(set(widths[row : row + length].tolist()), input_size, name)
        if arr.depth > seq_depth + 1:  # the features are lists
            raise InvalidInput(f"{name}: only JSON numbers are accepted, found a list")
        chunk = arr.values[pos : pos + length * input_size]
        if not arr.finite and not np.abs(chunk, dtype=np.float64).max() < FLOAT32_LIMIT:
            raise _out_of_range(name)
        out.append(chunk.reshape(length, input_size))
        row += length
        pos += length * input_size
    return out, lengths


def ragged_batch(
    inputs: Any, input_size: int, max_batch: int, max_steps: int
) -> tuple[np.ndarray, np.ndarray]:
    """`[batch][time][input_size]`, lengths may differ -> x [B, T_max, I] zero-padded, lengths."""
    if type(inputs) is NumberArray:
        if len(inputs) > max_batch:
            raise PayloadTooLarge(f"inputs has {len(inputs)} sequences; the limit is {max_batch}")
        seqs, lengths = _sequences(inputs, input_size, "inputs", max_steps, batch=True)
        if bool(np.all(lengths == lengths[0])):  # the values are x already: no copy
            return inputs.values.reshape(len(lengths), int(lengths[0]), input_size), lengths
        return _pad(seqs, lengths, input_size)
    if type(inputs) is not list:
        raise InvalidInput(
            f"inputs must be a list of sequences [batch][time][{input_size}], got {_kind(inputs)}"
        )
    if not inputs:
        raise InvalidInput("inputs is empty: send at least one sequence")
    if len(inputs) > max_batch:
        raise PayloadTooLarge(f"inputs has {len(inputs)} sequences; the limit is {max_batch}")
    seqs = [sequence(s, input_size, f"inputs[{b}]", max_steps) for b, s in enumerate(inputs)]
    return _pad(seqs, np.array([len(s) for s in seqs], np.int64), input_size)


def _pad(
    seqs: list[np.ndarray], lengths: np.ndarray, input_size: int
) -> tuple[np.ndarray, np.ndarray]:
    """x [B, T_max, I] (zero-padded when lengths differ) and the lengths."""
    T = int(lengths.max())
    if bool(np.all(lengths == T)):
        return np.stack(seqs), lengths
    x = np.zeros((len(seqs), T, input_size), np.float32)
    for b, s in enumerate(seqs):
        x[b, : len(s)] = s
    return x, lengths


def _tensor(value: Any, shape: Sequence[int], where: str) -> np.ndarray:
    """A nested list of exactly `shape` -> float32 array."""
    if type(value) is NumberArray:
        return _array_tensor(value, shape, where)
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


def _array_tensor(arr: NumberArray, shape: Sequence[int], where: str) -> np.ndarray:
    """`_tensor` of a NumberArray: the same checks, level by level."""
    for depth, n in enumerate(shape):
        if depth >= arr.depth:
            raise InvalidInput(
                f"{where} must be nested lists of shape {list(shape)} (level {depth})"
            )
        if bool((arr.levels[depth].all() != n).any()):
            raise InvalidInput(
                f"{where} must have shape {list(shape)} (level {depth} needs {n} entries)"
            )
    if arr.depth > len(shape):
        raise InvalidInput(f"{where}: only JSON numbers are accepted, found a list")
    if not arr.finite:
        raise _out_of_range(where)
    return arr.values.reshape(tuple(shape))


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


def answer_size(
    engine: Engine,
    batch: int,
    steps: int,
    *,
    sequences_out: bool = True,
    state: bool = False,
    internals: bool = False,
) -> int:
    """An upper bound of the JSON answer for `batch` sequences of `steps` steps in all
    (app/api/wire.py's `json_size` per number), from the shapes alone: checked before
    anything runs."""
    rows = steps if sequences_out else batch
    numbers, lists = rows * engine.output_size, rows + batch
    if state:
        numbers += batch * sum(math.prod(s.shape) for s in engine.state_specs)
        lists += batch * sum(math.prod(s.shape[:-1]) + 1 for s in engine.state_specs)
    if internals:
        arch = engine.card.architecture
        numbers += steps * (2 * arch.cells + 3 * arch.blocks)
        lists += 5 * (steps + batch)
    return json_size(numbers, lists) + 64 * batch + 256


def contiguous(a: np.ndarray) -> np.ndarray:
    """orjson serialises only C-contiguous arrays."""
    return np.ascontiguousarray(a)

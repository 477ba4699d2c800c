"""Large number arrays read by app/api/numbers.py mean exactly what orjson + the codecs say.

Every body is decoded twice: as a small body is (orjson, then the codec's checks on Python
lists) and as a large one is (its number arrays read straight into float32), with the size
thresholds lowered so that small generated bodies take the large path and cross chunk
boundaries. The outcome must be the same: the same arrays, or the same error and message.
"""

from __future__ import annotations

import json
from typing import Any

import numpy as np
import orjson
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from app.api import numbers, wire
from app.api.numbers import NumberArray, split_numbers
from app.api.v1 import codec
from app.api.v2 import codec as v2codec
from app.api.wire import decode_json
from app.errors import PeepholeError
from app.inference.card import StateTensor


@pytest.fixture(autouse=True)
def small_thresholds(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(numbers, "MIN_SPAN", 8)
    monkeypatch.setattr(numbers, "CHUNK", 48)


NUMBER = st.one_of(
    st.integers(-(10**6), 10**6),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from([0, -0.0, 1e-45, 3.4e38, 3.5e38, 1e300, 10**20, 123456789012345678]),
)
ODD = st.sampled_from([True, False, None, "1.5", {}, []])
LEAF = st.one_of(NUMBER, NUMBER, NUMBER, NUMBER, ODD)


def nested(depth: int, width: st.SearchStrategy[int]) -> st.SearchStrategy[Any]:
    """Lists `depth` deep with numbers (mostly) at the bottom; now and then a number higher
    up or an odd leaf, so that mixed depths and non-numbers are tried too."""
    if depth == 0:
        return LEAF
    deeper = st.lists(nested(depth - 1, width), min_size=0, max_size=4)
    return st.one_of(deeper, deeper, deeper, deeper, deeper, deeper, NUMBER)


def bodies(key: str, depth: int) -> st.SearchStrategy[bytes]:
    value = st.integers(1, depth + 1).flatmap(lambda d: nested(d, st.integers(0, 4)))
    dumps = st.sampled_from(
        [
            lambda o: json.dumps(o, separators=(",", ":")).encode(),
            lambda o: json.dumps(o).encode(),
            lambda o: json.dumps(o, indent=1).encode(),
        ]
    )
    return st.tuples(value, dumps).map(lambda t: t[1]({key: t[0], "flag": True}))


def outcome(run: Any) -> tuple[str, Any]:
    try:
        out = run()
    except PeepholeError as e:
        return type(e).__name__, e.detail
    return "ok", out


def same(a: tuple[str, Any], b: tuple[str, Any]) -> None:
    assert a[0] == b[0], (a, b)
    if a[0] != "ok":
        assert a[1] == b[1]
        return
    for x, y in zip(a[1] if isinstance(a[1], tuple) else (a[1],),
                    b[1] if isinstance(b[1], tuple) else (b[1],), strict=True):  # fmt: skip
        np.testing.assert_array_equal(x, y)
        assert np.asarray(x).dtype == np.asarray(y).dtype


CHECKS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])


@CHECKS
@given(bodies("inputs", 3), st.integers(1, 3))
def test_predict_inputs(body: bytes, input_size: int) -> None:
    def run(split_from: int) -> Any:
        doc = decode_json(body, split_from)
        return codec.ragged_batch(doc["inputs"], input_size, max_batch=3, max_steps=3)

    same(outcome(lambda: run(10**9)), outcome(lambda: run(0)))


@CHECKS
@given(bodies("inputs", 2), st.integers(1, 3))
def test_step_inputs(body: bytes, input_size: int) -> None:
    def run(split_from: int) -> Any:
        return codec.sequence(decode_json(body, split_from)["inputs"], input_size, "inputs", 3)

    same(outcome(lambda: run(10**9)), outcome(lambda: run(0)))


@CHECKS
@given(bodies("cell_states", 2))
def test_state_tensors(body: bytes) -> None:
    specs = [StateTensor(name="cell_states", input="i", output="o", shape=[2, 2])]

    def run(split_from: int) -> Any:
        return codec.state(decode_json(body, split_from), specs, "state")["cell_states"]

    same(outcome(lambda: run(10**9)), outcome(lambda: run(0)))


@CHECKS
@given(st.integers(1, 3).flatmap(lambda d: nested(d, st.integers(0, 4))), st.integers(0, 6))
def test_v2_json_data(data: Any, count: int) -> None:
    body = json.dumps({"inputs": [{"name": "x", "datatype": "FP32", "shape": [count],
                                   "data": data}]}).encode()  # fmt: skip

    def run(split_from: int) -> Any:
        wire.SPLIT_BYTES = split_from
        return v2codec.decode_request(body).inputs["x"]

    saved = wire.SPLIT_BYTES
    try:
        same(outcome(lambda: run(10**9)), outcome(lambda: run(0)))
    finally:
        wire.SPLIT_BYTES = saved


def test_large_arrays_are_taken_out_and_the_rest_kept() -> None:
    body = orjson.dumps({"inputs": [[[0.5, 1], [2, 3]]], "state": [None], "name": "a: [1]"})
    split = split_numbers(body)
    assert split is not None and len(split.arrays) == 1
    ((key, arr),) = split.arrays.items()
    assert arr.depth == 3 and arr.values.tolist() == [0.5, 1, 2, 3]
    assert orjson.loads(split.skeleton) == {"inputs": key, "state": [None], "name": "a: [1]"}
    doc = decode_json(body, 0)
    assert type(doc["inputs"]) is NumberArray and doc["name"] == "a: [1]"


@pytest.mark.parametrize(
    "text", [b'{"a": "x\\" : [1,2,3,4,5,6]"}', b'{"a": "\\\\", "b": [1,2,3,4,5,6]}']
)
def test_strings_with_escapes(text: bytes) -> None:
    assert (
        decode_json(text, 0) == orjson.loads(text) or type(decode_json(text, 0)["b"]) is NumberArray
    )

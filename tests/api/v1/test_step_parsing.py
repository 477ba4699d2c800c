"""The step route's shortcuts decide exactly as the general checks they stand in front of.

`codec.sequence` checks a short list of numbers in Python (`FEW`) and `step_fields` checks the
usual step body without pydantic; each falls back to the general path for anything else. Both
ways must give the same arrays (bit for bit) or the same error with the same message.
"""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from pydantic import ValidationError

from app.api.v1 import codec
from app.api.v1.schemas import StepRequest
from app.api.v1.sessions import step_fields
from app.dataplane import MAX_OFFSET
from app.errors import PeepholeError

EDGES = [0, -0.0, 1e-45, 3.4028235e38, -3.4028235e38, 3.4028236e38, 1e300, 2**53, 2**53 + 1]
FINITE = st.one_of(
    st.integers(-(2**60), 2**60),
    st.floats(allow_nan=False, allow_infinity=False),
    st.floats(allow_nan=False, allow_infinity=False, width=32),
    st.sampled_from(EDGES),
)
NUMBER = st.one_of(FINITE, st.sampled_from([True, None, "1.5", [], {}]))


def outcome(fn: Any, *args: Any) -> tuple[str, Any]:
    try:
        with np.errstate(over="raise"):  # (a float32 overflow is an error, not a warning)
            x = fn(*args)
    except PeepholeError as e:
        return type(e).__name__, e.detail
    assert x.dtype == np.float32
    return "ok", (x.shape, x.tobytes())


@st.composite
def sequences(draw: st.DrawFn, input_size: int) -> Any:
    """Mostly well-formed `[time][input_size]` lists of numbers, some of them not."""
    width = draw(st.sampled_from([input_size, input_size, input_size, 0, input_size + 1]))
    number = draw(st.sampled_from([FINITE, FINITE, NUMBER]))
    step = st.lists(number, min_size=width, max_size=width)
    if draw(st.integers(0, 9)) == 0:
        step = st.one_of(step, NUMBER)
    return draw(st.one_of(st.lists(step, min_size=0, max_size=5), NUMBER))


@settings(max_examples=300, deadline=None)
@given(data=st.data(), input_size=st.integers(1, 3))
def test_short_sequences_as_the_general_checks(data: st.DataObject, input_size: int) -> None:
    seq = data.draw(sequences(input_size))
    short = outcome(codec.sequence, seq, input_size, "inputs", 4)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(codec, "FEW", -1)  # every list through numpy
        general = outcome(codec.sequence, seq, input_size, "inputs", 4)
    assert short == general


VALUE = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-2, 3),
    st.sampled_from([MAX_OFFSET, MAX_OFFSET + 1, 2**70, 1.0, "1", [[1.0]]]),
)
BODY = st.one_of(
    st.dictionaries(
        st.sampled_from(["inputs", "offset", "return_internals", "extra"]), VALUE, max_size=4
    ),
    VALUE,
)


@settings(max_examples=300, deadline=None)
@given(body=BODY)
def test_step_fields_as_step_request(body: Any) -> None:
    try:
        req = StepRequest.model_validate(body)
    except ValidationError as e:
        with pytest.raises(ValidationError) as got:
            step_fields(body)
        assert got.value.errors() == e.errors()
        return
    fields = step_fields(body)
    assert fields == (req.inputs, req.offset, req.return_internals)
    assert [type(v) for v in fields] == [type(req.inputs), type(req.offset), bool]

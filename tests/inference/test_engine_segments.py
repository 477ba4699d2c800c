"""Long runs go to ONNX Runtime in time segments (bounded working memory), with the same
results as one call: outputs, final states and internals, ragged or not."""

from __future__ import annotations

import numpy as np
import pytest

from app.inference import engine as engine_module
from app.inference.engine import Engine
from app.inference.registry import ModelRegistry
from app.inference.repository import scan_repository
from tests.repo import LNSC, PLAIN, RepoModels


@pytest.fixture(scope="module")
def engines(models: RepoModels) -> dict[str, Engine]:
    reg = ModelRegistry.build(scan_repository(models.repo), "cpu", 1)
    return {PLAIN: reg.get(PLAIN), LNSC: reg.get(LNSC)}


@pytest.mark.parametrize("name", [PLAIN, LNSC])
@pytest.mark.parametrize("ragged", [False, True])
def test_segments_match_one_call(
    engines: dict[str, Engine], name: str, ragged: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    eng = engines[name]
    rng = np.random.default_rng(3)
    x = rng.standard_normal((3, 50, eng.input_size)).astype(np.float32)
    lengths = np.array([50, 17, 33]) if ragged else None
    internals = eng.has_internals
    whole = eng.run(x, None, lengths, internals)
    monkeypatch.setattr(engine_module, "RUN_BATCH_STEPS", 3 * 7)  # 7 steps per call
    parts = eng.run(x, None, lengths, internals)
    np.testing.assert_allclose(parts.y, whole.y, rtol=0, atol=1e-6)
    for k in whole.states:
        np.testing.assert_allclose(parts.states[k], whole.states[k], rtol=0, atol=1e-6)
    if internals:
        assert whole.internals is not None and parts.internals is not None
        for k in whole.internals:
            np.testing.assert_allclose(parts.internals[k], whole.internals[k], rtol=0, atol=1e-6)

"""Each shipped model, as served (ONNX Runtime, no torch), meets its card's claim on FRESH data.

The data come from the task generators with seeds the training never used (training used
seed 0 and its splits; these seeds differ), so a model that memorised its test split fails.
The success criteria are recomputed here from the raw outputs, not taken from the tasks.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest

from app.inference.card import ModelCard, sha256_file
from training.tasks.adding import adding_sequences
from training.tasks.embedded_reber import embedded_reber_string, encode
from training.tasks.msd import spike_train

MODELS = Path(__file__).resolve().parents[2] / "models"
FRESH_SEED = 987_654  # never used for training


def _latest(name: str) -> Path:
    versions = [p for p in (MODELS / name).iterdir() if p.is_dir() and p.name.isdigit()]
    assert versions, f"no version of {name} under {MODELS}"
    return max(versions, key=lambda p: int(p.name))


def _load(name: str) -> tuple[ModelCard, ort.InferenceSession]:
    vdir = _latest(name)
    card = ModelCard.model_validate_json((vdir / "model.json").read_text())
    assert card.onnx.sha256 == sha256_file(vdir / "model.onnx")
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    return card, ort.InferenceSession(
        str(vdir / "model.onnx"), opts, providers=["CPUExecutionProvider"]
    )


def _run(card: ModelCard, sess: ort.InferenceSession, x: np.ndarray) -> np.ndarray:
    """Outputs of whole sequences from the zero state (the card's state layout)."""
    feeds = {"x": x.astype(np.float32)}
    for s in card.state:
        feeds[s.input] = np.zeros((len(x), *s.shape), np.float32)
    return sess.run(["y"], feeds)[0]


def test_embedded_reber_all_of_256_fresh_strings():
    card, sess = _load("embedded-reber")
    assert card.encoding["inputs"]["symbols"] == list("BTSXPVE")
    assert card.encoding["outputs"]["symbols"] == list("BTSXPVE")
    rng = np.random.default_rng(FRESH_SEED)
    strings = [embedded_reber_string(rng) for _ in range(256)]
    split = encode(strings)
    y = _run(card, sess, split.x)
    for n, s in enumerate(strings):
        steps = len(s) - 1
        legal = split.y[n, :steps] > 0.5
        out = y[n, :steps]
        assert np.all(out[legal] > 0.5) and np.all(out[~legal] < 0.5), f"string {n}: {s}"
    assert card.training.sequences < 8440  # fewer training strings than the 1997 paper


def test_adding_at_most_one_wrong_of_2560_fresh_sequences():
    card, sess = _load("adding")
    assert card.input_names == ["value", "marker"]
    split, lengths = adding_sequences(2560, 100, np.random.default_rng(FRESH_SEED))
    y = _run(card, sess, split.x)
    last = lengths - 1
    marked = split.x[..., 1] == 1.0
    x1x2 = np.where(marked, split.x[..., 0], 0.0).sum(axis=1)
    target = 0.5 + x1x2 / 4.0  # recomputed from the inputs, not the generator's target
    err = np.abs(y[np.arange(2560), last, 0] - target)
    assert int((err >= 0.04).sum()) <= 1, np.sort(err)[-5:]
    assert card.training.sequences < 74_000


def test_msd_1000_consecutive_fresh_spikes_right():
    card, sess = _load("msd")
    x, _, _, times = spike_train(11_000, np.random.default_rng(FRESH_SEED))
    assert len(times) > 1000
    y = _run(card, sess, x[None])[0, :, 0]
    delays = np.diff(times) - 10  # I(n), recomputed from the spike times
    ok = np.abs(y[times[1:]] - delays) < 0.49
    # Gers 2002's criterion: 1,000 CONSECUTIVE spikes right. (From the zero state the very
    # first interval can be misjudged when the train starts with a spike at step 0 or 1:
    # measured on 8 of 61 fresh trains, spike 1 only; docs/QUALITY.md, open problems.)
    run = best = 0
    for v in ok:
        run = run + 1 if v else 0
        best = max(best, run)
    assert best >= 1000, f"longest run {best}; {int((~ok).sum())} of {len(ok)} spikes wrong"
    assert ok[1:].all(), "after the first spike every spike of this train is right"


@pytest.mark.parametrize("name", ["embedded-reber", "adding", "msd"])
def test_cards_say_how_they_were_made_and_the_encoding(name):
    card, _ = _load(name)
    assert card.encoding and "inputs" in card.encoding and "outputs" in card.encoding
    assert card.training.command.startswith(f"python -m training train {name} --out models")
    assert card.training.metrics["solved"] is True
    metrics = json.loads((_latest(name) / "metrics.json").read_text())
    assert metrics["command"] == card.training.command

"""training/tasks/csv_series.py: the split, what the network predicts, the baselines, and the
served graph in raw units, on real series shipped inside statsmodels (written by no one here)."""

from __future__ import annotations

import shutil
from pathlib import Path

import numpy as np
import onnxruntime as ort
import pytest
import statsmodels.datasets
import torch

from app.inference.card import ModelCard
from training.errors import UserError
from training.tasks import get_task
from training.train import TrainConfig, train

DATASETS = Path(statsmodels.datasets.__file__).parent


def real_series(tmp_path: Path, name: str) -> Path:
    """A copy of one of statsmodels' CSV files (sunspots, co2, nile, macrodata, ...)."""
    src = next((DATASETS / name).glob("*.csv"))
    return Path(shutil.copy(src, tmp_path / src.name))


def test_split_by_time_and_training_only_statistics(tmp_path):
    t = np.arange(200, dtype=float)
    a, b, c = t, np.sin(t / 5) * 3 + 1, t**1.5 / 10  # trending: stats differ by part
    path = tmp_path / "series.csv"
    path.write_text("a,b,c\n" + "".join(f"{p},{q},{r}\n" for p, q, r in zip(a, b, c, strict=True)))
    task = get_task("csv")
    data = task.generate(0, csv_path=str(path), features="a,b", targets="c", horizon=2,
                         window=40, val_fraction=0.25)  # fmt: skip
    assert data.data["predict"] == "level"  # c is not a feature: no last value to add to
    n_train = 150
    norm = data.normalization
    assert norm["input_mean"] == pytest.approx([a[:n_train].mean(), b[:n_train].mean()])
    assert norm["input_std"] == pytest.approx([a[:n_train].std(), b[:n_train].std()])
    assert norm["target_mean"] == pytest.approx([c[2:n_train].mean()])  # training targets
    assert norm["target_offset_input"] is None
    # Training windows: inputs and targets only from training rows, target = row t + 2.
    raw_x = data.train.x * np.float32(norm["input_std"]) + np.float32(norm["input_mean"])
    raw_y = data.train.y[..., 0] * norm["target_std"][0] + norm["target_mean"][0]
    assert raw_x[..., 0].max() < n_train - 2 + 1e-3
    rows = np.rint(raw_x[..., 0]).astype(int)
    np.testing.assert_allclose(raw_y, c[rows + 2], rtol=1e-4)
    assert data.train.mask[1:, :8].sum() == 0 and data.train.mask[0].all()  # warm-up
    # Validation: the whole series, scored where the target row is a validation row.
    assert data.val.x.shape == (1, 198, 2)
    assert np.flatnonzero(data.val.mask[0]).tolist() == list(range(148, 198))
    assert data.input_names == ["a", "b"] and data.output_names == ["c+2"]


def test_the_change_from_the_last_value_by_default(tmp_path):
    path = real_series(tmp_path, "nile")
    data = get_task("csv").generate(0, csv_path=str(path), features="volume", time="year")
    v = np.loadtxt(path, delimiter=",", skiprows=1)[:, 1]
    assert data.data["predict"] == "change" and data.normalization["target_offset_input"] == [0]
    change = np.diff(v)  # target: volume[t + 1] - volume[t]
    assert data.normalization["target_mean"] == pytest.approx([change[:79].mean()])
    y = (
        data.val.y[0, :, 0] * data.normalization["target_std"][0]
        + data.normalization["target_mean"][0]
    )
    np.testing.assert_allclose(y, change, rtol=1e-5, atol=1e-3)
    # The baselines, recomputed from the file: naive = last value, on the validation rows.
    naive = data.extra["baselines"][0]
    assert naive["naive_mse"] == pytest.approx(np.mean((v[80:] - v[79:-1]) ** 2))
    assert 1 <= naive["ar_window"] <= 15 and naive["ar_mse"] > 0
    with pytest.raises(UserError, match="--predict change needs"):
        get_task("csv").generate(0, csv_path=str(path), features="year", targets="volume",
                                 predict="change")  # fmt: skip


def test_served_model_takes_raw_units_and_streams(tmp_path):
    """A quickly trained model on a real series with a trend (US real GDP, statsmodels'
    macrodata): the served graph (ONNX Runtime, raw units) equals the module plus the last
    value; chunks equal the whole sequence; the card names file, columns and horizon."""
    path = real_series(tmp_path, "macrodata")
    cfg = TrainConfig(task="csv", out=tmp_path / "repo", quick=True, progress=False,
                      task_options={"csv_path": str(path), "features": "realgdp,realcons",
                                    "targets": "realgdp", "horizon": 2, "window": 40})  # fmt: skip
    result = train(cfg)
    vdir = result.version_dir
    assert vdir == tmp_path / "repo" / "macrodata" / "1"
    card = ModelCard.model_validate_json((vdir / "model.json").read_text())
    assert card.description.startswith("macrodata.csv: realgdp, realcons -> realgdp, 2 row(s) "
                                       "ahead (the network predicts the change")  # fmt: skip
    assert (
        "x the naive last-value forecast" in card.description and "linear AR(" in card.description
    )
    test = card.training.metrics["test"]
    assert card.training.metrics["solved"] == (test["mse_over_naive"][0] < 1.0)
    assert card.output_names == ["realgdp+2"]
    raw = np.loadtxt(path, delimiter=",", skiprows=1)[:, [2, 3]].astype(np.float32)
    sess = ort.InferenceSession(str(vdir / "model.onnx"), providers=["CPUExecutionProvider"])
    zero = {s.input: np.zeros((1, *s.shape), np.float32) for s in card.state}
    whole = sess.run(None, {"x": raw[None], **zero})
    # The module (normalised units), mapped back by hand: level = last value + change.
    n = card.normalization
    x = ((raw - np.float32(n.input_mean)) / np.float32(n.input_std)).astype(np.float32)
    with torch.no_grad():
        out, _ = result.model(torch.from_numpy(x)[None])
    expect = out.detach().numpy()[0, :, 0] * n.target_std[0] + n.target_mean[0] + raw[:, 0]
    np.testing.assert_allclose(whole[0][0, :, 0], expect, rtol=1e-5)
    state, parts = zero, []
    for lo, hi in ((0, 1), (1, 50), (50, len(raw))):
        y, *final = sess.run(None, {"x": raw[None, lo:hi], **state})
        state = {s.input: v for s, v in zip(card.state, final, strict=True)}
        parts.append(y)
    np.testing.assert_allclose(np.concatenate(parts, axis=1), whole[0], rtol=1e-5)


def test_a_trend_is_extrapolated_by_the_change_model(tmp_path):
    """US real GDP grows through the held-out end: a few epochs of the default (the change
    from the last value) beat the naive forecast there; the same on levels cannot."""
    path = real_series(tmp_path, "macrodata")
    ratio = {}
    for predict in ("change", "level"):
        cfg = TrainConfig(task="csv", out=None, progress=False, overrides={"epochs": 3},
                          task_options={"csv_path": str(path), "features": "realgdp",
                                        "predict": predict})  # fmt: skip
        final = train(cfg).metrics["final"]
        ratio[predict] = final["test"]["mse_over_naive"][0]
        assert final["solved"] == (ratio[predict] < 1.0)
    assert ratio["change"] < 1.0 < 10 * ratio["change"] < ratio["level"], ratio

"""training/checkpoint.py: a trained model is never lost, and a kept one exports later."""

from __future__ import annotations

import json

import pytest
import torch

from app.inference.card import ModelCard
from tests.training.common import corrupt_lstm_graph
from training.checkpoint import Checkpoint
from training.cli import main
from training.errors import UserError
from training.export import next_version


def test_refused_export_keeps_the_checkpoint_then_export_writes_it(tmp_path, monkeypatch,
                                                                   capsys):  # fmt: skip
    repo = tmp_path / "repo"
    corrupt_lstm_graph(monkeypatch, by=0.1)
    rc = main(["train", "adding", "--quick", "--out", str(repo), "--no-progress"])
    err = capsys.readouterr().err.strip()
    assert rc == 1
    assert len(err.splitlines()) == 1, err
    kept = repo / "adding" / "1.ckpt"
    assert "export refused" in err and str(kept) in err and "--export-tolerance" in err
    assert kept.is_file() and not (repo / "adding" / "1").exists()
    assert next_version(repo, "adding") == 2  # the kept model keeps its version number

    ckpt = Checkpoint.load(kept)
    assert ckpt.task == "adding" and ckpt.version == 1 and ckpt.config["blocks"] == 8
    assert ckpt.training["command"].startswith("python -m training train adding")
    assert ckpt.metrics["history"] and ckpt.normalization is None

    # Still broken: `export` refuses again, one line, the checkpoint stays.
    assert main(["export", str(kept)]) == 1
    assert len(capsys.readouterr().err.strip().splitlines()) == 1 and kept.is_file()

    monkeypatch.undo()  # the exporter fixed: the same checkpoint exports
    assert main(["export", str(kept)]) == 0
    vdir = repo / "adding" / "1"
    card = ModelCard.model_validate_json((vdir / "model.json").read_text())
    assert card.training.command == ckpt.training["command"]
    assert (vdir / "checkpoint.pt").is_file() and not kept.exists()  # moved in
    assert (vdir / "metrics.json").is_file() and (vdir / "training_curve.png").is_file()
    assert card.verification["cases"][0].startswith("validation data")  # regenerated
    reloaded = Checkpoint.load(vdir / "checkpoint.pt").model()
    for k, v in ckpt.state_dict.items():
        assert torch.equal(reloaded.state_dict()[k], v)
    # Exported again elsewhere: copied, as the next version.
    assert main(["export", str(vdir / "checkpoint.pt"), "--out", str(tmp_path / "other"),
                 "--name", "copy"]) == 0  # fmt: skip
    assert (tmp_path / "other" / "copy" / "1" / "model.onnx").is_file()
    assert (vdir / "checkpoint.pt").is_file()


def test_a_successful_run_moves_the_checkpoint_into_the_version(tmp_path, capsys):
    assert main(["train", "msd", "--quick", "--out", str(tmp_path), "--no-progress"]) == 0
    out = json.loads(capsys.readouterr().out)
    vdir = tmp_path / "msd" / "1"
    assert out["model"] == str(vdir)
    assert sorted(p.name for p in (tmp_path / "msd").iterdir()) == ["1"]
    assert Checkpoint.load(vdir / "checkpoint.pt").task == "msd"


def test_load_refuses_what_is_not_a_checkpoint(tmp_path):
    with pytest.raises(UserError, match="no such checkpoint"):
        Checkpoint.load(tmp_path / "none.ckpt")
    (tmp_path / "junk.ckpt").write_bytes(b"not torch")
    with pytest.raises(UserError, match="not a readable checkpoint"):
        Checkpoint.load(tmp_path / "junk.ckpt")
    torch.save({"weights": torch.zeros(2)}, tmp_path / "other.pt")
    with pytest.raises(UserError, match="not a peephole checkpoint"):
        Checkpoint.load(tmp_path / "other.pt")

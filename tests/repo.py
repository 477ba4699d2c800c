"""The test model repository: small networks made by the real exporter, plus broken versions.

`build_repository` is what the session-wide `models` fixture (tests/conftest.py) returns;
`reference` runs the PyTorch module behind a served model, for comparisons.
"""

from __future__ import annotations

import json
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import torch

from app.inference.card import sha256_file
from training.export import export_model
from training.model import PeepholeConfig, PeepholeLSTM

PLAIN = "plain"  # plain topology: the ONNX LSTM operator, 2 inputs -> 1 linear output
LNSC = "lnsc"  # 2 blocks x 2 cells with gate-to-gate: a Scan graph, 3 inputs -> 2 logistic outputs


@dataclass
class RepoModels:
    repo: Path
    modules: dict[str, PeepholeLSTM]  # the PyTorch modules behind the default versions


def export_random(repo: Path, name: str, cfg: PeepholeConfig, seed: int, **kw: Any) -> PeepholeLSTM:
    """An untrained module with seeded weights, exported into `repo` by the real exporter."""
    torch.manual_seed(seed)
    model = PeepholeLSTM(cfg).eval()
    export_model(
        model,
        repo,
        name,
        task=kw.pop("task", "test"),
        training={"seed": seed, "data": {"generator": "random"}},
        input_names=kw.pop("input_names", [f"x{i}" for i in range(cfg.input_size)]),
        output_names=kw.pop("output_names", [f"y{i}" for i in range(cfg.output_size)]),
        **kw,
    )
    return model


def _copy_version(repo: Path, name: str, src: int, dst_name: str, dst: int) -> Path:
    target = repo / dst_name / str(dst)
    shutil.copytree(repo / name / str(src), target)
    card = json.loads((target / "model.json").read_text())
    card.update(name=dst_name, version=dst)
    (target / "model.json").write_text(json.dumps(card))
    return target


def build_repository(repo: Path) -> RepoModels:
    """plain (versions 1 without and 2 with an internals graph), lnsc, and four broken
    versions the server must refuse (bad sha256, invalid card, garbage graph, unreadable card)."""
    plain_cfg = PeepholeConfig(
        input_size=2, output_size=1, blocks=3, output_activation="linear", forget_bias=1.0
    )
    export_random(repo, PLAIN, plain_cfg, seed=1, version=1, internals=False)
    plain = export_random(
        repo,
        PLAIN,
        plain_cfg,
        seed=2,
        version=2,
        normalization={
            "input_mean": [0.5, -1.0],
            "input_std": [2.0, 0.5],
            "target_mean": [3.0],
            "target_std": [4.0],
        },
    )
    lnsc_cfg = PeepholeConfig(
        input_size=3,
        output_size=2,
        blocks=2,
        cells_per_block=2,
        gate_to_gate=True,
        gate_to_output=True,
        init_range=0.5,
    )
    lnsc = export_random(repo, LNSC, lnsc_cfg, seed=3, version=1)
    # Broken: a sha256 that does not match, an invalid card, a graph ONNX Runtime refuses.
    bad = _copy_version(repo, PLAIN, 1, "bad-sha", 1)
    card = json.loads((bad / "model.json").read_text())
    card["onnx"]["sha256"] = "0" * 64
    (bad / "model.json").write_text(json.dumps(card))
    bad = _copy_version(repo, PLAIN, 1, "bad-card", 1)
    card = json.loads((bad / "model.json").read_text())
    del card["input_size"]
    (bad / "model.json").write_text(json.dumps(card))
    bad = _copy_version(repo, PLAIN, 1, "bad-graph", 1)  # sha256 right, graph garbage
    (bad / "model.onnx").write_bytes(b"not an onnx graph")
    card = json.loads((bad / "model.json").read_text())
    card["onnx"]["sha256"] = sha256_file(bad / "model.onnx")
    (bad / "model.json").write_text(json.dumps(card))
    _copy_version(repo, PLAIN, 1, PLAIN, 3)  # a third plain version whose card...
    (repo / PLAIN / "3" / "model.json").write_text("{not json")  # ...is unreadable
    return RepoModels(repo=repo, modules={PLAIN: plain, LNSC: lnsc})


# -- helpers used by several test modules ----------------------------------------------------

SIZES = {PLAIN: (2, 1), LNSC: (3, 2)}  # (input_size, output_size)
PLAIN_NORM = {
    "input_mean": [0.5, -1.0],
    "input_std": [2.0, 0.5],
    "target_mean": 3.0,
    "target_std": 4.0,
}


def reference(models: RepoModels, name: str, x: Any, state: dict | None = None) -> tuple[Any, dict]:
    """The PyTorch module (float64) on one sequence [T, I] in raw units: (y [T, O], state)."""
    import copy

    import numpy as np

    module = copy.deepcopy(models.modules[name]).double()
    xt = torch.tensor(np.asarray(x, np.float64))[None]
    if name == PLAIN:
        xt = (xt - torch.tensor(PLAIN_NORM["input_mean"])) / torch.tensor(PLAIN_NORM["input_std"])
    st = (
        None
        if state is None
        else {k: torch.tensor(np.asarray(v, np.float64))[None] for k, v in state.items()}
    )
    with torch.no_grad():
        y, new = module(xt, st)
    if name == PLAIN:
        y = y * PLAIN_NORM["target_std"] + PLAIN_NORM["target_mean"]
    return y[0].numpy(), {k: v[0].numpy() for k, v in new.items()}


def get_state(client: httpx.Client, sid: str) -> dict[str, Any]:
    r = client.get(f"/v1/sessions/{sid}/state")
    assert r.status_code == 200, r.text
    return r.json()


def new_session(client: httpx.Client, model: str = LNSC, **kw: Any) -> str:
    r = client.post("/v1/sessions", json={"model": model, **kw})
    assert r.status_code == 201, r.text
    return str(r.json()["session_id"])


def repo_with(models: RepoModels, dst: Path, *versions: tuple[str, int]) -> Path:
    """A fresh repository at dst with copies of these (name, version)s of the test repository
    (model control tests change their repository while a server serves it)."""
    for name, version in versions:
        shutil.copytree(models.repo / name / str(version), dst / name / str(version))
    return dst


def predict(client: httpx.Client, name: str, x: Any, version: int | None = None, **kw: Any) -> dict:
    """POST .../predict of a batch [B][T][I]; asserts 200."""
    path = f"/v1/models/{name}" + (f"/versions/{version}" if version else "") + "/predict"
    r = client.post(path, json={"inputs": x, **kw})
    assert r.status_code == 200, r.text
    return dict(r.json())

"""Fixtures: a small model repository made by the real exporter, and real uvicorn servers.

Each server runs `create_app(settings)` under uvicorn in a thread on a free loopback port;
clients talk to it over real sockets (httpx, websockets).
"""

from __future__ import annotations

import json
import shutil
import socket
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest
import torch
import uvicorn

from app.config import Settings
from app.inference.card import sha256_file
from app.main import create_app
from training.export import export_model
from training.model import PeepholeConfig, PeepholeLSTM

PLAIN = "plain"  # plain topology: the ONNX LSTM operator, 2 inputs -> 1 linear output
LNSC = "lnsc"  # 2 blocks x 2 cells with gate-to-gate: a Scan graph, 3 inputs -> 2 logistic outputs


@dataclass
class RepoModels:
    repo: Path
    modules: dict[str, PeepholeLSTM]  # the PyTorch modules behind the default versions


def _export(repo: Path, name: str, cfg: PeepholeConfig, seed: int, **kw: Any) -> PeepholeLSTM:
    torch.manual_seed(seed)
    model = PeepholeLSTM(cfg).eval()
    export_model(
        model,
        repo,
        name,
        task="test",
        training={"seed": seed, "data": {"generator": "random"}},
        input_names=[f"x{i}" for i in range(cfg.input_size)],
        output_names=[f"y{i}" for i in range(cfg.output_size)],
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


@pytest.fixture(scope="session")
def models(tmp_path_factory: pytest.TempPathFactory) -> RepoModels:
    """plain (versions 1 without and 2 with an internals graph), lnsc, and four broken
    versions the server must refuse (bad sha256, invalid card, garbage graph, unreadable card)."""
    repo = tmp_path_factory.mktemp("models")
    plain_cfg = PeepholeConfig(
        input_size=2, output_size=1, blocks=3, output_activation="linear", forget_bias=1.0
    )
    _export(repo, PLAIN, plain_cfg, seed=1, version=1, internals=False)
    plain = _export(
        repo, PLAIN, plain_cfg, seed=2, version=2,
        normalization={"input_mean": [0.5, -1.0], "input_std": [2.0, 0.5],
                       "target_mean": [3.0], "target_std": [4.0]},
    )
    lnsc_cfg = PeepholeConfig(
        input_size=3, output_size=2, blocks=2, cells_per_block=2, gate_to_gate=True,
        gate_to_output=True, init_range=0.5,
    )
    lnsc = _export(repo, LNSC, lnsc_cfg, seed=3, version=1)
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


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class LiveServer:
    """uvicorn serving create_app(settings) in a thread."""

    def __init__(self, settings: Settings, **collaborators: Any) -> None:
        self.settings = settings
        self.app = create_app(settings, **collaborators)
        port = free_port()
        config = uvicorn.Config(
            self.app, host="127.0.0.1", port=port, log_level="warning",
            ws_max_size=settings.max_body_bytes, lifespan="on",
        )
        self.server = uvicorn.Server(config)
        self.url = f"http://127.0.0.1:{port}"
        self.ws_url = f"ws://127.0.0.1:{port}"
        self.thread = threading.Thread(target=self.server.run, daemon=True)

    def __enter__(self) -> LiveServer:
        self.thread.start()
        deadline = time.monotonic() + 60
        while not self.server.started:
            if not self.thread.is_alive() or time.monotonic() > deadline:
                raise RuntimeError("server did not start")
            time.sleep(0.02)
        return self

    def __exit__(self, *exc: object) -> None:
        self.server.should_exit = True
        self.thread.join(timeout=30)

    def client(self, **kw: Any) -> httpx.Client:
        return httpx.Client(base_url=self.url, timeout=30, **kw)


def make_settings(repo: Path, **overrides: Any) -> Settings:
    base: dict[str, Any] = {
        "model_repository": repo,
        "provider": "cpu",
        "session_sweep_seconds": 0.2,
        "_env_file": None,
    }
    return Settings(**{**base, **overrides})


@pytest.fixture(scope="session")
def server(models: RepoModels) -> Iterator[LiveServer]:
    """The main server: no API keys, default limits but small enough to test."""
    settings = make_settings(models.repo, max_batch_size=8, max_steps=2000, max_body_bytes=200_000)
    with LiveServer(settings) as s:
        yield s


@pytest.fixture()
def client(server: LiveServer) -> Iterator[httpx.Client]:
    with server.client() as c:
        yield c


# -- helpers used by several test modules --------------------------------------------------

SIZES = {PLAIN: (2, 1), LNSC: (3, 2)}  # (input_size, output_size)
PLAIN_NORM = {"input_mean": [0.5, -1.0], "input_std": [2.0, 0.5], "target_mean": 3.0, "target_std": 4.0}


def reference(models: RepoModels, name: str, x: Any, state: dict | None = None) -> tuple[Any, dict]:
    """The PyTorch module (float64) on one sequence [T, I] in raw units: (y [T, O], state)."""
    import copy

    import numpy as np

    module = copy.deepcopy(models.modules[name]).double()
    xt = torch.tensor(np.asarray(x, np.float64))[None]
    if name == PLAIN:
        xt = (xt - torch.tensor(PLAIN_NORM["input_mean"])) / torch.tensor(PLAIN_NORM["input_std"])
    st = None if state is None else {k: torch.tensor(np.asarray(v, np.float64))[None] for k, v in state.items()}
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

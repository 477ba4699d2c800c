"""In-process timing: the exported graph on ONNX Runtime vs the PyTorch module in eager mode.

    python bench/engine.py                   # models/mackey-glass/1, models/trace-conditioning/1
    python bench/engine.py --random          # random models of the shipped sizes
    python bench/engine.py --quick --random  # smoke run (T = 50, one repeat)

For each model: one whole sequence of T = 1000 steps at batch 1 and 64, from the zero state;
the median of `--repeat` runs after one warm-up. Rows:
- `ort`: model.onnx (the lean graph the server runs);
- `ort-scan`: for the plain topology, the Scan lowering (model.cuda.onnx) on the CPU;
- `eager`: PeepholeLSTM.forward under torch.no_grad();
- `bare`: for the plain topology, a graph holding only the ONNX LSTM operator of the same
  size (no transposes, no normalisation, no output layer): the floor for `ort`.
Timing does not depend on weight values, so for a model directory the PyTorch module is
rebuilt from the card's architecture with fresh random weights. Threads default to 1 for
both runtimes (the per-step work is tiny; see training/model.py on thread contention).
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from onnx import TensorProto, helper

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from app.inference.card import Architecture, ModelCard  # noqa: E402
from training.export import build_graphs  # noqa: E402
from training.model import PeepholeConfig, PeepholeLSTM  # noqa: E402
from training.onnx_graphs import IR_VERSION, LSTM_ACTIVATIONS, OPSET  # noqa: E402

DEFAULT_DIRS = ["models/mackey-glass/1", "models/trace-conditioning/1"]
# The shipped sizes (training/tasks): mackey-glass plain, trace-conditioning lnsc 2x2.
RANDOM_ARCHS = {
    "mackey-glass (random)": Architecture(
        input_size=1, output_size=1, blocks=16, g="tanh", h="tanh",
        output_activation="linear", input_to_output=True, forget_bias=1.0,
    ),
    "trace-conditioning (random)": Architecture(
        input_size=2, output_size=1, blocks=2, cells_per_block=2
    ),
}  # fmt: skip


@dataclass
class Case:
    name: str
    arch: Architecture
    model_onnx: bytes
    scan_onnx: bytes | None  # the Scan lowering of a plain model (model.cuda.onnx)


def case_from_dir(path: Path) -> Case:
    card = ModelCard.model_validate_json((path / "model.json").read_text())
    cuda = path / card.onnx.cuda.file if card.onnx.cuda else None
    return Case(
        name=f"{card.name}/{card.version}",
        arch=card.architecture,
        model_onnx=(path / "model.onnx").read_bytes(),
        scan_onnx=cuda.read_bytes() if cuda and cuda.exists() else None,
    )


def case_random(name: str, arch: Architecture) -> Case:
    torch.manual_seed(0)
    graphs = build_graphs(PeepholeLSTM(PeepholeConfig.from_architecture(arch)), internals=False)
    cuda = graphs.get("cuda")
    return Case(name, arch, graphs["model"].SerializeToString(),
                cuda.SerializeToString() if cuda else None)  # fmt: skip


def bare_lstm(arch: Architecture) -> bytes:
    """One ONNX LSTM node with peepholes, hidden = blocks, the model's g and h: X [T, B, I]."""
    hidden, inputs = arch.blocks, arch.input_size
    rng = np.random.default_rng(0)

    def init(name: str, *shape: int) -> TensorProto:
        values = rng.uniform(-0.1, 0.1, shape).astype(np.float32).ravel()
        return helper.make_tensor(name, TensorProto.FLOAT, shape, values)

    acts = [LSTM_ACTIVATIONS[arch.g], LSTM_ACTIVATIONS[arch.h]]  # as in the real graph
    alpha_beta = {
        "activation_alpha": [a for _, a, _ in acts if a is not None],
        "activation_beta": [b for _, _, b in acts if b is not None],
    }
    node = helper.make_node(
        "LSTM", ["X", "W", "R", "B", "", "h0", "c0", "P"], ["Y", "Y_h", "Y_c"],
        hidden_size=hidden, activations=["Sigmoid", acts[0][0], acts[1][0]],
        **(alpha_beta if alpha_beta["activation_alpha"] else {}),
    )  # fmt: skip
    f32 = TensorProto.FLOAT
    graph = helper.make_graph(
        [node],
        "bare_lstm",
        [helper.make_tensor_value_info("X", f32, ["time", "batch", inputs]),
         helper.make_tensor_value_info("h0", f32, [1, "batch", hidden]),
         helper.make_tensor_value_info("c0", f32, [1, "batch", hidden])],
        [helper.make_tensor_value_info(n, f32, None) for n in ("Y", "Y_h", "Y_c")],
        [init("W", 1, 4 * hidden, inputs), init("R", 1, 4 * hidden, hidden),
         init("B", 1, 8 * hidden), init("P", 1, 3 * hidden)],
    )  # fmt: skip
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)])
    model.ir_version = IR_VERSION
    return model.SerializeToString()


def session(blob: bytes, threads: int) -> ort.InferenceSession:
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = threads
    opts.inter_op_num_threads = 1
    return ort.InferenceSession(blob, opts, providers=["CPUExecutionProvider"])


def median_seconds(fn: Callable[[], object], repeat: int) -> float:
    fn()  # warm-up (allocations, kernel selection)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def graph_feeds(arch: Architecture, x: np.ndarray) -> dict[str, np.ndarray]:
    batch = x.shape[0]
    feeds = {"x": x, "cell_states_in": np.zeros((batch, arch.cells), np.float32)}
    feeds["cell_outputs_in"] = np.zeros((batch, arch.cells), np.float32)
    if arch.gate_to_gate:
        feeds["gates_in"] = np.zeros((batch, arch.blocks, 3), np.float32)
    return feeds


def bench_case(case: Case, batch: int, steps: int, repeat: int, threads: int) -> dict:
    """Seconds per whole-sequence call for each runtime on one [batch, steps] input."""
    arch = case.arch
    x = np.random.default_rng(1).standard_normal((batch, steps, arch.input_size), np.float32)
    times = {}
    lean = session(case.model_onnx, threads)
    feeds = graph_feeds(arch, x)
    times["ort"] = median_seconds(lambda: lean.run(None, feeds), repeat)
    if case.scan_onnx is not None:
        scan = session(case.scan_onnx, threads)
        times["ort-scan"] = median_seconds(lambda: scan.run(None, feeds), repeat)
    module = PeepholeLSTM(PeepholeConfig.from_architecture(arch)).eval()
    xt = torch.from_numpy(x)
    with torch.no_grad():
        times["eager"] = median_seconds(lambda: module(xt), repeat)
    if arch.plain:
        bare = session(bare_lstm(arch), threads)
        zeros = np.zeros((1, batch, arch.blocks), np.float32)
        bare_feeds = {"X": np.ascontiguousarray(x.transpose(1, 0, 2)), "h0": zeros, "c0": zeros}
        times["bare"] = median_seconds(lambda: bare.run(None, bare_feeds), repeat)
    return times


def report(case: Case, batch: int, steps: int, times: dict) -> str:
    cols = "  ".join(f"{k} {v * 1e3:8.2f} ms" for k, v in times.items())
    ratios = f"eager/ort {times['eager'] / times['ort']:6.1f}x"
    if "bare" in times:
        ratios += f"  ort/bare {times['ort'] / times['bare']:5.2f}x"
    return f"{case.name:28s} B={batch:<3d} T={steps}  {cols}  | {ratios}"


def main(argv: list[str] | None = None) -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dirs", nargs="*", help=f"model version dirs (default {DEFAULT_DIRS})")
    ap.add_argument("--random", action="store_true", help="random models of the shipped sizes")
    ap.add_argument("--quick", action="store_true", help="smoke run: T=50, one repeat")
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 64])
    ap.add_argument("--repeat", type=int, default=7)
    ap.add_argument("--threads", type=int, default=1)
    args = ap.parse_args(argv)
    steps, repeat = (50, 1) if args.quick else (args.steps, args.repeat)
    torch.set_num_threads(args.threads)
    if args.random:
        cases = [case_random(n, a) for n, a in RANDOM_ARCHS.items()]
    else:
        dirs = [Path(d) for d in (args.dirs or DEFAULT_DIRS)]
        missing = [str(d) for d in dirs if not (d / "model.json").exists()]
        if missing:
            ap.error(f"no model in {', '.join(missing)}; use --random")
        cases = [case_from_dir(d) for d in dirs]
    print(f"onnxruntime {ort.__version__}, torch {torch.__version__}, threads {args.threads}")
    for case in cases:
        for batch in args.batches:
            print(report(case, batch, steps, bench_case(case, batch, steps, repeat, args.threads)))


if __name__ == "__main__":
    main()

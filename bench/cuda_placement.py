"""Does every node of model.cuda.onnx run on CUDA? And how fast is it there?

    python bench/cuda_placement.py models/mackey-glass/1      # placement of a model's cuda graph
    python bench/cuda_placement.py --random                   # a random plain model, 32 blocks
    python bench/cuda_placement.py --random --bench           # + GPU vs CPU timings
    python bench/cuda_placement.py --random --require-cuda    # exit 1 unless all nodes on CUDA
    python bench/cuda_placement.py --quick                    # smoke run (CI; no GPU needed)

ONNX Runtime's CUDA provider has no kernel for an LSTM node with peepholes, so for the plain
topology the exporter also writes `model.cuda.onnx` (the Scan lowering, plain operators only)
and the engine loads it when the provider is CUDA. Proof of placement, two ways:
1. the session is created with `log_severity_level = 0`; ONNX Runtime then logs, per graph
   (the Scan body included), "All nodes placed on [X]" or "Node(s) placed on [X]" followed by
   the node names. Its C++ log goes to file descriptor 2, which is captured here;
2. one profiled run (`enable_profiling`): every executed kernel is a JSON event whose
   `args.provider` names the provider that ran it.
Any node on CPUExecutionProvider is listed, and with --require-cuda the exit status is 1.

Without CUDAExecutionProvider (this project's CI and development box have no GPU), nothing
about placement can be proven: the script says so plainly, lists the graph's operator types
(all plain ONNX operators, no LSTM node) and checks the cuda graph against model.onnx on the
CPU, then exits 0 (1 with --require-cuda).
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path

import numpy as np
import onnx
import onnxruntime as ort

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

CUDA, CPU = "CUDAExecutionProvider", "CPUExecutionProvider"


def random_graphs(blocks: int) -> tuple[bytes, bytes]:
    """(model.onnx, model.cuda.onnx) of a seeded random plain model (1 input, 1 output)."""
    import torch

    from training.export import build_graphs
    from training.model import PeepholeConfig, PeepholeLSTM

    torch.manual_seed(0)
    cfg = PeepholeConfig(input_size=1, output_size=1, blocks=blocks, g="tanh", h="tanh",
                         output_activation="linear")  # fmt: skip
    graphs = build_graphs(PeepholeLSTM(cfg).eval(), internals=False)
    return graphs["model"].SerializeToString(), graphs["cuda"].SerializeToString()


def dir_graphs(path: Path) -> tuple[bytes, bytes]:
    card = json.loads((path / "model.json").read_text())
    cuda = (card.get("onnx") or {}).get("cuda")
    if not cuda:
        raise SystemExit(f"{path}: the card names no cuda graph (not the plain topology?)")
    return (path / "model.onnx").read_bytes(), (path / cuda["file"]).read_bytes()


def op_types(blob: bytes) -> Counter[str]:
    """Operator types of a graph and of every subgraph (the Scan body)."""
    counts: Counter[str] = Counter()

    def walk(g: onnx.GraphProto) -> None:
        for node in g.node:
            counts[node.op_type] += 1
            for attr in node.attribute:
                if attr.type == onnx.AttributeProto.GRAPH:
                    walk(attr.g)
                for sub in attr.graphs:
                    walk(sub)

    walk(onnx.load_from_string(blob).graph)
    return counts


def feeds(sess: ort.InferenceSession, batch: int, steps: int) -> dict[str, np.ndarray]:
    """x [batch, steps, input_size] random, every state input zeros."""
    rng = np.random.default_rng(0)
    out = {}
    for i in sess.get_inputs():
        if i.name == "x":
            out["x"] = rng.standard_normal((batch, steps, i.shape[-1])).astype(np.float32)
        else:
            out[i.name] = np.zeros((batch, *i.shape[1:]), np.float32)
    return out


def placement(blob: bytes, batch: int, steps: int) -> tuple[dict[str, list[str]], Counter[str]]:
    """Run once on CUDA, verbose and profiled: (log placements, profiled kernels per provider)."""
    work = Path(tempfile.mkdtemp(prefix="cuda-placement-"))
    log = work / "ort.log"
    so = ort.SessionOptions()
    so.log_severity_level = 0
    so.log_verbosity_level = 1
    so.enable_profiling = True
    so.profile_file_prefix = str(work / "profile")
    saved = os.dup(2)
    with open(log, "wb") as f:
        os.dup2(f.fileno(), 2)  # ONNX Runtime's C++ logger writes to fd 2
        try:
            sess = ort.InferenceSession(blob, so, providers=[CUDA, CPU])
            sess.run(None, feeds(sess, batch, steps))
            profile = Path(sess.end_profiling())
        finally:
            os.dup2(saved, 2)
            os.close(saved)
    placed: dict[str, list[str]] = {}
    text = log.read_text(errors="replace")
    for m in re.finditer(r"All nodes placed on \[(\w+)\]\. Number of nodes: (\d+)", text):
        placed.setdefault(m.group(1), []).append(f"all {m.group(2)} nodes of a graph")
    for m in re.finditer(r"Node\(s\) placed on \[(\w+)\]\. Number of nodes: (\d+)\n((?:.*\n)*?)"
                         r"(?=.*(?:placed on|\Z))", text):  # fmt: skip
        names = [ln.strip() for ln in m.group(3).splitlines() if ln.strip()]
        placed.setdefault(m.group(1), []).extend(names or [f"{m.group(2)} nodes"])
    kernels: Counter[str] = Counter()
    for ev in json.loads(profile.read_text()):
        if ev.get("cat") == "Node" and ev.get("name", "").endswith("_kernel_time"):
            kernels[ev.get("args", {}).get("provider", "?")] += 1
    return placed, kernels


def timing(blob: bytes, provider: str, batch: int, steps: int, repeat: int) -> float:
    so = ort.SessionOptions()
    so.intra_op_num_threads = 1
    sess = ort.InferenceSession(blob, so, providers=[provider, CPU])
    f = feeds(sess, batch, steps)
    sess.run(None, f)
    times = []
    for _ in range(repeat):
        t0 = time.perf_counter()
        sess.run(None, f)
        times.append(time.perf_counter() - t0)
    return statistics.median(times)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("dir", nargs="?", help="a model version directory (plain topology)")
    ap.add_argument("--random", action="store_true", help="a random plain model instead")
    ap.add_argument("--blocks", type=int, default=32)
    ap.add_argument("--steps", type=int, default=1000)
    ap.add_argument("--bench", action="store_true", help="GPU vs CPU timings")
    ap.add_argument("--require-cuda", action="store_true")
    ap.add_argument("--quick", action="store_true", help="smoke run: random model, T = 20")
    args = ap.parse_args(argv)
    if args.quick:
        args.random, args.steps, args.blocks = True, 20, 8
    if args.random or not args.dir:
        lean, cuda = random_graphs(args.blocks)
        name = f"random plain model, {args.blocks} blocks"
    else:
        lean, cuda = dir_graphs(Path(args.dir))
        name = args.dir
    ops = op_types(cuda)
    listing = ", ".join(f"{k} x{v}" for k, v in sorted(ops.items()))
    print(f"{name}: model.cuda.onnx operators (Scan body included): {listing}")
    if "LSTM" in ops:
        print("the cuda graph holds an LSTM node (CPU-only with peepholes)")
        return 1
    # same answers on the CPU as the lean graph (the exporter checked both against PyTorch)
    so = ort.SessionOptions()
    a = ort.InferenceSession(lean, so, providers=[CPU])
    b = ort.InferenceSession(cuda, so, providers=[CPU])
    f = feeds(a, 2, args.steps)
    outs = zip(a.run(None, f), b.run(None, f), strict=True)
    diff = max(float(np.abs(x - y).max()) for x, y in outs)
    print(f"model.cuda.onnx vs model.onnx on the CPU, B=2 T={args.steps}: max abs diff {diff:.2e}")
    providers = ort.get_available_providers()
    if CUDA not in providers:
        print(f"UNVERIFIED: CUDAExecutionProvider is not available in this onnxruntime build "
              f"({ort.__version__}, providers {providers}); node placement cannot be proven "
              f"here. Run this script on a GPU machine with onnxruntime-gpu.")  # fmt: skip
        return 1 if args.require_cuda else 0
    placed, kernels = placement(cuda, 1, args.steps)
    for prov, nodes in sorted(placed.items()):
        print(f"log: placed on {prov}: {len(nodes)} entries: {', '.join(nodes[:12])}")
    print("profile: kernels run per provider: " + ", ".join(f"{k} {v}" for k, v in kernels.items()))
    on_cpu = [n for p, ns in placed.items() if p != CUDA for n in ns] + (
        [f"{kernels[CPU]} profiled kernels"] if kernels.get(CPU) else []
    )
    ok = bool(placed.get(CUDA) or kernels.get(CUDA)) and not on_cpu
    print("ALL NODES ON CUDA" if ok else f"NOT ALL ON CUDA: {on_cpu[:20]}")
    if args.bench:
        for batch in (1, 64):
            cpu = timing(lean, CPU, batch, args.steps, 5)
            gpu = timing(cuda, CUDA, batch, args.steps, 5)
            print(f"B={batch} T={args.steps}: CPU model.onnx {cpu * 1e3:.2f} ms, CUDA "
                  f"model.cuda.onnx {gpu * 1e3:.2f} ms, CPU/CUDA {cpu / gpu:.2f}x")  # fmt: skip
    return 0 if ok or not args.require_cuda else 1


if __name__ == "__main__":
    sys.exit(main())

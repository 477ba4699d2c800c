"""The served graph of the dopamine model: the US prediction, the critic's value and its TD
error per step, from a network trained by the reproduction (critic frozen).

The LSTM part is the project's Scan lowering (training/onnx_graphs.py) of a `PeepholeLSTM`
holding the trained weights. The critic is added after the Scan, over all steps at once:
xc(t) = [CS(t), clip01(o(t-1)), clip01(s(t-1))] is the sequence of outputs and cell states
shifted by one step, with the carried o(t-1) and s(t-1) in front; V = xc . w; V(t-1) is V
shifted the same way; delta = started * (US + gamma V - V(t-1)). The carried state:
the LSTM's cell states and outputs, and `critic_prev_output` o(t-1), `critic_prev_value`
V(t-1), `critic_started` (0 before a session's first step: delta(0) = 0, o(-1) = V(-1) = 0,
as at an lnsc block start). All zeros is the block start, so a new session is one.
"""

from __future__ import annotations

import hashlib
from pathlib import Path
from typing import Any

import numpy as np
import onnx
import onnxruntime as ort
import torch
from onnx import helper

from app.inference.card import (
    GraphFile,
    ModelCard,
    OnnxInfo,
    TDCritic,
    TrainingInfo,
    state_layout,
)
from training.export import GRAPH_FILES, ExportMismatch, _error, _write, next_version
from training.lnsc.experiment import MasterResult
from training.lnsc.kernel import REC_DELTA, REC_FIXED, REC_O, REC_V
from training.lnsc.nets import Nets
from training.lnsc.network import Dims
from training.lnsc.protocol import MAKERS
from training.model import PeepholeConfig, PeepholeLSTM
from training.onnx_graphs import F32, IR_VERSION, OPSET, Builder, scan_graph

NAME = "rivest2010"
INPUT_NAMES = ["cs", "us"]
OUTPUT_NAMES = ["us", "value", "td_error"]
CHECK_BATCHES = (1, 5)
CHECK_LENGTHS = (1, 7, 1000)
# float32 graph vs the float64 reference: over 1000-step blocks a trained network's cell states
# drift by ~1e-5 in float32, and the critic's weights (up to ~10 after training) scale that
# into V and delta (measured: 9e-5 on network 0 of the committed run; 3e-6 for the LSTM's own
# output). A lowering or critic bug shows as errors of 1e-2 and more.
TOLERANCE = 2e-4


def to_module(dims: Dims, theta: np.ndarray) -> PeepholeLSTM:
    """A float32 `PeepholeLSTM` with one network's weights (layout: training/lnsc/network.py)."""
    b, s, i, c = dims.blocks, dims.cells_per_block, dims.inputs, dims.cells
    cfg = PeepholeConfig(
        input_size=i,
        output_size=1,
        blocks=b,
        cells_per_block=s,
        g="logistic2",
        h="logistic2",
        output_activation="logistic",
    )
    model = PeepholeLSTM(cfg)
    p = dims.split(np.asarray(theta, np.float64))
    rows = [p["w_in"], p["w_f"], p["w_out"], p["w_c"].reshape(c, dims.u)]
    w = np.concatenate(rows)  # [units, U]: gates per block, then cells block-major
    with torch.no_grad():
        model.bias.copy_(torch.from_numpy(w[:, 0]))
        model.w_input.copy_(torch.from_numpy(w[:, 1 : 1 + i]))
        model.w_recurrent.copy_(torch.from_numpy(w[:, 1 + i :]))
        model.peep_in.copy_(torch.from_numpy(p["p_in"]))
        model.peep_forget.copy_(torch.from_numpy(p["p_f"]))
        model.peep_out.copy_(torch.from_numpy(p["p_out"]))
        model.output.bias.copy_(torch.from_numpy(p["w_o"][:1]))
        model.output.weight.copy_(torch.from_numpy(p["w_o"][None, 1:]))
    return model.float().eval()


def _critic_nodes(g: Builder, critic: TDCritic, cells: int) -> None:
    """Append the critic after the Scan graph's `lstm_y` and `cell_states` sequences."""
    ax1, ax2 = g.ints("ax1", [1]), g.ints("ax2", [2])
    zero, one, big = g.ints("zero", [0]), g.ints("one", [1]), g.ints("end", [2**62])
    minus1 = g.ints("minus1", [-1])

    def column(src: str, k: int) -> str:
        return g.op("Slice", [src, g.ints(f"c{k}", [k]), g.ints(f"c{k + 1}", [k + 1]), ax2])

    def shifted(first: str, seq: str) -> str:
        """[first, seq[:, :-1]] along time: the previous step's value at every step."""
        head = g.op("Unsqueeze", [first, ax1])
        body = g.op("Slice", [seq, zero, minus1, ax1])
        return g.op("Concat", [head, body], axis=1)

    lo, hi = g.const("lo", np.array(0.0)), g.const("hi", np.array(1.0))
    cs = column("x", critic.cs_input)
    us = column("x", critic.reward_input)
    o_prev = g.op("Clip", [shifted("critic_prev_output_in", "lstm_y"), lo, hi])
    s_prev = g.op("Clip", [shifted("cell_states_in", "cell_states"), lo, hi])
    xc = g.op("Concat", [cs, o_prev, s_prev], "xc", axis=2)
    w = g.const("critic_w", np.array(critic.weights, np.float32).reshape(2 + cells, 1))
    value = g.op("MatMul", [xc, w], "value")
    v_prev = shifted("critic_prev_value_in", value)
    rest = g.op("Shape", [g.op("Slice", [value, one, big, ax1])])
    ones = g.op("ConstantOfShape", [rest], value=helper.make_tensor("v", F32, [1], [1.0]))
    started = g.op("Concat", [g.op("Unsqueeze", ["critic_started_in", ax1]), ones], axis=1)
    gamma = g.const("gamma", np.array(critic.gamma))
    delta = g.op("Sub", [g.op("Add", [us, g.op("Mul", [gamma, value])]), v_prev])
    delta = g.op("Mul", [started, delta], "td_error")
    g.named("Concat", ["lstm_y", value, delta], "y", axis=2)
    last = g.ints("last", [-1])
    g.named("Squeeze", [g.op("Gather", ["lstm_y", last], axis=1), ax1], "critic_prev_output_out")
    g.named("Squeeze", [g.op("Gather", [value, last], axis=1), ax1], "critic_prev_value_out")
    g.named(
        "ConstantOfShape",
        [g.op("Shape", ["critic_started_in"])],
        "critic_started_out",
        value=helper.make_tensor("v", F32, [1], [1.0]),
    )


def build_graph(module: PeepholeLSTM, critic: TDCritic, internals: bool) -> onnx.ModelProto:
    """The Scan lowering of `module` (with per-step internals inside) plus the critic."""
    base = scan_graph(module, None, internals=True)
    graph = base.graph
    for node in graph.node:
        node.output[:] = ["lstm_y" if o == "y" else o for o in node.output]
    cells = module.config.cells
    g = Builder("critic_")
    _critic_nodes(g, critic, cells)
    graph.node.extend(g.nodes)
    graph.initializer.extend(g.initializers)

    def vi(name: str, *dims) -> onnx.ValueInfoProto:
        return helper.make_tensor_value_info(name, F32, ["batch", *dims])

    extra_state = [n for n, _ in critic.state]
    graph.input.extend([vi(f"{n}_in", 1) for n in extra_state])
    keep = {"cell_states_out", "cell_outputs_out"}
    if internals:
        keep |= {"cell_states", "cell_outputs", "gates"}
    outputs = [o for o in graph.output if o.name in keep]
    del graph.output[:]
    graph.output.extend([vi("y", "time", 1 + len(critic.outputs)), *outputs])
    graph.output.extend([vi(f"{n}_out", 1) for n in extra_state])
    graph.doc_string = "lnsc peephole LSTM + frozen TD critic (Rivest, Kalaska & Bengio 2010)"
    model = helper.make_model(
        graph, opset_imports=[helper.make_opsetid("", OPSET)], producer_name="peephole"
    )
    model.ir_version = IR_VERSION
    onnx.checker.check_model(model, full_check=True)
    return model


# ------------------------------------------------------------------ reference and check
def reference(
    dims: Dims, theta: np.ndarray, w_critic: np.ndarray, gamma: float, feeds: dict[str, np.ndarray]
) -> dict[str, np.ndarray]:
    """The frozen network and critic in float64 (the training kernel, learning off)."""
    from training.lnsc.network import Knobs

    x = feeds["x"].astype(np.float64)
    batch, steps, _ = x.shape
    knobs = Knobs(learn_lstm=False, learn_critic=False, gamma=gamma)
    nets = Nets(dims, knobs, np.repeat(theta[None], batch, 0), np.repeat(w_critic[None], batch, 0))
    nets.reset()
    nets.s[:] = feeds["cell_states_in"]
    nets.y[:] = feeds["cell_outputs_in"]
    nets.o_prev[:] = feeds["critic_prev_output_in"][:, 0]
    nets.v_prev[:] = feeds["critic_prev_value_in"][:, 0]
    nets.first[:] = (feeds["critic_started_in"][:, 0] == 0).astype(np.int64)
    rec = nets.step(x, x[..., 1], record=True).rec
    c, b = dims.cells, dims.blocks
    return {
        "y": rec[..., [REC_O, REC_V, REC_DELTA]],
        "cell_states_out": nets.s.copy(),
        "cell_outputs_out": nets.y.copy(),
        "critic_prev_output_out": nets.o_prev[:, None].copy(),
        "critic_prev_value_out": rec[:, -1, REC_V][:, None],
        "critic_started_out": np.ones((batch, 1)),
        "cell_states": rec[..., REC_FIXED : REC_FIXED + c],
        "cell_outputs": rec[..., REC_FIXED + c : REC_FIXED + 2 * c],
        "gates": rec[..., REC_FIXED + 2 * c :].reshape(batch, steps, b, 3),
    }


def check_cases(dims: Dims, seed: int = 2010) -> list[tuple[str, dict[str, np.ndarray]]]:
    """Real trial blocks and random 0/1 inputs, from the zero state and from a random one."""
    r = np.random.default_rng(seed)
    cases = []
    for batch in CHECK_BATCHES:
        for steps in CHECK_LENGTHS:
            if steps >= 100:  # whole conditioning blocks: training trials and probes
                kinds = ["train", "probe", "omission", "control", "train"]
                blocks = [MAKERS[kinds[i % len(kinds)]](r) for i in range(batch)]
                x = np.zeros((batch, steps, 2))
                for i, blk in enumerate(blocks):
                    n = min(steps, blk.steps)
                    x[i, :n] = blk.x[:n]
            else:
                x = (r.random((batch, steps, 2)) < 0.3).astype(float)
            for start in ("zero", "random"):
                feeds = {"x": x.astype(np.float32)}
                for st in state_layout_for(dims):
                    shape = (batch, *st.shape)
                    if start == "zero":
                        v = np.zeros(shape)
                    elif st.name == "critic_started":
                        v = r.integers(0, 2, shape).astype(float)
                    elif st.name in ("critic_prev_output", "critic_prev_value"):
                        v = r.uniform(0, 1.5, shape)
                    else:
                        v = r.uniform(-1, 1, shape)
                    feeds[st.input] = v.astype(np.float32)
                cases.append((f"batch={batch} T={steps} state={start}", feeds))
    return cases


def state_layout_for(dims: Dims):
    critic = TDCritic(cs_input=0, reward_input=1, gamma=0.98, weights=[0.0] * dims.critic_inputs)
    return state_layout(_config(dims).to_architecture(), critic)


def _config(dims: Dims) -> PeepholeConfig:
    return to_module(dims, np.zeros(dims.params)).config


def verify(
    graphs: dict[str, onnx.ModelProto],
    dims: Dims,
    theta: np.ndarray,
    w_critic: np.ndarray,
    gamma: float,
    tolerance: float = TOLERANCE,
) -> dict:
    """Max error per graph and output against `reference`; ExportMismatch above tolerance."""
    opts = ort.SessionOptions()
    opts.intra_op_num_threads = 1
    opts.log_severity_level = 3
    sessions = {
        k: ort.InferenceSession(g.SerializeToString(), opts, providers=["CPUExecutionProvider"])
        for k, g in graphs.items()
    }
    worst: dict[str, dict[str, float]] = {k: {} for k in graphs}
    failures = []
    for case, feeds in check_cases(dims):
        expected = reference(dims, theta, w_critic, gamma, feeds)
        for kind, sess in sessions.items():
            names = [o.name for o in sess.get_outputs()]
            for name, value in zip(names, sess.run(None, feeds), strict=True):
                err = _error(value, expected[name])
                worst[kind][name] = max(worst[kind].get(name, 0.0), err)
                if not err <= tolerance:
                    failures.append(f"{kind}:{name} {case}: error {err:.3g}")
    if failures:
        raise ExportMismatch(
            f"ONNX Runtime differs from the reference beyond {tolerance:g}: "
            + "; ".join(failures[:8])
        )
    return worst


# ------------------------------------------------------------------ writing
def export_network(
    repo: Path,
    dims: Dims,
    theta: np.ndarray,
    w_critic: np.ndarray,
    gamma: float,
    training: dict[str, Any],
    version: int | None = None,
    tolerance: float = TOLERANCE,
    description: str = "",
) -> Path:
    """Build both graphs, check them against the reference, write models/rivest2010/<v>."""
    module = to_module(dims, theta)
    critic = TDCritic(
        cs_input=0,
        reward_input=1,
        gamma=gamma,
        weights=[float(v) for v in np.asarray(w_critic, np.float32)],
    )
    graphs = {
        "model": build_graph(module, critic, internals=False),
        "internals": build_graph(module, critic, internals=True),
    }
    # the graph holds float32 weights: check against the reference with the same weights
    theta32 = np.asarray(theta, np.float32).astype(np.float64)
    w32 = np.asarray(critic.weights, np.float64)
    errors = verify(graphs, dims, theta32, w32, gamma, tolerance)
    blobs = {k: g.SerializeToString() for k, g in graphs.items()}
    repo = Path(repo)
    version = next_version(repo, NAME) if version is None else version
    arch = module.config.to_architecture()

    def digest(kind: str) -> str:
        return hashlib.sha256(blobs[kind]).hexdigest()

    card = ModelCard(
        name=NAME,
        version=version,
        task=NAME,
        description=description
        or "lnsc dopamine model (Rivest, Kalaska & Bengio 2010): an "
        "online-trained peephole LSTM predicts the US; a frozen TD critic reads its output and "
        "cell states; outputs per 200 ms step: US prediction, value, TD error (dopamine)",
        input_size=2,
        output_size=3,
        input_names=INPUT_NAMES,
        output_names=OUTPUT_NAMES,
        output_activation="logistic",
        architecture=arch,
        critic=critic,
        state=state_layout(arch, critic),
        encoding=_encoding(),
        training=TrainingInfo(**training),
        onnx=OnnxInfo(
            opset=OPSET,
            sha256=digest("model"),
            lowering="scan",
            internals=GraphFile(file=GRAPH_FILES["internals"], sha256=digest("internals")),
        ),
        verification={
            "reference": "training/lnsc kernel in float64 (learning off), float32 weights",
            "measure": "max |ort - reference| / max(1, |reference|)",
            "batches": list(CHECK_BATCHES),
            "lengths": list(CHECK_LENGTHS),
            "states": ["zero", "random"],
            "tolerance": tolerance,
            "max_error": {
                k: {n: float(f"{e:.3g}") for n, e in v.items()} for k, v in errors.items()
            },
        },
    )
    return _write(repo / NAME, version, blobs, card)


def _encoding() -> dict[str, Any]:
    return {
        "step_ms": 200,
        "inputs": {
            "columns": INPUT_NAMES,
            "meaning": "1.0 at the step of the conditioned "
            "stimulus / of the US (reward), 0.0 elsewhere; one continuous stream, carry "
            "the state; a new session is a block start",
        },
        "outputs": {
            "columns": OUTPUT_NAMES,
            "meaning": "us: o(t), the US expected at the next "
            "step (logistic); value: the critic's V(t); td_error: delta(t) = US(t) + "
            "gamma V(t) - V(t-1), the model's dopamine signal (0 on the first step)",
        },
    }


def export_trained(
    master: MasterResult,
    repo: Path,
    command: str,
    results: dict[str, Any],
    version: int | None = None,
) -> Path:
    """Export the first Kept network of a MasterTraining run as it was at the end of the Kept
    block (where it met the criterion), its critic with it."""
    kept = np.nonzero(master.kept)[0]
    if not len(kept):
        raise RuntimeError("no network met the criterion in the second-to-last block")
    n = int(kept[0])
    seed, program, index = master.nets.ids[n]
    k = master.nets.knobs
    training = {
        "task": NAME,
        "seed": seed,
        "data": {
            "generator": "training/lnsc/protocol.py",
            "program": "MasterTraining",
            "blocks": int(len(master.met)),
            "block_transitions": 1200,
            "train_delay_steps": 5,
            "probe_delay_steps": [2, 7],
            "iti_steps": [20, 29],
            "step_ms": 200,
        },
        "steps": int(master.steps // master.nets.n),
        "wall_time_seconds": round(master.seconds, 1),
        "metrics": {
            "network": {"seed": seed, "program": program, "index": index},
            "first_criterion_block": int(master.first_block()[n]),
            "trials_to_criterion": int(master.trials_to_criterion()[n]),
            "criterion_met_in_blocks": int((master.met[:, n] >= 0).sum()),
            "kept": True,
            "run_kept": f"{int(master.kept.sum())}/{master.nets.n}",
        },
        "command": command,
        "knobs": k.as_dict(),
        # the float64 weights the graph was built from (layout: training/lnsc/network.py)
        "weights": {
            "theta": master.kept_theta[n].tolist(),
            "critic": master.kept_w_critic[n].tolist(),
            "taken": f"end of MasterTraining block {len(master.met) - 2} (the Kept block)",
        },
    }
    return export_network(
        repo,
        master.nets.dims,
        master.kept_theta[n],
        master.kept_w_critic[n],
        k.gamma,
        training,
        version,
    )

"""`python -m training figures`: the plots and numbers of docs/QUALITY.md.

Every figure is drawn from the SHIPPED models as they are served (the serving engine,
app.inference.engine, on models/<name>/<latest>/; its internals graph where gates are
shown), on fresh data from the task generators (`--seed`, never used for training), so the
pictures show what a user gets.
The numbers quoted in QUALITY.md are written beside the PNGs in `figures.json`.

Figures (docs/img/quality/):
- `reproduce_curves.png`: the criterion's metric on fresh data against training sequences,
  paper vs modern set-up, from `reproduce.json` (if given);
- `training_curves.png`: per-epoch train/validation loss of each shipped model;
- `mackey_glass_prediction.png`: one-step prediction against truth on the fresh test series,
  the error, and a free-running (iterated) generation from the true past;
- `mackey_glass_horizons.png`: NMSE of the iterated prediction 1..6 steps ahead, LSTM
  against the linear window baseline iterated the same way;
- `trace_conditioning.png`: US prediction over normal, probe (500/1500 ms) and omission
  trials, and the six gate activations over a normal trial;
- `embedded_reber.png`: the seven outputs over one string, with the legal next symbols;
- `adding_msd.png`: adding predictions against targets, MSD outputs at the spikes.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import matplotlib
import numpy as np

from app.inference.engine import Engine
from app.inference.repository import load_version
from training.baselines import linear_ar
from training.errors import UserError
from training.tasks import adding, embedded_reber, mackey_glass, msd, trace_conditioning

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402


class Served:
    """A shipped model version as the server runs it: the serving engine
    (app.inference.engine, ONNX Runtime on the CPU) on the repository's accepted version."""

    def __init__(self, repo: Path, name: str) -> None:
        versions = [p for p in (repo / name).iterdir() if p.is_dir() and p.name.isdigit()]
        self.dir = max(versions, key=lambda p: int(p.name))
        mv = load_version(self.dir, name, int(self.dir.name))
        self.card = mv.card
        self.engine = Engine(mv, provider="cpu")

    def run(
        self, x: np.ndarray, state: dict[str, np.ndarray] | None = None, internals: bool = False
    ) -> dict[str, np.ndarray]:
        """`y`, the final state by name (cell_states, ...) and, with `internals`, the
        per-step internals under `internals/<name>`."""
        r = self.engine.run(np.ascontiguousarray(x, np.float32), state, internals=internals)
        out = {"y": r.y, **{f"state/{k}": v for k, v in r.states.items()}}
        out.update({f"internals/{k}": v for k, v in (r.internals or {}).items()})
        return out

    @staticmethod
    def state(r: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        return {k.split("/", 1)[1]: v for k, v in r.items() if k.startswith("state/")}


# -------------------------------------------------------------- Mackey-Glass
def _ar_fit(train: np.ndarray, p: int) -> np.ndarray:
    """Least-squares AR(p) with a constant on the training series: weights for
    [s[t-p+1], ..., s[t], 1]."""
    ts = np.arange(p - 1, len(train) - 1)
    a = np.stack([*(train[ts - lag] for lag in range(p - 1, -1, -1)), np.ones(len(ts))], 1)
    w, *_ = np.linalg.lstsq(a, train[ts + 1], rcond=None)
    return w


def _ar_iterated(s: np.ndarray, w: np.ndarray, origins: np.ndarray, k: int) -> np.ndarray:
    """[len(origins), k]: predictions of s[t+1..t+k] from s[..t], feeding predictions back."""
    p = len(w) - 1
    win = np.stack([s[t - p + 1 : t + 1] for t in origins])
    out = np.empty((len(origins), k))
    for j in range(k):
        nxt = win @ w[:-1] + w[-1]
        out[:, j] = nxt
        win = np.concatenate([win[:, 1:], nxt[:, None]], axis=1)
    return out


def _lstm_iterated(m: Served, s: np.ndarray, origins: np.ndarray, k: int) -> np.ndarray:
    """[len(origins), k] from the served model: the true series up to each origin builds the
    state (internals give it at every step), then the model's outputs are fed back."""
    r = m.run(s[None, :, None], internals=True)
    # The state after consuming s[t]: the per-step internals carry every state tensor.
    state = {st.name: r[f"internals/{st.name}"][0, origins] for st in m.card.state}
    out = np.empty((len(origins), k))
    nxt = r["y"][0, origins, 0]
    for j in range(k):
        out[:, j] = nxt
        if j + 1 < k:
            step = m.run(nxt[:, None, None], state)
            state = m.state(step)
            nxt = step["y"][:, 0, 0]
    return out


def mackey_glass_figures(repo: Path, out: Path) -> dict[str, Any]:
    m = Served(repo, "mackey-glass")
    task = mackey_glass.MackeyGlass()
    train = mackey_glass.series(4000, task.x0["train"])
    val = mackey_glass.series(1500, task.x0["val"])
    test = mackey_glass.series(1500, task.x0["test"])
    warm, k = task.warmup, 6
    p = linear_ar(train, val, test, warmup=warm, max_window=warm)["window"]
    w = _ar_fit(train, p)
    origins = np.arange(warm, len(test) - k)
    truth = np.stack([test[origins + j + 1] for j in range(k)], axis=1)
    lstm = _lstm_iterated(m, test, origins, k)
    ar = _ar_iterated(test, w, origins, k)
    var = np.var(truth, axis=0)
    res = {
        "series": "test, x0 = 0.5, 1,500 samples, origins t = 100..1493",
        "ar_window": int(p),
        "steps_ahead": list(range(1, k + 1)),
        "lstm_nmse": (np.mean((lstm - truth) ** 2, 0) / var).tolist(),
        "linear_ar_nmse": (np.mean((ar - truth) ** 2, 0) / var).tolist(),
    }

    # Free run: true past up to t0, then the model's own outputs only.
    t0, n_free = 500, 300
    r = m.run(test[None, : t0 + 1, None])
    state = m.state(r)
    free, nxt = [], float(r["y"][0, -1, 0])
    for _ in range(n_free):
        free.append(nxt)
        step = m.run(np.array([[[nxt]]]), state)
        state = m.state(step)
        nxt = float(step["y"][0, 0, 0])
    one = m.run(test[None, :-1, None])["y"][0, :, 0]  # one-step predictions of test[1:]

    fig, axes = plt.subplots(3, 1, figsize=(10, 8.5))
    ts = np.arange(warm, 700)
    axes[0].plot(ts + 1, test[ts + 1], label="truth", lw=2.2, color="0.7")
    axes[0].plot(ts + 1, one[ts], label="LSTM, 1 step (6 time units) ahead", lw=1, color="C0")
    axes[0].set_title("Mackey-Glass (tau 17), fresh test series: one-step prediction")
    axes[0].legend(loc="upper right")
    axes[1].plot(ts + 1, one[ts] - test[ts + 1], color="C3", lw=1)
    axes[1].set_title("one-step error (prediction - truth)")
    tf = np.arange(t0 + 1, t0 + 1 + n_free)
    axes[2].plot(
        np.arange(t0 - 100, t0 + 1 + n_free),
        test[t0 - 100 : t0 + 1 + n_free],
        label="truth",
        lw=2.2,
        color="0.7",
    )
    axes[2].plot(tf, free, label=f"LSTM free-running from sample {t0}", lw=1, color="C1")
    axes[2].axvline(t0 + 0.5, color="k", ls=":", lw=1)
    axes[2].set_title("free-running generation: outputs fed back as inputs")
    axes[2].legend(loc="upper right")
    for ax in axes:
        ax.set_xlabel("sample (every 6 time units)")
        ax.grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "mackey_glass_prediction.png", dpi=90)
    plt.close(fig)

    fig, ax = plt.subplots(figsize=(6.5, 4))
    ax.semilogy(res["steps_ahead"], res["lstm_nmse"], "o-", label="LSTM (shipped), iterated")
    ax.semilogy(
        res["steps_ahead"], res["linear_ar_nmse"], "s--", label=f"linear AR({p}) window, iterated"
    )
    ax.set_xlabel("steps ahead (x 6 time units)")
    ax.set_ylabel("NMSE on the fresh test series")
    ax.set_title("Mackey-Glass: iterated prediction")
    ax.grid(alpha=0.3, which="both")
    ax.legend()
    fig.tight_layout()
    fig.savefig(out / "mackey_glass_horizons.png", dpi=90)
    plt.close(fig)
    dev = np.abs(np.array(free) - test[t0 + 1 : t0 + 1 + n_free])
    off = np.flatnonzero(dev > 0.1)
    res["free_run"] = {
        "from_sample": t0,
        "steps": n_free,
        "rmse_first_50": float(np.sqrt(np.mean(dev[:50] ** 2))),
        "samples_until_error_above_0.1": int(off[0]) + 1 if len(off) else None,
    }
    return res


# --------------------------------------------------------- trace conditioning
def trace_conditioning_figure(repo: Path, out: Path) -> dict[str, Any]:
    m = Served(repo, "trace-conditioning")
    tc = trace_conditioning
    kinds: dict[str, int | None] = {"normal (US 1000 ms)": tc.US_STEP}
    for ms in tc.PROBE_DELAYS_MS:  # the US at the step lnsc's truncation gives
        kinds[f"probe {ms} ms (US at {tc.probe_step(ms) * tc.STEP_MS} ms)"] = tc.probe_step(ms)
    kinds["omission (no US)"] = None
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    res: dict[str, Any] = {"trial_steps": list(range(13)), "step_ms": tc.STEP_MS}
    steps = np.arange(13)
    gates_normal = None
    for i, (kind, delay) in enumerate(kinds.items()):
        rng = np.random.default_rng(12345)
        x, _, onsets = tc.stream(400, rng, us_steps=[tc.US_STEP] * 10 + [delay])
        r = m.run(x[None], internals=True)
        t0 = onsets[10]
        y = r["y"][0, t0 : t0 + 13, 0]
        res[kind] = [round(float(v), 4) for v in y]
        axes[0].plot(
            steps * tc.STEP_MS,
            y,
            ("o-", "s-", "^--", "x:")[i],
            color=f"C{i}",
            label=kind,
            ms=(6, 6, 7, 8)[i],
        )
        if delay is not None:
            axes[0].axvline((delay - 1) * tc.STEP_MS, color=f"C{i}", ls=":", lw=1)
        if delay == tc.US_STEP:
            gates_normal = r["internals/gates"][0, t0 - 3 : t0 + 13]
    axes[0].set_xlabel("time since CS (ms); dotted: the step before the US")
    axes[0].set_ylabel("output: predicted US at the next step")
    axes[0].set_title("trace conditioning (shipped model, 11th trial of a stream)")
    axes[0].legend(fontsize=8)
    axes[0].grid(alpha=0.3)
    gs = np.arange(-3, 13) * tc.STEP_MS
    names = ("input", "forget", "output")
    for b in range(gates_normal.shape[1]):
        for g in range(3):
            axes[1].plot(
                gs,
                gates_normal[:, b, g],
                ls=("-", "--")[b],
                color=f"C{g}",
                label=f"block {b} {names[g]} gate",
            )
    axes[1].axvline(0, color="k", lw=0.8)
    axes[1].axvline(tc.US_STEP * tc.STEP_MS, color="k", lw=0.8)
    axes[1].set_xlabel("time since CS (ms); lines: CS and US")
    axes[1].set_ylabel("gate activation")
    axes[1].set_title("gates over a normal trial")
    axes[1].legend(fontsize=7, ncol=2, loc="lower left", framealpha=0.9)
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "trace_conditioning.png", dpi=90)
    plt.close(fig)
    return res


# ------------------------------------------------------------- embedded Reber
def embedded_reber_figure(repo: Path, out: Path, seed: int) -> dict[str, Any]:
    m = Served(repo, "embedded-reber")
    rng = np.random.default_rng(seed)
    strings = [embedded_reber.embedded_reber_string(rng) for _ in range(256)]
    split = embedded_reber.encode(strings)
    y = m.run(split.x)["y"]
    ok = embedded_reber.strings_correct(y, split)
    # Show a long string (the long-range dependency spans it).
    n = int(np.argmax([len(s) for s in strings[:64]]))
    s, steps = strings[n], len(strings[n]) - 1
    fig, ax = plt.subplots(figsize=(max(6, 0.45 * steps + 2), 3.6))
    im = ax.imshow(y[n, :steps].T, aspect="auto", cmap="viridis", vmin=0, vmax=1)
    legal = split.y[n, :steps].T > 0.5
    rr, cc = np.nonzero(legal)
    ax.scatter(
        cc, rr, marker="o", facecolors="none", edgecolors="r", s=90, label="legal next symbol"
    )
    ax.set_yticks(range(7), list(embedded_reber.SYMBOLS))
    ax.set_xticks(range(steps), list(s[:-1]))
    ax.set_xlabel("input symbol at each step")
    ax.set_ylabel("output unit (next symbol)")
    ax.set_title(f"embedded Reber, string {s}: outputs (colour) and legal next symbols (red)")
    fig.colorbar(im, ax=ax, fraction=0.03)
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.22), fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "embedded_reber.png", dpi=90)
    plt.close(fig)
    return {"strings": len(strings), "correct": int(ok.sum()), "shown": s, "seed": seed}


# ----------------------------------------------------------------- adding, MSD
def adding_msd_figure(repo: Path, out: Path, seed: int) -> dict[str, Any]:
    ma, mm = Served(repo, "adding"), Served(repo, "msd")
    split, lengths = adding.adding_sequences(2560, 100, np.random.default_rng(seed))
    ya = ma.run(split.x)["y"][np.arange(len(lengths)), lengths - 1, 0]
    ta = split.y[np.arange(len(lengths)), lengths - 1, 0]
    x, _, _, times = msd.spike_train(11_000, np.random.default_rng(seed))
    ym = mm.run(x[None])["y"][0, :, 0]
    delays = np.diff(times) - msd.F
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.2))
    axes[0].plot([0, 1], [0, 1], color="0.7", lw=1)
    axes[0].scatter(ta, ya, s=3)
    wrong = int((np.abs(ya - ta) >= adding.TOLERANCE).sum())
    axes[0].set_title(f"adding, T = 100: {len(ta)} fresh sequences, {wrong} with |error| >= 0.04")
    axes[0].set_xlabel("target 0.5 + (X1 + X2)/4")
    axes[0].set_ylabel("output at the last step")
    axes[0].grid(alpha=0.3)
    idx = np.arange(1, len(times))
    axes[1].scatter(idx, ym[times[1:]], s=3, c=np.where(delays == 1, "C1", "C0"))
    axes[1].axhline(0.5, color="k", lw=0.8)
    err = np.abs(ym[times[1:]] - delays)
    bad = np.flatnonzero(err >= msd.ERROR_LIMIT)
    axes[1].scatter(
        idx[bad],
        ym[times[1:]][bad],
        s=80,
        facecolors="none",
        edgecolors="r",
        label="wrong (|error| >= 0.49)",
    )
    axes[1].legend(loc="center right", fontsize=8)
    axes[1].set_title(
        f"MSD: output at each of {len(idx)} fresh spikes\n"
        f"(orange: I(n) = 1, blue: I(n) = 0); wrong: spikes {(bad + 1).tolist()}",
        fontsize=10,
    )
    axes[1].set_xlabel("spike n")
    axes[1].set_ylabel("output")
    axes[1].grid(alpha=0.3)
    fig.tight_layout()
    fig.savefig(out / "adding_msd.png", dpi=90)
    plt.close(fig)
    return {
        "adding": {
            "sequences": len(ta),
            "wrong": wrong,
            "max_abs_error": float(np.abs(ya - ta).max()),
        },
        "msd": {
            "spikes": len(idx),
            "wrong_spikes": (bad + 1).tolist(),
            "first_spike_step": int(times[0]),
            "longest_right_run": int(msd.longest_run(err < msd.ERROR_LIMIT)[0]),
        },
    }


# --------------------------------------------------------------- curves
def training_curves_figure(repo: Path, out: Path, names: list[str]) -> None:
    fig, axes = plt.subplots(1, len(names), figsize=(3.6 * len(names), 3.4), squeeze=False)
    for ax, name in zip(axes[0], names, strict=True):
        m = Served(repo, name)
        hist = json.loads((m.dir / "metrics.json").read_text())["history"]
        ep = [h["epoch"] for h in hist]
        mk = "o-" if len(ep) < 40 else "-"  # a one-epoch run is one point per curve
        ax.semilogy(ep, [h["train_loss"] for h in hist], mk, label="train")
        ax.semilogy(ep, [h["val_loss"] for h in hist], mk, label="validation")
        met = json.loads((m.dir / "metrics.json").read_text())
        seen = (
            f"{met['time_steps']:,} stream steps"
            if met["hyperparameters"]["stateful"]
            else f"{met['sequences']:,} sequences"
        )
        ax.set_title(f"{name}/{m.dir.name}: {seen}", fontsize=9)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    axes[0, 0].set_ylabel("loss")
    axes[0, 0].legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out / "training_curves.png", dpi=90)
    plt.close(fig)


def reproduce_curves_figure(paths: list[Path], out: Path) -> None:
    rows = [r for p in paths for r in json.loads(Path(p).read_text())["rows"]]
    tasks = list(dict.fromkeys(r["task"] for r in rows))
    fig, axes = plt.subplots(1, len(tasks), figsize=(3.8 * len(tasks), 3.5), squeeze=False)
    for ax, task in zip(axes[0], tasks, strict=True):
        for r in (r for r in rows if r["task"] == task):
            c = r["curve"]
            if c:
                ax.plot(
                    [p["units"] for p in c],
                    [p["loss"] for p in c],
                    "o-",
                    ms=3,
                    label=f"{r['setup']} ({r['optimizer']} lr {r['lr']:g}, batch {r['batch']})",
                )
            if r["solved_at"] is not None:
                ax.axvline(r["solved_at"], ls=":", color=ax.lines[-1].get_color())
        ax.set_yscale("log")
        units = [p["units"] for r in rows if r["task"] == task for p in r["curve"]]
        if units and max(units) > 20 * min(units):
            ax.set_xscale("log")
        ax.ticklabel_format(
            axis="x", style="sci", scilimits=(0, 3)
        ) if ax.get_xscale() == "linear" else None
        ax.set_title(task, fontsize=10)
        ax.set_xlabel(f"training {rows[[r['task'] for r in rows].index(task)]['unit']}")
        ax.grid(alpha=0.3, which="both")
        ax.legend(fontsize=7)
    axes[0, 0].set_ylabel("loss on fresh data (dotted: criterion met)")
    fig.tight_layout()
    fig.savefig(out / "reproduce_curves.png", dpi=90)
    plt.close(fig)


def main(args: argparse.Namespace) -> int:
    """Draw every figure; write the numbers to figures.json beside them."""
    repo = Path(args.models)
    if not repo.is_dir():
        raise UserError(f"--models {repo}: not a model repository (no such directory)")
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    numbers: dict[str, Any] = {"seed": args.seed}
    shipped = [
        n
        for n in ("mackey-glass", "trace-conditioning", "embedded-reber", "adding", "msd")
        if (repo / n).is_dir()
    ]
    training_curves_figure(repo, out, shipped)
    if "mackey-glass" in shipped:
        numbers["mackey_glass"] = mackey_glass_figures(repo, out)
    if "trace-conditioning" in shipped:
        numbers["trace_conditioning"] = trace_conditioning_figure(repo, out)
    if "embedded-reber" in shipped:
        numbers["embedded_reber"] = embedded_reber_figure(repo, out, args.seed)
    if "adding" in shipped and "msd" in shipped:
        numbers.update(adding_msd_figure(repo, out, args.seed))
    found = [p for p in (args.reproduce or []) if Path(p).exists()]
    if found:
        reproduce_curves_figure(found, out)
    (out / "figures.json").write_text(json.dumps(numbers, indent=2) + "\n")
    print(json.dumps(numbers, indent=2))
    return 0

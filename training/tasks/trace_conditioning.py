"""Trace conditioning, the lnsc experiment (Rivest, Kalaska & Bengio 2010).

Time runs in 200 ms steps as one continuous stream of trials, with lnsc's timings (each
duration in ms truncated to whole steps; docs/LNSC.md): the stream starts with an inter-trial
interval (ITI) of 20..29 silent steps, then in a trial the conditioned stimulus (CS) is 1 at
trial step 0 and the unconditioned stimulus (US, the reward) is 1 at trial step 5 (1 s
later), and the trial's last step is followed by an ITI of 20..29 silent steps
(floor((4000 + 2000 U) / 200), U uniform on [0, 1)) before the next CS. Inputs [CS, US]; the
target at step t is the US at step t + 1, so a trained network raises its output at trial
step 4, anticipating the reward.

Learned (the lnsc criterion): the US prediction error |y(t) - US(t+1)| stays <= 0.5 for 300
consecutive steps. During training this is tracked online on the training streams (the
error of the forward pass before each update, as in lnsc's online learning); the step at
which it was first met is reported in stream time steps.

Probes: trials in which the US comes early or late, at CS-US delays of 500 ms and 1500 ms.
lnsc truncates them to whole steps: the probe US comes at trial step 2 (500 // 200) and 7
(1500 // 200). lnsc gives its networks probe test blocks with learning on (5 probes after
every 10 training blocks, about 1.3% of its trials); a supervised network learns only while
it trains, so the training streams carry probe trials at that rate (each trial a probe with
probability 5/395, early or late with p = 0.5), and `report` then shows the trained (frozen)
network's output at every trial step 0..12 of a normal trial, both probes and an omission
trial (CS, no US; an 8-step trial as in lnsc). Validation and test streams hold normal
trials only, as lnsc counts its criterion on training blocks.
"""

from __future__ import annotations

from typing import Any

import numpy as np

from training.evaluation import numpy_loss, predict

from .base import (
    Check,
    Reproduction,
    Setup,
    Split,
    Task,
    TaskData,
    TrainDefaults,
    first_run_end,
    longest_run,
    masked_mse,
)

STEP_MS = 200
US_STEP = 5
ITI = (20, 29)  # silent steps after a trial, inclusive
PROBE_DELAYS_MS = (500, 1500)
PROBE_RATE = 5 / 395  # lnsc: a 5-probe test block per 10 training blocks of ~39 trials
MISS_TRIAL_STEPS = 8
ERROR_LIMIT = 0.5
RUN_LENGTH = 300


def probe_step(delay_ms: int) -> int:
    """The trial step of a probe US: the delay truncated to whole 200 ms steps (as lnsc)."""
    return delay_ms // STEP_MS


def _iti(rng: np.random.Generator) -> int:
    return int(rng.integers(ITI[0], ITI[1] + 1))


def stream(
    steps: int,
    rng: np.random.Generator,
    us_steps: list[int | None] | None = None,
    probe_rate: float = 0.0,
) -> tuple[np.ndarray, np.ndarray, list[int]]:
    """A stream of trials: inputs [steps, 2] (CS, US), targets [steps, 1] (next US), CS times.

    `us_steps[i]` overrides trial i's CS-US delay in steps (None: no US); later trials are
    normal, or with `probe_rate` a probe (US at step 2 or 7) with that probability. The
    stream starts with an ITI.
    """
    cs = np.zeros(steps + 1)
    us = np.zeros(steps + 1)
    onsets = []
    probes = [probe_step(d) for d in PROBE_DELAYS_MS]
    t = _iti(rng)
    i = 0
    while t < steps + 1:
        cs[t] = 1.0
        onsets.append(t)
        if us_steps is not None and i < len(us_steps):
            delay = us_steps[i]
        elif probe_rate and rng.random() < probe_rate:
            delay = probes[int(rng.integers(2))]
        else:
            delay = US_STEP
        if delay is not None and t + delay < steps + 1:
            us[t + delay] = 1.0
        # The ITI follows the trial's last step (its US; a trial without US lasts 8 steps).
        t += (MISS_TRIAL_STEPS if delay is None else delay + 1) + _iti(rng)
        i += 1
    x = np.stack([cs[:-1], us[:-1]], axis=1)
    return x, us[1:, None], onsets


def _streams(n: int, steps: int, rng: np.random.Generator, probe_rate: float = 0.0) -> Split:
    xs, ys = zip(*(stream(steps, rng, probe_rate=probe_rate)[:2] for _ in range(n)), strict=True)
    return Split(np.stack(xs), np.stack(ys), np.ones((n, steps)))


class TraceConditioning(Task):
    name = "trace-conditioning"
    description = (
        "lnsc trace conditioning: CS at trial step 0, US 1 s later (200 ms steps); "
        "predict the next step's US; probes at 500/1500 ms"
    )
    loss = "bce"
    architecture = {
        "blocks": 2,
        "cells_per_block": 2,
        "g": "logistic2",
        "h": "logistic2",
        "output_activation": "logistic",
        "init_range": 0.1,
    }
    # The US is 1 on ~1 step in 30: unweighted, the network first learns the base rate and
    # then sits on that plateau for a long time; weighting the US steps by ~30 (class balance)
    # makes the timing the cheapest way down (measured: learned in 2-3 epochs instead of >30).
    defaults = TrainDefaults(
        epochs=40,
        batch_size=16,
        lr=3e-2,
        clip=1.0,
        patience=10,
        schedule="plateau",
        stateful=True,
        chunk_len=50,
        pos_weight=30.0,
        quick_epochs=2,
    )

    def generate(self, seed: int, quick: bool = False, **options: Any) -> TaskData:
        rng = np.random.default_rng(seed)
        n_streams, train_steps, eval_steps = (4, 400, 600) if quick else (16, 2000, 3000)
        train = _streams(n_streams, train_steps, rng, PROBE_RATE)
        val = _streams(1, eval_steps, rng)
        test = _streams(1, eval_steps, rng)
        data = {
            "generator": "trace_conditioning",
            "step_ms": STEP_MS,
            "cs_step": 0,
            "us_step": US_STEP,
            "iti_steps": list(ITI),
            "iti_from": "silent steps after a trial's last step to the next CS, uniform "
            "integer; the stream starts with one",
            "train_probe_rate": PROBE_RATE,
            "probe_delays_ms": list(PROBE_DELAYS_MS),
            "probe_us_steps": [probe_step(d) for d in PROBE_DELAYS_MS],
            "streams": {
                "train": [n_streams, train_steps],
                "val": [1, eval_steps],
                "test": [1, eval_steps],
            },
            "criterion": {"error_limit": ERROR_LIMIT, "consecutive_steps": RUN_LENGTH},
            "seed": seed,
        }
        return TaskData(
            train=train,
            val=val,
            test=test,
            data=data,
            input_names=["cs", "us"],
            output_names=["us_next"],
            encoding={
                "step_ms": STEP_MS,
                "output": "predicted US at t+1",
                "inputs": {
                    "columns": ["cs", "us"],
                    "meaning": "1.0 at the step "
                    "of the conditioned stimulus / of the US (reward), "
                    "0.0 elsewhere; one continuous stream of trials, carry "
                    "the state",
                },
                "outputs": {
                    "columns": ["us_next"],
                    "meaning": "the US expected at the next 200 ms step (logistic, 0..1)",
                },
            },
        )

    def evaluate(self, pred: np.ndarray, split: Split, data: TaskData) -> dict[str, Any]:
        err = np.abs(pred[..., 0] - split.y[..., 0])
        ok = err <= ERROR_LIMIT
        runs = [longest_run(row)[0] for row in ok]
        met = [first_run_end(row, RUN_LENGTH) for row in ok]
        us = split.y[..., 0] > 0.5
        return {
            "mse": masked_mse(pred, split.y, split.mask),
            "fraction_ok": float(ok.mean()),
            "longest_ok_run": int(min(runs)),
            "criterion_met_at_step": None if None in met else int(max(met)),
            "us_hit_rate": float((pred[..., 0][us] > 0.5).mean()) if us.any() else None,
            "false_alarms": int(((pred[..., 0] > 0.5) & ~us).sum()),
        }

    def solved(self, metrics: dict[str, Any]) -> bool:
        return metrics.get("longest_ok_run", 0) >= RUN_LENGTH

    online_run = RUN_LENGTH

    def step_ok(self, pred: np.ndarray, target: np.ndarray) -> np.ndarray:
        return np.abs(pred[..., 0] - target[..., 0]) <= ERROR_LIMIT

    def report(self, model: Any, data: TaskData, test: dict[str, Any]) -> dict[str, Any]:
        """Outputs over trial steps 0..12 of normal, probe and omission trials."""

        kinds: dict[str, int | None] = {"normal": US_STEP, "omission": None}
        kinds.update({f"probe_{d}ms": probe_step(d) for d in PROBE_DELAYS_MS})
        out: dict[str, Any] = {"trial_steps": list(range(13)), "step_ms": STEP_MS}
        for kind, delay in kinds.items():
            rng = np.random.default_rng(12345)
            # Ten normal trials, then the probe trial, then normal ones.
            x, _, onsets = stream(400, rng, us_steps=[US_STEP] * 10 + [delay])
            y = predict(model, x[None])[0, :, 0]
            t0 = onsets[10]
            out[kind] = {
                "us_step": delay,
                "us_prediction": [round(float(v), 4) for v in y[t0 : t0 + 13]],
            }
        return {"probes": out}

    def reproduction(self, quick: bool = False) -> Reproduction:
        steps = 600 if quick else 3000

        def check(model: Any, rng: np.random.Generator) -> Check:
            split = one_stream(rng, steps)
            pred = predict(model, split.x, batch=512)
            ok = np.abs(pred[0, :, 0] - split.y[0, :, 0]) <= ERROR_LIMIT
            longest = longest_run(ok)[0]
            return Check(
                longest >= RUN_LENGTH,
                float(longest),
                numpy_loss("bce", pred, split),
                {"of": steps, "fraction right": float(ok.mean())},
            )

        lnsc = {
            "blocks": 2,
            "cells_per_block": 2,
            "g": "logistic2",
            "h": "logistic2",
            "output_activation": "logistic",
            "init_range": 0.1,
        }
        return Reproduction(
            name=self.name,
            loss="bce",
            unit="steps",
            paper=Setup(
                "paper",
                lnsc,
                "sgd",
                0.1,
                1,
                chunk=50,
                objective="sse",
                lr_source="assumed (not lnsc's: we had no rate from it)",
            ),
            modern=Setup(
                "modern",
                lnsc,
                "adam",
                3e-2,
                16,
                clip=1.0,
                plateau=True,
                chunk=50,
                pos_weight=30.0,
                lr_source="ours",
            ),
            figure="lnsc 2 blocks x 2 cells: learned when the error stays <= 0.5 for 300 "
            "consecutive steps",
            criterion="|error| <= 0.5 for 300 consecutive steps of a fresh stream",
            metric_name="longest right run",
            eval_every=4000,
            max_units=2_000_000,
            stream=one_stream,
            check=check,
        )


def one_stream(rng: np.random.Generator, steps: int) -> Split:
    """One fresh stream of trials as a split of one stream."""
    x, y, _ = stream(steps, rng)
    return Split(x[None], y[None], np.ones((1, steps)))

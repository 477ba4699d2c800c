"""The trace-conditioning blocks of Rivest, Kalaska & Bengio (2010), in 200 ms steps.

A block is one episode: it starts with an inter-trial interval (ITI), then trials follow
one another. Every duration is drawn as lnsc draws it, a time in milliseconds truncated to
whole steps: N = floor((lo + span * U) / 200) with U uniform on [0, 1).

- training: CS at trial step 0, US at step 5 (1000 ms), ITI 20..29 steps after the US;
  1200 transitions, so 1201 steps;
- probe test: CS-US delay of 2 (500 ms) or 7 (1500 ms) steps, p = 0.5 each; the block
  ends at the onset of trial 6, a silent final step, so it holds exactly 5 probes
  (at most 600 transitions);
- omission test: a rewarded trial (delay `rewarded_delay`) or a miss (CS, no US, an 8-step
  trial), p = 0.5 each, laid out like the probe block;
- delay (ours, for the paper's trace-vs-delay claim): a training block whose CS stays on
  from trial step 0 through the US step (delay conditioning);
- control (unpaired): 1-step events, CS alone or US alone, p = 0.5 each, ITI 30..34 steps
  (35 only if U = 0) after a first ITI of 20..29; 1201 steps.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

STEP_MS = 200
TRAIN_DELAY = 5  # 1000 ms, after truncation
PROBE_DELAYS = (2, 7)  # 500 ms and 1500 ms, after truncation
MISS_TRIAL_STEPS = 8
BLOCK_TRANSITIONS = 1200
PROBE_TRIALS = 5
PROBE_MAX_TRANSITIONS = 600
# Trial types per block (the `types` array of a Block).
NORMAL, EARLY, LATE, MISS, CS_ONLY, US_ONLY = range(6)
TYPE_NAMES = ("normal", "early", "late", "miss", "cs_only", "us_only")


def steps_of(ms: float) -> int:
    """A duration in ms as whole 200 ms steps, truncated like lnsc's integer arithmetic."""
    return int(ms // STEP_MS)


def training_iti(rng: np.random.Generator) -> int:
    """20..29 steps: floor((4000 + 2000 U) / 200)."""
    return steps_of(4000 + 2000 * rng.random())


def control_iti(rng: np.random.Generator) -> int:
    """30..34 steps (35 only for U = 0): lnsc sets the minimum twice (5000, then 7000 ms)
    against a maximum of 6000 ms, so the span is negative: floor((7000 - 1000 U) / 200)."""
    return steps_of(7000 - 1000 * rng.random())


@dataclass
class Block:
    """One block's inputs and trial structure."""

    kind: str
    cs: np.ndarray  # [T] 0/1
    us: np.ndarray  # [T] 0/1
    onsets: np.ndarray  # [n_trials] step of each trial's CS (control: of the event)
    delays: np.ndarray  # [n_trials] CS-US delay in steps, -1 when there is no US (or no CS)
    types: np.ndarray  # [n_trials] NORMAL, EARLY, LATE, MISS, CS_ONLY, US_ONLY

    @property
    def steps(self) -> int:
        return len(self.cs)

    @property
    def x(self) -> np.ndarray:
        return np.stack([self.cs, self.us], axis=1)

    def trial_index(self) -> np.ndarray:
        """[T] the trial each step belongs to (-1 before the first), its CS to the next CS."""
        return np.searchsorted(self.onsets, np.arange(self.steps), side="right") - 1

    def phase(self) -> np.ndarray:
        """[T] steps since the current trial's onset (-1 before the first trial)."""
        trial = self.trial_index()
        return np.where(trial >= 0, np.arange(self.steps) - self.onsets[np.maximum(trial, 0)], -1)


def _lay_out(
    kind: str,
    first_iti: int,
    trials: list[tuple[int, int]],
    itis: list[int],
    steps: int | None,
    hold_cs: bool = False,
) -> Block:
    """Trials (type, delay) with the ITI after each; `steps` fixed, or None: end at the
    onset of the trial after the last (that step silent and final)."""
    onsets, delays, types = [], [], []
    cs_at, us_at = [], []
    t = first_iti
    for (kind_of_trial, delay), iti in zip(trials, itis, strict=True):
        onsets.append(t)
        types.append(kind_of_trial)
        delays.append(delay)
        if kind_of_trial == US_ONLY:
            us_at.append(t)
            length = 1
        elif kind_of_trial == CS_ONLY:
            cs_at.append(t)
            length = 1
        elif kind_of_trial == MISS:
            cs_at.append(t)
            length = MISS_TRIAL_STEPS
        else:
            cs_at.extend(range(t, t + delay + 1) if hold_cs else [t])
            us_at.append(t + delay)
            length = delay + 1
        t += length + iti
        if steps is not None and t >= steps:
            break
    total = steps if steps is not None else min(t + 1, PROBE_MAX_TRANSITIONS + 1)
    cs, us = np.zeros(total), np.zeros(total)
    cs[[c for c in cs_at if c < total]] = 1.0
    us[[u for u in us_at if u < total]] = 1.0
    keep = [i for i, o in enumerate(onsets) if o < total]
    return Block(
        kind,
        cs,
        us,
        np.array(onsets, int)[keep],
        np.array(delays, int)[keep],
        np.array(types, int)[keep],
    )


def training_block(
    rng: np.random.Generator,
    delay: int = TRAIN_DELAY,
    transitions: int = BLOCK_TRANSITIONS,
    hold_cs: bool = False,
) -> Block:
    steps = transitions + 1
    n = steps // 26 + 2  # more trials than can fit
    itis = [training_iti(rng) for _ in range(n + 1)]
    kind = "delay" if hold_cs else "train"
    return _lay_out(kind, itis[0], [(NORMAL, delay)] * n, itis[1:], steps, hold_cs)


def delay_block(rng: np.random.Generator) -> Block:
    return training_block(rng, hold_cs=True)


def probe_block(rng: np.random.Generator, trials: int = PROBE_TRIALS) -> Block:
    first = training_iti(rng)
    chosen, itis = [], []
    for _ in range(trials):
        early = rng.random() < 0.5
        chosen.append((EARLY, PROBE_DELAYS[0]) if early else (LATE, PROBE_DELAYS[1]))
        itis.append(training_iti(rng))
    return _lay_out("probe", first, chosen, itis, None)


def omission_block(
    rng: np.random.Generator, rewarded_delay: int = TRAIN_DELAY, trials: int = PROBE_TRIALS
) -> Block:
    first = training_iti(rng)
    chosen, itis = [], []
    for _ in range(trials):
        chosen.append((NORMAL, rewarded_delay) if rng.random() < 0.5 else (MISS, -1))
        itis.append(training_iti(rng))
    return _lay_out("omission", first, chosen, itis, None)


def control_block(rng: np.random.Generator, transitions: int = BLOCK_TRANSITIONS) -> Block:
    steps = transitions + 1
    first = training_iti(rng)
    n = steps // 31 + 2
    events, itis = [], []
    for _ in range(n):
        events.append((CS_ONLY, -1) if rng.random() < 0.5 else (US_ONLY, -1))
        itis.append(control_iti(rng))
    return _lay_out("control", first, events, itis, steps)


MAKERS = {
    "train": training_block,
    "delay": delay_block,
    "probe": probe_block,
    "omission": omission_block,
    "control": control_block,
}


def stack(blocks: list[Block]) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """x [N, T, 2], US [N, T] and lengths [N], zero-padded to the longest block."""
    steps = max(b.steps for b in blocks)
    x = np.zeros((len(blocks), steps, 2))
    lengths = np.array([b.steps for b in blocks], np.int64)
    for i, b in enumerate(blocks):
        x[i, : b.steps] = b.x
    return x, x[..., 1].copy(), lengths

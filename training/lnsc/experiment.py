"""The training programs of the Rivest 2010 experiment, over many seeded networks at once.

- InitialTraining: naive networks x 2 training blocks; success per block.
- MasterTraining: for i = 0 .. blocks-1: a probe test block when i % 10 == 0, then training
  block i. Learn = criterion met in any block; Kept = met in the second-to-last block (999
  of 1001). The last 21 training blocks and the tests among them are kept with every step.
- PreTraining: naive networks x 2 control (unpaired) blocks.
- PostTraining: every MasterTraining network x 1 control block; and (ours: lnsc defines its
  omission test but never runs it) x 1 omission test block.
Learning stays on in every block. All networks of a program advance together.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np

from training.lnsc.kernel import REC_DELTA
from training.lnsc.nets import Nets
from training.lnsc.network import Knobs, network_rng
from training.lnsc.protocol import MAKERS, NORMAL, Block, stack

MASTER_BLOCKS = 1001
TEST_EVERY = 10
SAVED_BLOCKS = 21  # training blocks 980..1000 of 1001


@dataclass
class BlockLog:
    """One block run by N networks: its layout per network, criterion, optional record."""

    kind: str
    index: int  # the block's number in its program
    blocks: list[Block]
    met: np.ndarray  # [N] block step where the criterion run began, -1 if none
    rec: np.ndarray | None  # [N, T, R] float32 (kernel.REC_*), or None
    summary: dict[str, np.ndarray] = field(default_factory=dict)

    def trials_before(self, n: int) -> int:
        """Trials of network n begun before its criterion run (all trials if none)."""
        onsets = self.blocks[n].onsets
        return int(np.sum(onsets < self.met[n])) if self.met[n] >= 0 else len(onsets)


def run_block(
    nets: Nets, rngs: list[np.random.Generator], kind: str, index: int, record: bool
) -> BlockLog:
    blocks = [MAKERS[kind](r) for r in rngs]
    x, us, lengths = stack(blocks)
    res = nets.block(x, us, lengths, record=True)
    rec = res.rec.astype(np.float32) if record else None
    return BlockLog(kind, index, blocks, res.met, rec, _summary(blocks, res.rec))


def _summary(blocks: list[Block], rec: np.ndarray) -> dict[str, np.ndarray]:
    """Per network: mean delta at the CS and at the US of normal trials, trial count."""
    n = len(blocks)
    d_cs, d_us = np.full(n, np.nan), np.full(n, np.nan)
    for i, b in enumerate(blocks):
        delta = rec[i, : b.steps, REC_DELTA]
        normal = b.types == NORMAL
        on = b.onsets[normal]
        if len(on):
            d_cs[i] = delta[on].mean()
        us_at = on + b.delays[normal]
        us_at = us_at[us_at < b.steps]
        if len(us_at):
            d_us[i] = delta[us_at].mean()
    return {"delta_cs": d_cs, "delta_us": d_us, "trials": np.array([len(b.onsets) for b in blocks])}


@dataclass
class MasterResult:
    nets: Nets
    rngs: list[np.random.Generator]
    met: np.ndarray  # [blocks, N] criterion step per training block (-1 none)
    delta_cs: np.ndarray  # [blocks, N] mean delta at the CS of each training block
    delta_us: np.ndarray  # [blocks, N]
    trials: np.ndarray  # [blocks, N]
    saved: list[BlockLog] = field(default_factory=list)  # last training blocks and tests
    trials_in_first_block: np.ndarray | None = None  # [N] trials of that block before the run
    # the weights at the end of the Kept block (the second-to-last): the networks that met
    # the criterion there, as they were then (the last block's probes can undo it)
    kept_theta: np.ndarray | None = None  # [N, P]
    kept_w_critic: np.ndarray | None = None  # [N, K]
    seconds: float = 0.0
    steps: int = 0  # network-steps run

    @property
    def learned(self) -> np.ndarray:
        return (self.met >= 0).any(axis=0)

    @property
    def kept(self) -> np.ndarray:
        return self.met[-2] >= 0 if len(self.met) > 1 else self.met[-1] >= 0

    def first_block(self) -> np.ndarray:
        """[N] first training block where the criterion was met (-1: never)."""
        hit = self.met >= 0
        return np.where(hit.any(axis=0), hit.argmax(axis=0), -1)

    def trials_to_criterion(self) -> np.ndarray:
        """[N] training trials begun before the first criterion run (-1: never)."""
        first = self.first_block()
        out = np.full(len(first), -1)
        for n, b in enumerate(first):
            if b >= 0:
                within = self.trials_in_first_block[n]
                out[n] = int(self.trials[:b, n].sum()) + within
        return out


def _rngs(seed: int, program: str, indices: list[int]) -> list[np.random.Generator]:
    return [network_rng(seed, program, i, "env") for i in indices]


def initial_training(
    seed: int, indices: list[int], knobs: Knobs, blocks: int = 2
) -> tuple[Nets, list[BlockLog]]:
    nets = Nets.fresh(seed, "initial", indices, knobs)
    rngs = _rngs(seed, "initial", indices)
    logs = [run_block(nets, rngs, "train", i, record=True) for i in range(blocks)]
    return nets, logs


def pre_training(seed: int, indices: list[int], knobs: Knobs, blocks: int = 2) -> list[BlockLog]:
    nets = Nets.fresh(seed, "pre", indices, knobs)
    rngs = _rngs(seed, "pre", indices)
    return [run_block(nets, rngs, "control", i, record=True) for i in range(blocks)]


def master_training(
    seed: int,
    indices: list[int],
    knobs: Knobs,
    blocks: int = MASTER_BLOCKS,
    test_every: int = TEST_EVERY,
    saved_blocks: int = SAVED_BLOCKS,
    train_kind: str = "train",
    progress: Callable[[int, MasterResult], None] | None = None,
) -> MasterResult:
    nets = Nets.fresh(seed, "master", indices, knobs)
    rngs = _rngs(seed, "master", indices)
    n = len(indices)
    res = MasterResult(
        nets,
        rngs,
        np.full((blocks, n), -1),
        np.zeros((blocks, n)),
        np.zeros((blocks, n)),
        np.zeros((blocks, n), int),
    )
    res.trials_in_first_block = np.zeros(n, int)
    save_from = max(0, blocks - saved_blocks)
    t0 = time.perf_counter()
    for i in range(blocks):
        keep = i >= save_from
        if i % test_every == 0:
            test = run_block(nets, rngs, "probe", i, record=keep)
            res.steps += int(sum(b.steps for b in test.blocks))
            if keep:
                res.saved.append(test)
        log = run_block(nets, rngs, train_kind, i, record=keep)
        res.steps += int(sum(b.steps for b in log.blocks))
        res.met[i] = log.met
        res.delta_cs[i] = log.summary["delta_cs"]
        res.delta_us[i] = log.summary["delta_us"]
        res.trials[i] = log.summary["trials"]
        newly = (log.met >= 0) & ~(res.met[:i] >= 0).any(axis=0)
        for k in np.nonzero(newly)[0]:
            res.trials_in_first_block[k] = log.trials_before(k)
        if keep:
            res.saved.append(log)
        if i == max(blocks - 2, 0):
            res.kept_theta, res.kept_w_critic = nets.theta.copy(), nets.w_critic.copy()
        if progress is not None:
            progress(i, res)
    res.seconds = time.perf_counter() - t0
    return res


def post_training(master: MasterResult, kinds: tuple[str, ...] = ("control", "omission")) -> dict:
    """Each MasterTraining network, as it ended, x one block of each kind (learning on).

    Each kind starts from the networks as MasterTraining left them (copies), with the
    networks' own trial generators continuing."""
    out = {}
    for kind in kinds:
        nets = master.nets.subset(np.arange(master.nets.n))
        out[kind] = run_block(nets, master.rngs, kind, 0, record=True)
    return out

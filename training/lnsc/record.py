"""Per-step recordings of a run in HDF5 (h5py), with the trial structure as metadata.

Layout (docs/LNSC.md has a reading example):

    /                      attrs: command, seed, knobs (JSON), dims (JSON), gates order
    /networks/ids          [N, 3] (seed, program number, index): re-make any one network
    /networks/theta        [N, P] weights at the end of MasterTraining (layout: network.py)
    /networks/w_critic     [N, K]
    /blocks/<name>/        attrs: kind, index (block number in its program), program
        cs, us             [N, T] uint8 inputs
        length             [N] steps of each network's block (probe blocks differ)
        o, value, td_error, error, alpha      [N, T] float32 per step
        cell_states, cell_outputs             [N, T, cells] float32
        gates              [N, T, blocks, 3] float32 (input, forget, output)
        trial, phase       [N, T] int16: trial number (-1 before the first), steps since its CS
        trials/onset, trials/delay, trials/type, trials/network   one row per trial
                           (delay -1: no US; type codes in the attr `types`)
Steps past a network's `length` are padding (zeros).
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np

from training.lnsc.experiment import BlockLog
from training.lnsc.kernel import REC_ALPHA, REC_DELTA, REC_ERR, REC_FIXED, REC_O, REC_V
from training.lnsc.nets import Nets
from training.lnsc.network import PROGRAMS
from training.lnsc.protocol import TYPE_NAMES

SCALARS = {"o": REC_O, "value": REC_V, "td_error": REC_DELTA, "error": REC_ERR, "alpha": REC_ALPHA}


def write_run(
    path: Path, logs: dict[str, tuple[str, BlockLog]], nets: Nets, meta: dict[str, Any]
) -> Path:
    """Write `logs` ({group name: (program, log)}) and the networks to an HDF5 file."""
    import h5py

    d = nets.dims
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as f:
        for k, v in meta.items():
            f.attrs[k] = v
        f.attrs["knobs"] = json.dumps(nets.knobs.as_dict())
        f.attrs["dims"] = json.dumps(
            {"inputs": d.inputs, "blocks": d.blocks, "cells_per_block": d.cells_per_block}
        )
        f.attrs["gates"] = "input, forget, output"
        g = f.create_group("networks")
        g["ids"] = np.array([(s, PROGRAMS.index(p), i) for s, p, i in nets.ids], np.int64)
        g["theta"] = nets.theta
        g["w_critic"] = nets.w_critic
        g.attrs["programs"] = json.dumps(list(PROGRAMS))
        blocks = f.create_group("blocks")
        for name, (program, log) in logs.items():
            _write_block(blocks.create_group(name), program, log, d.cells, d.blocks)
    return path


def _write_block(g: Any, program: str, log: BlockLog, cells: int, n_blocks: int) -> None:
    if log.rec is None:
        raise ValueError(f"block {log.kind} {log.index} was not recorded")
    rec = log.rec
    n, steps, _ = rec.shape
    g.attrs.update(
        {
            "kind": log.kind,
            "index": log.index,
            "program": program,
            "types": json.dumps(list(TYPE_NAMES)),
        }
    )
    opts = {"compression": "gzip", "compression_opts": 4, "shuffle": True}
    cs = np.zeros((n, steps), np.uint8)
    us = np.zeros((n, steps), np.uint8)
    trial = np.full((n, steps), -1, np.int16)
    phase = np.full((n, steps), -1, np.int16)
    for i, b in enumerate(log.blocks):
        cs[i, : b.steps], us[i, : b.steps] = b.cs, b.us
        trial[i, : b.steps], phase[i, : b.steps] = b.trial_index(), b.phase()
    g.create_dataset("cs", data=cs, **opts)
    g.create_dataset("us", data=us, **opts)
    g["length"] = np.array([b.steps for b in log.blocks], np.int64)
    for name, ch in SCALARS.items():
        g.create_dataset(name, data=rec[:, :, ch], **opts)
    g.create_dataset("cell_states", data=rec[:, :, REC_FIXED : REC_FIXED + cells], **opts)
    g.create_dataset(
        "cell_outputs", data=rec[:, :, REC_FIXED + cells : REC_FIXED + 2 * cells], **opts
    )
    gates = rec[:, :, REC_FIXED + 2 * cells :].reshape(n, steps, n_blocks, 3)
    g.create_dataset("gates", data=gates, **opts)
    g.create_dataset("trial", data=trial, **opts)
    g.create_dataset("phase", data=phase, **opts)
    t = g.create_group("trials")
    t["network"] = np.concatenate([np.full(len(b.onsets), i) for i, b in enumerate(log.blocks)])
    t["onset"] = np.concatenate([b.onsets for b in log.blocks])
    t["delay"] = np.concatenate([b.delays for b in log.blocks])
    t["type"] = np.concatenate([b.types for b in log.blocks])

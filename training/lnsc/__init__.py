"""The lnsc online learning rules and the TD dopamine model of Rivest, Kalaska & Bengio 2010.

- `network`: the parameter layout of a 2-block x 2-cell lnsc network and its initialisation;
- `kernel`: one fused (numba) loop advancing many networks step by step: critic, online
  truncated-gradient update (plain or eligibility-trace), forward pass, criterion;
- `protocol`: the trace-conditioning blocks (training, probe, omission, control);
- `experiment`: the training programs over many seeded networks;
- `figures`, `reproduce`: the paper's figures and the side-by-side table;
- `export`: the served graph (US prediction, critic value and TD error per step);
- `record`: per-step recordings to HDF5.

docs/LNSC.md describes the model, the equations and the protocol.
"""

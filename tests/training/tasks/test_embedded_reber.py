"""training/tasks/embedded_reber.py against an independently written automaton."""

from __future__ import annotations

import re

import numpy as np

from training.tasks.embedded_reber import SYMBOLS, embedded_reber_string, encode

# Written independently of the task module: the whole embedded grammar as one automaton.
EMBEDDED = {
    "s0": {"B": "s1"},
    "s1": {"T": "t0", "P": "p0"},
    "t0": {"B": "t1"},
    "p0": {"B": "p1"},
}
for _br in "tp":
    EMBEDDED.update(
        {
            f"{_br}1": {"T": f"{_br}2", "P": f"{_br}3"},
            f"{_br}2": {"S": f"{_br}2", "X": f"{_br}4"},
            f"{_br}3": {"T": f"{_br}3", "V": f"{_br}5"},
            f"{_br}4": {"X": f"{_br}3", "S": f"{_br}6"},
            f"{_br}5": {"P": f"{_br}4", "V": f"{_br}6"},
            f"{_br}6": {"E": f"{_br}7"},
            f"{_br}7": {_br.upper(): "last"},
        }
    )
EMBEDDED["last"] = {"E": "accept"}
REBER_RE = r"B(TS*X(S|X(T*VPX)*T*V(V|PS))|P(T*VPX)*T*V(V|PS))E"
EMBEDDED_RE = re.compile(rf"B(T{REBER_RE}T|P{REBER_RE}P)E")


def test_embedded_reber_strings_and_targets():
    rng = np.random.default_rng(1)
    strings = [embedded_reber_string(rng) for _ in range(300)]
    assert {s[1] for s in strings} == {"T", "P"}
    split = encode(strings)
    for n, s in enumerate(strings):
        assert EMBEDDED_RE.fullmatch(s), s
        state = "s0"
        for t, c in enumerate(s):
            state = EMBEDDED[state][c]  # KeyError = not in the grammar
            if t < len(s) - 1:
                assert split.x[n, t].tolist() == [float(c == k) for k in SYMBOLS]
                legal = set(EMBEDDED[state])
                assert split.y[n, t].tolist() == [float(k in legal) for k in SYMBOLS]
                assert split.mask[n, t] == 1
        assert state == "accept"
        assert split.mask[n, len(s) - 1 :].sum() == 0
    # The long-range dependency: after the inner E only the branch symbol is legal.
    s = strings[0]
    inner_e = len(s) - 3
    assert split.y[0, inner_e].tolist() == [float(k == s[1]) for k in SYMBOLS]

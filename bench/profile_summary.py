"""Group a py-spy raw profile of the server into the parts of a request (docs/PERFORMANCE.md).

    python -m app &                                   # the server, 1 worker
    wrk ... (bench/wrk/*.lua, as bench/http.sh runs them) &
    py-spy record --subprocesses -p <pid> -d 7 -r 250 -f raw -o steps.raw
    python bench/profile_summary.py steps.raw

Each sample goes to the category of its innermost matching frame. py-spy counts a thread the
OS preempted as busy, so on a loaded box the shares lean towards the longest-running parts.
"""

from __future__ import annotations

import sys
from collections import Counter

CATEGORIES = [  # (category, substrings of "function file.py" frames)
    ("ONNX Runtime run", ["Session.run onnxruntime", "Engine.run ", "Engine._call "]),
    ("batcher (merge, split, finiteness)", ["BatchingRunner", "_merge batcher", "_split batcher"]),
    ("session store", ["SessionStore", "replace dataclasses"]),
    ("JSON parse + checks (orjson, pydantic, codec)",
     ["decode_json ", "model_validate ", "sequence codec", "ragged_batch ", "_numbers ",
      "batch_states "]),
    ("response (orjson dumps + send)", ["_answer fastpath"]),
    ("data plane (offsets, digest, results)",
     ["DataPlane", "inputs_digest ", "_check_finite ", "_predict predict", "apply_steps ",
      "internals_of "]),
    ("fast path (routing, body, metrics)", ["FastPath", "PeepholeAPI", "match fastpath"]),
    ("uvicorn HTTP (httptools parse, ASGI cycle, socket write)",
     ["httptools_impl", "httpproto", "proxy_headers"]),
]  # fmt: skip


def frame(f: str) -> str:
    """'func (path/file.py:12)' -> 'func file.py'."""
    name, _, where = f.partition(" (")
    return f"{name} {where.split(':')[0].rsplit('/', 1)[-1]}" if where else name


def summary(path: str) -> list[tuple[str, float]]:
    counts: Counter[str] = Counter()
    total = 0
    with open(path) as fh:
        for line in fh:
            stack, _, n = line.rstrip().rpartition(" ")
            total += int(n)
            cat = "other (event loop, threads, supervisor)"
            for f in map(frame, stack.split(";")):
                for name, subs in CATEGORIES:
                    if any(s in f for s in subs):
                        cat = name
            counts[cat] += int(n)
    return [(k, 100 * v / max(1, total)) for k, v in counts.most_common()]


if __name__ == "__main__":
    for path in sys.argv[1:]:
        print(f"== {path}")
        for k, pct in summary(path):
            print(f"| {k} | {pct:.0f} % |")

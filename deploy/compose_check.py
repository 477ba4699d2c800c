"""Exercise a running compose stack through its one address (the load balancer).

    python deploy/compose_check.py --url http://127.0.0.1:8080 [--kill-cmd "docker kill X"] ...

Checks, each printed as one line: predict works; a session streamed in chunks through the
load balancer (so alternately served by the replicas) equals one whole predict; the stream
goes on after a replica is killed and after it is back; 20 concurrent steps give offsets
exactly 1..20; a session survives a Redis restart (append-only file). Exits non-zero on the
first failure. Used by deploy/compose-test.sh; needs only httpx and numpy.
"""

from __future__ import annotations

import argparse
import concurrent.futures as cf
import subprocess
import sys
import time

import httpx
import numpy as np


def wait_ready(c: httpx.Client, timeout: float = 120) -> None:
    deadline = time.monotonic() + timeout
    while True:
        try:
            if c.get("/health/ready").status_code == 200:
                return
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline:
            sys.exit("stack not ready")
        time.sleep(0.5)


def ok(r: httpx.Response, code: int = 200) -> dict:
    if r.status_code != code:
        sys.exit(f"FAIL {r.request.method} {r.request.url}: {r.status_code} {r.text}")
    return r.json() if r.content else {}


def run(cmd: str) -> None:
    print(f"  $ {cmd}")
    subprocess.run(cmd, shell=True, check=True, stdout=subprocess.DEVNULL)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--url", default="http://127.0.0.1:8080")
    ap.add_argument("--kill-cmd", help="command that kills one replica")
    ap.add_argument("--start-cmd", help="command that starts it again")
    ap.add_argument("--redis-restart-cmd", help="command that restarts Redis")
    a = ap.parse_args()
    rng = np.random.default_rng(0)
    c = httpx.Client(base_url=a.url, timeout=30)
    wait_ready(c)
    models = ok(c.get("/v1/models"))["models"]
    name = models[0]["name"]
    card = ok(c.get(f"/v1/models/{name}"))
    n_in = card["input_size"]
    print(f"ok   ready; serving {[m['name'] for m in models]}, using {name}")

    x = rng.uniform(0.5, 1.2, size=(60, n_in)).round(4)
    r = c.post(f"/v1/models/{name}/predict", json={"inputs": [x.tolist()]})
    whole = np.asarray(ok(r)["outputs"][0])
    print(f"ok   predict T={len(x)}")

    sid = ok(c.post("/v1/sessions", json={"model": name}), 201)["session_id"]
    outs: list[np.ndarray] = []
    pos = 0

    def feed(upto: int, size: int = 5) -> None:
        nonlocal pos
        while pos < upto:
            chunk = x[pos : min(upto, pos + size)]
            step = {"inputs": chunk.tolist(), "offset": pos}
            body = ok(c.post(f"/v1/sessions/{sid}/steps", json=step))
            outs.append(np.asarray(body["outputs"]))
            pos = body["offset"]

    feed(20)
    print("ok   20 steps in chunks of 5 through the load balancer")
    if a.kill_cmd:
        run(a.kill_cmd)
        feed(35)
        print("ok   15 more steps with one replica dead")
        if a.start_cmd:
            run(a.start_cmd)
            time.sleep(3)
            wait_ready(c)
    if a.redis_restart_cmd:
        run(a.redis_restart_cmd)
        wait_ready(c)
        feed(45)
        print("ok   the session survived a Redis restart")
    feed(len(x))
    err = float(np.abs(np.concatenate(outs) - whole).max())
    if err > 1e-5:
        sys.exit(f"FAIL streamed outputs differ from the whole predict by {err:.3g}")
    print(f"ok   streamed == whole predict (max abs diff {err:.2g})")

    sid = ok(c.post("/v1/sessions", json={"model": name}), 201)["session_id"]
    with cf.ThreadPoolExecutor(20) as pool:
        offsets = sorted(pool.map(
            lambda i: ok(httpx.post(f"{a.url}/v1/sessions/{sid}/steps",
                                    json={"inputs": [[float(i)] * n_in]}, timeout=30))["offset"],
            range(20)))  # fmt: skip
    if offsets != list(range(1, 21)):
        sys.exit(f"FAIL concurrent offsets {offsets}")
    print("ok   20 concurrent steps -> offsets exactly 1..20")
    print("all checks passed")


if __name__ == "__main__":
    main()

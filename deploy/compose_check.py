"""Exercise a running compose stack through its one address (the load balancer).

    python deploy/compose_check.py --url http://127.0.0.1:8080 [--kill-cmd "docker kill X"] ...

Checks, each printed as one line: predict works; a session streamed in chunks through the
load balancer (so alternately served by the replicas) equals one whole predict; the stream
goes on after a replica is killed and after it is back; 20 concurrent steps give offsets
exactly 1..20; a session survives a Redis restart (append-only file); with --grpc, a sequence
streamed over gRPC through the balancer (ModelStreamInfer, tritonclient.grpc), continued over
/v2 REST and ended over gRPC again, equals the whole predict. Exits non-zero on the first
failure. Used by deploy/compose-test.sh; needs httpx and numpy (and tritonclient for --grpc).
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
    ap.add_argument("--grpc", help="host:port of the balancer's gRPC address")
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
    if a.grpc:
        grpc_check(a.grpc, a.url, name, x, whole)
    print("all checks passed")


def grpc_check(target: str, url: str, name: str, x: np.ndarray, whole: np.ndarray) -> None:
    """Chunks over one gRPC stream, then /v2 REST, then a second stream: one sequence."""
    import queue

    import tritonclient.grpc as tg
    import tritonclient.http as th

    answers: queue.Queue = queue.Queue()
    g = tg.InferenceServerClient(target)
    outs: list[np.ndarray] = []

    def stream(a: int, b: int, start: bool = False, end: bool = False) -> None:
        g.start_stream(callback=lambda result, error: answers.put((result, error)))
        for i in range(a, b, 5):
            inp = tg.InferInput("x", [1, min(b, i + 5) - i, x.shape[1]], "FP32")
            inp.set_data_from_numpy(x[None, i : min(b, i + 5)].astype(np.float32))
            first, last = start and i == a, end and i + 5 >= b
            g.async_stream_infer(name, [inp], sequence_id="compose-check", sequence_start=first,
                                 sequence_end=last, parameters={"offset": i})  # fmt: skip
        for _ in range(a, b, 5):
            result, error = answers.get(timeout=30)
            if error is not None:
                sys.exit(f"FAIL gRPC stream: {error}")
            outs.append(result.as_numpy("y")[0])
        g.stop_stream()

    stream(0, 20, start=True)
    rest = th.InferenceServerClient(url.removeprefix("http://"))
    inp = th.InferInput("x", [1, 20, x.shape[1]], "FP32")
    inp.set_data_from_numpy(x[None, 20:40].astype(np.float32), binary_data=True)
    outs.append(rest.infer(name, [inp], sequence_id="compose-check",
                           parameters={"offset": 20}).as_numpy("y")[0])  # fmt: skip
    stream(40, len(x), end=True)
    g.close()
    err = float(np.abs(np.concatenate(outs) - whole).max())
    if err > 1e-5:
        sys.exit(f"FAIL gRPC + REST sequence differs from the whole predict by {err:.3g}")
    print(
        f"ok   gRPC stream -> /v2 REST -> gRPC stream through {target} == whole predict "
        f"(max abs diff {err:.2g})"
    )


if __name__ == "__main__":
    main()

"""Model control under load: versions come and go while predict and session traffic runs.

    python bench/reload.py                  # the reload scenario, then the memory one
    python bench/reload.py --quick          # smoke run (short phases, little traffic)
    python bench/reload.py --json out.json  # also write every figure as JSON

The reload scenario (PEEPHOLE_MODEL_CONTROL=poll, one `python -m app` process, loopback):
closed-loop predict clients (the default version, T=10) and session clients (chunks of 1-5
steps with offsets; some sessions short, some streaming until they are told to stop) run
throughout. After a steady phase: version 2 is copied in half-written (card, half the graph,
a pause of two poll intervals, the rest), and becomes the default once it is whole; a
version 3 whose sha256 is wrong is copied in and refused; version 1's directory is removed
while sessions stream on it, so it drains until PEEPHOLE_DRAIN_SECONDS pass; then a steady
phase again. Printed: requests and failures by kind, p99 latency in the steady phase vs
during the reload (from the copy of version 2 to version 1 freed), readiness probes, the
server's RSS, and the checks (see `Report.problems`): no failure other than a 410 on a
version-1 session after its drain deadline, no answer from version 2 before it was whole,
every session's outputs equal to one whole-sequence predict on its own version (1e-5).

The memory scenario (explicit mode): the server's RSS before loading N copies of a larger
model, with them loaded, and after unloading them (an unloaded version's ONNX Runtime
sessions are freed).

Figures on a shared machine are noise; the ratio of p99s measured in one run is the figure
to read. tests/inference/test_reload.py runs both scenarios small and checks correctness only.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx
import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from app.inference.engine import Engine  # noqa: E402
from app.inference.repository import load_version  # noqa: E402

# -- the server ----------------------------------------------------------------------------


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


class Server:
    """`python -m app` (one worker) on a loopback port, with model control settings."""

    def __init__(self, repo: Path, **env: str) -> None:
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.env = {
            **os.environ,
            "PYTHONPATH": str(ROOT),
            "PEEPHOLE_MODEL_REPOSITORY": str(repo),
            "PEEPHOLE_PORT": str(self.port),
            "PEEPHOLE_PROVIDER": "cpu",
            "PEEPHOLE_WORKERS": "1",
            "PEEPHOLE_GRPC_PORT": "0",  # HTTP only: the default gRPC port may be taken
            "PEEPHOLE_LOG_LEVEL": "warning",
            **env,
        }
        self.proc: subprocess.Popen[bytes] | None = None

    def __enter__(self) -> Server:
        self.proc = subprocess.Popen([sys.executable, "-m", "app"], env=self.env, cwd=ROOT)
        deadline = time.monotonic() + 90
        while True:
            try:
                if httpx.get(self.url + "/health/ready", timeout=2).status_code == 200:
                    return self
            except httpx.TransportError:
                pass
            if self.proc.poll() is not None or time.monotonic() > deadline:
                self.__exit__()
                raise RuntimeError("the server did not start")
            time.sleep(0.1)

    def __exit__(self, *exc: object) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()

    def rss_mb(self) -> float:
        """Resident memory of the server process, MiB (VmRSS)."""
        assert self.proc is not None
        for line in Path(f"/proc/{self.proc.pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]) / 1024
        raise RuntimeError("no VmRSS")


def wait_for(what: str, check: Callable[[], Any], timeout: float) -> Any:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        got = check()
        if got:
            return got
        time.sleep(0.05)
    raise TimeoutError(f"timed out waiting for {what}")


def version_state(client: httpx.Client, name: str, version: int) -> dict[str, Any]:
    """The /v1/repository entry of one version ({} when absent)."""
    for m in client.get("/v1/repository").json()["models"]:
        if m["name"] == name:
            for v in m["versions"]:
                if v["version"] == version:
                    return v  # type: ignore[no-any-return]
    return {}


# -- the traffic ---------------------------------------------------------------------------


@dataclass
class Call:
    kind: str  # predict, create, step, delete, ready
    sent: float  # epoch seconds
    seconds: float
    status: int  # 0: no answer (connection error)
    version: int | None = None  # the version that answered (predict, the session's for steps)

    @property
    def answered(self) -> float:
        return self.sent + self.seconds


@dataclass
class Stream:
    """One session as its client saw it."""

    session_id: str
    version: int
    inputs: list[list[list[float]]] = field(default_factory=list)  # applied chunks
    outputs: list[list[list[float]]] = field(default_factory=list)
    gone: bool = False  # ended by a 410


class Traffic:
    """Closed-loop clients in threads until `stop()`: predicts, sessions, readiness probes."""

    def __init__(
        self,
        url: str,
        model: str,
        input_size: int,
        predictors: int,
        streams: int,
        long_streams: int,
        seed: int = 0,
    ) -> None:
        self.url, self.model, self.input_size = url, model, input_size
        self.calls: list[Call] = []
        self.streams: list[Stream] = []
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._threads = [threading.Thread(target=self._prober)]
        for i in range(predictors):
            self._threads.append(threading.Thread(target=self._predictor, args=(seed + i,)))
        for i in range(streams):
            args = (seed + 100 + i, i < long_streams)
            self._threads.append(threading.Thread(target=self._streamer, args=args))

    def start(self) -> Traffic:
        for t in self._threads:
            t.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        for t in self._threads:
            t.join(timeout=60)

    def _call(
        self, client: httpx.Client, kind: str, method: str, path: str, body: Any = None
    ) -> tuple[Call, Any]:
        sent, t0 = time.time(), time.perf_counter()
        try:
            r = client.request(method, path, json=body)
            status, data = r.status_code, (r.json() if r.content else None)
        except (httpx.HTTPError, ValueError):
            status, data = 0, None
        call = Call(kind, sent, time.perf_counter() - t0, status)
        with self._lock:
            self.calls.append(call)
        return call, data

    def _predictor(self, seed: int) -> None:
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                x = (0.5 * rng.standard_normal((1, 10, self.input_size))).tolist()
                path = f"/v1/models/{self.model}/predict"
                call, data = self._call(c, "predict", "POST", path, {"inputs": x})
                if call.status == 200:
                    call.version = data["version"]

    def _streamer(self, seed: int, long: bool) -> None:
        """Sessions one after another: short ones (3-10 chunks) end with DELETE; long ones
        step until the traffic stops or their version is gone (410)."""
        rng = np.random.default_rng(seed)
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                call, data = self._call(c, "create", "POST", "/v1/sessions", {"model": self.model})
                if call.status != 201:
                    time.sleep(0.05)
                    continue
                s = Stream(data["session_id"], data["version"])
                call.version = s.version
                with self._lock:
                    self.streams.append(s)
                chunks = 10**9 if long else int(rng.integers(3, 11))
                offset = 0
                while len(s.inputs) < chunks and not self._stop.is_set():
                    x = 0.5 * rng.standard_normal((int(rng.integers(1, 6)), self.input_size))
                    x32 = x.astype(np.float32).tolist()
                    body = {"inputs": x32, "offset": offset}
                    call, data = self._call(
                        c, "step", "POST", f"/v1/sessions/{s.session_id}/steps", body
                    )
                    call.version = s.version
                    if call.status != 200:
                        s.gone = call.status == 410
                        break
                    s.inputs.append(x32)
                    s.outputs.append(data["outputs"])
                    offset = data["offset"]
                self._call(c, "delete", "DELETE", f"/v1/sessions/{s.session_id}")

    def _prober(self) -> None:
        with httpx.Client(base_url=self.url, timeout=30) as c:
            while not self._stop.is_set():
                self._call(c, "ready", "GET", "/health/ready")
                time.sleep(0.05)


# -- the reload scenario -------------------------------------------------------------------


def copy_half_written(src: Path, dst: Path, pause: float) -> float:
    """Copy a version directory as a slow copy would: the card and half the graph, a pause,
    then the rest. Returns when the copy was whole (epoch seconds)."""
    dst.mkdir(parents=True)
    for f in sorted(src.iterdir()):
        if f.name != "model.onnx":
            shutil.copy2(f, dst / f.name)
    data = (src / "model.onnx").read_bytes()
    with open(dst / "model.onnx", "wb") as out:
        out.write(data[: len(data) // 2])
        out.flush()
        time.sleep(pause)
        out.write(data[len(data) // 2 :])
    return time.time()


def copy_with_card(src: Path, dst: Path, **card_changes: Any) -> None:
    """A version directory copied with fields of its card changed (e.g. version, onnx)."""
    shutil.copytree(src, dst)
    card = json.loads((dst / "model.json").read_text())
    card.update(card_changes)
    (dst / "model.json").write_text(json.dumps(card))


def copy_with_wrong_sha(src: Path, dst: Path, version: int) -> None:
    """A copy of a version directory as `version`, its card naming a graph sha256 that the
    graph does not have (the server must refuse it)."""
    onnx = json.loads((src / "model.json").read_text())["onnx"]
    copy_with_card(src, dst, version=version, onnx={**onnx, "sha256": "0" * 64})


def pct(values: list[float], q: float) -> float:
    return float(np.percentile(values, q)) * 1000 if values else float("nan")


@dataclass
class Report:
    requests: dict[str, int]
    failures: dict[str, int]  # "kind status" -> count, outside what the scenario allows
    drain_answers: int  # 410s on version-1 sessions after the drain deadline
    p99_steady_ms: float
    p99_reload_ms: float
    p50_steady_ms: float
    p50_reload_ms: float
    ready_probes: int
    ready_failures: int
    rss_before_mb: float
    rss_after_mb: float
    sessions: dict[str, int]  # sessions per version
    mismatches: int  # sessions whose outputs differ from a whole-sequence predict
    max_error: float
    early_v2: int  # answers from version 2 before its copy was whole
    refused_metric: float  # peephole_model_loads_total{version="3",result="refused"}
    default_after: int
    reload_seconds: float

    def problems(self) -> list[str]:
        out = []
        if self.failures:
            out.append(f"failed requests: {self.failures}")
        if self.ready_failures:
            out.append(f"readiness dropped {self.ready_failures} times")
        if self.mismatches:
            out.append(f"{self.mismatches} sessions differ from whole-sequence predicts")
        if self.early_v2:
            out.append(f"{self.early_v2} answers from version 2 before it was whole")
        if self.refused_metric < 1:
            out.append("the bad version 3 was not counted as refused")
        if self.default_after != 2:
            out.append(f"the default ended as version {self.default_after}")
        if not self.sessions.get("1") or not self.sessions.get("2"):
            out.append(f"sessions on both versions expected, got {self.sessions}")
        return out


def whole_outputs(engine: Engine, s: Stream) -> np.ndarray:
    x = np.concatenate([np.asarray(c, np.float32) for c in s.inputs])[None]
    return engine.run(x).y[0]


def run_reload(
    v1: Path,
    v2: Path,
    work: Path,
    *,
    poll: float = 0.25,
    drain: float = 3.0,
    steady: float = 3.0,
    predictors: int = 2,
    streams: int = 4,
    long_streams: int = 2,
) -> Report:
    """The reload scenario on model versions `v1` and `v2` (directories of one model)."""
    card = json.loads((v1 / "model.json").read_text())
    name, input_size = card["name"], card["input_size"]
    repo = work / "models"
    shutil.copytree(v1, repo / name / "1")
    # the references, built here from their own copies (version 1's files leave the repo)
    refs = {
        1: Engine(load_version(v1, name, 1), provider="cpu"),
        2: Engine(load_version(v2, name, 2), provider="cpu"),
    }
    env = {
        "PEEPHOLE_MODEL_CONTROL": "poll",
        "PEEPHOLE_MODEL_POLL_SECONDS": str(poll),
        "PEEPHOLE_DRAIN_SECONDS": str(drain),
    }
    with Server(repo, **env) as server, httpx.Client(base_url=server.url, timeout=30) as c:
        traffic = Traffic(server.url, name, input_size, predictors, streams, long_streams)
        traffic.start()
        time.sleep(steady)
        rss_before = server.rss_mb()
        t0 = time.time()
        whole = copy_half_written(v2, repo / name / "2", pause=2 * poll + 0.2)
        wait_for(
            "version 2 as default",
            lambda: c.get(f"/v1/models/{name}").json().get("version") == 2,
            60,
        )
        copy_with_wrong_sha(v2, repo / name / "3", 3)
        wait_for(
            "version 3 refused", lambda: version_state(c, name, 3).get("state") == "refused", 60
        )
        time.sleep(poll)  # sessions keep streaming on version 1 a little longer
        shutil.rmtree(repo / name / "1")
        deadline_iso = wait_for(
            "version 1 draining", lambda: version_state(c, name, 1).get("drain_deadline"), 60
        )
        wait_for(
            "version 1 freed",
            lambda: version_state(c, name, 1).get("state") == "unloaded",
            drain + 60,
        )
        t1 = time.time()
        rss_after = server.rss_mb()
        time.sleep(steady / 2)
        traffic.stop()
        metrics = c.get("/metrics").text
        default_after = c.get(f"/v1/models/{name}").json()["version"]
    deadline = _epoch(deadline_iso)
    failures: Counter[str] = Counter()
    gone = 0
    for call in traffic.calls:
        ok = {"predict": 200, "create": 201, "step": 200, "delete": 204, "ready": 200}[call.kind]
        if call.status == ok:
            continue
        if (
            call.kind == "step"
            and call.status == 410
            and call.version == 1
            and call.answered >= deadline
        ):
            gone += 1
        elif call.kind != "ready":
            failures[f"{call.kind} {call.status}"] += 1
    early = sum(1 for x in traffic.calls if x.version == 2 and x.sent < whole)
    served = [x for x in traffic.calls if x.kind in ("predict", "step") and x.status == 200]
    steady_lat = [x.seconds for x in served if x.sent < t0]
    reload_lat = [x.seconds for x in served if t0 <= x.sent <= t1]
    mismatches, worst = 0, 0.0
    for s in traffic.streams:
        if not s.inputs:
            continue
        got = np.concatenate([np.asarray(o, np.float32) for o in s.outputs])
        err = float(np.max(np.abs(got - whole_outputs(refs[s.version], s))))
        worst = max(worst, err)
        mismatches += err > 1e-5
    probes = [x for x in traffic.calls if x.kind == "ready"]
    return Report(
        requests=dict(Counter(x.kind for x in traffic.calls)),
        failures=dict(failures),
        drain_answers=gone,
        p99_steady_ms=pct(steady_lat, 99),
        p99_reload_ms=pct(reload_lat, 99),
        p50_steady_ms=pct(steady_lat, 50),
        p50_reload_ms=pct(reload_lat, 50),
        ready_probes=len(probes),
        ready_failures=sum(1 for x in probes if x.status != 200),
        rss_before_mb=rss_before,
        rss_after_mb=rss_after,
        sessions=dict(Counter(str(s.version) for s in traffic.streams if s.inputs)),
        mismatches=mismatches,
        max_error=worst,
        early_v2=early,
        refused_metric=_metric(
            metrics, "peephole_model_loads_total", version="3", result="refused"
        ),
        default_after=default_after,
        reload_seconds=t1 - t0,
    )


def _epoch(iso: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def _metric(text: str, name: str, **labels: str) -> float:
    """The sum of a metric's samples whose labels include `labels`."""
    total = 0.0
    for line in text.splitlines():
        if not line.startswith(name + "{"):
            continue
        head, value = line.rsplit(" ", 1)
        if all(f'{k}="{v}"' in head for k, v in labels.items()):
            total += float(value)
    return total


# -- the memory scenario -------------------------------------------------------------------


@dataclass
class Memory:
    versions: int
    rss_before_mb: float
    rss_loaded_mb: float
    rss_after_mb: float

    @property
    def returned(self) -> float:
        """The share of what the load took that the unload gave back."""
        grew = self.rss_loaded_mb - self.rss_before_mb
        return (self.rss_loaded_mb - self.rss_after_mb) / grew if grew > 0 else float("nan")


def run_memory(keep: Path, big: Path, work: Path, copies: int = 8) -> Memory:
    """RSS before loading `copies` versions of model dir `big`, loaded, and unloaded
    (explicit mode; `keep` is a small model served throughout)."""
    keep_card = json.loads((keep / "model.json").read_text())
    big_name = json.loads((big / "model.json").read_text())["name"]
    repo = work / "models-memory"
    shutil.copytree(keep, repo / keep_card["name"] / str(keep_card["version"]))
    env = {"PEEPHOLE_MODEL_CONTROL": "explicit", "PEEPHOLE_DRAIN_SECONDS": "30"}
    with Server(repo, **env) as server, httpx.Client(base_url=server.url, timeout=120) as c:
        for v in range(1, copies + 1):
            copy_with_card(big, repo / big_name / str(v), version=v)
        time.sleep(0.5)
        before = server.rss_mb()
        r = c.post(f"/v1/models/{big_name}/load")
        assert r.status_code == 200, r.text
        x = np.zeros((1, 50, json.loads((big / "model.json").read_text())["input_size"]))
        for v in range(1, copies + 1):  # run each once: arenas and caches get used
            r = c.post(f"/v1/models/{big_name}/versions/{v}/predict", json={"inputs": x.tolist()})
            assert r.status_code == 200, r.text
        loaded = server.rss_mb()
        r = c.post(f"/v1/models/{big_name}/unload")
        assert r.status_code == 200, r.text
        wait_for(
            "the versions freed",
            lambda: all(
                v["state"] == "unloaded"
                for m in c.get("/v1/repository").json()["models"]
                if m["name"] == big_name
                for v in m["versions"]
            ),
            60,
        )
        time.sleep(0.5)
        after = server.rss_mb()
    return Memory(copies, before, loaded, after)


# -- the command ---------------------------------------------------------------------------


def export_random(
    dst: Path, name: str, version: int, blocks: int, seed: int, check: bool = True
) -> Path:
    """A seeded random network of the peer's shape (1 input, tanh blocks, linear output),
    exported by training.export; `check=False` skips its PyTorch comparison (minutes on a
    large network), for models that only measure memory."""
    from unittest import mock

    import torch

    from training import export as exporter
    from training.model import PeepholeConfig, PeepholeLSTM
    from training.verify import CheckRule, Report

    torch.manual_seed(seed)
    cfg = PeepholeConfig(
        input_size=1, output_size=1, blocks=blocks, g="tanh", h="tanh", output_activation="linear"
    )
    unchecked = Report(CheckRule(), cases=["none: not checked (a model that only measures memory)"])
    with mock.patch.object(
        exporter, "verify", exporter.verify if check else lambda *a, **k: unchecked
    ):
        return exporter.export_model(
            PeepholeLSTM(cfg).eval(),
            dst,
            name,
            task="bench",
            version=version,
            training={"seed": seed, "data": {"generator": "random"}},
            input_names=["x"],
            output_names=["y"],
            internals=False,
        )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="smoke run: short, little traffic")
    ap.add_argument("--steady", type=float, default=10.0, help="seconds of each steady phase")
    ap.add_argument("--drain", type=float, default=5.0, help="PEEPHOLE_DRAIN_SECONDS")
    ap.add_argument("--poll", type=float, default=0.5, help="PEEPHOLE_MODEL_POLL_SECONDS")
    ap.add_argument("--predictors", type=int, default=4)
    ap.add_argument("--streams", type=int, default=8, help="session clients (half stream long)")
    ap.add_argument("--copies", type=int, default=8, help="versions loaded in the memory run")
    ap.add_argument("--json", type=Path, help="write the figures here too")
    args = ap.parse_args()
    if args.quick:
        args.steady, args.drain, args.poll = 2.0, 2.0, 0.25
        args.predictors, args.streams, args.copies = 1, 2, 2
    with tempfile.TemporaryDirectory(prefix="peephole-reload-") as tmp:
        work = Path(tmp)
        v1 = export_random(work / "src", "lstm", 1, 32, seed=1)
        v2 = export_random(work / "src", "lstm", 2, 32, seed=2)
        big = export_random(work / "src", "big", 1, 512, seed=3, check=False)
        rep = run_reload(
            v1,
            v2,
            work,
            poll=args.poll,
            drain=args.drain,
            steady=args.steady,
            predictors=args.predictors,
            streams=args.streams,
            long_streams=args.streams // 2,
        )
        mem = run_memory(v1, big, work, args.copies)
    total = sum(v for k, v in rep.requests.items() if k != "ready")
    print(f"requests: {total} ({', '.join(f'{k} {v}' for k, v in rep.requests.items())})")
    print(
        f"failures: {sum(rep.failures.values())} {rep.failures or ''}; drain answers (410 after "
        f"the deadline, version-1 sessions): {rep.drain_answers}"
    )
    print(f"readiness: {rep.ready_probes} probes, {rep.ready_failures} not ready")
    print(
        f"sessions: {rep.sessions}; differing from whole-sequence predicts: {rep.mismatches} "
        f"(max |error| {rep.max_error:.1e}); answers from version 2 before whole: "
        f"{rep.early_v2}"
    )
    print(
        f"latency (predict + steps) steady p50 {rep.p50_steady_ms:.2f} ms p99 "
        f"{rep.p99_steady_ms:.2f} ms | during the reload ({rep.reload_seconds:.1f} s) p50 "
        f"{rep.p50_reload_ms:.2f} ms p99 {rep.p99_reload_ms:.2f} ms | p99 reload/steady "
        f"{rep.p99_reload_ms / rep.p99_steady_ms:.2f}x"
    )
    print(
        f"RSS (reload scenario): {rep.rss_before_mb:.1f} MiB before version 2, "
        f"{rep.rss_after_mb:.1f} MiB after version 1 was freed"
    )
    print(
        f"RSS (memory scenario, {mem.versions} versions of a 512-block model): before "
        f"{mem.rss_before_mb:.1f} MiB, loaded {mem.rss_loaded_mb:.1f} MiB, after unload "
        f"{mem.rss_after_mb:.1f} MiB ({100 * mem.returned:.0f}% of the growth returned)"
    )
    problems = rep.problems()
    print("checks: " + ("all passed" if not problems else "; ".join(problems)))
    if args.json:
        out = {"reload": asdict(rep), "memory": {**asdict(mem), "returned": mem.returned}}
        args.json.write_text(json.dumps(out, indent=2))
    sys.exit(1 if problems else 0)


if __name__ == "__main__":
    main()

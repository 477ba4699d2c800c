"""Prometheus metrics: one registry per app, fed from these places only.

- `observe_request`, called by the metrics middleware and the fast path (app/edge), counts
  requests and their latency by route TEMPLATE (`/v1/sessions/{session_id}/steps`, never the
  raw path) and status;
- the inference runner reports batch size and inference time per model version;
- the data plane counts session store errors; live sessions are read at scrape time;
- the gRPC servicer (app/api/grpc) counts its calls and stream messages by status code;
- model control (app/inference/control.py) counts loads, refusals, unloads and drains;
- the process collector gives `process_resident_memory_bytes` (what an unload frees).

Several worker processes behind one port (`python -m app --workers N`) would each answer
/metrics with their own counts, so a scrape saw whichever worker took the connection and every
counter jumped between workers' values. With PROMETHEUS_MULTIPROC_DIR set (`python -m app`
sets a private one when it starts several workers) prometheus-client keeps every value in
files there, one per process, and /metrics adds up all workers' (prometheus-client's
multiprocess mode); the `process_*` series are then the answering worker's own.
"""

from __future__ import annotations

import os
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, ProcessCollector
from prometheus_client.exposition import CONTENT_TYPE_LATEST, generate_latest
from prometheus_client.multiprocess import MultiProcessCollector, mark_process_dead

SHARED_DIR_ENV = "PROMETHEUS_MULTIPROC_DIR"  # prometheus-client's own name for it

LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30)
BATCH_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512)


class Metrics:
    """The service's metrics, on a registry of their own (several apps may share a process)."""

    content_type = CONTENT_TYPE_LATEST

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "peephole_requests_total",
            "HTTP requests and WebSocket connections",
            ["method", "route", "status"],
            registry=r,
        )
        self.latency = Histogram(
            "peephole_request_duration_seconds",
            "Request latency (for WebSockets: connection life)",
            ["method", "route"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.inference_time = Histogram(
            "peephole_inference_duration_seconds",
            "Time in ONNX Runtime per run",
            ["model", "version"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.batch_size = Histogram(
            "peephole_inference_batch_size",
            "Sequences per inference run",
            ["model", "version"],
            buckets=BATCH_BUCKETS,
            registry=r,
        )
        # Gauges across workers: the live-session count is read from the (shared) store at
        # scrape time, so the most recent worker's value is the count; versions held, the most.
        self.live_sessions = Gauge(
            "peephole_sessions_live",
            "Live streaming sessions",
            registry=r,
            multiprocess_mode="livemostrecent",
        )
        self.store_errors = Counter(
            "peephole_session_store_errors_total",
            "Session store failures by operation",
            ["operation"],
            registry=r,
        )
        self.store_conflicts = Counter(
            "peephole_session_store_conflicts_total",
            "Session changes run again because another worker or replica wrote first",
            registry=r,
        )
        self._series: dict[tuple[str, str, int], tuple[Any, Any]] = {}
        self.ws_messages = Counter(
            "peephole_websocket_messages_total",
            "WebSocket stream messages by answer status",
            ["status"],
            registry=r,
        )
        # gRPC (app/api/grpc): calls by method and status code; for the bidirectional
        # ModelStreamInfer also each message's answer (an error travels in the stream).
        self.grpc_requests = Counter(
            "peephole_grpc_requests_total",
            "gRPC calls by method and status code",
            ["method", "code"],
            registry=r,
        )
        self.grpc_latency = Histogram(
            "peephole_grpc_request_duration_seconds",
            "gRPC call latency (for streams: the stream's life)",
            ["method"],
            buckets=LATENCY_BUCKETS,
            registry=r,
        )
        self.grpc_stream_messages = Counter(
            "peephole_grpc_stream_messages_total",
            "ModelStreamInfer messages by the status code of their answer",
            ["code"],
            registry=r,
        )

        self.model_loads = Counter(
            "peephole_model_loads_total",
            "Model version loads by result: loaded, or refused (failed validation)",
            ["model", "version", "result"],
            registry=r,
        )
        self.model_unloads = Counter(
            "peephole_model_unloads_total",
            "Model versions unloaded (their drain begins), by cause: api, removed, changed",
            ["model", "version", "cause"],
            registry=r,
        )
        self.model_freed = Counter(
            "peephole_model_freed_total",
            "Unloaded versions freed, by how the drain ended: idle (no session left), deadline",
            ["model", "version", "end"],
            registry=r,
        )
        self.model_versions = Gauge(
            "peephole_model_versions",
            "Model versions held, by state: ready, draining",
            ["state"],
            registry=r,
            multiprocess_mode="livemax",
        )
        ProcessCollector(registry=r)
        self.shared_dir = os.environ.get(SHARED_DIR_ENV) or None
        self._scrape = r
        if self.shared_dir is not None:  # every worker's values, from their files
            self._scrape = CollectorRegistry()
            MultiProcessCollector(self._scrape, path=self.shared_dir)  # type: ignore[no-untyped-call]
            ProcessCollector(registry=self._scrape)

    def observe_request(self, method: str, route: str, status: int, seconds: float) -> None:
        """One HTTP request or WebSocket connection (labelled children cached: this runs on
        every request, and `labels()` costs more than the observation itself)."""
        key = (method, route, status)
        series = self._series.get(key)
        if series is None:
            series = (
                self.requests.labels(method, route, str(status)),
                self.latency.labels(method, route),
            )
            self._series[key] = series
        series[0].inc()
        series[1].observe(seconds)

    def observe_inference(self, engine: Any, batch: int, seconds: float) -> None:
        labels = {"model": engine.name, "version": str(engine.version)}
        self.inference_time.labels(**labels).observe(seconds)
        self.batch_size.labels(**labels).observe(batch)

    def render(self) -> bytes:
        return generate_latest(self._scrape)

    def close(self) -> None:
        """This worker is going: its live gauges stop counting (its counters keep adding up)."""
        if self.shared_dir is not None:
            mark_process_dead(os.getpid(), self.shared_dir)  # type: ignore[no-untyped-call]

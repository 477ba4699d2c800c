"""Settings: every PEEPHOLE_* variable (docs/API.md), read once (environment, then `.env`).

Validators refuse unsafe or inconsistent values at start rather than at the first request.
"""

from __future__ import annotations

import math
import os
from pathlib import Path
from typing import Annotated, Literal

from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, NoDecode, SettingsConfigDict


class Settings(BaseSettings):
    """The service configuration (the documented variables plus a few internal knobs)."""

    model_config = SettingsConfigDict(
        env_prefix="PEEPHOLE_",
        env_file=".env",
        env_file_encoding="utf-8",
        extra="ignore",
        protected_namespaces=(),
    )

    model_repository: Path = Path("./models")
    host: str = "127.0.0.1"
    port: int = Field(default=8000, ge=0, le=65535)
    provider: Literal["auto", "cpu", "cuda"] = "auto"
    # -- session store and workers (app/sessions, app/__main__.py) --------------------------
    # memory: this process only (one worker); lmdb: a database file every process of this host
    # that opens PEEPHOLE_LMDB_PATH shares (several workers); redis: Redis, shared by replicas.
    session_store: Literal["memory", "lmdb", "redis"] = "memory"
    # The lmdb store's directory; unset: `python -m app` makes a private one for the run (on
    # /dev/shm when it has room) and removes it at exit. Set it to keep sessions across restarts
    # or to share them with processes that another process manager starts.
    lmdb_path: Path | None = None
    lmdb_map_bytes: int = Field(default=4 << 30, ge=1 << 20)  # the most the lmdb file may grow to
    redis_url: str = "redis://127.0.0.1:6379/0"
    session_ttl_seconds: int = Field(default=3600, ge=1)
    max_ttl_seconds: int = Field(default=604800, ge=1)
    max_sessions: int = Field(default=100000, ge=1)
    max_batch_size: int = Field(default=256, ge=1)
    max_steps: int = Field(default=100000, ge=1)
    max_body_bytes: int = Field(default=16 * 1024 * 1024, ge=1024)
    # The edge (docs/DESIGN.md, "Limits"): what one request or connection may cost.
    max_response_bytes: int = Field(default=64 * 1024 * 1024, ge=1024)  # estimated first; 413
    max_inflight_bytes: int = Field(default=0, ge=0)  # large bodies at once; 503; 0 = 4 bodies
    max_header_bytes: int = Field(default=64 * 1024, ge=1024, le=16 * 1024 * 1024)  # 431
    header_timeout_seconds: float = Field(default=10.0, gt=0)  # request line + headers; 408
    body_timeout_seconds: float = Field(default=30.0, gt=0)  # no body byte for this long; 408
    keepalive_seconds: float = Field(default=5.0, gt=0)  # idle connection, also before a request
    max_connections: int = Field(default=2048, ge=1)  # open connections; past it, 503 and close
    # Comma-separated in the environment; empty means no authentication.
    api_keys: Annotated[list[str], NoDecode] = Field(default_factory=list)
    # gRPC (inference.GRPCInferenceService, health, reflection) beside HTTP; 0 turns it off.
    grpc_port: int = Field(default=8001, ge=0, le=65535)
    grpc_host: str | None = None  # None: PEEPHOLE_HOST

    # Internal knobs (not in the contract; defaults suit a small CPU box).
    inference_threads: int = Field(default=0, ge=0)  # worker threads; 0 = one per core
    intra_op_threads: int = Field(default=0, ge=0)  # ONNX Runtime threads per run; 0 = auto
    log_level: Literal["critical", "error", "warning", "info", "debug"] = "info"
    session_sweep_seconds: float = Field(default=5.0, gt=0)
    redis_prefix: str = "peephole:"  # key prefix, so several deployments can share a Redis
    redis_timeout_seconds: float = Field(default=2.0, gt=0)  # connect/read: a dead Redis is a 503
    redis_max_connections: int = Field(default=64, ge=1)
    # Redis topology (docs/DEPLOYMENT.md, docs/SCALING.md). standalone: PEEPHOLE_REDIS_URL is
    # the server; cluster: it names any node of a Redis Cluster; sentinel: the sentinels below
    # find the master (the URL then only gives the username, password, database and TLS).
    redis_mode: Literal["standalone", "cluster", "sentinel"] = "standalone"
    # A change is acknowledged only once this many replicas hold it (WAIT after the write);
    # fewer within redis_wait_timeout_seconds is a 503 the client retries with the same offset.
    redis_min_replicas: int = Field(default=0, ge=0)
    redis_wait_timeout_seconds: float = Field(default=0.5, gt=0)
    redis_sentinels: Annotated[list[str], NoDecode] = Field(default_factory=list)  # host:port,...
    redis_master_name: str = "mymaster"  # the name the sentinels monitor
    # Sessions are spread over this many buckets, each with its own index of live ids (one
    # hash slot each in a cluster); 0 = 1 on a single master, 1024 on a cluster.
    redis_buckets: int = Field(default=0, ge=0, le=16384)
    # With more than one bucket the live count is summed over buckets and shared by the
    # replicas for this long (the bound on capacity overshoot: docs/SCALING.md).
    redis_count_cache_seconds: float = Field(default=1.0, gt=0, le=60)
    # Sessions whose last written copy a replica keeps, so that its next step on one is one
    # compare-and-set (one round trip) instead of a read and a write; 0 = always read first.
    redis_cache_sessions: int = Field(default=10000, ge=0)
    # Connection errors (a restarted Redis, a failover) are retried for this long, stale
    # connections dropped at once; past it the request is a 503.
    redis_retry_seconds: float = Field(default=0.25, ge=0, le=30)
    store_conflict_retries: int = Field(default=100, ge=1)  # optimistic retries of one change
    graceful_shutdown_seconds: float = Field(default=30.0, ge=0)
    # Worker processes of `python -m app`; 0 = one per two cores. Default 1: measured best on
    # 2 cores (docs/PERFORMANCE.md, bench/stores.py). Several need a shared session store.
    workers: int = Field(default=1, ge=0)
    access_log: bool = False  # uvicorn's per-request log line; /metrics counts requests anyway
    # Dynamic batching: concurrent runs of one model version become one ONNX Runtime run of at
    # most this many sequences (1 = no batching); a partial batch waits at most max_wait_ms,
    # and only while the model is busy (an idle model runs a lone request at once).
    batch_max_size: int = Field(default=64, ge=1)
    batch_max_wait_ms: float = Field(default=0.0, ge=0, le=1000)
    # Runs estimated under this many milliseconds run on the event loop (no thread hand-off).
    batch_inline_ms: float = Field(default=0.5, ge=0, le=100)
    # Set by `python -m app` for its worker processes: every worker binds the gRPC port
    # (SO_REUSEPORT) and the kernel spreads connections over them. Off in a lone process, so
    # that a port already taken is an error at start, as for HTTP.
    grpc_reuse_port: bool = False
    # Model control (docs/API.md, "Model control"): none = the repository is read once at
    # start; poll = re-scanned every model_poll_seconds; explicit = only the API loads and
    # unloads. An unloaded version with live sessions drains for up to drain_seconds.
    model_control: Literal["none", "poll", "explicit"] = "none"
    model_poll_seconds: float = Field(default=5.0, gt=0)
    drain_seconds: float = Field(default=300.0, ge=0)

    @field_validator("lmdb_path", mode="before")
    @classmethod
    def _unset_if_empty(cls, v: object) -> object:
        return None if v == "" else v

    @field_validator("api_keys", mode="before")
    @classmethod
    def _split_keys(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("redis_sentinels", mode="before")
    @classmethod
    def _split_sentinels(cls, v: object) -> object:
        if isinstance(v, str):
            return [k.strip() for k in v.split(",") if k.strip()]
        return v

    @field_validator("redis_sentinels")
    @classmethod
    def _sentinels_are_addresses(cls, v: list[str]) -> list[str]:
        for address in v:
            host, _, port = address.rpartition(":")
            if not host or not port.isdigit() or not 0 < int(port) < 65536:
                raise ValueError(f"PEEPHOLE_REDIS_SENTINELS: {address!r} is not host:port")
        return v

    @field_validator("redis_prefix")
    @classmethod
    def _prefix_has_no_hash_tag(cls, v: str) -> str:
        if "{" in v or "}" in v:
            raise ValueError("PEEPHOLE_REDIS_PREFIX may not contain { or } (Redis hash tags)")
        return v

    @field_validator("api_keys")
    @classmethod
    def _keys_are_tokens(cls, v: list[str]) -> list[str]:
        for key in v:
            if any(c.isspace() for c in key) or not key.isprintable():
                raise ValueError("API keys must be printable and contain no whitespace")
        return v

    @model_validator(mode="after")
    def _consistent(self) -> Settings:
        if self.session_ttl_seconds > self.max_ttl_seconds:
            raise ValueError("PEEPHOLE_SESSION_TTL_SECONDS exceeds PEEPHOLE_MAX_TTL_SECONDS")
        if self.session_store == "memory" and self.worker_processes > 1:
            raise ValueError(
                f"{self.worker_processes} workers with PEEPHOLE_SESSION_STORE=memory would each "
                "keep their own sessions; use PEEPHOLE_SESSION_STORE=lmdb (one host) or redis, "
                "or PEEPHOLE_WORKERS=1"
            )
        if self.grpc_port and self.grpc_port == self.port:
            raise ValueError("PEEPHOLE_GRPC_PORT must differ from PEEPHOLE_PORT (0 turns gRPC off)")
        if self.redis_mode == "sentinel" and not self.redis_sentinels:
            raise ValueError("PEEPHOLE_REDIS_MODE=sentinel needs PEEPHOLE_REDIS_SENTINELS")
        wait, timeout = self.redis_wait_timeout_seconds, self.redis_timeout_seconds
        if self.redis_min_replicas and wait >= timeout:
            raise ValueError(
                "PEEPHOLE_REDIS_WAIT_TIMEOUT_SECONDS must be below PEEPHOLE_REDIS_TIMEOUT_SECONDS"
            )
        if self.model_control == "explicit" and self.workers > 1:
            # A load or unload reaches one worker process; its siblings would not follow.
            raise ValueError(
                "PEEPHOLE_MODEL_CONTROL=explicit needs one worker process per server "
                "(PEEPHOLE_WORKERS=1; scale with replicas), or use poll"
            )
        if 0 < self.max_inflight_bytes < self.max_body_bytes:
            raise ValueError("PEEPHOLE_MAX_INFLIGHT_BYTES is below PEEPHOLE_MAX_BODY_BYTES")
        return self

    @property
    def inflight_bytes(self) -> int:
        """Bytes of large request bodies the process holds at once (PEEPHOLE_MAX_INFLIGHT_BYTES,
        or four of the largest bodies when 0)."""
        return self.max_inflight_bytes or 4 * self.max_body_bytes

    @property
    def worker_processes(self) -> int:
        """PEEPHOLE_WORKERS, or one per two cores when 0; always one under explicit model
        control (see `_consistent`)."""
        if self.model_control == "explicit":
            return 1
        return self.workers or max(1, self.cores // 2)

    @property
    def cores(self) -> int:
        """CPU cores this process may use: affinity / CPU sets, and a container's CPU quota
        (cgroup v2 `cpu.max`), which affinity does not show (--cpus=2 on a 32-core host)."""
        try:
            n = len(os.sched_getaffinity(0))
        except AttributeError:  # pragma: no cover - non-Linux
            n = os.cpu_count() or 1
        try:
            quota, period = Path("/sys/fs/cgroup/cpu.max").read_text().split()[:2]
            if quota != "max":
                n = min(n, math.ceil(int(quota) / int(period)))
        except (OSError, ValueError):
            pass
        return max(1, n)

"""Peephole's Python client: whole-sequence predictions and exactly-once streaming sessions.

    from peephole import Client
    client = Client("http://127.0.0.1:8000")
    with client.session("mackey-glass") as s:
        y = s.step(x)          # x [T, input_size] -> y [T, output_size], applied exactly once

It needs only httpx, numpy and websockets (`pip install peephole`); the server is the
`serve` extra. docs/CLIENT.md has the whole API, the retry rules and the CLI.
"""

from peephole.aio import AsyncClient, AsyncSession
from peephole.client import Client, Session
from peephole.errors import (
    CapacityReached,
    IncompatibleVersion,
    InvalidInput,
    ModelNotFound,
    NotFound,
    OffsetConflict,
    PayloadTooLarge,
    PeepholeError,
    SessionNotFound,
    Unauthorized,
    Unavailable,
    VersionGone,
)
from peephole.protocol import Prediction, Step
from peephole.retry import Retry, RetryStats

__all__ = [
    "AsyncClient",
    "AsyncSession",
    "CapacityReached",
    "Client",
    "IncompatibleVersion",
    "InvalidInput",
    "ModelNotFound",
    "NotFound",
    "OffsetConflict",
    "PayloadTooLarge",
    "PeepholeError",
    "Prediction",
    "Retry",
    "RetryStats",
    "Session",
    "SessionNotFound",
    "Step",
    "Unauthorized",
    "Unavailable",
    "VersionGone",
]

"""How often and how long the client retries: exponential backoff with full jitter, a budget.

Full jitter (a delay drawn uniformly in [0, min(cap, base * 2**n)]) keeps many clients that
failed together from retrying together. The budget bounds both the number of retries of one
call and the time spent waiting between them.
"""

from __future__ import annotations

import random
import threading
from collections import Counter
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Retry:
    """The retry policy of one client (`Client(url, retries=Retry(...))`, or an int)."""

    retries: int = 6  # extra attempts after the first; 0 = never retry
    backoff: float = 0.05  # seconds: the first delay's upper bound; doubles each retry
    max_backoff: float = 5.0  # seconds: no single delay is longer
    budget: float = 60.0  # seconds: the most one call spends waiting between attempts

    def __post_init__(self) -> None:
        if self.retries < 0 or self.backoff < 0 or self.max_backoff < 0 or self.budget < 0:
            raise ValueError("retry counts and delays must be >= 0")

    @classmethod
    def of(cls, value: Retry | int) -> Retry:
        return value if isinstance(value, Retry) else cls(retries=int(value))

    def delay(self, attempt: int, retry_after: float | None = None) -> float:
        """Seconds to wait before retry number `attempt` (0-based); at least Retry-After."""
        cap = min(self.max_backoff, self.backoff * 2.0**attempt)
        wait = random.uniform(0.0, cap)
        if retry_after is not None:
            wait = max(wait, min(retry_after, self.max_backoff))
        return wait


@dataclass
class RetryStats:
    """What the client retried and why (`client.stats`), for logs and dashboards.

    `retries`: reason ("timeout", "connection", "closed", "503", ...) -> retries;
    `reconnects`: streams whose WebSocket was opened again; `gave_up`: calls that ran out of
    budget (they raised Unavailable). Safe to update from several threads.
    """

    retries: Counter[str] = field(default_factory=Counter)
    reconnects: int = 0
    gave_up: int = 0
    _lock: threading.Lock = field(default_factory=threading.Lock, repr=False, compare=False)

    @property
    def total(self) -> int:
        return sum(self.retries.values())

    def count(self, what: str) -> None:
        """One more retry for reason `what`, or one more "reconnect" / "gave_up"."""
        with self._lock:
            if what == "reconnect":
                self.reconnects += 1
            elif what == "gave_up":
                self.gave_up += 1
            else:
                self.retries[what] += 1

"""The parts of the clients and sessions that do no I/O, shared by the sync and async ones."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Generic, TypeVar

from peephole.protocol import Protocol, SessionInfo
from peephole.retry import Retry
from peephole.transport import Endpoint

C = TypeVar("C", bound="ClientBase")


class ClientBase:
    """Where the server is, the retry policy, and the counters of what was retried."""

    def __init__(
        self,
        url: str,
        api_key: str | None = None,
        *,
        timeout: float = 30.0,
        retries: Retry | int = Retry(),
        headers: Mapping[str, str] | None = None,
    ) -> None:
        self.endpoint = Endpoint.of(url, api_key, timeout, headers)
        self.protocol = Protocol(Retry.of(retries))
        self.stats = self.protocol.stats  # RetryStats: retries by reason, reconnects, gave_up
        self._start()

    def _start(self) -> None:
        """Open the transport (the subclass's HTTP client)."""

    @property
    def url(self) -> str:
        return self.endpoint.url

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.url!r})"


class SessionBase(Generic[C]):
    """A session's identity and offset; `keep`: survive the context manager's exit."""

    def __init__(self, client: C, info: SessionInfo, keep: bool = False) -> None:
        self.client, self.info, self.keep = client, info, keep

    @property
    def id(self) -> str:
        return self.info.id

    @property
    def offset(self) -> int:
        """Time steps applied so far, as far as this client knows."""
        return self.info.offset

    @property
    def model(self) -> str:
        return self.info.model

    @property
    def version(self) -> int:
        return self.info.version

    @property
    def expires_at(self) -> str:
        """ISO 8601 UTC, as of the last answer about this session that carried it."""
        return self.info.expires_at

    @property
    def stream_path(self) -> str:
        return self.info.path + "/stream"

    def __repr__(self) -> str:
        return (
            f"{type(self).__name__}(id={self.id!r}, model='{self.model}/{self.version}', "
            f"offset={self.offset})"
        )

"""Fixtures of tests/perf: the service tests' exported repository and live servers."""

from __future__ import annotations

from tests.service.conftest import models  # noqa: F401  (the session-scoped repository)

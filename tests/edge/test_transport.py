"""The production transport (app/edge/transport.py) and the uvicorn internals it relies on."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol

from app.edge.transport import CoalescingHttpToolsProtocol, CoalescingTransport

ROOT = Path(__file__).resolve().parents[2]

# The methods of uvicorn's HttpToolsProtocol that CoalescingHttpToolsProtocol overrides or
# whose behaviour it builds on, fingerprinted (sha256 of the method's syntax tree, first 8
# hex digits). Identical from uvicorn 0.29 to 0.54. When a uvicorn release changes one,
# this test fails: read the new method against app/edge/transport.py, adapt, then record
# the new fingerprint and widen the range in pyproject.toml.
RELIES_ON = {
    "connection_made": "52a70c67",  # sets self.transport and self.flow, which we then wrap
    "handle_websocket_upgrade": "9f6222b9",  # hands self.transport to the WebSocket protocol
}


def fingerprint(cls: type, name: str) -> str:
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, name))))
    return hashlib.sha256(ast.unparse(tree.body[0]).encode()).hexdigest()[:8]


def test_uvicorn_internals_are_the_ones_checked() -> None:
    assert {n: fingerprint(HttpToolsProtocol, n) for n in RELIES_ON} == RELIES_ON
    own = vars(CoalescingHttpToolsProtocol)
    overridden = {n for n, v in own.items() if callable(v) and not n.startswith("__")}
    assert overridden <= set(RELIES_ON), overridden - set(RELIES_ON)


def test_installed_uvicorn_is_in_the_declared_range() -> None:
    deps = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    uvicorn = next(Requirement(d) for d in deps if d.startswith("uvicorn"))
    assert uvicorn.specifier.contains(version("uvicorn")), (version("uvicorn"), uvicorn)


class Recording(asyncio.Transport):
    """A transport that keeps what it is asked to write."""

    def __init__(self) -> None:
        super().__init__()
        self.writes: list[bytes] = []
        self.closed = False

    def write(self, data: Any) -> None:
        self.writes.append(bytes(data))

    def is_closing(self) -> bool:
        return self.closed

    def get_write_buffer_size(self) -> int:
        return 0

    def close(self) -> None:
        self.closed = True


def test_writes_of_one_iteration_go_out_as_one() -> None:
    async def run() -> Recording:
        raw = Recording()
        t = CoalescingTransport(raw, asyncio.get_running_loop())
        t.write(b"HTTP/1.1 200 OK\r\n\r\n")
        t.write(memoryview(b"body"))
        assert raw.writes == [] and t.get_write_buffer_size() == 23
        await asyncio.sleep(0)
        t.write(b"next")
        t.close()  # flushes first
        return raw

    raw = asyncio.run(run())
    assert raw.writes == [b"HTTP/1.1 200 OK\r\n\r\nbody", b"next"] and raw.closed

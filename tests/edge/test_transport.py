"""The production transport (app/edge/transport.py, websocket.py) and the uvicorn internals
they rely on."""

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

import pytest
from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.edge.transport import CoalescingHttpToolsProtocol, CoalescingTransport
from app.edge.websocket import GracefulWebSocketProtocol

ROOT = Path(__file__).resolve().parents[2]

# For each of our protocol subclasses: the uvicorn class, and the methods of it that we
# override or whose behaviour we build on, fingerprinted (sha256 of the method's syntax
# tree, first 8 hex digits). Identical in uvicorn 0.53 and 0.54 (pyproject's range). When a
# uvicorn release changes one, this test fails: read the new method against our subclass,
# adapt it, then record the new fingerprint and widen the range in pyproject.toml.
RELIES_ON: dict[type, tuple[type, dict[str, str]]] = {
    CoalescingHttpToolsProtocol: (
        HttpToolsProtocol,
        {
            "connection_made": "52a70c67",  # sets self.transport and self.flow; we wrap the first
            "handle_websocket_upgrade": "9f6222b9",  # hands self.transport to the WS protocol
        },
    ),
    GracefulWebSocketProtocol: (
        WebSocketsSansIOProtocol,
        {
            "__init__": "53b3a328",
            "shutdown": "6b118962",  # closes with 1012 at once; we defer it
            "receive": "5cbbc370",
            "send": "9e36d71d",
        },
    ),
}


def fingerprint(cls: type, name: str) -> str:
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, name))))
    return hashlib.sha256(ast.unparse(tree.body[0]).encode()).hexdigest()[:8]


@pytest.mark.parametrize("ours", list(RELIES_ON), ids=lambda c: c.__name__)
def test_uvicorn_internals_are_the_ones_checked(ours: type) -> None:
    theirs, methods = RELIES_ON[ours]
    assert issubclass(ours, theirs)
    assert {n: fingerprint(theirs, n) for n in methods} == methods
    overridden = {n for n, v in vars(ours).items() if callable(v) and n in vars(theirs)}
    assert overridden <= set(methods), f"overrides not fingerprinted: {overridden - set(methods)}"


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

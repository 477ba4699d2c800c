"""The production transport (app/edge/transport.py, websocket.py) and the uvicorn internals
they rely on."""

from __future__ import annotations

import ast
import asyncio
import hashlib
import inspect
import subprocess
import sys
import textwrap
import tomllib
from importlib.metadata import version
from pathlib import Path
from typing import Any

import pytest
from packaging.requirements import Requirement
from uvicorn.protocols.http.httptools_impl import HttpToolsProtocol, RequestResponseCycle
from uvicorn.protocols.websockets.websockets_sansio_impl import WebSocketsSansIOProtocol

from app.edge.transport import CoalescingHttpToolsProtocol, CoalescingTransport
from app.edge.websocket import GracefulWebSocketProtocol

ROOT = Path(__file__).resolve().parents[2]

# The uvicorn classes our protocols subclass or drive, and the methods of each that we
# override or whose behaviour we build on, fingerprinted (sha256 of the method's syntax
# tree, first 8 hex digits). Identical in uvicorn 0.53 and 0.54 (pyproject's range). When a
# uvicorn release changes one, this test fails: read the new method against our code, adapt
# it, then record the new fingerprint and widen the range in pyproject.toml.
RELIES_ON: dict[type, dict[str, str]] = {
    HttpToolsProtocol: {  # CoalescingHttpToolsProtocol: one write, connection limits
        "__init__": "ef1b7c9c",
        "connection_made": "52a70c67",  # sets self.transport and self.flow; we wrap the first
        "data_received": "8583b7d5",
        "on_message_begin": "4f7bac28",  # the phases that time a connection
        "on_headers_complete": "f5d7f893",
        "on_message_complete": "4ce97e51",
        "on_response_complete": "3b835da5",
        "handle_websocket_upgrade": "9f6222b9",  # hands self.transport to the WS protocol
    },
    RequestResponseCycle: {  # a stalled body: disconnected + message_event -> http.disconnect
        "__init__": "6f7b16ad",
        "receive": "5c6d69bd",
        "send": "e4355b33",  # drops what the app sends once disconnected
    },
    WebSocketsSansIOProtocol: {  # GracefulWebSocketProtocol
        "__init__": "53b3a328",
        "shutdown": "6b118962",  # closes with 1012 at once; we defer it
        "receive": "5cbbc370",
        "send": "9e36d71d",
    },
}
OURS = {
    CoalescingHttpToolsProtocol: HttpToolsProtocol,
    GracefulWebSocketProtocol: WebSocketsSansIOProtocol,
}


def fingerprint(cls: type, name: str) -> str:
    tree = ast.parse(textwrap.dedent(inspect.getsource(getattr(cls, name))))
    return hashlib.sha256(ast.unparse(tree.body[0]).encode()).hexdigest()[:8]


@pytest.mark.parametrize("theirs", list(RELIES_ON), ids=lambda c: c.__name__)
def test_uvicorn_internals_are_the_ones_checked(theirs: type) -> None:
    methods = RELIES_ON[theirs]
    assert {n: fingerprint(theirs, n) for n in methods} == methods


@pytest.mark.parametrize("ours", list(OURS), ids=lambda c: c.__name__)
def test_every_override_is_fingerprinted(ours: type) -> None:
    theirs = OURS[ours]
    assert issubclass(ours, theirs)
    overridden = {n for n, v in vars(ours).items() if callable(v) and n in vars(theirs)}
    assert overridden <= set(RELIES_ON[theirs]), overridden - set(RELIES_ON[theirs])


def test_installed_uvicorn_is_in_the_declared_range() -> None:
    project = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]
    serve = project["optional-dependencies"]["serve"]  # the server's extra
    uvicorn = next(Requirement(d) for d in serve if d.startswith("uvicorn"))
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


def test_the_protocols_are_light_to_import() -> None:
    """uvicorn's worker processes import them while unpickling their configuration, before
    they answer the supervisor's health pings: fastapi or pydantic there made workers miss
    the pings on a loaded box and get killed as hung."""
    code = (
        "import sys, app.edge.transport, app.edge.websocket; "
        "heavy = {'fastapi', 'pydantic', 'app.config', 'app.errors'} & set(sys.modules); "
        "print(', '.join(sorted(heavy))); sys.exit(1 if heavy else 0)"
    )
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True)
    assert done.returncode == 0, done.stdout + done.stderr

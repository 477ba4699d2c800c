"""A lean WebSocket load client: the bench's figure is then the server's, not the client's.

The Python `websockets` client spends more CPU per message than our server does (framing,
masking, an await or two and a task switch per message), so a bench driven by it measures
the client. This one is an asyncio `Protocol` per socket (run on uvloop): the opening
handshake once (RFC 6455, checked: 101 and the right Sec-WebSocket-Accept), then the one
step message as a frame masked once and sent again and again, the next sent from
`data_received` when the answer is complete. Of an answer it reads the frame header (its
length) and the `"offset":` number, which is enough to check exactly-once (each answer's
offset the previous + 1); an answer without `"outputs"` counts as an error. Pings are
answered; a close frame ends the socket.

    python bench/ws_client.py --url ws://127.0.0.1:8000 --sessions 64 --seconds 5
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import hashlib
import os
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

_GUID = b"258EAFA5-E914-47DA-95CA-C5AB0DC85B11"
_OFFSET = b'"offset":'
_OUTPUTS = b'"outputs":'
TEXT, BINARY, CLOSE, PING, PONG = 1, 2, 8, 9, 10


def frame(payload: bytes, opcode: int = TEXT, mask: bytes | None = None) -> bytes:
    """One final client frame (masked, as RFC 6455 requires of a client)."""
    key = os.urandom(4) if mask is None else mask
    n = len(payload)
    if n < 126:
        head = bytes((0x80 | opcode, 0x80 | n))
    elif n < 1 << 16:
        head = bytes((0x80 | opcode, 0x80 | 126)) + n.to_bytes(2, "big")
    else:
        head = bytes((0x80 | opcode, 0x80 | 127)) + n.to_bytes(8, "big")
    whole = (key * (n // 4 + 1))[:n]
    masked = (int.from_bytes(payload, "big") ^ int.from_bytes(whole, "big")).to_bytes(n, "big")
    return head + key + masked


def parse_frames(buf: bytearray) -> list[tuple[bool, int, bytes]]:
    """Complete server frames at the head of `buf` as (fin, opcode, payload), removed from
    it; a partial frame stays for the next read. Server frames are not masked."""
    out = []
    pos, end = 0, len(buf)
    while end - pos >= 2:
        b0, b1 = buf[pos], buf[pos + 1]
        n, at = b1 & 0x7F, pos + 2
        if n == 126:
            if end - at < 2:
                break
            n, at = int.from_bytes(buf[at : at + 2], "big"), at + 2
        elif n == 127:
            if end - at < 8:
                break
            n, at = int.from_bytes(buf[at : at + 8], "big"), at + 8
        if b1 & 0x80:  # masked (a server must not; unmask anyway)
            if end - at < 4 + n:
                break
            key, at = bytes(buf[at : at + 4]), at + 4
            raw = bytes(buf[at : at + n])
            whole = (key * (n // 4 + 1))[:n]
            data = (int.from_bytes(raw, "big") ^ int.from_bytes(whole, "big")).to_bytes(n, "big")
        else:
            if end - at < n:
                break
            data = bytes(buf[at : at + n])
        out.append((bool(b0 & 0x80), b0 & 0x0F, data))
        pos = at + n
    del buf[:pos]
    return out


def offset_of(answer: bytes) -> int | None:
    """The `offset` of a /steps answer, read off the JSON text (None without one)."""
    at = answer.find(_OFFSET)
    if at < 0:
        return None
    at += len(_OFFSET)
    end = at
    while end < len(answer) and answer[end] in b" 0123456789":
        end += 1
    try:
        return int(answer[at:end])
    except ValueError:
        return None


def accept_key(key: bytes) -> bytes:
    return base64.b64encode(hashlib.sha1(key + _GUID).digest())


@dataclass
class Tally:
    """What every socket of one run saw (steps counted only while `measuring`)."""

    measuring: bool = False
    stop: bool = False
    ok: int = 0
    errors: int = 0
    bad_offsets: int = 0
    latencies: list[float] = field(default_factory=list)


class StepSocket(asyncio.Protocol):
    """One WebSocket that sends `message` and, each time its answer is complete, the next."""

    def __init__(self, host: str, path: str, message: bytes, tally: Tally,
                 keep: Callable[[bytes], None] | None = None, limit: int = 0) -> None:  # fmt: skip
        self.request = self._handshake(host, path)
        self.frame = frame(message)
        self.tally, self.keep, self.limit = tally, keep, limit
        self.buf = bytearray()
        self.upgraded = False
        self.offset = 0
        self.sent = 0
        self.parts: list[bytes] = []  # of a fragmented message
        self.t0 = 0.0
        self.transport: asyncio.Transport | None = None
        self.done: asyncio.Future[None] = asyncio.get_running_loop().create_future()

    def _handshake(self, host: str, path: str) -> bytes:
        self.key = base64.b64encode(os.urandom(16))
        return (f"GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\n"
                "Connection: Upgrade\r\nSec-WebSocket-Version: 13\r\n"
                f"Sec-WebSocket-Key: {self.key.decode()}\r\n\r\n").encode()  # fmt: skip

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self.transport.write(self.request)

    def connection_lost(self, exc: Exception | None) -> None:
        if not self.done.done():
            if exc is None and not self.tally.stop and not self._finished():
                exc = ConnectionError("the server closed the WebSocket")
            self._finish(exc)

    def _finished(self) -> bool:
        return bool(self.limit) and self.sent >= self.limit

    def _finish(self, exc: BaseException | None = None) -> None:
        if self.done.done():
            return
        if exc is None:
            self.done.set_result(None)
        else:
            self.done.set_exception(exc)
        if self.transport is not None and not self.transport.is_closing():
            if exc is None:  # a clean close: 1000
                self.transport.write(frame(b"\x03\xe8", CLOSE))
            self.transport.close()

    def _send(self) -> None:
        assert self.transport is not None
        self.sent += 1
        self.t0 = time.perf_counter()
        self.transport.write(self.frame)

    def data_received(self, data: bytes) -> None:
        try:
            self._received(data)
        except Exception as exc:  # the loop would only log it: fail the run instead
            self._finish(exc)

    def _received(self, data: bytes) -> None:
        self.buf += data
        if not self.upgraded:
            head_end = self.buf.find(b"\r\n\r\n")
            if head_end < 0:
                return
            head = bytes(self.buf[:head_end]).decode("latin-1")
            del self.buf[: head_end + 4]
            status = head.split("\r\n", 1)[0]
            code = status.split(" ", 2)[1] if status.count(" ") else ""
            if code != "101" or accept_key(self.key).decode() not in head:
                self._finish(ConnectionError(f"handshake refused: {status}"))
                return
            self.upgraded = True
            self._send()
        for fin, opcode, payload in parse_frames(self.buf):
            if opcode in (TEXT, BINARY, 0):
                self.parts.append(payload)
                if fin:
                    whole = b"".join(self.parts) if len(self.parts) > 1 else self.parts[0]
                    self.parts = []
                    self._answer(whole)
            elif opcode == PING:
                assert self.transport is not None
                self.transport.write(frame(payload, PONG))
            elif opcode == CLOSE:
                fine = self.tally.stop or self._finished()
                why = f"closed by the server: {payload[:2].hex()}"
                self._finish(None if fine else ConnectionError(why))
                return

    def _answer(self, answer: bytes) -> None:
        tally = self.tally
        if tally.measuring:
            tally.latencies.append(time.perf_counter() - self.t0)
        got = offset_of(answer)
        if got is None or _OUTPUTS not in answer:
            tally.errors += 1
        else:
            tally.bad_offsets += got != self.offset + 1
            self.offset = got
            tally.ok += tally.measuring
        if self.keep is not None:
            self.keep(answer)
        if tally.stop or self._finished():
            self._finish()
        else:
            self._send()


async def open_socket(
    url: str, message: bytes, tally: Tally, keep: Callable[[bytes], None] | None = None,
    limit: int = 0,
) -> StepSocket:  # fmt: skip
    """Connect to `url` (ws://host:port/path) and start stepping at once."""
    u = urlsplit(url)
    host, port = u.hostname or "127.0.0.1", u.port or 80
    loop = asyncio.get_running_loop()
    _, proto = await loop.create_connection(
        lambda: StepSocket(u.netloc, u.path or "/", message, tally, keep, limit), host, port
    )
    return proto


async def steps(url: str, message: bytes, n: int) -> list[bytes]:
    """The answers to `message` sent `n` times, one after the other, on one socket."""
    got: list[bytes] = []
    sock = await open_socket(url, message, Tally(), got.append, limit=n)
    await sock.done
    return got


async def load(urls: list[str], message: bytes, warmup: float, seconds: float,
               started: Callable[[], None] | None = None) -> dict[str, float]:  # fmt: skip
    """Every socket of `urls` stepping for `warmup` then `seconds`: steps, errors, bad
    offsets, p50/p99 and the client's own CPU per step."""
    tally = Tally()
    socks = [await open_socket(url, message, tally) for url in urls]
    await asyncio.sleep(warmup)
    tally.measuring, tally.ok = True, 0
    if started is not None:
        started()
    cpu0, t0 = time.process_time(), time.perf_counter()
    await asyncio.sleep(seconds)
    tally.measuring, tally.stop = False, True
    elapsed, cpu = time.perf_counter() - t0, time.process_time() - cpu0
    ok = tally.ok
    await asyncio.gather(*(s.done for s in socks))
    lat = sorted(tally.latencies)
    return {
        "ok": ok,
        "seconds": elapsed,
        "errors": tally.errors,
        "bad_offsets": tally.bad_offsets,
        "p50_ms": 1e3 * lat[len(lat) // 2] if lat else 0.0,
        "p99_ms": 1e3 * lat[int(len(lat) * 0.99)] if lat else 0.0,
        "client_cpu_us": cpu / max(1, ok) * 1e6,
    }


def main() -> int:
    import json

    import httpx
    import uvloop

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    ap.add_argument("--url", default="ws://127.0.0.1:8000", help="the server's ws:// base URL")
    ap.add_argument("--model", default="lstm")
    ap.add_argument("--sessions", type=int, default=64)
    ap.add_argument("--message", default='{"inputs": [[1.0]]}')
    ap.add_argument("--warmup", type=float, default=1.0)
    ap.add_argument("--seconds", type=float, default=5.0)
    a = ap.parse_args()
    http = a.url.replace("ws", "http", 1)
    ids = [httpx.post(f"{http}/v1/sessions", json={"model": a.model}).json()["session_id"]
           for _ in range(a.sessions)]  # fmt: skip
    urls = [f"{a.url}/v1/sessions/{sid}/stream" for sid in ids]
    print(json.dumps(uvloop.run(load(urls, a.message.encode(), a.warmup, a.seconds))))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())

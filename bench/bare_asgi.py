"""The ceiling of Python HTTP here: a bare ASGI app on Peephole's own server stack.

    python bench/bare_asgi.py PORT [WORKERS]

It reads each request's body and answers one fixed JSON body (a one-step answer), nothing
else: no routing, no parsing, no inference. It is served exactly as `python -m app` serves
Peephole (uvicorn with app/edge/server.py's options: uvloop, the production httptools protocol
of app/edge/transport.py with one write per response and the connection limits), so
bench/peers.sh can report Peephole's req/s as a fraction of it.
"""

from __future__ import annotations

import sys

from starlette.types import Receive, Scope, Send

BODY = b'{"session_id":"bare","offset":1,"outputs":[[0.5]]}'
_HEADERS = [(b"content-type", b"application/json"), (b"content-length", str(len(BODY)).encode())]


async def app(scope: Scope, receive: Receive, send: Send) -> None:
    if scope["type"] == "lifespan":
        while True:
            kind = (await receive())["type"].rpartition(".")[2]  # startup, then shutdown
            await send({"type": f"lifespan.{kind}.complete"})
            if kind == "shutdown":
                return
    more = True
    while more:  # the whole body, as a real route reads it
        message = await receive()
        more = message.get("more_body", False) and message["type"] == "http.request"
    await send({"type": "http.response.start", "status": 200, "headers": _HEADERS})
    await send({"type": "http.response.body", "body": BODY})


def main() -> None:
    import uvicorn

    from app.config import Settings
    from app.edge.server import server_options

    port, workers = int(sys.argv[1]), int(sys.argv[2]) if len(sys.argv) > 2 else 1
    options = server_options(Settings(log_level="warning", access_log=False))
    uvicorn.run("bench.bare_asgi:app", host="127.0.0.1", port=port, workers=workers, **options)


if __name__ == "__main__":
    main()

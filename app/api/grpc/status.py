"""Our errors as gRPC status codes, with the REST endpoint's messages.

One table from the HTTP status every `PeepholeError` carries to the gRPC code a client of
Triton expects: malformed input INVALID_ARGUMENT, unknown model NOT_FOUND, limits and
capacity RESOURCE_EXHAUSTED, not ready or store unreachable UNAVAILABLE, a wrong key
UNAUTHENTICATED, an offset conflict ABORTED (a failed test-and-set, in gRPC's words), a
sequence whose model version was unloaded and drained FAILED_PRECONDITION (retrying cannot
help; the state is still there to migrate).
What REST sends in headers or extra body fields (Retry-After, the current offset) goes in
the trailing metadata of a unary call.
"""

from __future__ import annotations

import grpc

from app.errors import PeepholeError, status_error

CODES: dict[int, grpc.StatusCode] = {
    400: grpc.StatusCode.INVALID_ARGUMENT,
    401: grpc.StatusCode.UNAUTHENTICATED,
    404: grpc.StatusCode.NOT_FOUND,
    405: grpc.StatusCode.UNIMPLEMENTED,
    409: grpc.StatusCode.ABORTED,
    410: grpc.StatusCode.FAILED_PRECONDITION,
    413: grpc.StatusCode.RESOURCE_EXHAUSTED,
    422: grpc.StatusCode.INVALID_ARGUMENT,
    429: grpc.StatusCode.RESOURCE_EXHAUSTED,
    501: grpc.StatusCode.UNIMPLEMENTED,
    503: grpc.StatusCode.UNAVAILABLE,
}


def code_of(err: PeepholeError) -> grpc.StatusCode:
    return CODES.get(err.status_code, grpc.StatusCode.INTERNAL)


def trailers(err: PeepholeError) -> tuple[tuple[str, str], ...]:
    """Retry-After and extra fields (`offset` of a conflict) as trailing metadata."""
    pairs = [(k.lower(), v) for k, v in err.headers.items() if k.lower() == "retry-after"]
    pairs += [(k, str(v)) for k, v in err.extra.items()]
    return tuple(pairs)


INTERNAL = status_error(500, "internal error")

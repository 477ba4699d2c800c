#!/usr/bin/env bash
# HTTP benchmark: Peephole vs the TorchServe peer vs a bare FastAPI app (see bench/http_bench.py).
exec "${PYTHON:-python}" "$(dirname "$0")/http_bench.py" "$@"

"""Property-based run of schemathesis against the live server's /openapi.json.

Bounded (30 examples per operation, all phases): no 5xx, no response that violates the
documented schema, every request the schema calls valid is accepted (2xx, or a status
that depends on state: 404, 409, 429), and a method a path does not take is 405 with an
Allow header that names the ones it does. Path parameters are pinned to a real model and
session, so the bodies reach the parsing and inference code rather than stopping at 404.

The acceptance check is off for the bodies that carry tensors (predict, steps, a session's
restored state, v2 infer): their widths and shapes are the model's, which one schema for
every model cannot say (their model-independent rules, such as no empty sequence, are in
the schema and checked by the other two checks). It is off too for the bodies whose only
field is a version (load, unload, migrate): JSON Schema calls `2.0` an integer, while every
integer field of the API is strict (an integer written as one).
"""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import httpx
import pytest

from tests.live import LiveServer
from tests.repo import LNSC, new_session


def _cli() -> list[str]:
    exe = shutil.which("schemathesis") or shutil.which("st")
    return [exe] if exe else [sys.executable, "-m", "schemathesis.cli"]


# One transport is enough for the schema (the other tests run on both); the one users run.
@pytest.mark.parametrize("server", ["production"], indirect=True)
def test_schemathesis_finds_nothing(
    server: LiveServer, client: httpx.Client, tmp_path: Path
) -> None:
    sid = new_session(client, LNSC, ttl_seconds=600)
    config = tmp_path / "schemathesis.toml"
    config.write_text(f"""
[parameters]
name = "{LNSC}"
version = "1"
session_id = "{sid}"

[checks]
enabled = false
not_a_server_error.enabled = true
response_schema_conformance.enabled = true
positive_data_acceptance.enabled = true
unsupported_method.enabled = true
allow_header_conformance.enabled = true

[[operations]]
include-path-regex = "/predict$|/steps$|/infer$|^/v1/sessions$|^/v1/.*/(load|unload|migrate)$"
checks.positive_data_acceptance.enabled = false

# /v2 model load and unload answer 503 outside explicit model control, as Triton does
# (tests/api/v2/test_repository.py): there only the answers' schemas are checked
[[operations]]
include-path-regex = "^/v2/repository/models/"
checks.not_a_server_error.enabled = false
checks.positive_data_acceptance.enabled = false
checks.unsupported_method.enabled = false
checks.allow_header_conformance.enabled = false
""")
    cmd = [
        *_cli(),
        "--config-file",
        str(config),
        "run",
        f"{server.url}/openapi.json",
        "--max-examples",
        "30",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "20",
    ]
    done = subprocess.run(cmd, capture_output=True, text=True, timeout=220, cwd=tmp_path)
    assert done.returncode == 0, done.stdout[-6000:] + done.stderr[-2000:]
    assert "passed" in done.stdout

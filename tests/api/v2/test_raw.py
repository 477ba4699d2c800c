"""The KServe v2 wire format with raw HTTP: flat and nested JSON tensors, binary framing, and
every bad input answered with its code and an `{"error"}` body (never a 500)."""

from __future__ import annotations

import gzip
import json
from typing import Any

import httpx
import numpy as np
import orjson
import pytest

from app.errors import StoreUnavailable
from app.sessions.memory import MemorySessionStore
from tests.api.v2.conftest import MAX_BODY
from tests.live import LiveServer, make_settings
from tests.repo import LNSC, PLAIN, RepoModels

INFER = f"/v2/models/{LNSC}/infer"
X = np.arange(2 * 3 * 3, dtype=np.float32).reshape(2, 3, 3) / 10


def tensor(data: Any = None, shape: list[int] | None = None, name: str = "x", **kw: Any) -> dict:
    t: dict[str, Any] = {"name": name, "datatype": "FP32", "shape": shape or [2, 3, 3]}
    t["data"] = X.tolist() if data is None else data
    return {**t, **kw}


def post(client: httpx.Client, body: Any, path: str = INFER, **kw: Any) -> httpx.Response:
    return client.post(path, json=body, **kw)


def binary_request(
    header: dict, blobs: list[bytes], header_len: int | None = None
) -> tuple[bytes, dict[str, str]]:
    head = json.dumps(header).encode()
    n = len(head) if header_len is None else header_len
    return head + b"".join(blobs), {"Inference-Header-Content-Length": str(n)}


def error(r: httpx.Response, status: int) -> str:
    assert r.status_code == status, (r.status_code, r.text)
    assert r.headers["content-type"].startswith("application/json")
    body = r.json()
    assert set(body) == {"error"} and isinstance(body["error"], str) and body["error"]
    return str(body["error"])


def y_of(r: httpx.Response) -> np.ndarray:
    assert r.status_code == 200, r.text
    out = {o["name"]: o for o in r.json()["outputs"]}["y"]
    return np.array(out["data"], np.float32).reshape(out["shape"])


def test_flat_and_nested_json_agree(client: httpx.Client) -> None:
    nested = post(client, {"inputs": [tensor()], "id": "n1"})
    flat = post(client, {"inputs": [tensor(X.reshape(-1).tolist())]})
    assert nested.headers["content-type"] == "application/json"
    body = nested.json()
    assert body["model_name"] == LNSC and body["model_version"] == "1" and body["id"] == "n1"
    outs = {o["name"]: o for o in body["outputs"]}
    assert outs["y"]["shape"] == [2, 3, 2] and outs["y"]["datatype"] == "FP32"
    assert len(outs["y"]["data"]) == 12  # flat, row-major
    assert outs["gates"]["shape"] == [2, 2, 3]
    np.testing.assert_array_equal(y_of(nested), y_of(flat))
    v1 = client.post(f"/v1/models/{LNSC}/predict", json={"inputs": X.tolist()}).json()
    np.testing.assert_allclose(y_of(nested), v1["outputs"], atol=1e-6)
    # integers are numbers too; a versioned path answers the same
    ints = post(
        client,
        {"inputs": [tensor([[[1, 2, 3]]], [1, 1, 3])]},
        path=f"/v2/models/{LNSC}/versions/1/infer",
    )
    assert ints.status_code == 200, ints.text


def test_binary_both_ways(client: httpx.Client) -> None:
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [2, 3, 3],
                "parameters": {"binary_data_size": X.nbytes},
            }
        ],
        "outputs": [{"name": "y", "parameters": {"binary_data": True}}, {"name": "cell_states"}],
    }
    body, headers = binary_request(header, [X.astype("<f4").tobytes()])
    r = client.post(INFER, content=body, headers=headers)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"] == "application/octet-stream"
    n = int(r.headers["Inference-Header-Content-Length"])
    head = orjson.loads(r.content[:n])
    y_meta, cs = head["outputs"]
    assert y_meta["parameters"]["binary_data_size"] == 2 * 3 * 2 * 4 and "data" not in y_meta
    assert cs["name"] == "cell_states" and len(cs["data"]) == 8  # JSON, as asked
    y = np.frombuffer(r.content[n:], "<f4").reshape(y_meta["shape"])
    np.testing.assert_array_equal(y, y_of(post(client, {"inputs": [tensor()]})))
    # request-level binary_data_output makes every output binary
    header2 = {**header, "outputs": None, "parameters": {"binary_data_output": True}}
    del header2["outputs"]
    body, headers = binary_request(header2, [X.tobytes()])
    r = client.post(INFER, content=body, headers=headers)
    n = int(r.headers["Inference-Header-Content-Length"])
    sizes = [o["parameters"]["binary_data_size"] for o in orjson.loads(r.content[:n])["outputs"]]
    assert sum(sizes) == len(r.content) - n and len(sizes) == 4


def test_gzip_request(client: httpx.Client) -> None:
    raw = json.dumps({"inputs": [tensor()]}).encode()
    r = client.post(INFER, content=gzip.compress(raw), headers={"Content-Encoding": "gzip"})
    np.testing.assert_array_equal(y_of(r), y_of(post(client, {"inputs": [tensor()]})))
    bomb = gzip.compress(b" " * (MAX_BODY * 2) + raw)
    r = client.post(INFER, content=bomb, headers={"Content-Encoding": "gzip"})
    error(r, 413)
    error(client.post(INFER, content=b"xx", headers={"Content-Encoding": "gzip"}), 400)
    error(client.post(INFER, content=raw, headers={"Content-Encoding": "br"}), 400)


BAD_JSON: list[tuple[str, Any, str]] = [
    ("shape/data disagree", {"inputs": [tensor(shape=[2, 3, 2])]}, "elements"),
    ("wrong datatype", {"inputs": [tensor(datatype="FP64")]}, "FP64"),
    ("unknown datatype", {"inputs": [tensor(datatype="FLOAT")]}, "unknown"),
    ("datatype not a string", {"inputs": [tensor(datatype=[1])]}, "unknown"),
    ("name not a string", {"inputs": [tensor(name=["x"])]}, "name"),
    ("unknown input", {"inputs": [tensor(), tensor(name="z")]}, "unknown input 'z'"),
    ("missing x", {"inputs": [tensor(name="cell_states", shape=[2, 4], data=[0] * 8)]}, "missing"),
    ("no inputs", {"inputs": []}, "inputs"),
    ("inputs not a list", {"inputs": {"x": 1}}, "inputs"),
    ("not an object", [1, 2], "object"),
    ("duplicate input", {"inputs": [tensor(), tensor()]}, "twice"),
    ("boolean data", {"inputs": [tensor([True] * 18)]}, "boolean"),
    ("string data", {"inputs": [tensor(["1.5"] * 18)]}, "string"),
    ("null data", {"inputs": [tensor([None] * 18)]}, "null"),
    ("mixed nesting", {"inputs": [tensor([[1.0] * 9, 2.0] + [3.0] * 8)]}, "mixes"),
    ("data not a list", {"inputs": [tensor(5)]}, "list"),
    ("no data", {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 1, 3]}]}, "neither"),
    ("bad shape", {"inputs": [tensor(shape=[2, -3, -3])]}, "shape"),
    ("shape not ints", {"inputs": [tensor(shape=[2, 3, 3.0])]}, "shape"),
    ("wrong rank", {"inputs": [tensor(shape=[6, 3])]}, "[batch, time, 3]"),
    ("wrong features", {"inputs": [tensor(shape=[2, 9, 1])]}, "[batch, time, 3]"),
    ("zero steps", {"inputs": [tensor([], [2, 0, 3])]}, "one time step"),
    ("float32 overflow", {"inputs": [tensor([1e39] * 18)]}, "finite"),
    ("huge integer", {"inputs": [tensor([10**40] + [0] * 17)]}, "finite"),
    ("unknown output", {"inputs": [tensor()], "outputs": [{"name": "q"}]}, "unknown output"),
    ("outputs twice", {"inputs": [tensor()], "outputs": [{"name": "y"}, {"name": "y"}]}, "twice"),
    (
        "classification",
        {"inputs": [tensor()], "outputs": [{"name": "y", "parameters": {"classification": 2}}]},
        "classif",
    ),
    (
        "state wrong shape",
        {"inputs": [tensor(), tensor([0] * 8, [2, 4, 1], "cell_states")]},
        "shape",
    ),
    ("sequence id negative", {"inputs": [tensor()], "parameters": {"sequence_id": -1}}, "unsigned"),
    ("sequence id float", {"inputs": [tensor()], "parameters": {"sequence_id": 1.5}}, "unsigned"),
    (
        "sequence id too big",
        {"inputs": [tensor()], "parameters": {"sequence_id": 2**64}},
        "unsigned",
    ),
    (
        "start not bool",
        {"inputs": [tensor()], "parameters": {"sequence_id": 3, "sequence_start": 1}},
        "boolean",
    ),
    (
        "start without id",
        {"inputs": [tensor()], "parameters": {"sequence_start": True}},
        "sequence_id",
    ),
    ("parameters not object", {"inputs": [tensor()], "parameters": [1]}, "object"),
    ("id not string", {"inputs": [tensor()], "id": 5}, "id"),
]


@pytest.mark.parametrize("case,body,words", BAD_JSON, ids=[c[0] for c in BAD_JSON])
def test_bad_json_requests(client: httpx.Client, case: str, body: Any, words: str | None) -> None:
    msg = error(post(client, body), 400)
    if words:
        assert words in msg, msg


def test_unparseable_bodies(client: httpx.Client) -> None:
    for raw in (b"", b"{", b'{"inputs": [NaN]}', b'{"inputs": [Infinity]}', b"\xff\xfe"):
        error(client.post(INFER, content=raw, headers={"content-type": "application/json"}), 400)


def test_bad_binary_requests(client: httpx.Client) -> None:
    raw = X.tobytes()
    good = {
        "name": "x",
        "datatype": "FP32",
        "shape": [2, 3, 3],
        "parameters": {"binary_data_size": len(raw)},
    }

    def send(inp: dict, blobs: list[bytes], header_len: int | str | None = None) -> str:
        body, headers = binary_request(
            {"inputs": [inp]}, blobs, header_len if isinstance(header_len, int) else None
        )
        if isinstance(header_len, str):
            headers["Inference-Header-Content-Length"] = header_len
        return error(client.post(INFER, content=body, headers=headers), 400)

    wrong = {**good, "parameters": {"binary_data_size": len(raw) - 4}}
    assert "needs 72" in send(wrong, [raw[:-4]])  # size disagrees with the shape
    assert "past the end" in send(good, [raw[:-8]])  # fewer bytes than declared
    assert "no input claims" in send(good, [raw, b"\0\0\0\0"])  # bytes left over
    assert "no input claims" in send({**good, "parameters": {}, "data": X.tolist()}, [raw])
    assert "both" in send({**good, "data": X.tolist()}, [raw])
    nan = X.copy()
    nan[1, 2, 0] = np.nan
    assert "finite" in send(good, [nan.tobytes()])
    inf = X.copy()
    inf[0, 0, 0] = np.inf
    assert "finite" in send(good, [inf.tobytes()])
    assert "Inference-Header-Content-Length" in send(good, [raw], "abc")
    assert "Inference-Header-Content-Length" in send(good, [raw], "99999999")
    send(good, [raw], 10)  # the header cut short: not JSON
    size = {**good, "parameters": {"binary_data_size": "72"}}
    assert "binary_data_size" in send(size, [raw])


def test_limits_are_413(client: httpx.Client) -> None:
    big = np.zeros((9, 1, 3), np.float32)  # max_batch_size is 8
    assert "9 sequences" in error(post(client, {"inputs": [tensor(big.tolist(), [9, 1, 3])]}), 413)
    long = np.zeros((1, 2001, 3), np.float32)  # max_steps is 2000
    header = {
        "inputs": [
            {
                "name": "x",
                "datatype": "FP32",
                "shape": [1, 2001, 3],
                "parameters": {"binary_data_size": long.nbytes},
            }
        ]
    }
    body, headers = binary_request(header, [long.tobytes()])
    error(client.post(INFER, content=body, headers=headers), 413)
    seq = {
        "inputs": [tensor(long.tolist(), [1, 2001, 3])],
        "parameters": {"sequence_id": 9, "sequence_start": True},
    }
    error(post(client, seq), 413)
    huge = bytes(MAX_BODY + 1)
    error(client.post(INFER, content=huge, headers={"Inference-Header-Content-Length": "2"}), 413)
    error(client.post(INFER, json={"inputs": [], "pad": "x" * MAX_BODY}), 413)


def test_not_found_and_routes(client: httpx.Client) -> None:
    assert "nope" in error(post(client, {"inputs": [tensor()]}, "/v2/models/nope/infer"), 404)
    error(post(client, {"inputs": [tensor()]}, f"/v2/models/{LNSC}/versions/2/infer"), 404)
    error(post(client, {"inputs": [tensor()]}, f"/v2/models/{LNSC}/versions/x/infer"), 404)
    error(client.get("/v2/models/nope"), 404)
    error(client.get(f"/v2/models/{PLAIN}/versions/3"), 404)  # its card is unreadable: refused
    error(client.get("/v2/models/nope/ready"), 404)
    error(client.get(f"/v2/models/{PLAIN}/versions/0/ready"), 404)
    error(client.get("/v2/no/such/route"), 404)
    error(client.get(INFER), 405)
    assert client.get(f"/v2/models/{PLAIN}/versions/1/ready").status_code == 200
    assert client.get("/v2/health/live").status_code == 200
    # /v1 keeps its own error form
    assert "detail" in client.get("/v1/models/nope").json()


@pytest.fixture(scope="module")
def guarded(models: RepoModels) -> Any:
    """API keys on, and room for only two live sessions."""
    settings = make_settings(models.repo, api_keys="k1", max_sessions=2)
    with LiveServer(settings) as s:
        yield s


def test_auth_401(guarded: LiveServer) -> None:
    with guarded.client() as c:
        for method, path in [
            ("GET", "/v2"),
            ("GET", f"/v2/models/{LNSC}"),
            ("GET", f"/v2/models/{LNSC}/ready"),
            ("POST", INFER),
            ("POST", f"/v2/models/{LNSC}/versions/1/infer"),
        ]:
            for headers in ({}, {"Authorization": "Bearer nope"}):
                r = c.request(method, path, headers=headers, json={"inputs": [tensor()]})
                error(r, 401)
                assert r.headers["WWW-Authenticate"] == "Bearer"
        assert c.get("/v2/health/live").status_code == 200
        assert c.get("/v2/health/ready").status_code == 200
        assert c.get("/v2", headers={"Authorization": "Bearer k1"}).status_code == 200


def test_capacity_429(guarded: LiveServer) -> None:
    with guarded.client(headers={"Authorization": "Bearer k1"}) as c:

        def start(seq: int) -> httpx.Response:
            one = tensor([[[0, 0, 0]]], [1, 1, 3])
            return post(
                c, {"inputs": [one], "parameters": {"sequence_id": seq, "sequence_start": True}}
            )

        assert start(1).status_code == 200 and start(2).status_code == 200
        r = start(3)
        error(r, 429)
        assert int(r.headers["Retry-After"]) >= 1
        assert start(1).status_code == 200  # restarting a live sequence takes no new slot
        end = {
            "inputs": [tensor([[[0, 0, 0]]], [1, 1, 3])],
            "parameters": {"sequence_id": 2, "sequence_end": True},
        }
        assert post(c, end).status_code == 200
        assert start(3).status_code == 200  # the ended sequence's slot is free again


def test_store_unreachable_503(models: RepoModels) -> None:
    class Broken(MemorySessionStore):
        async def ping(self) -> None:
            raise StoreUnavailable("connection refused")

        async def create(self, session):  # type: ignore[no-untyped-def]
            raise StoreUnavailable("connection refused")

    with (
        LiveServer(make_settings(models.repo), store=Broken(max_sessions=10)) as s,
        s.client() as c,
    ):
        assert "unreachable" in error(c.get("/v2/health/ready"), 503)
        assert c.get("/v2/health/live").status_code == 200
        seq = {"inputs": [tensor()], "parameters": {"sequence_id": "s", "sequence_start": True}}
        error(post(c, {**seq, "inputs": [tensor([[[0, 0, 0]]], [1, 1, 3])]}), 503)
        assert post(c, {"inputs": [tensor()]}).status_code == 200  # stateless still works

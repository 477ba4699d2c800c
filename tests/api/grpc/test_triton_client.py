"""gRPC through `tritonclient.grpc`, unary calls: health, metadata and config, inference equal
to /v1 predict, output selection, state tensors both ways, sequences in chunks equal to the
whole sequence, errors as status codes with the REST endpoint's words, and the metrics."""

from __future__ import annotations

import httpx
import numpy as np
import pytest
import tritonclient.grpc as tg
from tritonclient.utils import InferenceServerException

from tests.api.grpc.conftest import v1_predict, x_input, xs
from tests.repo import LNSC, PLAIN

STATES = {PLAIN: ["cell_states", "cell_outputs"], LNSC: ["cell_states", "cell_outputs", "gates"]}


def status(e: pytest.ExceptionInfo[InferenceServerException]) -> str:
    return str(e.value.status())


def test_health_metadata_and_config(triton: tg.InferenceServerClient) -> None:
    assert triton.is_server_live() and triton.is_server_ready()
    meta = triton.get_server_metadata(as_json=True)
    assert meta["name"] == "peephole" and meta["version"]
    assert {"binary_tensor_data", "sequence"} <= set(meta["extensions"])
    assert triton.is_model_ready(LNSC) and triton.is_model_ready(PLAIN, "1")
    assert not triton.is_model_ready("nope") and not triton.is_model_ready(PLAIN, "9")
    assert not triton.is_model_ready("bad-sha")  # refused versions are not served
    meta = triton.get_model_metadata(LNSC, as_json=True)
    assert meta["name"] == LNSC and meta["versions"] == ["1"]
    ins = {t["name"]: t for t in meta["inputs"]}
    outs = {t["name"]: t for t in meta["outputs"]}
    assert ins["x"] == {"name": "x", "datatype": "FP32", "shape": ["-1", "-1", "3"]}
    assert outs["y"]["shape"] == ["-1", "-1", "2"] and outs["gates"]["shape"] == ["-1", "2", "3"]
    assert set(ins) - {"x"} == set(outs) - {"y"} == set(STATES[LNSC])
    assert triton.get_model_metadata(PLAIN, "1", as_json=True)["versions"] == ["1", "2"]
    config = triton.get_model_config(LNSC, as_json=True)["config"]
    assert (
        config.get("max_batch_size", 0) == 0 and "sequence_batching" in config
    )  # 0: JSON omits it
    assert [i.get("optional", False) for i in config["input"]] == [False, True, True, True]
    with pytest.raises(InferenceServerException) as e:
        triton.get_model_metadata(PLAIN, "7")
    assert status(e) == "StatusCode.NOT_FOUND" and "no version '7'" in e.value.message()


@pytest.mark.parametrize("name", [PLAIN, LNSC])
def test_infer_equals_v1_predict(
    triton: tg.InferenceServerClient, client: httpx.Client, name: str
) -> None:
    x = xs(name, 3, 9)
    r = triton.infer(name, [x_input(x)], request_id="req-1")
    resp = r.get_response(as_json=True)
    assert resp["model_name"] == name and resp["id"] == "req-1"
    assert [o["name"] for o in resp["outputs"]] == ["y", *STATES[name]]  # all, by default
    ref = v1_predict(client, name, x)
    np.testing.assert_allclose(r.as_numpy("y"), ref["outputs"], atol=1e-6)
    for s in STATES[name]:
        want = np.stack([st[s] for st in ref["state"]])
        np.testing.assert_allclose(r.as_numpy(s), want, atol=1e-6)


def test_output_selection_and_carried_state(
    triton: tg.InferenceServerClient, client: httpx.Client
) -> None:
    x = xs(LNSC, 2, 10)
    first = triton.infer(LNSC, [x_input(x[:, :4])])
    carried = [x_input(first.as_numpy(s), name=s) for s in STATES[LNSC]]
    second = triton.infer(LNSC, [x_input(x[:, 4:]), *carried],
                          outputs=[tg.InferRequestedOutput("y")])  # fmt: skip
    assert [o.name for o in second.get_response().outputs] == ["y"]
    got = np.concatenate([first.as_numpy("y"), second.as_numpy("y")], axis=1)
    np.testing.assert_allclose(got, v1_predict(client, LNSC, x)["outputs"], atol=1e-5)


@pytest.mark.parametrize("seq", [4242, "user-7:stream/a"])
def test_sequence_in_chunks_equals_whole(
    triton: tg.InferenceServerClient, client: httpx.Client, seq: int | str
) -> None:
    x = xs(LNSC, 1, 30)
    cuts = [0, 5, 6, 17, 29, 30]
    ys, offsets, last = [], [], None
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        last = triton.infer(LNSC, [x_input(x[:, a:b])], sequence_id=seq,
                            sequence_start=i == 0, sequence_end=b == 30)  # fmt: skip
        ys.append(last.as_numpy("y"))
        offsets.append(last.get_response().parameters["offset"].int64_param)
    assert offsets == cuts[1:]  # the offset after each step, in the response parameters
    whole = v1_predict(client, LNSC, x)
    np.testing.assert_allclose(np.concatenate(ys, axis=1), whole["outputs"], atol=1e-5)
    assert last is not None
    for s in STATES[LNSC]:
        np.testing.assert_allclose(last.as_numpy(s)[0], whole["state"][0][s], atol=1e-5)
    with pytest.raises(InferenceServerException) as e:  # ended: its state is gone
        triton.infer(LNSC, [x_input(x[:, :1])], sequence_id=seq)
    assert status(e) == "StatusCode.INVALID_ARGUMENT" and "sequence_start" in e.value.message()


def test_errors_are_status_codes_with_rest_words(
    triton: tg.InferenceServerClient, client: httpx.Client
) -> None:
    cases = [
        (lambda: triton.infer("nope", [x_input(xs(LNSC, 1, 2))]), "NOT_FOUND"),
        (lambda: triton.infer(LNSC, [x_input(xs(PLAIN, 1, 2))]), "INVALID_ARGUMENT"),
        (lambda: triton.infer(LNSC, [x_input(xs(LNSC, 9, 2))]), "RESOURCE_EXHAUSTED"),  # batch
        (lambda: triton.infer(LNSC, [x_input(xs(LNSC, 1, 2001))]), "RESOURCE_EXHAUSTED"),  # steps
        (lambda: triton.infer(LNSC, [x_input(xs(LNSC, 2, 2))], sequence_id=9), "INVALID_ARGUMENT"),
        (lambda: triton.infer(LNSC, [x_input(xs(LNSC, 1, 2))], sequence_id=9), "INVALID_ARGUMENT"),
    ]
    for call, code in cases:
        with pytest.raises(InferenceServerException) as e:
            call()
        assert status(e) == f"StatusCode.{code}", e.value.message()
    # the same words as the REST endpoint for the same mistake
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LNSC, [x_input(xs(PLAIN, 1, 2))])
    body = {"inputs": [{"name": "x", "datatype": "FP32", "shape": [1, 2, 2],
                        "data": [0.0] * 4}]}  # fmt: skip
    rest = client.post(f"/v2/models/{LNSC}/infer", json=body)
    assert rest.status_code == 400 and e.value.message() == rest.json()["error"]
    # a message past PEEPHOLE_MAX_BODY_BYTES is refused by gRPC itself
    with pytest.raises(InferenceServerException) as e:
        triton.infer(LNSC, [x_input(xs(LNSC, 1, 20000))])
    assert status(e) == "StatusCode.RESOURCE_EXHAUSTED"
    assert triton.is_server_live()


def test_metrics_count_rpcs_by_code(triton: tg.InferenceServerClient, client: httpx.Client) -> None:
    triton.infer(LNSC, [x_input(xs(LNSC, 1, 2))])
    with pytest.raises(InferenceServerException):
        triton.infer("nope", [x_input(xs(LNSC, 1, 2))])
    text = client.get("/metrics").text
    assert 'peephole_grpc_requests_total{code="OK",method="ModelInfer"}' in text
    assert 'peephole_grpc_requests_total{code="NOT_FOUND",method="ModelInfer"}' in text
    assert 'peephole_grpc_request_duration_seconds_count{method="ModelInfer"}' in text

"""v2 sequences on the Redis store: two `python -m app` replicas share one sequence's state,
so a client behind a load balancer may land on either for each request."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

if shutil.which("redis-server") is None:
    pytest.skip("redis-server is not installed", allow_module_level=True)

import tritonclient.http as th  # noqa: E402
from tritonclient.utils import InferenceServerException  # noqa: E402

from tests.live import Replica  # noqa: E402
from tests.redis.conftest import MODEL  # noqa: E402
from tests.redis.conftest import replicas as replicas  # noqa: E402, F401
from tests.redis.conftest import repo as repo  # noqa: E402, F401


def test_sequence_alternates_between_replicas(replicas: list[Replica]) -> None:  # noqa: F811
    clients = [th.InferenceServerClient(r.url.removeprefix("http://")) for r in replicas]
    x = np.random.default_rng(3).normal(size=(1, 24, 2)).astype(np.float32)
    cuts = [0, 4, 5, 13, 24]
    ys = []
    for i, (a, b) in enumerate(zip(cuts, cuts[1:], strict=False)):
        inp = th.InferInput("x", [1, b - a, 2], "FP32")
        inp.set_data_from_numpy(x[:, a:b])
        r = clients[i % 2].infer(
            MODEL, [inp], sequence_id="shared", sequence_start=i == 0, sequence_end=b == 24
        )
        ys.append(r.as_numpy("y"))
    whole = th.InferInput("x", [1, 24, 2], "FP32")
    whole.set_data_from_numpy(x)
    np.testing.assert_allclose(
        np.concatenate(ys, axis=1), clients[0].infer(MODEL, [whole]).as_numpy("y"), atol=1e-5
    )
    with pytest.raises(InferenceServerException) as e:  # ended on one replica: gone for both
        one = th.InferInput("x", [1, 1, 2], "FP32")
        one.set_data_from_numpy(x[:, :1])
        clients[0].infer(MODEL, [one], sequence_id="shared")
    assert e.value.status() == "400"
    for c in clients:
        c.close()

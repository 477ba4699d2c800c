"""A rolling model update through the client: `migrate` carries a live session to another
version (state and offset kept), refuses a version with another state layout, and a session
whose version was unloaded and drained raises VersionGone until it is migrated."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from typing import Any

import httpx
import numpy as np
import pytest

from peephole import IncompatibleVersion, VersionGone
from tests.client.conftest import KEY, MG, SHIPPED, TC, copy_model
from tests.live import LiveServer, make_settings, wait_until_unloaded

DRAIN = 4.0  # long beside what a loaded box takes for the steps made while it drains


@pytest.fixture(scope="module")
def explicit(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LiveServer]:
    """Explicit model control: mackey-glass 1 and 2, and the lnsc trace-conditioning network
    as mackey-glass 3 (another state layout)."""
    repo = tmp_path_factory.mktemp("migrate-models")
    copy_model(repo, MG)
    copy_model(repo, MG, 1, as_version=2)
    other = repo / MG / "3"
    shutil.copytree(SHIPPED / TC / "1", other)
    card = json.loads((other / "model.json").read_text())
    (other / "model.json").write_text(json.dumps({**card, "name": MG, "version": 3}))
    settings = make_settings(
        repo, api_keys=[KEY], model_control="explicit", drain_seconds=DRAIN, max_steps=2000
    )
    with LiveServer(settings) as server:
        with httpx.Client(base_url=server.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            for v in (1, 2, 3):
                assert c.post(f"/v1/models/{MG}/load", json={"version": v}).status_code == 200
        yield server


def _series(t: int) -> np.ndarray:
    return (0.9 + 0.2 * np.sin(np.arange(t) / 5))[:, None].astype(np.float32)


def test_migrate_keeps_state_and_offset(connect: Any, explicit: LiveServer) -> None:
    client = connect(explicit.url)
    x = _series(40)
    whole = client.predict(MG, x, version=1)
    with client.session(MG, version=1) as s:
        head = s.step(x[:25])
        s.migrate(2)
        assert s.version == 2 and s.offset == 25
        tail = s.step(x[25:])  # version 2 has the same weights: the stream goes on unbroken
        s.migrate(2)  # where it is already: a retry of a migrate changes nothing
        assert s.version == 2 and s.offset == 40
    np.testing.assert_allclose(np.concatenate([head, tail]), whole, atol=1e-5)
    with client.session(MG, version=1) as s:
        s.step(x[:5])
        with pytest.raises(IncompatibleVersion) as e:
            s.migrate(3)
        assert e.value.status_code == 409 and "state" in e.value.detail
        assert s.version == 1 and s.step(x[5:6]).shape == (1, 1)  # untouched


def test_drained_version_is_gone_until_migrated(connect: Any, explicit: LiveServer) -> None:
    client = connect(explicit.url)
    x = _series(30)
    whole = client.predict(MG, x, version=2)
    with client.session(MG, version=1) as s:
        head = s.step(x[:10])
        with httpx.Client(base_url=explicit.url, headers={"Authorization": f"Bearer {KEY}"}) as c:
            assert c.post(f"/v1/models/{MG}/unload", json={"version": 1}).status_code == 200
            try:
                mid = s.step(x[10:20])  # draining: its sessions go on stepping
                wait_until_unloaded(explicit.url, MG, 1, headers=c.headers)
                with pytest.raises(VersionGone) as e:
                    s.step(x[20:])
                assert e.value.status_code == 410 and "version 1" in e.value.detail
                assert s.offset == 20  # nothing applied
                s.migrate(2)
                tail = s.step(x[20:])
            finally:
                assert c.post(f"/v1/models/{MG}/load", json={"version": 1}).status_code == 200
    np.testing.assert_allclose(np.concatenate([head, mid, tail]), whole, atol=1e-5)

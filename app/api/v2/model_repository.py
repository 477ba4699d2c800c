"""The KServe v2 / Triton model repository extension itself, whatever carries it.

REST (app/api/v2/repository.py) and gRPC (`RepositoryIndex`, `RepositoryModelLoad`,
`RepositoryModelUnload` in app/api/grpc/servicer.py) decode their wire format into plain
values and call these, so that both speak Triton's semantics with the same messages: the
index lists every version with Triton's states (READY, LOADING, UNLOADING for a version
whose sessions drain, UNAVAILABLE); a load or unload outside PEEPHOLE_MODEL_CONTROL=explicit
is 503 / UNAVAILABLE, as Triton answers outside its explicit mode; Triton's `config` and
`file:` load parameters are refused (a Peephole version is its directory); a Peephole
extension, the `version` parameter, loads or unloads one version. The work itself is
app/inference/control.py's.
"""

from __future__ import annotations

from typing import Any, Literal

from app.errors import ControlDisabled, InvalidInput, NotReady, status_error
from app.inference.control import TRITON_STATE, ModelControl


def check_repository_name(name: str) -> None:
    """Triton serves one repository per server and refuses to be told which (UNSUPPORTED)."""
    if name:
        raise status_error(501, "'repository_name' specification is not supported")


async def index(control: ModelControl, ready: bool = False) -> list[dict[str, str]]:
    """Every version in the repository or held: `{"name", "version", "state", "reason"}`."""
    return [
        {"name": s.name, "version": str(s.version), "state": TRITON_STATE[s.state],
         "reason": s.reason}
        for s in await control.index(ready=ready)
    ]  # fmt: skip


def version_parameter(params: dict[str, Any]) -> int | None:
    """`parameters.version`, after refusing the parameters Triton defines that do not apply."""
    for key in params:
        if key == "config" or key.startswith("file:"):
            raise InvalidInput(
                f"parameter {key!r} is not supported: a Peephole model version is its "
                "directory in the repository (model.json + model.onnx)"
            )
    v = params.get("version")
    if v is None:
        return None
    text = str(v) if isinstance(v, int) and not isinstance(v, bool) else v
    if not isinstance(text, str) or not text.isdigit() or not text.isascii() or int(text) < 1:
        raise InvalidInput(f"parameters.version must be a positive integer, got {v!r}")
    return int(text)


async def change(
    control: ModelControl, action: Literal["load", "unload"], name: str, params: dict[str, Any]
) -> None:
    """Load or unload `name` (every version, or `parameters.version`)."""
    version = version_parameter(params)
    try:
        if action == "load":
            await control.load(name, version)
        else:
            await control.unload(name, version)
    except ControlDisabled as e:
        raise NotReady(e.detail) from None  # Triton: UNAVAILABLE outside explicit mode

"""Regenerate the committed protobuf/gRPC modules from the .proto files beside this file.

    python -m app.api.grpc._proto.regenerate

Needs grpcio-tools (the `dev` extra pins the version the committed files were made with).
protoc writes modules that import each other by top-level name and register in protobuf's
default pool; three textual rewrites make them a package of their own on `POOL` (see
`__init__.py` for why): relative imports, and `POOL` in place of the default pool. The check
`tests/api/grpc/test_proto.py` compares the committed descriptors with a fresh protoc run.
"""

from __future__ import annotations

import re
import sys
import tempfile
from pathlib import Path

HERE = Path(__file__).resolve().parent
PROTOS = ("model_config.proto", "grpc_service.proto")
_DEFAULT_POOL = "_descriptor_pool.Default().AddSerializedFile("
_OWN_POOL = "_POOL.AddSerializedFile("


def rewrite(name: str, text: str) -> str:
    """protoc's output as modules of this package, registered in `POOL`."""
    stems = "|".join(Path(p).stem for p in PROTOS)
    text = re.sub(rf"^import ({stems})_pb2 as ", r"from . import \1_pb2 as ", text, flags=re.M)
    if name.endswith("_pb2.py"):
        if text.count(_DEFAULT_POOL) != 1:
            raise SystemExit(f"{name}: protoc's output changed form; update regenerate.py")
        text = text.replace(_DEFAULT_POOL, _OWN_POOL)
        anchor = "from google.protobuf import symbol_database as _symbol_database\n"
        text = text.replace(anchor, anchor + "from . import POOL as _POOL\n", 1)
    return text


def protoc(out: Path, *flags: str) -> None:
    """Run grpcio-tools' protoc on the .proto files of this directory."""
    from grpc_tools import protoc as grpc_protoc  # dev dependency, imported only here

    include = Path(grpc_protoc.__file__).resolve().parent / "_proto"
    args = ["protoc", f"-I{HERE}", f"-I{include}", *flags, *(str(HERE / p) for p in PROTOS)]
    if grpc_protoc.main(args) != 0:
        raise SystemExit("protoc failed")


def main() -> int:
    with tempfile.TemporaryDirectory() as tmp:
        out = Path(tmp)
        protoc(out, f"--python_out={out}", f"--pyi_out={out}", f"--grpc_python_out={out}")
        written = []
        for path in sorted(out.glob("*_pb2*.py*")):
            if path.name == "model_config_pb2_grpc.py":  # model_config.proto has no service
                continue
            (HERE / path.name).write_text(rewrite(path.name, path.read_text()))
            written.append(path.name)
    print("wrote", ", ".join(written), "in", HERE)
    return 0


if __name__ == "__main__":
    sys.exit(main())

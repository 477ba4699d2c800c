"""The Open Inference Protocol over gRPC: Triton's `inference.GRPCInferenceService`.

Served beside HTTP, in the same process and on the same data plane (PEEPHOLE_GRPC_PORT,
default 8001, 0 = off): `server.py` runs grpcio's asyncio server with health checking
(`health.py`) and reflection; `servicer.py` answers the RPCs, `stream.py` the bidirectional
ModelStreamInfer; `codec.py` turns protobuf tensors into numpy and back; what a request
means is app/api/v2/protocol.py, shared with the REST endpoint. `_proto/` holds the
specification's .proto files and the code generated from them.
"""

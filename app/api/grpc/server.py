"""The gRPC server: grpcio's asyncio server beside HTTP, in the same process and event loop.

Started and stopped by the app's lifespan (app/main.py), so that whatever runs the app --
`python -m app`, its worker processes, uvicorn in a test -- serves gRPC on the same data plane,
registry, batcher, session store and model control as HTTP. It serves
`inference.GRPCInferenceService`, `grpc.health.v1.Health` and server reflection on
PEEPHOLE_GRPC_HOST (default PEEPHOLE_HOST) : PEEPHOLE_GRPC_PORT. A message may be as large
as PEEPHOLE_MAX_BODY_BYTES (past it gRPC itself answers RESOURCE_EXHAUSTED); large ones
count against PEEPHOLE_MAX_INFLIGHT_BYTES with HTTP's bodies (UNAVAILABLE past it). With several
worker processes each binds the port with SO_REUSEPORT and the kernel spreads the
connections (sessions live in a shared store then).
"""

from __future__ import annotations

import logging
from typing import Any

import grpc
from google.protobuf import descriptor_pool
from grpc_health.v1 import health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection, reflection_pb2

from app.api.grpc import codec
from app.api.grpc._proto import grpc_service_pb2 as pb
from app.api.grpc._proto import model_config_pb2 as mc
from app.api.grpc.health import ReadinessHealth
from app.api.grpc.servicer import SERVICE, InferenceServicer
from app.config import Settings
from app.dataplane import DataPlane
from app.edge.limits import InFlight
from app.inference.control import ModelControl
from app.metrics import Metrics

log = logging.getLogger("peephole.grpc")


def method_handlers(servicer: InferenceServicer) -> dict[str, grpc.RpcMethodHandler[Any, Any]]:
    """Every RPC of the service, from its descriptor, as the generated `add_..._to_server`
    would register them, except that a request that is not valid protobuf reaches the
    servicer as `codec.Malformed` (answered INVALID_ARGUMENT, a stream stays open), and an
    RPC the servicer does not implement answers UNIMPLEMENTED saying so."""
    make = {
        (False, False): grpc.unary_unary_rpc_method_handler,
        (False, True): grpc.unary_stream_rpc_method_handler,
        (True, False): grpc.stream_unary_rpc_method_handler,
        (True, True): grpc.stream_stream_rpc_method_handler,
    }
    handlers = {}
    for m in pb.DESCRIPTOR.services_by_name["GRPCInferenceService"].methods:
        request, response = getattr(pb, m.input_type.name), getattr(pb, m.output_type.name)
        handlers[m.name] = make[m.client_streaming, m.server_streaming](
            servicer.method(m.name),
            request_deserializer=codec.parser(request),
            response_serializer=response.SerializeToString,
        )
    return handlers


def reflection_pool() -> descriptor_pool.DescriptorPool:
    """Every service this server offers, for reflection (ours live in a pool of their own)."""
    pool = descriptor_pool.DescriptorPool()
    for module in (mc, pb, health_pb2, reflection_pb2):
        pool.AddSerializedFile(module.DESCRIPTOR.serialized_pb)  # type: ignore[no-untyped-call]
    return pool


def address(host: str, port: int) -> str:
    """host:port, with an IPv6 literal in brackets."""
    return f"[{host}]:{port}" if ":" in host and not host.startswith("[") else f"{host}:{port}"


class GrpcServer:
    """inference.GRPCInferenceService + health + reflection on one port."""

    def __init__(self, settings: Settings, dp: DataPlane, control: ModelControl,
                 metrics: Metrics | None, version: str,
                 inflight: InFlight | None = None) -> None:  # fmt: skip
        """`inflight`: the budget of large messages, shared with HTTP (its own otherwise)."""
        self.settings = settings
        self.server = grpc.aio.server(
            options=[
                ("grpc.max_receive_message_length", settings.max_body_bytes),
                ("grpc.max_send_message_length", -1),
                ("grpc.so_reuseport", 1 if settings.grpc_reuse_port else 0),
            ]
        )
        if inflight is None:
            inflight = InFlight(settings.inflight_bytes)
        self.servicer = InferenceServicer(
            dp, control, settings.api_keys, metrics, version, inflight
        )
        handlers = method_handlers(self.servicer)
        self.server.add_generic_rpc_handlers(
            (grpc.method_handlers_generic_handler(SERVICE, handlers),)
        )
        self.server.add_registered_method_handlers(SERVICE, handlers)
        self.health = ReadinessHealth(dp, (SERVICE,))
        health_pb2_grpc.add_HealthServicer_to_server(self.health, self.server)
        services = (SERVICE, health_pb2.DESCRIPTOR.services_by_name["Health"].full_name)
        reflection.enable_server_reflection(
            (*services, reflection.SERVICE_NAME), self.server, pool=reflection_pool()
        )
        self.address = address(settings.grpc_host or settings.host, settings.grpc_port)
        self.port = self.server.add_insecure_port(self.address)  # raises when it cannot bind

    async def start(self) -> None:
        await self.server.start()
        await self.health.start()
        log.info("gRPC on %s", self.address)

    async def stop(self, grace: float | None) -> None:
        """NOT_SERVING first, then let calls in flight finish for up to `grace` seconds."""
        await self.health.stop()
        await self.server.stop(grace)

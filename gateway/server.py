"""The ``grpc.aio`` server: services, interceptors, health and reflection on one port.

:func:`create_server` builds the server without starting it (the gRPC examples' factory
style) so that tests can bind port 0 and the application decides when to start and stop.
Health (``grpc.health.v1``) and reflection are registered here and need no token; health
is NOT_SERVING until the application says the gateway is ready (rules loaded, NATS
connected, see :mod:`gateway.app`).

The port is plaintext unless the configuration names a certificate and key
(``--tls-cert``/``--tls-key``); then it serves TLS only, and with ``--tls-client-ca`` it
requires a client certificate signed by that CA (mutual TLS). Health and reflection are
on the same port, so they follow the same rule.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from clients.tls import TlsFileError, server_tls_credentials
from gateway.auth import DEFAULT_METHOD_ROLES, AuthInterceptor
from gateway.config import ConfigError, GatewayConfig
from gateway.metrics import GatewayMetrics, MetricsInterceptor
from gateway.servicer import AdminServicer, GatewayServicer
from pretrade.v1 import gateway_pb2, gateway_pb2_grpc

GATEWAY_SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["GatewayService"].full_name
ADMIN_SERVICE_NAME = gateway_pb2.DESCRIPTOR.services_by_name["AdminService"].full_name
#: Services whose health the gateway reports ("" is the server as a whole).
HEALTH_SERVICE_NAMES = ("", GATEWAY_SERVICE_NAME, ADMIN_SERVICE_NAME)


@dataclass(frozen=True)
class HostedService:
    """A further service served on the gateway's port (``pretrade up`` hosts HaltService
    and LedgerService there): its full name (reflection), the roles of its methods (the
    auth interceptor refuses methods missing from the table) and how to register it."""

    name: str
    method_roles: Mapping[str, frozenset[str]]
    register: Callable[[grpc.aio.Server], object]


class ListenError(OSError):
    """The gateway cannot bind its listen address (in use, or not a local address)."""


def server_credentials(config: GatewayConfig) -> grpc.ServerCredentials | None:
    """The TLS credentials of ``config`` (None: plaintext), by
    :func:`clients.tls.server_tls_credentials` (the files are read and checked there): a
    problem is a :class:`ConfigError` naming the flag and the file."""
    try:
        return server_tls_credentials(config.tls_cert_path, config.tls_key_path, config.tls_client_ca_path)
    except TlsFileError as exc:
        raise ConfigError(str(exc)) from None


#: GatewayService methods whose requests the servicer reads from their bytes.
ORDER_METHODS = frozenset(("CheckOrder", "CheckOrders", "StreamOrders"))


def serialize_response(response) -> bytes:
    """A response as it goes on the wire: bytes the order path framed itself
    (:mod:`gateway.wire`) as they are, a message serialized."""
    return response if type(response) is bytes else response.SerializeToString()


class _MethodHandlerCapture:
    """Stands in for the server while generated code registers a servicer, to keep the
    method handlers it builds."""

    def add_generic_rpc_handlers(self, generic_handlers) -> None:
        pass

    def add_registered_method_handlers(self, service_name: str, method_handlers) -> None:
        self.service_name = service_name
        self.method_handlers = method_handlers


def add_gateway_service(servicer: GatewayServicer, server: grpc.aio.Server) -> None:
    """Register GatewayService like the generated ``add_GatewayServiceServicer_to_server``
    (same methods), with :func:`serialize_response` as every method's response
    serializer: CheckOrder, CheckOrders and StreamOrders answer with bytes gateway.wire
    framed around the recorded decisions, so nothing is serialized twice. Their requests
    arrive as bytes too (no request deserializer): the servicer reads the orders with
    gateway.orders."""
    capture = _MethodHandlerCapture()
    gateway_pb2_grpc.add_GatewayServiceServicer_to_server(servicer, capture)
    handlers = {
        name: handler._replace(
            response_serializer=serialize_response,
            request_deserializer=None if name in ORDER_METHODS else handler.request_deserializer,
        )
        for name, handler in capture.method_handlers.items()
    }
    server.add_generic_rpc_handlers((grpc.method_handlers_generic_handler(capture.service_name, handlers),))
    server.add_registered_method_handlers(capture.service_name, handlers)


async def set_health(health_servicer: health.aio.HealthServicer, serving: bool) -> None:
    """Mark every gateway service SERVING or NOT_SERVING."""
    status = health_pb2.HealthCheckResponse.SERVING if serving else health_pb2.HealthCheckResponse.NOT_SERVING
    for name in HEALTH_SERVICE_NAMES:
        await health_servicer.set(name, status)


def gateway_method_roles(hosted: Sequence[HostedService] = ()) -> dict[str, frozenset[str]]:
    """The role table of a gateway's port: its own services' and the hosted ones'."""
    method_roles = dict(DEFAULT_METHOD_ROLES)
    for service in hosted:
        method_roles.update(service.method_roles)
    return method_roles


def create_server(
    config: GatewayConfig,
    *,
    gateway_servicer: GatewayServicer,
    admin_servicer: AdminServicer,
    health_servicer: health.aio.HealthServicer,
    auth: AuthInterceptor,
    metrics: GatewayMetrics | None = None,
    hosted: Sequence[HostedService] = (),
) -> tuple[grpc.aio.Server, int]:
    """A configured, not yet started server and the port it bound (``config.listen`` may
    ask for port 0). Interceptors: metrics outermost (so refused calls are counted), then
    authentication. Beyond ``config.max_concurrent_rpcs`` calls gRPC answers
    RESOURCE_EXHAUSTED.

    ``auth`` is an interceptor the caller built (``AuthInterceptor(tokens,
    gateway_method_roles(hosted))``) and keeps, to reload the token file into it later (the
    gateway app does, on SIGHUP)."""
    interceptors: list[grpc.aio.ServerInterceptor] = []
    if metrics is not None:
        interceptors.append(MetricsInterceptor(metrics))
    interceptors.append(auth)
    server = grpc.aio.server(
        interceptors=interceptors,
        maximum_concurrent_rpcs=config.max_concurrent_rpcs,
        # gRPC sets SO_REUSEPORT by default: a second gateway on the same port would then
        # silently share its traffic instead of failing to start.
        options=(("grpc.so_reuseport", 0),),
    )
    add_gateway_service(gateway_servicer, server)
    gateway_pb2_grpc.add_AdminServiceServicer_to_server(admin_servicer, server)
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for service in hosted:
        service.register(server)
    reflection.enable_server_reflection(
        (
            GATEWAY_SERVICE_NAME,
            ADMIN_SERVICE_NAME,
            *(service.name for service in hosted),
            health.SERVICE_NAME,
            reflection.SERVICE_NAME,
        ),
        server,
    )
    credentials = server_credentials(config)
    try:
        if credentials is not None:
            port = server.add_secure_port(config.listen, credentials)
        else:
            port = server.add_insecure_port(config.listen)
    except RuntimeError as exc:
        raise ListenError(
            f"--listen {config.listen}: cannot bind (address in use or not local): {exc}"
        ) from None
    if config.companion_socket is not None:
        _add_companion_socket(server, config.companion_socket)
    return server, port


def _add_companion_socket(server: grpc.aio.Server, path: str) -> None:
    """Serve ``path`` (a Unix socket, plaintext) for in-process companions; only this
    user may connect to it (mode 0600, set before the server starts accepting)."""
    try:
        if stat.S_ISSOCK(os.lstat(path).st_mode):
            os.unlink(path)  # a socket left by a process that was killed
    except FileNotFoundError:
        pass
    except OSError as exc:
        raise ListenError(f"companion socket {path}: cannot remove the old one: {exc}") from None
    try:
        server.add_insecure_port(f"unix:{path}")
        os.chmod(path, 0o600)
    except (RuntimeError, OSError) as exc:
        raise ListenError(f"companion socket {path}: cannot bind: {exc}") from None

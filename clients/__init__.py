"""Python SDK of the pretrade gateway.

``GatewayClient`` (blocking) and ``AsyncGatewayClient`` (asyncio) wrap the gRPC API with
deadlines on every call and typed exceptions; ``make_order`` and friends build messages
from ``Decimal``/``str``/``int`` values exactly (floats are refused); ``OrderBatcher``
coalesces orders into StreamOrders batches; ``tls_credentials`` builds the
``credentials=`` of a TLS (or mutual TLS) connection. See docs/api.md.
"""

from clients.async_client import AsyncGatewayClient, OrderBatcher
from clients.errors import (
    DeadlineExceeded,
    FieldViolation,
    GatewayError,
    GatewayInternalError,
    GatewayUnavailable,
    InvalidOrder,
    Overloaded,
    PermissionDenied,
    RulesRejected,
    Unauthenticated,
)
from clients.orders import (
    make_execution,
    make_order,
    make_reference_price,
    new_client_order_id,
    price_from_nanos,
    qty_from_nanos,
    to_price_nanos,
    to_qty_nanos,
)
from clients.sync_client import GatewayClient
from clients.tls import TlsFileError, tls_credentials

__all__ = [
    "AsyncGatewayClient",
    "DeadlineExceeded",
    "FieldViolation",
    "GatewayClient",
    "GatewayError",
    "GatewayInternalError",
    "GatewayUnavailable",
    "InvalidOrder",
    "OrderBatcher",
    "Overloaded",
    "PermissionDenied",
    "RulesRejected",
    "TlsFileError",
    "Unauthenticated",
    "make_execution",
    "make_order",
    "make_reference_price",
    "new_client_order_id",
    "price_from_nanos",
    "qty_from_nanos",
    "to_price_nanos",
    "to_qty_nanos",
    "tls_credentials",
]

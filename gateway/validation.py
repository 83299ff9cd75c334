"""Structural validation of API requests, before anything reaches the kernel.

The kernel decides whether an order is *allowed*; this module decides whether a request is
*well-formed*. A malformed request is the caller's bug, not a risk decision, so it is
answered with ``INVALID_ARGUMENT`` and a ``google.rpc.BadRequest`` detail naming every
offending field by its path in the request (``orders[3].quantity_nanos``) and why. A
well-formed order that breaks a rule is an OK response carrying a REJECT decision.

Orders are checked against these rules first on the order path, as they are read from
the request bytes (gateway.orders); the methods here explain what is wrong when that
finds a malformed order, and validate the other requests.
"""

from __future__ import annotations

from dataclasses import dataclass

import grpc
from google.protobuf import any_pb2
from google.rpc import code_pb2, error_details_pb2, status_pb2
from grpc_status import rpc_status

from pretrade.v1 import gateway_pb2, types_pb2

#: Characters of account, symbol, strategy, client_order_id, request_id and execution_id.
DEFAULT_MAX_NAME_LENGTH = 64
DEFAULT_MAX_TRACE_ID_LENGTH = 128  # characters
DEFAULT_MAX_BATCH_ORDERS = 1_000  # orders per CheckOrders call or StreamOrders message
DEFAULT_MAX_BATCH_EXECUTIONS = 1_000  # executions per ReportExecutions call
DEFAULT_MAX_BATCH_PRICES = 10_000  # prices per UpdateReferencePrices call
DEFAULT_MAX_PATH_LENGTH = 4_096  # characters of a rules path in ReloadRules
#: How far ahead of the gateway's clock a reference price's timestamp may be (ns). A price
#: stamped in the future would never turn stale, which silently disables the staleness check.
DEFAULT_MAX_FUTURE_SKEW_NS = 5_000_000_000
#: Violations listed in one BadRequest detail: the detail travels in the trailing metadata,
#: which gRPC caps at a few KiB, so a batch full of bad orders reports only the first ones.
MAX_REPORTED_VIOLATIONS = 32

_SIDES = "SIDE_BUY, SIDE_SELL or SIDE_SELL_SHORT"
_VALID_SIDES = frozenset((types_pb2.SIDE_BUY, types_pb2.SIDE_SELL, types_pb2.SIDE_SELL_SHORT))
_VALID_TIME_IN_FORCE = frozenset(types_pb2.TimeInForce.values())
_FILL_TYPES = frozenset((types_pb2.EXECUTION_TYPE_PARTIAL_FILL, types_pb2.EXECUTION_TYPE_FILL))
_VALID_EXECUTION_TYPES = frozenset(types_pb2.ExecutionType.values()) - {types_pb2.EXECUTION_TYPE_UNSPECIFIED}


@dataclass(frozen=True)
class FieldViolation:
    """One malformed field: its path in the request and what is wrong with it."""

    field: str
    description: str


@dataclass(frozen=True)
class ValidationLimits:
    """Size limits of requests (see the ``DEFAULT_*`` constants for units)."""

    max_name_length: int = DEFAULT_MAX_NAME_LENGTH
    max_trace_id_length: int = DEFAULT_MAX_TRACE_ID_LENGTH
    max_batch_orders: int = DEFAULT_MAX_BATCH_ORDERS
    max_batch_executions: int = DEFAULT_MAX_BATCH_EXECUTIONS
    max_batch_prices: int = DEFAULT_MAX_BATCH_PRICES
    max_path_length: int = DEFAULT_MAX_PATH_LENGTH
    max_future_skew_ns: int = DEFAULT_MAX_FUTURE_SKEW_NS


def _enum_name(enum_type, value: int) -> str:
    try:
        return enum_type.Name(value)
    except ValueError:
        return f"unknown value {value}"


class RequestValidator:
    """Checks requests against :class:`ValidationLimits`; every ``*_violations`` method
    returns the list of violations (empty when the request is well-formed)."""

    def __init__(self, limits: ValidationLimits | None = None) -> None:
        self.limits = limits or ValidationLimits()

    # -- building blocks ---------------------------------------------------------------------
    def _name(
        self,
        out: list[FieldViolation],
        prefix: str,
        field: str,
        value: str,
        *,
        required: bool,
        max_length: int,
    ) -> None:
        """A name field: the path ``prefix + field`` is built only for a violation."""
        if not value:
            if required:
                out.append(FieldViolation(prefix + field, "required; must not be empty"))
            return
        if len(value) > max_length:
            description = f"too long: {len(value)} characters, at most {max_length}"
            out.append(FieldViolation(prefix + field, description))
        elif not value.isprintable():
            out.append(FieldViolation(prefix + field, "must not contain control or non-printable characters"))

    def _batch_size(self, out: list[FieldViolation], path: str, size: int, limit: int) -> bool:
        if size > limit:
            out.append(FieldViolation(path, f"batch too large: {size} items, at most {limit}"))
            return False
        return True

    # -- orders ------------------------------------------------------------------------------
    def order_violations(self, order: types_pb2.Order, prefix: str, out: list[FieldViolation]) -> None:
        """Append every violation of one order, with field paths under ``prefix`` and what
        is wrong. (The order path's fast check of the same rules is gateway.orders; this
        runs when that finds something wrong.)"""
        max_name = self.limits.max_name_length
        self._name(out, prefix, "client_order_id", order.client_order_id, required=True, max_length=max_name)
        self._name(out, prefix, "account", order.account, required=True, max_length=max_name)
        self._name(out, prefix, "strategy", order.strategy, required=False, max_length=max_name)
        self._name(out, prefix, "symbol", order.symbol, required=True, max_length=max_name)
        self._name(out, prefix, "request_id", order.request_id, required=False, max_length=max_name)
        max_trace = self.limits.max_trace_id_length
        self._name(out, prefix, "trace_id", order.trace_id, required=False, max_length=max_trace)
        if order.side not in _VALID_SIDES:
            out.append(
                FieldViolation(
                    prefix + "side", f"must be {_SIDES} (got {_enum_name(types_pb2.Side, order.side)})"
                )
            )
        if order.time_in_force not in _VALID_TIME_IN_FORCE:
            out.append(FieldViolation(prefix + "time_in_force", f"unknown value {order.time_in_force}"))
        if order.quantity_nanos <= 0:
            out.append(FieldViolation(prefix + "quantity_nanos", f"must be > 0 (got {order.quantity_nanos})"))
        order_type = order.order_type
        if order_type == types_pb2.ORDER_TYPE_LIMIT:
            if order.price_nanos <= 0:
                description = f"must be > 0 for a LIMIT order (got {order.price_nanos})"
                out.append(FieldViolation(prefix + "price_nanos", description))
        elif order_type == types_pb2.ORDER_TYPE_MARKET:
            if order.price_nanos != 0:
                description = f"must be 0 for a MARKET order (got {order.price_nanos})"
                out.append(FieldViolation(prefix + "price_nanos", description))
        else:
            out.append(
                FieldViolation(
                    prefix + "order_type",
                    "must be ORDER_TYPE_LIMIT or ORDER_TYPE_MARKET "
                    f"(got {_enum_name(types_pb2.OrderType, order_type)})",
                )
            )

    def check_order_violations(self, request: gateway_pb2.CheckOrderRequest) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        if not request.HasField("order"):
            out.append(FieldViolation("order", "required"))
        else:
            self.order_violations(request.order, "order.", out)
        return out

    def order_batch_violations(self, orders) -> list[FieldViolation]:
        """Violations of the ``orders`` of a CheckOrders request or a StreamOrders message."""
        out: list[FieldViolation] = []
        if self._batch_size(out, "orders", len(orders), self.limits.max_batch_orders):
            for index, order in enumerate(orders):
                self.order_violations(order, f"orders[{index}].", out)
        return out

    # -- executions and prices ----------------------------------------------------------------
    def executions_violations(self, request: gateway_pb2.ReportExecutionsRequest) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        executions = request.executions
        if not self._batch_size(out, "executions", len(executions), self.limits.max_batch_executions):
            return out
        max_name = self.limits.max_name_length
        for index, execution in enumerate(executions):
            prefix = f"executions[{index}]."
            self._name(out, prefix, "account", execution.account, required=True, max_length=max_name)
            self._name(
                out, prefix, "client_order_id", execution.client_order_id, required=True, max_length=max_name
            )
            self._name(
                out, prefix, "execution_id", execution.execution_id, required=True, max_length=max_name
            )
            kind = execution.execution_type
            if kind not in _VALID_EXECUTION_TYPES:
                out.append(
                    FieldViolation(
                        prefix + "execution_type",
                        f"must be a known execution type (got {_enum_name(types_pb2.ExecutionType, kind)})",
                    )
                )
            elif kind in _FILL_TYPES:
                if execution.last_quantity_nanos <= 0:
                    out.append(
                        FieldViolation(
                            prefix + "last_quantity_nanos",
                            f"must be > 0 for a fill (got {execution.last_quantity_nanos})",
                        )
                    )
                if execution.last_price_nanos <= 0:
                    description = f"must be > 0 for a fill (got {execution.last_price_nanos})"
                    out.append(FieldViolation(prefix + "last_price_nanos", description))
        return out

    def reference_prices_violations(
        self, request: gateway_pb2.UpdateReferencePricesRequest, now_ns: int
    ) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        prices = request.prices
        if not self._batch_size(out, "prices", len(prices), self.limits.max_batch_prices):
            return out
        latest_allowed_ns = now_ns + self.limits.max_future_skew_ns
        for index, price in enumerate(prices):
            prefix = f"prices[{index}]."
            max_name = self.limits.max_name_length
            self._name(out, prefix, "symbol", price.symbol, required=True, max_length=max_name)
            if price.price_nanos <= 0:
                out.append(FieldViolation(prefix + "price_nanos", f"must be > 0 (got {price.price_nanos})"))
            if price.timestamp_ns <= 0:
                out.append(
                    FieldViolation(
                        prefix + "timestamp_ns", "required: Unix epoch ns when the price was observed, > 0"
                    )
                )
            elif price.timestamp_ns > latest_allowed_ns:
                out.append(
                    FieldViolation(
                        prefix + "timestamp_ns",
                        f"in the future: {price.timestamp_ns} is more than "
                        f"{self.limits.max_future_skew_ns} ns ahead of the gateway clock",
                    )
                )
        return out

    def reload_violations(self, request: gateway_pb2.ReloadRulesRequest) -> list[FieldViolation]:
        out: list[FieldViolation] = []
        path = request.path
        if len(path) > self.limits.max_path_length:
            description = f"too long: {len(path)} characters, at most {self.limits.max_path_length}"
            out.append(FieldViolation("path", description))
        elif "\x00" in path:
            out.append(FieldViolation("path", "must not contain NUL characters"))
        return out


def invalid_argument_status(violations: list[FieldViolation]) -> grpc.Status:
    """An ``INVALID_ARGUMENT`` status with a ``google.rpc.BadRequest`` detail listing
    ``violations``; the message names the first one so that a plain gRPC client (grpcurl)
    sees what is wrong without decoding details."""
    first = violations[0]
    message = f"invalid request: {first.field}: {first.description}"
    if len(violations) > 1:
        message += f" (and {len(violations) - 1} more field violations)"
    bad_request = error_details_pb2.BadRequest(
        field_violations=[
            error_details_pb2.BadRequest.FieldViolation(field=v.field, description=v.description)
            for v in violations[:MAX_REPORTED_VIOLATIONS]
        ]
    )
    detail = any_pb2.Any()
    detail.Pack(bad_request)
    status = status_pb2.Status(code=code_pb2.INVALID_ARGUMENT, message=message, details=[detail])
    return rpc_status.to_status(status)

"""Building API messages from human values, exactly.

Prices and quantities travel as int64 nanos (1e-9 units). The SDK converts from
``Decimal``, ``str`` or ``int`` with :func:`fastpath.fixedpoint.to_fixed` and refuses
``float``: ``0.1 + 0.2`` is not ``0.3`` in binary, and a risk check must see exactly what
the trader meant. A value that cannot be represented raises :class:`InvalidOrder` naming
the field, before anything is sent.
"""

from __future__ import annotations

import time
import uuid
from decimal import Decimal

from clients.errors import FieldViolation, InvalidOrder
from fastpath.codes import PRICE_SCALE, QTY_SCALE
from fastpath.fixedpoint import FixedPointError, from_fixed, to_fixed
from pretrade.v1 import types_pb2

Number = Decimal | str | int

_SIDES = {
    "BUY": types_pb2.SIDE_BUY,
    "SELL": types_pb2.SIDE_SELL,
    "SELL_SHORT": types_pb2.SIDE_SELL_SHORT,
}
_ORDER_TYPES = {"LIMIT": types_pb2.ORDER_TYPE_LIMIT, "MARKET": types_pb2.ORDER_TYPE_MARKET}
_TIME_IN_FORCE = {
    name.removeprefix("TIME_IN_FORCE_"): value
    for name, value in types_pb2.TimeInForce.items()
    if value != types_pb2.TIME_IN_FORCE_UNSPECIFIED
}
_EXECUTION_TYPES = {
    name.removeprefix("EXECUTION_TYPE_"): value
    for name, value in types_pb2.ExecutionType.items()
    if value != types_pb2.EXECUTION_TYPE_UNSPECIFIED
}


def _invalid(field: str, description: str) -> InvalidOrder:
    return InvalidOrder(f"{field}: {description}", (FieldViolation(field, description),))


def _fixed(value: Number, scale: int, field: str) -> int:
    try:
        return to_fixed(value, scale)
    except FixedPointError as exc:
        raise _invalid(field, str(exc)) from None


def to_price_nanos(value: Number, field: str = "price") -> int:
    """A price (``Decimal``, ``str`` or ``int`` currency units) as int64 nanos."""
    return _fixed(value, PRICE_SCALE, field)


def to_qty_nanos(value: Number, field: str = "quantity") -> int:
    """A quantity (``Decimal``, ``str`` or ``int`` units) as int64 nanos."""
    return _fixed(value, QTY_SCALE, field)


def price_from_nanos(nanos: int) -> Decimal:
    return from_fixed(nanos, PRICE_SCALE)


def qty_from_nanos(nanos: int) -> Decimal:
    return from_fixed(nanos, QTY_SCALE)


def _enum(value: int | str, names: dict[str, int], prefix: str, field: str) -> int:
    """An enum value from its number, its short name (``buy``) or its full name (``SIDE_BUY``)."""
    if isinstance(value, int):
        return int(value)
    key = value.strip().upper().replace("-", "_").removeprefix(prefix)
    if key not in names:
        expected = ", ".join(name.lower() for name in names)
        raise _invalid(field, f"unknown value {value!r}; expected one of {expected}")
    return names[key]


def parse_side(side: int | str) -> int:
    return _enum(side, _SIDES, "SIDE_", "side")


def parse_order_type(order_type: int | str) -> int:
    return _enum(order_type, _ORDER_TYPES, "ORDER_TYPE_", "order_type")


def new_client_order_id(prefix: str = "cl") -> str:
    """A fresh, unique client order id (``<prefix>-`` + 20 hex characters)."""
    return f"{prefix}-{uuid.uuid4().hex[:20]}"


def make_order(
    *,
    account: str,
    symbol: str,
    side: int | str,
    quantity: Number,
    price: Number | None = None,
    order_type: int | str | None = None,
    strategy: str = "",
    client_order_id: str | None = None,
    time_in_force: int | str | None = None,
    request_id: str = "",
    trace_id: str = "",
) -> types_pb2.Order:
    """An Order from human values. ``order_type`` defaults to LIMIT when a price is given
    and MARKET otherwise; ``client_order_id`` defaults to a fresh unique id."""
    if order_type is None:
        order_type = types_pb2.ORDER_TYPE_LIMIT if price is not None else types_pb2.ORDER_TYPE_MARKET
    return types_pb2.Order(
        client_order_id=client_order_id if client_order_id is not None else new_client_order_id(),
        account=account,
        strategy=strategy,
        symbol=symbol,
        side=parse_side(side),
        order_type=parse_order_type(order_type),
        time_in_force=(
            types_pb2.TIME_IN_FORCE_UNSPECIFIED
            if time_in_force is None
            else _enum(time_in_force, _TIME_IN_FORCE, "TIME_IN_FORCE_", "time_in_force")
        ),
        quantity_nanos=to_qty_nanos(quantity),
        price_nanos=to_price_nanos(price) if price is not None else 0,
        request_id=request_id,
        trace_id=trace_id,
    )


def make_execution(
    *,
    account: str,
    client_order_id: str,
    execution_type: int | str,
    execution_id: str,
    last_quantity: Number = 0,
    last_price: Number = 0,
    transact_ns: int | None = None,
) -> types_pb2.Execution:
    """An Execution report from human values (``last_*`` only for fills)."""
    return types_pb2.Execution(
        account=account,
        client_order_id=client_order_id,
        execution_type=_enum(execution_type, _EXECUTION_TYPES, "EXECUTION_TYPE_", "execution_type"),
        last_quantity_nanos=to_qty_nanos(last_quantity, "last_quantity"),
        last_price_nanos=to_price_nanos(last_price, "last_price"),
        execution_id=execution_id,
        transact_ns=transact_ns if transact_ns is not None else time.time_ns(),
    )


def make_reference_price(
    symbol: str, price: Number, timestamp_ns: int | None = None
) -> types_pb2.ReferencePrice:
    """A ReferencePrice, stamped now unless ``timestamp_ns`` says when it was observed."""
    return types_pb2.ReferencePrice(
        symbol=symbol,
        price_nanos=to_price_nanos(price),
        timestamp_ns=timestamp_ns if timestamp_ns is not None else time.time_ns(),
    )

"""Unit tests of request validation: every field of every request, and the BadRequest status."""

from __future__ import annotations

import time

import grpc
import pytest
from google.rpc import error_details_pb2, status_pb2

from gateway.validation import (
    MAX_REPORTED_VIOLATIONS,
    FieldViolation,
    RequestValidator,
    ValidationLimits,
    invalid_argument_status,
)
from pretrade.v1 import gateway_pb2, types_pb2

VALIDATOR = RequestValidator(ValidationLimits(max_name_length=8, max_trace_id_length=10, max_batch_orders=3,
                                              max_batch_executions=2, max_batch_prices=2, max_path_length=20))
NOW_NS = 1_700_000_000_000_000_000


def good_order(**changes) -> types_pb2.Order:
    order = types_pb2.Order(
        client_order_id="c1",
        account="ACC1",
        symbol="AAPL",
        side=types_pb2.SIDE_BUY,
        order_type=types_pb2.ORDER_TYPE_LIMIT,
        quantity_nanos=10**9,
        price_nanos=100 * 10**9,
    )
    for name, value in changes.items():
        setattr(order, name, value)
    return order


def fields(violations: list[FieldViolation]) -> list[str]:
    return [v.field for v in violations]


def order_violations(order: types_pb2.Order) -> list[FieldViolation]:
    return VALIDATOR.check_order_violations(gateway_pb2.CheckOrderRequest(order=order))


def test_a_well_formed_order_has_no_violations():
    assert order_violations(good_order()) == []
    market = good_order(
        order_type=types_pb2.ORDER_TYPE_MARKET,
        price_nanos=0,
        strategy="ALGO",
        time_in_force=types_pb2.TIME_IN_FORCE_IMMEDIATE_OR_CANCEL,
        request_id="r1",
        trace_id="t1",
    )
    assert order_violations(market) == []


def test_missing_order_is_named():
    assert fields(VALIDATOR.check_order_violations(gateway_pb2.CheckOrderRequest())) == ["order"]


@pytest.mark.parametrize(
    "changes, field, words",
    [
        ({"client_order_id": ""}, "order.client_order_id", "required"),
        ({"account": ""}, "order.account", "required"),
        ({"symbol": ""}, "order.symbol", "required"),
        ({"client_order_id": "x" * 9}, "order.client_order_id", "too long"),
        ({"account": "x" * 9}, "order.account", "too long"),
        ({"symbol": "x" * 9}, "order.symbol", "too long"),
        ({"strategy": "x" * 9}, "order.strategy", "too long"),
        ({"request_id": "x" * 9}, "order.request_id", "too long"),
        ({"trace_id": "x" * 11}, "order.trace_id", "too long"),
        ({"account": "AC\nC1"}, "order.account", "control"),
        ({"symbol": "AA\x00"}, "order.symbol", "control"),
        ({"side": types_pb2.SIDE_UNSPECIFIED}, "order.side", "SIDE_UNSPECIFIED"),
        ({"side": 9}, "order.side", "unknown value 9"),
        ({"order_type": types_pb2.ORDER_TYPE_UNSPECIFIED}, "order.order_type", "ORDER_TYPE_UNSPECIFIED"),
        ({"order_type": 7}, "order.order_type", "unknown value 7"),
        ({"time_in_force": 42}, "order.time_in_force", "unknown value 42"),
        ({"quantity_nanos": 0}, "order.quantity_nanos", "> 0"),
        ({"quantity_nanos": -5}, "order.quantity_nanos", "> 0"),
        ({"price_nanos": 0}, "order.price_nanos", "> 0 for a LIMIT"),
        ({"price_nanos": -1}, "order.price_nanos", "> 0 for a LIMIT"),
        ({"order_type": types_pb2.ORDER_TYPE_MARKET}, "order.price_nanos", "0 for a MARKET"),
    ],
)
def test_each_malformed_order_field_is_named_with_the_reason(changes, field, words):
    violations = order_violations(good_order(**changes))
    assert fields(violations) == [field]
    assert words in violations[0].description


def test_every_violation_of_an_order_is_reported():
    bad = types_pb2.Order(side=5, order_type=9, quantity_nanos=0)
    assert set(fields(order_violations(bad))) == {
        "order.client_order_id", "order.account", "order.symbol", "order.side", "order.order_type",
        "order.quantity_nanos",
    }


def test_batch_paths_index_the_order():
    orders = [good_order(), good_order(quantity_nanos=0), good_order(side=0)]
    assert fields(VALIDATOR.order_batch_violations(orders)) == ["orders[1].quantity_nanos", "orders[2].side"]


def test_batch_too_large_is_one_violation():
    violations = VALIDATOR.order_batch_violations([good_order()] * 4)
    assert fields(violations) == ["orders"]
    assert "batch too large: 4 items, at most 3" in violations[0].description


def test_an_empty_batch_is_well_formed():
    assert VALIDATOR.order_batch_violations([]) == []


def good_execution(**changes) -> types_pb2.Execution:
    execution = types_pb2.Execution(
        account="ACC1", client_order_id="c1", execution_type=types_pb2.EXECUTION_TYPE_FILL,
        last_quantity_nanos=10**9, last_price_nanos=10**11, execution_id="e1",
    )
    for name, value in changes.items():
        setattr(execution, name, value)
    return execution


def execution_violations(*executions) -> list[FieldViolation]:
    return VALIDATOR.executions_violations(gateway_pb2.ReportExecutionsRequest(executions=executions))


@pytest.mark.parametrize(
    "changes, field",
    [
        ({"account": ""}, "executions[0].account"),
        ({"client_order_id": ""}, "executions[0].client_order_id"),
        ({"execution_id": ""}, "executions[0].execution_id"),
        ({"execution_id": "x" * 9}, "executions[0].execution_id"),
        ({"execution_type": types_pb2.EXECUTION_TYPE_UNSPECIFIED}, "executions[0].execution_type"),
        ({"execution_type": 99}, "executions[0].execution_type"),
        ({"last_quantity_nanos": 0}, "executions[0].last_quantity_nanos"),
        ({"last_price_nanos": 0}, "executions[0].last_price_nanos"),
        ({"execution_type": types_pb2.EXECUTION_TYPE_PARTIAL_FILL, "last_price_nanos": -1},
         "executions[0].last_price_nanos"),
    ],
)
def test_each_malformed_execution_field_is_named(changes, field):
    assert fields(execution_violations(good_execution(**changes))) == [field]


def test_cancels_need_no_quantity_or_price():
    cancel = good_execution(execution_type=types_pb2.EXECUTION_TYPE_CANCELLED, last_quantity_nanos=0,
                            last_price_nanos=0)
    assert execution_violations(cancel) == []


def test_too_many_executions():
    assert fields(execution_violations(*[good_execution()] * 3)) == ["executions"]


def price_violations(*prices) -> list[FieldViolation]:
    request = gateway_pb2.UpdateReferencePricesRequest(prices=prices)
    return VALIDATOR.reference_prices_violations(request, NOW_NS)


@pytest.mark.parametrize(
    "price, field, words",
    [
        (types_pb2.ReferencePrice(price_nanos=1, timestamp_ns=NOW_NS), "prices[0].symbol", "required"),
        (
            types_pb2.ReferencePrice(symbol="A", price_nanos=0, timestamp_ns=NOW_NS),
            "prices[0].price_nanos",
            "> 0",
        ),
        (types_pb2.ReferencePrice(symbol="A", price_nanos=1), "prices[0].timestamp_ns", "required"),
        (types_pb2.ReferencePrice(symbol="A", price_nanos=1, timestamp_ns=NOW_NS + 6_000_000_000),
         "prices[0].timestamp_ns", "in the future"),
    ],
)
def test_each_malformed_price_field_is_named(price, field, words):
    violations = price_violations(price)
    assert fields(violations) == [field]
    assert words in violations[0].description


def test_a_price_slightly_ahead_of_the_clock_is_accepted():
    ahead = types_pb2.ReferencePrice(symbol="A", price_nanos=1, timestamp_ns=NOW_NS + 10**9)
    assert price_violations(ahead) == []


def test_reload_path_limits():
    assert VALIDATOR.reload_violations(gateway_pb2.ReloadRulesRequest()) == []
    assert fields(VALIDATOR.reload_violations(gateway_pb2.ReloadRulesRequest(path="x" * 21))) == ["path"]
    assert fields(VALIDATOR.reload_violations(gateway_pb2.ReloadRulesRequest(path="a\x00b"))) == ["path"]


def test_invalid_argument_status_carries_a_bad_request_detail():
    violations = [FieldViolation(f"orders[{i}].side", "bad") for i in range(MAX_REPORTED_VIOLATIONS + 5)]
    status = invalid_argument_status(violations)
    assert status.code == grpc.StatusCode.INVALID_ARGUMENT
    assert status.details.startswith("invalid request: orders[0].side: bad (and ")
    (key, value), = status.trailing_metadata
    rich = status_pb2.Status.FromString(value)
    bad_request = error_details_pb2.BadRequest()
    rich.details[0].Unpack(bad_request)
    assert len(bad_request.field_violations) == MAX_REPORTED_VIOLATIONS
    assert bad_request.field_violations[0].field == "orders[0].side"


def test_default_limits_accept_realistic_values():
    validator = RequestValidator()
    order = good_order(client_order_id="x" * 64, trace_id="t" * 128)
    assert validator.check_order_violations(gateway_pb2.CheckOrderRequest(order=order)) == []
    request = gateway_pb2.UpdateReferencePricesRequest(
        prices=[types_pb2.ReferencePrice(symbol="A", price_nanos=1, timestamp_ns=time.time_ns())]
    )
    assert validator.reference_prices_violations(request, time.time_ns()) == []


#: Names around the limits of VALIDATOR (8 characters, trace ids 10), non-printable ones, any text.

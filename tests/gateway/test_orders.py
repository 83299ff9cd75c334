"""gateway.orders against the protobuf library and the validator.

The reader is the order path's fast check: for every request it must either return the
orders exactly as upb parses them (and only if the validator finds nothing wrong), or
return None (and then the servicer's slow path parses the request with the library and
explains it). Hypothesis drives it with canonical encodings, with encodings only other
encoders produce (fields out of order, repeated, unknown fields of every wire type, known
numbers with another wire type) and with bytes mutated at random.
"""

from __future__ import annotations

import pytest
from hypothesis import example, given, settings
from hypothesis import strategies as st

from gateway.orders import OrderReader, WireOrder
from gateway.validation import FieldViolation, RequestValidator, ValidationLimits
from google.protobuf.message import DecodeError
from pretrade.v1 import gateway_pb2, types_pb2

LIMITS = ValidationLimits(max_name_length=8, max_trace_id_length=10, max_batch_orders=3)
VALIDATOR = RequestValidator(LIMITS)
READER = OrderReader(LIMITS)
ORDER_FIELDS = (
    "client_order_id", "account", "strategy", "symbol", "side", "order_type", "time_in_force",
    "quantity_nanos", "price_nanos", "request_id", "trace_id",
)  # fmt: skip
TEXT_NUMBERS = {1: "client_order_id", 2: "account", 3: "strategy", 4: "symbol", 10: "request_id", 11: "trace_id"}
VARINT_NUMBERS = {5: "side", 6: "order_type", 7: "time_in_force", 8: "quantity_nanos", 9: "price_nanos"}

NAMES = st.one_of(
    st.sampled_from(["", "c1", "ACC1", "x" * 8, "x" * 9, "x" * 11, "tab\there", "é", "\x7f", "€𝄞"]),
    st.text(max_size=12),
)
INT64 = st.one_of(
    st.sampled_from([-(10**9), -1, 0, 1, 10**9, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1)
)


def varint(value: int) -> bytes:
    value &= 2**64 - 1
    out = bytearray()
    while value >= 0x80:
        out.append(value & 0x7F | 0x80)
        value >>= 7
    out.append(value)
    return bytes(out)


def field(number: int, wire_type: int, payload: bytes) -> bytes:
    if wire_type == 2:
        payload = varint(len(payload)) + payload
    return varint(number << 3 | wire_type) + payload


def validator_violations(order: types_pb2.Order) -> list[FieldViolation]:
    out: list[FieldViolation] = []
    VALIDATOR.order_violations(order, "order.", out)
    return out


def assert_same_order(wire_order: WireOrder, order: types_pb2.Order) -> None:
    """The reader's order has upb's values, and its echo is upb's serialization of the
    order without unknown fields."""
    assert {name: getattr(wire_order, name) for name in ORDER_FIELDS} == {
        name: getattr(order, name) for name in ORDER_FIELDS
    }
    known = types_pb2.Order()
    known.CopyFrom(order)
    known.DiscardUnknownFields()
    assert wire_order.encoded == known.SerializeToString()


def assert_reader_agrees(serialized: bytes) -> None:
    """``READER.order`` against upb and the validator on one serialized Order."""
    wire_order = READER.order(serialized)
    try:
        order = types_pb2.Order.FromString(serialized)
    except DecodeError:
        assert wire_order is None
        return
    if validator_violations(order):
        assert wire_order is None
    else:
        assert wire_order is not None, order
        assert_same_order(wire_order, order)


@settings(max_examples=600, deadline=None)
@given(
    client_order_id=NAMES,
    account=NAMES,
    symbol=NAMES,
    strategy=NAMES,
    request_id=NAMES,
    trace_id=NAMES,
    side=st.integers(-1, 5),
    order_type=st.integers(-1, 4),
    time_in_force=st.integers(-1, 9),
    quantity_nanos=INT64,
    price_nanos=INT64,
)
@example(client_order_id="c1", account="ACC1", symbol="S", strategy="", request_id="", trace_id="",
         side=1, order_type=1, time_in_force=0, quantity_nanos=1, price_nanos=1)  # fmt: skip
def test_canonical_orders_are_read_as_upb_reads_them_when_the_validator_accepts_them(**fields_):
    order = types_pb2.Order(**fields_)
    request = gateway_pb2.CheckOrderRequest(order=order).SerializeToString()
    wire_order = READER.check_order_request(request)
    if validator_violations(order):
        assert wire_order is None
    else:
        assert wire_order is not None
        assert_same_order(wire_order, order)
        assert wire_order.encoded == order.SerializeToString()


def text_piece(number: int):
    return st.one_of(
        st.text(max_size=10).map(lambda text: field(number, 2, text.encode())),
        st.binary(max_size=10).map(lambda raw: field(number, 2, raw)),  # maybe not UTF-8
    )


KNOWN_PIECES = st.one_of(
    *(text_piece(number) for number in TEXT_NUMBERS),
    *(
        st.one_of(st.integers(-3, 6), INT64, st.integers(0, 2**64 - 1)).map(
            lambda value, number=number: field(number, 0, varint(value))
        )
        for number in VARINT_NUMBERS
    ),
)
UNKNOWN_PIECES = st.one_of(
    st.tuples(st.integers(12, 2**29 - 1), st.integers(0, 2**64 - 1)).map(lambda p: field(p[0], 0, varint(p[1]))),
    st.tuples(st.integers(12, 100), st.binary(min_size=8, max_size=8)).map(lambda p: field(p[0], 1, p[1])),
    st.tuples(st.integers(12, 100), st.binary(max_size=12)).map(lambda p: field(p[0], 2, p[1])),
    st.tuples(st.integers(12, 100), st.binary(min_size=4, max_size=4)).map(lambda p: field(p[0], 5, p[1])),
    st.integers(12, 100).map(lambda n: field(n, 3, field(1, 0, b"\x05") + field(2, 2, b"ab")) + varint(n << 3 | 4)),
    # a known field number with another wire type: an unknown field to upb
    st.tuples(st.sampled_from(sorted(VARINT_NUMBERS)), st.binary(max_size=6)).map(lambda p: field(p[0], 2, p[1])),
    st.tuples(st.sampled_from(sorted(TEXT_NUMBERS)), st.integers(0, 2**64 - 1)).map(lambda p: field(p[0], 0, varint(p[1]))),
    st.sampled_from(sorted(TEXT_NUMBERS)).map(lambda n: field(n, 5, b"abcd")),
)


@settings(max_examples=1_500, deadline=None)
@given(st.lists(st.one_of(KNOWN_PIECES, KNOWN_PIECES, UNKNOWN_PIECES), max_size=24))
def test_any_encoding_of_an_order_is_read_as_upb_reads_it(pieces):
    assert_reader_agrees(b"".join(pieces))


WELL_FORMED = types_pb2.Order(
    client_order_id="c1", account="ACC1", symbol="AAPL", strategy="s", side=types_pb2.SIDE_SELL,
    order_type=types_pb2.ORDER_TYPE_LIMIT, time_in_force=types_pb2.TIME_IN_FORCE_DAY,
    quantity_nanos=10**9, price_nanos=10**11, request_id="r", trace_id="t",
)  # fmt: skip


@settings(max_examples=1_500, deadline=None)
@given(
    st.lists(
        st.tuples(st.integers(0, 200), st.sampled_from(["flip", "insert", "delete", "truncate"]), st.integers(0, 255)),
        min_size=1,
        max_size=4,
    )
)
def test_mutated_bytes_are_read_as_upb_reads_them_or_refused(mutations):
    data = bytearray(WELL_FORMED.SerializeToString())
    for position, kind, byte in mutations:
        position %= len(data) + 1
        if kind == "flip" and position < len(data):
            data[position] ^= byte or 1
        elif kind == "insert":
            data.insert(position, byte)
        elif kind == "delete" and position < len(data):
            del data[position]
        elif kind == "truncate":
            del data[position:]
    assert_reader_agrees(bytes(data))


def test_an_order_in_several_parts_is_left_to_the_protobuf_library():
    first = types_pb2.Order(client_order_id="c1", account="ACC1", symbol="AAPL").SerializeToString()
    second = types_pb2.Order(side=1, order_type=1, quantity_nanos=1, price_nanos=1).SerializeToString()
    request = field(1, 2, first) + field(1, 2, second)
    assert READER.check_order_request(request) is None
    merged = gateway_pb2.CheckOrderRequest.FromString(request)  # protobuf merges the parts
    assert VALIDATOR.check_order_violations(merged) == []
    assert_same_order(READER.check_order_request(merged.SerializeToString()), merged.order)


def test_a_request_without_an_order_is_refused():
    assert READER.check_order_request(b"") is None
    assert READER.check_order_request(field(7, 0, varint(1))) is None


def test_batches_are_read_in_order_up_to_the_batch_limit():
    orders = [types_pb2.Order(client_order_id=f"c{i}", account="A", symbol="S", side=1, order_type=2,
                              quantity_nanos=i + 1) for i in range(4)]  # fmt: skip
    request = gateway_pb2.CheckOrdersRequest(orders=orders[:3]).SerializeToString()
    assert [order.client_order_id for order in READER.check_orders_request(request)] == ["c0", "c1", "c2"]
    assert READER.check_orders_request(gateway_pb2.CheckOrdersRequest(orders=orders).SerializeToString()) is None
    assert READER.check_orders_request(b"") == []
    bad = types_pb2.Order(client_order_id="c", account="A", symbol="S", side=1, order_type=2)  # no quantity
    assert READER.check_orders_request(gateway_pb2.CheckOrdersRequest(orders=[orders[0], bad]).SerializeToString()) is None


@settings(max_examples=200, deadline=None)
@given(batch_id=st.integers(0, 2**64 - 1), cancel_on_disconnect=st.booleans(), count=st.integers(0, 2),
       trailing_unknown=st.booleans())  # fmt: skip
def test_stream_batches_carry_their_id_and_flag(batch_id, cancel_on_disconnect, count, trailing_unknown):
    orders = [WELL_FORMED] * count
    request = gateway_pb2.StreamOrdersRequest(
        batch_id=batch_id, orders=orders, cancel_on_disconnect=cancel_on_disconnect
    ).SerializeToString()
    if trailing_unknown:
        orders_field = 2  # StreamOrdersRequest.orders, after an unknown field
        request += field(9, 0, varint(1)) + field(orders_field, 2, WELL_FORMED.SerializeToString())
        count += 1
    batch = READER.stream_orders_request(request)
    assert (batch.batch_id, batch.cancel_on_disconnect, len(batch.orders)) == (batch_id, cancel_on_disconnect, count)
    for wire_order in batch.orders:
        assert_same_order(wire_order, WELL_FORMED)


def test_wire_orders_are_made_only_by_the_reader():
    with pytest.raises(TypeError, match="OrderReader"):
        WireOrder()

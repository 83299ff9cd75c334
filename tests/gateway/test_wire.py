"""gateway.wire against the protobuf library: every encoding parses to the message protobuf
builds from the same values, and equals protobuf's own serialization byte for byte."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from gateway import wire
from pretrade.v1 import gateway_pb2, types_pb2

INT64 = st.one_of(st.sampled_from([0, 1, -1, 127, 128, 2**63 - 1, -(2**63)]), st.integers(-(2**63), 2**63 - 1))
UINT64 = st.one_of(st.sampled_from([0, 1, 127, 128, 2**64 - 1]), st.integers(0, 2**64 - 1))
TEXT = st.one_of(st.sampled_from(["", "gw1", "é€𝄞"]), st.text(max_size=80))

ORDERS = st.builds(
    types_pb2.Order,
    client_order_id=TEXT,
    account=TEXT,
    strategy=TEXT,
    symbol=TEXT,
    side=st.integers(0, 3),
    order_type=st.integers(0, 2),
    time_in_force=st.integers(0, 4),
    quantity_nanos=INT64,
    price_nanos=INT64,
    request_id=TEXT,
    trace_id=TEXT,
)
FAILURES = st.lists(
    st.builds(types_pb2.CheckFailure, code=TEXT, limit=INT64, observed=INT64, rule_path=TEXT, detail=TEXT),
    max_size=4,
)


def protobuf_decision(verdict, failures, sequence, gateway_id, rules_version, received_ns, decided_ns, order, handle):
    """The decision as the protobuf library builds it (the order path before gateway.wire)."""
    decision = types_pb2.Decision(
        verdict=verdict,
        failures=failures,
        sequence=sequence,
        gateway_id=gateway_id,
        rules_version=rules_version,
        received_ns=received_ns,
        decided_ns=decided_ns,
        order_handle=handle,
    )
    decision.order.CopyFrom(order)
    return decision


@settings(max_examples=400, deadline=None)
@given(
    verdict=st.integers(0, 2),
    failures=FAILURES,
    sequence=UINT64,
    gateway_id=TEXT,
    rules_version=TEXT,
    received_ns=INT64,
    decided_ns=INT64,
    order=ORDERS,
    handle=UINT64,
)
def test_encode_decision_is_protobufs_serialization(
    verdict, failures, sequence, gateway_id, rules_version, received_ns, decided_ns, order, handle
):
    expected = protobuf_decision(
        verdict, failures, sequence, gateway_id, rules_version, received_ns, decided_ns, order, handle
    )
    encoded = wire.encode_decision(
        verdict,
        [failure.SerializeToString() for failure in failures],
        sequence,
        gateway_id.encode(),
        rules_version.encode(),
        received_ns,
        decided_ns,
        order.SerializeToString(),
        handle,
    )
    assert types_pb2.Decision.FromString(encoded) == expected
    assert encoded == expected.SerializeToString(deterministic=True)


def test_a_decision_larger_than_the_stack_buffer_is_encoded_whole():
    order = types_pb2.Order(client_order_id="c" * 64, account="a" * 64, trace_id="t" * 3_000)
    failures = [types_pb2.CheckFailure(code="X", detail="d" * 500).SerializeToString() for _ in range(4)]
    encoded = wire.encode_decision(2, failures, 9, b"gw", b"v" * 64, 1, 2, order.SerializeToString(), 0)
    decision = types_pb2.Decision.FromString(encoded)
    assert decision.order == order and len(decision.failures) == 4 and decision.sequence == 9


@settings(max_examples=200, deadline=None)
@given(order=ORDERS, sequence=UINT64)
def test_the_replayed_suffix_marks_a_recorded_decision_as_a_replay(order, sequence):
    recorded = wire.encode_decision(1, [], sequence, b"gw", b"v", 1, 2, order.SerializeToString(), 3)
    replay = types_pb2.Decision.FromString(recorded + wire.REPLAYED_SUFFIX)
    expected = types_pb2.Decision.FromString(recorded)
    expected.replayed = True
    assert replay == expected


DECISION_BYTES = st.lists(
    st.builds(
        lambda order, sequence: wire.encode_decision(1, [], sequence, b"gw", b"v", 1, 2, order.SerializeToString(), 0),
        ORDERS,
        UINT64,
    ),
    max_size=5,
)


@settings(max_examples=200, deadline=None)
@given(decisions=DECISION_BYTES, batch_id=UINT64)
def test_responses_frame_decisions_as_protobuf_does(decisions, batch_id):
    parsed = [types_pb2.Decision.FromString(decision) for decision in decisions]
    for decision, message in zip(decisions, parsed):
        single = gateway_pb2.CheckOrderResponse()
        single.decision.CopyFrom(message)
        assert wire.check_order_response(decision) == single.SerializeToString(deterministic=True)
    assert wire.check_orders_response(decisions) == gateway_pb2.CheckOrdersResponse(
        decisions=parsed
    ).SerializeToString(deterministic=True)
    stream = gateway_pb2.StreamOrdersResponse(decisions=gateway_pb2.DecisionBatch(batch_id=batch_id, decisions=parsed))
    encoded = wire.stream_orders_response(batch_id, decisions)
    assert gateway_pb2.StreamOrdersResponse.FromString(encoded) == stream
    assert encoded == stream.SerializeToString(deterministic=True)
    assert gateway_pb2.StreamOrdersResponse.FromString(encoded).WhichOneof("payload") == "decisions"

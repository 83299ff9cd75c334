"""Protobuf wire encoding of the order path's output: each decision is serialized once.

Why hand-written encoding here, beside the protobuf library
    A decision is recorded (outbox, then JetStream, then the ledger) and answered to the
    client. Building it as a ``pretrade.v1.Decision`` message, serializing it for the
    outbox and copying it into the response costs ~1.5 µs per order with upb (fields set
    one Python call at a time, the order copied twice), half of the gateway's in-process
    budget. :func:`encode_decision` writes the same bytes in ~0.1 µs from the values the
    order path already holds, and the responses are framed around those bytes
    (:func:`check_order_response` & co.), so the client receives byte for byte what is
    published and ledgered. Only Decision's scalar fields and the framing are encoded
    here; the order echo and the check failures are serialized by the protobuf library
    (``Order.SerializeToString``, ``CheckFailure.SerializeToString``) and embedded as they
    are. ``tests/gateway/test_wire.py`` checks, with hypothesis, that every output parses
    to the message the protobuf library builds from the same values and equals its
    serialization byte for byte.

Encoding rules (protobuf proto3, what upb itself emits)
    Fields in field-number order; scalar fields with their default value (0, false, "")
    are omitted; int64/uint64 as base-128 varints (a negative int64 as its 64-bit two's
    complement, ten bytes); strings and embedded messages as tag, varint length, bytes.
    The ``order`` field is always present (an empty order is tag + zero length, as
    ``decision.order.CopyFrom(order)`` would make it).

Field numbers mirror proto/pretrade/v1/types.proto and gateway.proto; a change there must
be made here too (the tests fail otherwise).
"""

from cpython.bytes cimport PyBytes_AS_STRING, PyBytes_FromStringAndSize, PyBytes_GET_SIZE
from libc.stdint cimport int64_t, uint64_t
from libc.stdlib cimport free, malloc
from libc.string cimport memcpy

# Tags: field number << 3 | wire type (0 varint, 2 length-delimited).
cdef enum:
    DECISION_VERDICT = 0x08
    DECISION_FAILURES = 0x12
    DECISION_SEQUENCE = 0x18
    DECISION_GATEWAY_ID = 0x22
    DECISION_RULES_VERSION = 0x2A
    DECISION_RECEIVED_NS = 0x30
    DECISION_DECIDED_NS = 0x38
    DECISION_ORDER = 0x42
    DECISION_ORDER_HANDLE = 0x48
    DECISION_REPLAYED = 0x50
    CHECK_ORDER_RESPONSE_DECISION = 0x0A  # CheckOrderResponse.decision = 1
    CHECK_ORDERS_RESPONSE_DECISIONS = 0x0A  # CheckOrdersResponse.decisions = 1
    STREAM_RESPONSE_DECISIONS = 0x0A  # StreamOrdersResponse.decisions = 1 (a DecisionBatch)
    BATCH_BATCH_ID = 0x08  # DecisionBatch.batch_id = 1
    BATCH_DECISIONS = 0x12  # DecisionBatch.decisions = 2
    MAX_VARINT_BYTES = 10
    STACK_BUFFER_BYTES = 2048

#: Appended to a recorded decision to answer a retry: ``replayed = true``. A field that
#: follows the others overrides nothing and parses like any field (protobuf merges).
REPLAYED_SUFFIX = bytes((DECISION_REPLAYED, 1))


cdef Py_ssize_t varint_size(uint64_t value) noexcept nogil:
    cdef Py_ssize_t size = 1
    while value >= 0x80:
        value >>= 7
        size += 1
    return size


cdef Py_ssize_t put_varint(uint8_t* out, uint64_t value) noexcept nogil:
    cdef Py_ssize_t size = 0
    while value >= 0x80:
        out[size] = <uint8_t>(value | 0x80)
        value >>= 7
        size += 1
    out[size] = <uint8_t>value
    return size + 1


cdef Py_ssize_t put_bytes_field(uint8_t* out, uint8_t tag, const char* data, Py_ssize_t size) noexcept nogil:
    out[0] = tag
    cdef Py_ssize_t written = 1 + put_varint(out + 1, <uint64_t>size)
    memcpy(out + written, data, size)
    return written + size


cdef Py_ssize_t put_varint_field(uint8_t* out, uint8_t tag, uint64_t value) noexcept nogil:
    out[0] = tag
    return 1 + put_varint(out + 1, value)


cpdef bytes encode_decision(
    int verdict,
    list failures,
    uint64_t sequence,
    bytes gateway_id,
    bytes rules_version,
    int64_t received_ns,
    int64_t decided_ns,
    bytes order,
    uint64_t order_handle,
):
    """A serialized ``pretrade.v1.Decision`` (cpdef: gateway.orderpath calls it in C).

    ``failures`` holds serialized ``CheckFailure`` messages (empty for an accept),
    ``gateway_id`` and ``rules_version`` their UTF-8 bytes, ``order`` the serialized
    ``Order``. ``replayed`` is never set here: see :data:`REPLAYED_SUFFIX`.
    """
    cdef Py_ssize_t size = 2 * (1 + MAX_VARINT_BYTES) + 4 * (1 + MAX_VARINT_BYTES)
    cdef bytes failure
    for failure in failures:
        size += 1 + MAX_VARINT_BYTES + PyBytes_GET_SIZE(failure)
    size += 2 * (1 + MAX_VARINT_BYTES) + PyBytes_GET_SIZE(gateway_id) + PyBytes_GET_SIZE(rules_version)
    size += 1 + MAX_VARINT_BYTES + PyBytes_GET_SIZE(order)
    cdef uint8_t stack_buffer[STACK_BUFFER_BYTES]
    cdef uint8_t* out = stack_buffer
    if size > STACK_BUFFER_BYTES:
        out = <uint8_t*>malloc(size)
        if out == NULL:
            raise MemoryError()
    cdef Py_ssize_t n = 0
    try:
        if verdict != 0:
            n += put_varint_field(out + n, DECISION_VERDICT, <uint64_t><int64_t>verdict)
        for failure in failures:
            n += put_bytes_field(out + n, DECISION_FAILURES, PyBytes_AS_STRING(failure), PyBytes_GET_SIZE(failure))
        if sequence != 0:
            n += put_varint_field(out + n, DECISION_SEQUENCE, sequence)
        if PyBytes_GET_SIZE(gateway_id):
            n += put_bytes_field(out + n, DECISION_GATEWAY_ID, PyBytes_AS_STRING(gateway_id), PyBytes_GET_SIZE(gateway_id))
        if PyBytes_GET_SIZE(rules_version):
            n += put_bytes_field(
                out + n, DECISION_RULES_VERSION, PyBytes_AS_STRING(rules_version), PyBytes_GET_SIZE(rules_version)
            )
        if received_ns != 0:
            n += put_varint_field(out + n, DECISION_RECEIVED_NS, <uint64_t>received_ns)
        if decided_ns != 0:
            n += put_varint_field(out + n, DECISION_DECIDED_NS, <uint64_t>decided_ns)
        n += put_bytes_field(out + n, DECISION_ORDER, PyBytes_AS_STRING(order), PyBytes_GET_SIZE(order))
        if order_handle != 0:
            n += put_varint_field(out + n, DECISION_ORDER_HANDLE, order_handle)
        return PyBytes_FromStringAndSize(<char*>out, n)
    finally:
        if out != stack_buffer:
            free(out)


cdef bytes frame_repeated(uint8_t tag, list payloads, uint8_t prefix_tag, uint64_t prefix_value, bint with_prefix):
    """``[prefix varint field] + (tag, length, payload) for each payload``."""
    cdef Py_ssize_t size = (1 + MAX_VARINT_BYTES) if with_prefix else 0
    cdef bytes payload
    for payload in payloads:
        size += 1 + varint_size(<uint64_t>PyBytes_GET_SIZE(payload)) + PyBytes_GET_SIZE(payload)
    cdef bytes result = PyBytes_FromStringAndSize(NULL, size)
    cdef uint8_t* out = <uint8_t*>PyBytes_AS_STRING(result)
    cdef Py_ssize_t n = 0
    if with_prefix and prefix_value != 0:
        n += put_varint_field(out, prefix_tag, prefix_value)
    for payload in payloads:
        n += put_bytes_field(out + n, tag, PyBytes_AS_STRING(payload), PyBytes_GET_SIZE(payload))
    return result[:n] if n != size else result


def check_order_response(bytes decision):
    """A serialized ``CheckOrderResponse`` carrying the serialized ``decision``."""
    return frame_repeated(CHECK_ORDER_RESPONSE_DECISION, [decision], 0, 0, False)


def check_orders_response(list decisions):
    """A serialized ``CheckOrdersResponse`` carrying the serialized ``decisions``, in order."""
    return frame_repeated(CHECK_ORDERS_RESPONSE_DECISIONS, decisions, 0, 0, False)


def stream_orders_response(uint64_t batch_id, list decisions):
    """A serialized ``StreamOrdersResponse`` whose ``DecisionBatch`` carries ``batch_id``
    and the serialized ``decisions``, in order."""
    cdef bytes batch = frame_repeated(BATCH_DECISIONS, decisions, BATCH_BATCH_ID, batch_id, True)
    return frame_repeated(STREAM_RESPONSE_DECISIONS, [batch], 0, 0, False)

"""gateway.wire: protobuf wire encoding of the order path's output (see wire.pyx).

Python API: encode_decision (cpdef), check_order_response, check_orders_response,
stream_orders_response, REPLAYED_SUFFIX; typed in wire.pyi.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t

# Varints and fields into a caller-sized buffer; each returns the bytes written.
cdef Py_ssize_t varint_size(uint64_t value) noexcept nogil
cdef Py_ssize_t put_varint(uint8_t* out, uint64_t value) noexcept nogil
cdef Py_ssize_t put_bytes_field(uint8_t* out, uint8_t tag, const char* data, Py_ssize_t size) noexcept nogil
cdef Py_ssize_t put_varint_field(uint8_t* out, uint8_t tag, uint64_t value) noexcept nogil

# A message of one optional varint field then one length-delimited field per payload.
cdef bytes frame_repeated(uint8_t tag, list payloads, uint8_t prefix_tag, uint64_t prefix_value, bint with_prefix)

# A serialized Decision (cpdef: the order path calls it without a Python call).
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
)

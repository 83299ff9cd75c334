"""gateway.orders: order requests read from their wire bytes (see orders.pyx).

Python API: OrderReader (check_order_request, check_orders_request,
stream_orders_request, order), WireOrder, StreamBatch; typed in orders.pyi.
"""

from libc.stdint cimport int64_t, uint8_t, uint64_t


# A well-formed order: the fields the order path reads, and its canonical serialization.
cdef class WireOrder:
    cdef readonly str client_order_id
    cdef readonly str account
    cdef readonly str strategy
    cdef readonly str symbol
    cdef readonly str request_id
    cdef readonly str trace_id
    cdef readonly int side
    cdef readonly int order_type
    cdef readonly int time_in_force
    cdef readonly int64_t quantity_nanos
    cdef readonly int64_t price_nanos
    cdef readonly bytes encoded


# One StreamOrdersRequest.
cdef class StreamBatch:
    cdef readonly uint64_t batch_id
    cdef readonly bint cancel_on_disconnect
    cdef readonly list orders


# Requests -> WireOrders, with the validator's limits; None when the fast path can't answer.
cdef class OrderReader:
    cdef readonly Py_ssize_t max_name_length
    cdef readonly Py_ssize_t max_trace_id_length
    cdef readonly Py_ssize_t max_batch_orders

    cdef WireOrder read_order(self, const uint8_t* data, Py_ssize_t size)
    cdef list read_repeated_orders(self, bytes request, uint64_t orders_field, StreamBatch batch)

"""gateway.orderpath: the compiled order path of gateway.servicer.OrderGate (see orderpath.pyx).

Python API: OrderPath (decide, last_sequence, rules_version_bytes), WorkingOrder,
DecisionCounters;
typed in orderpath.pyi.
"""

from libc.stdint cimport int64_t, uint64_t

from gateway.orders cimport WireOrder


cdef enum:
    MAX_LATENCY_BUCKETS = 32


# Per-decision metrics counters (exported by gateway.metrics.DecisionStats).
cdef class DecisionCounters:
    cdef readonly tuple bucket_bounds
    cdef Py_ssize_t n_bounds
    cdef double bounds[MAX_LATENCY_BUCKETS]
    cdef unsigned long long counts[MAX_LATENCY_BUCKETS + 1]
    cdef readonly double latency_sum_s
    cdef readonly unsigned long long accepted
    cdef readonly unsigned long long rejected
    cdef readonly dict failures_by_code

    cdef int count(self, tuple failure_codes, double latency_s) except -1


# An accepted order the venue has not finished yet.
cdef class WorkingOrder:
    cdef public tuple key
    cdef public int64_t handle
    cdef public int64_t remaining_nanos
    cdef public object stream  # the OrderStream that owns it (cancel on disconnect), or None
    cdef public uint64_t decision_sequence


# The state the order path reads on every order; OrderGate (a Python subclass) the rest.
cdef class OrderPath:
    cdef public object engine
    cdef public object outbox
    cdef public object publisher
    cdef public str gateway_id
    cdef public object working  # (account, client_order_id) -> WorkingOrder
    # False while the gateway cannot read or follow the halt state: every order is then
    # rejected with HALT_STATE_UNAVAILABLE (a halt might be in force). The app clears it
    # until its halt follower has loaded the state.
    cdef public bint halt_state_available
    cdef public object _metrics
    cdef DecisionCounters _counters
    cdef public object _clock
    cdef public object _replies
    cdef public uint64_t _next_sequence
    cdef public bytes _gateway_id_bytes
    cdef public object _rules_version
    cdef public bytes _rules_version_utf8

    cdef void _observe(self, Py_ssize_t replays, list observations)
    cdef tuple _decide_one(self, WireOrder order, uint64_t sequence, int64_t received_ns, stream)
    cpdef bytes rules_version_bytes(self)
    cdef WorkingOrder _track(self, WireOrder order, int64_t handle, stream, uint64_t decision_sequence)

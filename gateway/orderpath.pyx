# cython: language_level=3, boundscheck=False, wraparound=False
"""The order path of ``gateway.servicer.OrderGate``, compiled.

Why compiled
    Interpreted, the bookkeeping around the kernel (sequence numbers, idempotency memory,
    working-order tracking, latency sampling, the records for the outbox) cost ~1.8 µs per
    order: more than the kernel, the decision encoding and the outbox append together.
    Here the same steps run as C with typed locals; what they call (the engine, the outbox,
    the publisher, the metrics) is unchanged, so behaviour and fault handling are those
    described in ``gateway.servicer``, which holds everything else of the order gate
    (:class:`OrderGate` extends :class:`OrderPath`).

Threading: like the rest of the servicer, call from the event loop thread only.
"""

from libc.stdint cimport int64_t, uint64_t
from posix.time cimport CLOCK_MONOTONIC, clock_gettime, timespec

from gateway.orders cimport WireOrder
from gateway.wire cimport encode_decision

import logging

from fastpath.codes import Check
from gateway.wire import REPLAYED_SUFFIX
from pretrade.v1 import types_pb2

log = logging.getLogger("gateway.servicer")

cdef int VERDICT_ACCEPT = types_pb2.VERDICT_ACCEPT
cdef int VERDICT_REJECT = types_pb2.VERDICT_REJECT
cdef tuple NO_FAILURES = ()
cdef list NO_FAILURE_MESSAGES = []


cdef inline double monotonic_s() noexcept nogil:
    """``time.perf_counter()`` without the Python call (the same clock on Linux)."""
    cdef timespec now
    clock_gettime(CLOCK_MONOTONIC, &now)
    return now.tv_sec + now.tv_nsec * 1e-9


cdef class DecisionCounters:
    """The per-decision metrics as plain C counters, bumped by the order path without a
    Python call and exported at scrape time by ``gateway.metrics.DecisionStats``:
    decisions per latency bucket (``bucket_bounds`` in seconds, not cumulative, the last
    one +Inf), the latency sum, accepted and rejected decisions, failed checks by code.

    Threading: one writer, the event loop thread; the scrape reads without a lock (see
    ``DecisionStats``). ``failures_by_code`` has every code from the start, so a scrape
    iterating it never sees it change size.
    """

    def __init__(self, bucket_bounds, codes):
        bounds = tuple(sorted(float(bound) for bound in bucket_bounds))
        if len(bounds) > MAX_LATENCY_BUCKETS:
            raise ValueError(f"at most {MAX_LATENCY_BUCKETS} latency buckets, got {len(bounds)}")
        self.bucket_bounds = bounds
        self.n_bounds = len(bounds)
        for index, bound in enumerate(bounds):
            self.bounds[index] = bound
        for index in range(self.n_bounds + 1):
            self.counts[index] = 0
        self.latency_sum_s = 0.0
        self.accepted = 0
        self.rejected = 0
        self.failures_by_code = dict.fromkeys(codes, 0)

    cdef int count(self, tuple failure_codes, double latency_s) except -1:
        cdef Py_ssize_t bucket = 0
        while bucket < self.n_bounds and self.bounds[bucket] < latency_s:
            bucket += 1
        self.counts[bucket] += 1
        self.latency_sum_s += latency_s
        if not failure_codes:
            self.accepted += 1
            return 0
        self.rejected += 1
        for code in failure_codes:
            self.failures_by_code[code] += 1
        return 0

    def observe(self, failure_codes, double latency_s):
        """Count one decided order that took ``latency_s``: accepted when ``failure_codes``
        (the reason codes of its failed checks) is empty, else rejected."""
        self.count(tuple(failure_codes), latency_s)

    def bucket_counts(self):
        """Decisions per latency bucket, the last one +Inf (not cumulative)."""
        return [self.counts[index] for index in range(self.n_bounds + 1)]


cdef class WorkingOrder:
    """An accepted order the venue has not finished yet, as the servicer tracks it (made
    by :meth:`OrderPath._track`)."""


cdef class OrderPath:
    """Deciding and recording orders: :meth:`decide` (see ``OrderGate`` for the rest)."""

    def __init__(self, engine, outbox, publisher, str gateway_id, metrics, clock, replies):
        self.engine = engine
        self.outbox = outbox
        self.publisher = publisher
        self.gateway_id = gateway_id
        self._metrics = metrics
        self._counters = metrics.decision_counters if metrics is not None else None
        self._clock = clock
        self._replies = replies
        self.working = {}
        self._next_sequence = outbox.last_sequence + 1
        self._gateway_id_bytes = gateway_id.encode()
        self._rules_version = None
        self._rules_version_utf8 = b""
        self.halt_state_available = True

    @property
    def last_sequence(self):
        """Sequence of the last decision recorded."""
        return self._next_sequence - 1

    def decide(self, orders, stream=None):
        """Decide well-formed orders (:class:`gateway.orders.WireOrder`) in order, record the
        new decisions, return every decision (replays included) serialized, in request
        order. The bytes are those recorded in the outbox (and so published and
        ledgered); the servicer frames them into its responses as they are
        (:mod:`gateway.wire`)."""
        cdef int64_t received_ns = self._clock()
        cdef list payloads = []
        cdef list records = []
        cdef list remembered = []
        cdef list accepted = []
        cdef list observations = []
        cdef WireOrder order
        cdef object reply_key
        cdef object original
        cdef uint64_t sequence
        cdef double started
        cdef tuple outcome
        cdef bytes payload
        for order in orders:
            started = monotonic_s()
            reply_key = None
            if order.request_id:
                reply_key = (order.account, order.request_id)
                original = self._replies.get(reply_key)
                if original is not None:
                    payloads.append(original + REPLAYED_SUFFIX)
                    continue
            sequence = self._next_sequence
            self._next_sequence = sequence + 1
            outcome = self._decide_one(order, sequence, received_ns, stream)
            payload = outcome[0]
            payloads.append(payload)
            records.append((sequence, payload))
            if outcome[2] is not None:
                accepted.append(outcome[2])
            if reply_key is not None:
                self._replies.remember(reply_key, payload)
                remembered.append(reply_key)
            observations.append((outcome[1], monotonic_s() - started))
        if records:
            try:
                self.outbox.append(records)
            except Exception as exc:
                log.exception("decision log append failed; rejecting %d orders unrecorded", len(records))
                self._undo_unrecorded(orders, payloads, accepted, remembered, received_ns, exc)
                return payloads
            self.publisher.notify()
        if self._counters is not None:
            self._observe(len(orders) - len(observations), observations)
        return payloads

    cdef void _observe(self, Py_ssize_t replays, list observations):
        """Metrics of a decided batch, once it is recorded; a metrics failure must not turn
        recorded decisions into an error response."""
        cdef tuple observation
        try:
            if replays:
                self._metrics.replays.inc(replays)
            for observation in observations:
                self._counters.count(observation[0], observation[1])
        except Exception:
            log.exception("recording decision metrics failed")

    cdef tuple _decide_one(self, WireOrder order, uint64_t sequence, int64_t received_ns, stream):
        """(serialized decision, codes of the failed checks (empty when accepted), new
        WorkingOrder or None) of one order. Never raises: a failure anywhere becomes an
        INTERNAL_ERROR reject."""
        if not self.halt_state_available:
            return self._gateway_reject(
                order, sequence, received_ns, Check.HALT_STATE_UNAVAILABLE, "halt_state=unavailable"
            )
        cdef int64_t handle = -1
        cdef int64_t decided_ns
        cdef bytes payload
        engine = self.engine
        try:
            decided_ns = self._clock()  # the kernel's "now": rates, staleness and the record agree
            result = engine.check(
                order.account,
                order.symbol,
                order.strategy,
                order.side,
                order.order_type,
                order.quantity_nanos,
                order.price_nanos,
                order.client_order_id,
                decided_ns,
            )
            if result.accepted:
                handle = result.handle
                payload = encode_decision(
                    VERDICT_ACCEPT, NO_FAILURE_MESSAGES, sequence, self._gateway_id_bytes,
                    self.rules_version_bytes(), received_ns, decided_ns, order.encoded, handle,
                )
                return payload, NO_FAILURES, self._track(order, handle, stream, sequence)
            failures = engine.failures(result)
            payload = encode_decision(
                VERDICT_REJECT,
                [
                    types_pb2.CheckFailure(
                        code=failure.code.name,
                        limit=failure.limit,
                        observed=failure.observed,
                        rule_path=failure.rule_path or "",
                        detail=failure.detail,
                    ).SerializeToString()
                    for failure in failures
                ],
                sequence, self._gateway_id_bytes, self.rules_version_bytes(),
                received_ns, decided_ns, order.encoded, 0,
            )
            return payload, tuple([failure.code.name for failure in failures]), None
        except Exception as exc:
            log.exception(
                "order path failed for %s/%s; rejecting with INTERNAL_ERROR",
                order.account,
                order.client_order_id,
            )
            if handle >= 0:
                self._release_quietly(handle)
            return self._gateway_reject(
                order, sequence, received_ns, Check.INTERNAL_ERROR, f"error={type(exc).__name__}"
            )

    cpdef bytes rules_version_bytes(self):
        """The engine's rules version as UTF-8, encoded once per rules (reload) version."""
        version = self.engine.version
        if version is not self._rules_version:
            self._rules_version = version
            self._rules_version_utf8 = version.encode()
        return self._rules_version_utf8

    cdef WorkingOrder _track(self, WireOrder order, int64_t handle, stream, uint64_t decision_sequence):
        cdef tuple key = (order.account, order.client_order_id)
        cdef WorkingOrder working = WorkingOrder.__new__(WorkingOrder)
        working.key = key
        working.handle = handle
        working.remaining_nanos = order.quantity_nanos
        working.stream = stream
        working.decision_sequence = decision_sequence
        previous = self.working.get(key)
        if previous is not None:  # the kernel forgot the old id; the venue cannot mean both
            self._forget(previous)
        self.working[key] = working
        if stream is not None:
            stream.working.add(working)
        return working

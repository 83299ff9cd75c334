# cython: language_level=3
"""The compiled pre-trade kernel: ``fastpath.reference.ReferenceKernel``, made fast.

Same constructor, same methods, same results for the same call sequence: the parity suite
drives both and compares every decision, detail and state reader. What differs is how:

* rules are read from the flattened ``RuleTables`` through a :class:`RuleView` (typed
  memoryviews, validated once per install) instead of resolving the model on every call;
* state lives in numpy blocks owned by the kernel, read through typed pointers: per-id
  records for accounts, strategies and symbols, an open-addressing table from
  ``account_id << 32 | symbol_id`` to dense position records, fixed order slots with a LIFO
  free stack, and a ring plus open-addressing set for client order ids;
* all arithmetic is integer and exact: 64-bit where it provably fits (checked with GCC's
  overflow builtins, or by the value ranges the tables and the order path guarantee),
  ``__int128`` otherwise; every value reported in a detail saturates to int64 exactly as
  ``fixedpoint.saturate`` does;
* :meth:`Kernel.decide` is written for the order that passes: limits are compared as
  ``min(account chain, symbol cap)`` of packed records, and what only explains a failure
  (rule paths, the scope a limit came from, wide observed values) is worked out in the
  branch of that failure, from the tables as written;
* the per-order core (:meth:`Kernel.decide`) touches no Python object and runs without the
  GIL; :meth:`Kernel.check_batch` runs a whole batch in it with the GIL released, as a
  software pipeline that prefetches the records of the orders ahead (at 10 000 accounts
  and symbols most of them are cache misses, and hiding those more than halves the cost).
"""

cimport cython
from cpython.pythread cimport (
    NOWAIT_LOCK,
    WAIT_LOCK,
    PyThread_acquire_lock,
    PyThread_allocate_lock,
    PyThread_free_lock,
    PyThread_release_lock,
)
from libc.stdint cimport INT64_MAX, INT64_MIN, UINT64_MAX, int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t
from libc.string cimport memcpy

import math

import numpy as np

from fastpath.reference import DEFAULT_CLIENT_ORDER_ID_MEMORY, DEFAULT_MAX_ORDERS, DEFAULT_MAX_POSITIONS

# ---------------------------------------------------------------------------------------
# Constants
# ---------------------------------------------------------------------------------------
cdef enum:
    NO_PATH = -1
    HANDLE_SLOT_BITS = 32
    CACHE_LINE = 64
    #: How far ahead check_batch prefetches: an order's rule and state records and hash
    #: slots this many orders ahead, its position record half as far ahead (once its table
    #: slot is in), the first working order of its pair a quarter as far ahead.
    PREFETCH_DISTANCE = 8
    PIPELINE_SIZE = 16  # a power of two > PREFETCH_DISTANCE: tickets of the orders ahead
    PIPELINE_MASK = PIPELINE_SIZE - 1

# Compile-time constants (C macros, so divisions by them become multiplications).
cdef extern from *:
    """
    /* The empty volatile asm makes a prefetch a side effect: without it GCC deems a
       function that only prefetches pure and deletes the calls to it. */
    #define PT_PREFETCH(address) do { \
        __builtin_prefetch((const void *)(address), 1, 3); \
        __asm__ volatile("" : : "r"(address)); \
    } while (0)
    #define PT_LIKELY(condition) __builtin_expect(!!(condition), 1)
    #define PT_UNLIKELY(condition) __builtin_expect(!!(condition), 0)
    #define PT_LIMIT_UNSET ((int64_t)-1)
    #define PT_LIMIT_UNLIMITED INT64_MAX
    #define PT_PPM_SCALE ((int64_t)1000000)
    #define PT_PRICE_SCALE ((int64_t)1000000000)
    #define PT_NANOS_PER_NOTIONAL_MICRO_SQUARED ((int64_t)1000000000000)
    #define PT_HANDLE_SLOT_MASK ((uint64_t)0xFFFFFFFF)
    #define PT_GENERATION_MASK ((uint32_t)0x7FFFFFFF)
    #define PT_MAX_INDEXED_ID ((int64_t)0x7FFFFFFF)
    """
    void PT_PREFETCH(const void* address) noexcept nogil
    bint likely "PT_LIKELY"(bint condition) noexcept nogil
    # GCC's checked arithmetic: true when the exact result does not fit ``*result``
    bint add_overflows "__builtin_add_overflow"(int64_t a, int64_t b, int64_t* result) noexcept nogil
    bint sub_overflows "__builtin_sub_overflow"(int64_t a, int64_t b, int64_t* result) noexcept nogil
    bint mul_overflows_u64 "__builtin_mul_overflow"(uint64_t a, uint64_t b, uint64_t* result) noexcept nogil
    bint unlikely "PT_UNLIKELY"(bint condition) noexcept nogil
    const int64_t LIMIT_UNSET "PT_LIMIT_UNSET"
    const int64_t LIMIT_UNLIMITED "PT_LIMIT_UNLIMITED"
    const int64_t PPM_SCALE "PT_PPM_SCALE"
    const int64_t PRICE_SCALE "PT_PRICE_SCALE"
    const int64_t NANOS_PER_NOTIONAL_MICRO_SQUARED "PT_NANOS_PER_NOTIONAL_MICRO_SQUARED"  # 1e9 ** 2 / 1e6
    const uint64_t HANDLE_SLOT_MASK "PT_HANDLE_SLOT_MASK"
    const uint32_t GENERATION_MASK "PT_GENERATION_MASK"  # handles stay positive int64
    const int64_t MAX_INDEXED_ID "PT_MAX_INDEXED_ID"  # ids are int32 in batches and in pair keys

#: The C enums of kernel.pxd by fastpath.codes class and member name (tests compare them).
ENUMS = {
    "Check": {
        "INVALID_SIDE": CHECK_INVALID_SIDE,
        "INVALID_ORDER_TYPE": CHECK_INVALID_ORDER_TYPE,
        "INVALID_QUANTITY": CHECK_INVALID_QUANTITY,
        "INVALID_PRICE": CHECK_INVALID_PRICE,
        "UNKNOWN_ACCOUNT": CHECK_UNKNOWN_ACCOUNT,
        "UNKNOWN_SYMBOL": CHECK_UNKNOWN_SYMBOL,
        "UNKNOWN_STRATEGY": CHECK_UNKNOWN_STRATEGY,
        "PRICE_OFF_TICK": CHECK_PRICE_OFF_TICK,
        "QUANTITY_OFF_LOT": CHECK_QUANTITY_OFF_LOT,
        "REFERENCE_PRICE_MISSING": CHECK_REFERENCE_PRICE_MISSING,
        "REFERENCE_PRICE_STALE": CHECK_REFERENCE_PRICE_STALE,
        "MISSING_LIMIT": CHECK_MISSING_LIMIT,
        "TRADING_HALTED": CHECK_TRADING_HALTED,
        "REDUCE_ONLY_VIOLATION": CHECK_REDUCE_ONLY_VIOLATION,
        "SYMBOL_RESTRICTED": CHECK_SYMBOL_RESTRICTED,
        "MAX_ORDER_QTY_EXCEEDED": CHECK_MAX_ORDER_QTY_EXCEEDED,
        "MAX_ORDER_NOTIONAL_EXCEEDED": CHECK_MAX_ORDER_NOTIONAL_EXCEEDED,
        "PRICE_COLLAR_BREACHED": CHECK_PRICE_COLLAR_BREACHED,
        "CREDIT_LIMIT_EXCEEDED": CHECK_CREDIT_LIMIT_EXCEEDED,
        "LONG_POSITION_LIMIT_EXCEEDED": CHECK_LONG_POSITION_LIMIT_EXCEEDED,
        "SHORT_POSITION_LIMIT_EXCEEDED": CHECK_SHORT_POSITION_LIMIT_EXCEEDED,
        "ACCOUNT_ORDER_RATE_EXCEEDED": CHECK_ACCOUNT_ORDER_RATE_EXCEEDED,
        "STRATEGY_ORDER_RATE_EXCEEDED": CHECK_STRATEGY_ORDER_RATE_EXCEEDED,
        "DUPLICATE_CLIENT_ORDER_ID": CHECK_DUPLICATE_CLIENT_ORDER_ID,
        "DUPLICATE_ORDER_CONTENT": CHECK_DUPLICATE_ORDER_CONTENT,
        "MAX_WORKING_ORDERS_EXCEEDED": CHECK_MAX_WORKING_ORDERS_EXCEEDED,
        "SELF_MATCH_PREVENTED": CHECK_SELF_MATCH_PREVENTED,
        "STATE_CAPACITY_EXHAUSTED": CHECK_STATE_CAPACITY_EXHAUSTED,
        "INTERNAL_ERROR": CHECK_INTERNAL_ERROR,
        "HALT_STATE_UNAVAILABLE": CHECK_HALT_STATE_UNAVAILABLE,
    },
    "Side": {
        "UNSPECIFIED": SIDE_UNSPECIFIED,
        "BUY": SIDE_BUY,
        "SELL": SIDE_SELL,
        "SELL_SHORT": SIDE_SELL_SHORT,
    },
    "OrderType": {
        "UNSPECIFIED": ORDER_TYPE_UNSPECIFIED,
        "LIMIT": ORDER_TYPE_LIMIT,
        "MARKET": ORDER_TYPE_MARKET,
    },
    "TradingState": {
        "ACTIVE": TRADING_STATE_ACTIVE,
        "REDUCING": TRADING_STATE_REDUCING,
        "HALTED": TRADING_STATE_HALTED,
    },
    "Scope": {
        "FIRM": SCOPE_FIRM,
        "ACCOUNT": SCOPE_ACCOUNT,
        "STRATEGY": SCOPE_STRATEGY,
        "SYMBOL": SCOPE_SYMBOL,
    },
    "ExecStatus": {
        "OK": EXEC_OK,
        "UNKNOWN_ORDER": EXEC_UNKNOWN_ORDER,
        "OVERFILL": EXEC_OVERFILL,
        "INVALID_QUANTITY": EXEC_INVALID_QUANTITY,
        "INVALID_PRICE": EXEC_INVALID_PRICE,
    },
    "LimitKind": {
        "MAX_ORDER_QTY": LIMIT_KIND_MAX_ORDER_QTY,
        "MAX_ORDER_NOTIONAL": LIMIT_KIND_MAX_ORDER_NOTIONAL,
        "MAX_LONG_POSITION": LIMIT_KIND_MAX_LONG_POSITION,
        "MAX_SHORT_POSITION": LIMIT_KIND_MAX_SHORT_POSITION,
        "PRICE_COLLAR_PPM": LIMIT_KIND_PRICE_COLLAR_PPM,
        "PRICE_COLLAR_TICKS": LIMIT_KIND_PRICE_COLLAR_TICKS,
    },
    "MissingLimit": {
        "MAX_ORDER_QTY": MISSING_MAX_ORDER_QTY,
        "MAX_ORDER_NOTIONAL": MISSING_MAX_ORDER_NOTIONAL,
        "MAX_LONG_POSITION": MISSING_MAX_LONG_POSITION,
        "MAX_SHORT_POSITION": MISSING_MAX_SHORT_POSITION,
        "PRICE_COLLAR": MISSING_PRICE_COLLAR,
        "CREDIT_LIMIT": MISSING_CREDIT_LIMIT,
        "MAX_WORKING_ORDERS": MISSING_MAX_WORKING_ORDERS,
        "ACCOUNT_ORDER_RATE": MISSING_ACCOUNT_ORDER_RATE,
        "STRATEGY_ORDER_RATE": MISSING_STRATEGY_ORDER_RATE,
    },
}

#: Scalar constants the kernel is compiled with, by fastpath.codes / reference name.
CONSTANTS = {
    "N_CHECKS": N_CHECKS,
    "N_LIMIT_KINDS": N_LIMIT_KINDS,
    "LIMIT_UNSET": LIMIT_UNSET,
    "LIMIT_UNLIMITED": LIMIT_UNLIMITED,
    "PPM_SCALE": PPM_SCALE,
    "PRICE_SCALE": PRICE_SCALE,
    "CONTENT_MEMORY_PER_POSITION": CONTENT_MEMORY_PER_POSITION,
}

#: Bytes per record of kernel.pxd (whole cache lines or halves; a test holds them there).
RECORD_SIZES = {
    "AccountRule": sizeof(AccountRule),
    "SymbolRule": sizeof(SymbolRule),
    "StrategyRule": sizeof(StrategyRule),
    "AccountState": sizeof(AccountState),
    "StrategyState": sizeof(StrategyState),
    "SymbolState": sizeof(SymbolState),
    "PositionState": sizeof(PositionState),
    "OrderSlot": sizeof(OrderSlot),
}


# ---------------------------------------------------------------------------------------
# Exact integer arithmetic (the definitions are in fastpath/fixedpoint.py and reference.py)
# ---------------------------------------------------------------------------------------
cdef inline int64_t saturate(pt_i128 value) noexcept nogil:
    if value > INT64_MAX:
        return INT64_MAX
    if value < INT64_MIN:
        return INT64_MIN
    return <int64_t>value


cdef inline pt_i128 ceil_div(pt_i128 numerator, int64_t denominator) noexcept nogil:
    """Python's ``-(-n // d)`` for ``d > 0``: C truncates toward zero, which already is the
    ceiling for a negative numerator."""
    cdef pt_i128 quotient = numerator / denominator
    if numerator > 0 and quotient * denominator != numerator:
        quotient += 1
    return quotient


cdef inline pt_u128 mul_div(uint64_t a, uint64_t b, uint64_t divisor, bint round_up) noexcept nogil:
    """``a * b / divisor`` rounded down or up, for ``divisor < 2**32``, without a 128-bit
    division (a library call): with ``a = ah * d + al`` and ``b = bh * d + bl``,
    ``a * b / d = ah * b + al * bh + al * bl / d`` where only ``al * bl < d**2`` is divided,
    by a constant once inlined."""
    cdef uint64_t a_high = a / divisor
    cdef uint64_t a_low = a % divisor
    cdef uint64_t b_high = b / divisor
    cdef uint64_t low_product = a_low * (b % divisor)
    cdef uint64_t low_quotient = low_product / divisor
    if round_up and low_quotient * divisor != low_product:
        low_quotient += 1
    return <pt_u128>a_high * b + <pt_u128>a_low * b_high + low_quotient


cdef inline int64_t notional_micros(int64_t qty, int64_t price, int64_t multiplier) noexcept nogil:
    """``fixedpoint.notional_micros``: ``ceil(ceil(qty * price / 1e9) * multiplier / 1e12)``.

    Arguments are >= 0 (the order path and the fills guarantee it; the multiplier is
    validated >= 1). A multiplier with at most six decimals (a multiple of 1000 nanos, i.e.
    every real one) makes the second step ``ceil(contract * (multiplier / 1000) / 1e9)``,
    so both steps take the division-free path; the others divide in 128 bits.
    """
    cdef pt_u128 contract_value = mul_div(qty, price, PRICE_SCALE, True)
    if contract_value > <pt_u128>INT64_MAX:
        return INT64_MAX
    if multiplier % 1000 == 0:
        return saturate(mul_div(<uint64_t>contract_value, multiplier // 1000, PRICE_SCALE, True))
    return saturate(ceil_div(<pt_i128>contract_value * multiplier, NANOS_PER_NOTIONAL_MICRO_SQUARED))


cdef inline pt_i128 refill(int64_t tokens, int64_t last_ns, int64_t now_ns, int64_t orders,
                           int64_t window_ns) noexcept nogil:
    """``reference._refill``: the bucket level at ``now_ns`` in token-nanoseconds."""
    cdef pt_i128 capacity = <pt_i128>orders * window_ns
    cdef pt_i128 elapsed
    cdef pt_i128 level
    if tokens < 0:
        return capacity
    elapsed = <pt_i128>now_ns - last_ns
    if elapsed <= 0:
        return tokens if tokens < capacity else capacity
    if elapsed >= window_ns:
        return capacity
    level = tokens + <pt_i128>(<int64_t>elapsed) * orders  # 0 < elapsed < window_ns: fits int64
    return level if level < capacity else capacity


cdef inline bint rate_applies(int64_t orders) noexcept nogil:
    return orders != LIMIT_UNSET and orders != LIMIT_UNLIMITED


cdef inline int64_t refill_fast(int64_t tokens, int64_t last_ns, int64_t now_ns, int64_t orders,
                                int64_t window_ns, int64_t capacity) noexcept nogil:
    """:func:`refill` for a bucket in ``RATE_MODE_FAST`` (``orders >= 1``, ``window_ns >= 0``,
    ``capacity = orders * window_ns`` fits int64): the same value, in 64 bits. Below
    ``window_ns`` elapsed, ``elapsed * orders < capacity``, so the sum of two int64 values
    >= 0 fits uint64 before it is capped."""
    cdef int64_t elapsed
    cdef uint64_t level
    if tokens < 0:
        return capacity
    if unlikely(sub_overflows(now_ns, last_ns, &elapsed)):
        return <int64_t>refill(tokens, last_ns, now_ns, orders, window_ns)
    if elapsed <= 0:
        return tokens if tokens < capacity else capacity
    if elapsed >= window_ns:
        return capacity
    level = <uint64_t>tokens + <uint64_t>(elapsed * orders)
    return <int64_t>level if level < <uint64_t>capacity else capacity


cdef inline pt_i128 bucket_level(Verdict* verdict, int code, uint8_t mode, int64_t tokens, int64_t last_ns,
                                 int64_t now_ns, int64_t orders, int64_t window_ns, int64_t capacity,
                                 const int32_t* path) noexcept nogil:
    """The level at ``now_ns`` of an order-rate bucket that applies (``RATE_MODE_FAST`` or
    ``RATE_MODE_WIDE``); fails ``code`` (retry-after as observed) when it holds less than
    one order. ``path`` is read only then."""
    cdef pt_i128 level
    if likely(mode == RATE_MODE_FAST):
        level = refill_fast(tokens, last_ns, now_ns, orders, window_ns, capacity)
    else:
        level = refill(tokens, last_ns, now_ns, orders, window_ns)
    if unlikely(level < window_ns):
        fail(verdict, code, orders, ceil_div(window_ns - level, orders), path[0])
    return level


cdef uint8_t rate_mode(int64_t orders, int64_t window_ns, int64_t* capacity) noexcept:
    """How the order path evaluates a rate limit (see ``RateMode``); sets the capacity of a
    fast one."""
    cdef pt_i128 wide = <pt_i128>orders * window_ns
    capacity[0] = 0
    if not rate_applies(orders):
        return RATE_MODE_NONE
    if orders >= 1 and window_ns >= 0 and wide <= INT64_MAX:
        capacity[0] = <int64_t>wide
        return RATE_MODE_FAST
    return RATE_MODE_WIDE


cdef inline int64_t fast_limit(int64_t limit) noexcept nogil:
    """A limit as the records hold it: ``LIMIT_UNSET`` reads as no bound (INT64_MAX)."""
    return INT64_MAX if limit == LIMIT_UNSET else limit


cdef inline int64_t min64(int64_t a, int64_t b) noexcept nogil:
    return a if a <= b else b


cdef inline uint64_t div_ceil_u64(uint64_t numerator, uint64_t divisor) noexcept nogil:
    cdef uint64_t quotient = numerator / divisor
    return quotient + (quotient * divisor != numerator)


cdef inline int64_t order_notional(int64_t qty, int64_t price, const SymbolRule* symbol) noexcept nogil:
    """:func:`notional_micros` of an order (``qty`` and ``price`` > 0), by a shorter road
    when it can: a whole number of units times the price needs no rounding in the first
    step, and a product that fits 64 bits needs one division by the reduced denominator in
    the second. Anything else takes :func:`notional_micros` itself; the value is the same."""
    cdef uint64_t units = <uint64_t>qty / <uint64_t>PRICE_SCALE
    cdef pt_u128 contract
    cdef pt_u128 scaled
    if units * <uint64_t>PRICE_SCALE != <uint64_t>qty:
        return notional_micros(qty, price, symbol.multiplier)
    contract = <pt_u128>units * <uint64_t>price
    if contract > <pt_u128>INT64_MAX:
        return INT64_MAX
    scaled = contract * symbol.multiplier_num
    if scaled >> 64:
        return notional_micros(qty, price, symbol.multiplier)
    return saturate(div_ceil_u64(<uint64_t>scaled, symbol.multiplier_den))


cdef inline uint64_t mix64(uint64_t value) noexcept nogil:
    """splitmix64's finalizer: spreads sequential pair keys and client keys over a table."""
    value = (value ^ (value >> 30)) * <uint64_t>0xBF58476D1CE4E5B9
    value = (value ^ (value >> 27)) * <uint64_t>0x94D049BB133111EB
    return value ^ (value >> 31)


cdef inline void fail(Verdict* verdict, int code, pt_i128 limit, pt_i128 observed,
                      int32_t path) noexcept nogil:
    verdict.failed |= (<uint64_t>1) << code
    verdict.limits[code] = saturate(limit)
    verdict.observed[code] = saturate(observed)
    verdict.paths[code] = path


cdef inline int64_t cross_price(int64_t side, int64_t order_type, int64_t price) noexcept nogil:
    """``reference.cross_price``: a limit order's price, or a market order's most aggressive."""
    if order_type == ORDER_TYPE_LIMIT:
        return price
    return INT64_MAX if side == SIDE_BUY else 0


cdef inline void prepare_ticket(OrderTicket* order) noexcept nogil:
    """Derive the pair key and the two hashes of an order (once, for every stage)."""
    order.pair_key = <int64_t>((<uint64_t>order.account_id << 32) | <uint32_t>order.symbol_id)
    order.pair_hash = mix64(<uint64_t>order.pair_key)
    order.key_hash = mix64(<uint64_t>order.client_order_key)
    order.position_index = -1


cdef inline void load_ticket(OrderTicket* order, const OrderColumns* columns, Py_ssize_t i) noexcept nogil:
    """Order ``i`` of a batch, read from its columns and prepared."""
    order.account_id = columns.account_ids[i]
    order.symbol_id = columns.symbol_ids[i]
    order.strategy_id = columns.strategy_ids[i]
    # (each branch widened on its own: a conditional of int8 and uint8 would be uint8)
    order.side = <int64_t><int8_t>columns.sides[i] if columns.sides_signed else <int64_t>columns.sides[i]
    order.order_type = (
        <int64_t><int8_t>columns.order_types[i] if columns.order_types_signed else <int64_t>columns.order_types[i]
    )
    order.qty = columns.qtys[i]
    order.price = columns.prices[i]
    order.client_order_key = columns.keys[i]
    order.now_ns = columns.now_ns[i] if columns.now_ns != NULL else columns.now_scalar
    prepare_ticket(order)


#: What an account x symbol pair without a position record reads as: nothing held, no
#: working order, no recent order.
cdef PositionState NO_POSITION
NO_POSITION.first_order = -1

#: What a new per-id state record starts as: active, nothing reserved, rate buckets full
#: (never charged).
cdef AccountState FRESH_ACCOUNT
FRESH_ACCOUNT.rate_tokens = -1
cdef StrategyState FRESH_STRATEGY
FRESH_STRATEGY.rate_tokens = -1
cdef SymbolState FRESH_SYMBOL


# ---------------------------------------------------------------------------------------
# Memory blocks
# ---------------------------------------------------------------------------------------
cdef object zeroed_block(Py_ssize_t count, size_t record_size):
    """A zeroed numpy byte block for ``count`` records (at least one, so it has an
    address), with room to start them on a cache line (see :func:`block_address`)."""
    return np.zeros((count if count > 0 else 1) * record_size + CACHE_LINE, dtype=np.uint8)


cdef void* block_address(object block) except NULL:
    """The first cache-line boundary in a block from :func:`zeroed_block`."""
    cdef uint8_t[::1] raw = block
    return <void*>((<size_t>&raw[0] + CACHE_LINE - 1) & ~(<size_t>CACHE_LINE - 1))


cdef object grown_records(object block, void** records, Py_ssize_t* capacity, Py_ssize_t needed,
                          size_t record_size, const void* fresh):
    """The block of an array of per-id records with room for ``needed`` ids: ``block``
    itself when it has, else a new one (its capacity at least doubled) holding a copy of
    the records, with ``fresh`` copied into every new record; ``records`` and ``capacity``
    are updated to it. The caller keeps the returned block (it owns the memory)."""
    cdef Py_ssize_t old_capacity = capacity[0]
    cdef Py_ssize_t new_capacity
    cdef Py_ssize_t i
    cdef char* new_records
    if needed <= old_capacity:
        return block
    new_capacity = grown_capacity(old_capacity, needed)
    new_block = zeroed_block(new_capacity, record_size)
    new_records = <char*>block_address(new_block)
    if old_capacity:
        memcpy(new_records, records[0], old_capacity * record_size)
    for i in range(old_capacity, new_capacity):
        memcpy(new_records + i * record_size, fresh, record_size)
    records[0] = new_records
    capacity[0] = new_capacity
    return new_block


cdef tuple shared_records(const char* records, Py_ssize_t count, size_t record_size):
    """The distinct records among ``count`` of them, by their bytes (the blocks are zeroed,
    so padding compares equal): ``(block of the distinct records, block of one uint32
    index into it per record, number of distinct records)``."""
    cdef Py_ssize_t i
    cdef uint32_t* index
    cdef char* distinct
    seen = {}
    index_block = zeroed_block(count, sizeof(uint32_t))
    index = <uint32_t*>block_address(index_block)
    for i in range(count):
        index[i] = seen.setdefault(records[i * record_size:(i + 1) * record_size], len(seen))
    block = zeroed_block(len(seen), record_size)
    distinct = <char*>block_address(block)
    for record, i in seen.items():
        memcpy(distinct + i * record_size, <const char*>record, record_size)
    return block, index_block, len(seen)


cdef Py_ssize_t power_of_two_at_least(Py_ssize_t wanted):
    cdef Py_ssize_t size = 2
    while size < wanted:
        size <<= 1
    return size


cdef Py_ssize_t grown_capacity(Py_ssize_t capacity, Py_ssize_t needed):
    """Double at least, so interning names one by one does not copy the block each time."""
    return needed if needed > 2 * capacity else 2 * capacity


# ---------------------------------------------------------------------------------------
# Rule tables
# ---------------------------------------------------------------------------------------
_ACCOUNT_ARRAYS = (
    "account_active", "account_limits", "account_limit_paths", "account_credit_limit",
    "account_credit_path", "account_max_working", "account_max_working_path",
    "account_rate_orders", "account_rate_window_ns", "account_rate_path", "account_self_match",
    "account_dup_window_ns",
)
_SYMBOL_ARRAYS = (
    "symbol_active", "symbol_tick", "symbol_tick_path", "symbol_lot", "symbol_lot_path",
    "symbol_multiplier", "symbol_max_ref_age_ns", "symbol_max_ref_age_path", "symbol_limits",
    "symbol_limit_paths", "symbol_restricted_sides", "symbol_restricted_path",
)
_STRATEGY_ARRAYS = (
    "strategy_active", "strategy_rate_orders", "strategy_rate_window_ns", "strategy_rate_path",
)
_OVERRIDE_ARRAYS = (
    "override_keys", "override_limits", "override_limit_paths", "override_restricted_sides",
    "override_restricted_path",
)
_PER_KIND_ARRAYS = frozenset({
    "account_limits", "account_limit_paths", "symbol_limits", "symbol_limit_paths",
    "override_limits", "override_limit_paths",
})


cdef class RuleView:
    """Typed views of every ``RuleTables`` array, built once per install.

    An order reads some twenty values of its account and as many of its symbol; spread over
    the tables' two dozen arrays that is two dozen cache lines, which at 10 000 accounts
    and symbols are mostly misses. So the view also packs what the order path reads of
    each account, symbol and strategy into one record (:c:type:`AccountRule`,
    :c:type:`SymbolRule`, :c:type:`StrategyRule`: two lines, two lines, half a line), in
    the form it compares: unset limits read INT64_MAX, which limits are unset and which
    ``MISSING_LIMIT`` bits an id contributes are bit masks, rate buckets carry their mode
    and capacity, the multiplier its reduced fraction of 1e12. Accounts (and symbols)
    whose records come out byte for byte the same share one: at 10 000 accounts most use
    the firm's defaults, so what an order reads of its rules is a few cached records and a
    4-byte index per id, not two cold lines per id. Rule paths and the raw
    values are not packed: only a failure reads them, from the arrays (and
    :meth:`resolved_limit`). The override tables are read in place, only for accounts that
    have rows there: ``override_first`` gives each account's range of rows, searched by
    binary search.

    The kernel indexes all of this without bounds checks, so construction checks what its
    safety and arithmetic rest on: one row per id in every array of a scope,
    ``N_LIMIT_KINDS`` columns in the limit tables, strictly increasing override keys,
    limits that are ``LIMIT_UNSET`` or >= 0, and for every declared id a tick, lot and
    multiplier >= 1 and a configured order rate of >= 1 order (divisors on the order path).
    The rules compiler guarantees all of it; a violation raises ``ValueError`` at install
    instead of corrupting memory or dividing by zero later. Dtypes and C-contiguity are
    checked by the typed memoryviews themselves.
    """

    def __init__(self, rules):
        tables = rules.tables
        self.rules = rules
        for names in (_ACCOUNT_ARRAYS, _SYMBOL_ARRAYS, _STRATEGY_ARRAYS, _OVERRIDE_ARRAYS):
            rows = np.shape(getattr(tables, names[0]))[0]
            for name in names:
                shape = np.shape(getattr(tables, name))
                expected = (rows, N_LIMIT_KINDS) if name in _PER_KIND_ARRAYS else (rows,)
                if shape != expected:
                    raise ValueError(f"{rules.source}: RuleTables.{name} has shape {shape}, expected {expected}")
        for name in ("account_limits", "symbol_limits", "override_limits"):
            if np.any(getattr(tables, name) < LIMIT_UNSET):
                raise ValueError(f"{rules.source}: RuleTables.{name} holds a negative limit")

        self.account_active = tables.account_active
        self.account_limits = tables.account_limits
        self.account_limit_paths = tables.account_limit_paths
        self.account_credit_limit = tables.account_credit_limit
        self.account_credit_path = tables.account_credit_path
        self.account_max_working = tables.account_max_working
        self.account_max_working_path = tables.account_max_working_path
        self.account_rate_orders = tables.account_rate_orders
        self.account_rate_window_ns = tables.account_rate_window_ns
        self.account_rate_path = tables.account_rate_path
        self.account_self_match = tables.account_self_match
        self.account_dup_window_ns = tables.account_dup_window_ns

        self.symbol_active = tables.symbol_active
        self.symbol_tick = tables.symbol_tick
        self.symbol_tick_path = tables.symbol_tick_path
        self.symbol_lot = tables.symbol_lot
        self.symbol_lot_path = tables.symbol_lot_path
        self.symbol_multiplier = tables.symbol_multiplier
        self.symbol_max_ref_age_ns = tables.symbol_max_ref_age_ns
        self.symbol_max_ref_age_path = tables.symbol_max_ref_age_path
        self.symbol_limits = tables.symbol_limits
        self.symbol_limit_paths = tables.symbol_limit_paths
        self.symbol_restricted_sides = tables.symbol_restricted_sides
        self.symbol_restricted_path = tables.symbol_restricted_path

        self.strategy_active = tables.strategy_active
        self.strategy_rate_orders = tables.strategy_rate_orders
        self.strategy_rate_window_ns = tables.strategy_rate_window_ns
        self.strategy_rate_path = tables.strategy_rate_path

        self.override_keys = tables.override_keys
        self.override_limits = tables.override_limits
        self.override_limit_paths = tables.override_limit_paths
        self.override_restricted_sides = tables.override_restricted_sides
        self.override_restricted_path = tables.override_restricted_path

        self.n_accounts = self.account_active.shape[0]
        self.n_symbols = self.symbol_active.shape[0]
        self.n_strategies = self.strategy_active.shape[0]
        self.n_overrides = self.override_keys.shape[0]
        if max(self.n_accounts, self.n_symbols, self.n_strategies) > MAX_INDEXED_ID:
            raise ValueError(f"{rules.source}: more than 2**31 - 1 ids in one scope")
        self._pack_records()

    def _pack_records(self):
        cdef Py_ssize_t i
        cdef int kind
        cdef AccountRule* account
        cdef SymbolRule* symbol
        cdef StrategyRule* strategy
        source = self.rules.source

        self.account_block = zeroed_block(self.n_accounts, sizeof(AccountRule))
        self.accounts = <AccountRule*>block_address(self.account_block)
        for i in range(self.n_accounts):
            account = &self.accounts[i]
            for kind in range(N_LIMIT_KINDS):
                account.limits[kind] = fast_limit(self.account_limits[i, kind])
                if self.account_limits[i, kind] == LIMIT_UNSET:
                    account.unset_kinds |= 1 << kind
            account.credit_limit = self.account_credit_limit[i]
            account.max_working = self.account_max_working[i]
            account.rate_orders = self.account_rate_orders[i]
            account.rate_window_ns = self.account_rate_window_ns[i]
            account.rate_mode = rate_mode(account.rate_orders, account.rate_window_ns, &account.rate_capacity)
            account.dup_window_ns = self.account_dup_window_ns[i]
            account.self_match = self.account_self_match[i]
            account.active = self.account_active[i]
            if account.credit_limit == LIMIT_UNSET:
                account.missing |= MISSING_CREDIT_LIMIT
            if account.max_working == LIMIT_UNSET:
                account.missing |= MISSING_MAX_WORKING_ORDERS
            if account.rate_orders == LIMIT_UNSET:
                account.missing |= MISSING_ACCOUNT_ORDER_RATE
            if account.active and rate_applies(account.rate_orders) and account.rate_orders < 1:
                raise ValueError(f"{source}: account id {i} has an order rate of < 1 order")

        self.symbol_block = zeroed_block(self.n_symbols, sizeof(SymbolRule))
        self.symbols = <SymbolRule*>block_address(self.symbol_block)
        for i in range(self.n_symbols):
            symbol = &self.symbols[i]
            for kind in range(N_LIMIT_KINDS):
                symbol.limits[kind] = fast_limit(self.symbol_limits[i, kind])
                if self.symbol_limits[i, kind] == LIMIT_UNSET:
                    symbol.unset_kinds |= 1 << kind
            symbol.tick = self.symbol_tick[i]
            symbol.lot = self.symbol_lot[i]
            symbol.multiplier = self.symbol_multiplier[i]
            symbol.max_ref_age_ns = self.symbol_max_ref_age_ns[i]
            symbol.restricted_sides = self.symbol_restricted_sides[i]
            symbol.active = self.symbol_active[i]
            if symbol.active and (symbol.tick < 1 or symbol.lot < 1 or symbol.multiplier < 1):
                raise ValueError(f"{source}: symbol id {i} has a tick, lot or multiplier < 1 nano")
            if symbol.multiplier >= 1:
                divisor = math.gcd(symbol.multiplier, NANOS_PER_NOTIONAL_MICRO_SQUARED)
                symbol.multiplier_num = symbol.multiplier // divisor
                symbol.multiplier_den = NANOS_PER_NOTIONAL_MICRO_SQUARED // divisor

        self.strategy_block = zeroed_block(self.n_strategies, sizeof(StrategyRule))
        self.strategies = <StrategyRule*>block_address(self.strategy_block)
        for i in range(self.n_strategies):
            strategy = &self.strategies[i]
            strategy.rate_orders = self.strategy_rate_orders[i]
            strategy.rate_window_ns = self.strategy_rate_window_ns[i]
            strategy.active = self.strategy_active[i]
            if i != 0:  # strategy 0 ("none") has no throttle and nothing missing
                strategy.rate_mode = rate_mode(strategy.rate_orders, strategy.rate_window_ns, &strategy.rate_capacity)
                if strategy.rate_orders == LIMIT_UNSET:
                    strategy.missing = MISSING_STRATEGY_ORDER_RATE
            if strategy.active and rate_applies(strategy.rate_orders) and strategy.rate_orders < 1:
                raise ValueError(f"{source}: strategy id {i} has an order rate of < 1 order")

        for i in range(1, self.n_overrides):
            if self.override_keys[i] <= self.override_keys[i - 1]:
                raise ValueError(f"{source}: RuleTables.override_keys is not strictly increasing")
        accounts_of_overrides = np.asarray(self.override_keys) >> 32
        if self.n_overrides and not 0 <= accounts_of_overrides[0] <= accounts_of_overrides[-1] < self.n_accounts:
            raise ValueError(f"{source}: RuleTables.override_keys names an account beyond the tables")
        self.override_first = np.searchsorted(
            accounts_of_overrides, np.arange(self.n_accounts + 1), side="left"
        ).astype(np.int64)
        for i in range(self.n_accounts):
            self.accounts[i].has_overrides = self.override_first[i + 1] > self.override_first[i]

        # one record per distinct setting: ids that share settings share a record
        self.account_block, self.account_profile_block, self.n_account_profiles = shared_records(
            <const char*>self.accounts, self.n_accounts, sizeof(AccountRule)
        )
        self.accounts = <AccountRule*>block_address(self.account_block)
        self.account_profile = <uint32_t*>block_address(self.account_profile_block)
        self.symbol_block, self.symbol_profile_block, self.n_symbol_profiles = shared_records(
            <const char*>self.symbols, self.n_symbols, sizeof(SymbolRule)
        )
        self.symbols = <SymbolRule*>block_address(self.symbol_block)
        self.symbol_profile = <uint32_t*>block_address(self.symbol_profile_block)

    cdef Py_ssize_t override_row(self, int64_t account_id, int64_t pair_key) noexcept nogil:
        """Row of the account x symbol override with this key, or -1: a binary search over
        the account's own rows (most accounts have none) whose steps select with a
        conditional move, since comparisons of random keys are coin flips to a branch
        predictor."""
        cdef Py_ssize_t base = self.override_first[account_id]
        cdef Py_ssize_t length = self.override_first[account_id + 1] - base
        cdef Py_ssize_t half
        if length == 0:
            return -1
        while length > 1:
            half = length >> 1
            base = base + half if self.override_keys[base + half] <= pair_key else base
            length -= half
        return base if self.override_keys[base] == pair_key else -1

    cdef int64_t resolved_limit(self, int64_t account_id, int64_t symbol_id, Py_ssize_t override,
                                int kind, int32_t* path) noexcept nogil:
        """The effective limit of one kind and its path, from the tables as written: the
        account chain (override row, else the account's row with the firm folded in)
        against the symbol cap; the smaller wins, ties the chain; ``LIMIT_UNSET`` when set
        nowhere. The order path compares against ``min(chain, cap)`` of the records; this
        explains a failure (and settles the one case the two differ, an unset limit)."""
        cdef int64_t chain = LIMIT_UNSET
        cdef int32_t chain_path = NO_PATH
        cdef int64_t cap = self.symbol_limits[symbol_id, kind]
        if override >= 0:
            chain = self.override_limits[override, kind]
            chain_path = self.override_limit_paths[override, kind]
        if chain == LIMIT_UNSET:
            chain = self.account_limits[account_id, kind]
            chain_path = self.account_limit_paths[account_id, kind]
        if cap == LIMIT_UNSET or (chain != LIMIT_UNSET and chain <= cap):
            path[0] = chain_path if chain != LIMIT_UNSET else NO_PATH
            return chain
        path[0] = self.symbol_limit_paths[symbol_id, kind]
        return cap


cdef inline const AccountRule* account_rule_of(RuleView view, int64_t account_id) noexcept nogil:
    """The rule record of a known account id (``0 <= account_id < n_accounts``)."""
    return &view.accounts[view.account_profile[account_id]]


cdef inline const SymbolRule* symbol_rule_of(RuleView view, int64_t symbol_id) noexcept nogil:
    """The rule record of a known symbol id (``0 <= symbol_id < n_symbols``)."""
    return &view.symbols[view.symbol_profile[symbol_id]]


# ---------------------------------------------------------------------------------------
# The long ways of Kernel.decide: an order that is invalid, meets a trading state other
# than ACTIVE, or fails a limit whose explanation needs the tables as written
# ---------------------------------------------------------------------------------------
cdef uint64_t invalid_order(RuleView view, const OrderTicket* order, Verdict* verdict) noexcept nogil:
    """Stage A of the check for an order that fails it: every invalid field and unknown id."""
    cdef int64_t account_id = order.account_id
    cdef int64_t symbol_id = order.symbol_id
    cdef int64_t strategy_id = order.strategy_id
    if order.side < SIDE_BUY or order.side > SIDE_SELL_SHORT:
        fail(verdict, CHECK_INVALID_SIDE, 0, order.side, NO_PATH)
    if order.order_type != ORDER_TYPE_LIMIT and order.order_type != ORDER_TYPE_MARKET:
        fail(verdict, CHECK_INVALID_ORDER_TYPE, 0, order.order_type, NO_PATH)
    if order.qty <= 0:
        fail(verdict, CHECK_INVALID_QUANTITY, 0, order.qty, NO_PATH)
    if order.order_type == ORDER_TYPE_LIMIT and order.price <= 0:
        fail(verdict, CHECK_INVALID_PRICE, 0, order.price, NO_PATH)
    if account_id < 0 or account_id >= view.n_accounts or not account_rule_of(view, account_id).active:
        fail(verdict, CHECK_UNKNOWN_ACCOUNT, 0, account_id, NO_PATH)
    if symbol_id < 0 or symbol_id >= view.n_symbols or not symbol_rule_of(view, symbol_id).active:
        fail(verdict, CHECK_UNKNOWN_SYMBOL, 0, symbol_id, NO_PATH)
    if strategy_id < 0 or strategy_id >= view.n_strategies or not view.strategies[strategy_id].active:
        fail(verdict, CHECK_UNKNOWN_STRATEGY, 0, strategy_id, NO_PATH)
    return verdict.failed


cdef void check_trading_state(Verdict* verdict, uint8_t firm_state, const AccountState* account,
                              const StrategyState* strategy, const SymbolState* symbol,
                              const PositionState* pos, bint is_buy, int64_t qty) noexcept nogil:
    """The most restrictive scope wins; the first scope holding it is reported. REDUCING
    admits what does not grow the position beyond zero, counting working orders."""
    cdef uint8_t effective = firm_state
    cdef int scope = SCOPE_FIRM
    cdef pt_i128 reducible
    cdef pt_i128 after
    if account.trading_state > effective:
        effective = account.trading_state
        scope = SCOPE_ACCOUNT
    if strategy.trading_state > effective:
        effective = strategy.trading_state
        scope = SCOPE_STRATEGY
    if symbol.trading_state > effective:
        effective = symbol.trading_state
        scope = SCOPE_SYMBOL
    if effective == TRADING_STATE_HALTED:
        fail(verdict, CHECK_TRADING_HALTED, scope, effective, NO_PATH)
    elif effective == TRADING_STATE_REDUCING:
        if is_buy:
            reducible = -<pt_i128>pos.position
            after = <pt_i128>pos.working_buy + qty
        else:
            reducible = pos.position
            after = <pt_i128>pos.working_sell + qty
        if reducible < 0:
            reducible = 0
        if after > reducible:
            fail(verdict, CHECK_REDUCE_ONLY_VIOLATION, reducible, after, NO_PATH)


cdef void fail_limit(Verdict* verdict, RuleView view, const OrderTicket* order, Py_ssize_t override,
                     int kind, int code, pt_i128 observed) noexcept nogil:
    """An observed value beyond ``min(chain, cap)`` of the records: fail ``code`` with the
    effective limit and its path, unless that limit is set nowhere (then the check does not
    apply: MISSING_LIMIT already says so)."""
    cdef int32_t path
    cdef int64_t limit = view.resolved_limit(order.account_id, order.symbol_id, override, kind, &path)
    if limit != LIMIT_UNSET and observed > limit:
        fail(verdict, code, limit, observed, path)


cdef void fail_collar(Verdict* verdict, RuleView view, const OrderTicket* order, Py_ssize_t override,
                      int64_t ref_price) noexcept nogil:
    """A limit price outside the band: which band is the tighter, its edge and its path."""
    cdef int32_t ppm_path
    cdef int32_t ticks_path
    cdef int64_t collar_ppm = view.resolved_limit(
        order.account_id, order.symbol_id, override, LIMIT_KIND_PRICE_COLLAR_PPM, &ppm_path
    )
    cdef int64_t collar_ticks = view.resolved_limit(
        order.account_id, order.symbol_id, override, LIMIT_KIND_PRICE_COLLAR_TICKS, &ticks_path
    )
    cdef int64_t price = order.price
    cdef bint has_band = False
    cdef pt_i128 band = 0
    cdef pt_i128 tick_band
    cdef int32_t band_path = NO_PATH
    if collar_ppm != LIMIT_UNSET and collar_ppm != LIMIT_UNLIMITED:
        band = mul_div(ref_price, collar_ppm, PPM_SCALE, False)
        band_path = ppm_path
        has_band = True
    if collar_ticks != LIMIT_UNSET and collar_ticks != LIMIT_UNLIMITED:
        tick_band = <pt_i128>collar_ticks * symbol_rule_of(view, order.symbol_id).tick
        if not has_band or tick_band < band:
            band = tick_band
            band_path = ticks_path
            has_band = True
    if has_band:
        if <pt_i128>price - ref_price > band:
            fail(verdict, CHECK_PRICE_COLLAR_BREACHED, ref_price + band, price, band_path)
        elif <pt_i128>ref_price - price > band:
            fail(verdict, CHECK_PRICE_COLLAR_BREACHED, ref_price - band, price, band_path)


# ---------------------------------------------------------------------------------------
# Results
# ---------------------------------------------------------------------------------------
@cython.freelist(32)
cdef class CheckResult:
    """Decision of one order, with the same interface as ``ReferenceResult``.

    ``failed`` is the bitmask of ``Check`` codes; ``handle`` identifies the working order
    (``generation << 32 | slot``) or is -1 when rejected; ``detail(code)`` gives
    ``(limit, observed, rule path id)`` of a failed check and raises ``KeyError`` for a
    check that did not fail, as the reference's dict does.
    """

    def detail(self, int code):
        if code < 0 or code >= N_CHECKS or not (self.failed >> code) & 1:
            raise KeyError(code)
        return self.limits[code], self.observed[code], self.paths[code]

    @property
    def details(self):
        """Every failed check: ``{code: (limit, observed, path id)}``."""
        return {code: self.detail(code) for code in range(N_CHECKS) if (self.failed >> code) & 1}

    def __repr__(self):
        return f"CheckResult(accepted={self.accepted}, failed={self.failed:#x}, handle={self.handle}, details={self.details})"


# ---------------------------------------------------------------------------------------
# The kernel
# ---------------------------------------------------------------------------------------
cdef class Kernel:
    """The compiled twin of ``ReferenceKernel`` (same constructor, methods and results).

    Threading and the GIL: every method holds the GIL except :meth:`check_batch`, which
    decides its whole batch with the GIL released so other Python threads (the event loop,
    I/O) keep running. State is therefore guarded by one kernel lock: ``check_batch`` holds
    it for the whole batch, every other method that reads or writes state holds it for its
    own duration (an uncontended acquire costs a few tens of nanoseconds; a contended one
    waits with the GIL released). So a kernel may be shared between threads, and decisions
    are always serial: each order sees the state the previous one left.

    Rules are swapped by :meth:`install_rules` with one reference assignment. A batch reads
    the ``RuleView`` it captured when it started, so a concurrent install never mixes two
    rule sets within a batch; the new rules apply from the next call. An install that
    brings ids beyond the state arrays grows them first, under the lock (so it waits for a
    running batch), before the new view becomes visible.

    Ids are ``int32`` in batches and in pair keys; state for ids handed out by the interner
    after the rules were compiled exists as soon as a trading state or reference price is
    set for them, and orders carrying them stay unknown until rules declare them.
    """

    def __cinit__(self):
        self.state_lock = PyThread_allocate_lock()
        if self.state_lock == NULL:
            raise MemoryError("cannot allocate the kernel's state lock")

    def __dealloc__(self):
        if self.state_lock != NULL:
            PyThread_free_lock(self.state_lock)

    def __init__(
        self,
        rules,
        *,
        Py_ssize_t max_orders=DEFAULT_MAX_ORDERS,
        Py_ssize_t max_positions=DEFAULT_MAX_POSITIONS,
        Py_ssize_t client_order_id_memory=DEFAULT_CLIENT_ORDER_ID_MEMORY,
    ):
        cdef Py_ssize_t i
        cdef Py_ssize_t table_size
        if not 0 <= max_orders <= MAX_INDEXED_ID:
            raise ValueError(f"max_orders must be in [0, 2**31 - 1], got {max_orders}")
        if not 0 <= max_positions <= MAX_INDEXED_ID:
            raise ValueError(f"max_positions must be in [0, 2**31 - 1], got {max_positions}")
        if not 1 <= client_order_id_memory <= MAX_INDEXED_ID:
            # The reference accepts 0 and then fails (IndexError) on the first accept.
            raise ValueError(f"client_order_id_memory must be in [1, 2**31 - 1], got {client_order_id_memory}")
        self.max_orders = max_orders
        self.max_positions = max_positions
        self.client_order_id_memory = client_order_id_memory
        self.firm_state = TRADING_STATE_ACTIVE
        self.unindexed_states = {}

        self.lock_state()
        try:
            self.grow_accounts(1)
            self.grow_strategies(1)
            self.grow_symbols(1)

            self.position_block = zeroed_block(max_positions, sizeof(PositionState))
            self.positions = <PositionState*>block_address(self.position_block)
            self.n_positions = 0
            table_size = power_of_two_at_least(2 * max_positions)
            self.position_table_block = zeroed_block(table_size, sizeof(PositionSlot))
            self.position_table = <PositionSlot*>block_address(self.position_table_block)
            self.position_table_mask = table_size - 1
            for i in range(table_size):
                self.position_table[i].key = -1

            self.order_block = zeroed_block(max_orders, sizeof(OrderSlot))
            self.orders = <OrderSlot*>block_address(self.order_block)
            self.free_stack_block = zeroed_block(max_orders, sizeof(int32_t))
            self.free_stack = <int32_t*>block_address(self.free_stack_block)
            for i in range(max_orders):  # popped from the top: slot 0 first, as the reference
                self.free_stack[i] = <int32_t>(max_orders - 1 - i)
            self.free_top = max_orders
            self.live_count = 0

            self.remembered_ring_block = zeroed_block(client_order_id_memory, sizeof(uint64_t))
            self.remembered_ring = <uint64_t*>block_address(self.remembered_ring_block)
            self.remembered_oldest = 0
            self.remembered_count = 0
            table_size = power_of_two_at_least(2 * client_order_id_memory)
            self.remembered_set_block = zeroed_block(table_size, sizeof(uint64_t))
            self.remembered_set = <uint64_t*>block_address(self.remembered_set_block)
            self.remembers_zero = False
            self.remembered_set_mask = table_size - 1
        finally:
            self.unlock_state()
        self.install_rules(rules)

    # -- the state lock -----------------------------------------------------------------
    cdef void lock_state(self) noexcept:
        if not PyThread_acquire_lock(self.state_lock, NOWAIT_LOCK):
            with nogil:
                PyThread_acquire_lock(self.state_lock, WAIT_LOCK)

    cdef void unlock_state(self) noexcept nogil:
        PyThread_release_lock(self.state_lock)

    # -- growth of per-id state (Python level, never on the order path; lock held) ------
    cdef void grow_accounts(self, Py_ssize_t needed):
        self.account_block = grown_records(
            self.account_block, <void**>&self.accounts, &self.account_capacity, needed,
            sizeof(AccountState), &FRESH_ACCOUNT,
        )

    cdef void grow_strategies(self, Py_ssize_t needed):
        self.strategy_block = grown_records(
            self.strategy_block, <void**>&self.strategies, &self.strategy_capacity, needed,
            sizeof(StrategyState), &FRESH_STRATEGY,
        )

    cdef void grow_symbols(self, Py_ssize_t needed):
        self.symbol_block = grown_records(
            self.symbol_block, <void**>&self.symbols, &self.symbol_capacity, needed,
            sizeof(SymbolState), &FRESH_SYMBOL,
        )

    # -- configuration ------------------------------------------------------------------
    @property
    def rules(self):
        """The CompiledRules currently installed."""
        return self.view.rules

    def install_rules(self, rules):
        """Swap in new rules; all state is kept (ids are stable through the interner).

        The view is built and validated first (a bad table raises and leaves the kernel
        untouched); state is grown if the rules or interner bring new ids; then the view is
        swapped in one assignment.
        """
        cdef RuleView view = RuleView(rules)
        interner = rules.interner
        cdef Py_ssize_t accounts_needed = max(view.n_accounts, len(interner.account_names))
        cdef Py_ssize_t strategies_needed = max(view.n_strategies, len(interner.strategy_names))
        cdef Py_ssize_t symbols_needed = max(view.n_symbols, len(interner.symbol_names))
        if (
            accounts_needed > self.account_capacity
            or strategies_needed > self.strategy_capacity
            or symbols_needed > self.symbol_capacity
        ):
            self.lock_state()
            try:
                self.grow_accounts(accounts_needed)
                self.grow_strategies(strategies_needed)
                self.grow_symbols(symbols_needed)
                self.view = view
            finally:
                self.unlock_state()
        else:
            self.view = view

    def set_reference_price(self, int64_t symbol_id, int64_t price_nanos, int64_t ts_ns):
        """Record a symbol's reference price. Ids no interner hands out (negative, or
        beyond int32) are ignored: no order can name them, so nothing could read them."""
        if not 0 <= symbol_id < MAX_INDEXED_ID:
            return
        self.lock_state()
        try:
            self.grow_symbols(symbol_id + 1)
            self.symbols[symbol_id].reference_price = price_nanos
            self.symbols[symbol_id].reference_ts_ns = ts_ns
        finally:
            self.unlock_state()

    def set_trading_state(self, int scope, int64_t scope_id, int state):
        """Set ACTIVE / REDUCING / HALTED for the firm (``scope_id`` ignored) or one id.
        Raises ``ValueError`` for an unknown scope or state, as the reference's enums do."""
        if not TRADING_STATE_ACTIVE <= state <= TRADING_STATE_HALTED:
            raise ValueError(f"{state} is not a valid TradingState")
        if not SCOPE_FIRM <= scope <= SCOPE_SYMBOL:
            raise ValueError(f"{scope} is not a valid Scope")
        self.lock_state()
        try:
            if scope == SCOPE_FIRM:
                self.firm_state = state
            elif not 0 <= scope_id < MAX_INDEXED_ID:
                self.unindexed_states[scope, scope_id] = state
            elif scope == SCOPE_ACCOUNT:
                self.grow_accounts(scope_id + 1)
                self.accounts[scope_id].trading_state = state
            elif scope == SCOPE_STRATEGY:
                self.grow_strategies(scope_id + 1)
                self.strategies[scope_id].trading_state = state
            else:
                self.grow_symbols(scope_id + 1)
                self.symbols[scope_id].trading_state = state
        finally:
            self.unlock_state()

    def trading_state(self, int scope, int64_t scope_id):
        """The state set for a scope id (ACTIVE when none was set)."""
        if not SCOPE_FIRM <= scope <= SCOPE_SYMBOL:
            raise ValueError(f"{scope} is not a valid Scope")
        if scope == SCOPE_FIRM:
            return self.firm_state
        if not 0 <= scope_id < MAX_INDEXED_ID:
            return self.unindexed_states.get((scope, scope_id), TRADING_STATE_ACTIVE)
        cdef uint8_t state = TRADING_STATE_ACTIVE
        self.lock_state()
        if scope == SCOPE_ACCOUNT and scope_id < self.account_capacity:
            state = self.accounts[scope_id].trading_state
        elif scope == SCOPE_STRATEGY and scope_id < self.strategy_capacity:
            state = self.strategies[scope_id].trading_state
        elif scope == SCOPE_SYMBOL and scope_id < self.symbol_capacity:
            state = self.symbols[scope_id].trading_state
        self.unlock_state()
        return state

    # -- the check ----------------------------------------------------------------------
    def check(
        self,
        int64_t account_id,
        int64_t symbol_id,
        int64_t strategy_id,
        int64_t side,
        int64_t order_type,
        int64_t qty,
        int64_t price,
        int64_t client_order_key,
        int64_t now_ns,
    ):
        """Decide one order; on accept the order becomes working and state moves.

        ``client_order_key`` is the 64-bit key of (account, client order id) computed by the
        caller; ``price`` is ignored for market orders. Returns a :class:`CheckResult`.
        """
        cdef CheckResult result = CheckResult.__new__(CheckResult)
        cdef OrderTicket order
        cdef Verdict verdict
        cdef RuleView view = self.view
        order.account_id = account_id
        order.symbol_id = symbol_id
        order.strategy_id = strategy_id
        order.side = side
        order.order_type = order_type
        order.qty = qty
        order.price = price
        order.client_order_key = client_order_key
        order.now_ns = now_ns
        prepare_ticket(&order)
        verdict.limits = result.limits
        verdict.observed = result.observed
        verdict.paths = result.paths
        self.lock_state()
        result.failed = self.decide(view, &order, &verdict, &result.handle)
        self.unlock_state()
        result.accepted = result.failed == 0
        return result

    def check_batch(
        self,
        account_ids,
        symbol_ids,
        strategy_ids,
        sides,
        order_types,
        qtys,
        prices,
        keys,
        now_ns,
        out_failed,
        out_handles,
        out_limits,
        out_observed,
        out_paths,
    ):
        """Decide ``n`` orders in sequence, each seeing the state the previous ones left.

        Inputs are C-contiguous 1-D arrays of length ``n``: int32 ids, int8 or uint8 sides
        and order types, int64 quantities, prices and client order keys; ``now_ns`` is an
        int64 scalar or array. Outputs: ``out_failed`` (uint64 masks), ``out_handles``
        (int64, -1 when rejected), and ``(n, N_CHECKS)`` arrays ``out_limits`` and
        ``out_observed`` (int64) and ``out_paths`` (int32), written only where the order's
        failure bit is set. The GIL is released for the whole loop. Returns the number of
        accepted orders.
        """
        cdef const int32_t[::1] account_column = account_ids
        cdef const int32_t[::1] symbol_column = symbol_ids
        cdef const int32_t[::1] strategy_column = strategy_ids
        cdef const uint8_t[::1] side_column = _small_int_bytes(sides, "sides")
        cdef const uint8_t[::1] order_type_column = _small_int_bytes(order_types, "order_types")
        cdef const int64_t[::1] qty_column = qtys
        cdef const int64_t[::1] price_column = prices
        cdef const int64_t[::1] key_column = keys
        cdef const int64_t[::1] now_column
        cdef uint64_t[::1] failed_column = out_failed
        cdef int64_t[::1] handle_column = out_handles
        cdef int64_t[:, ::1] limit_rows = out_limits
        cdef int64_t[:, ::1] observed_rows = out_observed
        cdef int32_t[:, ::1] path_rows = out_paths
        cdef Py_ssize_t n = account_column.shape[0]
        cdef Py_ssize_t step
        cdef Py_ssize_t ahead
        cdef Py_ssize_t accepted = 0
        cdef uint64_t decision
        cdef OrderTicket* ticket
        cdef OrderColumns columns
        # Orders i .. i + PREFETCH_DISTANCE, read and hashed ahead of their decision.
        cdef OrderTicket pipeline[PIPELINE_SIZE]
        cdef Verdict verdict
        cdef RuleView view = self.view

        for name, length in (
            ("symbol_ids", symbol_column.shape[0]),
            ("strategy_ids", strategy_column.shape[0]),
            ("sides", side_column.shape[0]),
            ("order_types", order_type_column.shape[0]),
            ("qtys", qty_column.shape[0]),
            ("prices", price_column.shape[0]),
            ("keys", key_column.shape[0]),
            ("out_failed", failed_column.shape[0]),
            ("out_handles", handle_column.shape[0]),
            ("out_limits", limit_rows.shape[0]),
            ("out_observed", observed_rows.shape[0]),
            ("out_paths", path_rows.shape[0]),
        ):
            _require_length(name, length, n)
        for name, width in (
            ("out_limits", limit_rows.shape[1]),
            ("out_observed", observed_rows.shape[1]),
            ("out_paths", path_rows.shape[1]),
        ):
            if width != N_CHECKS:
                raise ValueError(f"{name} must have {N_CHECKS} columns, got {width}")
        columns.now_ns = NULL
        columns.now_scalar = 0
        if np.ndim(now_ns) != 0:
            now_column = now_ns
            _require_length("now_ns", now_column.shape[0], n)
            if n:
                columns.now_ns = &now_column[0]
        else:
            columns.now_scalar = now_ns
        if n == 0:
            return 0
        columns.account_ids = &account_column[0]
        columns.symbol_ids = &symbol_column[0]
        columns.strategy_ids = &strategy_column[0]
        columns.sides = &side_column[0]
        columns.order_types = &order_type_column[0]
        columns.qtys = &qty_column[0]
        columns.prices = &price_column[0]
        columns.keys = &key_column[0]
        columns.sides_signed = np.asarray(sides).dtype == np.int8
        columns.order_types_signed = np.asarray(order_types).dtype == np.int8

        self.lock_state()
        with nogil:
            # A software pipeline: each order is read and hashed PREFETCH_DISTANCE orders
            # before its decision and its rule, state and hash-slot lines requested; half
            # way its position record, a quarter of the way its pair's first working order.
            # (One loop from -PREFETCH_DISTANCE, so that each stage has one call site and
            # inlines.)
            for step in range(-PREFETCH_DISTANCE, n):
                ahead = step + PREFETCH_DISTANCE
                if ahead < n:
                    ticket = &pipeline[ahead & PIPELINE_MASK]
                    load_ticket(ticket, &columns, ahead)
                    self.prefetch_order(view, ticket)
                ahead = step + PREFETCH_DISTANCE // 2
                if 0 <= ahead < n:
                    self.prefetch_position(view, &pipeline[ahead & PIPELINE_MASK])
                ahead = step + PREFETCH_DISTANCE // 4
                if 0 <= ahead < n:
                    self.prefetch_working_orders(&pipeline[ahead & PIPELINE_MASK])
                # the order slot the next accepts but one will take (popped LIFO from the
                # free stack; the accept writes a whole line of it)
                if self.free_top > 2:
                    PT_PREFETCH(&self.orders[self.free_stack[self.free_top - 3]])
                if step >= 0:
                    verdict.limits = &limit_rows[step, 0]
                    verdict.observed = &observed_rows[step, 0]
                    verdict.paths = &path_rows[step, 0]
                    decision = self.decide(view, &pipeline[step & PIPELINE_MASK], &verdict, &handle_column[step])
                    failed_column[step] = decision
                    accepted += decision == 0
            self.unlock_state()
        return accepted

    cdef uint64_t decide(self, RuleView view, const OrderTicket* order, Verdict* verdict,
                         int64_t* handle) noexcept nogil:
        """The whole of ``ReferenceKernel.check`` for one order; the lock is held.

        Writes the failure details into ``verdict`` and, on accept, moves the state and
        writes the handle. Returns the failure mask (0 = accepted).

        Written for the order that passes: every check is a comparison against the packed
        records (limits as ``min(chain, cap)``, 64-bit arithmetic where it provably fits),
        and what only explains a failure (rule paths, which scope a limit came from,
        128-bit observed values) is worked out in the branch of that failure.
        """
        cdef int64_t account_id = order.account_id
        cdef int64_t symbol_id = order.symbol_id
        cdef int64_t strategy_id = order.strategy_id
        cdef int64_t side = order.side
        cdef int64_t order_type = order.order_type
        cdef int64_t qty = order.qty
        cdef int64_t price = order.price
        cdef int64_t now_ns = order.now_ns
        cdef bint is_limit = order_type == ORDER_TYPE_LIMIT
        handle[0] = -1
        verdict.failed = 0

        # ---- stage A: validity and identity (one test when all is well) -----------------
        if unlikely(
            (<uint64_t>side - SIDE_BUY > <uint64_t>(SIDE_SELL_SHORT - SIDE_BUY))
            | (<uint64_t>order_type - ORDER_TYPE_LIMIT > <uint64_t>(ORDER_TYPE_MARKET - ORDER_TYPE_LIMIT))
            | (qty <= 0)
            | (is_limit & (price <= 0))
            | (<uint64_t>account_id >= <uint64_t>view.n_accounts)
            | (<uint64_t>symbol_id >= <uint64_t>view.n_symbols)
            | (<uint64_t>strategy_id >= <uint64_t>view.n_strategies)
        ):
            return invalid_order(view, order, verdict)
        cdef const AccountRule* account_rule = account_rule_of(view, account_id)
        cdef const SymbolRule* symbol_rule = symbol_rule_of(view, symbol_id)
        cdef const StrategyRule* strategy_rule = &view.strategies[strategy_id]
        if unlikely(not (account_rule.active & symbol_rule.active & strategy_rule.active)):
            return invalid_order(view, order, verdict)

        # ---- stage B --------------------------------------------------------------------
        cdef AccountState* account = &self.accounts[account_id]
        cdef SymbolState* symbol = &self.symbols[symbol_id]
        cdef StrategyState* strategy = &self.strategies[strategy_id]
        cdef bint is_buy = side == SIDE_BUY
        cdef Py_ssize_t position_index = order.position_index
        if position_index < 0:
            position_index = self.find_position(order.pair_key, order.pair_hash)
        cdef const PositionState* pos = &NO_POSITION
        if position_index >= 0:
            pos = &self.positions[position_index]

        # validity against reference data
        cdef int64_t tick = symbol_rule.tick
        if unlikely(is_limit and price % tick):
            fail(verdict, CHECK_PRICE_OFF_TICK, tick, price, view.symbol_tick_path[symbol_id])
        if unlikely(qty % symbol_rule.lot):
            fail(verdict, CHECK_QUANTITY_OFF_LOT, symbol_rule.lot, qty, view.symbol_lot_path[symbol_id])

        # reference price
        cdef int64_t max_age = symbol_rule.max_ref_age_ns
        cdef int64_t ref_price = symbol.reference_price
        cdef int64_t ref_age
        cdef bint fresh
        if likely(not sub_overflows(now_ns, symbol.reference_ts_ns, &ref_age)):
            fresh = (ref_price > 0) & (ref_age <= max_age)
        else:
            fresh = (ref_price > 0) & (<pt_i128>now_ns - symbol.reference_ts_ns <= max_age)
        if unlikely(not fresh):
            if ref_price <= 0:
                fail(verdict, CHECK_REFERENCE_PRICE_MISSING, 0, 0, NO_PATH)
            else:
                fail(verdict, CHECK_REFERENCE_PRICE_STALE, max_age, <pt_i128>now_ns - symbol.reference_ts_ns,
                     view.symbol_max_ref_age_path[symbol_id])

        # limits: the account chain (an override row, else the account's row with the firm
        # folded in) and the symbol cap; an unset one reads INT64_MAX, so the effective
        # limit is min(chain, cap) and the order passes a kind iff it is within both
        cdef const int64_t* chain = account_rule.limits
        cdef const int64_t* cap = symbol_rule.limits
        cdef int64_t override_chain[N_LIMIT_KINDS]
        cdef uint32_t unset_kinds = account_rule.unset_kinds
        cdef Py_ssize_t override = -1
        cdef int64_t value
        cdef int kind
        if unlikely(account_rule.has_overrides):
            override = view.override_row(account_id, order.pair_key)
            if override >= 0:
                for kind in range(N_LIMIT_KINDS):
                    value = view.override_limits[override, kind]
                    if value == LIMIT_UNSET:
                        override_chain[kind] = chain[kind]
                    else:
                        override_chain[kind] = value
                        unset_kinds &= ~(<uint32_t>1 << kind)
                chain = override_chain
        # (LimitKind 0..3 and MissingLimit bits 0..3 are the same four limits)
        unset_kinds &= symbol_rule.unset_kinds
        cdef int64_t missing = (unset_kinds & 0xF) | account_rule.missing | strategy_rule.missing
        if is_limit and (unset_kinds >> <int>LIMIT_KIND_PRICE_COLLAR_PPM) == 3:
            missing |= MISSING_PRICE_COLLAR
        if unlikely(missing):
            fail(verdict, CHECK_MISSING_LIMIT, 0, missing, NO_PATH)

        # trading state: anything but ACTIVE anywhere takes the long way
        if unlikely(self.firm_state | account.trading_state | strategy.trading_state | symbol.trading_state):
            check_trading_state(verdict, self.firm_state, account, strategy, symbol, pos, is_buy, qty)

        # restricted list: firm-wide first, then the account's own
        cdef uint8_t side_bit = 1 << side
        if unlikely(symbol_rule.restricted_sides & side_bit):
            fail(verdict, CHECK_SYMBOL_RESTRICTED, symbol_rule.restricted_sides, side,
                 view.symbol_restricted_path[symbol_id])
        elif override >= 0 and view.override_restricted_sides[override] & side_bit:
            fail(verdict, CHECK_SYMBOL_RESTRICTED, view.override_restricted_sides[override], side,
                 view.override_restricted_path[override])

        # order size
        if unlikely(qty > min64(chain[<int>LIMIT_KIND_MAX_ORDER_QTY], cap[<int>LIMIT_KIND_MAX_ORDER_QTY])):
            fail_limit(verdict, view, order, override, LIMIT_KIND_MAX_ORDER_QTY, CHECK_MAX_ORDER_QTY_EXCEEDED, qty)
        cdef int64_t effective_price = price if is_limit else ref_price
        cdef int64_t notional = -1
        if effective_price > 0:
            notional = order_notional(qty, effective_price, symbol_rule)
        if unlikely(notional > min64(chain[<int>LIMIT_KIND_MAX_ORDER_NOTIONAL], cap[<int>LIMIT_KIND_MAX_ORDER_NOTIONAL])):
            fail_limit(verdict, view, order, override, LIMIT_KIND_MAX_ORDER_NOTIONAL,
                       CHECK_MAX_ORDER_NOTIONAL_EXCEEDED, notional)

        # price collar: the tighter of the percentage and tick bands around a fresh reference.
        # Both prices are in (0, INT64_MAX], so their distance fits; a band is clipped to
        # UINT64_MAX, beyond any distance (the failure branch recomputes it exactly).
        cdef int64_t collar_ppm
        cdef int64_t collar_ticks
        cdef uint64_t band
        cdef uint64_t tick_band
        cdef uint64_t distance
        cdef pt_u128 band_product
        if is_limit and fresh:
            collar_ppm = min64(chain[<int>LIMIT_KIND_PRICE_COLLAR_PPM], cap[<int>LIMIT_KIND_PRICE_COLLAR_PPM])
            collar_ticks = min64(chain[<int>LIMIT_KIND_PRICE_COLLAR_TICKS], cap[<int>LIMIT_KIND_PRICE_COLLAR_TICKS])
            # INT64_MAX: unset or unlimited, no band of that kind
            if collar_ppm != INT64_MAX or collar_ticks != INT64_MAX:
                band = UINT64_MAX
                if collar_ppm != INT64_MAX:
                    band_product = <pt_u128><uint64_t>ref_price * <uint64_t>collar_ppm
                    if likely(not (band_product >> 64)):
                        band = <uint64_t>band_product / <uint64_t>PPM_SCALE
                    elif mul_div(ref_price, collar_ppm, PPM_SCALE, False) < <pt_u128>UINT64_MAX:
                        band = <uint64_t>mul_div(ref_price, collar_ppm, PPM_SCALE, False)
                if collar_ticks != INT64_MAX:
                    if mul_overflows_u64(<uint64_t>collar_ticks, <uint64_t>tick, &tick_band):
                        tick_band = UINT64_MAX
                    if tick_band < band:
                        band = tick_band
                distance = <uint64_t>(price - ref_price) if price >= ref_price else <uint64_t>(ref_price - price)
                if unlikely(distance > band):
                    fail_collar(verdict, view, order, override, ref_price)

        # credit: working + filled + this order
        cdef int64_t credit = account_rule.credit_limit
        cdef int64_t exposure
        cdef pt_i128 wide_exposure
        if notional >= 0 and credit != LIMIT_UNSET:
            if unlikely(
                add_overflows(account.working_notional, account.filled_notional, &exposure)
                | add_overflows(exposure, notional, &exposure)
                | (exposure > credit)
            ):
                wide_exposure = <pt_i128>account.working_notional + account.filled_notional + notional
                if wide_exposure > credit:
                    fail(verdict, CHECK_CREDIT_LIMIT_EXCEEDED, credit, wide_exposure, view.account_credit_path[account_id])

        # position, counting working orders on the side that increases it
        cdef pt_i128 position_after
        if is_buy:
            position_after = <pt_i128>pos.position + pos.working_buy + qty
            if unlikely(position_after > min64(chain[<int>LIMIT_KIND_MAX_LONG_POSITION], cap[<int>LIMIT_KIND_MAX_LONG_POSITION])):
                fail_limit(verdict, view, order, override, LIMIT_KIND_MAX_LONG_POSITION,
                           CHECK_LONG_POSITION_LIMIT_EXCEEDED, position_after)
        else:
            position_after = <pt_i128>pos.working_sell + qty - pos.position
            if unlikely(position_after > min64(chain[<int>LIMIT_KIND_MAX_SHORT_POSITION], cap[<int>LIMIT_KIND_MAX_SHORT_POSITION])):
                fail_limit(verdict, view, order, override, LIMIT_KIND_MAX_SHORT_POSITION,
                           CHECK_SHORT_POSITION_LIMIT_EXCEEDED, position_after)

        # order rates (token buckets; charged on accept only)
        cdef pt_i128 account_level = 0
        cdef pt_i128 strategy_level = 0
        if account_rule.rate_mode != RATE_MODE_NONE:
            account_level = bucket_level(
                verdict, CHECK_ACCOUNT_ORDER_RATE_EXCEEDED, account_rule.rate_mode, account.rate_tokens,
                account.rate_last_ns, now_ns, account_rule.rate_orders, account_rule.rate_window_ns,
                account_rule.rate_capacity, &view.account_rate_path[account_id],
            )
        if strategy_rule.rate_mode != RATE_MODE_NONE:
            strategy_level = bucket_level(
                verdict, CHECK_STRATEGY_ORDER_RATE_EXCEEDED, strategy_rule.rate_mode, strategy.rate_tokens,
                strategy.rate_last_ns, now_ns, strategy_rule.rate_orders, strategy_rule.rate_window_ns,
                strategy_rule.rate_capacity, &view.strategy_rate_path[strategy_id],
            )

        # duplicates: the client order id, then the content newest first
        if unlikely(self.remembers(order.key_hash)):
            fail(verdict, CHECK_DUPLICATE_CLIENT_ORDER_ID, 0, 0, NO_PATH)
        cdef int64_t content_window = account_rule.dup_window_ns
        cdef int64_t content_price
        cdef int64_t content_kind
        cdef int age_rank
        cdef int entry
        cdef pt_i128 recent_age
        if content_window > 0:
            content_price = price if is_limit else 0
            content_kind = side | order_type << 2
            for age_rank in range(pos.recent_count):
                entry = (pos.recent_next - 1 - age_rank) & (CONTENT_MEMORY_PER_POSITION - 1)
                if (
                    pos.recent_qty[entry] == qty
                    and pos.recent_price[entry] == content_price
                    and (pos.recent_kinds >> (4 * entry)) & 0xF == content_kind
                ):
                    recent_age = <pt_i128>now_ns - pos.recent_accepted_ns[entry]
                    if recent_age <= content_window:
                        fail(verdict, CHECK_DUPLICATE_ORDER_CONTENT, content_window, recent_age, NO_PATH)
                        break

        # working orders
        cdef int64_t max_working = account_rule.max_working
        cdef int64_t working_after = account.working_count + 1
        if unlikely(max_working != LIMIT_UNSET and working_after > max_working):
            fail(verdict, CHECK_MAX_WORKING_ORDERS_EXCEEDED, max_working, working_after,
                 view.account_max_working_path[account_id])

        # self-match: would the order cross the account's own working order on the other side?
        cdef int64_t cross
        cdef int32_t slot = pos.first_order
        cdef const OrderSlot* working
        cdef bint has_opposite = False
        cdef int64_t opposite = 0
        if account_rule.self_match and slot >= 0:
            cross = cross_price(side, order_type, price)
            while slot >= 0:
                working = &self.orders[slot]
                if (working.side == SIDE_BUY) != is_buy:
                    if not has_opposite or (working.cross_price < opposite if is_buy else working.cross_price > opposite):
                        opposite = working.cross_price
                        has_opposite = True
                slot = working.next
            if has_opposite and (opposite <= cross if is_buy else opposite >= cross):
                fail(verdict, CHECK_SELF_MATCH_PREVENTED, opposite, cross, NO_PATH)

        # capacity of the kernel's own tables: orders first, then positions
        if unlikely(self.live_count >= self.max_orders):
            fail(verdict, CHECK_STATE_CAPACITY_EXHAUSTED, self.max_orders, self.live_count, NO_PATH)
        elif unlikely(position_index < 0 and self.n_positions >= self.max_positions):
            fail(verdict, CHECK_STATE_CAPACITY_EXHAUSTED, self.max_positions, self.n_positions, NO_PATH)

        if verdict.failed:
            return verdict.failed
        handle[0] = self.accept(
            view, order, position_index, notional, effective_price, account_level, strategy_level
        )
        return 0

    cdef int64_t accept(self, RuleView view, const OrderTicket* order, Py_ssize_t position_index,
                        int64_t notional, int64_t effective_price, pt_i128 account_level,
                        pt_i128 strategy_level) noexcept nogil:
        """The order becomes working: reservations, rate charges and memories move."""
        cdef int64_t account_id = order.account_id
        cdef int64_t strategy_id = order.strategy_id
        cdef const AccountRule* account_rule = account_rule_of(view, account_id)
        cdef const StrategyRule* strategy_rule = &view.strategies[strategy_id]
        cdef AccountState* account = &self.accounts[account_id]
        cdef StrategyState* strategy = &self.strategies[strategy_id]
        cdef bint is_limit = order.order_type == ORDER_TYPE_LIMIT
        cdef int32_t slot
        cdef OrderSlot* working
        cdef PositionState* pos
        cdef int entry

        if position_index < 0:
            position_index = self.add_position(order.pair_key, order.pair_hash)
        pos = &self.positions[position_index]

        self.free_top -= 1
        slot = self.free_stack[self.free_top]
        self.live_count += 1
        working = &self.orders[slot]
        working.remaining = order.qty
        working.reserve_price = effective_price
        working.cross_price = cross_price(order.side, order.order_type, order.price)
        working.multiplier = symbol_rule_of(view, order.symbol_id).multiplier
        working.reserved = notional
        working.account = <int32_t>account_id
        working.position_index = <int32_t>position_index
        working.side = <int8_t>order.side
        working.live = 1
        working.prev = -1
        working.next = pos.first_order
        if pos.first_order >= 0:
            self.orders[pos.first_order].prev = slot
        pos.first_order = slot

        if order.side == SIDE_BUY:
            pos.working_buy += <uint64_t>order.qty
        else:
            pos.working_sell += <uint64_t>order.qty
        entry = pos.recent_next
        pos.recent_kinds = (pos.recent_kinds & ~(0xF << (4 * entry))) | (order.side | order.order_type << 2) << (4 * entry)
        pos.recent_qty[entry] = order.qty
        pos.recent_price[entry] = order.price if is_limit else 0
        pos.recent_accepted_ns[entry] = order.now_ns
        pos.recent_next = (entry + 1) & (CONTENT_MEMORY_PER_POSITION - 1)
        if pos.recent_count < CONTENT_MEMORY_PER_POSITION:
            pos.recent_count += 1

        account.working_count += 1
        if unlikely(add_overflows(account.working_notional, notional, &account.working_notional)):
            account.working_notional = INT64_MAX  # (both >= 0: only upwards)
        # the order passed its buckets: level >= window, so a fast bucket's rest fits
        if account_rule.rate_mode != RATE_MODE_NONE:
            account.rate_tokens = saturate(account_level - account_rule.rate_window_ns)
            account.rate_last_ns = order.now_ns
        if strategy_rule.rate_mode != RATE_MODE_NONE:
            strategy.rate_tokens = saturate(strategy_level - strategy_rule.rate_window_ns)
            strategy.rate_last_ns = order.now_ns
        self.remember(order.key_hash)
        return (<int64_t>working.generation) << HANDLE_SLOT_BITS | slot

    # -- prefetching for check_batch ----------------------------------------------------
    cdef void prefetch_order(self, RuleView view, const OrderTicket* order) noexcept nogil:
        """Start loading what an order ahead will read: its rule and state records, its
        client order id's and its pair's hash slots (not the override index: only the few
        accounts with overrides read it). Only a hint: ids are bounds-checked so
        that no address is formed outside the blocks, nothing is read."""
        cdef int64_t account_id = order.account_id
        cdef int64_t symbol_id = order.symbol_id
        cdef const char* record
        cdef bint account_known = 0 <= account_id < view.n_accounts
        cdef bint symbol_known = 0 <= symbol_id < view.n_symbols
        PT_PREFETCH(&self.remembered_set[order.key_hash & self.remembered_set_mask])
        if account_known:
            record = <const char*>account_rule_of(view, account_id)
            PT_PREFETCH(record)
            PT_PREFETCH(record + CACHE_LINE)
            PT_PREFETCH(&self.accounts[account_id])
        if symbol_known:
            record = <const char*>symbol_rule_of(view, symbol_id)
            PT_PREFETCH(record)
            PT_PREFETCH(record + CACHE_LINE)
            PT_PREFETCH(&self.symbols[symbol_id])
        if account_known and symbol_known:
            PT_PREFETCH(&self.position_table[order.pair_hash & self.position_table_mask])

    cdef void prefetch_position(self, RuleView view, OrderTicket* order) noexcept nogil:
        """Find a nearer order's position record (its table slot was prefetched earlier),
        keep its index in the ticket and start loading it."""
        cdef const char* record
        if 0 <= order.account_id < view.n_accounts and 0 <= order.symbol_id < view.n_symbols:
            order.position_index = self.find_position(order.pair_key, order.pair_hash)
            if order.position_index >= 0:
                record = <const char*>&self.positions[order.position_index]
                PT_PREFETCH(record)
                PT_PREFETCH(record + CACHE_LINE)

    cdef void prefetch_working_orders(self, const OrderTicket* order) noexcept nogil:
        """Start loading the first working order of a nearer order's pair (its position
        record was prefetched earlier): the self-match check walks that list."""
        cdef int32_t slot
        if order.position_index >= 0:
            slot = self.positions[order.position_index].first_order
            if slot >= 0:
                PT_PREFETCH(&self.orders[slot])

    # -- account x symbol positions -----------------------------------------------------
    cdef Py_ssize_t find_position(self, int64_t pair_key, uint64_t pair_hash) noexcept nogil:
        cdef uint64_t mask = self.position_table_mask
        cdef uint64_t probe = pair_hash & mask
        cdef PositionSlot* entry
        while True:
            entry = &self.position_table[probe]
            if entry.key == pair_key:
                return entry.index
            if entry.key < 0:
                return -1
            probe = (probe + 1) & mask

    cdef Py_ssize_t add_position(self, int64_t pair_key, uint64_t pair_hash) noexcept nogil:
        """Insert a pair the table does not hold (capacity was checked by the caller)."""
        cdef uint64_t mask = self.position_table_mask
        cdef uint64_t probe = pair_hash & mask
        cdef Py_ssize_t index = self.n_positions
        cdef PositionState* pos = &self.positions[index]
        while self.position_table[probe].key >= 0:
            probe = (probe + 1) & mask
        self.position_table[probe].key = pair_key
        self.position_table[probe].index = index
        self.n_positions += 1
        pos.first_order = -1  # the block is zeroed: the rest already reads "nothing yet"
        return index

    # -- client order ids ---------------------------------------------------------------
    cdef bint remembers(self, uint64_t key_hash) noexcept nogil:
        cdef uint64_t mask = self.remembered_set_mask
        cdef uint64_t probe = key_hash & mask
        cdef uint64_t entry
        if unlikely(key_hash == 0):
            return self.remembers_zero
        while True:
            entry = self.remembered_set[probe]
            if entry == key_hash:
                return True
            if entry == 0:
                return False
            probe = (probe + 1) & mask

    cdef void remember(self, uint64_t key_hash) noexcept nogil:
        """Remember an accepted key (never already remembered), forgetting the oldest one
        when the memory is full."""
        cdef Py_ssize_t memory = self.client_order_id_memory
        cdef Py_ssize_t newest
        cdef uint64_t mask = self.remembered_set_mask
        cdef uint64_t probe
        if self.remembered_count >= memory:
            self.forget(self.remembered_ring[self.remembered_oldest])
            self.remembered_oldest += 1
            if self.remembered_oldest == memory:
                self.remembered_oldest = 0
            self.remembered_count -= 1
        newest = self.remembered_oldest + self.remembered_count
        if newest >= memory:
            newest -= memory
        self.remembered_ring[newest] = key_hash
        self.remembered_count += 1
        if unlikely(key_hash == 0):
            self.remembers_zero = True
            return
        probe = key_hash & mask
        while self.remembered_set[probe]:
            probe = (probe + 1) & mask
        self.remembered_set[probe] = key_hash

    cdef void forget(self, uint64_t key_hash) noexcept nogil:
        """Remove a key with backward-shift deletion: later entries of its probe run move
        back into the hole, so lookups stay exact without tombstones."""
        cdef uint64_t mask = self.remembered_set_mask
        cdef uint64_t* table = self.remembered_set
        cdef uint64_t hole = key_hash & mask
        cdef uint64_t probe
        cdef uint64_t home
        if key_hash == 0:
            self.remembers_zero = False
            return
        while table[hole] != key_hash:
            if not table[hole]:
                return
            hole = (hole + 1) & mask
        probe = hole
        while True:
            probe = (probe + 1) & mask
            if not table[probe]:
                break
            home = table[probe] & mask
            # the entry may fill the hole unless its home lies in the run after the hole
            if ((probe - home) & mask) >= ((probe - hole) & mask):
                table[hole] = table[probe]
                hole = probe
        table[hole] = 0

    # -- executions ---------------------------------------------------------------------
    cdef OrderSlot* working_slot(self, int64_t handle) noexcept nogil:
        """The working order of a handle, or NULL (ended, stale generation, never issued)."""
        cdef uint64_t slot = <uint64_t>handle & HANDLE_SLOT_MASK
        cdef OrderSlot* working
        if handle < 0 or slot >= <uint64_t>self.max_orders:
            return NULL
        working = &self.orders[slot]
        if working.generation != (handle >> HANDLE_SLOT_BITS) or not working.live:
            return NULL
        return working

    cdef void end_order(self, int32_t slot) noexcept nogil:
        cdef OrderSlot* working = &self.orders[slot]
        cdef PositionState* pos = &self.positions[working.position_index]
        self.accounts[working.account].working_count -= 1
        if working.prev >= 0:
            self.orders[working.prev].next = working.next
        else:
            pos.first_order = working.next
        if working.next >= 0:
            self.orders[working.next].prev = working.prev
        working.live = 0
        working.generation = (working.generation + 1) & GENERATION_MASK
        self.free_stack[self.free_top] = slot
        self.free_top += 1
        self.live_count -= 1

    def fill(self, handle, int64_t qty, int64_t price):
        """Apply a (partial) fill of ``qty`` at ``price``; the order ends when none remains.

        The filled quantity moves the position; its notional at the fill price becomes
        filled exposure; the reservation shrinks to the remaining quantity. A fill beyond
        the remaining quantity is applied in full and reported as OVERFILL.
        """
        cdef OrderSlot* working
        cdef PositionState* pos
        cdef AccountState* account
        cdef int64_t applied
        cdef int64_t still_reserved
        cdef int32_t slot
        cdef int status = EXEC_OK
        cdef int64_t handle_value = _handle_value(handle)
        self.lock_state()
        working = self.working_slot(handle_value)
        if working == NULL:
            status = EXEC_UNKNOWN_ORDER
        elif qty <= 0:
            status = EXEC_INVALID_QUANTITY
        elif price <= 0:
            status = EXEC_INVALID_PRICE
        else:
            slot = <int32_t>(handle_value & HANDLE_SLOT_MASK)
            pos = &self.positions[working.position_index]
            account = &self.accounts[working.account]
            applied = qty if qty < working.remaining else working.remaining
            working.remaining -= applied
            still_reserved = notional_micros(working.remaining, working.reserve_price, working.multiplier)
            account.working_notional -= working.reserved - still_reserved
            working.reserved = still_reserved
            account.filled_notional = saturate(
                <pt_i128>account.filled_notional + notional_micros(qty, price, working.multiplier)
            )
            if working.side == SIDE_BUY:
                pos.working_buy -= <uint64_t>applied
                pos.position = saturate(<pt_i128>pos.position + qty)
            else:
                pos.working_sell -= <uint64_t>applied
                pos.position = saturate(<pt_i128>pos.position - qty)
            if working.remaining == 0:
                self.end_order(slot)
            if qty > applied:
                status = EXEC_OVERFILL
        self.unlock_state()
        return status

    def release(self, handle):
        """End a working order without a fill (cancelled, rejected by the venue, expired)."""
        cdef OrderSlot* working
        cdef PositionState* pos
        cdef int status = EXEC_OK
        cdef int64_t handle_value = _handle_value(handle)
        self.lock_state()
        working = self.working_slot(handle_value)
        if working == NULL:
            status = EXEC_UNKNOWN_ORDER
        else:
            pos = &self.positions[working.position_index]
            if working.side == SIDE_BUY:
                pos.working_buy -= <uint64_t>working.remaining
            else:
                pos.working_sell -= <uint64_t>working.remaining
            self.accounts[working.account].working_notional -= working.reserved
            self.end_order(<int32_t>(handle_value & HANDLE_SLOT_MASK))
        self.unlock_state()
        return status

    def reset_filled_exposure(self, int64_t account_id=-1):
        """Start a new credit period: filled notional back to zero (one account, or all)."""
        cdef Py_ssize_t i
        self.lock_state()
        if account_id < 0:
            for i in range(self.account_capacity):
                self.accounts[i].filled_notional = 0
        elif account_id < self.account_capacity:
            self.accounts[account_id].filled_notional = 0
        self.unlock_state()

    # -- state readers (tests, status and explanations) ---------------------------------
    def exposure(self, int64_t account_id):
        """(working notional, filled notional) of an account, in micros."""
        cdef int64_t working = 0
        cdef int64_t filled = 0
        self.lock_state()
        if 0 <= account_id < self.account_capacity:
            working = self.accounts[account_id].working_notional
            filled = self.accounts[account_id].filled_notional
        self.unlock_state()
        return working, filled

    def position(self, int64_t account_id, int64_t symbol_id):
        """(position, working buy qty, working sell qty) of an account x symbol."""
        cdef Py_ssize_t index = -1
        cdef int64_t position = 0
        cdef uint64_t working_buy = 0
        cdef uint64_t working_sell = 0
        if 0 <= account_id < MAX_INDEXED_ID and 0 <= symbol_id < MAX_INDEXED_ID:
            self.lock_state()
            index = self.find_position(account_id << 32 | symbol_id, mix64(<uint64_t>(account_id << 32 | symbol_id)))
            if index >= 0:
                position = self.positions[index].position
                working_buy = self.positions[index].working_buy
                working_sell = self.positions[index].working_sell
            self.unlock_state()
        return position, working_buy, working_sell

    def working_orders(self, int64_t account_id):
        """Working orders of an account."""
        cdef int64_t count = 0
        self.lock_state()
        if 0 <= account_id < self.account_capacity:
            count = self.accounts[account_id].working_count
        self.unlock_state()
        return count

    def live_orders(self):
        """Working orders of all accounts."""
        return self.live_count


cdef int64_t _handle_value(object handle) except? -2:
    """A handle as int64; a Python int outside int64 is no handle the kernel issued (-1)."""
    try:
        return handle
    except OverflowError:
        return -1


cdef object _small_int_bytes(object column, str name):
    """An int8 or uint8 column as uint8 bytes (the caller reinterprets signed ones)."""
    array = np.asarray(column)
    if array.dtype != np.int8 and array.dtype != np.uint8:
        raise TypeError(f"{name} must be int8 or uint8, got {array.dtype}")
    return array.view(np.uint8)


cdef void _require_length(str name, Py_ssize_t length, Py_ssize_t expected) except *:
    if length != expected:
        raise ValueError(f"{name} has {length} rows, expected {expected}")

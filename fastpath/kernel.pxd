# cython: language_level=3
"""Table of contents of the compiled kernel: its C vocabulary, state layout and classes.

Read this file first. ``kernel.pyx`` implements what is declared here; ``kernel.pyi`` is the
Python-visible surface. The enums mirror ``fastpath/codes.py`` number for number (the
module exposes them by name in ``ENUMS`` so a test can prove it); C enum
members share one namespace, hence the prefixes.
"""

cimport cython
from cpython.pythread cimport PyThread_type_lock
from libc.stdint cimport int8_t, int32_t, int64_t, uint8_t, uint16_t, uint32_t, uint64_t

# ---------------------------------------------------------------------------------------
# Exact wide arithmetic. Cython has no 128-bit type, so it is told this is a long long;
# it is never converted to a Python object (values leave through ``saturate``), and every
# product that needs it casts an operand first: ``<pt_i128>a * b``.
# ---------------------------------------------------------------------------------------
cdef extern from *:
    """
    typedef __int128 pt_i128;
    typedef unsigned __int128 pt_u128;
    """
    ctypedef long long pt_i128
    ctypedef unsigned long long pt_u128

# ---------------------------------------------------------------------------------------
# Enums of fastpath/codes.py (identical numeric values).
# ---------------------------------------------------------------------------------------
cdef enum Check:
    CHECK_INVALID_SIDE = 0
    CHECK_INVALID_ORDER_TYPE = 1
    CHECK_INVALID_QUANTITY = 2
    CHECK_INVALID_PRICE = 3
    CHECK_UNKNOWN_ACCOUNT = 4
    CHECK_UNKNOWN_SYMBOL = 5
    CHECK_UNKNOWN_STRATEGY = 6
    CHECK_PRICE_OFF_TICK = 7
    CHECK_QUANTITY_OFF_LOT = 8
    CHECK_REFERENCE_PRICE_MISSING = 9
    CHECK_REFERENCE_PRICE_STALE = 10
    CHECK_MISSING_LIMIT = 11
    CHECK_TRADING_HALTED = 12
    CHECK_REDUCE_ONLY_VIOLATION = 13
    CHECK_SYMBOL_RESTRICTED = 14
    CHECK_MAX_ORDER_QTY_EXCEEDED = 15
    CHECK_MAX_ORDER_NOTIONAL_EXCEEDED = 16
    CHECK_PRICE_COLLAR_BREACHED = 17
    CHECK_CREDIT_LIMIT_EXCEEDED = 18
    CHECK_LONG_POSITION_LIMIT_EXCEEDED = 19
    CHECK_SHORT_POSITION_LIMIT_EXCEEDED = 20
    CHECK_ACCOUNT_ORDER_RATE_EXCEEDED = 21
    CHECK_STRATEGY_ORDER_RATE_EXCEEDED = 22
    CHECK_DUPLICATE_CLIENT_ORDER_ID = 23
    CHECK_DUPLICATE_ORDER_CONTENT = 24
    CHECK_MAX_WORKING_ORDERS_EXCEEDED = 25
    CHECK_SELF_MATCH_PREVENTED = 26
    CHECK_STATE_CAPACITY_EXHAUSTED = 27
    CHECK_INTERNAL_ERROR = 28
    CHECK_HALT_STATE_UNAVAILABLE = 29

cdef enum:
    N_CHECKS = 30
    N_LIMIT_KINDS = 6
    #: Accepted orders whose content each account x symbol remembers (a power of two:
    #: the ring index wraps with a mask).
    CONTENT_MEMORY_PER_POSITION = 4

cdef enum Side:
    SIDE_UNSPECIFIED = 0
    SIDE_BUY = 1
    SIDE_SELL = 2
    SIDE_SELL_SHORT = 3

cdef enum OrderType:
    ORDER_TYPE_UNSPECIFIED = 0
    ORDER_TYPE_LIMIT = 1
    ORDER_TYPE_MARKET = 2

cdef enum TradingState:
    TRADING_STATE_ACTIVE = 0
    TRADING_STATE_REDUCING = 1
    TRADING_STATE_HALTED = 2

cdef enum Scope:
    SCOPE_FIRM = 0
    SCOPE_ACCOUNT = 1
    SCOPE_STRATEGY = 2
    SCOPE_SYMBOL = 3

cdef enum ExecStatus:
    EXEC_OK = 0
    EXEC_UNKNOWN_ORDER = 1
    EXEC_OVERFILL = 2
    EXEC_INVALID_QUANTITY = 3
    EXEC_INVALID_PRICE = 4

cdef enum LimitKind:
    LIMIT_KIND_MAX_ORDER_QTY = 0
    LIMIT_KIND_MAX_ORDER_NOTIONAL = 1
    LIMIT_KIND_MAX_LONG_POSITION = 2
    LIMIT_KIND_MAX_SHORT_POSITION = 3
    LIMIT_KIND_PRICE_COLLAR_PPM = 4
    LIMIT_KIND_PRICE_COLLAR_TICKS = 5

cdef enum MissingLimit:
    MISSING_MAX_ORDER_QTY = 1 << 0
    MISSING_MAX_ORDER_NOTIONAL = 1 << 1
    MISSING_MAX_LONG_POSITION = 1 << 2
    MISSING_MAX_SHORT_POSITION = 1 << 3
    MISSING_PRICE_COLLAR = 1 << 4
    MISSING_CREDIT_LIMIT = 1 << 5
    MISSING_MAX_WORKING_ORDERS = 1 << 6
    MISSING_ACCOUNT_ORDER_RATE = 1 << 7
    MISSING_STRATEGY_ORDER_RATE = 1 << 8

cdef enum RateMode:  # how an order-rate limit is evaluated
    RATE_MODE_NONE = 0  # LIMIT_UNSET or LIMIT_UNLIMITED: no bucket
    RATE_MODE_FAST = 1  # capacity fits int64: the bucket in 64-bit arithmetic
    RATE_MODE_WIDE = 2  # anything else: the bucket in 128-bit arithmetic

# ---------------------------------------------------------------------------------------
# Record layout. Rules and state are arrays of fixed-size records, one per id (or pair, or
# order slot; account and symbol rules one per distinct setting, see RuleView), in numpy
# blocks owned by the kernel, aligned to 64 bytes and read through typed pointers. Sizes
# are whole cache lines (or halves; ``RECORD_SIZES`` and a test hold them there), so one
# order touches few lines and ``check_batch`` can prefetch them for the orders ahead.
# ---------------------------------------------------------------------------------------
cdef struct AccountRule:  # 128 bytes: what an order reads of its account's rules
    # accounts.A.limits, else firm.limits, with LIMIT_UNSET read as INT64_MAX ("no bound"),
    # so that the effective limit of a kind is min(chain, cap) without a branch; whether a
    # kind is configured at all is in ``unset_kinds``. (Paths and the raw values are read
    # from the RuleView's arrays, only to explain a failure.)
    int64_t limits[N_LIMIT_KINDS]
    int64_t credit_limit  # LIMIT_UNSET = none
    int64_t max_working  # LIMIT_UNSET = none
    int64_t rate_orders
    int64_t rate_window_ns
    int64_t rate_capacity  # rate_orders * rate_window_ns when rate_mode == RATE_MODE_FAST
    int64_t dup_window_ns
    uint16_t missing  # MISSING_CREDIT_LIMIT | MISSING_MAX_WORKING_ORDERS | MISSING_ACCOUNT_ORDER_RATE
    uint8_t unset_kinds  # bit k: LimitKind k configured nowhere on the account chain
    uint8_t active
    uint8_t self_match
    uint8_t has_overrides  # the account has account x symbol override rows
    uint8_t rate_mode  # RateMode
    uint8_t padding[25]

cdef struct SymbolRule:  # 128 bytes: what an order reads of its symbol's rules
    int64_t limits[N_LIMIT_KINDS]  # instrument caps, LIMIT_UNSET read as INT64_MAX
    int64_t tick
    int64_t lot
    int64_t multiplier
    int64_t max_ref_age_ns
    # multiplier / 1e12 in lowest terms: the second step of the notional is
    # ceil(contract * multiplier_num / multiplier_den), one 64-bit division when it fits
    uint64_t multiplier_num
    uint64_t multiplier_den
    uint8_t active
    uint8_t restricted_sides
    uint8_t unset_kinds  # bit k: no instrument cap of LimitKind k
    uint8_t padding[29]

cdef struct StrategyRule:  # 32 bytes
    int64_t rate_orders
    int64_t rate_window_ns
    int64_t rate_capacity
    uint16_t missing  # MISSING_STRATEGY_ORDER_RATE for a named strategy without a rate
    uint8_t active
    uint8_t rate_mode  # RateMode (RATE_MODE_NONE for strategy 0)
    uint8_t padding[4]

cdef struct AccountState:  # 64 bytes
    int64_t working_notional  # micros reserved by working orders (never above the credit limit)
    int64_t filled_notional  # micros filled in this credit period (saturating)
    int64_t working_count
    int64_t rate_tokens  # token-nanoseconds; -1 = never charged (full)
    int64_t rate_last_ns
    uint8_t trading_state
    uint8_t padding[23]  # to one cache line

cdef struct StrategyState:  # 32 bytes
    int64_t rate_tokens
    int64_t rate_last_ns
    uint8_t trading_state
    uint8_t padding[15]

cdef struct SymbolState:  # 32 bytes
    int64_t reference_price  # nanos; <= 0 = none
    int64_t reference_ts_ns
    uint8_t trading_state
    uint8_t padding[15]

cdef struct PositionState:  # 128 bytes: one account x symbol pair
    int64_t position  # signed qty nanos from fills (saturating)
    # Working quantities fit uint64: an accept needs position + working_buy + qty <= a limit
    # <= INT64_MAX with position >= INT64_MIN (and symmetrically for sells).
    uint64_t working_buy
    uint64_t working_sell
    int32_t first_order  # head of this pair's doubly-linked list of working slots, -1 empty
    uint8_t recent_count  # entries of the content ring in use (<= CONTENT_MEMORY_PER_POSITION)
    uint8_t recent_next  # ring index the next accepted order is written to
    # The content ring of the last accepted orders: side | order_type << 2 in one nibble per
    # entry (both fit two bits), then quantity, price (0 for market) and accept time.
    uint16_t recent_kinds
    int64_t recent_qty[CONTENT_MEMORY_PER_POSITION]
    int64_t recent_price[CONTENT_MEMORY_PER_POSITION]
    int64_t recent_accepted_ns[CONTENT_MEMORY_PER_POSITION]

cdef struct PositionSlot:  # open-addressing table: pair key -> dense position index
    int64_t key  # account_id << 32 | symbol_id; -1 = empty
    int64_t index

cdef struct OrderSlot:  # 64 bytes
    int64_t remaining  # qty nanos still working
    int64_t reserve_price  # limit price, or the reference price of a market order
    int64_t cross_price  # limit price, or INT64_MAX (buy) / 0 (sell) for a market order
    int64_t multiplier  # the symbol's multiplier at accept time
    int64_t reserved  # notional micros still reserved against credit
    int32_t account
    int32_t position_index
    int32_t prev  # neighbours in the pair's working-order list, -1 none
    int32_t next
    uint32_t generation  # bumped when the slot is freed; stale handles stop matching
    int8_t side
    uint8_t live

cdef struct OrderTicket:  # one order as the core reads it
    int64_t account_id
    int64_t symbol_id
    int64_t strategy_id
    int64_t side
    int64_t order_type
    int64_t qty
    int64_t price
    int64_t client_order_key
    int64_t now_ns
    # Derived once per order (``prepare_ticket``) and shared by the prefetch stages and the core.
    int64_t pair_key  # account_id << 32 | symbol_id (meaningful for known ids only)
    uint64_t pair_hash  # mix64(pair_key): home of the pair in the position table
    uint64_t key_hash  # mix64(client_order_key): home of the key in the remembered set
    # The pair's dense position index if a prefetch stage found one, else -1 (look it up):
    # positions are never removed, so a found index stays right.
    Py_ssize_t position_index

cdef struct OrderColumns:  # the input arrays of check_batch, as raw pointers
    const int32_t* account_ids
    const int32_t* symbol_ids
    const int32_t* strategy_ids
    const uint8_t* sides
    const uint8_t* order_types
    const int64_t* qtys
    const int64_t* prices
    const int64_t* keys
    const int64_t* now_ns  # NULL: every order is at now_scalar
    int64_t now_scalar
    bint sides_signed  # int8 columns, read as signed
    bint order_types_signed

cdef struct Verdict:  # where the core writes a decision's failures
    uint64_t failed
    int64_t* limits  # N_CHECKS entries, written only at failed codes
    int64_t* observed
    int32_t* paths

@cython.final
cdef class RuleView:
    """Typed, validated views of one ``RuleTables``, plus its per-id rows packed into
    records; immutable once built."""

    cdef readonly object rules  # the CompiledRules the views read
    cdef readonly Py_ssize_t n_accounts
    cdef readonly Py_ssize_t n_symbols
    cdef readonly Py_ssize_t n_strategies
    cdef readonly Py_ssize_t n_overrides

    cdef const uint8_t[::1] account_active
    cdef const int64_t[:, ::1] account_limits
    cdef const int32_t[:, ::1] account_limit_paths
    cdef const int64_t[::1] account_credit_limit
    cdef const int32_t[::1] account_credit_path
    cdef const int64_t[::1] account_max_working
    cdef const int32_t[::1] account_max_working_path
    cdef const int64_t[::1] account_rate_orders
    cdef const int64_t[::1] account_rate_window_ns
    cdef const int32_t[::1] account_rate_path
    cdef const uint8_t[::1] account_self_match
    cdef const int64_t[::1] account_dup_window_ns

    cdef const uint8_t[::1] symbol_active
    cdef const int64_t[::1] symbol_tick
    cdef const int32_t[::1] symbol_tick_path
    cdef const int64_t[::1] symbol_lot
    cdef const int32_t[::1] symbol_lot_path
    cdef const int64_t[::1] symbol_multiplier
    cdef const int64_t[::1] symbol_max_ref_age_ns
    cdef const int32_t[::1] symbol_max_ref_age_path
    cdef const int64_t[:, ::1] symbol_limits
    cdef const int32_t[:, ::1] symbol_limit_paths
    cdef const uint8_t[::1] symbol_restricted_sides
    cdef const int32_t[::1] symbol_restricted_path

    cdef const uint8_t[::1] strategy_active
    cdef const int64_t[::1] strategy_rate_orders
    cdef const int64_t[::1] strategy_rate_window_ns
    cdef const int32_t[::1] strategy_rate_path

    cdef const int64_t[::1] override_keys
    cdef const int64_t[:, ::1] override_limits
    cdef const int32_t[:, ::1] override_limit_paths
    cdef const uint8_t[::1] override_restricted_sides
    cdef const int32_t[::1] override_restricted_path
    # Override rows of account a are override_first[a] .. override_first[a + 1] - 1 (the
    # keys sort by account first), so an order searches only its own account's few rows.
    cdef const int64_t[::1] override_first

    # The account, symbol and strategy rows above as the records the core reads. Accounts
    # and symbols with the same settings share one record (most share the firm's defaults
    # or an instrument class's), so the few distinct records stay cached at any number of
    # ids: ``accounts[account_profile[id]]`` is the record of account ``id`` (likewise
    # symbols). Strategies (few) have one record per id.
    cdef object account_block
    cdef AccountRule* accounts
    cdef object account_profile_block
    cdef uint32_t* account_profile
    cdef readonly Py_ssize_t n_account_profiles
    cdef object symbol_block
    cdef SymbolRule* symbols
    cdef object symbol_profile_block
    cdef uint32_t* symbol_profile
    cdef readonly Py_ssize_t n_symbol_profiles
    cdef object strategy_block
    cdef StrategyRule* strategies

    cdef Py_ssize_t override_row(self, int64_t account_id, int64_t pair_key) noexcept nogil
    cdef int64_t resolved_limit(self, int64_t account_id, int64_t symbol_id, Py_ssize_t override,
                                int kind, int32_t* path) noexcept nogil


@cython.final
cdef class CheckResult:
    """Decision of one order: failure mask, handle and the details of failed checks."""

    cdef readonly bint accepted
    cdef readonly uint64_t failed
    cdef readonly int64_t handle
    cdef int64_t limits[N_CHECKS]
    cdef int64_t observed[N_CHECKS]
    cdef int32_t paths[N_CHECKS]


@cython.final
cdef class Kernel:
    cdef readonly RuleView view
    cdef readonly Py_ssize_t max_orders
    cdef readonly Py_ssize_t max_positions
    cdef readonly Py_ssize_t client_order_id_memory

    # Serialises state access between a GIL-free check_batch and everything else.
    cdef PyThread_type_lock state_lock

    # Per scope id. ``*_blocks`` own the memory, the pointers read it, capacities bound it.
    cdef object account_block
    cdef AccountState* accounts
    cdef Py_ssize_t account_capacity
    cdef object strategy_block
    cdef StrategyState* strategies
    cdef Py_ssize_t strategy_capacity
    cdef object symbol_block
    cdef SymbolState* symbols
    cdef Py_ssize_t symbol_capacity
    cdef uint8_t firm_state
    # Trading states set for ids no interner hands out (negative or >= 2**31), so that
    # trading_state() reads back what was set; no order can carry such an id.
    cdef dict unindexed_states

    # account x symbol pairs
    cdef object position_block
    cdef PositionState* positions
    cdef Py_ssize_t n_positions
    cdef object position_table_block
    cdef PositionSlot* position_table
    cdef uint64_t position_table_mask

    # working orders
    cdef object order_block
    cdef OrderSlot* orders
    cdef object free_stack_block
    cdef int32_t* free_stack
    cdef Py_ssize_t free_top  # free_stack[free_top - 1] is the next slot handed out
    cdef Py_ssize_t live_count

    # client order ids of the last ``client_order_id_memory`` accepted orders, held as
    # their mix64 hashes: mix64 is a bijection of 64-bit values, so equal hashes are equal
    # keys, and an 8-byte slot both identifies the key and gives its home slot. Hash 0
    # (key 0) marks an empty slot, so key 0 is remembered by a flag instead.
    cdef object remembered_ring_block
    cdef uint64_t* remembered_ring
    cdef Py_ssize_t remembered_oldest  # ring index of the oldest key
    cdef Py_ssize_t remembered_count
    cdef object remembered_set_block
    cdef uint64_t* remembered_set
    cdef uint64_t remembered_set_mask
    cdef bint remembers_zero

    cdef uint64_t decide(self, RuleView view, const OrderTicket* order, Verdict* verdict,
                         int64_t* handle) noexcept nogil
    cdef int64_t accept(self, RuleView view, const OrderTicket* order, Py_ssize_t position_index,
                        int64_t notional, int64_t effective_price, pt_i128 account_level,
                        pt_i128 strategy_level) noexcept nogil
    cdef OrderSlot* working_slot(self, int64_t handle) noexcept nogil
    cdef void end_order(self, int32_t slot) noexcept nogil
    cdef void prefetch_order(self, RuleView view, const OrderTicket* order) noexcept nogil
    cdef void prefetch_position(self, RuleView view, OrderTicket* order) noexcept nogil
    cdef void prefetch_working_orders(self, const OrderTicket* order) noexcept nogil
    cdef Py_ssize_t find_position(self, int64_t pair_key, uint64_t pair_hash) noexcept nogil
    cdef Py_ssize_t add_position(self, int64_t pair_key, uint64_t pair_hash) noexcept nogil
    cdef bint remembers(self, uint64_t key_hash) noexcept nogil
    cdef void remember(self, uint64_t key_hash) noexcept nogil
    cdef void forget(self, uint64_t key_hash) noexcept nogil
    cdef void lock_state(self) noexcept
    cdef void unlock_state(self) noexcept nogil
    cdef void grow_accounts(self, Py_ssize_t needed)
    cdef void grow_strategies(self, Py_ssize_t needed)
    cdef void grow_symbols(self, Py_ssize_t needed)

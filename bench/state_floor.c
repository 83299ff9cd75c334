/* The state floor of Kernel.check_batch: the per-order state work the check catalogue
 * requires, and nothing else, so bench_fastpath.py can say how far check_batch is from it.
 *
 * WHAT IT DOES, per order, over the same order flow the kernel decided:
 *   - account x symbol position: open-addressing hash lookup (insert on accept);
 *   - client order id memory: probe of the remembered set; on accept, insert into the
 *     ring + set, evicting the oldest key with backward-shift deletion once full;
 *   - duplicate content: the position's ring of the last 4 accepted orders;
 *   - self-match: walk of the pair's list of working orders;
 *   - reference price age, trading states, credit (working + filled notional), position
 *     limits including working quantity, account and strategy rate buckets, working count,
 *     state capacity (rate buckets in 64-bit arithmetic: capacities that do not fit are
 *     rejected at start, where the kernel would take its 128-bit road);
 *   - on accept (where the real kernel accepted): order slot popped and linked into its
 *     pair's list, working quantities, reservation, rate buckets, content ring, id memory.
 * Between batches (untimed) it releases the previous batch's accepted orders exactly as
 * Kernel.release() does.
 *
 * WHAT IT LEAVES OUT, deliberately: the stateless checks (validity beyond the id bounds
 * that memory safety needs, tick, lot, restrictions, order size and notional limits,
 * collar, missing limits, reduce-only), account x symbol override rows (the bench's only
 * touch max_order_qty, a stateless check), the explanation of failures (limits, observed
 * values, rule paths), halts, and everything around the loop: Python, argument checks,
 * the state lock.
 *
 * WHY IT IS A FLOOR: every state check the kernel makes is made here, on the kernel's own
 * structures (64-byte account state and order slot, 128-byte position, rules shared per
 * distinct setting), the same table sizes as the kernel's defaults (fastpath/reference.py:
 * 2^18 orders, 2^18 positions, 2^20 remembered ids; hash tables twice as large), the same
 * hash, and software prefetch of the records of the order PREFETCH_DISTANCE ahead, with
 * nothing else around it. It is a floor for this state design, not a proof for every
 * design: a leaner client-id memory tried while building it (a sorted ring while keys
 * only increase) moved it by about 5 %; the position table, the position records and the
 * instruction count are what it costs. bench_fastpath.py checks that this program's
 * state-check failures equal the kernel's, order by order.
 *
 * USAGE: state_floor DIR BATCHES
 * DIR holds little-endian arrays without headers (numpy .tofile), C order; the sizes
 * follow from the file lengths:
 *   rules, one element per id, in the units of fastpath/codes.py (nanos of qty and price)
 *   ("no limit" = INT64_MAX; rate orders <= 0 = no bucket)
 *     account_limits.i64          accounts x 6 int64 (LimitKind order, fastpath/codes.py)
 *     account_credit_limit.i64    int64
 *     account_max_working.i64     int64
 *     account_rate_orders.i64     int64
 *     account_rate_window_ns.i64  int64
 *     account_dup_window_ns.i64   int64 (<= 0 = no duplicate-content check)
 *     account_self_match.u8       uint8 (1 = self-match prevention)
 *     symbol_limits.i64           symbols x 6 int64
 *     symbol_multiplier.i64       int64 (contract multiplier, 1e9 = 1.0)
 *     symbol_max_ref_age_ns.i64   int64
 *     symbol_reference_price.i64  int64 (<= 0 = none)
 *     symbol_reference_ts_ns.i64  int64
 *     strategy_rate_orders.i64    int64
 *     strategy_rate_window_ns.i64 int64
 *   orders, batch NN = 00, 01, ... (the check_batch columns, and the kernel's decision)
 *     batch_NN_account_ids.i32, batch_NN_symbol_ids.i32, batch_NN_strategy_ids.i32,
 *     batch_NN_sides.i8, batch_NN_order_types.i8, batch_NN_qtys.i64,
 *     batch_NN_prices.i64, batch_NN_keys.i64, batch_NN_now_ns.i64,
 *     batch_NN_accepted.u8        1 where the kernel accepted the order
 * Writes batch_NN_floor_failed.u64 (this program's failure mask per order, bits as
 * fastpath/codes.py Check; an order with an unknown id gets only its UNKNOWN_* bits) and
 * prints one JSON line: {"orders_per_batch": N, "ns_per_order": [one per batch]}, timed
 * with CLOCK_MONOTONIC around each batch's loop only.
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>

#define MAX_ORDERS (1 << 18)
#define MAX_POSITIONS (1 << 18)
#define POSITION_TABLE_SIZE (2 * MAX_POSITIONS)
#define ID_MEMORY (1 << 20)
#define ID_SET_SIZE (2 * ID_MEMORY)
#define CONTENT_MEMORY 4
#define PREFETCH_DISTANCE 8
#define TICKET_RING 16 /* > PREFETCH_DISTANCE, a power of two */

#define likely(x) __builtin_expect(!!(x), 1)
#define unlikely(x) __builtin_expect(!!(x), 0)
#define PREFETCH_READ(p) __builtin_prefetch((p), 0, 3)
#define PREFETCH_WRITE(p) __builtin_prefetch((p), 1, 3)
#define BIT(check) ((uint64_t)1 << (check))

typedef __int128 i128;
typedef unsigned __int128 u128;

enum Check { /* fastpath/codes.py, the codes this program sets */
    UNKNOWN_ACCOUNT = 4, UNKNOWN_SYMBOL = 5, UNKNOWN_STRATEGY = 6,
    REFERENCE_PRICE_MISSING = 9, REFERENCE_PRICE_STALE = 10, TRADING_HALTED = 12,
    CREDIT_LIMIT_EXCEEDED = 18, LONG_POSITION_LIMIT_EXCEEDED = 19, SHORT_POSITION_LIMIT_EXCEEDED = 20,
    ACCOUNT_ORDER_RATE_EXCEEDED = 21, STRATEGY_ORDER_RATE_EXCEEDED = 22,
    DUPLICATE_CLIENT_ORDER_ID = 23, DUPLICATE_ORDER_CONTENT = 24,
    MAX_WORKING_ORDERS_EXCEEDED = 25, SELF_MATCH_PREVENTED = 26, STATE_CAPACITY_EXHAUSTED = 27,
};
enum { SIDE_BUY = 1, ORDER_TYPE_LIMIT = 1 };
enum { MAX_LONG_POSITION = 2, MAX_SHORT_POSITION = 3 }; /* LimitKind */

/* ---- records (the kernel's layouts, fastpath/kernel.pxd) ------------------------------ */
typedef struct { /* rules shared by all accounts with the same settings */
    int64_t limits[6], credit_limit, max_working, rate_orders, rate_window_ns, rate_capacity, dup_window_ns;
    uint8_t self_match, padding[7];
} AccountRule;
typedef struct {
    int64_t limits[6], multiplier, max_ref_age_ns;
    uint64_t multiplier_num, multiplier_den; /* multiplier / 1e12 in lowest terms: one division */
} SymbolRule;
typedef struct { int64_t rate_orders, rate_window_ns, rate_capacity; } StrategyRule;
typedef struct { /* 64 bytes */
    int64_t working_notional, filled_notional, working_count, rate_tokens, rate_last_ns;
    uint32_t rule; /* index into account_rules */
    uint8_t trading_state, padding[19];
} AccountState;
typedef struct { /* 32 bytes */
    int64_t reference_price, reference_ts_ns;
    uint32_t rule;
    uint8_t trading_state, padding[11];
} SymbolState;
typedef struct { int64_t rate_tokens, rate_last_ns; uint8_t trading_state, padding[15]; } StrategyState;
typedef struct { /* 128 bytes */
    int64_t position;
    uint64_t working_buy, working_sell;
    int32_t first_order;
    uint8_t recent_count, recent_next;
    uint16_t recent_kinds; /* 4 bits per remembered order: side | order_type << 2 */
    int64_t recent_qty[CONTENT_MEMORY], recent_price[CONTENT_MEMORY], recent_ns[CONTENT_MEMORY];
} PositionState;
typedef struct { int64_t key, index; } PositionSlot;
typedef struct { /* 64 bytes */
    int64_t remaining, reserve_price, cross_price, multiplier, reserved;
    int32_t account, position_index, prev, next;
    uint32_t generation;
    int8_t side;
    uint8_t live;
} OrderSlot;

/* ---- state ------------------------------------------------------------------------------ */
static int64_t n_accounts, n_symbols, n_strategies;
static AccountRule* account_rules;
static SymbolRule* symbol_rules;
static StrategyRule* strategy_rules;
static AccountState* accounts;
static SymbolState* symbols;
static StrategyState* strategies;
static PositionState* positions;
static int64_t n_positions;
static PositionSlot* position_table;
static const PositionState NO_POSITION = {.first_order = -1};
static OrderSlot* orders;
static int32_t* free_stack;
static int64_t free_top, live_count;
static uint64_t* remembered_ring; /* key hashes in acceptance order */
static int64_t remembered_oldest, remembered_count;
static uint64_t* remembered_set; /* open addressing, 0 = empty */
static int remembers_zero;        /* the hash 0 cannot live in the set */

static inline uint64_t mix64(uint64_t v) {
    v = (v ^ (v >> 30)) * 0xBF58476D1CE4E5B9ull;
    v = (v ^ (v >> 27)) * 0x94D049BB133111EBull;
    return v ^ (v >> 31);
}
static inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

/* positions are never removed: linear probing without deletion */
static inline int64_t find_position(int64_t key, uint64_t hash) {
    for (uint64_t p = hash & (POSITION_TABLE_SIZE - 1);; p = (p + 1) & (POSITION_TABLE_SIZE - 1)) {
        if (position_table[p].key == key) return position_table[p].index;
        if (position_table[p].key < 0) return -1;
    }
}
static inline int64_t add_position(int64_t key, uint64_t hash) {
    uint64_t p = hash & (POSITION_TABLE_SIZE - 1);
    while (position_table[p].key >= 0) p = (p + 1) & (POSITION_TABLE_SIZE - 1);
    position_table[p].key = key;
    position_table[p].index = n_positions;
    positions[n_positions].first_order = -1;
    return n_positions++;
}

static inline int remembers(uint64_t hash) {
    if (unlikely(hash == 0)) return remembers_zero;
    for (uint64_t p = hash & (ID_SET_SIZE - 1);; p = (p + 1) & (ID_SET_SIZE - 1)) {
        if (remembered_set[p] == hash) return 1;
        if (remembered_set[p] == 0) return 0;
    }
}
/* backward-shift deletion: later entries of the probe run move into the hole, so lookups
   stay exact without tombstones (as the kernel) */
static void forget(uint64_t hash) {
    const uint64_t mask = ID_SET_SIZE - 1;
    if (hash == 0) { remembers_zero = 0; return; }
    uint64_t hole = hash & mask;
    while (remembered_set[hole] != hash) {
        if (!remembered_set[hole]) return;
        hole = (hole + 1) & mask;
    }
    for (uint64_t probe = (hole + 1) & mask; remembered_set[probe]; probe = (probe + 1) & mask) {
        uint64_t home = remembered_set[probe] & mask;
        if (((probe - home) & mask) >= ((probe - hole) & mask)) {
            remembered_set[hole] = remembered_set[probe];
            hole = probe;
        }
    }
    remembered_set[hole] = 0;
}
static inline void remember(uint64_t hash) {
    if (remembered_count >= ID_MEMORY) {
        forget(remembered_ring[remembered_oldest]);
        remembered_oldest = (remembered_oldest + 1) & (ID_MEMORY - 1);
        remembered_count--;
    }
    remembered_ring[(remembered_oldest + remembered_count) & (ID_MEMORY - 1)] = hash;
    remembered_count++;
    if (unlikely(hash == 0)) { remembers_zero = 1; return; }
    uint64_t p = hash & (ID_SET_SIZE - 1);
    while (remembered_set[p]) p = (p + 1) & (ID_SET_SIZE - 1);
    remembered_set[p] = hash;
}

/* notional in micros: ceil(ceil(qty * price / 1e9) * multiplier / 1e12) (nanos in, as
   the kernel's notional_micros), one 64-bit
   division when qty is whole units and the product fits, else exact in 128 bits */
static inline int64_t notional_of(int64_t qty, int64_t price, const SymbolRule* rule) {
    uint64_t units = (uint64_t)qty / 1000000000ull;
    if (likely(units * 1000000000ull == (uint64_t)qty)) {
        u128 scaled = (u128)units * (uint64_t)price * rule->multiplier_num;
        if (likely(!(scaled >> 64))) {
            uint64_t s = (uint64_t)scaled, q = s / rule->multiplier_den;
            return (int64_t)(q + (q * rule->multiplier_den != s));
        }
    }
    u128 contract = ((u128)(uint64_t)qty * (uint64_t)price + 999999999u) / 1000000000u;
    u128 notional = (contract * (uint64_t)rule->multiplier + 999999999999ull) / 1000000000000ull;
    return notional > (u128)INT64_MAX ? INT64_MAX : (int64_t)notional;
}
/* token bucket level at `now` (token-nanoseconds; tokens < 0 = never charged = full) */
static inline int64_t bucket_level(int64_t tokens, int64_t last_ns, int64_t now, int64_t rate_orders,
                                   int64_t window_ns, int64_t capacity) {
    int64_t elapsed;
    if (unlikely(__builtin_sub_overflow(now, last_ns, &elapsed))) elapsed = now > last_ns ? INT64_MAX : INT64_MIN;
    elapsed = elapsed < 0 ? 0 : elapsed > window_ns ? window_ns : elapsed;
    uint64_t level = (uint64_t)(tokens < 0 ? capacity : tokens) + (uint64_t)(elapsed * rate_orders);
    return level < (uint64_t)capacity ? (int64_t)level : capacity;
}

/* ---- input -------------------------------------------------------------------------- */
static const char* directory;

static void* load(const char* name, size_t element_size, int64_t* count) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", directory, name);
    FILE* f = fopen(path, "rb");
    if (!f) { perror(path); exit(1); }
    fseek(f, 0, SEEK_END);
    size_t bytes = (size_t)ftell(f);
    fseek(f, 0, SEEK_SET);
    void* data = malloc(bytes ? bytes : 1);
    if (bytes % element_size || fread(data, 1, bytes, f) != bytes) { fprintf(stderr, "%s: bad size\n", path); exit(1); }
    fclose(f);
    *count = (int64_t)(bytes / element_size);
    return data;
}
static void* load_exact(const char* name, size_t element_size, int64_t count) {
    int64_t found;
    void* data = load(name, element_size, &found);
    if (found != count) { fprintf(stderr, "%s: %lld elements, expected %lld\n", name, (long long)found, (long long)count); exit(1); }
    return data;
}

typedef struct {
    int64_t n;
    int32_t *account_ids, *symbol_ids, *strategy_ids;
    int8_t *sides, *order_types;
    int64_t *qtys, *prices, *keys, *now_ns;
    uint8_t* accepted;
} Batch;

static Batch load_batch(int b) {
    Batch x;
    char name[64];
    snprintf(name, sizeof name, "batch_%02d_keys.i64", b);
    x.keys = load(name, 8, &x.n);
#define COLUMN(field, suffix, size) \
    (snprintf(name, sizeof name, "batch_%02d_" #field "." suffix, b), x.field = load_exact(name, size, x.n))
    COLUMN(account_ids, "i32", 4); COLUMN(symbol_ids, "i32", 4); COLUMN(strategy_ids, "i32", 4);
    COLUMN(sides, "i8", 1); COLUMN(order_types, "i8", 1); COLUMN(qtys, "i64", 8); COLUMN(prices, "i64", 8);
    COLUMN(now_ns, "i64", 8); COLUMN(accepted, "u8", 1);
#undef COLUMN
    return x;
}
static void free_batch(Batch* x) {
    free(x->account_ids); free(x->symbol_ids); free(x->strategy_ids); free(x->sides); free(x->order_types);
    free(x->qtys); free(x->prices); free(x->keys); free(x->now_ns); free(x->accepted);
}

/* zeroed and touched (page faults outside the timed loop), 2 MiB aligned; numpy, which
   allocates the kernel's blocks, asks for huge pages on large blocks too */
static void* zeroed_block(size_t bytes) {
    size_t align = 1 << 21, size = (bytes + align - 1) & ~(align - 1);
    void* p = aligned_alloc(align, size);
    if (!p) { perror("aligned_alloc"); exit(1); }
    madvise(p, size, MADV_HUGEPAGE);
    memset(p, 0, size);
    return p;
}

/* Rules are shared by ids with identical settings, as the kernel's RuleView does, so the
   hot rules stay in a few cache lines. Returns the number of distinct records. */
static uint32_t share(void* records, size_t record_size, int64_t n, uint32_t* index_of) {
    char* base = records;
    uint32_t distinct = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t k = 0;
        while (k < distinct && memcmp(base + k * record_size, base + i * record_size, record_size)) k++;
        if (k == distinct) memmove(base + distinct++ * record_size, base + i * record_size, record_size);
        index_of[i] = k;
    }
    return distinct;
}

static void load_rules(void) {
    int64_t* account_limits = load("account_limits.i64", 8, &n_accounts);
    n_accounts /= 6;
    int64_t* credit = load_exact("account_credit_limit.i64", 8, n_accounts);
    int64_t* max_working = load_exact("account_max_working.i64", 8, n_accounts);
    int64_t* rate_orders = load_exact("account_rate_orders.i64", 8, n_accounts);
    int64_t* rate_window = load_exact("account_rate_window_ns.i64", 8, n_accounts);
    int64_t* dup_window = load_exact("account_dup_window_ns.i64", 8, n_accounts);
    uint8_t* self_match = load_exact("account_self_match.u8", 1, n_accounts);
    int64_t* symbol_limits = load("symbol_limits.i64", 8, &n_symbols);
    n_symbols /= 6;
    int64_t* multiplier = load_exact("symbol_multiplier.i64", 8, n_symbols);
    int64_t* max_age = load_exact("symbol_max_ref_age_ns.i64", 8, n_symbols);
    int64_t* reference_price = load_exact("symbol_reference_price.i64", 8, n_symbols);
    int64_t* reference_ts = load_exact("symbol_reference_ts_ns.i64", 8, n_symbols);
    int64_t* strategy_rate_orders = load("strategy_rate_orders.i64", 8, &n_strategies);
    int64_t* strategy_rate_window = load_exact("strategy_rate_window_ns.i64", 8, n_strategies);

    uint32_t* index_of = malloc((size_t)(n_accounts > n_symbols ? n_accounts : n_symbols) * sizeof(uint32_t) + 1);
    account_rules = calloc((size_t)n_accounts + 1, sizeof(AccountRule));
    accounts = zeroed_block((size_t)n_accounts * sizeof(AccountState));
    for (int64_t a = 0; a < n_accounts; a++) {
        AccountRule* r = &account_rules[a];
        memcpy(r->limits, &account_limits[a * 6], sizeof r->limits);
        r->credit_limit = credit[a];
        r->max_working = max_working[a];
        r->rate_orders = rate_orders[a];
        r->rate_window_ns = rate_window[a];
        if (rate_orders[a] > 0 && __builtin_mul_overflow(rate_orders[a], rate_window[a], &r->rate_capacity)) {
            fprintf(stderr, "account %lld: rate capacity beyond int64\n", (long long)a);
            exit(1);
        }
        r->dup_window_ns = dup_window[a];
        r->self_match = self_match[a];
    }
    share(account_rules, sizeof(AccountRule), n_accounts, index_of);
    for (int64_t a = 0; a < n_accounts; a++) { accounts[a].rule = index_of[a]; accounts[a].rate_tokens = -1; }

    symbol_rules = calloc((size_t)n_symbols + 1, sizeof(SymbolRule));
    symbols = zeroed_block((size_t)n_symbols * sizeof(SymbolState));
    for (int64_t s = 0; s < n_symbols; s++) {
        SymbolRule* r = &symbol_rules[s];
        memcpy(r->limits, &symbol_limits[s * 6], sizeof r->limits);
        r->multiplier = multiplier[s];
        r->max_ref_age_ns = max_age[s];
        uint64_t a = (uint64_t)multiplier[s], b = 1000000000000ull;
        while (b) { uint64_t t = a % b; a = b; b = t; }
        r->multiplier_num = (uint64_t)multiplier[s] / a;
        r->multiplier_den = 1000000000000ull / a;
    }
    share(symbol_rules, sizeof(SymbolRule), n_symbols, index_of);
    for (int64_t s = 0; s < n_symbols; s++) {
        symbols[s].rule = index_of[s];
        symbols[s].reference_price = reference_price[s];
        symbols[s].reference_ts_ns = reference_ts[s];
    }

    strategy_rules = calloc((size_t)n_strategies + 1, sizeof(StrategyRule));
    strategies = zeroed_block((size_t)n_strategies * sizeof(StrategyState));
    for (int64_t t = 0; t < n_strategies; t++) {
        StrategyRule* r = &strategy_rules[t];
        r->rate_orders = strategy_rate_orders[t];
        r->rate_window_ns = strategy_rate_window[t];
        if (r->rate_orders > 0 && __builtin_mul_overflow(r->rate_orders, r->rate_window_ns, &r->rate_capacity)) {
            fprintf(stderr, "strategy %lld: rate capacity beyond int64\n", (long long)t);
            exit(1);
        }
        strategies[t].rate_tokens = -1;
    }
    free(index_of);
    free(account_limits); free(credit); free(max_working); free(rate_orders); free(rate_window);
    free(dup_window); free(self_match); free(symbol_limits); free(multiplier); free(max_age);
    free(reference_price); free(reference_ts); free(strategy_rate_orders); free(strategy_rate_window);
}

static void allocate_state(void) {
    positions = zeroed_block((size_t)MAX_POSITIONS * sizeof(PositionState));
    position_table = zeroed_block((size_t)POSITION_TABLE_SIZE * sizeof(PositionSlot));
    for (int64_t i = 0; i < POSITION_TABLE_SIZE; i++) position_table[i].key = -1;
    orders = zeroed_block((size_t)MAX_ORDERS * sizeof(OrderSlot));
    free_stack = zeroed_block((size_t)MAX_ORDERS * sizeof(int32_t));
    for (int32_t i = 0; i < MAX_ORDERS; i++) free_stack[i] = MAX_ORDERS - 1 - i; /* slot 0 first */
    free_top = MAX_ORDERS;
    remembered_ring = zeroed_block((size_t)ID_MEMORY * sizeof(uint64_t));
    remembered_set = zeroed_block((size_t)ID_SET_SIZE * sizeof(uint64_t));
}

/* ---- the per-order work ---------------------------------------------------------------- */
typedef struct { uint64_t pair_hash, key_hash; int64_t position_index; int ids_known; } Ticket;
static Ticket tickets[TICKET_RING];

/* PREFETCH_DISTANCE orders ahead: hash once, request the hash slots and the records */
static inline void prepare(const Batch* x, int64_t j) {
    Ticket* t = &tickets[j & (TICKET_RING - 1)];
    uint32_t a = (uint32_t)x->account_ids[j], s = (uint32_t)x->symbol_ids[j];
    t->key_hash = mix64((uint64_t)x->keys[j]);
    t->pair_hash = mix64((uint64_t)a << 32 | s);
    t->ids_known = (a < n_accounts) & (s < n_symbols);
    t->position_index = -1;
    PREFETCH_READ(&remembered_set[t->key_hash & (ID_SET_SIZE - 1)]);
    if (t->ids_known) {
        PREFETCH_READ(&accounts[a]);
        PREFETCH_READ(&symbols[s]);
        PREFETCH_READ(&position_table[t->pair_hash & (POSITION_TABLE_SIZE - 1)]);
    }
}
/* half that distance ahead, when its hash slot has arrived: the position record and the
   head of its working-order list */
static inline void locate(const Batch* x, int64_t j) {
    Ticket* t = &tickets[j & (TICKET_RING - 1)];
    if (!t->ids_known) return;
    int64_t key = (int64_t)((uint64_t)(uint32_t)x->account_ids[j] << 32 | (uint32_t)x->symbol_ids[j]);
    int64_t k = find_position(key, t->pair_hash);
    t->position_index = k; /* a position found stays; -1 is looked up again at decision time */
    if (k >= 0) {
        PREFETCH_READ(&positions[k]);
        PREFETCH_READ((char*)&positions[k] + 64);
        if (positions[k].first_order >= 0) PREFETCH_READ(&orders[positions[k].first_order]);
    }
}

/* Decide a batch: failures into `failed`, handles of accepted orders into `handles` (-1
   elsewhere). State changes follow the kernel's decision (`accepted`). */
__attribute__((noinline)) static void run_batch(const Batch* x, uint64_t* failed, int64_t* handles) {
    const int64_t n = x->n;
    for (int64_t j = 0; j < PREFETCH_DISTANCE && j < n; j++) prepare(x, j);
    for (int64_t j = 0; j < PREFETCH_DISTANCE / 2 && j < n; j++) locate(x, j);
    for (int64_t i = 0; i < n; i++) {
        if (i + PREFETCH_DISTANCE < n) prepare(x, i + PREFETCH_DISTANCE);
        if (i + PREFETCH_DISTANCE / 2 < n) locate(x, i + PREFETCH_DISTANCE / 2);
        if (remembered_count >= ID_MEMORY) /* the set slot the eviction of a later accept will clear */
            PREFETCH_READ(&remembered_set[remembered_ring[(remembered_oldest + PREFETCH_DISTANCE) & (ID_MEMORY - 1)] &
                                          (ID_SET_SIZE - 1)]);
        if (free_top > 2) PREFETCH_WRITE(&orders[free_stack[free_top - 3]]);

        const Ticket* t = &tickets[i & (TICKET_RING - 1)];
        int64_t a = x->account_ids[i], s = x->symbol_ids[i], st = x->strategy_ids[i];
        int64_t side = x->sides[i], order_type = x->order_types[i], qty = x->qtys[i], price = x->prices[i];
        int64_t now = x->now_ns[i];
        int is_limit = order_type == ORDER_TYPE_LIMIT, is_buy = side == SIDE_BUY;
        uint64_t fail = 0;
        handles[i] = -1;
        /* the ids index the state arrays: their bounds are needed for memory safety */
        if (unlikely(((uint64_t)a >= (uint64_t)n_accounts) | ((uint64_t)s >= (uint64_t)n_symbols) |
                     ((uint64_t)st >= (uint64_t)n_strategies))) {
            failed[i] = BIT(UNKNOWN_ACCOUNT) * ((uint64_t)a >= (uint64_t)n_accounts) |
                        BIT(UNKNOWN_SYMBOL) * ((uint64_t)s >= (uint64_t)n_symbols) |
                        BIT(UNKNOWN_STRATEGY) * ((uint64_t)st >= (uint64_t)n_strategies);
            continue;
        }
        AccountState* account = &accounts[a];
        const AccountRule* ar = &account_rules[account->rule];
        SymbolState* symbol = &symbols[s];
        const SymbolRule* sr = &symbol_rules[symbol->rule];
        StrategyState* strategy = &strategies[st];
        const StrategyRule* str = &strategy_rules[st];
        int64_t pair_key = (int64_t)((uint64_t)a << 32 | (uint32_t)s);
        int64_t position_index = t->position_index >= 0 ? t->position_index : find_position(pair_key, t->pair_hash);
        const PositionState* pos = position_index >= 0 ? &positions[position_index] : &NO_POSITION;

        /* reference price and its age, trading states */
        int64_t reference = symbol->reference_price;
        int fresh = (reference > 0) & (now - symbol->reference_ts_ns <= sr->max_ref_age_ns);
        fail |= BIT(REFERENCE_PRICE_MISSING) * (reference <= 0) | BIT(REFERENCE_PRICE_STALE) * ((reference > 0) & !fresh);
        if (unlikely(account->trading_state | symbol->trading_state | strategy->trading_state)) fail |= BIT(TRADING_HALTED);
        int64_t reserve_price = is_limit ? price : reference;
        int64_t notional = reserve_price > 0 ? notional_of(qty, reserve_price, sr) : -1;
        /* credit: working + filled + this order */
        if (notional >= 0)
            fail |= BIT(CREDIT_LIMIT_EXCEEDED) *
                    ((i128)account->working_notional + account->filled_notional + notional > ar->credit_limit);
        /* position including the working quantity on the side the order increases */
        {
            i128 signed_position = is_buy ? (i128)pos->position : -(i128)pos->position;
            i128 after = signed_position + (is_buy ? pos->working_buy : pos->working_sell) + qty;
            int64_t limit = is_buy ? min64(ar->limits[MAX_LONG_POSITION], sr->limits[MAX_LONG_POSITION])
                                   : min64(ar->limits[MAX_SHORT_POSITION], sr->limits[MAX_SHORT_POSITION]);
            fail |= (uint64_t)(after > limit) << (is_buy ? LONG_POSITION_LIMIT_EXCEEDED : SHORT_POSITION_LIMIT_EXCEEDED);
        }
        /* rate buckets (an order costs one window of token-nanoseconds) */
        int64_t account_level = 0, strategy_level = 0;
        if (ar->rate_orders > 0) {
            account_level = bucket_level(account->rate_tokens, account->rate_last_ns, now, ar->rate_orders,
                                         ar->rate_window_ns, ar->rate_capacity);
            fail |= BIT(ACCOUNT_ORDER_RATE_EXCEEDED) * (account_level < ar->rate_window_ns);
        }
        if (str->rate_orders > 0) {
            strategy_level = bucket_level(strategy->rate_tokens, strategy->rate_last_ns, now, str->rate_orders,
                                          str->rate_window_ns, str->rate_capacity);
            fail |= BIT(STRATEGY_ORDER_RATE_EXCEEDED) * (strategy_level < str->rate_window_ns);
        }
        /* duplicates: client order id, then content within the window */
        fail |= BIT(DUPLICATE_CLIENT_ORDER_ID) * remembers(t->key_hash);
        int64_t content_price = is_limit ? price : 0, content_kind = side | order_type << 2;
        if (ar->dup_window_ns > 0) {
            /* equal quantities are rare: compare those first, the rest only on a hit */
            int same_qty = 0, duplicate = 0;
            for (int e = 0; e < CONTENT_MEMORY; e++)
                same_qty |= ((e < pos->recent_count) & (pos->recent_qty[e] == qty)) << e;
            if (unlikely(same_qty))
                for (int e = 0; e < CONTENT_MEMORY; e++)
                    duplicate |= (same_qty >> e & 1) & (pos->recent_price[e] == content_price) &
                                 (((pos->recent_kinds >> (4 * e)) & 0xF) == content_kind) &
                                 (now - pos->recent_ns[e] <= ar->dup_window_ns);
            fail |= (uint64_t)duplicate << DUPLICATE_ORDER_CONTENT;
        }
        fail |= BIT(MAX_WORKING_ORDERS_EXCEEDED) * (account->working_count + 1 > ar->max_working);
        /* self-match: the best opposite working price of the same account x symbol */
        int64_t cross_price = is_limit ? price : (is_buy ? INT64_MAX : 0);
        if (ar->self_match && pos->first_order >= 0) {
            int found = 0;
            int64_t best = 0;
            for (int32_t slot = pos->first_order; slot >= 0; slot = orders[slot].next) {
                const OrderSlot* w = &orders[slot];
                if ((w->side == SIDE_BUY) != is_buy && (!found || (is_buy ? w->cross_price < best : w->cross_price > best))) {
                    best = w->cross_price;
                    found = 1;
                }
            }
            if (found && (is_buy ? best <= cross_price : best >= cross_price)) fail |= BIT(SELF_MATCH_PREVENTED);
        }
        fail |= BIT(STATE_CAPACITY_EXHAUSTED) *
                ((live_count >= MAX_ORDERS) | ((position_index < 0) & (n_positions >= MAX_POSITIONS)));
        failed[i] = fail;
        if (!x->accepted[i]) continue; /* the kernel's decision drives the state change */

        /* ---- accept ---- */
        if (position_index < 0) position_index = add_position(pair_key, t->pair_hash);
        PositionState* p = &positions[position_index];
        int32_t slot = free_stack[--free_top];
        live_count++;
        OrderSlot* w = &orders[slot];
        w->remaining = qty;
        w->reserve_price = reserve_price;
        w->cross_price = cross_price;
        w->multiplier = sr->multiplier;
        w->reserved = notional;
        w->account = (int32_t)a;
        w->position_index = (int32_t)position_index;
        w->side = (int8_t)side;
        w->live = 1;
        w->prev = -1;
        w->next = p->first_order;
        if (p->first_order >= 0) orders[p->first_order].prev = slot;
        p->first_order = slot;
        *(is_buy ? &p->working_buy : &p->working_sell) += (uint64_t)qty;
        int e = p->recent_next;
        p->recent_kinds = (uint16_t)((p->recent_kinds & ~(0xF << (4 * e))) | content_kind << (4 * e));
        p->recent_qty[e] = qty;
        p->recent_price[e] = content_price;
        p->recent_ns[e] = now;
        p->recent_next = (e + 1) & (CONTENT_MEMORY - 1);
        if (p->recent_count < CONTENT_MEMORY) p->recent_count++;
        account->working_count++;
        account->working_notional += notional;
        if (ar->rate_orders > 0) { account->rate_tokens = account_level - ar->rate_window_ns; account->rate_last_ns = now; }
        if (str->rate_orders > 0) { strategy->rate_tokens = strategy_level - str->rate_window_ns; strategy->rate_last_ns = now; }
        remember(t->key_hash);
        handles[i] = (int64_t)w->generation << 32 | slot;
    }
}

/* Kernel.release: the reservation and working quantity go, the slot returns to the stack */
static void release(int64_t handle) {
    int32_t slot = (int32_t)(handle & 0xFFFFFFFF);
    OrderSlot* w = &orders[slot];
    PositionState* p = &positions[w->position_index];
    if (w->side == SIDE_BUY) p->working_buy -= (uint64_t)w->remaining;
    else p->working_sell -= (uint64_t)w->remaining;
    accounts[w->account].working_notional -= w->reserved;
    accounts[w->account].working_count--;
    if (w->prev >= 0) orders[w->prev].next = w->next;
    else p->first_order = w->next;
    if (w->next >= 0) orders[w->next].prev = w->prev;
    w->live = 0;
    w->generation = (w->generation + 1) & 0x7FFFFFFF;
    free_stack[free_top++] = slot;
    live_count--;
}

int main(int argc, char** argv) {
    if (argc != 3 || atoi(argv[2]) < 1) {
        fprintf(stderr, "usage: %s DIR BATCHES\n", argv[0]);
        return 2;
    }
    directory = argv[1];
    int n_batches = atoi(argv[2]);
    load_rules();
    allocate_state();

    int64_t* previous_handles = NULL;
    int64_t n_previous = 0, orders_per_batch = 0;
    double* ns_per_order = malloc((size_t)n_batches * sizeof(double));
    for (int b = 0; b < n_batches; b++) {
        Batch x = load_batch(b);
        uint64_t* failed = malloc((size_t)x.n * sizeof(uint64_t) + 1);
        int64_t* handles = malloc((size_t)x.n * sizeof(int64_t) + 1);
        for (int64_t k = 0; k < n_previous; k++) release(previous_handles[k]); /* untimed */
        struct timespec start, end;
        clock_gettime(CLOCK_MONOTONIC, &start);
        run_batch(&x, failed, handles);
        clock_gettime(CLOCK_MONOTONIC, &end);
        ns_per_order[b] = ((double)(end.tv_sec - start.tv_sec) * 1e9 + (double)(end.tv_nsec - start.tv_nsec)) /
                          (double)(x.n ? x.n : 1);
        orders_per_batch = x.n;

        char name[4096];
        snprintf(name, sizeof name, "%s/batch_%02d_floor_failed.u64", directory, b);
        FILE* out = fopen(name, "wb");
        if (!out || fwrite(failed, sizeof(uint64_t), (size_t)x.n, out) != (size_t)x.n || fclose(out)) {
            perror(name);
            return 1;
        }
        n_previous = 0;
        for (int64_t i = 0; i < x.n; i++)
            if (handles[i] >= 0) handles[n_previous++] = handles[i];
        free(previous_handles);
        previous_handles = handles;
        free(failed);
        free_batch(&x);
    }
    printf("{\"orders_per_batch\": %lld, \"ns_per_order\": [", (long long)orders_per_batch);
    for (int b = 0; b < n_batches; b++) printf("%s%.3f", b ? ", " : "", ns_per_order[b]);
    printf("]}\n");
    return 0;
}

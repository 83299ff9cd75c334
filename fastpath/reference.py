"""The plain-Python reference evaluator: the executable specification of the kernel.

Everything the Cython kernel (``fastpath.kernel.Kernel``) does, this module does in plain
Python, reading the rules *model* (not the numpy tables) and keeping state in dicts. It is
slow on purpose: written to be read, with inheritance resolved on every call. The parity
suite (``tests/fastpath/test_parity.py``) drives both with the same hypothesis-generated
rules, orders and executions and requires identical results, so the kernel's flattened
tables and nogil loops cannot drift from the semantics written here.

Evaluation of one order
=======================
Stage A — validity and identity (``codes.STAGE_A_MASK``): side, order type, quantity > 0,
limit price > 0, account / symbol / strategy known. If any fails, the order is rejected
with those failures only: nothing else about it is meaningful.

Stage B — every other check is evaluated and *every* failure reported:
tick and lot, reference price present and fresh, every needed limit configured, trading
state, restricted list, order quantity, order notional, price collar, credit, long/short
position, account and strategy order rate, duplicate client order id, duplicate content,
working-order count, self-match, kernel capacity.

On accept (no failure) the state moves: the order becomes working (it reserves its
notional against credit and its quantity against the position on its side), both rate
buckets are charged, its client order id and content are remembered. Rejected orders leave
no trace in the state.

Executions (:meth:`ReferenceKernel.fill`, :meth:`ReferenceKernel.release`) move a working
order's reservation into filled exposure and position, or release it.
"""

from __future__ import annotations

from collections import deque
from dataclasses import dataclass, field

from fastpath.codes import (
    INT64_MAX,
    LIMIT_UNLIMITED,
    LIMIT_UNSET,
    PPM_SCALE,
    Check,
    ExecStatus,
    LimitKind,
    MissingLimit,
    OrderType,
    Scope,
    Side,
    TradingState,
    side_bit,
)
from fastpath.fixedpoint import notional_micros, saturate
from fastpath.model import STRATEGY_NONE, CompiledRules, RateLimit, Setting

#: Accepted orders whose content (side, type, quantity, price) each account x symbol remembers
#: for the duplicate-content check.
CONTENT_MEMORY_PER_POSITION = 4

DEFAULT_MAX_ORDERS = 1 << 18  # working orders tracked at once, all accounts
DEFAULT_MAX_POSITIONS = 1 << 18  # account x symbol pairs tracked
DEFAULT_CLIENT_ORDER_ID_MEMORY = 1 << 20  # accepted client order ids remembered (count window)

_HANDLE_SLOT_BITS = 32
_HANDLE_SLOT_MASK = (1 << _HANDLE_SLOT_BITS) - 1
_GENERATION_MASK = (1 << 31) - 1  # handles stay positive int64

# Path id of a failure or limit that has no place in the rules file.
_NO_PATH = -1


@dataclass
class ReferenceResult:
    """Result of one check: the same interface as the kernel's ``CheckResult``."""

    accepted: bool
    failed: int  # bitmask of Check
    handle: int  # >= 0 for an accepted order, -1 when rejected
    details: dict[int, tuple[int, int, int]] = field(default_factory=dict)  # code -> (limit, observed, path id)

    def detail(self, code: int) -> tuple[int, int, int]:
        """(limit, observed, rule path id) of a failed check."""
        return self.details[code]


@dataclass
class _Order:
    account: int
    symbol: int
    side: int
    remaining: int  # qty nanos still working
    reserve_price: int  # price nanos the reservation is computed at (limit, or reference for market)
    cross_price: int  # price used for self-match: limit price, or 0 / INT64_MAX for market
    multiplier: int  # the symbol's multiplier when accepted (reservations stay consistent across reloads)
    reserved: int  # notional micros still reserved against credit


@dataclass
class _Position:
    position: int = 0  # signed qty nanos, fills only
    working_buy: int = 0  # qty nanos of working buy orders
    working_sell: int = 0  # qty nanos of working SELL and SELL_SHORT orders
    # newest last: (side, order_type, qty, price, accepted_ns)
    recent: deque = field(default_factory=lambda: deque(maxlen=CONTENT_MEMORY_PER_POSITION))


def _refill(tokens: int, last_ns: int, now_ns: int, orders: int, window_ns: int) -> int:
    """Token bucket level at ``now_ns`` in token-nanoseconds (one order costs ``window_ns``).

    ``tokens < 0`` marks a bucket never charged: it is full. Time going backwards refills
    nothing. The capacity (``orders * window_ns``) is validated by the rules compiler to
    fit int64.
    """
    capacity = orders * window_ns
    if tokens < 0:
        return capacity
    elapsed = now_ns - last_ns
    if elapsed <= 0:
        return min(tokens, capacity)
    if elapsed >= window_ns:
        return capacity
    return min(capacity, tokens + elapsed * orders)


def _retry_after_ns(tokens: int, orders: int, window_ns: int) -> int:
    """Nanoseconds until the bucket holds one order's worth of tokens."""
    return -(-(window_ns - tokens) // orders)


class ReferenceKernel:
    """Plain-Python twin of ``fastpath.kernel.Kernel`` (same constructor and methods)."""

    def __init__(
        self,
        rules: CompiledRules,
        *,
        max_orders: int = DEFAULT_MAX_ORDERS,
        max_positions: int = DEFAULT_MAX_POSITIONS,
        client_order_id_memory: int = DEFAULT_CLIENT_ORDER_ID_MEMORY,
    ) -> None:
        self.max_orders = max_orders
        self.max_positions = max_positions
        self.client_order_id_memory = client_order_id_memory
        self.rules = rules
        # state
        self.reference: dict[int, tuple[int, int]] = {}  # symbol id -> (price nanos, ts ns)
        self.firm_state = TradingState.ACTIVE
        self.states: dict[Scope, dict[int, int]] = {Scope.ACCOUNT: {}, Scope.STRATEGY: {}, Scope.SYMBOL: {}}
        self.working_notional: dict[int, int] = {}
        self.filled_notional: dict[int, int] = {}
        self.working_count: dict[int, int] = {}
        self.account_bucket: dict[int, tuple[int, int]] = {}  # id -> (tokens, last_ns)
        self.strategy_bucket: dict[int, tuple[int, int]] = {}
        self.positions: dict[tuple[int, int], _Position] = {}
        self.orders: dict[int, _Order] = {}  # slot -> order
        self.generation = [0] * max_orders
        self.free_slots = list(range(max_orders - 1, -1, -1))  # pop() yields slot 0 first
        self.remembered_ids: set[int] = set()
        self.remembered_order: deque[int] = deque()

    # -- configuration ------------------------------------------------------------------
    def install_rules(self, rules: CompiledRules) -> None:
        """Swap in new rules; all state is kept (ids are stable through the interner)."""
        self.rules = rules

    def set_reference_price(self, symbol_id: int, price_nanos: int, ts_ns: int) -> None:
        self.reference[symbol_id] = (price_nanos, ts_ns)

    def set_trading_state(self, scope: int, scope_id: int, state: int) -> None:
        if scope == Scope.FIRM:
            self.firm_state = TradingState(state)
        else:
            self.states[Scope(scope)][scope_id] = TradingState(state)

    def trading_state(self, scope: int, scope_id: int) -> int:
        if scope == Scope.FIRM:
            return self.firm_state
        return self.states[Scope(scope)].get(scope_id, TradingState.ACTIVE)

    # -- rule resolution (from the model, on every call) ----------------------------------
    def _limit(self, account: str, symbol: str, kind: LimitKind) -> tuple[int, int]:
        """Effective (value, path id) of a per account x symbol limit, or (UNSET, -1).

        Account chain: accounts.A.symbols.S > accounts.A.limits > firm.limits (first set
        wins); symbol cap: symbols.S.limits. Both set: the smaller (a tie goes to the
        account chain).
        """
        rules = self.rules
        acct = rules.accounts[account]
        chain: Setting | None = (
            acct.symbol_limits.get(symbol, {}).get(kind) or acct.limits.get(kind) or rules.firm.limits.get(kind)
        )
        cap = rules.symbols[symbol].limits.get(kind)
        if chain is None and cap is None:
            return LIMIT_UNSET, _NO_PATH
        if cap is None or (chain is not None and chain.value <= cap.value):
            return chain.value, rules.path_ids[chain.path]
        return cap.value, rules.path_ids[cap.path]

    def _resolved(self, setting: Setting | None) -> tuple[int, int]:
        if setting is None:
            return LIMIT_UNSET, _NO_PATH
        return setting.value, self.rules.path_ids[setting.path]

    def _rate(self, rate: RateLimit | None) -> tuple[int, int, int]:
        if rate is None:
            return LIMIT_UNSET, 0, _NO_PATH
        return rate.orders, rate.window_ns, self.rules.path_ids[rate.path]

    def _known(self, names: list[str], declared: dict, ident: int) -> str | None:
        if 0 <= ident < len(names) and names[ident] in declared:
            return names[ident]
        return None

    # -- the check ------------------------------------------------------------------------
    def check(
        self,
        account_id: int,
        symbol_id: int,
        strategy_id: int,
        side: int,
        order_type: int,
        qty: int,
        price: int,
        client_order_key: int,
        now_ns: int,
    ) -> ReferenceResult:
        """Decide one order; on accept, the order becomes working and state moves.

        ``client_order_key`` is a 64-bit key of (account, client order id) computed by the
        caller; ``price`` is ignored for market orders.
        """
        details: dict[int, tuple[int, int, int]] = {}

        def fail(code: Check, limit: int, observed: int, path: int = _NO_PATH) -> None:
            details[code] = (saturate(limit), saturate(observed), path)

        rules = self.rules
        interner = rules.interner
        # ---- stage A ------------------------------------------------------------------
        if side not in (Side.BUY, Side.SELL, Side.SELL_SHORT):
            fail(Check.INVALID_SIDE, 0, side)
        if order_type not in (OrderType.LIMIT, OrderType.MARKET):
            fail(Check.INVALID_ORDER_TYPE, 0, order_type)
        if qty <= 0:
            fail(Check.INVALID_QUANTITY, 0, qty)
        if order_type == OrderType.LIMIT and price <= 0:
            fail(Check.INVALID_PRICE, 0, price)
        account = self._known(interner.account_names, rules.accounts, account_id)
        if account is None:
            fail(Check.UNKNOWN_ACCOUNT, 0, account_id)
        symbol = self._known(interner.symbol_names, rules.symbols, symbol_id)
        if symbol is None:
            fail(Check.UNKNOWN_SYMBOL, 0, symbol_id)
        if strategy_id == STRATEGY_NONE:
            strategy_known = not rules.firm.require_strategy
        else:
            strategy_known = self._known(interner.strategy_names, rules.strategies, strategy_id) is not None
        if not strategy_known:
            fail(Check.UNKNOWN_STRATEGY, 0, strategy_id)
        if details:
            return self._result(details)

        # ---- stage B ------------------------------------------------------------------
        firm = rules.firm
        acct = rules.accounts[account]
        sym = rules.symbols[symbol]
        is_limit = order_type == OrderType.LIMIT
        is_buy = side == Side.BUY
        pos = self.positions.get((account_id, symbol_id)) or _Position()

        # validity against reference data
        if is_limit and price % sym.tick_nanos:
            fail(Check.PRICE_OFF_TICK, sym.tick_nanos, price, rules.path_ids[sym.tick_path])
        if qty % sym.lot_nanos:
            fail(Check.QUANTITY_OFF_LOT, sym.lot_nanos, qty, rules.path_ids[sym.lot_path])

        # reference price
        max_age = sym.max_reference_age or firm.max_reference_age
        ref_price, ref_ts = self.reference.get(symbol_id, (0, 0))
        has_ref = ref_price > 0
        fresh = False
        if not has_ref:
            fail(Check.REFERENCE_PRICE_MISSING, 0, 0)
        elif now_ns - ref_ts > max_age.value:
            fail(Check.REFERENCE_PRICE_STALE, max_age.value, now_ns - ref_ts, rules.path_ids[max_age.path])
        else:
            fresh = True

        # limits the order needs
        qty_limit = self._limit(account, symbol, LimitKind.MAX_ORDER_QTY)
        notional_limit = self._limit(account, symbol, LimitKind.MAX_ORDER_NOTIONAL)
        long_limit = self._limit(account, symbol, LimitKind.MAX_LONG_POSITION)
        short_limit = self._limit(account, symbol, LimitKind.MAX_SHORT_POSITION)
        collar_ppm = self._limit(account, symbol, LimitKind.PRICE_COLLAR_PPM)
        collar_ticks = self._limit(account, symbol, LimitKind.PRICE_COLLAR_TICKS)
        credit = self._resolved(acct.credit_limit or firm.credit_limit)
        max_working = self._resolved(acct.max_working_orders or firm.max_working_orders)
        acct_rate = self._rate(acct.order_rate_limit or firm.order_rate_limit)
        strat_rate = (LIMIT_UNSET, 0, _NO_PATH)
        if strategy_id != STRATEGY_NONE:
            strategy = rules.strategies[interner.strategy_names[strategy_id]]
            strat_rate = self._rate(strategy.order_rate_limit or firm.strategy_order_rate_limit)

        missing = 0
        for bit, value in (
            (MissingLimit.MAX_ORDER_QTY, qty_limit[0]),
            (MissingLimit.MAX_ORDER_NOTIONAL, notional_limit[0]),
            (MissingLimit.MAX_LONG_POSITION, long_limit[0]),
            (MissingLimit.MAX_SHORT_POSITION, short_limit[0]),
            (MissingLimit.CREDIT_LIMIT, credit[0]),
            (MissingLimit.MAX_WORKING_ORDERS, max_working[0]),
            (MissingLimit.ACCOUNT_ORDER_RATE, acct_rate[0]),
        ):
            if value == LIMIT_UNSET:
                missing |= bit
        if is_limit and collar_ppm[0] == LIMIT_UNSET and collar_ticks[0] == LIMIT_UNSET:
            missing |= MissingLimit.PRICE_COLLAR
        if strategy_id != STRATEGY_NONE and strat_rate[0] == LIMIT_UNSET:
            missing |= MissingLimit.STRATEGY_ORDER_RATE
        if missing:
            fail(Check.MISSING_LIMIT, 0, missing)

        # trading state: the most restrictive scope wins; the first scope holding it is reported
        scoped = (
            (Scope.FIRM, self.firm_state),
            (Scope.ACCOUNT, self.trading_state(Scope.ACCOUNT, account_id)),
            (Scope.STRATEGY, self.trading_state(Scope.STRATEGY, strategy_id)),
            (Scope.SYMBOL, self.trading_state(Scope.SYMBOL, symbol_id)),
        )
        effective = max(state for _, state in scoped)
        scope = next(sc for sc, state in scoped if state == effective)
        if effective == TradingState.HALTED:
            fail(Check.TRADING_HALTED, scope, effective)
        elif effective == TradingState.REDUCING:
            if is_buy:
                reducible, after = max(0, -pos.position), pos.working_buy + qty
            else:
                reducible, after = max(0, pos.position), pos.working_sell + qty
            if after > reducible:
                fail(Check.REDUCE_ONLY_VIOLATION, reducible, after)

        # restricted list: firm-wide first, then the account's own
        bit = side_bit(side)
        account_restriction = acct.restrictions.get(symbol)
        if sym.restriction is not None and sym.restriction.sides_mask & bit:
            fail(Check.SYMBOL_RESTRICTED, sym.restriction.sides_mask, side, rules.path_ids[sym.restriction.path])
        elif account_restriction is not None and account_restriction.sides_mask & bit:
            fail(
                Check.SYMBOL_RESTRICTED,
                account_restriction.sides_mask,
                side,
                rules.path_ids[account_restriction.path],
            )

        # order size
        if qty_limit[0] != LIMIT_UNSET and qty > qty_limit[0]:
            fail(Check.MAX_ORDER_QTY_EXCEEDED, qty_limit[0], qty, qty_limit[1])
        effective_price = price if is_limit else ref_price
        notional = notional_micros(qty, effective_price, sym.multiplier_nanos) if effective_price > 0 else -1
        if notional >= 0 and notional_limit[0] != LIMIT_UNSET and notional > notional_limit[0]:
            fail(Check.MAX_ORDER_NOTIONAL_EXCEEDED, notional_limit[0], notional, notional_limit[1])

        # price collar: the tighter of the percentage and tick bands around a fresh reference
        if is_limit and fresh:
            band: int | None = None
            band_path = _NO_PATH
            if collar_ppm[0] not in (LIMIT_UNSET, LIMIT_UNLIMITED):
                band, band_path = ref_price * collar_ppm[0] // PPM_SCALE, collar_ppm[1]
            if collar_ticks[0] not in (LIMIT_UNSET, LIMIT_UNLIMITED):
                tick_band = collar_ticks[0] * sym.tick_nanos
                if band is None or tick_band < band:
                    band, band_path = tick_band, collar_ticks[1]
            if band is not None:
                if price - ref_price > band:
                    fail(Check.PRICE_COLLAR_BREACHED, ref_price + band, price, band_path)
                elif ref_price - price > band:
                    fail(Check.PRICE_COLLAR_BREACHED, ref_price - band, price, band_path)

        # credit: working + filled + this order
        if notional >= 0 and credit[0] != LIMIT_UNSET:
            exposure = (
                self.working_notional.get(account_id, 0) + self.filled_notional.get(account_id, 0) + notional
            )
            if exposure > credit[0]:
                fail(Check.CREDIT_LIMIT_EXCEEDED, credit[0], exposure, credit[1])

        # position, counting working orders on the side that increases it
        if is_buy:
            if long_limit[0] != LIMIT_UNSET:
                long_after = pos.position + pos.working_buy + qty
                if long_after > long_limit[0]:
                    fail(Check.LONG_POSITION_LIMIT_EXCEEDED, long_limit[0], long_after, long_limit[1])
        elif short_limit[0] != LIMIT_UNSET:
            short_after = pos.working_sell + qty - pos.position
            if short_after > short_limit[0]:
                fail(Check.SHORT_POSITION_LIMIT_EXCEEDED, short_limit[0], short_after, short_limit[1])

        # order rates (token buckets; charged on accept only)
        for code, rate, buckets, ident in (
            (Check.ACCOUNT_ORDER_RATE_EXCEEDED, acct_rate, self.account_bucket, account_id),
            (Check.STRATEGY_ORDER_RATE_EXCEEDED, strat_rate, self.strategy_bucket, strategy_id),
        ):
            orders, window_ns, path = rate
            if orders in (LIMIT_UNSET, LIMIT_UNLIMITED):
                continue
            tokens, last_ns = buckets.get(ident, (-1, 0))
            level = _refill(tokens, last_ns, now_ns, orders, window_ns)
            if level < window_ns:
                fail(code, orders, _retry_after_ns(level, orders, window_ns), path)

        # duplicates
        if client_order_key in self.remembered_ids:
            fail(Check.DUPLICATE_CLIENT_ORDER_ID, 0, 0)
        window_ns = (acct.duplicate_content_window or firm.duplicate_content_window).value
        if window_ns > 0:
            content_price = price if is_limit else 0
            for r_side, r_type, r_qty, r_price, r_ns in reversed(pos.recent):
                if (r_side, r_type, r_qty, r_price) == (side, order_type, qty, content_price) and (
                    now_ns - r_ns <= window_ns
                ):
                    fail(Check.DUPLICATE_ORDER_CONTENT, window_ns, now_ns - r_ns)
                    break

        # working orders
        count = self.working_count.get(account_id, 0)
        if max_working[0] != LIMIT_UNSET and count + 1 > max_working[0]:
            fail(Check.MAX_WORKING_ORDERS_EXCEEDED, max_working[0], count + 1, max_working[1])

        # self-match: would the order cross the account's own working order on the other side?
        self_match = (acct.self_match_prevention or firm.self_match_prevention).value
        if self_match:
            cross = cross_price(side, order_type, price)
            if is_buy:
                opposite = [
                    o.cross_price
                    for o in self.orders.values()
                    if o.account == account_id and o.symbol == symbol_id and o.side != Side.BUY
                ]
                if opposite and min(opposite) <= cross:
                    fail(Check.SELF_MATCH_PREVENTED, min(opposite), cross)
            else:
                opposite = [
                    o.cross_price
                    for o in self.orders.values()
                    if o.account == account_id and o.symbol == symbol_id and o.side == Side.BUY
                ]
                if opposite and max(opposite) >= cross:
                    fail(Check.SELF_MATCH_PREVENTED, max(opposite), cross)

        # capacity of the kernel's own tables
        if len(self.orders) >= self.max_orders:
            fail(Check.STATE_CAPACITY_EXHAUSTED, self.max_orders, len(self.orders))
        elif (account_id, symbol_id) not in self.positions and len(self.positions) >= self.max_positions:
            fail(Check.STATE_CAPACITY_EXHAUSTED, self.max_positions, len(self.positions))

        if details:
            return self._result(details)

        # ---- accept: the order becomes working ----------------------------------------------
        slot = self.free_slots.pop()
        handle = self.generation[slot] << _HANDLE_SLOT_BITS | slot
        self.orders[slot] = _Order(
            account=account_id,
            symbol=symbol_id,
            side=side,
            remaining=qty,
            reserve_price=effective_price,
            cross_price=cross_price(side, order_type, price),
            multiplier=sym.multiplier_nanos,
            reserved=notional,
        )
        pos = self.positions.setdefault((account_id, symbol_id), pos)
        if is_buy:
            pos.working_buy += qty
        else:
            pos.working_sell += qty
        pos.recent.append((side, order_type, qty, price if is_limit else 0, now_ns))
        self.working_count[account_id] = count + 1
        self.working_notional[account_id] = saturate(self.working_notional.get(account_id, 0) + notional)
        for rate, buckets, ident in (
            (acct_rate, self.account_bucket, account_id),
            (strat_rate, self.strategy_bucket, strategy_id),
        ):
            orders, window_ns, _ = rate
            if orders in (LIMIT_UNSET, LIMIT_UNLIMITED):
                continue
            tokens, last_ns = buckets.get(ident, (-1, 0))
            buckets[ident] = (_refill(tokens, last_ns, now_ns, orders, window_ns) - window_ns, now_ns)
        if len(self.remembered_order) >= self.client_order_id_memory:
            self.remembered_ids.discard(self.remembered_order.popleft())
        self.remembered_ids.add(client_order_key)
        self.remembered_order.append(client_order_key)
        return ReferenceResult(True, 0, handle)

    @staticmethod
    def _result(details: dict[int, tuple[int, int, int]]) -> ReferenceResult:
        mask = 0
        for code in details:
            mask |= 1 << code
        return ReferenceResult(False, mask, -1, details)

    # -- executions -----------------------------------------------------------------------
    def _working(self, handle: int) -> tuple[int, _Order] | None:
        slot = handle & _HANDLE_SLOT_MASK
        if handle < 0 or slot >= self.max_orders or self.generation[slot] != handle >> _HANDLE_SLOT_BITS:
            return None
        order = self.orders.get(slot)
        return None if order is None else (slot, order)

    def fill(self, handle: int, qty: int, price: int) -> ExecStatus:
        """Apply a (partial) fill of ``qty`` at ``price``; the order ends when none remains.

        The filled quantity moves the position; its notional at the fill price becomes
        filled exposure; the reservation shrinks to the remaining quantity. A fill beyond
        the remaining quantity is applied in full to position and exposure (the venue says
        it happened) and reported as OVERFILL.
        """
        found = self._working(handle)
        if found is None:
            return ExecStatus.UNKNOWN_ORDER
        if qty <= 0:
            return ExecStatus.INVALID_QUANTITY
        if price <= 0:
            return ExecStatus.INVALID_PRICE
        slot, order = found
        account = order.account
        pos = self.positions[(account, order.symbol)]
        applied = min(qty, order.remaining)
        order.remaining -= applied
        still_reserved = notional_micros(order.remaining, order.reserve_price, order.multiplier)
        self.working_notional[account] -= order.reserved - still_reserved
        order.reserved = still_reserved
        self.filled_notional[account] = saturate(
            self.filled_notional.get(account, 0) + notional_micros(qty, price, order.multiplier)
        )
        if order.side == Side.BUY:
            pos.working_buy -= applied
            pos.position = saturate(pos.position + qty)
        else:
            pos.working_sell -= applied
            pos.position = saturate(pos.position - qty)
        if order.remaining == 0:
            self._end(slot, order)
        return ExecStatus.OVERFILL if qty > applied else ExecStatus.OK

    def release(self, handle: int) -> ExecStatus:
        """End a working order without a fill (cancelled, rejected by the venue, expired)."""
        found = self._working(handle)
        if found is None:
            return ExecStatus.UNKNOWN_ORDER
        slot, order = found
        pos = self.positions[(order.account, order.symbol)]
        if order.side == Side.BUY:
            pos.working_buy -= order.remaining
        else:
            pos.working_sell -= order.remaining
        self.working_notional[order.account] -= order.reserved
        self._end(slot, order)
        return ExecStatus.OK

    def _end(self, slot: int, order: _Order) -> None:
        self.working_count[order.account] -= 1
        del self.orders[slot]
        self.generation[slot] = (self.generation[slot] + 1) & _GENERATION_MASK
        self.free_slots.append(slot)

    def reset_filled_exposure(self, account_id: int = -1) -> None:
        """Start a new credit period: filled notional back to zero (one account, or all)."""
        if account_id < 0:
            self.filled_notional.clear()
        else:
            self.filled_notional.pop(account_id, None)

    # -- state readers (tests, status and explanations) ------------------------------------
    def exposure(self, account_id: int) -> tuple[int, int]:
        """(working notional, filled notional) of an account, in micros."""
        return self.working_notional.get(account_id, 0), self.filled_notional.get(account_id, 0)

    def position(self, account_id: int, symbol_id: int) -> tuple[int, int, int]:
        """(position, working buy qty, working sell qty) of an account x symbol."""
        pos = self.positions.get((account_id, symbol_id))
        return (0, 0, 0) if pos is None else (pos.position, pos.working_buy, pos.working_sell)

    def working_orders(self, account_id: int) -> int:
        return self.working_count.get(account_id, 0)

    def live_orders(self) -> int:
        return len(self.orders)


def cross_price(side: int, order_type: int, price: int) -> int:
    """The price a working order would trade at against the account's own opposite orders:
    its limit, or for a market order the most aggressive price possible."""
    if order_type == OrderType.LIMIT:
        return price
    return INT64_MAX if side == Side.BUY else 0


"""The compiled form of a rules file: a resolved Python model and the numpy tables.

A rules file compiles (``fastpath.rules.compile_rules``) into one :class:`CompiledRules`
holding the same limits twice:

* the **model** (``firm``, ``accounts``, ``symbols``, ``strategies``): per-scope settings as
  written in the file, values already fixed-point, each with the rule path it came from.
  The plain-Python reference evaluator (``fastpath.reference``) resolves inheritance from
  this model on every check; it is meant to be read.
* the **tables** (:class:`RuleTables`): the same limits flattened into numpy arrays indexed
  by interned ids, which the Cython kernel reads with typed memoryviews and no Python
  objects. The flattening is exactly what the parity suite exercises.

Ids are owned by an :class:`Interner` that only grows, so an account keeps its id (and its
kernel state) across hot reloads; names that left the rules stay interned but inactive.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass, field

import numpy as np

from fastpath.codes import LimitKind

#: Strategy id of an order that names no strategy.
STRATEGY_NONE = 0


@dataclass(frozen=True)
class Setting:
    """One configured value and where it was configured."""

    value: int  # fixed-point integer, or LIMIT_UNLIMITED for "unlimited"
    path: str  # rule path, e.g. "accounts.ACC1.limits.max_order_qty"


@dataclass(frozen=True)
class RateLimit:
    """``orders`` orders per ``window_ns`` (token bucket of capacity ``orders``)."""

    orders: int  # LIMIT_UNLIMITED for "unlimited"
    window_ns: int
    path: str


@dataclass(frozen=True)
class Restriction:
    sides_mask: int  # bits 1 << Side
    path: str  # e.g. "restrictions[2]"
    reason: str


@dataclass(frozen=True)
class FirmRules:
    name: str
    limits: dict[LimitKind, Setting]  # [firm.limits], defaults of the account chain
    credit_limit: Setting | None
    max_working_orders: Setting | None
    order_rate_limit: RateLimit | None
    strategy_order_rate_limit: RateLimit | None  # [firm.strategy_limits]
    max_reference_age: Setting  # ns; DEFAULT_MAX_REFERENCE_AGE_MS when not written
    self_match_prevention: Setting  # 1 on, 0 off
    duplicate_content_window: Setting  # ns; 0 disables the content-duplicate check
    require_strategy: bool


@dataclass(frozen=True)
class SymbolRules:
    name: str
    tick_nanos: int
    lot_nanos: int
    multiplier_nanos: int
    tick_path: str
    lot_path: str
    max_reference_age: Setting | None  # ns; overrides the firm's when set
    limits: dict[LimitKind, Setting]  # [symbols.S.limits]: instrument caps
    restriction: Restriction | None  # firm-wide restriction of this symbol


@dataclass(frozen=True)
class AccountRules:
    name: str
    limits: dict[LimitKind, Setting]  # [accounts.A.limits]
    symbol_limits: dict[str, dict[LimitKind, Setting]]  # [accounts.A.symbols.S]
    restrictions: dict[str, Restriction]  # symbol -> restriction for this account only
    credit_limit: Setting | None
    max_working_orders: Setting | None
    order_rate_limit: RateLimit | None
    self_match_prevention: Setting | None  # overrides the firm's when set
    duplicate_content_window: Setting | None  # overrides the firm's when set


@dataclass(frozen=True)
class StrategyRules:
    name: str
    order_rate_limit: RateLimit | None  # overrides [firm.strategy_limits] when set


class Interner:
    """Stable name -> id maps for accounts, symbols and strategies.

    Ids are dense and never reused: a name keeps its id for the life of the process, so
    kernel state indexed by id survives hot reloads. Strategy id 0 is the empty name
    (an order with no strategy).

    Threading: a reload compiles (and interns) on a worker thread while halts intern on
    the event loop, so growth takes a lock. Lookups (``account_ids.get``) on the order
    path take none: a dict read is atomic, and a name's id never changes once visible.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self.account_names: list[str] = []
        self.symbol_names: list[str] = []
        self.strategy_names: list[str] = [""]
        self.account_ids: dict[str, int] = {}
        self.symbol_ids: dict[str, int] = {}
        self.strategy_ids: dict[str, int] = {"": STRATEGY_NONE}

    def _intern(self, name: str, names: list[str], ids: dict[str, int]) -> int:
        found = ids.get(name)
        if found is not None:
            return found
        with self._lock:
            found = ids.get(name)
            if found is None:
                # the name is appended before its id is published, so any id a reader
                # can see indexes a valid name
                names.append(name)
                found = ids[name] = len(names) - 1
            return found

    def account(self, name: str) -> int:
        return self._intern(name, self.account_names, self.account_ids)

    def symbol(self, name: str) -> int:
        return self._intern(name, self.symbol_names, self.symbol_ids)

    def strategy(self, name: str) -> int:
        return self._intern(name, self.strategy_names, self.strategy_ids)


@dataclass
class RuleTables:
    """The rules flattened for the kernel. Every array is C-contiguous.

    Sentinels: ``LIMIT_UNSET`` (-1) for a limit configured nowhere on that scope's chain,
    ``LIMIT_UNLIMITED`` (INT64_MAX) for "unlimited"; path ids index ``CompiledRules.paths``
    and are -1 where there is no path. Rows exist for every id the interner held at
    compile time; ids interned later are beyond the tables and count as unknown.
    """

    # -- accounts, shape (n_accounts,) or (n_accounts, N_LIMIT_KINDS) ------------------
    account_active: np.ndarray  # uint8: 1 if declared in this rules file
    account_limits: np.ndarray  # int64: accounts.A.limits, else firm.limits, else UNSET
    account_limit_paths: np.ndarray  # int32
    account_credit_limit: np.ndarray  # int64 micros
    account_credit_path: np.ndarray  # int32
    account_max_working: np.ndarray  # int64 orders
    account_max_working_path: np.ndarray  # int32
    account_rate_orders: np.ndarray  # int64
    account_rate_window_ns: np.ndarray  # int64
    account_rate_path: np.ndarray  # int32
    account_self_match: np.ndarray  # uint8 1 = prevent self-match
    account_dup_window_ns: np.ndarray  # int64, 0 = content-duplicate check off
    # -- symbols, shape (n_symbols,) or (n_symbols, N_LIMIT_KINDS) ---------------------
    symbol_active: np.ndarray  # uint8
    symbol_tick: np.ndarray  # int64 price nanos
    symbol_tick_path: np.ndarray  # int32
    symbol_lot: np.ndarray  # int64 qty nanos
    symbol_lot_path: np.ndarray  # int32
    symbol_multiplier: np.ndarray  # int64 multiplier nanos
    symbol_max_ref_age_ns: np.ndarray  # int64 (symbol's own, else the firm's)
    symbol_max_ref_age_path: np.ndarray  # int32
    symbol_limits: np.ndarray  # int64 instrument caps, UNSET where not configured
    symbol_limit_paths: np.ndarray  # int32
    symbol_restricted_sides: np.ndarray  # uint8 firm-wide restricted side bits
    symbol_restricted_path: np.ndarray  # int32
    # -- strategies, shape (n_strategies,); id 0 is "no strategy" ----------------------
    strategy_active: np.ndarray  # uint8 (id 0 active unless require_strategy)
    strategy_rate_orders: np.ndarray  # int64 (id 0: UNSET, the throttle does not apply)
    strategy_rate_window_ns: np.ndarray  # int64
    strategy_rate_path: np.ndarray  # int32
    # -- account x symbol overrides, sorted by key = account_id << 32 | symbol_id ------
    override_keys: np.ndarray  # int64, shape (n_overrides,), strictly increasing
    override_limits: np.ndarray  # int64, shape (n_overrides, N_LIMIT_KINDS)
    override_limit_paths: np.ndarray  # int32
    override_restricted_sides: np.ndarray  # uint8 account-specific restricted side bits
    override_restricted_path: np.ndarray  # int32


@dataclass
class CompiledRules:
    """A compiled rules file. ``version`` is the hex SHA-256 of the canonical compiled
    form (documented in docs/rules.md): two files that compile to the same limits have
    the same version whatever their layout, comments or key order."""

    source: str  # the file the rules came from (for messages)
    version: str
    firm: FirmRules
    accounts: dict[str, AccountRules]
    symbols: dict[str, SymbolRules]
    strategies: dict[str, StrategyRules]
    interner: Interner
    paths: tuple[str, ...]  # path id -> rule path
    tables: RuleTables
    path_ids: dict[str, int] = field(default_factory=dict)

    def path(self, path_id: int) -> str | None:
        return self.paths[path_id] if path_id >= 0 else None

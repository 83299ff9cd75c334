"""The rules compiler: a TOML rules file in, one :class:`~fastpath.model.CompiledRules` out.

The compiler is the only place where human-written limits become numbers the kernel
trusts, so it is strict on purpose:

* every key is known (a typo must not silently become a missing limit), every number is
  exact at its fixed-point scale (``to_fixed``; no binary float), nothing is negative;
* a file either compiles completely or raises one :class:`~fastpath.errors.RulesError`
  naming the file, the key path and the offending value; the first error is reported, in
  the fixed order documented in ``docs/rules.md``;
* the :class:`~fastpath.model.Interner` is only extended once the whole file is valid, so
  a rejected hot reload leaves the running engine's ids untouched;
* a limit configured nowhere stays ``LIMIT_UNSET`` and the kernel fails closed on it;
  opting out of a limit takes an explicit ``"unlimited"``.

The output holds the rules twice (see :mod:`fastpath.model`): the model exactly as written
per scope, and the numpy tables with inheritance folded; the parity suite holds the two
to agreement. The vocabulary, units and resolution rules are documented in docs/rules.md.

**Overrides** (:class:`LimitOverride`) are a run-time overlay on the file: temporary limit
raises and throttles that the halt manager puts in force (docs/halts.md). They are written
in the file's vocabulary and units, validated exactly like the file (same error classes,
with ``source`` naming the override), and folded into the model before the tables are
built, with rule paths ``overrides.<id>.<key>``: so the reference evaluator and the kernel
see the same limits, and the rules ``version`` and every failure's rule path show the
override in force. The compiler never reads the clock: callers pass the overrides that are
in force now and recompile when one expires.
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import tomllib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field, replace
from decimal import Decimal
from pathlib import Path
from typing import Any

import numpy as np

from fastpath.codes import (
    INT64_MAX,
    LIMIT_UNLIMITED,
    LIMIT_UNSET,
    MULTIPLIER_SCALE,
    N_LIMIT_KINDS,
    NOTIONAL_SCALE,
    NS_PER_MS,
    PPM_SCALE,
    PRICE_SCALE,
    QTY_SCALE,
    LimitKind,
    Side,
    side_bit,
)
from fastpath.errors import (
    DuplicateRestrictionError,
    InvalidValueError,
    MissingKeyError,
    RulesFileError,
    RulesSyntaxError,
    UndeclaredNameError,
    UnknownKeyError,
)
from fastpath.fixedpoint import FixedPointError, to_fixed
from fastpath.model import (
    STRATEGY_NONE,
    AccountRules,
    CompiledRules,
    FirmRules,
    Interner,
    RateLimit,
    Restriction,
    RuleTables,
    Setting,
    StrategyRules,
    SymbolRules,
)

DEFAULT_MAX_REFERENCE_AGE_MS = 5_000  # ms a reference price stays usable, unless [firm] says otherwise
DEFAULT_DUPLICATE_CONTENT_WINDOW_MS = 1_000  # ms an identical order counts as a duplicate
DEFAULT_SELF_MATCH_PREVENTION = True  # on unless the rules turn it off
DEFAULT_REQUIRE_STRATEGY = False  # orders without a strategy are accepted by default
DEFAULT_CONTRACT_MULTIPLIER = 1  # contract multiplier (units of 1.0) of a symbol that sets none

#: The value that opts a limit out explicitly (stored as LIMIT_UNLIMITED).
UNLIMITED = "unlimited"
#: Longest account, symbol or strategy name, in characters.
MAX_NAME_LENGTH = 64
#: Characters a name may not contain besides whitespace and control characters: they are
#: wildcards in the subjects names are published under.
FORBIDDEN_NAME_CHARACTERS = "*>"
#: Tag of the canonical form hashed into ``CompiledRules.version``; bumped whenever that
#: form changes, so that a version never means two different things.
CANONICAL_FORMAT = "pretrade.rules.v1"


# ---------------------------------------------------------------------------------------
# Units: how a number written in the file becomes a fixed-point integer.
# ---------------------------------------------------------------------------------------
@dataclass(frozen=True)
class _Unit:
    """A written unit: the file value times ``scale`` is the stored integer, and at most
    ``decimals`` decimal places are meaningful (more would be silently rounded)."""

    label: str  # for messages: "prices", "whole numbers", ...
    scale: int
    decimals: int


_PRICE = _Unit("prices", PRICE_SCALE, 9)
_QUANTITY = _Unit("quantities", QTY_SCALE, 9)
_NOTIONAL = _Unit("currency amounts", NOTIONAL_SCALE, 6)
_PERCENT = _Unit("percentages (1 ppm = 0.0001 %)", PPM_SCALE // 100, 4)
_MULTIPLIER = _Unit("contract multipliers", MULTIPLIER_SCALE, 9)
_COUNT = _Unit("whole numbers", 1, 0)
_MILLISECONDS = _Unit("milliseconds", NS_PER_MS, 0)  # stored in ns

#: A decimal written as a TOML string: plain notation only ("0.01", "1500").
_DECIMAL_STRING = re.compile(r"-?[0-9]+(\.[0-9]+)?")
#: TOML keys that need no quotes in a dotted key path.
_BARE_KEY = re.compile(r"[A-Za-z0-9_-]+")

# ---------------------------------------------------------------------------------------
# The vocabulary, in the order keys are checked (and documented).
# ---------------------------------------------------------------------------------------
#: Keys allowed per symbol (symbols.S.limits, accounts.A.symbols.S) and in every limits
#: table: key -> limit kind and unit.
_PER_SYMBOL_LIMITS: dict[str, tuple[LimitKind, _Unit]] = {
    "max_order_qty": (LimitKind.MAX_ORDER_QTY, _QUANTITY),
    "max_order_notional": (LimitKind.MAX_ORDER_NOTIONAL, _NOTIONAL),
    "max_long_position": (LimitKind.MAX_LONG_POSITION, _QUANTITY),
    "max_short_position": (LimitKind.MAX_SHORT_POSITION, _QUANTITY),
    "price_collar_pct": (LimitKind.PRICE_COLLAR_PPM, _PERCENT),
    "price_collar_ticks": (LimitKind.PRICE_COLLAR_TICKS, _COUNT),
}
_PER_SYMBOL_KEYS = tuple(_PER_SYMBOL_LIMITS)
_CREDIT_LIMIT = "credit_limit"
_MAX_WORKING_ORDERS = "max_working_orders"
_ORDER_RATE_LIMIT = "order_rate_limit"
#: Keys of [firm.limits] and [accounts.A.limits].
_ACCOUNT_LIMIT_KEYS = (*_PER_SYMBOL_LIMITS, _CREDIT_LIMIT, _MAX_WORKING_ORDERS, _ORDER_RATE_LIMIT)

_TOP_LEVEL_KEYS = ("firm", "symbols", "accounts", "strategies", "restrictions")
_FIRM_KEYS = (
    "name",
    "max_reference_age_ms",
    "self_match_prevention",
    "duplicate_content_window_ms",
    "require_strategy",
    "limits",
    "strategy_limits",
)
_SYMBOL_KEYS = ("tick_size", "lot_size", "contract_multiplier", "max_reference_age_ms", "limits")
_ACCOUNT_KEYS = ("self_match_prevention", "duplicate_content_window_ms", "limits", "symbols")
#: Keys of [strategies.S] and [firm.strategy_limits].
_STRATEGY_KEYS = (_ORDER_RATE_LIMIT,)
_RATE_LIMIT_KEYS = ("orders", "window_ms")
_RESTRICTION_KEYS = ("symbol", "account", "sides", "reason")
_RESTRICTABLE_SIDES = {side.name: side for side in (Side.BUY, Side.SELL, Side.SELL_SHORT)}

#: Root of the rule paths of overrides: ``overrides.<id>.<key>``.
OVERRIDES_PATH = "overrides"
#: Key path suffix under which a throttle factor is reported in errors.
_THROTTLE_FACTOR = "throttle_factor"
#: Resolution of a throttle factor: parts per million of the order rate in force.
_THROTTLE_FACTOR_UNIT = _Unit("throttle factors", PPM_SCALE, 6)


@dataclass(frozen=True)
class LimitOverride:
    """A temporary overlay on the rules file, at one scope (see the module docstring).

    ``limits`` maps rules-file keys to values exactly as the TOML parser would give them for
    the file: integers, Decimals, decimal strings (``"2.5"``), ``"unlimited"``, and for
    ``order_rate_limit`` a table ``{"orders": N, "window_ms": M}``. The keys allowed are
    those of ``[accounts.A.limits]`` for an account, of ``[accounts.A.symbols.S]`` for an
    account and symbol, and of ``[strategies.S]`` for a strategy.

    ``throttle_factor`` (a decimal in (0, 1], at most 6 decimal places) scales the
    ``order_rate_limit`` the account or strategy resolves to (the file's, or an earlier
    override's): ``orders`` becomes ``max(1, floor(orders x factor))`` over the same window.
    Each setting takes precedence at its own scope only (an account override does not beat
    the file's ``[accounts.A.symbols.S]`` for that symbol, and instrument caps still apply);
    among overrides, a later one in the sequence wins.
    """

    override_id: str
    limits: Mapping[str, Any] = field(default_factory=dict)
    account: str | None = None
    symbol: str | None = None
    strategy: str | None = None
    throttle_factor: Decimal | int | str | None = None

    @property
    def source(self) -> str:
        """How errors name the override (the ``source`` of a RulesError)."""
        return f"override {self.override_id}"

    @property
    def path(self) -> str:
        """``overrides.<id>``: the prefix of the rule paths of its settings."""
        return _key_path(OVERRIDES_PATH, self.override_id)


# ---------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------
def load_rules(
    path: str | os.PathLike, interner: Interner | None = None, overrides: Sequence[LimitOverride] = ()
) -> CompiledRules:
    """Read and compile the rules file at ``path`` (see :func:`compile_rules`).

    The file must be UTF-8 (a leading byte-order mark is tolerated); a file that cannot be
    read raises :class:`~fastpath.errors.RulesFileError` naming it.
    """
    return load_rules_with_text(path, interner, overrides)[0]


def load_rules_with_text(
    path: str | os.PathLike, interner: Interner | None = None, overrides: Sequence[LimitOverride] = ()
) -> tuple[CompiledRules, str]:
    """:func:`load_rules`, also returning the exact text compiled (what the ledger records,
    so that a rules version can be shown as the file it was)."""
    source = os.fsdecode(os.fspath(path))
    try:
        data = Path(source).read_bytes()
    except OSError as exc:
        raise RulesFileError(source, f"cannot read the rules file: {exc.strerror or exc}") from exc
    except ValueError as exc:  # e.g. a NUL byte in the path
        raise RulesFileError(source, f"cannot read the rules file: {exc}") from exc
    try:
        text = data.decode("utf-8-sig")
    except UnicodeDecodeError as exc:
        line = data.count(b"\n", 0, exc.start) + 1
        column = exc.start - (data.rfind(b"\n", 0, exc.start) + 1) + 1
        raise RulesSyntaxError(source, line, column, "the rules file is not valid UTF-8") from exc
    return compile_rules(text, source, interner, overrides), text


def compile_rules(
    text: str, source: str, interner: Interner | None = None, overrides: Sequence[LimitOverride] = ()
) -> CompiledRules:
    """Compile rules ``text`` (TOML); ``source`` names it in messages and in the result.

    With ``interner``, ids are kept stable across reloads: known names keep their ids and
    new names are appended (in sorted order), and only once the whole text is valid.
    ``overrides`` are applied on top, in order (see :class:`LimitOverride`); they are
    validated after the text. Raises a :class:`~fastpath.errors.RulesError` subclass for
    the first problem found (for an override, its ``source`` is ``"override <id>"``).
    """
    document = _parse_toml(text, source)
    parsed = _apply_overrides(_Parser(source).parse(document), overrides)

    interner = interner if interner is not None else Interner()
    for name in sorted(parsed.accounts):
        interner.account(name)
    for name in sorted(parsed.symbols):
        interner.symbol(name)
    for name in sorted(parsed.strategies):
        interner.strategy(name)

    paths = tuple(sorted(_model_paths(parsed)))
    path_ids = {path: path_id for path_id, path in enumerate(paths)}
    return CompiledRules(
        source=source,
        version=rules_version(parsed.firm, parsed.accounts, parsed.symbols, parsed.strategies),
        firm=parsed.firm,
        accounts=parsed.accounts,
        symbols=parsed.symbols,
        strategies=parsed.strategies,
        interner=interner,
        paths=paths,
        tables=_build_tables(parsed, interner, path_ids),
        path_ids=path_ids,
    )


def rules_version(
    firm: FirmRules,
    accounts: dict[str, AccountRules],
    symbols: dict[str, SymbolRules],
    strategies: dict[str, StrategyRules],
) -> str:
    """Hex SHA-256 of the canonical JSON of the model (docs/rules.md, "Version").

    Computed from the compiled model, not the text, so layout, comments, key order and
    the spelling of a number (``5``, ``5.0``, ``"5"``) do not change it; every value, path
    and restriction reason does.
    """
    canonical = {
        "format": CANONICAL_FORMAT,
        "firm": {
            "name": firm.name,
            "limits": _canonical_limits(firm.limits),
            "credit_limit": _canonical_setting(firm.credit_limit),
            "max_working_orders": _canonical_setting(firm.max_working_orders),
            "order_rate_limit": _canonical_rate(firm.order_rate_limit),
            "strategy_order_rate_limit": _canonical_rate(firm.strategy_order_rate_limit),
            "max_reference_age": _canonical_setting(firm.max_reference_age),
            "self_match_prevention": _canonical_setting(firm.self_match_prevention),
            "duplicate_content_window": _canonical_setting(firm.duplicate_content_window),
            "require_strategy": firm.require_strategy,
        },
        "symbols": {
            name: {
                "tick_nanos": symbol.tick_nanos,
                "tick_path": symbol.tick_path,
                "lot_nanos": symbol.lot_nanos,
                "lot_path": symbol.lot_path,
                "multiplier_nanos": symbol.multiplier_nanos,
                "max_reference_age": _canonical_setting(symbol.max_reference_age),
                "limits": _canonical_limits(symbol.limits),
                "restriction": _canonical_restriction(symbol.restriction),
            }
            for name, symbol in symbols.items()
        },
        "accounts": {
            name: {
                "limits": _canonical_limits(account.limits),
                "symbol_limits": {
                    symbol: _canonical_limits(limits) for symbol, limits in account.symbol_limits.items()
                },
                "restrictions": {
                    symbol: _canonical_restriction(restriction)
                    for symbol, restriction in account.restrictions.items()
                },
                "credit_limit": _canonical_setting(account.credit_limit),
                "max_working_orders": _canonical_setting(account.max_working_orders),
                "order_rate_limit": _canonical_rate(account.order_rate_limit),
                "self_match_prevention": _canonical_setting(account.self_match_prevention),
                "duplicate_content_window": _canonical_setting(account.duplicate_content_window),
            }
            for name, account in accounts.items()
        },
        "strategies": {
            name: {"order_rate_limit": _canonical_rate(strategy.order_rate_limit)}
            for name, strategy in strategies.items()
        },
    }
    encoded = json.dumps(canonical, sort_keys=True, separators=(",", ":"), ensure_ascii=True)
    return hashlib.sha256(encoded.encode("ascii")).hexdigest()


# ---------------------------------------------------------------------------------------
# Parsing and validation
# ---------------------------------------------------------------------------------------
def _parse_toml(text: str, source: str) -> dict[str, Any]:
    """The TOML document, floats as exact Decimals; syntax errors located by line/column."""
    try:
        return tomllib.loads(text, parse_float=Decimal)
    except tomllib.TOMLDecodeError as exc:
        message = str(exc)
        located = re.fullmatch(r"(?s)(.*) \(at line (\d+), column (\d+)\)", message)
        if located:
            raise RulesSyntaxError(
                source, int(located[2]), int(located[3]), f"invalid TOML: {located[1]}"
            ) from exc
        raise RulesSyntaxError(source, None, None, f"invalid TOML: {message}") from exc
    except RecursionError as exc:
        raise RulesSyntaxError(source, None, None, "invalid TOML: values nested too deeply") from exc


def _key_path(parent: str, key: str) -> str:
    """``parent.key`` as a TOML dotted key, quoting ``key`` when it is not a bare key (so
    that a name such as ``BRK.B`` cannot be mistaken for two keys)."""
    quoted = key if _BARE_KEY.fullmatch(key) else _quote_key(key)
    return f"{parent}.{quoted}" if parent else quoted


def _quote_key(key: str) -> str:
    """``key`` as a TOML basic string, escaping everything unprintable so that paths and
    messages stay on one line."""
    escaped = []
    for character in key:
        if character in '"\\':
            escaped.append("\\" + character)
        elif character.isprintable():
            escaped.append(character)
        elif ord(character) <= 0xFFFF:
            escaped.append(f"\\u{ord(character):04X}")
        else:
            escaped.append(f"\\U{ord(character):08X}")
    return '"' + "".join(escaped) + '"'


def _decimal_places(value: Decimal) -> int:
    """Decimal places of a finite Decimal, ignoring trailing zeros (``1.50`` has 1).

    Computed from the digits, not by arithmetic, because Decimal arithmetic rounds to the
    context precision and would hide the excess digits this is looking for.
    """
    _, digits, exponent = value.as_tuple()
    trailing_zeros = len(digits) - len("".join(map(str, digits)).rstrip("0"))
    return max(0, -(exponent + trailing_zeros))


@dataclass(frozen=True)
class _LimitSet:
    """The settings of one limits table, as written."""

    limits: dict[LimitKind, Setting]
    credit_limit: Setting | None = None
    max_working_orders: Setting | None = None
    order_rate_limit: RateLimit | None = None


@dataclass(frozen=True)
class _ParsedRules:
    """The validated model, before ids exist. Dicts are sorted by name."""

    firm: FirmRules
    symbols: dict[str, SymbolRules]
    accounts: dict[str, AccountRules]
    strategies: dict[str, StrategyRules]


class _Parser:
    """Validates a TOML document against the rules vocabulary and builds the model.

    Order of checks (the first failure is the one reported): top-level keys; [firm];
    [symbols] in file order; [accounts] in file order; [strategies] in file order;
    [[restrictions]] in file order. Within a table: unknown keys first (in file order),
    then the known keys in vocabulary order.
    """

    def __init__(self, source: str) -> None:
        self.source = source

    # -- entry point -------------------------------------------------------------------
    def parse(self, document: dict[str, Any]) -> _ParsedRules:
        self._reject_unknown_keys(document, "", _TOP_LEVEL_KEYS)
        if "firm" not in document:
            raise MissingKeyError(self.source, "firm", "the [firm] table is required")
        firm = self._firm(document["firm"])
        symbols = self._symbols(document.get("symbols", {}))
        accounts = self._accounts(document.get("accounts", {}), symbols)
        strategies = self._strategies(document.get("strategies", {}))
        firm_restrictions, account_restrictions = self._restrictions(
            document.get("restrictions", []), symbols, accounts
        )
        return _ParsedRules(
            firm=firm,
            symbols={
                name: replace(symbols[name], restriction=firm_restrictions.get(name))
                for name in sorted(symbols)
            },
            accounts={
                name: replace(
                    accounts[name], restrictions=dict(sorted(account_restrictions.get(name, {}).items()))
                )
                for name in sorted(accounts)
            },
            strategies={name: strategies[name] for name in sorted(strategies)},
        )

    # -- scopes ------------------------------------------------------------------------
    def _firm(self, raw: Any) -> FirmRules:
        table = self._table(raw, "firm", _FIRM_KEYS)
        if "name" not in table:
            raise MissingKeyError(self.source, "firm.name", "the firm name is required")
        name = table["name"]
        if not isinstance(name, str) or not name.strip():
            raise InvalidValueError(self.source, "firm.name", name, "expected a non-empty string")
        max_reference_age = self._optional_number(
            table, "firm", "max_reference_age_ms", _MILLISECONDS, positive=True
        )
        self_match = self._optional_flag(table, "firm", "self_match_prevention")
        duplicate_window = self._optional_number(
            table, "firm", "duplicate_content_window_ms", _MILLISECONDS
        )
        require_strategy = self._optional_flag(table, "firm", "require_strategy")
        if max_reference_age is None:
            max_reference_age = DEFAULT_MAX_REFERENCE_AGE_MS * NS_PER_MS
        if self_match is None:
            self_match = DEFAULT_SELF_MATCH_PREVENTION
        if duplicate_window is None:
            duplicate_window = DEFAULT_DUPLICATE_CONTENT_WINDOW_MS * NS_PER_MS
        if require_strategy is None:
            require_strategy = DEFAULT_REQUIRE_STRATEGY
        limits = self._limit_set(table.get("limits", {}), "firm.limits", _ACCOUNT_LIMIT_KEYS)
        strategy_limits = self._limit_set(
            table.get("strategy_limits", {}), "firm.strategy_limits", _STRATEGY_KEYS
        )
        return FirmRules(
            name=name,
            limits=limits.limits,
            credit_limit=limits.credit_limit,
            max_working_orders=limits.max_working_orders,
            order_rate_limit=limits.order_rate_limit,
            strategy_order_rate_limit=strategy_limits.order_rate_limit,
            max_reference_age=Setting(max_reference_age, "firm.max_reference_age_ms"),
            self_match_prevention=Setting(int(self_match), "firm.self_match_prevention"),
            duplicate_content_window=Setting(duplicate_window, "firm.duplicate_content_window_ms"),
            require_strategy=require_strategy,
        )

    def _symbols(self, raw: Any) -> dict[str, SymbolRules]:
        """Symbols by name, without their restriction (attached once restrictions are read)."""
        symbols = {}
        for name, raw_symbol in self._table(raw, "symbols", None).items():
            path = _key_path("symbols", name)
            self._check_name(name, path, "symbol")
            table = self._table(raw_symbol, path, _SYMBOL_KEYS)
            tick_path, lot_path = _key_path(path, "tick_size"), _key_path(path, "lot_size")
            tick = self._required_number(table, path, "tick_size", _PRICE, positive=True)
            lot = self._required_number(table, path, "lot_size", _QUANTITY, positive=True)
            multiplier = self._optional_number(table, path, "contract_multiplier", _MULTIPLIER, positive=True)
            if multiplier is None:
                multiplier = DEFAULT_CONTRACT_MULTIPLIER * MULTIPLIER_SCALE
            max_reference_age = self._optional_number(
                table, path, "max_reference_age_ms", _MILLISECONDS, positive=True
            )
            limits = self._limit_set(table.get("limits", {}), _key_path(path, "limits"), _PER_SYMBOL_KEYS)
            symbols[name] = SymbolRules(
                name=name,
                tick_nanos=tick,
                lot_nanos=lot,
                multiplier_nanos=multiplier,
                tick_path=tick_path,
                lot_path=lot_path,
                max_reference_age=(
                    None
                    if max_reference_age is None
                    else Setting(max_reference_age, _key_path(path, "max_reference_age_ms"))
                ),
                limits=limits.limits,
                restriction=None,
            )
        return symbols

    def _accounts(self, raw: Any, symbols: dict[str, SymbolRules]) -> dict[str, AccountRules]:
        """Accounts by name, without their restrictions (attached once restrictions are read)."""
        accounts = {}
        for name, raw_account in self._table(raw, "accounts", None).items():
            path = _key_path("accounts", name)
            self._check_name(name, path, "account")
            table = self._table(raw_account, path, _ACCOUNT_KEYS)
            self_match = self._optional_flag(table, path, "self_match_prevention")
            duplicate_window = self._optional_number(
                table, path, "duplicate_content_window_ms", _MILLISECONDS
            )
            limits = self._limit_set(table.get("limits", {}), _key_path(path, "limits"), _ACCOUNT_LIMIT_KEYS)
            symbols_path = _key_path(path, "symbols")
            symbol_limits = {}
            for symbol, raw_override in self._table(table.get("symbols", {}), symbols_path, None).items():
                override_path = _key_path(symbols_path, symbol)
                if symbol not in symbols:
                    raise UndeclaredNameError(
                        self.source, override_path, symbol, "override for a symbol not declared in [symbols]"
                    )
                override = self._limit_set(raw_override, override_path, _PER_SYMBOL_KEYS)
                symbol_limits[symbol] = override.limits
            accounts[name] = AccountRules(
                name=name,
                limits=limits.limits,
                symbol_limits=dict(sorted(symbol_limits.items())),
                restrictions={},
                credit_limit=limits.credit_limit,
                max_working_orders=limits.max_working_orders,
                order_rate_limit=limits.order_rate_limit,
                self_match_prevention=(
                    None
                    if self_match is None
                    else Setting(int(self_match), _key_path(path, "self_match_prevention"))
                ),
                duplicate_content_window=(
                    None
                    if duplicate_window is None
                    else Setting(duplicate_window, _key_path(path, "duplicate_content_window_ms"))
                ),
            )
        return accounts

    def _strategies(self, raw: Any) -> dict[str, StrategyRules]:
        strategies = {}
        for name, raw_strategy in self._table(raw, "strategies", None).items():
            path = _key_path("strategies", name)
            if name == "":
                raise InvalidValueError(
                    self.source, path, name, "the empty strategy name is reserved for orders without one"
                )
            self._check_name(name, path, "strategy")
            limits = self._limit_set(raw_strategy, path, _STRATEGY_KEYS)
            strategies[name] = StrategyRules(name=name, order_rate_limit=limits.order_rate_limit)
        return strategies

    def _restrictions(
        self, raw: Any, symbols: dict[str, SymbolRules], accounts: dict[str, AccountRules]
    ) -> tuple[dict[str, Restriction], dict[str, dict[str, Restriction]]]:
        """Firm-wide restrictions by symbol, and account restrictions by account, symbol."""
        if not isinstance(raw, list):
            raise InvalidValueError(
                self.source, "restrictions", raw, "expected an array of tables [[restrictions]]"
            )
        firm_wide: dict[str, Restriction] = {}
        per_account: dict[str, dict[str, Restriction]] = {}
        for index, raw_restriction in enumerate(raw):
            path = f"restrictions[{index}]"
            table = self._table(raw_restriction, path, _RESTRICTION_KEYS)
            symbol = self._declared_name(table, path, "symbol", symbols, required=True)
            account = self._declared_name(table, path, "account", accounts, required=False)
            sides_mask = self._sides_mask(table, path)
            if "reason" not in table:
                raise MissingKeyError(self.source, f"{path}.reason", "every restriction needs a reason")
            reason = table["reason"]
            if not isinstance(reason, str) or not reason.strip():
                raise InvalidValueError(self.source, f"{path}.reason", reason, "expected a non-empty string")
            scope = firm_wide if account is None else per_account.setdefault(account, {})
            earlier = scope.get(symbol)
            if earlier is not None:
                who = "firm-wide" if account is None else f"for account {account!r}"
                raise DuplicateRestrictionError(
                    self.source,
                    path,
                    symbol,
                    f"symbol is already restricted {who} by {earlier.path}; merge the two entries",
                )
            scope[symbol] = Restriction(sides_mask=sides_mask, path=path, reason=reason)
        return firm_wide, per_account

    # -- overrides ---------------------------------------------------------------------
    def _override(self, override: LimitOverride, parsed: _ParsedRules | None) -> tuple[_LimitSet, int | None]:
        """The override's validated settings and throttle factor (ppm, or None), checked in
        the order of the file's own checks: the id, the scope (exactly one of account or
        strategy; a symbol only with an account; names declared when ``parsed`` is given),
        unknown keys, values, then the throttle factor."""
        path = override.path
        self._check_name(override.override_id, path, "override id")
        allowed = self._override_scope(override, parsed)
        limits = dict(override.limits) if isinstance(override.limits, Mapping) else override.limits
        settings = self._limit_set(limits, path, allowed)
        throttle = self._throttle_factor(override, settings)
        if not limits and throttle is None:
            raise InvalidValueError(
                self.source, path, limits, "an override sets at least one limit or a throttle factor"
            )
        return settings, throttle

    def _override_scope(self, override: LimitOverride, parsed: _ParsedRules | None) -> tuple[str, ...]:
        """Check the override's scope (and, given ``parsed``, that its names are declared);
        return the limit keys allowed there."""
        path = override.path
        if override.account is not None and override.strategy is not None:
            raise InvalidValueError(
                self.source,
                f"{path}.strategy",
                override.strategy,
                "an override names an account or a strategy, not both",
            )
        if override.account is None and override.strategy is None:
            raise MissingKeyError(
                self.source, f"{path}.account", "an override names an account or a strategy"
            )
        if override.strategy is not None:
            if override.symbol is not None:
                raise InvalidValueError(
                    self.source, f"{path}.symbol", override.symbol, "a symbol override also names its account"
                )
            self._declared_override_name(override.strategy, f"{path}.strategy", parsed and parsed.strategies)
            return _STRATEGY_KEYS
        self._declared_override_name(override.account, f"{path}.account", parsed and parsed.accounts)
        if override.symbol is None:
            return _ACCOUNT_LIMIT_KEYS
        self._declared_override_name(override.symbol, f"{path}.symbol", parsed and parsed.symbols)
        return _PER_SYMBOL_KEYS

    def _declared_override_name(self, name: Any, path: str, declared: dict[str, Any] | None) -> None:
        """``name`` must be a string, and declared in ``declared`` when that is given."""
        kind = path.rpartition(".")[2]
        if not isinstance(name, str):
            raise InvalidValueError(self.source, path, name, f"expected the name of a declared {kind}")
        if declared is not None and name not in declared:
            section = {"account": "accounts", "symbol": "symbols", "strategy": "strategies"}[kind]
            raise UndeclaredNameError(self.source, path, name, f"{kind} is not declared in [{section}]")

    def _throttle_factor(self, override: LimitOverride, settings: _LimitSet) -> int | None:
        """The throttle factor in ppm (1 to 1_000_000), or None when there is none."""
        raw = override.throttle_factor
        if raw is None:
            return None
        path = _key_path(override.path, _THROTTLE_FACTOR)
        if override.symbol is not None:
            raise InvalidValueError(
                self.source, path, raw, "order rates are per account or strategy; a throttle names no symbol"
            )
        if settings.order_rate_limit is not None:
            raise InvalidValueError(
                self.source, path, raw, f"set either {_ORDER_RATE_LIMIT} or a throttle factor, not both"
            )
        factor = self._number(raw, path, _THROTTLE_FACTOR_UNIT, positive=True)
        if factor > PPM_SCALE:
            raise InvalidValueError(
                self.source, path, raw, "a throttle factor is at most 1 (it only lowers the rate)"
            )
        return factor

    def _throttled(
        self, base: RateLimit | None, factor_ppm: int, override: LimitOverride, scope: str
    ) -> RateLimit:
        """``base`` scaled by the factor, reported under ``overrides.<id>.order_rate_limit``."""
        factor_path = _key_path(override.path, _THROTTLE_FACTOR)
        if base is None:
            raise InvalidValueError(
                self.source,
                factor_path,
                override.throttle_factor,
                f"no {_ORDER_RATE_LIMIT} resolves for {scope}, so there is nothing to scale; "
                "set one explicitly",
            )
        if base.orders == LIMIT_UNLIMITED:
            raise InvalidValueError(
                self.source,
                factor_path,
                override.throttle_factor,
                f"the {_ORDER_RATE_LIMIT} of {scope} is {UNLIMITED!r}; "
                f"set an explicit {_ORDER_RATE_LIMIT} instead",
            )
        orders = max(1, base.orders * factor_ppm // PPM_SCALE)
        path = _key_path(override.path, _ORDER_RATE_LIMIT)
        return RateLimit(orders=orders, window_ns=base.window_ns, path=path)

    # -- building blocks ---------------------------------------------------------------
    def _table(self, raw: Any, path: str, allowed: tuple[str, ...] | None) -> dict[str, Any]:
        """``raw`` as a table whose keys are all in ``allowed`` (any key when None: the
        keys are names)."""
        if not isinstance(raw, dict):
            raise InvalidValueError(self.source, path, raw, "expected a table")
        if allowed is not None:
            self._reject_unknown_keys(raw, path, allowed)
        return raw

    def _reject_unknown_keys(self, table: dict[str, Any], path: str, allowed: tuple[str, ...]) -> None:
        for key, value in table.items():
            if key not in allowed:
                expected = ", ".join(allowed)
                raise UnknownKeyError(
                    self.source, _key_path(path, key), value, f"unknown key; expected one of {expected}"
                )

    def _check_name(self, name: str, path: str, kind: str) -> None:
        if not 1 <= len(name) <= MAX_NAME_LENGTH:
            raise InvalidValueError(
                self.source, path, name, f"{kind} name must be 1 to {MAX_NAME_LENGTH} characters long"
            )
        for character in name:
            if character.isspace() or not character.isprintable():
                raise InvalidValueError(
                    self.source, path, name, f"{kind} name must not contain whitespace or control characters"
                )
            if character in FORBIDDEN_NAME_CHARACTERS:
                raise InvalidValueError(
                    self.source, path, name, f"{kind} name must not contain {character!r}"
                )

    def _limit_set(self, raw: Any, path: str, allowed: tuple[str, ...]) -> _LimitSet:
        table = self._table(raw, path, allowed)
        limits = {}
        for key, (kind, unit) in _PER_SYMBOL_LIMITS.items():
            if key in allowed and key in table:
                limits[kind] = self._limit_setting(table[key], _key_path(path, key), unit)
        return _LimitSet(
            limits=limits,
            credit_limit=self._optional_limit(table, path, _CREDIT_LIMIT, _NOTIONAL),
            max_working_orders=self._optional_limit(table, path, _MAX_WORKING_ORDERS, _COUNT),
            order_rate_limit=(
                self._rate_limit(table[_ORDER_RATE_LIMIT], _key_path(path, _ORDER_RATE_LIMIT))
                if _ORDER_RATE_LIMIT in table
                else None
            ),
        )

    def _optional_limit(self, table: dict[str, Any], path: str, key: str, unit: _Unit) -> Setting | None:
        if key not in table:
            return None
        return self._limit_setting(table[key], _key_path(path, key), unit)

    def _limit_setting(self, raw: Any, path: str, unit: _Unit) -> Setting:
        if isinstance(raw, str) and raw == UNLIMITED:
            return Setting(LIMIT_UNLIMITED, path)
        return Setting(self._number(raw, path, unit, allow_unlimited=True), path)

    def _rate_limit(self, raw: Any, path: str) -> RateLimit:
        if isinstance(raw, str) and raw == UNLIMITED:
            return RateLimit(orders=LIMIT_UNLIMITED, window_ns=0, path=path)
        if not isinstance(raw, dict):
            raise InvalidValueError(
                self.source, path, raw, f'expected a table {{ orders = N, window_ms = M }} or "{UNLIMITED}"'
            )
        self._reject_unknown_keys(raw, path, _RATE_LIMIT_KEYS)
        orders = self._required_number(raw, path, "orders", _COUNT, positive=True)
        window_ns = self._required_number(raw, path, "window_ms", _MILLISECONDS, positive=True)
        if orders * window_ns > INT64_MAX:
            raise InvalidValueError(
                self.source,
                path,
                raw,
                "orders x window (in ns) exceeds the int64 range of the kernel's token bucket",
            )
        return RateLimit(orders=orders, window_ns=window_ns, path=path)

    def _required_number(
        self, table: dict[str, Any], path: str, key: str, unit: _Unit, *, positive: bool = False
    ) -> int:
        if key not in table:
            raise MissingKeyError(self.source, _key_path(path, key), "required key is missing")
        return self._number(table[key], _key_path(path, key), unit, positive=positive)

    def _optional_number(
        self, table: dict[str, Any], path: str, key: str, unit: _Unit, *, positive: bool = False
    ) -> int | None:
        if key not in table:
            return None
        return self._number(table[key], _key_path(path, key), unit, positive=positive)

    def _number(
        self, raw: Any, path: str, unit: _Unit, *, positive: bool = False, allow_unlimited: bool = False
    ) -> int:
        """``raw`` (TOML int, TOML float as Decimal, or decimal string) as an exact
        fixed-point integer of ``unit``; never negative, never INT64_MAX (reserved for
        "unlimited")."""
        expected = "a whole number" if unit.decimals == 0 else "a number"
        if allow_unlimited:
            expected += f' or "{UNLIMITED}"'

        def invalid(message: str) -> InvalidValueError:
            return InvalidValueError(self.source, path, raw, message)

        if isinstance(raw, bool):
            raise invalid(f"expected {expected}, not a boolean")
        if isinstance(raw, str) and _DECIMAL_STRING.fullmatch(raw):
            value = Decimal(raw)
        elif isinstance(raw, (int, Decimal)):
            value = Decimal(raw)
        else:
            raise invalid(f"expected {expected}")
        if not value.is_finite():
            raise invalid("must be a finite number")
        if value < 0:
            raise invalid("must not be negative")
        if positive and value == 0:
            raise invalid("must be greater than 0")
        if value == 0:
            return 0
        if _decimal_places(value) > unit.decimals:
            if unit.decimals == 0:
                raise invalid("must be a whole number")
            raise invalid(f"has more than {unit.decimals} decimal places, the resolution of {unit.label}")
        too_large = "is too large" + (f'; write "{UNLIMITED}" for no limit' if allow_unlimited else "")
        try:
            fixed = to_fixed(value, unit.scale)  # exact: the decimal places were checked above
        except FixedPointError:
            raise invalid(too_large) from None
        if fixed >= LIMIT_UNLIMITED:
            raise invalid(too_large)
        return fixed

    def _optional_flag(self, table: dict[str, Any], path: str, key: str) -> bool | None:
        if key not in table:
            return None
        raw = table[key]
        if not isinstance(raw, bool):
            raise InvalidValueError(self.source, _key_path(path, key), raw, "expected true or false")
        return raw

    def _declared_name(
        self, table: dict[str, Any], path: str, key: str, declared: dict[str, Any], *, required: bool
    ) -> str | None:
        """The account or symbol named by ``key`` of a restriction, which must be declared."""
        key_path = f"{path}.{key}"
        if key not in table:
            if required:
                raise MissingKeyError(self.source, key_path, f"every restriction needs a {key}")
            return None
        name = table[key]
        if not isinstance(name, str):
            raise InvalidValueError(self.source, key_path, name, f"expected the name of a declared {key}")
        if name not in declared:
            section = "symbols" if key == "symbol" else "accounts"
            raise UndeclaredNameError(self.source, key_path, name, f"{key} is not declared in [{section}]")
        return name

    def _sides_mask(self, table: dict[str, Any], path: str) -> int:
        key_path = f"{path}.sides"
        if "sides" not in table:
            return sum(side_bit(side) for side in _RESTRICTABLE_SIDES.values())
        raw = table["sides"]
        if not isinstance(raw, list) or not raw:
            raise InvalidValueError(
                self.source, key_path, raw, f"expected a non-empty array of {', '.join(_RESTRICTABLE_SIDES)}"
            )
        mask = 0
        for side_name in raw:
            side = _RESTRICTABLE_SIDES.get(side_name) if isinstance(side_name, str) else None
            if side is None:
                expected = ", ".join(_RESTRICTABLE_SIDES)
                raise InvalidValueError(
                    self.source, key_path, side_name, f"unknown side; expected one of {expected}"
                )
            if mask & side_bit(side):
                raise InvalidValueError(self.source, key_path, side_name, "side is listed twice")
            mask |= side_bit(side)
        return mask


# ---------------------------------------------------------------------------------------
# Overrides: the run-time overlay
# ---------------------------------------------------------------------------------------
def check_override(override: LimitOverride) -> None:
    """Validate an override as far as it can be without a rules file: its id, the shape of
    its scope, its keys and values, its throttle factor. Raises the RulesError that
    :func:`compile_rules` would raise for it, except for names the file must declare and
    for throttling a rate that is unset or unlimited there."""
    _Parser(override.source)._override(override, None)


def _apply_overrides(parsed: _ParsedRules, overrides: Sequence[LimitOverride]) -> _ParsedRules:
    """``parsed`` with every override folded into the model at its scope, in order."""
    if not overrides:
        return parsed
    accounts = dict(parsed.accounts)
    strategies = dict(parsed.strategies)
    seen_ids: set[str] = set()
    for override in overrides:
        parser = _Parser(override.source)
        settings, throttle = parser._override(override, parsed)
        if override.override_id in seen_ids:
            raise InvalidValueError(
                override.source,
                override.path,
                override.override_id,
                "override id is used by an earlier override",
            )
        seen_ids.add(override.override_id)
        if override.strategy is not None:
            strategy = strategies[override.strategy]
            rate = settings.order_rate_limit
            if throttle is not None:
                base = _first_set(strategy.order_rate_limit, parsed.firm.strategy_order_rate_limit)
                rate = parser._throttled(base, throttle, override, f"strategy {override.strategy!r}")
            strategies[override.strategy] = replace(strategy, order_rate_limit=rate)
            continue
        account = accounts[override.account]
        if override.symbol is not None:
            symbol_limits = dict(account.symbol_limits)
            symbol_limits[override.symbol] = {**symbol_limits.get(override.symbol, {}), **settings.limits}
            accounts[override.account] = replace(account, symbol_limits=dict(sorted(symbol_limits.items())))
            continue
        rate = _first_set(settings.order_rate_limit, account.order_rate_limit)
        if throttle is not None:
            base = _first_set(account.order_rate_limit, parsed.firm.order_rate_limit)
            rate = parser._throttled(base, throttle, override, f"account {override.account!r}")
        accounts[override.account] = replace(
            account,
            limits={**account.limits, **settings.limits},
            credit_limit=_first_set(settings.credit_limit, account.credit_limit),
            max_working_orders=_first_set(settings.max_working_orders, account.max_working_orders),
            order_rate_limit=rate,
        )
    return replace(parsed, accounts=accounts, strategies=strategies)


# ---------------------------------------------------------------------------------------
# Paths, tables and the canonical form
# ---------------------------------------------------------------------------------------
def _model_paths(parsed: _ParsedRules) -> set[str]:
    """Every rule path the model refers to (the id space of the tables' path columns)."""
    firm = parsed.firm
    settings: list[Setting | RateLimit | Restriction | None] = [
        *firm.limits.values(),
        firm.credit_limit,
        firm.max_working_orders,
        firm.order_rate_limit,
        firm.strategy_order_rate_limit,
        firm.max_reference_age,
        firm.self_match_prevention,
        firm.duplicate_content_window,
    ]
    paths = set()
    for symbol in parsed.symbols.values():
        paths.update((symbol.tick_path, symbol.lot_path))
        settings += [symbol.max_reference_age, *symbol.limits.values(), symbol.restriction]
    for account in parsed.accounts.values():
        settings += [
            *account.limits.values(),
            *(setting for limits in account.symbol_limits.values() for setting in limits.values()),
            *account.restrictions.values(),
            account.credit_limit,
            account.max_working_orders,
            account.order_rate_limit,
            account.self_match_prevention,
            account.duplicate_content_window,
        ]
    settings += [strategy.order_rate_limit for strategy in parsed.strategies.values()]
    paths.update(setting.path for setting in settings if setting is not None)
    return paths


def _first_set(*candidates: Any) -> Any:
    """The first configured setting along an inheritance chain, or None."""
    return next((candidate for candidate in candidates if candidate is not None), None)


def _build_tables(parsed: _ParsedRules, interner: Interner, path_ids: dict[str, int]) -> RuleTables:
    """Flatten the model into the kernel's arrays, folding inheritance.

    Rows of names the interner holds but this file does not declare stay inactive, with
    every value LIMIT_UNSET (windows 0, flags 0) and every path -1.
    """
    firm = parsed.firm
    n_accounts, n_symbols = len(interner.account_names), len(interner.symbol_names)
    n_strategies = len(interner.strategy_names)

    def unset(*shape: int) -> np.ndarray:
        return np.full(shape, LIMIT_UNSET, dtype=np.int64)

    def no_path(*shape: int) -> np.ndarray:
        return np.full(shape, -1, dtype=np.int32)

    def flags(n: int) -> np.ndarray:
        return np.zeros(n, dtype=np.uint8)

    overrides = sorted(
        (
            (interner.account_ids[name] << 32 | interner.symbol_ids[symbol], account, symbol)
            for name, account in parsed.accounts.items()
            for symbol in account.symbol_limits.keys() | account.restrictions.keys()
        ),
        key=lambda override: override[0],
    )
    n_overrides = len(overrides)

    tables = RuleTables(
        account_active=flags(n_accounts),
        account_limits=unset(n_accounts, N_LIMIT_KINDS),
        account_limit_paths=no_path(n_accounts, N_LIMIT_KINDS),
        account_credit_limit=unset(n_accounts),
        account_credit_path=no_path(n_accounts),
        account_max_working=unset(n_accounts),
        account_max_working_path=no_path(n_accounts),
        account_rate_orders=unset(n_accounts),
        account_rate_window_ns=np.zeros(n_accounts, dtype=np.int64),
        account_rate_path=no_path(n_accounts),
        account_self_match=flags(n_accounts),
        account_dup_window_ns=np.zeros(n_accounts, dtype=np.int64),
        symbol_active=flags(n_symbols),
        symbol_tick=unset(n_symbols),
        symbol_tick_path=no_path(n_symbols),
        symbol_lot=unset(n_symbols),
        symbol_lot_path=no_path(n_symbols),
        symbol_multiplier=unset(n_symbols),
        symbol_max_ref_age_ns=unset(n_symbols),
        symbol_max_ref_age_path=no_path(n_symbols),
        symbol_limits=unset(n_symbols, N_LIMIT_KINDS),
        symbol_limit_paths=no_path(n_symbols, N_LIMIT_KINDS),
        symbol_restricted_sides=flags(n_symbols),
        symbol_restricted_path=no_path(n_symbols),
        strategy_active=flags(n_strategies),
        strategy_rate_orders=unset(n_strategies),
        strategy_rate_window_ns=np.zeros(n_strategies, dtype=np.int64),
        strategy_rate_path=no_path(n_strategies),
        override_keys=np.array([key for key, _, _ in overrides], dtype=np.int64),
        override_limits=unset(n_overrides, N_LIMIT_KINDS),
        override_limit_paths=no_path(n_overrides, N_LIMIT_KINDS),
        override_restricted_sides=flags(n_overrides),
        override_restricted_path=no_path(n_overrides),
    )

    for name, account in parsed.accounts.items():
        row = interner.account_ids[name]
        tables.account_active[row] = 1
        for kind in LimitKind:
            setting = _first_set(account.limits.get(kind), firm.limits.get(kind))
            if setting is not None:
                tables.account_limits[row, kind] = setting.value
                tables.account_limit_paths[row, kind] = path_ids[setting.path]
        credit = _first_set(account.credit_limit, firm.credit_limit)
        if credit is not None:
            tables.account_credit_limit[row] = credit.value
            tables.account_credit_path[row] = path_ids[credit.path]
        max_working = _first_set(account.max_working_orders, firm.max_working_orders)
        if max_working is not None:
            tables.account_max_working[row] = max_working.value
            tables.account_max_working_path[row] = path_ids[max_working.path]
        rate = _first_set(account.order_rate_limit, firm.order_rate_limit)
        if rate is not None:
            tables.account_rate_orders[row] = rate.orders
            tables.account_rate_window_ns[row] = rate.window_ns
            tables.account_rate_path[row] = path_ids[rate.path]
        self_match = _first_set(account.self_match_prevention, firm.self_match_prevention)
        tables.account_self_match[row] = self_match.value
        duplicate_window = _first_set(account.duplicate_content_window, firm.duplicate_content_window)
        tables.account_dup_window_ns[row] = duplicate_window.value

    for name, symbol in parsed.symbols.items():
        row = interner.symbol_ids[name]
        tables.symbol_active[row] = 1
        tables.symbol_tick[row] = symbol.tick_nanos
        tables.symbol_tick_path[row] = path_ids[symbol.tick_path]
        tables.symbol_lot[row] = symbol.lot_nanos
        tables.symbol_lot_path[row] = path_ids[symbol.lot_path]
        tables.symbol_multiplier[row] = symbol.multiplier_nanos
        max_reference_age = _first_set(symbol.max_reference_age, firm.max_reference_age)
        tables.symbol_max_ref_age_ns[row] = max_reference_age.value
        tables.symbol_max_ref_age_path[row] = path_ids[max_reference_age.path]
        for kind, setting in symbol.limits.items():
            tables.symbol_limits[row, kind] = setting.value
            tables.symbol_limit_paths[row, kind] = path_ids[setting.path]
        if symbol.restriction is not None:
            tables.symbol_restricted_sides[row] = symbol.restriction.sides_mask
            tables.symbol_restricted_path[row] = path_ids[symbol.restriction.path]

    tables.strategy_active[STRATEGY_NONE] = 0 if firm.require_strategy else 1
    for name, strategy in parsed.strategies.items():
        row = interner.strategy_ids[name]
        tables.strategy_active[row] = 1
        rate = _first_set(strategy.order_rate_limit, firm.strategy_order_rate_limit)
        if rate is not None:
            tables.strategy_rate_orders[row] = rate.orders
            tables.strategy_rate_window_ns[row] = rate.window_ns
            tables.strategy_rate_path[row] = path_ids[rate.path]

    for row, (_, account, symbol) in enumerate(overrides):
        for kind, setting in account.symbol_limits.get(symbol, {}).items():
            tables.override_limits[row, kind] = setting.value
            tables.override_limit_paths[row, kind] = path_ids[setting.path]
        restriction = account.restrictions.get(symbol)
        if restriction is not None:
            tables.override_restricted_sides[row] = restriction.sides_mask
            tables.override_restricted_path[row] = path_ids[restriction.path]
    return tables


def _canonical_setting(setting: Setting | None) -> dict[str, Any] | None:
    return None if setting is None else {"path": setting.path, "value": setting.value}


def _canonical_rate(rate: RateLimit | None) -> dict[str, Any] | None:
    return None if rate is None else {"orders": rate.orders, "path": rate.path, "window_ns": rate.window_ns}


def _canonical_restriction(restriction: Restriction | None) -> dict[str, Any] | None:
    if restriction is None:
        return None
    return {"path": restriction.path, "reason": restriction.reason, "sides_mask": restriction.sides_mask}


def _canonical_limits(limits: dict[LimitKind, Setting]) -> dict[str, Any]:
    return {kind.name: _canonical_setting(setting) for kind, setting in limits.items()}

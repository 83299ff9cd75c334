"""pretrade's fast path: rules file -> compiled numpy tables -> Cython kernel.

``load_rules`` compiles a TOML rules file; ``Engine`` decides orders with the compiled
kernel and explains rejections. See docs/rules.md and docs/checks.md.
"""

from fastpath.codes import Check, ExecStatus, OrderType, Scope, Side, TradingState
from fastpath.engine import Engine, Failure
from fastpath.errors import RulesError
from fastpath.rules import compile_rules, load_rules

__all__ = [
    "Check",
    "Engine",
    "ExecStatus",
    "Failure",
    "OrderType",
    "RulesError",
    "Scope",
    "Side",
    "TradingState",
    "compile_rules",
    "load_rules",
]

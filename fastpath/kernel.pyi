"""Python-visible surface of the compiled kernel (``fastpath/kernel.pyx``).

The C-level declarations (enums, state records, cdef methods) are in ``kernel.pxd``.
"""

from typing import Final

import numpy as np
import numpy.typing as npt

from fastpath.model import CompiledRules

#: The C enums by ``fastpath.codes`` class name, then member name.
ENUMS: Final[dict[str, dict[str, int]]]
#: Scalar constants the kernel was compiled with (N_CHECKS, LIMIT_UNSET, ...).
CONSTANTS: Final[dict[str, int]]
#: Bytes per state and rule record (kernel.pxd), by struct name.
RECORD_SIZES: Final[dict[str, int]]

class RuleView:
    """Typed, validated views of one ``RuleTables`` (built by ``install_rules``)."""

    @property
    def rules(self) -> CompiledRules: ...
    @property
    def n_accounts(self) -> int: ...
    @property
    def n_symbols(self) -> int: ...
    @property
    def n_strategies(self) -> int: ...
    @property
    def n_overrides(self) -> int: ...
    @property
    def n_account_profiles(self) -> int:
        """Distinct account records (accounts with the same settings share one)."""
    @property
    def n_symbol_profiles(self) -> int:
        """Distinct symbol records."""
    def __init__(self, rules: CompiledRules) -> None: ...

class CheckResult:
    """Decision of one order (same interface as ``ReferenceResult``)."""

    @property
    def accepted(self) -> bool: ...
    @property
    def failed(self) -> int: ...
    @property
    def handle(self) -> int: ...
    @property
    def details(self) -> dict[int, tuple[int, int, int]]: ...
    def detail(self, code: int) -> tuple[int, int, int]: ...

class Kernel:
    """The compiled twin of ``fastpath.reference.ReferenceKernel``."""

    @property
    def view(self) -> RuleView: ...
    @property
    def rules(self) -> CompiledRules: ...
    @property
    def max_orders(self) -> int: ...
    @property
    def max_positions(self) -> int: ...
    @property
    def client_order_id_memory(self) -> int: ...
    def __init__(
        self,
        rules: CompiledRules,
        *,
        max_orders: int = ...,
        max_positions: int = ...,
        client_order_id_memory: int = ...,
    ) -> None: ...
    def install_rules(self, rules: CompiledRules) -> None: ...
    def set_reference_price(self, symbol_id: int, price_nanos: int, ts_ns: int) -> None: ...
    def set_trading_state(self, scope: int, scope_id: int, state: int) -> None: ...
    def trading_state(self, scope: int, scope_id: int) -> int: ...
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
    ) -> CheckResult: ...
    def check_batch(
        self,
        account_ids: npt.NDArray[np.int32],
        symbol_ids: npt.NDArray[np.int32],
        strategy_ids: npt.NDArray[np.int32],
        sides: npt.NDArray[np.int8] | npt.NDArray[np.uint8],
        order_types: npt.NDArray[np.int8] | npt.NDArray[np.uint8],
        qtys: npt.NDArray[np.int64],
        prices: npt.NDArray[np.int64],
        keys: npt.NDArray[np.int64],
        now_ns: int | npt.NDArray[np.int64],
        out_failed: npt.NDArray[np.uint64],
        out_handles: npt.NDArray[np.int64],
        out_limits: npt.NDArray[np.int64],
        out_observed: npt.NDArray[np.int64],
        out_paths: npt.NDArray[np.int32],
    ) -> int: ...
    def fill(self, handle: int, qty: int, price: int) -> int: ...
    def release(self, handle: int) -> int: ...
    def reset_filled_exposure(self, account_id: int = -1) -> None: ...
    def exposure(self, account_id: int) -> tuple[int, int]: ...
    def position(self, account_id: int, symbol_id: int) -> tuple[int, int, int]: ...
    def working_orders(self, account_id: int) -> int: ...
    def live_orders(self) -> int: ...

"""Configuration of the MT5 bridge (TOML) and the exact MT5 → fixed-point conversions.

MT5 prices and volumes are doubles. They are converted through their shortest round-trip
text (``Decimal(repr(x))``: ``0.1`` becomes ``Decimal("0.1")``, not
``0.1000000000000000055511151231257827``), quantized to the symbol's ``digits`` (prices) or
``volume_step`` (lots), and only then scaled to nanos. No binary-float arithmetic or
comparison takes part.

Example (``examples/mt5_bridge.toml`` style)::

    [bridge]
    listen = "127.0.0.1:5757"
    target = "127.0.0.1:50051"
    token_env = "PRETRADE_TOKEN"      # or token = "..."
    decision_timeout_ms = 2000
    tls_ca = "ca.pem"                 # TLS to the gateway (relative to this file); with
    tls_client_cert = "client.pem"    # a client certificate and key: mutual TLS. The
    tls_client_key = "client-key.pem" # --tls-* flags, when given, replace these three
    state_file = ""                   # execution reports owed to the gateway (SQLite);
                                      # default: <data dir>/mt5/reports.sqlite

    [symbols.EURUSD]
    gateway_symbol = "EURUSD"         # default: the MT5 name
    digits = 5                        # price decimals (SYMBOL_DIGITS)
    contract_size = 100000            # units per lot (SYMBOL_TRADE_CONTRACT_SIZE)
    volume_step = "0.01"              # lot step (SYMBOL_VOLUME_STEP)
"""

from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from decimal import ROUND_HALF_EVEN, Decimal, InvalidOperation
from pathlib import Path

import grpc

from clients.adapters.link import TLS_KEYS, config_credentials
from clients.tls import TlsFileError
from fastpath.codes import PRICE_SCALE, QTY_SCALE
from fastpath.fixedpoint import FixedPointError, from_fixed, to_fixed

DEFAULT_LISTEN = "127.0.0.1:5757"
DEFAULT_TARGET = "127.0.0.1:50051"
DEFAULT_TOKEN_ENV = "PRETRADE_TOKEN"
DEFAULT_DECISION_TIMEOUT_MS = 2000
DEFAULT_BATCH_MAX_DELAY_MS = 0.5
#: The bridge's execution reports under the data directory (``--data-dir``) when
#: ``bridge.state_file`` is not set.
STATE_FILE_IN_DATA_DIR = Path("mt5") / "reports.sqlite"
#: Decimals MT5 volumes are read to before the volume_step check (MT5 steps are >= 1e-8).
VOLUME_DIGITS = 8


class ConfigError(ValueError):
    """The bridge configuration is invalid (one readable line)."""


class ConversionError(ValueError):
    """An MT5 value cannot be converted exactly (the request is refused, fail closed)."""


def _decimal(value: object, what: str) -> Decimal:
    """An MT5 number as a Decimal: floats through their shortest repr, ints and strings as is."""
    if isinstance(value, bool):
        raise ConversionError(f"{what}: not a number: {value!r}")
    try:
        if isinstance(value, float):
            result = Decimal(repr(value))
        elif isinstance(value, int | str | Decimal):
            result = Decimal(value)
        else:
            raise ConversionError(f"{what}: not a number: {value!r}")
    except InvalidOperation:
        raise ConversionError(f"{what}: not a number: {value!r}") from None
    if not result.is_finite():
        raise ConversionError(f"{what}: not finite: {value!r}")
    return result


@dataclass(frozen=True)
class SymbolSpec:
    name: str
    gateway_symbol: str
    digits: int
    contract_size: Decimal
    volume_step: Decimal

    def price_nanos(self, price: object) -> int:
        """An MT5 price (double) as nanos, quantized to ``digits`` (half-even, like
        NormalizeDouble)."""
        value = _decimal(price, "price").quantize(Decimal(1).scaleb(-self.digits), ROUND_HALF_EVEN)
        if value <= 0:
            raise ConversionError(f"price: must be > 0, got {value}")
        try:
            return to_fixed(value, PRICE_SCALE)
        except FixedPointError as exc:
            raise ConversionError(f"price: {exc}") from None

    def quantity_nanos(self, lots: object) -> int:
        """MT5 lots (double) as quantity nanos. The lots' shortest repr is quantized to
        ``VOLUME_DIGITS`` decimals (only binary noise such as 0.30000000000000004 goes), must
        then be a whole number of ``volume_step``s (else refused, never rounded to a step),
        and is multiplied by ``contract_size``."""
        value = _decimal(lots, "volume").quantize(Decimal(1).scaleb(-VOLUME_DIGITS), ROUND_HALF_EVEN)
        if value <= 0:
            raise ConversionError(f"volume: must be > 0 lots, got {value}")
        if value % self.volume_step != 0:
            raise ConversionError(f"volume: {value} lots is not a multiple of volume_step {self.volume_step}")
        try:
            return to_fixed(value * self.contract_size, QTY_SCALE)
        except FixedPointError as exc:
            raise ConversionError(f"volume: {exc}") from None

    def lots_from_quantity_nanos(self, nanos: int) -> Decimal:
        return (from_fixed(nanos, QTY_SCALE) / self.contract_size).normalize()


@dataclass(frozen=True)
class BridgeConfig:
    listen: str = DEFAULT_LISTEN
    target: str = DEFAULT_TARGET
    token: str | None = None
    decision_timeout_s: float = DEFAULT_DECISION_TIMEOUT_MS / 1000
    batch_max_delay_s: float = DEFAULT_BATCH_MAX_DELAY_MS / 1000
    symbols: dict[str, SymbolSpec] = field(default_factory=dict)
    #: the execution reports owed to the gateway (SQLite, clients/adapters/reports.py); None: in memory
    state_path: Path | None = None
    #: TLS to the gateway (bridge.tls_* of the file, or the --tls-* flags); None: plaintext
    credentials: grpc.ChannelCredentials | None = None

    @property
    def host_port(self) -> tuple[str, int]:
        host, _, port = self.listen.rpartition(":")
        return host or "127.0.0.1", int(port)


def _spec(name: str, table: dict) -> SymbolSpec:
    where = f"symbols.{name}"
    unknown = set(table) - {"gateway_symbol", "digits", "contract_size", "volume_step"}
    if unknown:
        raise ConfigError(f"{where}: unknown keys {sorted(unknown)}")
    digits = table.get("digits")
    if not isinstance(digits, int) or isinstance(digits, bool) or not 0 <= digits <= 9:
        raise ConfigError(f"{where}.digits: an integer 0..9 is required, got {digits!r}")
    try:
        contract_size = _decimal(table.get("contract_size", 1), f"{where}.contract_size")
        volume_step = _decimal(table.get("volume_step", "0.01"), f"{where}.volume_step")
    except ConversionError as exc:
        raise ConfigError(str(exc)) from None
    if isinstance(table.get("volume_step"), float) or isinstance(table.get("contract_size"), float):
        raise ConfigError(f"{where}: write contract_size and volume_step as strings or integers")
    if contract_size <= 0 or volume_step <= 0:
        raise ConfigError(f"{where}: contract_size and volume_step must be > 0")
    return SymbolSpec(
        name=name,
        gateway_symbol=str(table.get("gateway_symbol", name)),
        digits=digits,
        contract_size=contract_size,
        volume_step=volume_step,
    )


def parse_config(document: dict, *, base_dir: str | Path | None = None,
                 data_dir: str | Path | None = None) -> BridgeConfig:
    """The bridge configuration of a TOML document. The reports' state file is
    ``bridge.state_file`` (relative to ``base_dir``, the configuration file's directory), else
    ``<data_dir>/mt5/reports.sqlite``, else (no data_dir) in memory only."""
    bridge = document.get("bridge", {})
    unknown = set(bridge) - {
        "listen", "target", "token", "token_env", "decision_timeout_ms", "batch_max_delay_ms", "state_file",
        *TLS_KEYS,
    }
    if unknown:
        raise ConfigError(f"bridge: unknown keys {sorted(unknown)}")
    token = bridge.get("token") or os.environ.get(bridge.get("token_env", DEFAULT_TOKEN_ENV))
    symbols = {name: _spec(name, table) for name, table in document.get("symbols", {}).items()}
    if not symbols:
        raise ConfigError("symbols: declare at least one [symbols.NAME] table")
    timeout_ms = bridge.get("decision_timeout_ms", DEFAULT_DECISION_TIMEOUT_MS)
    if not isinstance(timeout_ms, int | float) or timeout_ms <= 0:
        raise ConfigError("bridge.decision_timeout_ms: must be > 0")
    state_file = bridge.get("state_file", "")
    if not isinstance(state_file, str):
        raise ConfigError("bridge.state_file: a path (string) is required")
    if state_file:
        state_path = Path(state_file)
        if not state_path.is_absolute() and base_dir is not None:
            state_path = Path(base_dir) / state_path
    else:
        state_path = Path(data_dir) / STATE_FILE_IN_DATA_DIR if data_dir is not None else None
    try:
        credentials = config_credentials(bridge, "bridge", Path(base_dir) if base_dir is not None else None)
    except TlsFileError as exc:
        raise ConfigError(str(exc)) from None
    return BridgeConfig(
        listen=str(bridge.get("listen", DEFAULT_LISTEN)),
        target=str(bridge.get("target", DEFAULT_TARGET)),
        token=token,
        decision_timeout_s=timeout_ms / 1000,
        batch_max_delay_s=bridge.get("batch_max_delay_ms", DEFAULT_BATCH_MAX_DELAY_MS) / 1000,
        symbols=symbols,
        state_path=state_path,
        credentials=credentials,
    )


def load_config(path: str | Path, data_dir: str | Path | None = None) -> BridgeConfig:
    try:
        with open(path, "rb") as handle:
            document = tomllib.load(handle)
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise ConfigError(f"{path}: {exc}") from None
    return parse_config(document, base_dir=Path(path).parent, data_dir=data_dir)

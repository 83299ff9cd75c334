"""MetaTrader 5 bridge: the terminal's Expert Advisor (clients/mt5/) asks this asyncio
server for a decision before each OrderSend and reports its deals; the bridge turns lots
and MT5 double prices into exact fixed-point orders and checks them through StreamOrders.
Execution reports are kept in a state file and delivered by the bridge until the gateway
answers. Wire protocol v2 (and v1): docs/adapters.md."""

from clients.adapters.mt5.bridge import PROTOCOL_VERSION, SUPPORTED_VERSIONS, Mt5Bridge
from clients.adapters.mt5.config import BridgeConfig, ConfigError, SymbolSpec, load_config, parse_config

__all__ = [
    "PROTOCOL_VERSION", "SUPPORTED_VERSIONS", "BridgeConfig", "ConfigError", "Mt5Bridge", "SymbolSpec",
    "load_config", "parse_config",
]

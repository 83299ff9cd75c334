"""The adapters as companions of ``pretrade up`` (gateway/cli.py): ``pretrade up
--fix-config adapter.toml --mt5-config bridge.toml`` runs the FIX adapter and/or the MT5
bridge in the gateway's process, started once the gateway is ready and stopped before it.

A companion talks to *this* gateway: the ``target`` of its file is replaced by the
gateway's own address, in plaintext (the port, or the companion socket when the port has
TLS), so the file's TLS keys are checked but not used. Its token is, first found: ``--token``; the file's (``token`` or
the variable named by ``token_env``, default ``$PRETRADE_TOKEN``); the demo ``trader``
token when ``up`` made demo tokens. The FIX order book is ``fix.state_file``, else
``<data dir>/fix/orders.sqlite``; the MT5 bridge's execution reports are ``bridge.state_file``,
else ``<data dir>/mt5/reports.sqlite``.

The configuration files are read (and checked) before the gateway starts, so that a bad
file is a one-line error and nothing runs.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from pathlib import Path
from typing import Any


class AdapterConfigError(ValueError):
    """An adapter of ``pretrade up`` cannot be configured (one readable line)."""


#: ``make(target)`` → an object with ``async start()`` / ``async stop()``.
CompanionFactory = Callable[[str], Any]


def fix_companion(config_path: str, *, data_dir: str | Path | None, token: str | None,
                  default_token: str | None) -> CompanionFactory:
    try:
        from clients.adapters.fix.adapter import FixAdapter
    except ImportError:
        raise AdapterConfigError(
            "--fix-config: the quickfix package is missing: pip install 'pretrade[fix]'"
        ) from None
    from clients.adapters.fix.config import FixConfigError, load_fix_config

    try:
        config = load_fix_config(config_path, data_dir)
    except FixConfigError as exc:
        raise AdapterConfigError(f"--fix-config: {exc}") from None
    for settings in (config.acceptor_settings, config.initiator_settings):
        if not settings.is_file():
            raise AdapterConfigError(f"--fix-config: {settings}: no such QuickFIX settings file")
    token = token or config.token or default_token
    if not token:
        raise AdapterConfigError(
            f"--fix-config: no token for the FIX adapter: set gateway.token in {config_path}, --token or $PRETRADE_TOKEN"
        )

    def make(target: str) -> FixAdapter:
        return FixAdapter(dataclasses.replace(config, target=target, token=token, credentials=None))

    return make


def mt5_companion(config_path: str, *, token: str | None, default_token: str | None,
                  data_dir: str | Path | None = None) -> CompanionFactory:
    from clients.adapters.mt5.bridge import Mt5Bridge
    from clients.adapters.mt5.config import ConfigError, load_config

    try:
        config = load_config(config_path, data_dir)
    except ConfigError as exc:
        raise AdapterConfigError(f"--mt5-config: {exc}") from None
    token = token or config.token or default_token
    if not token:
        raise AdapterConfigError(
            f"--mt5-config: no token for the MT5 bridge: set bridge.token in {config_path}, --token or $PRETRADE_TOKEN"
        )

    def make(target: str) -> Mt5Bridge:
        return Mt5Bridge(dataclasses.replace(config, target=target, token=token, credentials=None))

    return make


def adapter_companions(*, fix_config: str | None, mt5_config: str | None, data_dir: str | Path | None,
                       token: str | None, default_token: str | None) -> list[CompanionFactory]:
    """The companion factories of the adapters configured (FIX first, then MT5)."""
    makers = []
    if fix_config:
        makers.append(fix_companion(fix_config, data_dir=data_dir, token=token, default_token=default_token))
    if mt5_config:
        makers.append(mt5_companion(mt5_config, token=token, default_token=default_token, data_dir=data_dir))
    return makers

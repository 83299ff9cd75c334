"""The FIX adapter's own configuration (TOML) naming the two QuickFIX settings files.

    [gateway]
    target = "127.0.0.1:50051"
    token_env = "PRETRADE_TOKEN"      # or token = "..."
    decision_timeout_ms = 2000
    tls_ca = "ca.pem"                 # TLS to the gateway (relative to this file); with
    tls_client_cert = "client.pem"    # a client certificate and key: mutual TLS. The
    tls_client_key = "client-key.pem" # --tls-* flags, when given, replace these three

    [fix]
    acceptor = "acceptor.cfg"         # QuickFIX settings of the client sessions (relative to this file)
    initiator = "initiator.cfg"       # QuickFIX settings of the venue session (its first session)
    default_account = ""              # Account(1) for orders that carry none
    log_dir = ""                      # QuickFIX message logs; default: FileLogPath of the settings
    state_file = ""                   # the adapter's order book (SQLite); default: <data dir>/fix/orders.sqlite
"""

from __future__ import annotations

import os
import tomllib
from pathlib import Path


class FixConfigError(ValueError):
    pass


#: The order book's file under the data directory (``--data-dir``) when ``fix.state_file`` is not set.
STATE_FILE_IN_DATA_DIR = Path("fix") / "orders.sqlite"


def load_fix_config(path: str | Path, data_dir: str | Path | None = None):
    """The adapter configuration of ``path``. The order book is ``fix.state_file``
    (relative to the file), else ``<data_dir>/fix/orders.sqlite``, else (no data_dir) in
    memory only."""
    from clients.adapters.fix.adapter import FixAdapterConfig
    from clients.adapters.link import config_credentials
    from clients.tls import TlsFileError

    path = Path(path)
    try:
        document = tomllib.loads(path.read_text())
    except (OSError, tomllib.TOMLDecodeError) as exc:
        raise FixConfigError(f"{path}: {exc}") from None
    gateway = document.get("gateway", {})
    section = document.get("fix", {})
    for key in ("acceptor", "initiator"):
        if not section.get(key):
            raise FixConfigError(f"{path}: fix.{key}: a QuickFIX settings file is required")

    def resolve(name: str) -> Path:
        candidate = Path(name)
        return candidate if candidate.is_absolute() else path.parent / candidate

    try:
        credentials = config_credentials(gateway, "gateway", path.parent)
    except TlsFileError as exc:
        raise FixConfigError(f"{path}: {exc}") from None
    return FixAdapterConfig(
        acceptor_settings=resolve(section["acceptor"]),
        initiator_settings=resolve(section["initiator"]),
        target=gateway.get("target", "127.0.0.1:50051"),
        token=gateway.get("token") or os.environ.get(gateway.get("token_env", "PRETRADE_TOKEN")),
        decision_timeout_s=gateway.get("decision_timeout_ms", 2000) / 1000,
        default_account=section.get("default_account", ""),
        log_dir=resolve(section["log_dir"]) if section.get("log_dir") else None,
        state_path=(
            resolve(section["state_file"]) if section.get("state_file")
            else Path(data_dir) / STATE_FILE_IN_DATA_DIR if data_dir is not None else None
        ),
        credentials=credentials,
    )

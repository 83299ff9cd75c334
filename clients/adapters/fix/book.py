"""The FIX adapter's order book on disk (SQLite): which client session owns each order the
venue works (ClOrdID → session, account, symbol, the order's fields, done / replaced), the
cancels and replaces in flight (their ClOrdID → the order's, and who asked), and the
executions not yet acknowledged by the gateway.

After an adapter restart the venue's execution reports for orders sent before it are still
relayed to the right client session and reported to the gateway, a cancel or replace of
such an order still works, and executions the gateway had not acknowledged are reported
again (execution ids make that idempotent: a repeat is a DUPLICATE). The ``reports`` table and
the worker that delivers it are shared with the MT5 bridge: :mod:`clients.adapters.reports`.

Every change is written (and committed) *before* the message it concerns is sent: an order
is in the book before it goes to the venue. WAL journal with ``synchronous=NORMAL``: a
process crash loses nothing; a power loss can lose the last transactions. The file is
opened with an exclusive lock: a second adapter on the same file fails at start.
Finished orders are kept ``retention_s`` (a late report or a repeated ClOrdID is still
recognised), then dropped at the next start.
"""

from __future__ import annotations

import json
import sqlite3
import time
from dataclasses import dataclass
from pathlib import Path

import quickfix as fix

from clients.adapters.reports import REPORTS_SCHEMA, ReportStore, open_state_db

#: Finished orders stay in the book this long (seconds) after their last change.
DEFAULT_RETENTION_S = 7 * 24 * 3600

_SCHEMA = """
CREATE TABLE IF NOT EXISTS orders (
    cl_ord_id TEXT PRIMARY KEY,        -- the venue's ClOrdID of the order (its current one)
    session TEXT NOT NULL,             -- the owning client session (JSON)
    client_order_id TEXT NOT NULL,     -- the gateway's client_order_id
    account TEXT NOT NULL,
    symbol TEXT NOT NULL,
    fields TEXT NOT NULL,              -- the order's FIX fields (JSON, tag -> value)
    done INTEGER NOT NULL DEFAULT 0,
    replaced_by TEXT,
    updated_ns INTEGER NOT NULL
);
CREATE TABLE IF NOT EXISTS cancels (
    cl_ord_id TEXT PRIMARY KEY,        -- ClOrdID of a cancel / replace sent to the venue
    target TEXT NOT NULL,              -- ClOrdID of the order it cancels / replaces
    asker TEXT,                        -- the client session that asked (JSON); NULL: the kill switch
    updated_ns INTEGER NOT NULL
);
""" + REPORTS_SCHEMA  # executions not acknowledged by the gateway yet (clients/adapters/reports.py)


class OrderBookError(RuntimeError):
    pass


@dataclass
class WorkingOrder:
    """An order the gateway accepted and the venue works (key: its current ClOrdID)."""

    session: fix.SessionID
    client_order_id: str  # the ClOrdID the gateway knows the order by
    account: str
    symbol: str
    fields: dict[int, str]
    done: bool = False
    replaced_by: str | None = None


def session_to_text(session: fix.SessionID | None) -> str | None:
    if session is None:
        return None
    return json.dumps([
        session.getBeginString().getValue(), session.getSenderCompID().getValue(),
        session.getTargetCompID().getValue(), session.getSessionQualifier(),
    ])


def session_from_text(text: str | None) -> fix.SessionID | None:
    if text is None:
        return None
    begin, sender, target, qualifier = json.loads(text)
    return fix.SessionID(begin, sender, target, qualifier)


class OrderBook:
    """``OrderBook(path)`` (None: in memory only); ``load()`` the orders, cancels and
    unacknowledged executions; ``save_order`` / ``save_cancel`` / ``add_report`` /
    ``remove_report`` write through."""

    def __init__(self, path: Path | None, retention_s: float = DEFAULT_RETENTION_S) -> None:
        self.path = path
        self.retention_s = retention_s
        try:
            self._db = open_state_db(path, _SCHEMA)  # locked exclusively
        except sqlite3.OperationalError as exc:
            raise OrderBookError(f"{path}: cannot open the FIX order book ({exc}); is another adapter using it?") from None
        #: the executions not acknowledged by the gateway (the adapter's ExecutionReporter works on it)
        self.reports = ReportStore(self._db)

    def load(self) -> tuple[dict[str, WorkingOrder], dict[str, tuple[str, fix.SessionID | None]], list[bytes]]:
        horizon = time.time_ns() - int(self.retention_s * 1e9)
        with self._db:
            self._db.execute("DELETE FROM orders WHERE done = 1 AND updated_ns < ?", (horizon,))
            self._db.execute("DELETE FROM cancels WHERE updated_ns < ? AND target NOT IN "
                             "(SELECT cl_ord_id FROM orders WHERE done = 0)", (horizon,))
        orders = {
            cl_ord_id: WorkingOrder(
                session_from_text(session), client_order_id, account, symbol,
                {int(tag): value for tag, value in json.loads(fields).items()}, bool(done), replaced_by,
            )
            for cl_ord_id, session, client_order_id, account, symbol, fields, done, replaced_by in self._db.execute(
                "SELECT cl_ord_id, session, client_order_id, account, symbol, fields, done, replaced_by FROM orders"
            )
        }
        cancels = {
            cl_ord_id: (target, session_from_text(asker))
            for cl_ord_id, target, asker in self._db.execute("SELECT cl_ord_id, target, asker FROM cancels")
        }
        return orders, cancels, self.reports.pending()

    def save_order(self, cl_ord_id: str, order: WorkingOrder) -> None:
        self._db.execute(
            "INSERT OR REPLACE INTO orders VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (cl_ord_id, session_to_text(order.session), order.client_order_id, order.account, order.symbol,
             json.dumps({str(tag): value for tag, value in order.fields.items()}), int(order.done),
             order.replaced_by, time.time_ns()),
        )

    def save_cancel(self, cl_ord_id: str, target: str, asker: fix.SessionID | None) -> None:
        self._db.execute("INSERT OR REPLACE INTO cancels VALUES (?, ?, ?, ?)",
                         (cl_ord_id, target, session_to_text(asker), time.time_ns()))

    def add_report(self, execution_id: str, execution: bytes) -> None:
        self.reports.add(execution_id, execution)

    def unreported(self) -> list[str]:
        """Execution ids not acknowledged by the gateway yet."""
        return self.reports.pending_ids()

    def remove_report(self, execution_id: str) -> None:
        self.reports.remove(execution_id)

    def close(self) -> None:
        self._db.close()

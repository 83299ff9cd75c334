"""The FIX adapter's order book on disk (clients/adapters/fix/book.py): what a restarted
adapter reads back, the exclusive lock, and the retention of finished orders."""

from __future__ import annotations

import time

import pytest
import quickfix as fix

from clients.adapters.fix.book import OrderBook, OrderBookError, WorkingOrder

pytestmark = pytest.mark.timeout(30)


def session(target: str = "CLIENT1") -> fix.SessionID:
    return fix.SessionID("FIX.4.4", "PRETRADE", target)


def test_orders_cancels_and_unreported_executions_survive_a_reopen(tmp_path):
    path = tmp_path / "fix" / "orders.sqlite"
    book = OrderBook(path)
    book.save_order("A1", WorkingOrder(session(), "A1", "ACC1", "AAPL", {11: "A1", 38: "10", 44: "100.01"}))
    book.save_order("A2", WorkingOrder(session("CLIENT2"), "A2", "ACC2", "MSFT", {11: "A2"}, done=True,
                                       replaced_by="A3"))
    book.save_cancel("A1-cxl", "A1", session())
    book.save_cancel("KILL-1", "A1", None)
    book.add_report("X1", b"one")
    book.add_report("X2", b"two")
    book.remove_report("X1")
    book.close()

    reopened = OrderBook(path)
    orders, cancels, reports = reopened.load()
    reopened.close()
    assert set(orders) == {"A1", "A2"}
    a1, a2 = orders["A1"], orders["A2"]
    assert a1.session.toString() == "FIX.4.4:PRETRADE->CLIENT1"
    assert (a1.client_order_id, a1.account, a1.symbol, a1.fields, a1.done, a1.replaced_by) == (
        "A1", "ACC1", "AAPL", {11: "A1", 38: "10", 44: "100.01"}, False, None)
    assert (a2.session.toString(), a2.done, a2.replaced_by) == ("FIX.4.4:PRETRADE->CLIENT2", True, "A3")
    assert cancels["A1-cxl"][0] == "A1" and cancels["A1-cxl"][1].toString() == session().toString()
    assert cancels["KILL-1"] == ("A1", None)
    assert reports == [b"two"]


def test_a_second_adapter_on_the_same_book_is_refused(tmp_path):
    path = tmp_path / "orders.sqlite"
    first = OrderBook(path)
    try:
        with pytest.raises(OrderBookError, match="another adapter"):
            OrderBook(path)
    finally:
        first.close()
    OrderBook(path).close()  # free again once the first is closed


def test_finished_orders_are_dropped_after_the_retention(tmp_path):
    path = tmp_path / "orders.sqlite"
    book = OrderBook(path)
    book.save_order("OLD", WorkingOrder(session(), "OLD", "A", "S", {}, done=True))
    book.save_order("WORKING", WorkingOrder(session(), "WORKING", "A", "S", {}))
    book.save_cancel("OLD-cxl", "OLD", session())
    book.close()
    time.sleep(0.01)
    book = OrderBook(path, retention_s=0.001)
    orders, cancels, _ = book.load()
    book.close()
    assert set(orders) == {"WORKING"} and cancels == {}


def test_without_a_path_the_book_is_in_memory():
    book = OrderBook(None)
    book.save_order("M1", WorkingOrder(session(), "M1", "A", "S", {}))
    assert set(book.load()[0]) == {"M1"}
    book.close()

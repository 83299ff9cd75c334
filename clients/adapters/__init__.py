"""Protocol adapters in front of the gateway: ``mt5`` (a bridge for MetaTrader 5 terminals,
line-delimited JSON over TCP) and ``fix`` (FIX 4.4 on the QuickFIX engine, optional extra
``pretrade[fix]``). Both check every order through ``StreamOrders`` (coalesced by
:class:`clients.OrderBatcher`) and report venue executions with ``ReportExecutions``.
See docs/adapters.md."""

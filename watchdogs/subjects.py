"""NATS subjects the watchdogs read and write (documented in docs/watchdogs.md).

=============================================  ==============================  =====================
subject                                        payload                         written by
=============================================  ==============================  =====================
``pretrade.v1.decisions.<gateway_id>``         ``pretrade.v1.Decision``        gateway (JetStream)
``pretrade.v1.events.<gateway_id>``            ``pretrade.v1.GatewayEvent``    gateway (JetStream)
``pretrade.v1.marketdata.ref.<symbol>``        ``pretrade.v1.ReferencePrice``  market data feed
``pretrade.v1.marketdata.trade.<symbol>``      ``pretrade.v1.Trade``           market data feed
``pretrade.v1.news.count.<topic>``             ``pretrade.v1.NewsCount``       news feed
``pretrade.v1.metrics.strategy.<name>``        ``pretrade.v1.StrategyMetric``  user's systems
``pretrade.v1.health.<service>``               ``pretrade.v1.ServiceHealth``   health pollers
``pretrade.v1.alerts.<watchdog>``              ``pretrade.v1.Finding``         watchdog worker
``pretrade.v1.watchdogs.heartbeat.<worker>``   ``pretrade.v1.WatchdogHeartbeat``  watchdog worker
=============================================  ==============================  =====================

The decisions and gateway events are read from their JetStream streams
(:data:`JETSTREAM_INPUTS`); every other input is core NATS only.
"""

from __future__ import annotations

from gateway.subjects import (
    DECISIONS_STREAM,
    DECISIONS_SUBJECT_PREFIX,
    EVENTS_STREAM,
    EVENTS_SUBJECT_PREFIX,
    MSG_ID_HEADER,  # noqa: F401 (the dedup id of a JetStream input)
    REFERENCE_PRICE_SUBJECT_PREFIX,
    SUBJECT_ROOT,
    reference_price_subject,  # noqa: F401 (re-exported: one module for every watchdog subject)
)

TRADE_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.marketdata.trade"
NEWS_COUNT_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.news.count"
STRATEGY_METRIC_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.metrics.strategy"
SERVICE_HEALTH_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.health"
ALERTS_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.alerts"
HEARTBEAT_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.watchdogs.heartbeat"

DECISIONS_WILDCARD = f"{DECISIONS_SUBJECT_PREFIX}.>"
EVENTS_WILDCARD = f"{EVENTS_SUBJECT_PREFIX}.>"
REFERENCE_PRICE_WILDCARD = f"{REFERENCE_PRICE_SUBJECT_PREFIX}.>"
TRADE_WILDCARD = f"{TRADE_SUBJECT_PREFIX}.>"
NEWS_COUNT_WILDCARD = f"{NEWS_COUNT_SUBJECT_PREFIX}.>"
STRATEGY_METRIC_WILDCARD = f"{STRATEGY_METRIC_SUBJECT_PREFIX}.>"
SERVICE_HEALTH_WILDCARD = f"{SERVICE_HEALTH_SUBJECT_PREFIX}.>"
ALERTS_WILDCARD = f"{ALERTS_SUBJECT_PREFIX}.>"

#: Input subjects stored in a JetStream stream: subject filter -> stream name. The worker
#: reads these through a durable consumer per stream (see watchdogs/worker.py), so nothing
#: published while it is disconnected is missed.
JETSTREAM_INPUTS: dict[str, str] = {
    DECISIONS_WILDCARD: DECISIONS_STREAM,
    EVENTS_WILDCARD: EVENTS_STREAM,
}

#: Characters a JetStream consumer name may not contain.
_FORBIDDEN_IN_CONSUMER = frozenset(" \t\r\n*>./\\")


def consumer_name(worker_id: str) -> str:
    """``pretrade-watchdogs-<worker_id>``: the worker's durable consumer name (the same in
    each stream it reads); characters a consumer name may not hold become '_'."""
    cleaned = "".join("_" if char in _FORBIDDEN_IN_CONSUMER or not char.isprintable() else char
                      for char in worker_id)
    return f"pretrade-watchdogs-{cleaned or '_'}"


def _token(text: str) -> str:
    """A name as subject tokens: dots stay (extra tokens), characters NATS forbids become '_'."""
    cleaned = "".join("_" if char in " \t\r\n*>" else char for char in text)
    return ".".join(part or "_" for part in cleaned.split(".")) or "_"


def trade_subject(symbol: str) -> str:
    return f"{TRADE_SUBJECT_PREFIX}.{_token(symbol)}"


def news_count_subject(topic: str) -> str:
    return f"{NEWS_COUNT_SUBJECT_PREFIX}.{_token(topic)}"


def strategy_metric_subject(name: str) -> str:
    """``pretrade.v1.metrics.strategy.<name>`` (``firm`` for FIRM metrics)."""
    return f"{STRATEGY_METRIC_SUBJECT_PREFIX}.{_token(name or 'firm')}"


def service_health_subject(service: str) -> str:
    return f"{SERVICE_HEALTH_SUBJECT_PREFIX}.{_token(service)}"


def alerts_subject(watchdog: str) -> str:
    return f"{ALERTS_SUBJECT_PREFIX}.{_token(watchdog)}"


def heartbeat_subject(worker_id: str) -> str:
    return f"{HEARTBEAT_SUBJECT_PREFIX}.{_token(worker_id)}"


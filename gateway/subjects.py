"""Every NATS subject, stream and header name the gateway uses, in one place.

Publishers, consumers, tests and docs/nats.md all take their names from here so that a
rename is one edit. Subjects are versioned (``pretrade.v1``) like the protobuf package of
their payloads: a breaking payload change gets a new subject tree, never a silent change.

========================================  ==========================  ======================
subject                                   payload                     stream
========================================  ==========================  ======================
``pretrade.v1.decisions.<gateway_id>``    ``pretrade.v1.Decision``    ``PRETRADE_DECISIONS``
``pretrade.v1.executions.<gateway_id>``   ``pretrade.v1.Execution``   ``PRETRADE_EXECUTIONS``
``pretrade.v1.events.<gateway_id>``       ``pretrade.v1.GatewayEvent``  ``PRETRADE_EVENTS``
``pretrade.v1.ledger.checkpoint``         checkpoint note (UTF-8)     (core NATS, none)
``pretrade.v1.marketdata.ref.<symbol>``   ``pretrade.v1.ReferencePrice``  (core NATS, none)
========================================  ==========================  ======================
"""

from __future__ import annotations

SUBJECT_ROOT = "pretrade.v1"

DECISIONS_STREAM = "PRETRADE_DECISIONS"
DECISIONS_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.decisions"
#: The subjects the decisions stream captures: every gateway's decisions.
DECISIONS_STREAM_SUBJECTS = (f"{DECISIONS_SUBJECT_PREFIX}.>",)

#: Gateway events for the ledger: execution reports applied, rules loaded.
EVENTS_STREAM = "PRETRADE_EVENTS"
EVENTS_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.events"
EVENTS_STREAM_SUBJECTS = (f"{EVENTS_SUBJECT_PREFIX}.>",)

#: Where the ledger publishes each new checkpoint (a signed note, UTF-8).
LEDGER_CHECKPOINT_SUBJECT = f"{SUBJECT_ROOT}.ledger.checkpoint"

REFERENCE_PRICE_SUBJECT_PREFIX = f"{SUBJECT_ROOT}.marketdata.ref"
#: What a gateway subscribes to: reference prices of every symbol.
REFERENCE_PRICE_SUBJECT_WILDCARD = f"{REFERENCE_PRICE_SUBJECT_PREFIX}.>"

#: JetStream's de-duplication header; the value is :func:`msg_id`.
MSG_ID_HEADER = "Nats-Msg-Id"

# Characters that would change a subject's meaning (wildcards, token separator) or that the
# NATS protocol does not allow in a subject at all.
_FORBIDDEN_IN_TOKEN = frozenset(" \t\r\n*>.")


class InvalidSubjectTokenError(ValueError):
    """A gateway id or symbol that cannot be put into a NATS subject as is."""


def validate_gateway_id(gateway_id: str) -> str:
    """Return ``gateway_id`` if it is one valid subject token, else raise
    :class:`InvalidSubjectTokenError`.

    A gateway id is exactly one token (no dots) so that ``decisions.<gateway_id>`` and the
    ``<gateway_id>:<sequence>`` message id are unambiguous.
    """
    if not gateway_id or any(char in _FORBIDDEN_IN_TOKEN for char in gateway_id) or ":" in gateway_id:
        raise InvalidSubjectTokenError(
            f"gateway id {gateway_id!r} must be non-empty without whitespace, '.', '*', '>' or ':'"
        )
    return gateway_id


def decisions_subject(gateway_id: str) -> str:
    """``pretrade.v1.decisions.<gateway_id>``: where one gateway publishes its decisions."""
    return f"{DECISIONS_SUBJECT_PREFIX}.{validate_gateway_id(gateway_id)}"


def events_subject(gateway_id: str) -> str:
    """``pretrade.v1.events.<gateway_id>``: where one gateway publishes its ledger events."""
    return f"{EVENTS_SUBJECT_PREFIX}.{validate_gateway_id(gateway_id)}"


def reference_price_subject(symbol: str) -> str:
    """``pretrade.v1.marketdata.ref.<symbol>``: where a reference price for ``symbol`` is sent.

    A symbol may contain dots (``BRK.B``); they become extra subject tokens, which is fine
    because the subject only routes: the symbol inside the ``ReferencePrice`` payload is the
    authoritative one. Whitespace, wildcards and empty tokens (leading, trailing or doubled
    dots) are rejected with :class:`InvalidSubjectTokenError`.
    """
    tokens = symbol.split(".")
    if not symbol or any(not token or any(char in _FORBIDDEN_IN_TOKEN for char in token) for token in tokens):
        raise InvalidSubjectTokenError(
            f"symbol {symbol!r} cannot be a subject suffix: empty token, whitespace, '*' or '>'"
        )
    return f"{REFERENCE_PRICE_SUBJECT_PREFIX}.{symbol}"


def msg_id(gateway_id: str, sequence: int) -> str:
    """``<gateway_id>:<sequence>``: the ``Nats-Msg-Id`` of a decision (and, in its own
    stream, of a gateway event).

    JetStream drops a message whose id it has seen within the stream's duplicate window, so
    re-publishing a decision (after a lost ack, a NATS outage or a gateway restart) stores it
    once. The gateway id is validated once by the publisher, not on this hot path.
    """
    return f"{gateway_id}:{sequence}"

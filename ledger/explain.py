"""ExplainOrder: everything the ledger holds about one order, and what it means.

For ``(account, client_order_id)`` the ``by_order`` index gives the trail: the decision(s)
and the execution reports, in event-time order. Each step carries its entry, and its inclusion
proof against the latest checkpoint (when the checkpoint covers it). Each decision also
gets its circumstances, all from the ledger:

* the rules version it was checked against, and the RulesLoaded entry holding that
  version's text (when the gateway recorded one);
* the trading states in force for the order's scopes (firm, account, strategy, symbol):
  for each scope, the latest state-changing halt event at or before the decision time;
  a state other than ACTIVE is reported;
* the limit overrides and throttles of the order's account or strategy in force then.

The ``summary`` lines say it in words: what was asked, the verdict, the rules version,
every failed check with its limit and observed value and rule path, the halts in force,
and what the venue then reported.
"""

from __future__ import annotations

import datetime
from decimal import Decimal

from ledger.entries import DecodedEntry, EntryKind, to_proto
from ledger.errors import NoCheckpointError, UnknownOrderError
from ledger.reader import LedgerReader
from pretrade.v1 import halts_pb2, ledger_pb2, trading_pb2, types_pb2

_NANOS_PER_UNIT = Decimal(10**9)
_STATE_EVENT_TYPES = frozenset((halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED, halts_pb2.HALT_EVENT_TYPE_KILL))
_NOT_IN_FORCE_STATES = frozenset((trading_pb2.TRADING_STATE_ACTIVE, trading_pb2.TRADING_STATE_UNSPECIFIED))


def explain_order(reader: LedgerReader, account: str, client_order_id: str) -> ledger_pb2.OrderExplanation:
    """The trail and explanation of one order; :class:`UnknownOrderError` if the ledger
    holds nothing about it."""
    indices = reader.indexes.order_entries(account, client_order_id)
    if not indices:
        raise UnknownOrderError(f"the ledger holds no entry for account {account!r}, client order id {client_order_id!r}")
    explanation = ledger_pb2.OrderExplanation(account=account, client_order_id=client_order_id)
    try:
        latest = reader.latest_checkpoint()
    except NoCheckpointError:
        latest = None
    if latest is not None:
        explanation.checkpoint.CopyFrom(reader.signed_checkpoint(latest))
    context = _ScopeHistory(reader)
    # Streams interleave at ingest, so ledger order is not causal order (a fill can be
    # ingested before its decision): the trail follows event time, then ledger index.
    trail = sorted(((reader.decoded(index), index) for index in indices), key=lambda pair: (pair[0].event_ns, pair[1]))
    for decoded, index in trail:
        step = explanation.trail.add()
        step.entry.CopyFrom(to_proto(index, decoded, reader.store.leaf_hash(index)))
        if latest is not None and index < latest.checkpoint.tree_size:
            proof, _ = reader.inclusion_proof(index, latest.checkpoint.tree_size)
            step.proof.CopyFrom(proof)
        if decoded.kind is EntryKind.DECISION:
            step.decision_context.CopyFrom(context.decision_context(decoded.message))
    explanation.summary.extend(summary_lines(explanation))
    return explanation


def trace_orders(reader: LedgerReader, trace_id: str) -> list[tuple[str, str]]:
    """The (account, client_order_id) of every decision carrying ``trace_id``, in ledger
    order, each once; :class:`UnknownOrderError` if there is none."""
    orders: dict[tuple[str, str], None] = {}
    for index in reader.indexes.trace_entries(trace_id):
        order = reader.decoded(index).message.order
        orders[(order.account, order.client_order_id)] = None
    if not orders:
        raise UnknownOrderError(f"the ledger holds no decision with trace id {trace_id!r}")
    return list(orders)


class _ScopeHistory:
    """Halt events and rules loads, read once per explanation."""

    def __init__(self, reader: LedgerReader) -> None:
        self._reader = reader
        self._scope_events: dict[tuple[int, str], list[tuple[int, DecodedEntry]]] = {}

    def _events(self, scope: int, name: str) -> list[tuple[int, DecodedEntry]]:
        key = (scope, name)
        if key not in self._scope_events:
            reader = self._reader
            self._scope_events[key] = [(index, reader.decoded(index)) for index in reader.indexes.scope_entries(scope, name)]
        return self._scope_events[key]

    def decision_context(self, decision: types_pb2.Decision) -> ledger_pb2.DecisionContext:
        context = ledger_pb2.DecisionContext()
        context.rules.CopyFrom(self._rules_reference(decision.rules_version))
        order, at_ns = decision.order, decision.decided_ns
        scopes = [(trading_pb2.SCOPE_FIRM, ""), (trading_pb2.SCOPE_ACCOUNT, order.account)]
        if order.strategy:
            scopes.append((trading_pb2.SCOPE_STRATEGY, order.strategy))
        scopes.append((trading_pb2.SCOPE_SYMBOL, order.symbol))
        for scope, name in scopes:
            halt = self._state_at(scope, name, at_ns)
            if halt is not None:
                context.halts_in_force.append(halt)
        seen_overrides: set[str] = set()
        for scope, name in scopes[1:]:
            for in_force in self._overrides_at(scope, name, order, at_ns):
                if in_force.override.override_id not in seen_overrides:
                    seen_overrides.add(in_force.override.override_id)
                    context.overrides_in_force.append(in_force)
        return context

    def _rules_reference(self, rules_version: str) -> ledger_pb2.RulesReference:
        reference = ledger_pb2.RulesReference(rules_version=rules_version)
        loads = self._reader.indexes.rules_entries(rules_version)
        if loads:
            loaded = self._reader.decoded(loads[0]).message.rules_loaded
            reference.recorded = True
            reference.loaded_entry_index = loads[0]
            reference.source = loaded.source
        return reference

    def _state_at(self, scope: int, name: str, at_ns: int) -> ledger_pb2.HaltInForce | None:
        """The latest recorded state of (scope, name) at ``at_ns``, if it is not ACTIVE."""
        latest = None
        for index, decoded in self._events(scope, name):
            event = decoded.message
            if event.type in _STATE_EVENT_TYPES and event.scope == scope and event.at_ns <= at_ns:
                if latest is None or event.at_ns >= latest[1].message.at_ns:
                    latest = (index, decoded)
        if latest is None or latest[1].message.state in _NOT_IN_FORCE_STATES:
            return None
        index, decoded = latest
        event = decoded.message
        return ledger_pb2.HaltInForce(
            scope=scope,
            name=name,
            state=event.state,
            reason=event.reason,
            set_by=event.requested_by or event.actor,
            approved_by=event.approved_by,
            set_ns=event.at_ns,
            entry_index=index,
        )

    def _overrides_at(self, scope: int, name: str, order: types_pb2.Order, at_ns: int) -> list[ledger_pb2.OverrideInForce]:
        activated: dict[str, ledger_pb2.OverrideInForce] = {}
        expired: set[str] = set()
        for index, decoded in self._events(scope, name):
            event = decoded.message
            override = event.override
            if event.at_ns > at_ns:
                continue
            if event.type == halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED:
                expired.add(override.override_id)
            elif (
                event.type == halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED
                and override.starts_ns <= at_ns < (override.expires_ns or at_ns + 1)
                and override.symbol in ("", order.symbol)
            ):
                activated[override.override_id] = ledger_pb2.OverrideInForce(override=override, entry_index=index)
        return [in_force for override_id, in_force in activated.items() if override_id not in expired]


# --- words ------------------------------------------------------------------------------------


def _time(ns: int) -> str:
    if ns <= 0:
        return "unknown time"
    moment = datetime.datetime.fromtimestamp(ns / 1e9, tz=datetime.UTC)
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


def _decimal(nanos: int) -> str:
    return format((Decimal(nanos) / _NANOS_PER_UNIT).normalize(), "f")


def _enum_name(enum_type, value: int, prefix: str) -> str:
    try:
        return enum_type.Name(value).removeprefix(prefix)
    except ValueError:
        return str(value)


def describe_order(order: types_pb2.Order) -> str:
    side = _enum_name(types_pb2.Side, order.side, "SIDE_")
    order_type = _enum_name(types_pb2.OrderType, order.order_type, "ORDER_TYPE_")
    text = f"{side} {_decimal(order.quantity_nanos)} {order.symbol} {order_type}"
    if order.order_type == types_pb2.ORDER_TYPE_LIMIT:
        text += f" @ {_decimal(order.price_nanos)}"
    if order.strategy:
        text += f" strategy {order.strategy}"
    if order.trace_id:
        text += f" trace {order.trace_id}"
    return text


def describe_failure(failure: types_pb2.CheckFailure) -> str:
    text = f"{failure.code}: limit {failure.limit}, observed {failure.observed}"
    if failure.detail:
        text += f" ({failure.detail})"
    if failure.rule_path:
        text += f" [{failure.rule_path}]"
    return text


def _describe_halt(halt: ledger_pb2.HaltInForce) -> str:
    scope = _enum_name(trading_pb2.Scope, halt.scope, "SCOPE_")
    state = _enum_name(trading_pb2.TradingState, halt.state, "TRADING_STATE_")
    text = f"{scope}{' ' + halt.name if halt.name else ''} {state} since {_time(halt.set_ns)}"
    if halt.set_by:
        text += f" by {halt.set_by}"
    if halt.approved_by:
        text += f", approved by {halt.approved_by}"
    if halt.reason:
        text += f' ("{halt.reason}")'
    return text + f" (entry {halt.entry_index})"


def _describe_override(in_force: ledger_pb2.OverrideInForce) -> str:
    override = in_force.override
    what = ", ".join(f"{key}={value}" for key, value in sorted(override.limits.items()))
    if override.throttle_factor:
        what = f"throttle x{override.throttle_factor}" + (f", {what}" if what else "")
    return f"override {override.override_id} ({what}) until {_time(override.expires_ns)} (entry {in_force.entry_index})"


def _decision_lines(step: ledger_pb2.TrailStep) -> list[str]:
    decision = step.entry.decision
    context = step.decision_context
    verdict = _enum_name(types_pb2.Verdict, decision.verdict, "VERDICT_")
    rules = context.rules
    rules_text = f"rules {rules.rules_version}"
    if rules.recorded:
        rules_text += f" (loaded from {rules.source}, entry {rules.loaded_entry_index})"
    else:
        rules_text += " (no RulesLoaded entry in the ledger)"
    lines = [
        f"asked: {describe_order(decision.order)} at {_time(decision.received_ns)}",
        f"entry {step.entry.index} {step.entry.event}: {verdict} by {decision.gateway_id} "
        f"(decision {decision.sequence}) at {_time(decision.decided_ns)} under {rules_text}",
    ]
    lines.extend(f"  failed {describe_failure(failure)}" for failure in decision.failures)
    if context.halts_in_force:
        lines.extend(f"  halt in force: {_describe_halt(halt)}" for halt in context.halts_in_force)
    else:
        lines.append("  halts in force: none recorded")
    lines.extend(f"  in force: {_describe_override(in_force)}" for in_force in context.overrides_in_force)
    return lines


def _event_line(step: ledger_pb2.TrailStep) -> str:
    entry = step.entry
    reported = entry.gateway_event.execution_reported
    execution = reported.execution
    execution_type = _enum_name(types_pb2.ExecutionType, execution.execution_type, "EXECUTION_TYPE_")
    status = _enum_name(types_pb2.ExecutionStatus, reported.status, "EXECUTION_STATUS_")
    text = f"entry {entry.index} {entry.event}: execution {execution.execution_id} {execution_type}"
    if execution.last_quantity_nanos:
        text += f" {_decimal(execution.last_quantity_nanos)} @ {_decimal(execution.last_price_nanos)}"
    return text + f" -> {status} at {_time(entry.event_ns)}"


def summary_lines(explanation: ledger_pb2.OrderExplanation) -> list[str]:
    """The explanation in words (see the module docstring)."""
    lines = [f"order {explanation.account}/{explanation.client_order_id}: {len(explanation.trail)} ledger entries"]
    for step in explanation.trail:
        if step.entry.kind == ledger_pb2.ENTRY_KIND_DECISION:
            lines.extend(_decision_lines(step))
        else:
            lines.append(_event_line(step))
    if explanation.HasField("checkpoint"):
        checkpoint = explanation.checkpoint
        proven = sum(1 for step in explanation.trail if step.HasField("proof"))
        if checkpoint.verifier_key:
            signed = "signature verified"
        elif "\n\n" in checkpoint.note:
            signed = "signed; no verifier key to check it"
        else:
            signed = "unsigned"
        lines.append(
            f"proofs: {proven} of {len(explanation.trail)} entries against checkpoint {checkpoint.origin} "
            f"size {checkpoint.tree_size} ({signed})"
        )
    else:
        lines.append("proofs: none yet (the ledger has no checkpoint)")
    return lines

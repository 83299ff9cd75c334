"""The halt commands of ``pretrade``: halt, resume, approve, halts, kill, override.

::

    pretrade halt --scope firm|account|strategy|symbol [--id X] --reason R [--reduce-only]
    pretrade resume --scope ... [--id X] --reason R [--to active|reducing]
    pretrade approve REQUEST_ID [--reject] [--reason R]
    pretrade halts [--watch] [--all] [--json]
    pretrade kill --reason R [--yes]          (asks to type HALT unless --yes)
    pretrade override --account A [--symbol S] | --strategy S
                      (--set KEY=VALUE ... | --throttle FACTOR) --minutes N --reason R

Each talks to ``HaltService`` on ``--target`` with ``--token`` (or ``$PRETRADE_TOKEN``), over
TLS with ``--tls-ca`` (and ``--tls-client-cert/--tls-client-key`` for mutual TLS).
:func:`register` adds them to the ``pretrade`` parser; call it from ``gateway.cli``'s
``build_parser`` (imported there lazily, like everything else, since this module imports
``gateway.cli``). Failures raise ``gateway.cli.CommandError``: one line, exit code 2.

A change (halt, kill, resume, approval) prints, after its own line, one line per live
gateway, with the revision it applied of the change's own (``--json``: ``revision``):
``gw-1 CONFIRMED rev 42 of 42``, ``gw-2 FAILED_CLOSED (rejecting every order, last applied
rev 40 of 42)`` or ``gw-3 UNCONFIRMED (last applied rev 40 of 42)``. An UNCONFIRMED gateway
is also a ``pretrade: warning:`` on stderr, as other warnings of ``pretrade`` are; the
exit code stays 0, because the change is written and stands.
"""

from __future__ import annotations

import argparse
import datetime
import json
import os
import sys

import grpc
from google.protobuf import json_format
from google.rpc import error_details_pb2, status_pb2

from fastpath.codes import Scope, TradingState
from gateway.cli import EXIT_OK, TOKEN_ENV_VAR, CommandError, add_client_tls_options, client_credentials
from gateway.config import DEFAULT_DATA_DIR, DEFAULT_LISTEN
from halts.model import scope_from_proto, scope_label, scope_to_proto, state_from_proto, state_to_proto
from pretrade.v1 import halts_pb2, halts_pb2_grpc

#: Seconds one call may take before the CLI gives up.
DEFAULT_CALL_TIMEOUT_S = 5.0
#: Default length of a limit override or throttle, minutes.
DEFAULT_OVERRIDE_MINUTES = 30
#: What the operator types to confirm the kill switch.
KILL_CONFIRMATION = "HALT"

_SCOPES = {"firm": "FIRM", "account": "ACCOUNT", "strategy": "STRATEGY", "symbol": "SYMBOL"}
_RESUME_STATES = {"active": "ACTIVE", "reducing": "REDUCING"}
_GRPC_STATUS_DETAILS_KEY = "grpc-status-details-bin"


def register(subparsers, common: argparse.ArgumentParser | None = None) -> None:
    """Add the halt subcommands to ``subparsers``; ``common`` is the parent parser holding
    the shared ``--data-dir --target --token --json`` (built here when not given)."""
    parents = [common if common is not None else shared_options()]

    halt = subparsers.add_parser("halt", parents=parents, help="halt (or reduce-only) a scope, at once")
    _scope_options(halt)
    halt.add_argument(
        "--reduce-only", action="store_true", help="REDUCING instead of HALTED: exits still pass"
    )
    halt.add_argument(
        "--resume-to", choices=sorted(_RESUME_STATES), default="active", help="what a plain resume returns to"
    )
    halt.set_defaults(handler=cmd_halt)

    resume = subparsers.add_parser(
        "resume", parents=parents, help="resume a scope (FIRM: needs a second operator)"
    )
    _scope_options(resume)
    resume.add_argument(
        "--to", choices=sorted(_RESUME_STATES), help="ACTIVE or REDUCING (default: the halt's choice)"
    )
    resume.set_defaults(handler=cmd_resume)

    approve = subparsers.add_parser(
        "approve", parents=parents, help="approve (or reject) another operator's request"
    )
    approve.add_argument("request_id", metavar="REQUEST_ID")
    approve.add_argument("--reject", action="store_true", help="reject instead (or withdraw your own)")
    approve.add_argument("--reason", default="", help="why (kept with the decision)")
    approve.set_defaults(handler=cmd_approve)

    halts = subparsers.add_parser("halts", parents=parents, help="list halts, pending requests and overrides")
    halts.add_argument("--watch", action="store_true", help="then print every event until Ctrl-C")
    halts.add_argument("--all", action="store_true", help="also resumed scopes and decided requests")
    halts.set_defaults(handler=cmd_halts)

    kill = subparsers.add_parser(
        "kill", parents=parents, help="kill switch: halt the firm and cancel all orders"
    )
    kill.add_argument("--reason", required=True)
    kill.add_argument("--yes", action="store_true", help=f"do not ask to type {KILL_CONFIRMATION}")
    kill.set_defaults(handler=cmd_kill)

    override = subparsers.add_parser(
        "override", parents=parents, help="temporary limit override (two-person) or throttle"
    )
    scope = override.add_mutually_exclusive_group(required=True)
    scope.add_argument("--account")
    scope.add_argument("--strategy", help="throttles only")
    override.add_argument("--symbol", help="with --account: the account's limits for this symbol")
    override.add_argument(
        "--set",
        dest="limits",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="a limit as in the rules file, e.g. credit_limit=500000 "
        "or 'order_rate_limit={orders=5,window_ms=1000}'",
    )
    override.add_argument("--throttle", metavar="FACTOR", help="scale order_rate_limit by FACTOR in (0, 1]")
    override.add_argument(
        "--minutes", type=float, default=DEFAULT_OVERRIDE_MINUTES, help="how long (default: %(default)s)"
    )
    override.add_argument("--reason", required=True)
    override.set_defaults(handler=cmd_override)


def shared_options() -> argparse.ArgumentParser:
    """The flags every ``pretrade`` command shares (as ``gateway.cli`` defines them)."""
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state directory (default: %(default)s)")
    common.add_argument(
        "--target", default=DEFAULT_LISTEN, help="gateway address to call (default: %(default)s)"
    )
    common.add_argument("--token", help=f"bearer token (default: ${TOKEN_ENV_VAR})")
    common.add_argument("--json", action="store_true", help="machine-readable output")
    add_client_tls_options(common)
    return common


def _scope_options(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--scope", required=True, choices=sorted(_SCOPES))
    parser.add_argument("--id", default="", help="account, strategy or symbol name (not for firm)")
    parser.add_argument("--reason", required=True)


# ------------------------------------------------------------------------------------------
# commands
# ------------------------------------------------------------------------------------------


def cmd_halt(args) -> int:
    request = halts_pb2.RequestHaltRequest(
        scope=_scope(args.scope),
        name=args.id,
        state=_state("REDUCING" if args.reduce_only else "HALTED"),
        reason=args.reason,
        resume_to=_state(_RESUME_STATES[args.resume_to]),
    )
    response = _call(args, "RequestHalt", request)
    lines = [f"{_describe_state(response.halt)} (was {_state_name(response.previous_state)})"]
    _print(args, response, lines + _describe_gateways(response))
    _warn_unconfirmed(response.gateways)
    return EXIT_OK


def cmd_resume(args) -> int:
    request = halts_pb2.RequestResumeRequest(
        scope=_scope(args.scope),
        name=args.id,
        reason=args.reason,
        state=_state(_RESUME_STATES[args.to]) if args.to else 0,
    )
    response = _call(args, "RequestResume", request)
    if response.HasField("pending"):
        lines = _describe_pending(response.pending)
    else:
        lines = [_describe_state(response.halt), *_describe_gateways(response)]
    _print(args, response, lines)
    _warn_unconfirmed(response.gateways)
    return EXIT_OK


def cmd_approve(args) -> int:
    request = halts_pb2.ApproveRequest(request_id=args.request_id, reject=args.reject, reason=args.reason)
    response = _call(args, "Approve", request)
    lines = [_describe_request(response.request)]
    if response.HasField("halt"):
        lines.append("  " + _describe_state(response.halt))
    if response.HasField("override"):
        lines.append("  " + _describe_override(response.override))
    if response.HasField("halt") or response.HasField("override"):
        lines += _describe_gateways(response)
    _print(args, response, lines)
    _warn_unconfirmed(response.gateways)
    return EXIT_OK


def cmd_halts(args) -> int:
    if not args.watch:
        response = _call(args, "ListHalts", halts_pb2.ListHaltsRequest(include_inactive=args.all))
        _print(args, response, _describe_snapshot(response))
        return EXIT_OK
    with _channel(args) as channel:
        stream = halts_pb2_grpc.HaltServiceStub(channel).WatchHalts(
            halts_pb2.WatchHaltsRequest(), metadata=_metadata(args)
        )
        try:
            for message in stream:
                if message.HasField("snapshot"):
                    _print(args, message.snapshot, _describe_snapshot(message.snapshot))
                else:
                    _print(args, message.event, [_describe_event(message.event)])
                sys.stdout.flush()
        except grpc.RpcError as exc:
            raise _failure("WatchHalts", exc) from None
    return EXIT_OK


def cmd_kill(args) -> int:
    if not args.yes:
        print(
            f"This halts the WHOLE FIRM on every gateway and sends CANCEL_ALL to every order stream.\n"
            f"Type {KILL_CONFIRMATION} to confirm: ",
            end="",
            flush=True,
        )
        try:
            answer = input()
        except EOFError:
            answer = ""
        if answer.strip() != KILL_CONFIRMATION:
            raise CommandError(
                f"not confirmed (typed {answer.strip()!r}, not {KILL_CONFIRMATION}): nothing was done"
            )
    request = halts_pb2.RequestHaltRequest(
        scope=_scope("firm"), state=_state("HALTED"), reason=args.reason, cancel_all=True
    )
    response = _call(args, "RequestHalt", request)
    summary = f"KILL SWITCH: {_describe_state(response.halt)}; CANCEL_ALL sent to every order stream"
    _print(args, response, [summary, *_describe_gateways(response)])
    _warn_unconfirmed(response.gateways)
    return EXIT_OK


def cmd_override(args) -> int:
    limits = {}
    for setting in args.limits:
        key, separator, value = setting.partition("=")
        if not separator or not key.strip():
            raise CommandError(f"--set {setting!r}: expected KEY=VALUE, e.g. credit_limit=500000")
        limits[key.strip()] = value.strip()
    if not limits and not args.throttle:
        raise CommandError("override needs --set KEY=VALUE (a limit) or --throttle FACTOR")
    request = halts_pb2.RequestOverrideRequest(
        account=args.account or "",
        symbol=args.symbol or "",
        strategy=args.strategy or "",
        limits=limits,
        throttle_factor=args.throttle or "",
        duration_s=round(args.minutes * 60),
        reason=args.reason,
    )
    response = _call(args, "RequestOverride", request)
    if response.HasField("pending"):
        lines = _describe_pending(response.pending)
    else:
        lines = [_describe_override(response.override)]
    _print(args, response, lines)
    return EXIT_OK


# ------------------------------------------------------------------------------------------
# calls
# ------------------------------------------------------------------------------------------


def _token(args) -> str:
    token = args.token or os.environ.get(TOKEN_ENV_VAR)
    if not token:
        raise CommandError(f"no token: pass --token or set {TOKEN_ENV_VAR} (an operator's token)")
    return token


def _metadata(args) -> tuple[tuple[str, str], ...]:
    return (("authorization", f"Bearer {_token(args)}"),)


def _channel(args) -> grpc.Channel:
    credentials = client_credentials(args)
    if credentials is not None:
        return grpc.secure_channel(args.target, credentials)
    return grpc.insecure_channel(args.target)


def _call(args, method: str, request):
    metadata = _metadata(args)
    with _channel(args) as channel:
        stub = halts_pb2_grpc.HaltServiceStub(channel)
        try:
            return getattr(stub, method)(request, metadata=metadata, timeout=DEFAULT_CALL_TIMEOUT_S)
        except grpc.RpcError as exc:
            raise _failure(method, exc) from None


def _failure(method: str, error: grpc.RpcError) -> CommandError:
    """One line: the status, the service's message, and any field violations."""
    code = error.code()
    message = f"{method}: {code.name if code else 'error'}: {error.details() or 'no details'}"
    for key, value in error.trailing_metadata() or ():
        if key != _GRPC_STATUS_DETAILS_KEY:
            continue
        for detail in status_pb2.Status.FromString(value).details:
            bad_request = error_details_pb2.BadRequest()
            if detail.Unpack(bad_request) and len(bad_request.field_violations) > 1:
                violations = "; ".join(f"{v.field}: {v.description}" for v in bad_request.field_violations)
                message += f" [{violations}]"
    return CommandError(" ".join(message.split()))


# ------------------------------------------------------------------------------------------
# output
# ------------------------------------------------------------------------------------------


def _print(args, message, lines: list[str]) -> None:
    if args.json:
        document = json_format.MessageToDict(message, preserving_proto_field_name=True)
        print(json.dumps(document, sort_keys=True))
    else:
        print("\n".join(lines))


def _scope(name: str) -> int:
    return scope_to_proto(Scope[_SCOPES[name]])


def _state(name: str) -> int:
    return state_to_proto(TradingState[name])


def _state_name(value: int) -> str:
    state = state_from_proto(value)
    return state.name if state is not None else "ACTIVE"


def _when(ns: int) -> str:
    return datetime.datetime.fromtimestamp(ns / 1e9).astimezone().strftime("%Y-%m-%d %H:%M:%S %Z")


def _scope_text(scope: int, name: str) -> str:
    kernel_scope = scope_from_proto(scope)
    return scope_label(kernel_scope, name) if kernel_scope is not None else "?"


def _describe_state(halt: halts_pb2.HaltState) -> str:
    who = halt.set_by + (f", approved by {halt.approved_by}" if halt.approved_by else "")
    scope = _scope_text(halt.scope, halt.name)
    text = f"{_state_name(halt.state):<8} {scope} since {_when(halt.set_ns)} by {who}: {halt.reason}"
    notes = []
    if halt.cancel_all:
        notes.append("kill switch")
    if halt.state != state_to_proto(TradingState.ACTIVE):
        resume_to = _state_name(halt.reset.resume_to)
        second = ", needs a second operator" if halt.reset.requires_approval else ""
        notes.append(f"resume -> {resume_to}{second}")
    return text + (f" [{'; '.join(notes)}]" if notes else "") + f" ({halt.request_id})"


def _describe_request(request: halts_pb2.ApprovalRequest) -> str:
    status = halts_pb2.ApprovalStatus.Name(request.status).removeprefix("APPROVAL_STATUS_")
    if request.kind == halts_pb2.APPROVAL_KIND_RESUME:
        what = f"resume {_scope_text(request.scope, request.name)} -> {_state_name(request.resume_to)}"
    else:
        what = "override " + _override_target(request.override) + " " + _override_settings(request.override)
    text = f"{status:<8} {request.request_id}: {what}, requested by {request.requested_by}: {request.reason}"
    if request.status == halts_pb2.APPROVAL_STATUS_PENDING:
        return text + f" (expires {_when(request.expires_ns)})"
    if request.decided_by:
        return text + f" ({status.lower()} by {request.decided_by})"
    return text


def _describe_pending(request: halts_pb2.ApprovalRequest) -> list[str]:
    return [_describe_request(request), f"  a second operator runs: pretrade approve {request.request_id}"]


def _override_target(override: halts_pb2.Override) -> str:
    if override.strategy:
        return f"STRATEGY {override.strategy}"
    return f"ACCOUNT {override.account}" + (f" SYMBOL {override.symbol}" if override.symbol else "")


def _override_settings(override: halts_pb2.Override) -> str:
    settings = [f"{key}={value}" for key, value in sorted(override.limits.items())]
    if override.throttle_factor:
        settings.append(f"order_rate_limit x {override.throttle_factor}")
    return " ".join(settings)


def _describe_override(override: halts_pb2.Override) -> str:
    kind = "THROTTLE" if override.kind == halts_pb2.OVERRIDE_KIND_THROTTLE else "OVERRIDE"
    who = override.requested_by + (f", approved by {override.approved_by}" if override.approved_by else "")
    return (
        f"{kind:<8} {override.override_id}: {_override_target(override)} {_override_settings(override)} "
        f"until {_when(override.expires_ns)} (by {who}): {override.reason}"
    )


def _describe_gateways(response) -> list[str]:
    """One line per live gateway of a change's answer: whether it enforces the change, and
    where it stands against the change's revision (what an UNCONFIRMED one is behind)."""
    if not response.gateways:
        return [f"  no gateway is reporting to this halt manager (change at rev {response.revision})"]
    lines = []
    for gateway in response.gateways:
        status = halts_pb2.ConfirmationStatus.Name(gateway.status).removeprefix("CONFIRMATION_STATUS_")
        if gateway.status == halts_pb2.CONFIRMATION_STATUS_CONFIRMED:
            detail = f"rev {gateway.applied_revision} of {response.revision}"
        elif gateway.status == halts_pb2.CONFIRMATION_STATUS_FAILED_CLOSED:
            detail = f"(rejecting every order, last applied rev {gateway.applied_revision} of {response.revision})"
        else:
            detail = f"(last applied rev {gateway.applied_revision} of {response.revision})"
        lines.append(f"  {gateway.gateway_id} {status} {detail}")
    return lines


def _warn_unconfirmed(gateways) -> None:
    lagging = [g.gateway_id for g in gateways if g.status == halts_pb2.CONFIRMATION_STATUS_UNCONFIRMED]
    if lagging:
        print(
            f"pretrade: warning: not confirmed in time by {', '.join(lagging)}: the change stands; "
            "a gateway applies it when its watch delivers it, or fails closed",
            file=sys.stderr,
        )


def _describe_snapshot(snapshot: halts_pb2.ListHaltsResponse) -> list[str]:
    lines = [_describe_state(halt) for halt in snapshot.halts]
    lines += [_describe_request(request) for request in snapshot.requests]
    lines += [_describe_override(override) for override in snapshot.overrides]
    return lines or ["nothing halted, no pending requests, no overrides"]


def _describe_event(event: halts_pb2.HaltEvent) -> str:
    kind = halts_pb2.HaltEventType.Name(event.type).removeprefix("HALT_EVENT_TYPE_")
    state_events = (halts_pb2.HALT_EVENT_TYPE_STATE_CHANGED, halts_pb2.HALT_EVENT_TYPE_KILL)
    if event.HasField("halt") and event.type in state_events:
        detail = _describe_state(event.halt)
    elif event.HasField("override") and event.type in (
        halts_pb2.HALT_EVENT_TYPE_OVERRIDE_ACTIVATED,
        halts_pb2.HALT_EVENT_TYPE_OVERRIDE_EXPIRED,
    ):
        detail = _describe_override(event.override)
    else:
        detail = _describe_request(event.approval)
    return f"{_when(event.at_ns)} {kind} by {event.actor}: {detail}"

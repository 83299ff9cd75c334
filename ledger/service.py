"""``pretrade.v1.LedgerService`` over a :class:`~ledger.reader.LedgerReader`.

Two ways to host it:

* on the gateway's gRPC server (``pretrade up``): :func:`add_ledger_service` before the
  server starts, and merge :data:`LEDGER_METHOD_ROLES` into the auth interceptor's table
  (``AuthInterceptor(tokens, {**DEFAULT_METHOD_ROLES, **LEDGER_METHOD_ROLES})``);
* standalone (``pretrade ledger run --listen``): :func:`create_ledger_server`, with its own
  token check (an ``AuthInterceptor(tokens, LEDGER_METHOD_ROLES)`` that SIGHUP reloads the
  token file into, ``gateway.auth.reload_token_file``), health and reflection, and TLS / mutual TLS as the gateway's port
  (``--tls-cert``/``--tls-key``/``--tls-client-ca``).

Every role may read the ledger. Point reads (entry, proofs, checkpoint) run on the event
loop (microseconds); ExplainOrder reads a whole trail and runs in a worker thread so that
an order path sharing the loop never waits for it.

Status codes: INVALID_ARGUMENT (missing account or client order id), OUT_OF_RANGE (index
or tree size beyond the ledger), NOT_FOUND (no such order, no checkpoint at that size),
FAILED_PRECONDITION (no checkpoint yet, entry newer than the latest checkpoint),
DATA_LOSS (the stored ledger is inconsistent: run ``pretrade ledger verify``).
"""

from __future__ import annotations

import asyncio
import functools
import logging

import grpc
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from gateway.auth import ROLE_ADMIN, ROLE_OPERATOR, ROLE_TRADER, AuthInterceptor, service_method_roles
from gateway.server import ListenError
from ledger.errors import (
    CheckpointNotFoundError,
    EntryFormatError,
    EntryNotCheckpointedError,
    LeafIndexOutOfRangeError,
    LedgerError,
    LedgerIntegrityError,
    NoCheckpointError,
    NoteError,
    TreeSizeOutOfRangeError,
    UnknownOrderError,
)
from ledger.explain import explain_order
from ledger.reader import LedgerReader
from pretrade.v1 import ledger_pb2, ledger_pb2_grpc

log = logging.getLogger(__name__)

LEDGER_SERVICE_DESCRIPTOR = ledger_pb2.DESCRIPTOR.services_by_name["LedgerService"]
LEDGER_SERVICE_NAME = LEDGER_SERVICE_DESCRIPTOR.full_name

#: Full method name -> roles the auth interceptor admits: everyone may read the ledger.
LEDGER_METHOD_ROLES: dict[str, frozenset[str]] = service_method_roles(
    LEDGER_SERVICE_DESCRIPTOR, frozenset((ROLE_TRADER, ROLE_OPERATOR, ROLE_ADMIN))
)

_STATUS_OF_ERROR: tuple[tuple[type[LedgerError], grpc.StatusCode], ...] = (
    (LeafIndexOutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (TreeSizeOutOfRangeError, grpc.StatusCode.OUT_OF_RANGE),
    (UnknownOrderError, grpc.StatusCode.NOT_FOUND),
    (CheckpointNotFoundError, grpc.StatusCode.NOT_FOUND),
    (NoCheckpointError, grpc.StatusCode.FAILED_PRECONDITION),
    (EntryNotCheckpointedError, grpc.StatusCode.FAILED_PRECONDITION),
    (LedgerIntegrityError, grpc.StatusCode.DATA_LOSS),
    (EntryFormatError, grpc.StatusCode.DATA_LOSS),
    (NoteError, grpc.StatusCode.DATA_LOSS),
)


def _status_of(error: LedgerError) -> grpc.StatusCode:
    for error_type, code in _STATUS_OF_ERROR:
        if isinstance(error, error_type):
            return code
    return grpc.StatusCode.INTERNAL


def _answering_ledger_errors(method):
    """Turn a ledger error into its status code (module docstring) with its message."""

    @functools.wraps(method)
    async def answering(self, request, context):
        try:
            return await method(self, request, context)
        except LedgerError as exc:
            code = _status_of(exc)
            if code in (grpc.StatusCode.DATA_LOSS, grpc.StatusCode.INTERNAL):
                log.error("LedgerService.%s failed: %s", method.__name__, exc)
            await context.abort(code, str(exc))

    return answering


class LedgerServicer(ledger_pb2_grpc.LedgerServiceServicer):
    """pretrade.v1.LedgerService (see the module docstring)."""

    def __init__(self, reader: LedgerReader) -> None:
        self.reader = reader

    @_answering_ledger_errors
    async def GetEntry(self, request, context):  # noqa: N802 (gRPC method name)
        return ledger_pb2.GetEntryResponse(entry=self.reader.entry(request.index))

    @_answering_ledger_errors
    async def GetInclusionProof(self, request, context):  # noqa: N802
        proof, checkpoint = self.reader.inclusion_proof(request.index, request.tree_size or None)
        response = ledger_pb2.GetInclusionProofResponse(proof=proof)
        if checkpoint is not None:
            response.checkpoint.CopyFrom(checkpoint)
        return response

    @_answering_ledger_errors
    async def GetConsistencyProof(self, request, context):  # noqa: N802
        return self.reader.consistency_proof(request.old_size, request.new_size or None)

    @_answering_ledger_errors
    async def GetCheckpoint(self, request, context):  # noqa: N802
        return ledger_pb2.GetCheckpointResponse(
            checkpoint=self.reader.checkpoint(request.tree_size or None), ledger_size=self.reader.store.size()
        )

    @_answering_ledger_errors
    async def ExplainOrder(self, request, context):  # noqa: N802
        if not request.account or not request.client_order_id:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "account and client_order_id are required")
        explanation = await asyncio.to_thread(explain_order, self.reader, request.account, request.client_order_id)
        return ledger_pb2.ExplainOrderResponse(explanation=explanation)


def add_ledger_service(server: grpc.aio.Server, reader: LedgerReader) -> LedgerServicer:
    """Register LedgerService on ``server`` (before it starts); returns the servicer."""
    servicer = LedgerServicer(reader)
    ledger_pb2_grpc.add_LedgerServiceServicer_to_server(servicer, server)
    return servicer


async def create_ledger_server(
    reader: LedgerReader, listen: str, auth: AuthInterceptor, credentials: grpc.ServerCredentials | None = None
) -> tuple[grpc.aio.Server, int]:
    """A standalone, not yet started server for LedgerService on ``listen`` (port 0:
    any free port), behind the bearer-token check ``auth`` (the caller keeps it to reload
    the token file into it), with health (SERVING) and reflection;
    ``credentials`` (``clients.tls.server_tls_credentials``): TLS only on that port, as on
    the gateway's; None: plaintext. Returns the server and its port; raises ``ListenError``
    if ``listen`` cannot be bound."""
    server = grpc.aio.server(
        interceptors=[auth], options=(("grpc.so_reuseport", 0),)
    )
    add_ledger_service(server, reader)
    health_servicer = health.aio.HealthServicer()
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    for name in ("", LEDGER_SERVICE_NAME):
        await health_servicer.set(name, health_pb2.HealthCheckResponse.SERVING)
    reflection.enable_server_reflection((LEDGER_SERVICE_NAME, health.SERVICE_NAME, reflection.SERVICE_NAME), server)
    try:
        if credentials is not None:
            port = server.add_secure_port(listen, credentials)
        else:
            port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        raise ListenError(f"--listen {listen}: cannot bind (address in use or not local): {exc}") from None
    return server, port

"""``pretrade ledger ...``: run the ledger, verify it, prove and explain entries, export evidence.

Subcommands::

    pretrade ledger run          ingest decisions and events into <data-dir>/ledger (and serve
                                 LedgerService with --listen, TLS with --tls-cert/--tls-key
                                 [--tls-client-ca]; Prometheus /metrics on --metrics-listen)
    pretrade ledger keygen       make the checkpoint signing key (<data-dir>/ledger-signing.key)
    pretrade ledger verify       recompute every leaf and the root, check every checkpoint
    pretrade ledger proof        an entry's inclusion proof, enough for an outside verifier
    pretrade ledger explain      an order's trail and why it was decided as it was
    pretrade ledger export       an evidence pack (zip) of a range of entries
    pretrade ledger verify-pack  check an evidence pack with nothing but the pack

Read commands open the ledger in ``--data-dir`` directly (LMDB lets readers run beside the
ingest worker); ``proof`` and ``explain`` ask a running LedgerService instead when
``--target`` is given (with ``--token`` or ``$PRETRADE_TOKEN``). Every subcommand takes
``--json``. Errors are one readable line on stderr, never a traceback.

Exit codes: 0 success; 1 verification failed (``verify``, ``verify-pack``); 2 error (bad
usage, no ledger, unknown order, service unreachable); 130 interrupted.

:func:`register` adds the ``ledger`` command to the ``pretrade`` parser; :func:`main`
runs it alone (``python -m ledger.cli ...``).
"""

from __future__ import annotations

import os

os.environ.setdefault("GRPC_VERBOSITY", "NONE")  # before grpc is imported (see gateway.cli)

import argparse  # noqa: E402
import base64  # noqa: E402
import datetime  # noqa: E402
import json  # noqa: E402
import logging  # noqa: E402
import sys  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import NoReturn  # noqa: E402

EXIT_OK = 0
EXIT_VERIFICATION_FAILED = 1
EXIT_ERROR = 2
EXIT_INTERRUPTED = 130

TOKEN_ENV_VAR = "PRETRADE_TOKEN"
DEFAULT_DATA_DIR = ".pretrade"
DEFAULT_NATS_URL = "nats://127.0.0.1:4222"
DEFAULT_RPC_TIMEOUT_S = 10.0
DEFAULT_LOG_LEVEL = "INFO"
#: Objects allocated between gen-0 collections in ``ledger run``: ingest makes about ten
#: short-lived objects per entry that live until their commit, and Python's default (700)
#: would re-scan every batch many times over (measured: ~30% of ingest CPU).
INGEST_GC_THRESHOLD_OBJECTS = 100_000
_PROGRESS_WIDTH = 30


class LedgerCommandError(Exception):
    """A failure of a ledger subcommand, reported as one line and exit code 2."""


class _Parser(argparse.ArgumentParser):
    """argparse that reports usage errors as one line (exit code 2)."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_ERROR, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def _seconds(text: str) -> float:
    """An argparse type: a number of seconds, >= 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not value >= 0:  # also refuses nan
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def _output_options() -> argparse.ArgumentParser:
    """The flag of every ledger subcommand."""
    output = argparse.ArgumentParser(add_help=False)
    output.add_argument("--json", action="store_true", help="machine-readable output")
    return output


def _data_dir_options() -> argparse.ArgumentParser:
    """The state directory, for every subcommand but ``verify-pack``: that one reads nothing but
    the pack, and does not offer a flag it would ignore."""
    data_dir = argparse.ArgumentParser(add_help=False)
    data_dir.add_argument("--data-dir", default=DEFAULT_DATA_DIR, help="state directory (default: %(default)s)")
    return data_dir


def _remote_options() -> argparse.ArgumentParser:
    """The client flags of the subcommands that can ask a LedgerService (``proof``,
    ``explain``); the others read ``--data-dir`` only and do not offer flags they would ignore."""
    remote = argparse.ArgumentParser(add_help=False)
    remote.add_argument("--target", help="ask the LedgerService at this address instead of reading --data-dir")
    remote.add_argument("--token", help=f"bearer token for --target (default: ${TOKEN_ENV_VAR})")
    from gateway.cli import add_client_tls_options  # --tls-ca etc., for --target

    add_client_tls_options(remote)
    return remote


def register(subparsers) -> None:
    """Add ``ledger`` and its subcommands to the ``pretrade`` subparsers. Each sets
    ``handler(args) -> exit code``; handlers raise on errors (the caller prints one line)."""
    from ledger.health import DEFAULT_HEALTH_INTERVAL_S, HEALTH_INTERVAL_ENV
    from ledger.ingest import DEFAULT_CHECKPOINT_EVERY_ENTRIES, DEFAULT_CHECKPOINT_INTERVAL_MS, DEFAULT_ORIGIN
    from gateway.cli import add_server_tls_options  # --tls-cert etc., for --listen, as the gateway's
    from ledger.merkle import DEFAULT_HASH_NAME, HASHERS
    from ledger.metrics import DEFAULT_METRICS_LISTEN, METRICS_OFF

    output = _output_options()
    common = [_data_dir_options(), output]
    remote = [*common, _remote_options()]
    ledger = subparsers.add_parser("ledger", help="the decision ledger: run, verify, prove, explain, export")
    commands = ledger.add_subparsers(dest="ledger_command", required=True, metavar="COMMAND")

    run = commands.add_parser("run", parents=common, help="ingest decisions and events into the ledger")
    run.add_argument("--nats-url", default=DEFAULT_NATS_URL, help="NATS server URL (default: %(default)s)")
    run.add_argument("--listen", help="also serve LedgerService on this address (host:port)")
    run.add_argument("--tokens", help="token file for --listen (default: the data dir's demo tokens); SIGHUP reloads it")
    add_server_tls_options(run, where=" on --listen")
    run.add_argument("--origin", default=DEFAULT_ORIGIN, help="checkpoint origin line (default: %(default)s)")
    run.add_argument("--signing-key", help="signer key file (default: <data-dir>/ledger-signing.key if present)")
    run.add_argument("--hash", default=DEFAULT_HASH_NAME, choices=sorted(HASHERS), help="hash of a new ledger")
    run.add_argument("--checkpoint-every", type=int, default=DEFAULT_CHECKPOINT_EVERY_ENTRIES, metavar="ENTRIES")
    run.add_argument("--checkpoint-interval-ms", type=int, default=DEFAULT_CHECKPOINT_INTERVAL_MS, metavar="MS")
    run.add_argument(
        "--health-interval",
        type=_seconds,
        metavar="SECONDS",
        help=f"publish ledger_lag_s and ledger_verified for db_watchdog every SECONDS, 0: never "
        f"(default: ${HEALTH_INTERVAL_ENV}, else {DEFAULT_HEALTH_INTERVAL_S:g})",
    )
    run.add_argument(
        "--metrics-listen",
        default=DEFAULT_METRICS_LISTEN,
        metavar="HOST:PORT",
        help=f"Prometheus /metrics address, or '{METRICS_OFF}' (default: %(default)s)",
    )
    run.add_argument("--log-level", default=DEFAULT_LOG_LEVEL, choices=("DEBUG", "INFO", "WARNING", "ERROR"))
    run.set_defaults(handler=_cmd_run)

    keygen = commands.add_parser("keygen", parents=common, help="make the checkpoint signing key")
    keygen.add_argument("--name", default=DEFAULT_ORIGIN, help="key name (default: %(default)s)")
    keygen.add_argument("--force", action="store_true", help="replace an existing key")
    keygen.set_defaults(handler=_cmd_keygen)

    verify = commands.add_parser("verify", parents=common, help="recompute the tree, check every checkpoint")
    verify.add_argument("--from-sequence", type=int, default=0, metavar="N", help="start at entry N (default: 0)")
    verify.add_argument("--verifier-key", help="verifier key file (default: <data-dir>/ledger-signing.vkey if present)")
    verify.set_defaults(handler=_cmd_verify)

    proof = commands.add_parser("proof", parents=remote, help="an entry's inclusion proof")
    proof.add_argument("--seq", type=int, required=True, metavar="N", help="entry index")
    proof.add_argument("--tree-size", type=int, help="prove against this size (default: the latest checkpoint)")
    proof.set_defaults(handler=_cmd_proof)

    explain = commands.add_parser("explain", parents=remote, help="an order's trail and explanation")
    explain.add_argument("--account")
    explain.add_argument("--client-order-id")
    explain.add_argument("--trace-id", help="explain the order(s) of this trace id instead (local only)")
    explain.set_defaults(handler=_cmd_explain)

    export = commands.add_parser("export", parents=common, help="write an evidence pack")
    export.add_argument("--from", dest="range_from", required=True, help="first entry index, or an ISO-8601 time")
    export.add_argument("--to", dest="range_to", help="last entry index or time, inclusive (default: last checkpointed)")
    export.add_argument("--output", help="pack file (default: evidence-<first>-<last>.zip)")
    export.set_defaults(handler=_cmd_export)

    verify_pack = commands.add_parser("verify-pack", parents=[output], help="check an evidence pack alone")
    verify_pack.add_argument("file")
    verify_pack.add_argument("--verifier-key", help="pin this verifier key file instead of the pack's own")
    verify_pack.set_defaults(handler=_cmd_verify_pack)


def _print_json(document) -> None:
    print(json.dumps(document, sort_keys=True))


# --- opening the ledger --------------------------------------------------------------------


def _open_reader(args):
    """A reader of the ledger in ``--data-dir`` (readonly: beside a running worker)."""
    from ledger.errors import LedgerNotFoundError
    from ledger.layout import configured_verifier, ledger_path, load_verifier
    from ledger.reader import LedgerReader
    from ledger.store import LedgerStore

    path = ledger_path(args.data_dir)
    try:
        store = LedgerStore.open(path, readonly=True)
    except LedgerNotFoundError:
        raise LedgerCommandError(f"no ledger in {path} (start one with `pretrade ledger run` or `pretrade up`)") from None
    key_file = getattr(args, "verifier_key", None)
    verifier = load_verifier(key_file) if key_file else configured_verifier(args.data_dir)
    return LedgerReader(store, verifier)


class _RemoteLedger:
    """LedgerService over gRPC, every failure a ``clients.errors`` exception."""

    def __init__(self, target: str, token: str | None, credentials=None) -> None:
        import grpc

        from clients.sync_client import auth_metadata
        from pretrade.v1 import ledger_pb2_grpc

        token = token or os.environ.get(TOKEN_ENV_VAR)
        if not token:
            raise LedgerCommandError(f"--target needs a token: pass --token or set {TOKEN_ENV_VAR}")
        if credentials is not None:
            self._channel = grpc.secure_channel(target, credentials)
        else:
            self._channel = grpc.insecure_channel(target)
        self._stub = ledger_pb2_grpc.LedgerServiceStub(self._channel)
        self._metadata = auth_metadata(token)

    def call(self, method: str, request):
        import grpc

        from clients.errors import error_from_rpc

        try:
            return getattr(self._stub, method)(request, timeout=DEFAULT_RPC_TIMEOUT_S, metadata=self._metadata)
        except grpc.RpcError as error:
            raise error_from_rpc(error) from None

    def close(self) -> None:
        self._channel.close()


# --- run / keygen ------------------------------------------------------------------------------


def _tokens_file_for_listen(args) -> Path:
    """The token file of ``--listen``: ``--tokens``, else the data dir's demo tokens."""
    from gateway.auth import DEMO_TOKENS_FILE

    if args.tokens:
        return Path(args.tokens)
    demo = Path(args.data_dir) / DEMO_TOKENS_FILE
    if not demo.exists():
        raise LedgerCommandError(f"--listen needs --tokens FILE (no demo tokens in {args.data_dir})")
    return demo


def _listen_credentials(args):
    """The server credentials of ``--tls-cert``/``--tls-key``/``--tls-client-ca`` for
    ``--listen`` (None: plaintext), built as the gateway builds its own."""
    from clients.tls import server_tls_credentials

    credentials = server_tls_credentials(args.tls_cert, args.tls_key, args.tls_client_ca)
    if credentials is not None and not args.listen:
        raise LedgerCommandError("--tls-cert: needs --listen (TLS is for the LedgerService port)")
    return credentials


def _cmd_run(args) -> int:
    import asyncio
    import gc
    import signal

    from prometheus_client import CollectorRegistry

    from ledger.layout import load_signer
    from gateway.metrics import TokenReloadCollector
    from ledger.metrics import METRICS_OFF, PREFIX, MetricsHttpServer, parse_metrics_listen
    from ledger.runtime import LedgerRuntime, health_interval
    from gateway.auth import AuthInterceptor, TokenStore, reload_token_file
    from ledger.service import LEDGER_METHOD_ROLES, create_ledger_server

    try:
        health_interval_s = health_interval(args.health_interval)  # the flag, else the environment
        metrics_listen = None if args.metrics_listen == METRICS_OFF else args.metrics_listen
        if metrics_listen is not None:
            parse_metrics_listen(metrics_listen)  # refused before anything is opened
    except ValueError as exc:
        raise LedgerCommandError(str(exc)) from None
    logging.basicConfig(
        level=args.log_level, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    credentials = _listen_credentials(args)  # a bad TLS file fails now, before anything is opened
    tokens_file = _tokens_file_for_listen(args) if args.listen else None
    auth = AuthInterceptor(TokenStore.load(tokens_file), LEDGER_METHOD_ROLES) if tokens_file is not None else None
    runtime = LedgerRuntime(
        args.data_dir,
        origin=args.origin,
        hash_name=args.hash,
        signer=load_signer(args.signing_key) if args.signing_key else None,
        writer_options={
            "checkpoint_every_entries": args.checkpoint_every,
            "checkpoint_interval_ms": args.checkpoint_interval_ms,
        },
        health_interval_s=health_interval_s,
        metrics_registry=CollectorRegistry() if metrics_listen is not None else None,
    )
    if auth is not None and runtime.metrics_registry is not None:
        # A failed SIGHUP token reload keeps a revoked token working: alertable, as on the gateway.
        runtime.metrics_registry.register(TokenReloadCollector(auth, PREFIX))

    async def serve() -> None:
        server = None
        metrics_http = None
        stop = asyncio.Event()
        loop = asyncio.get_running_loop()
        for signal_number in (signal.SIGINT, signal.SIGTERM):
            loop.add_signal_handler(signal_number, stop.set)
        reloads: set[asyncio.Task] = set()
        if auth is not None:
            # SIGHUP reloads the token file (as on the gateway); a bad file is one ERROR line.
            def reload_tokens() -> None:
                task = asyncio.create_task(reload_token_file(auth, tokens_file))
                reloads.add(task)
                task.add_done_callback(reloads.discard)

            loop.add_signal_handler(signal.SIGHUP, reload_tokens)
        try:
            info = {"ledger": str(runtime.path), "nats_url": args.nats_url, "signed": runtime.signed}
            if metrics_listen is not None:
                try:
                    metrics_http = MetricsHttpServer(runtime.metrics_registry, metrics_listen)
                except ValueError as exc:
                    raise LedgerCommandError(str(exc)) from None
                info["metrics"] = metrics_http.url
            if auth is not None:
                server, port = await create_ledger_server(runtime.reader, args.listen, auth, credentials)
                await server.start()
                info["listen"] = f"{args.listen.rpartition(':')[0]}:{port}"
                info["tls"] = credentials is not None
                info["mutual_tls"] = args.tls_client_ca is not None
            if args.json:
                _print_json(info)
            else:
                print(f"pretrade ledger ingesting into {info['ledger']} from {args.nats_url}")
                print(f"  checkpoints {'signed' if runtime.signed else 'UNSIGNED (run `pretrade ledger keygen`)'}")
                if "listen" in info:
                    transport = ("mutual TLS" if info["mutual_tls"] else "TLS") if info["tls"] else "plaintext"
                    print(f"  LedgerService on {info['listen']} ({transport})")
                if "metrics" in info:
                    print(f"  metrics {info['metrics']}")
                print("Ctrl-C stops.")
            sys.stdout.flush()
            ingest = asyncio.create_task(runtime.run(args.nats_url))
            stopped = asyncio.create_task(stop.wait())
            await asyncio.wait([ingest, stopped], return_when=asyncio.FIRST_COMPLETED)
            if ingest.done():
                ingest.result()  # a failed commit: report it
            ingest.cancel()
            await asyncio.gather(ingest, return_exceptions=True)
        finally:
            if server is not None:
                await server.stop(1.0)
            if metrics_http is not None:
                metrics_http.stop()
            runtime.close()

    gc.freeze()  # what start-up allocated never needs scanning again
    gc.set_threshold(INGEST_GC_THRESHOLD_OBJECTS)
    asyncio.run(serve())
    return EXIT_OK


def _cmd_keygen(args) -> int:
    from ledger.layout import signing_key_path, verifier_key_path, write_key_pair

    signer = write_key_pair(args.data_dir, args.name, overwrite=args.force)
    result = {
        "signing_key": str(signing_key_path(args.data_dir)),
        "verifier_key_file": str(verifier_key_path(args.data_dir)),
        "verifier_key": signer.verifier().vkey(),
    }
    if args.json:
        _print_json(result)
    else:
        print(f"signing key   {result['signing_key']} (secret; the ledger signs checkpoints with it)")
        print(f"verifier key  {result['verifier_key_file']}:")
        print(f"  {result['verifier_key']}")
        print("Give the verifier key to whoever checks the ledger. Restart `pretrade ledger run` to use the new key.")
    return EXIT_OK


# --- verify ------------------------------------------------------------------------------------


def _progress_printer():
    """A progress bar on stderr when it is a terminal, else None."""
    if not sys.stderr.isatty():
        return None

    def show(done: int, total: int) -> None:
        filled = _PROGRESS_WIDTH * done // total if total else _PROGRESS_WIDTH
        bar = "#" * filled + "." * (_PROGRESS_WIDTH - filled)
        sys.stderr.write(f"\rverifying [{bar}] {done}/{total} entries")
        sys.stderr.flush()

    return show


def _cmd_verify(args) -> int:
    from ledger.errors import LedgerIntegrityError

    reader = _open_reader(args)
    progress = None if args.json else _progress_printer()
    verifiers = [reader.verifier] if reader.verifier is not None else []
    try:
        report = reader.store.verify(args.from_sequence, checkpoint_verifiers=verifiers, progress=progress)
    except LedgerIntegrityError as exc:
        if progress is not None:
            sys.stderr.write("\n")
        if args.json:
            _print_json({"ok": False, "index": exc.index, "reason": exc.reason, "error": type(exc).__name__})
        else:
            where = f"entry {exc.index}" if exc.index is not None else "the ledger"
            print(f"FAILED at {where}: {exc.reason}")
        return EXIT_VERIFICATION_FAILED
    finally:
        reader.store.close()
    if progress is not None:
        sys.stderr.write("\n")
    signatures = f"signatures checked with {reader.verifier.name}" if verifiers else "signatures NOT checked (no verifier key)"
    if args.json:
        _print_json(
            {
                "ok": True,
                "from_index": report.from_index,
                "entries_checked": report.entries_verified,
                "tree_size": report.tree_size,
                "root_hash": report.root_hash.hex(),
                "hash": reader.hash_name,
                "checkpoints_checked": report.checkpoints_verified,
                "signatures_checked": bool(verifiers),
            }
        )
    else:
        print(
            f"ok: {report.entries_verified} entries checked (from {report.from_index}), tree size {report.tree_size}, "
            f"root {report.root_hash.hex()} ({reader.hash_name}); {report.checkpoints_verified} checkpoints, {signatures}"
        )
    return EXIT_OK


# --- proof -------------------------------------------------------------------------------------


def _proof_document(entry, proof, checkpoint) -> dict:
    from pretrade.v1 import ledger_pb2

    return {
        "index": proof.leaf_index,
        "kind": ledger_pb2.EntryKind.Name(entry.kind).removeprefix("ENTRY_KIND_"),
        "event": entry.event,
        "hash": proof.hash_name,
        "leaf": base64.b64encode(entry.entry).decode("ascii"),
        "leaf_hash": proof.leaf_hash.hex(),
        "proof": [node.hex() for node in proof.hashes],
        "tree_size": proof.tree_size,
        "root_hash": proof.root_hash.hex(),
        "checkpoint": checkpoint.note if checkpoint is not None else None,
        "verifier_key": (checkpoint.verifier_key or None) if checkpoint is not None else None,
    }


def _cmd_proof(args) -> int:
    from ledger import merkle
    from ledger.errors import ProofVerificationError
    from pretrade.v1 import ledger_pb2

    if args.target:
        from gateway.cli import client_credentials

        remote = _RemoteLedger(args.target, args.token, client_credentials(args))
        try:
            entry = remote.call("GetEntry", ledger_pb2.GetEntryRequest(index=args.seq)).entry
            response = remote.call(
                "GetInclusionProof", ledger_pb2.GetInclusionProofRequest(index=args.seq, tree_size=args.tree_size or 0)
            )
        finally:
            remote.close()
        proof = response.proof
        checkpoint = response.checkpoint if response.HasField("checkpoint") else None
    else:
        reader = _open_reader(args)
        try:
            entry = reader.entry(args.seq)
            proof, checkpoint = reader.inclusion_proof(args.seq, args.tree_size)
        finally:
            reader.store.close()
    hasher = merkle.hasher_for(proof.hash_name)
    try:  # what we hand out must verify: a failure here means a damaged ledger
        if hasher.hash_leaf(entry.entry) != proof.leaf_hash:
            raise ProofVerificationError("the entry does not hash to its stored leaf hash")
        merkle.verify_inclusion(hasher, proof.leaf_index, proof.tree_size, proof.leaf_hash, list(proof.hashes), proof.root_hash)
    except ProofVerificationError as exc:
        raise LedgerCommandError(f"entry {args.seq}: the ledger's own proof does not verify ({exc}); run `pretrade ledger verify`") from None
    document = _proof_document(entry, proof, checkpoint)
    if args.json:
        _print_json(document)
        return EXIT_OK
    print(f"entry {document['index']} ({document['kind']}, {document['event']}) in tree size {document['tree_size']} ({document['hash']})")
    print(f"  leaf hash  {document['leaf_hash']}")
    for position, node in enumerate(document["proof"]):
        print(f"  proof[{position}]   {node}")
    print(f"  root       {document['root_hash']}")
    if document["checkpoint"]:
        print("checkpoint:")
        print("  " + document["checkpoint"].rstrip("\n").replace("\n", "\n  "))
    else:
        print(f"no checkpoint at tree size {document['tree_size']}: the root is not signed")
    return EXIT_OK


# --- explain -----------------------------------------------------------------------------------


def _cmd_explain(args) -> int:
    from google.protobuf import json_format

    from pretrade.v1 import ledger_pb2

    by_order = args.account is not None or args.client_order_id is not None
    by_trace = args.trace_id is not None
    if by_order == by_trace or by_order and not (args.account and args.client_order_id):
        raise LedgerCommandError("explain needs --account and --client-order-id, or --trace-id")
    if args.target:
        if args.trace_id is not None:
            raise LedgerCommandError("--trace-id reads the ledger locally: drop --target")
        from gateway.cli import client_credentials

        remote = _RemoteLedger(args.target, args.token, client_credentials(args))
        try:
            request = ledger_pb2.ExplainOrderRequest(account=args.account, client_order_id=args.client_order_id)
            explanations = [remote.call("ExplainOrder", request).explanation]
        finally:
            remote.close()
    else:
        from ledger.explain import explain_order, trace_orders

        reader = _open_reader(args)
        try:
            orders = trace_orders(reader, args.trace_id) if args.trace_id else [(args.account, args.client_order_id)]
            explanations = [explain_order(reader, account, client_order_id) for account, client_order_id in orders]
        finally:
            reader.store.close()
    if args.json:
        documents = [json_format.MessageToDict(e, preserving_proto_field_name=True) for e in explanations]
        _print_json(documents if args.trace_id else documents[0])
    else:
        print("\n\n".join("\n".join(explanation.summary) for explanation in explanations))
    return EXIT_OK


# --- export / verify-pack ----------------------------------------------------------------------


_EPOCH = datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC)
_MICROSECOND = datetime.timedelta(microseconds=1)
_NS_PER_US = 1_000


def _parse_time_ns(text: str) -> int | None:
    """Unix ns of an ISO-8601 time (UTC unless it says otherwise; microsecond resolution),
    None if ``text`` is not one."""
    try:
        moment = datetime.datetime.fromisoformat(text.replace("Z", "+00:00"))
    except ValueError:
        return None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=datetime.UTC)
    return (moment - _EPOCH) // _MICROSECOND * _NS_PER_US


def _export_range(reader, range_from: str, range_to: str | None) -> tuple[int, int | None]:
    """Entry indices from ``--from``/``--to``, each an index or a time (by event time)."""
    if range_from.isdigit() and (range_to is None or range_to.isdigit()):
        return int(range_from), int(range_to) if range_to is not None else None
    start_ns = _parse_time_ns(range_from)
    end_ns = _parse_time_ns(range_to) if range_to is not None else None
    if start_ns is None or range_to is not None and end_ns is None:
        raise LedgerCommandError("--from and --to must both be entry indices or ISO-8601 times")
    checkpointed = reader.latest_checkpoint().checkpoint.tree_size
    end_exclusive = end_ns + _NS_PER_US if end_ns is not None else 2**63  # --to includes its whole microsecond
    indices = [index for index in reader.indexes.time_entries(start_ns, end_exclusive) if index < checkpointed]
    if not indices:
        raise LedgerCommandError(f"no checkpointed entry has an event time in {range_from} .. {range_to or 'now'}")
    return min(indices), max(indices)


def _cmd_export(args) -> int:
    from ledger.pack import export_pack

    reader = _open_reader(args)
    try:
        first, last = _export_range(reader, args.range_from, args.range_to)
        if last is None:
            last = reader.latest_checkpoint().checkpoint.tree_size - 1
        output = Path(args.output or f"evidence-{first}-{last}.zip")
        summary = export_pack(reader, output, first, last)
    finally:
        reader.store.close()
    result = {
        "file": str(summary.path),
        "first": summary.first_index,
        "last": summary.last_index,
        "entries": summary.entries,
        "tree_size": summary.tree_size,
        "root_hash": summary.root_hash.hex(),
        "signed": summary.signed,
        "rules_versions": list(summary.rules_versions),
        "rules_unrecorded": list(summary.rules_unrecorded),
    }
    if args.json:
        _print_json(result)
    else:
        print(
            f"wrote {result['file']}: entries {summary.first_index}..{summary.last_index} ({summary.entries}), "
            f"proofs against checkpoint size {summary.tree_size} ({'signed' if summary.signed else 'UNSIGNED'}), "
            f"{len(summary.rules_versions)} rules versions"
        )
        for version in summary.rules_unrecorded:
            print(f"  warning: rules version {version} has no RulesLoaded entry in the ledger")
    return EXIT_OK


def _cmd_verify_pack(args) -> int:
    from ledger.errors import PackEntryError, PackError
    from ledger.layout import load_verifier
    from ledger.pack import verify_pack

    pinned = load_verifier(args.verifier_key) if args.verifier_key else None
    try:
        summary = verify_pack(args.file, pinned)
    except PackError as exc:
        if args.json:
            document = {"ok": False, "error": type(exc).__name__, "reason": str(exc)}
            if isinstance(exc, PackEntryError):
                document["index"] = exc.index
            _print_json(document)
        else:
            print(f"FAILED: {exc}")
        return EXIT_VERIFICATION_FAILED
    if args.json:
        _print_json(
            {
                "ok": True,
                "first": summary.first_index,
                "last": summary.last_index,
                "entries_checked": summary.entries,
                "tree_size": summary.tree_size,
                "root_hash": summary.root_hash.hex(),
                "hash": summary.hash_name,
                "signature_checked": summary.signed,
                "verifier_key": summary.verifier_key,
                "rules_versions": list(summary.rules_versions),
                "rules_unrecorded": list(summary.rules_unrecorded),
            }
        )
        return EXIT_OK
    if summary.signed:
        whose = "the pinned key" if pinned is not None else "the pack's own key (pin the ledger's key with --verifier-key)"
        signature = f"signed, checked with {whose}"
    else:
        signature = "signature NOT checked (no verifier key)"
    print(
        f"ok: entries {summary.first_index}..{summary.last_index} ({summary.entries}) proven against checkpoint "
        f"size {summary.tree_size}, root {summary.root_hash.hex()} ({summary.hash_name}); {signature}; "
        f"{len(summary.rules_versions)} rules versions proven"
    )
    for version in summary.rules_unrecorded:
        print(f"  warning: rules version {version} is referenced but was not recorded in the ledger")
    return EXIT_OK


# --- standalone entry point ----------------------------------------------------------------------


def known_errors() -> tuple[type[BaseException], ...]:
    """Exceptions whose message is the whole story (reported as one line); for the
    ``pretrade`` CLI's own table too."""
    from clients.errors import GatewayError
    from clients.tls import TlsFileError
    from gateway.auth import TokenFileError
    from gateway.server import ListenError
    from ledger.errors import LedgerError

    return (LedgerCommandError, LedgerError, GatewayError, TokenFileError, ListenError, TlsFileError)


def main(argv: list[str] | None = None) -> int:
    parser = _Parser(prog="pretrade", description="The pretrade decision ledger.")
    register(parser.add_subparsers(dest="command", required=True, metavar="COMMAND"))
    try:
        args = parser.parse_args(argv)
    except SystemExit as exit_request:  # --help (0) or a usage error (2, already printed)
        return exit_request.code
    try:
        return args.handler(args)
    except KeyboardInterrupt:
        print("pretrade: interrupted", file=sys.stderr)
        return EXIT_INTERRUPTED
    except Exception as exc:  # noqa: BLE001 - every error becomes one line, never a traceback
        logging.getLogger("pretrade.ledger.cli").debug("command failed", exc_info=True)
        from clients.errors import GatewayError

        if isinstance(exc, GatewayError):
            message = f"{type(exc).__name__}: {exc.message}"
        elif isinstance(exc, known_errors()):
            message = str(exc)
        else:
            message = f"unexpected {type(exc).__name__}: {exc}"
        print(f"pretrade: error: {' '.join(message.split())}", file=sys.stderr)
        return EXIT_ERROR


if __name__ == "__main__":
    sys.exit(main())

"""End to end: orders, executions, a reload and a halt through the real gateway (GatewayApp,
real nats-server, real LMDB, real gRPC) -> the ledger worker -> every decision and event in
the ledger exactly as published, each decision proven against a signed checkpoint,
ExplainOrder naming the right check, limit and observed value and the halt in force;
then the same through LedgerService over gRPC and through the ``pretrade ledger`` CLI,
including an evidence pack checked alone and a tampered one refused."""

from __future__ import annotations

import asyncio
import base64
import hashlib
import json
import time
import zipfile
from pathlib import Path

import grpc
import pytest

from clients import make_execution, make_order
from gateway.auth import AuthInterceptor, TokenStore
from ledger import merkle
from ledger.checkpoint import NoteVerifier, verify_checkpoint
from ledger.cli import EXIT_OK, EXIT_VERIFICATION_FAILED, main
from ledger.entries import EntryKind, encode_entry, identity_key
from ledger.explain import explain_order, trace_orders
from ledger.layout import verifier_key_path, write_key_pair
from ledger.runtime import LedgerRuntime
from ledger.service import LEDGER_METHOD_ROLES, create_ledger_server
from pretrade.v1 import halts_pb2, halts_pb2_grpc, ledger_pb2, ledger_pb2_grpc, trading_pb2, types_pb2
from tests.clients.gateway_harness import GATEWAY_ID, running_gateway
from tests.ledger.ingest_harness import FAST_WORKER, connect

pytestmark = [pytest.mark.integration, pytest.mark.timeout(180)]

ORIGIN = "pretrade.test/ledger"
WAIT_TIMEOUT_S = 30.0
STREAMS = {"PRETRADE_DECISIONS": EntryKind.DECISION, "PRETRADE_EVENTS": EntryKind.GATEWAY_EVENT,
           "PRETRADE_HALT_EVENTS": EntryKind.HALT_EVENT}


def order(client_order_id: str, quantity: str, symbol: str = "AAPL", **fields):
    return make_order(account="ACC1", symbol=symbol, side="buy", quantity=quantity, price="100",
                      client_order_id=client_order_id, **fields)


async def until(predicate, what: str, timeout_s: float = WAIT_TIMEOUT_S):
    deadline = time.monotonic() + timeout_s
    while True:
        result = await predicate()
        if result:
            return result
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        await asyncio.sleep(0.05)


async def trade(gateway) -> dict:
    """Everything the ledger should then explain; returns the decisions the clients saw."""
    seen = {}
    await gateway.set_reference_prices()
    async with gateway.client() as trader, gateway.client("admin") as admin:
        seen["accepted"] = await trader.check_order(order("acc-1", "10", trace_id="trace-7"))
        seen["too_big"] = await trader.check_order(order("big-1", "1500"))
        seen["executions"] = await trader.report_executions(
            [
                make_execution(account="ACC1", client_order_id="acc-1", execution_type=types_pb2.EXECUTION_TYPE_FILL,
                               execution_id="ex-1", last_quantity="10", last_price="100"),
                make_execution(account="ACC1", client_order_id="nobody", execution_type=types_pb2.EXECUTION_TYPE_CANCELLED,
                               execution_id="ex-2"),
            ]
        )
        rules_path = Path(gateway.app.config.rules_path)
        rules_path.write_text(rules_path.read_text().replace("max_order_qty = 1_000", "max_order_qty = 2_000"))
        seen["reload"] = await admin.reload_rules()
        seen["after_reload"] = await trader.check_order(order("big-2", "1500"))

        channel = grpc.aio.insecure_channel(gateway.target)
        halts = halts_pb2_grpc.HaltServiceStub(channel)
        await halts.RequestHalt(
            halts_pb2.RequestHaltRequest(scope=trading_pb2.SCOPE_SYMBOL, name="LOTS", state=trading_pb2.TRADING_STATE_HALTED,
                                         reason="news pending"),
            metadata=(("authorization", f"Bearer {gateway.tokens['alice']}"),), timeout=10,
        )
        await channel.close()
        attempts = iter(range(1000))

        async def halted_decision():
            decision = await trader.check_order(order(f"halted-{next(attempts)}", "10", symbol="LOTS"))
            return decision if any(f.code == "TRADING_HALTED" for f in decision.failures) else None

        seen["halted"] = await until(halted_decision, "the halt to reach the gateway")
    return seen


async def wait_for_everything(gateway, runtime, js) -> int:
    """Until the ledger holds every message of the three streams, under a checkpoint."""
    await gateway.wait_published()
    events = gateway.app.gate.events.outbox

    async def all_in():
        published = 0
        for stream in STREAMS:
            published += (await js.stream_info(stream)).state.messages
        store = runtime.writer.store
        checkpoint = store.latest_checkpoint()
        done = events.depth == 0 and store.size() == published and checkpoint and checkpoint.checkpoint.tree_size == published
        return published if done else None

    return await until(all_in, "the ledger to hold every published message")


async def test_orders_through_the_gateway_are_proven_and_explained(tmp_path, nats_server, capsys):
    ledger_data = tmp_path / "ledger-data"
    signer = write_key_pair(ledger_data, ORIGIN)
    verifier = signer.verifier()
    nc, js = await connect(nats_server.url)
    async with running_gateway(tmp_path / "gateway", nats_url=nats_server.url, host_halt_manager=True) as gateway:
        runtime = LedgerRuntime(ledger_data, origin=ORIGIN, writer_options={"checkpoint_interval_ms": 100},
                                worker_options=FAST_WORKER)
        await runtime.start(nats_server.url)
        try:
            seen = await trade(gateway)
            size = await wait_for_everything(gateway, runtime, js)
            await check_ledger(runtime, js, seen, size, verifier, gateway)
            await check_service(runtime, gateway, seen)
        finally:
            await asyncio.wait_for(runtime.stop(), 10)
    await nc.close()
    check_cli(ledger_data, tmp_path, seen, capsys)


async def check_ledger(runtime, js, seen, size, verifier, gateway) -> None:
    store, reader = runtime.writer.store, runtime.reader
    # Every message of every stream is an entry, byte for byte, exactly once.
    expected = set()
    for stream, kind in STREAMS.items():
        for sequence in range(1, (await js.stream_info(stream)).state.messages + 1):
            expected.add(encode_entry(kind, (await js.get_msg(stream, sequence)).data))
    stored = [store.entry(index) for index in range(size)]
    assert len(set(stored)) == size and set(stored) == expected
    assert store.verify(checkpoint_verifiers=[verifier]).tree_size == size

    # Every decision the gateway made is provable against the signed checkpoint.
    checkpoint = verify_checkpoint(store.latest_checkpoint().note, [verifier])
    hasher = store.hasher
    last_sequence = gateway.app.gate.last_sequence
    with store.read_transaction() as txn:
        found = reader.indexes.find_identities(
            txn, [identity_key(EntryKind.DECISION, types_pb2.Decision(gateway_id=GATEWAY_ID, sequence=s))
                  for s in range(1, last_sequence + 1)])
    assert len(found) == last_sequence
    for index in found.values():
        proof, signed = reader.inclusion_proof(index)
        assert signed.note == store.latest_checkpoint().note
        merkle.verify_inclusion(hasher, index, checkpoint.tree_size, hasher.hash_leaf(store.entry(index)),
                                list(proof.hashes), checkpoint.root_hash)

    # The decision a client received is the entry's payload byte for byte (the gateway
    # serializes it once): the client's own copy recomputes the leaf.
    for decision in (seen["too_big"], seen["accepted"]):
        with store.read_transaction() as txn:
            (index,) = reader.indexes.find_identities(txn, [identity_key(EntryKind.DECISION, decision)]).values()
        assert store.entry(index) == encode_entry(EntryKind.DECISION, decision.SerializeToString())

    # The rejected order: the right check, limit and observed value, and the rules.
    too_big = seen["too_big"].failures
    explanation = explain_order(reader, "ACC1", "big-1")
    (step,) = explanation.trail
    assert step.entry.event == "rejected" and step.HasField("proof")
    failure = next(f for f in step.entry.decision.failures if f.code == "MAX_ORDER_QTY_EXCEEDED")
    expected_failure = next(f for f in too_big if f.code == "MAX_ORDER_QTY_EXCEEDED")
    assert (failure.limit, failure.observed, failure.rule_path) == (
        expected_failure.limit, expected_failure.observed, expected_failure.rule_path)
    assert failure.limit == 1_000 * 10**9 and failure.observed == 1_500 * 10**9
    rules = step.decision_context.rules
    assert rules.recorded and rules.source == gateway.app.config.rules_path
    assert any("MAX_ORDER_QTY_EXCEEDED: limit 1000000000000, observed 1500000000000" in line for line in explanation.summary)
    assert not step.decision_context.halts_in_force

    # The accepted order's whole lifecycle, each step proven.
    accepted = explain_order(reader, "ACC1", "acc-1")
    assert [s.entry.event for s in accepted.trail] == ["accepted", "filled"]
    assert accepted.trail[1].entry.gateway_event.execution_reported.decision_sequence == seen["accepted"].sequence
    assert all(s.HasField("proof") for s in accepted.trail)
    assert trace_orders(reader, "trace-7") == [("ACC1", "acc-1")]
    assert [s.entry.event for s in explain_order(reader, "ACC1", "nobody").trail] == ["execution_unknown_order"]

    # The reload: the new version's RulesLoaded entry holds the new text.
    after = explain_order(reader, "ACC1", "big-2").trail[0]
    assert after.entry.decision.rules_version == seen["reload"].rules_version
    loaded = reader.decoded(after.decision_context.rules.loaded_entry_index).message.rules_loaded
    assert "max_order_qty = 2_000" in loaded.text and loaded.previous_version == seen["reload"].previous_version

    # The halted order: the halt in force, who set it, and the TRADING_HALTED failure.
    halted = explain_order(reader, "ACC1", seen["halted"].order.client_order_id).trail[0]
    (halt,) = halted.decision_context.halts_in_force
    assert (halt.scope, halt.name, halt.state, halt.set_by, halt.reason) == (
        trading_pb2.SCOPE_SYMBOL, "LOTS", trading_pb2.TRADING_STATE_HALTED, "alice", "news pending")
    assert reader.decoded(halt.entry_index).event == "trading_state_changed"


async def check_service(runtime, gateway, seen) -> None:
    auth = AuthInterceptor(TokenStore.load(gateway.app.config.tokens_path), LEDGER_METHOD_ROLES)
    server, port = await create_ledger_server(runtime.reader, "127.0.0.1:0", auth)
    await server.start()
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{port}") as channel:
            stub = ledger_pb2_grpc.LedgerServiceStub(channel)
            metadata = (("authorization", f"Bearer {gateway.tokens['trader']}"),)
            explained = (await stub.ExplainOrder(
                ledger_pb2.ExplainOrderRequest(account="ACC1", client_order_id="big-1"), metadata=metadata, timeout=10
            )).explanation
            index = explained.trail[0].entry.index
            entry = (await stub.GetEntry(ledger_pb2.GetEntryRequest(index=index), metadata=metadata, timeout=10)).entry
            assert entry.decision.order.client_order_id == "big-1"
            proven = await stub.GetInclusionProof(ledger_pb2.GetInclusionProofRequest(index=index), metadata=metadata, timeout=10)
            checkpoint = (await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), metadata=metadata, timeout=10)).checkpoint
            assert proven.checkpoint.note == checkpoint.note and checkpoint.verifier_key
            hasher = merkle.hasher_for(proven.proof.hash_name)
            merkle.verify_inclusion(hasher, index, checkpoint.tree_size, hasher.hash_leaf(entry.entry),
                                    list(proven.proof.hashes), checkpoint.root_hash)
            consistency = await stub.GetConsistencyProof(ledger_pb2.GetConsistencyProofRequest(old_size=1),
                                                         metadata=metadata, timeout=10)
            merkle.verify_consistency(hasher, 1, consistency.new_size, consistency.old_root, consistency.new_root,
                                      list(consistency.hashes))
            with pytest.raises(grpc.aio.AioRpcError) as unknown:
                await stub.ExplainOrder(ledger_pb2.ExplainOrderRequest(account="ACC1", client_order_id="never"),
                                        metadata=metadata, timeout=10)
            assert unknown.value.code() == grpc.StatusCode.NOT_FOUND
            with pytest.raises(grpc.aio.AioRpcError) as beyond:
                await stub.GetEntry(ledger_pb2.GetEntryRequest(index=10**6), metadata=metadata, timeout=10)
            assert beyond.value.code() == grpc.StatusCode.OUT_OF_RANGE
            with pytest.raises(grpc.aio.AioRpcError) as anonymous:
                await stub.GetCheckpoint(ledger_pb2.GetCheckpointRequest(), timeout=10)
            assert anonymous.value.code() == grpc.StatusCode.UNAUTHENTICATED

        # The CLI asking the service instead of reading the ledger (a blocking client: off the loop).
        target = ["--target", f"127.0.0.1:{port}", "--token", gateway.tokens["trader"]]
        code = await asyncio.to_thread(main, ["ledger", "explain", *target, "--account", "ACC1", "--client-order-id", "big-1"])
        assert code == EXIT_OK
    finally:
        await server.stop(1.0)


def run_cli(capsys, *arguments: str) -> tuple[int, str]:
    capsys.readouterr()
    code = main(["ledger", *arguments])
    captured = capsys.readouterr()
    return code, captured.out + captured.err


def check_cli(ledger_data: Path, tmp_path: Path, seen, capsys) -> None:
    data = ["--data-dir", str(ledger_data)]
    code, out = run_cli(capsys, "verify", *data)
    assert code == EXIT_OK and out.startswith("ok:") and "signatures checked" in out, out

    # proof --json is enough for an outside verifier: recompute from the document alone.
    code, out = run_cli(capsys, "explain", *data, "--account", "ACC1", "--client-order-id", "big-1", "--json")
    index = int(json.loads(out)["trail"][0]["entry"]["index"])
    code, out = run_cli(capsys, "proof", *data, "--seq", str(index), "--json")
    document = json.loads(out)
    assert code == EXIT_OK and document["hash"] == "blake3"
    leaf = base64.b64decode(document["leaf"])
    hasher = merkle.hasher_for(document["hash"])
    assert hasher.hash_leaf(leaf).hex() == document["leaf_hash"]
    checkpoint = verify_checkpoint(document["checkpoint"], [NoteVerifier.from_vkey(document["verifier_key"])])
    merkle.verify_inclusion(hasher, document["index"], document["tree_size"], bytes.fromhex(document["leaf_hash"]),
                            [bytes.fromhex(node) for node in document["proof"]], checkpoint.root_hash)

    code, out = run_cli(capsys, "explain", *data, "--account", "ACC1", "--client-order-id", "big-1")
    assert code == EXIT_OK and "MAX_ORDER_QTY_EXCEEDED: limit 1000000000000, observed 1500000000000" in out, out

    pack = tmp_path / "evidence.zip"
    code, out = run_cli(capsys, "export", *data, "--from", "0", "--output", str(pack))
    assert code == EXIT_OK and pack.exists(), out
    vkey = str(verifier_key_path(ledger_data))
    code, out = run_cli(capsys, "verify-pack", str(pack), "--verifier-key", vkey)
    assert code == EXIT_OK and out.startswith("ok:") and "2 rules versions proven" in out, out

    # Tampering with an entry, even with the manifest's digest updated, is caught.
    tampered = tmp_path / "tampered.zip"
    rewrite_pack(pack, tampered, lambda record: record if record["index"] != index else {
        **record, "entry": base64.b64encode(base64.b64decode(record["entry"]).replace(b"big-1", b"big-9")).decode()})
    code, out = run_cli(capsys, "verify-pack", str(tampered), "--verifier-key", vkey, "--json")
    assert code == EXIT_VERIFICATION_FAILED
    assert json.loads(out) | {"reason": None} == {"ok": False, "error": "PackLeafHashMismatchError", "index": index, "reason": None}

    # ... and so is a pack signed by someone else than the pinned key.
    other = tmp_path / "other"
    write_key_pair(other, "someone-else")
    code, out = run_cli(capsys, "verify-pack", str(pack), "--verifier-key", str(verifier_key_path(other)))
    assert code == EXIT_VERIFICATION_FAILED and "FAILED" in out


def rewrite_pack(source: Path, target: Path, change_record) -> None:
    """Copy a pack, changing entries.jsonl records and fixing up the manifest's digest."""
    with zipfile.ZipFile(source) as original:
        members = {name: original.read(name) for name in original.namelist()}
    lines = [json.dumps(change_record(json.loads(line))) for line in members["entries.jsonl"].decode().splitlines()]
    members["entries.jsonl"] = ("\n".join(lines) + "\n").encode()
    manifest = json.loads(members["manifest.json"])
    manifest["files"]["entries.jsonl"] = hashlib.sha256(members["entries.jsonl"]).hexdigest()
    members["manifest.json"] = json.dumps(manifest).encode()
    with zipfile.ZipFile(target, "w") as archive:
        for name, data in members.items():
            archive.writestr(name, data)

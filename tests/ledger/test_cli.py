"""``pretrade ledger`` on a real ledger built without NATS: verify (and its failure exit on a
tampered ledger), proof, explain by order and by trace, export by time, keygen, and one
readable line for every error. The end-to-end test covers the same commands after a real
gateway run, the service-backed mode and tampered packs."""

from __future__ import annotations

import datetime
import json
import re
from pathlib import Path

import pytest

from ledger.cli import EXIT_ERROR, EXIT_OK, EXIT_VERIFICATION_FAILED, LedgerCommandError, main
from ledger.ingest import DECISIONS_SOURCE, GATEWAY_EVENTS_SOURCE, LedgerWriter, ReceivedBatch
from ledger.layout import ledger_path, write_key_pair
from tests.ledger.ingest_harness import decision, execution_event, rules_event
from tests.ledger.lmdb_tamper import key, raw_ledger

DECISIONS = 40


@pytest.fixture
def data_dir(tmp_path) -> Path:
    """A signed ledger: the rules, 40 decisions (every 4th rejected), one fill."""
    directory = tmp_path / "data"
    signer = write_key_pair(directory, "cli.test/ledger")
    writer = LedgerWriter.open(ledger_path(directory), signer=signer, origin="cli.test/ledger")
    try:
        writer.commit([ReceivedBatch(GATEWAY_EVENTS_SOURCE, 1, [rules_event(1).SerializeToString()])])
        payloads = [
            decision(sequence, trace_id=f"trace-{sequence}",
                     rejected_with="MAX_ORDER_QTY_EXCEEDED" if sequence % 4 == 0 else None).SerializeToString()
            for sequence in range(1, DECISIONS + 1)
        ]
        writer.commit([ReceivedBatch(DECISIONS_SOURCE, DECISIONS, payloads)])
        fill = execution_event(2, client_order_id="cl-1", decision_sequence=1).SerializeToString()
        writer.commit([ReceivedBatch(GATEWAY_EVENTS_SOURCE, 2, [fill])])
        writer.checkpoint_if_due(now=True)
    finally:
        writer.close()
    return directory


def run(capsys, *arguments) -> tuple[int, str, str]:
    code = main(["ledger", *map(str, arguments)])
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def test_verify_reports_entries_and_root(data_dir, capsys):
    code, out, _ = run(capsys, "verify", "--data-dir", data_dir, "--json")
    report = json.loads(out)
    assert code == EXIT_OK
    assert report | {"root_hash": None} == {
        "ok": True, "from_index": 0, "entries_checked": DECISIONS + 2, "tree_size": DECISIONS + 2, "hash": "blake3",
        "checkpoints_checked": 1, "signatures_checked": True, "root_hash": None,
    }
    code, out, _ = run(capsys, "verify", "--data-dir", data_dir, "--from-sequence", 30)
    assert code == EXIT_OK and out.startswith(f"ok: {DECISIONS + 2 - 30} entries checked (from 30)")


def test_verify_names_the_first_bad_entry_and_fails(data_dir, capsys):
    with raw_ledger(ledger_path(data_dir)) as (txn, databases):
        entry = txn.get(key(17), db=databases["entries"])
        txn.put(key(17), entry[:-1] + bytes([entry[-1] ^ 1]), db=databases["entries"])
    code, out, _ = run(capsys, "verify", "--data-dir", data_dir)
    assert code == EXIT_VERIFICATION_FAILED
    assert out.startswith("FAILED at entry 17: stored leaf hash differs")
    code, out, _ = run(capsys, "verify", "--data-dir", data_dir, "--json")
    assert (code, json.loads(out)["index"], json.loads(out)["error"]) == (EXIT_VERIFICATION_FAILED, 17, "LeafHashMismatchError")


def test_proof_explain_and_trace(data_dir, capsys):
    code, out, _ = run(capsys, "proof", "--data-dir", data_dir, "--seq", 4)
    assert code == EXIT_OK and out.startswith("entry 4 (DECISION, rejected) in tree size 42 (blake3)")
    assert "— cli.test/ledger" in out  # the signed note
    code, out, _ = run(capsys, "explain", "--data-dir", data_dir, "--account", "ACC1", "--client-order-id", "cl-1")
    assert code == EXIT_OK
    assert "entry 1 accepted" in out and "entry 41 filled" in out and "(loaded from /etc/pretrade/rules.toml, entry 0)" in out
    code, out, _ = run(capsys, "explain", "--data-dir", data_dir, "--trace-id", "trace-4", "--json")
    (explanation,) = json.loads(out)
    failure = explanation["trail"][0]["entry"]["decision"]["failures"][0]
    assert (failure["code"], failure["limit"], failure["observed"]) == ("MAX_ORDER_QTY_EXCEEDED", "10", "100")


def moment(ns: int) -> str:
    """ISO-8601 (UTC, microseconds) of a Unix ns time, rounded down."""
    return (datetime.datetime(1970, 1, 1, tzinfo=datetime.UTC) + datetime.timedelta(microseconds=ns // 1_000)).isoformat()


def test_export_by_time_range_and_verify_pack(data_dir, tmp_path, capsys):
    pack = tmp_path / "pack.zip"
    code, out, _ = run(capsys, "export", "--data-dir", data_dir, "--from", moment(decision(10).decided_ns),
                       "--to", moment(decision(12).decided_ns), "--output", pack, "--json")
    summary = json.loads(out)
    assert code == EXIT_OK and (summary["first"], summary["last"]) == (10, 12)
    code, out, _ = run(capsys, "verify-pack", pack)
    assert code == EXIT_OK and "entries 10..12 (3)" in out and "the pack's own key" in out


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        (("verify", "--data-dir", "{missing}"), "no ledger in"),
        (("explain", "--data-dir", "{data}", "--account", "ACC1", "--client-order-id", "nope"), "no entry for account"),
        (("explain", "--data-dir", "{data}", "--account", "ACC1"), "explain needs"),
        (("proof", "--data-dir", "{data}", "--seq", "999"), "not in the ledger"),
        (("export", "--data-dir", "{data}", "--from", "5", "--to", "2"), "empty or reversed"),
        (("keygen", "--data-dir", "{data}"), "refusing to replace"),
        (("verify-pack", "{missing}"), None),
        (("proof", "--target", "127.0.0.1:1", "--seq", "1"), "needs a token"),
    ],
)
def test_errors_are_one_line(data_dir, tmp_path, capsys, monkeypatch, arguments, message):
    monkeypatch.delenv("PRETRADE_TOKEN", raising=False)
    filled = [argument.format(data=data_dir, missing=tmp_path / "missing") for argument in arguments]
    code, out, err = run(capsys, *filled)
    if message is None:  # verify-pack of a missing file: a failed verification, not an error
        assert code == EXIT_VERIFICATION_FAILED and out.startswith("FAILED: ")
        return
    assert code == EXIT_ERROR
    assert err.startswith("pretrade: error: ") and err.count("\n") == 1 and message in err, err


@pytest.mark.parametrize(
    ("flag", "environment", "expected"),
    [
        (None, None, 5.0),  # DEFAULT_HEALTH_INTERVAL_S
        (None, "0.5", 0.5),  # the environment variable is the default
        ("2", "0.5", 2.0),  # the flag wins
        ("0", None, 0.0),  # off
    ],
)
def test_run_takes_the_health_interval_from_the_flag_else_the_environment(tmp_path, capsys, monkeypatch, flag,
                                                                          environment, expected):
    import ledger.runtime
    from ledger.health import HEALTH_INTERVAL_ENV

    seen = {}

    class StoppingRuntime:
        def __init__(self, data_dir, **options) -> None:
            seen.update(options)
            raise LedgerCommandError("stopped by the test")

    monkeypatch.setattr(ledger.runtime, "LedgerRuntime", StoppingRuntime)
    if environment is None:
        monkeypatch.delenv(HEALTH_INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(HEALTH_INTERVAL_ENV, environment)
    arguments = ["run", "--data-dir", str(tmp_path)] + (["--health-interval", flag] if flag else [])
    code, _, err = run(capsys, *arguments)
    assert code == EXIT_ERROR and "stopped by the test" in err
    assert seen["health_interval_s"] == expected


@pytest.mark.parametrize(
    ("flag", "environment", "message"),
    [
        ("-1", None, "must be >= 0"),
        ("soon", None, "not a number of seconds"),
        (None, "soon", "PRETRADE_LEDGER_HEALTH_INTERVAL_S='soon'"),
    ],
)
def test_a_bad_health_interval_is_one_line(tmp_path, capsys, monkeypatch, flag, environment, message):
    from ledger.health import HEALTH_INTERVAL_ENV

    if environment is None:
        monkeypatch.delenv(HEALTH_INTERVAL_ENV, raising=False)
    else:
        monkeypatch.setenv(HEALTH_INTERVAL_ENV, environment)
    arguments = ["run", "--data-dir", str(tmp_path / "data")] + (["--health-interval", flag] if flag else [])
    code, out, err = run(capsys, *arguments)
    assert code == EXIT_ERROR
    assert err.count("\n") == 1 and message in err, err
    assert not (tmp_path / "data").exists()  # refused before opening anything


CLIENT_FLAGS = {"--target", "--token", "--tls-ca", "--tls-client-cert", "--tls-client-key"}


def _help_flags(capsys, subcommand) -> set[str]:
    code, out, _ = run(capsys, subcommand, "--help")
    assert code == EXIT_OK
    return set(re.findall(r"--[a-z][a-z-]*", out))


@pytest.mark.parametrize("subcommand", ["run", "keygen", "verify", "export", "verify-pack"])
def test_local_subcommands_offer_no_client_flags(capsys, subcommand):
    flags = _help_flags(capsys, subcommand)
    assert not flags & CLIENT_FLAGS, flags
    if subcommand == "run":  # its own server flags, for --listen
        assert {"--listen", "--tokens", "--tls-cert", "--tls-key", "--tls-client-ca"} <= flags, flags


def test_ledger_run_refuses_client_flags(tmp_path, capsys):
    code, _, err = run(capsys, "run", "--data-dir", tmp_path, "--tls-ca", tmp_path / "ca.pem")
    assert code == EXIT_ERROR
    assert err.count("\n") == 1 and "unrecognized arguments: --tls-ca" in err, err


def test_verify_pack_offers_no_data_dir(capsys):
    flags = _help_flags(capsys, "verify-pack")
    assert flags == {"--help", "--json", "--verifier-key"}, flags
    code, _, err = run(capsys, "verify-pack", "pack.zip", "--data-dir", "somewhere")
    assert code == EXIT_ERROR
    assert err.count("\n") == 1 and "unrecognized arguments: --data-dir" in err, err


@pytest.mark.parametrize("subcommand", ["proof", "explain"])
def test_remote_subcommands_keep_client_flags(capsys, subcommand):
    flags = _help_flags(capsys, subcommand)
    assert CLIENT_FLAGS <= flags, flags

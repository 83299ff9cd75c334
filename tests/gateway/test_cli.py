"""Tests of the ``pretrade`` command line: one-line errors and exit codes, the offline
subcommands, ``check`` against a real gateway, and ``up`` end to end in a subprocess
(banner, demo tokens, the printed first order, SIGHUP reload, SIGTERM shutdown)."""

from __future__ import annotations

import asyncio
import json
import os
import queue
import re
import shlex
import signal
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from clients import GatewayClient
from gateway.auth import TokenStore
from gateway.cli import EXIT_ERROR, EXIT_OK, EXIT_REJECTED, main
from tests.clients.gateway_harness import CHECKS_RULES, running_gateway, write_rules, write_up_watchdogs

pytestmark = pytest.mark.timeout(60)

REPO_ROOT = Path(__file__).resolve().parents[2]
EXAMPLE_RULES = REPO_ROOT / "examples" / "rules.toml"
UP_START_TIMEOUT_S = 30.0
UP_STOP_TIMEOUT_S = 20.0


def run(capsys, *argv: str) -> tuple[int, str, str]:
    code = main(list(argv))
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_error_line(err: str, *words: str) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for word in words:
        assert word in lines[0], (word, lines[0])


@pytest.mark.parametrize(
    "argv, words",
    [
        ((), ["required: COMMAND"]),
        (("launch",), ["invalid choice"]),
        (("check", "--account", "A"), ["--symbol", "pretrade check --help"]),
        (("rules",), ["required"]),
        (("serve", "--rules", "x.toml"), ["serve needs --tokens"]),
        (("token", "new", "--name", "x", "--roles", "king"), ["unknown role(s) king"]),
        (("token", "new", "--name", " ", "--roles", "trader"), ["--name"]),
        (("rules", "check", "/nonexistent/rules.toml"), ["/nonexistent/rules.toml", "cannot read"]),
        (("serve", "--rules", "r.toml", "--tokens", "t.toml", "--listen", "nowhere"), ["--listen", "host:port"]),
        (("serve", "--rules", "r.toml", "--tokens", "t.toml", "--gateway-id", "a.b"), ["--gateway-id"]),
        (("serve", "--rules", "r.toml", "--tokens", "t.toml", "--publish-linger-ms", "-1"), ["--publish-linger-ms"]),
        (("serve", "--rules", "r.toml", "--tokens", "t.toml", "--publish-linger-ms", "5000"), ["--publish-linger-ms"]),
    ],
)
def test_errors_are_one_line_with_exit_code_2(capsys, argv, words):
    code, out, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    assert_one_error_line(err, *words)


def test_help_exits_0(capsys):
    code, out, _ = run(capsys, "--help")
    assert code == EXIT_OK and "check" in out


def test_check_without_a_token(capsys, monkeypatch):
    monkeypatch.delenv("PRETRADE_TOKEN", raising=False)
    code, _, err = run(capsys, "check", "--account", "A", "--symbol", "S", "--side", "buy", "--qty", "1")
    assert code == EXIT_ERROR
    assert_one_error_line(err, "no token", "PRETRADE_TOKEN")


@pytest.mark.parametrize(
    "extra, words",
    [
        (("--qty", "1.2.3"), ["quantity", "not a number"]),
        (("--qty", "0.0000000001"), ["quantity", "more precision"]),
        (("--qty", "1", "--side", "up"), ["side", "unknown value 'up'"]),
        (("--qty", "1", "--type", "stop"), ["order_type", "unknown value 'stop'"]),
    ],
)
def test_check_refuses_values_it_cannot_represent(capsys, extra, words):
    argv = ["check", "--token", "pt_x", "--account", "A", "--symbol", "S", "--side", "buy", *extra]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    assert_one_error_line(err, *words)


def test_check_against_an_unreachable_gateway(capsys, tmp_path):
    import socket

    with socket.socket() as probe:
        probe.bind(("127.0.0.1", 0))
        port = probe.getsockname()[1]
    code, _, err = run(capsys, "check", "--target", f"127.0.0.1:{port}", "--token", "pt_x", "--account", "A",
                       "--symbol", "S", "--side", "buy", "--qty", "1", "--timeout", "3")
    assert code == EXIT_ERROR
    assert_one_error_line(err, "GatewayUnavailable")


def test_rules_check(capsys):
    code, out, _ = run(capsys, "rules", "check", str(EXAMPLE_RULES))
    assert code == EXIT_OK
    assert re.fullmatch(r".*rules\.toml: ok, version [0-9a-f]{64}: 3 accounts, 5 symbols, 2 strategies, "
                        r"3 restrictions\n", out)
    code, out, _ = run(capsys, "rules", "check", str(EXAMPLE_RULES), "--json")
    document = json.loads(out)
    assert (code, document["accounts"], document["symbols"]) == (EXIT_OK, 3, 5)


def test_rules_check_of_a_bad_file_names_file_and_key(capsys, tmp_path):
    bad = write_rules(tmp_path, CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = -3"))
    code, _, err = run(capsys, "rules", "check", str(bad))
    assert code == EXIT_ERROR
    assert_one_error_line(err, str(bad), "max_order_qty", "-3")


def test_token_new_prints_a_token_and_the_entry_that_admits_it(capsys, tmp_path):
    code, out, _ = run(capsys, "token", "new", "--name", "desk-7", "--roles", "trader,operator")
    assert code == EXIT_OK
    token = re.search(r"^token: (pt_\S+)$", out, re.M).group(1)
    entry = out[out.index("[[tokens]]"):]
    (tmp_path / "tokens.toml").write_text(entry)
    principal = TokenStore.load(tmp_path / "tokens.toml").authenticate(token)
    assert principal.name == "desk-7" and principal.roles == frozenset({"trader", "operator"})
    code, out, _ = run(capsys, "token", "new", "--name", "bot", "--roles", "admin", "--json")
    document = json.loads(out)
    (tmp_path / "bot.toml").write_text(document["entry"])
    bot = TokenStore.load(tmp_path / "bot.toml").authenticate(document["token"])
    assert bot.roles == frozenset({"admin"})


def test_up_with_a_bad_rules_file_fails_with_one_line(capsys, tmp_path):
    bad = write_rules(tmp_path, "[firm]\nname = 3\n")
    argv = ["up", "--rules", str(bad), "--data-dir", str(tmp_path / "data"), "--metrics-listen", "off",
            "--listen", "127.0.0.1:0", "--log-level", "ERROR"]
    code, _, err = run(capsys, *argv)
    assert code == EXIT_ERROR
    assert_one_error_line(err, str(bad))


@pytest.mark.integration
async def test_check_prints_the_decision_and_exits_by_verdict(tmp_path, capsys):
    async with running_gateway(tmp_path / "gw") as gateway:
        await gateway.set_reference_prices()
        base = ["check", "--target", gateway.target, "--token", gateway.tokens["trader"], "--account", "ACC1",
                "--symbol", "AAPL", "--side", "buy", "--price", "100"]
        code = await asyncio.to_thread(main, [*base, "--qty", "10", "--client-order-id", "cli-1"])
        out = capsys.readouterr().out
        assert code == EXIT_OK
        assert out.startswith("ACCEPT cli-1: ACC1 BUY 10 AAPL LIMIT @ 100  (seq=1 handle=")
        code = await asyncio.to_thread(main, [*base, "--qty", "5000"])
        out = capsys.readouterr().out
        assert code == EXIT_REJECTED
        assert out.startswith("REJECT ")
        assert "  MAX_ORDER_QTY_EXCEEDED: limit=1000 observed=5000  [firm.limits.max_order_qty]" in out
        code = await asyncio.to_thread(main, [*base, "--qty", "5000", "--json"])
        document = json.loads(capsys.readouterr().out)
        assert code == EXIT_REJECTED and document["verdict"] == "VERDICT_REJECT"
        code = await asyncio.to_thread(main, [*base, "--qty", "1", "--token", gateway.tokens["alice"]])
        assert code == EXIT_ERROR
        assert_one_error_line(capsys.readouterr().err, "PermissionDenied")


# -- `pretrade up` end to end ----------------------------------------------------------------


class UpProcess:
    """``pretrade up`` in a subprocess, its stdout read line by line by a thread."""

    def __init__(self, argv: list[str], stderr_path: Path) -> None:
        self._stderr = open(stderr_path, "wb")  # noqa: SIM115 (closed in stop)
        self.process = subprocess.Popen(
            [sys.executable, "-m", "gateway.cli", *argv],
            cwd=REPO_ROOT,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            text=True,
        )
        self.lines: queue.Queue[str | None] = queue.Queue()
        threading.Thread(target=self._pump, daemon=True).start()

    def _pump(self) -> None:
        for line in self.process.stdout:
            self.lines.put(line.rstrip("\n"))
        self.lines.put(None)

    def read_until(self, marker: str, timeout_s: float) -> list[str]:
        deadline = time.monotonic() + timeout_s
        seen = []
        while True:
            line = self.lines.get(timeout=max(0.0, deadline - time.monotonic()))
            assert line is not None, f"pretrade up exited early: {seen}"
            seen.append(line)
            if marker in line:
                return seen

    def stop(self, timeout_s: float) -> int:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            return self.process.wait(timeout_s)
        finally:
            if self.process.poll() is None:
                self.process.kill()
                self.process.wait()
            self.process.stdout.close()
            self._stderr.close()


@pytest.mark.integration
def test_up_runs_the_whole_system_and_the_printed_first_order_works(tmp_path, capsys):
    rules = write_rules(tmp_path, EXAMPLE_RULES.read_text())
    data_dir = tmp_path / "data"
    up = UpProcess(["up", "--rules", str(rules), "--data-dir", str(data_dir), "--listen", "127.0.0.1:0",
                    "--metrics-listen", "127.0.0.1:0", "--watchdogs", str(write_up_watchdogs(tmp_path))],
                   tmp_path / "up.stderr")
    try:
        banner = up.read_until("Ctrl-C stops", UP_START_TIMEOUT_S)
        text = "\n".join(banner)
        target = re.search(r"listening on (\S+)", text).group(1)
        assert f"tokens   {data_dir / 'demo-tokens.txt'}" in text
        assert "demo tokens are not for production" in text
        assert oct((data_dir / "demo-tokens.txt").stat().st_mode & 0o777) == "0o600"
        check_line = next(line.strip() for line in banner if line.strip().startswith("pretrade check "))
        grpcurl_line = next(line.strip() for line in banner if line.strip().startswith("grpcurl "))
        assert f"{target} pretrade.v1.GatewayService/CheckOrder" in grpcurl_line

        code = main(shlex.split(check_line)[1:])
        assert code == EXIT_OK, capsys.readouterr()
        assert capsys.readouterr().out.startswith("ACCEPT ")

        admin_token = next(line.split()[2] for line in (data_dir / "demo-tokens.txt").read_text().splitlines()
                           if line.startswith("admin "))
        with GatewayClient(target, admin_token) as admin:
            before = admin.get_status().rules_version
            rules.write_text(rules.read_text().replace("max_order_qty = 10_000", "max_order_qty = 9_000"))
            up.process.send_signal(signal.SIGHUP)
            deadline = time.monotonic() + 10
            while admin.get_status().rules_version == before:
                assert time.monotonic() < deadline, "SIGHUP did not reload the rules"
                time.sleep(0.05)
    finally:
        exit_code = up.stop(UP_STOP_TIMEOUT_S)
    assert exit_code == EXIT_OK, (tmp_path / "up.stderr").read_text()
    assert "Traceback" not in (tmp_path / "up.stderr").read_text()
    assert not list((data_dir / "nats").glob("*.ports")) and (data_dir / "outbox").is_dir()
    assert os.path.exists(data_dir / "demo-tokens.toml")

"""``pretrade ledger run --listen --tokens FILE``: SIGHUP reloads the token file, so a
revoked token is refused without a restart, and a bad file changes nothing (one ERROR
line in the log, and ``pretrade_ledger_token_reloads_total{outcome="failed"}`` on its
/metrics). A real ``ledger run`` process on a real nats-server, called over loopback by
``pretrade ledger proof --target`` and scraped over HTTP."""

from __future__ import annotations

import asyncio
import signal

import pytest

from gateway.auth import DEMO_PRINCIPALS, ensure_demo_tokens, token_entry_toml
from ledger.cli import EXIT_ERROR, EXIT_OK
from tests.ledger.test_cli import data_dir, run  # noqa: F401 - data_dir is a fixture: a signed ledger
from tests.ledger.test_metrics import LedgerProcess, scrape, scrape_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(120)]

#: How long the test waits for a SIGHUP to take effect, seconds.
RELOAD_WAIT_S = 10.0


def write_tokens(path, tokens: dict[str, str], *, without: str) -> None:
    path.write_text("\n".join(token_entry_toml(name, roles, tokens[name])
                              for name, roles in DEMO_PRINCIPALS if name != without))


async def listening_ledger(ledger_dir, nats_server, token_file, metrics_listen: str):
    """A started ``ledger run --listen`` whose token file holds every demo principal, and
    their tokens."""
    tokens = ensure_demo_tokens(ledger_dir).tokens
    write_tokens(token_file, tokens, without="nobody")
    process = LedgerProcess(ledger_dir, nats_server.url, "--origin", "cli.test/ledger", "--listen", "127.0.0.1:0",
                            "--metrics-listen", metrics_listen, "--tokens", str(token_file))
    await process.start()
    return process, tokens


async def test_sighup_reloads_the_token_file_of_ledger_run_listen(data_dir, nats_server, capsys,  # noqa: F811
                                                                  tmp_path):
    token_file = tmp_path / "tokens.toml"
    process, tokens = await listening_ledger(data_dir, nats_server, token_file, "off")

    def proof(name: str) -> tuple[int, str]:
        code, _, err = run(capsys, "proof", "--target", process.info["listen"], "--token", tokens[name], "--seq", "3")
        return code, err

    try:
        assert proof("trader") == (EXIT_OK, "")
        token_file.write_text(token_file.read_text() + '\n[[tokens]]\nname = "x"\nroles = []\nsha256 = ""\n')
        process.process.send_signal(signal.SIGHUP)  # a bad file: the tokens in force stay
        deadline = asyncio.get_running_loop().time() + RELOAD_WAIT_S
        while "token reload failed" not in process.stderr_path.read_text():
            assert asyncio.get_running_loop().time() < deadline, "SIGHUP did not reload the token file"
            await asyncio.sleep(0.05)
        assert proof("trader") == (EXIT_OK, "")
        write_tokens(token_file, tokens, without="trader")
        process.process.send_signal(signal.SIGHUP)
        deadline = asyncio.get_running_loop().time() + RELOAD_WAIT_S
        while (outcome := proof("trader"))[0] == EXIT_OK:
            assert asyncio.get_running_loop().time() < deadline, "SIGHUP did not revoke the token"
            await asyncio.sleep(0.05)
        assert outcome[0] == EXIT_ERROR and "Unauthenticated" in outcome[1], outcome
        assert proof("admin") == (EXIT_OK, "")
    finally:
        assert await process.stop() == EXIT_OK
    assert "Traceback" not in process.stderr_path.read_text()
    errors = [line for line in process.stderr_path.read_text().splitlines() if " ERROR " in line]
    assert len(errors) == 1 and str(token_file) in errors[0] and "tokens[" in errors[0], errors


async def test_ledger_run_listen_exports_its_token_reloads(data_dir, nats_server, tmp_path):  # noqa: F811
    token_file = tmp_path / "tokens.toml"
    process, tokens = await listening_ledger(data_dir, nats_server, token_file, "127.0.0.1:0")
    ok, failed = 'pretrade_ledger_token_reloads_total{outcome="ok"}', 'pretrade_ledger_token_reloads_total{outcome="failed"}'
    last_success = "pretrade_ledger_token_last_reload_success_timestamp_seconds"
    in_force = "pretrade_ledger_tokens_in_force"
    url = process.info["metrics"]
    try:
        before = await scrape(url)
        assert (before[ok], before[failed], before[last_success]) == (0, 0, 0)
        assert before[in_force] == len(DEMO_PRINCIPALS)
        token_file.write_text(token_file.read_text() + '\n[[tokens]]\nname = "x"\nroles = []\nsha256 = ""\n')
        process.process.send_signal(signal.SIGHUP)  # a bad file: counted, the tokens in force stay
        after_failure = await scrape_until(url, {failed: 1}, RELOAD_WAIT_S)
        assert (after_failure[ok], after_failure[failed], after_failure[last_success]) == (0, 1, 0)
        assert after_failure[in_force] == len(DEMO_PRINCIPALS)
        write_tokens(token_file, tokens, without="trader")
        process.process.send_signal(signal.SIGHUP)
        after_success = await scrape_until(url, {ok: 1}, RELOAD_WAIT_S)
        assert (after_success[ok], after_success[failed]) == (1, 1)
        assert after_success[last_success] > 0
        assert after_success[in_force] == len(DEMO_PRINCIPALS) - 1
    finally:
        assert await process.stop() == EXIT_OK

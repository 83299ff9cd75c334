"""Reloads on the gateway's /metrics: rules reloads (AdminService.ReloadRules, SIGHUP) and
token reloads (SIGHUP) counted by outcome, the time of the last one that took effect (which a
failed one does not move), the rules version, tokens and authenticated streams in force, and
the streams a token reload ended by status code. A failed reload keeps the old rules or
tokens in force, so an alert on these counters is how an operator learns of it. A real
gateway (GatewayApp, demo token file) with a real nats-server, scraped over HTTP."""

from __future__ import annotations

import os
import signal

import pytest

from clients import PermissionDenied, RulesRejected, Unauthenticated
from tests.clients.gateway_harness import CHECKS_RULES, write_rules
from tests.gateway.test_token_reload import OpenStream, demo_roles_without, order, write_token_file
from tests.ledger.test_metrics import scrape, scrape_until

pytestmark = [pytest.mark.integration, pytest.mark.timeout(60)]

RULES_OK = 'pretrade_rules_reloads_total{outcome="ok"}'
RULES_FAILED = 'pretrade_rules_reloads_total{outcome="failed"}'
RULES_LAST_SUCCESS = "pretrade_rules_last_reload_success_timestamp_seconds"
TOKENS_OK = 'pretrade_token_reloads_total{outcome="ok"}'
TOKENS_FAILED = 'pretrade_token_reloads_total{outcome="failed"}'
TOKENS_LAST_SUCCESS = "pretrade_token_last_reload_success_timestamp_seconds"
TOKENS_IN_FORCE = "pretrade_tokens_in_force"
ENDED_UNAUTHENTICATED = 'pretrade_token_reload_ended_streams_total{code="UNAUTHENTICATED"}'
ENDED_PERMISSION_DENIED = 'pretrade_token_reload_ended_streams_total{code="PERMISSION_DENIED"}'
AUTHENTICATED_STREAMS = "pretrade_authenticated_streams"
#: How long a test waits for a SIGHUP to show on /metrics, seconds.
SIGHUP_WAIT_S = 10.0


def metrics_url(gateway) -> str:
    return f"http://127.0.0.1:{gateway.app.metrics_port}/metrics"


def rules_version(values: dict[str, float]) -> str:
    """The ``version`` label of the one ``pretrade_rules_info`` sample."""
    (name,) = [name for name in values if name.startswith("pretrade_rules_info{")]
    assert values[name] == 1.0
    return name.split('version="', 1)[1].rstrip('"}')


def broken_rules_text() -> str:
    return CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = -3")


async def test_reload_rules_is_counted_by_outcome_and_a_failure_keeps_the_version_and_time(gateway, tmp_path):
    looser = write_rules(tmp_path, CHECKS_RULES.replace("max_order_qty = 1_000", "max_order_qty = 2_000"), "looser.toml")
    broken = write_rules(tmp_path, broken_rules_text(), "broken.toml")
    url = metrics_url(gateway)
    before = await scrape(url)
    assert (before[RULES_OK], before[RULES_FAILED], before[RULES_LAST_SUCCESS]) == (0, 0, 0)
    assert rules_version(before) == gateway.app.engine.version
    async with gateway.client("admin") as admin:
        reloaded = await admin.reload_rules(str(looser))
        after_ok = await scrape(url)
        assert (after_ok[RULES_OK], after_ok[RULES_FAILED]) == (1, 0)
        assert after_ok[RULES_LAST_SUCCESS] > 0
        assert rules_version(after_ok) == reloaded.rules_version != rules_version(before)
        with pytest.raises(RulesRejected):
            await admin.reload_rules(str(broken))
    after_failure = await scrape(url)
    assert (after_failure[RULES_OK], after_failure[RULES_FAILED]) == (1, 1)
    assert after_failure[RULES_LAST_SUCCESS] == after_ok[RULES_LAST_SUCCESS]
    assert rules_version(after_failure) == reloaded.rules_version


async def test_sighup_with_a_broken_rules_file_counts_a_failed_rules_reload_and_a_good_token_reload(gateway):
    gateway.app.install_signal_handlers()
    url = metrics_url(gateway)
    before = await scrape(url)
    with open(gateway.app.config.rules_path, "w", encoding="utf-8") as handle:
        handle.write(broken_rules_text())
    os.kill(os.getpid(), signal.SIGHUP)
    after = await scrape_until(url, {RULES_FAILED: 1, TOKENS_OK: 1}, SIGHUP_WAIT_S)
    assert (after[RULES_OK], after[RULES_FAILED]) == (0, 1)
    assert after[RULES_LAST_SUCCESS] == 0
    assert rules_version(after) == rules_version(before) == gateway.app.engine.version
    assert (after[TOKENS_OK], after[TOKENS_FAILED]) == (1, 0)


async def test_a_token_reload_is_counted_and_the_tokens_in_force_follow_the_file(gateway):
    url = metrics_url(gateway)
    before = await scrape(url)
    assert (before[TOKENS_OK], before[TOKENS_FAILED], before[TOKENS_LAST_SUCCESS]) == (0, 0, 0)
    assert before[TOKENS_IN_FORCE] == len(gateway.tokens)
    write_token_file(gateway, demo_roles_without("trader"))
    assert await gateway.app.reload_tokens()
    after = await scrape(url)
    assert (after[TOKENS_OK], after[TOKENS_FAILED]) == (1, 0)
    assert after[TOKENS_LAST_SUCCESS] > 0
    assert after[TOKENS_IN_FORCE] == len(gateway.tokens) - 1


async def test_a_failed_token_reload_is_counted_and_changes_nothing_else(gateway):
    url = metrics_url(gateway)
    write_token_file(gateway, demo_roles_without("bob"))
    assert await gateway.app.reload_tokens()
    before = await scrape(url)
    write_token_file(gateway, demo_roles_without("bob", "trader"))
    with open(gateway.app.config.tokens_path, "a", encoding="utf-8") as handle:
        handle.write('\n[[tokens]]\nname = "broken"\nroles = ["trader"]\nsha256 = "xyz"\n')
    assert not await gateway.app.reload_tokens()
    after = await scrape(url)
    assert (before[TOKENS_OK], before[TOKENS_FAILED]) == (1, 0)
    assert (after[TOKENS_OK], after[TOKENS_FAILED]) == (1, 1)
    assert after[TOKENS_LAST_SUCCESS] == before[TOKENS_LAST_SUCCESS] > 0
    assert after[TOKENS_IN_FORCE] == before[TOKENS_IN_FORCE] == len(gateway.tokens) - 1


async def test_streams_ended_by_a_token_reload_are_counted_by_status_code(gateway):
    url = metrics_url(gateway)
    async with gateway.client("trader") as trader, gateway.client("admin") as admin:
        revoked, demoted = OpenStream(trader), OpenStream(admin)
        await revoked.send(1, order("e1"))
        await demoted.send(1, order("e2", "100.01"))
        before = await scrape(url)
        assert before[AUTHENTICATED_STREAMS] == 2
        assert (before[ENDED_UNAUTHENTICATED], before[ENDED_PERMISSION_DENIED]) == (0, 0)
        write_token_file(gateway, {**demo_roles_without("trader"), "admin": ("operator",)})
        assert await gateway.app.reload_tokens()
        await revoked.ended_with(Unauthenticated)
        await demoted.ended_with(PermissionDenied)
        after = await scrape(url)
    assert (after[ENDED_UNAUTHENTICATED], after[ENDED_PERMISSION_DENIED]) == (1, 1)
    assert after[AUTHENTICATED_STREAMS] == 0


async def test_authenticated_streams_count_the_open_streams(gateway):
    url = metrics_url(gateway)
    assert (await scrape(url))[AUTHENTICATED_STREAMS] == 0
    async with gateway.client("trader") as trader:
        stream = OpenStream(trader)
        await stream.send(1, order("o1"))
        assert (await scrape(url))[AUTHENTICATED_STREAMS] == 1
        await stream._requests.put(None)
        assert [response async for response in stream.responses] == []
    assert (await scrape_until(url, {AUTHENTICATED_STREAMS: 0}, SIGHUP_WAIT_S))[AUTHENTICATED_STREAMS] == 0
    assert gateway.app.auth.open_streams == 0

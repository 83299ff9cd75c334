"""Asyncio helpers every long-running component shares."""

from __future__ import annotations

import asyncio

#: Seconds between deliveries of a cancellation to a task that has not ended yet.
CANCEL_REDELIVERY_INTERVAL_S = 0.2


async def cancel_until_done(tasks: list[asyncio.Task]) -> None:
    """Cancel ``tasks`` and wait until every one has ended.

    Cancelling once is not enough on Python 3.11: ``asyncio.wait_for`` (used inside nats-py,
    e.g. by JetStream API requests) swallows a cancellation that arrives as its inner
    future completes, and the task carries on (fixed in Python 3.12). So a task still
    running after a short wait gets the cancellation again until it ends.
    """
    pending = set(tasks)
    while pending:
        for task in pending:
            task.cancel()
        _, pending = await asyncio.wait(pending, timeout=CANCEL_REDELIVERY_INTERVAL_S)
    for task in tasks:
        if not task.cancelled():
            task.exception()  # retrieved: failures were already reported where they happened

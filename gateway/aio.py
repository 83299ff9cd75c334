"""Asyncio helpers every long-running component shares."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

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


async def wait_until(condition: Callable[[], bool], changed: Callable[[], asyncio.Event], timeout_s: float) -> bool:
    """Wait until ``condition()`` holds; False if it still does not after ``timeout_s``.

    ``changed()`` is the event the watched state sets at its next change (the state then
    replaces it with a fresh one), so every wake-up checks the condition again and a change
    between the check and the wait is not missed. The deadline is a timer that sets the
    same event (a waiter it wakes early only checks again), not an ``asyncio.wait_for`` task
    per wait.
    """
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        remaining = deadline - loop.time()
        if remaining <= 0:
            return False
        event = changed()
        timer = loop.call_later(remaining, event.set)
        try:
            await event.wait()
        finally:
            timer.cancel()
    return True

"""cancel_until_done ends tasks even when one swallows a cancellation (as asyncio.wait_for
can on Python 3.11 when its inner future completes at the same moment)."""

import asyncio

import pytest

from gateway.aio import cancel_until_done

pytestmark = pytest.mark.timeout(10)


async def test_a_task_that_swallows_one_cancellation_still_ends():
    swallowed = 0

    async def stubborn():
        nonlocal swallowed
        while True:
            try:
                await asyncio.sleep(3600)
            except asyncio.CancelledError:
                if swallowed == 0:
                    swallowed += 1
                    continue  # the first cancellation is lost, like inside wait_for
                raise

    task = asyncio.create_task(stubborn())
    plain = asyncio.create_task(asyncio.sleep(3600))
    await asyncio.sleep(0)
    await cancel_until_done([task, plain])
    assert task.cancelled() and plain.cancelled() and swallowed == 1


async def test_finished_and_failed_tasks_are_fine():
    async def fails():
        raise RuntimeError("reported elsewhere")

    done = asyncio.create_task(asyncio.sleep(0))
    failed = asyncio.create_task(fails())
    await asyncio.sleep(0.01)
    await cancel_until_done([done, failed])
    assert done.done() and isinstance(failed.exception(), RuntimeError)

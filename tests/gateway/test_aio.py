"""cancel_until_done ends tasks even when one swallows a cancellation (as asyncio.wait_for
can on Python 3.11 when its inner future completes at the same moment); wait_until wakes
at each change of the watched state and gives up at its deadline."""

import asyncio

import pytest

from gateway.aio import cancel_until_done, wait_until

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


class Counter:
    """Watched state as the halt follower and manager keep it: a value and the event its
    next change sets (replaced after each change)."""

    def __init__(self) -> None:
        self.value = 0
        self.changed = asyncio.Event()

    def bump(self) -> None:
        self.value += 1
        self.changed.set()
        self.changed = asyncio.Event()


async def test_wait_until_returns_once_a_change_makes_the_condition_true():
    counter = Counter()
    waiter = asyncio.create_task(wait_until(lambda: counter.value >= 3, lambda: counter.changed, 5))
    for _ in range(2):
        await asyncio.sleep(0.01)
        counter.bump()
        await asyncio.sleep(0.01)
        assert not waiter.done()  # woke, checked again, still waiting
    counter.bump()
    assert await asyncio.wait_for(waiter, 1) is True


async def test_wait_until_gives_up_at_its_deadline_and_is_true_at_once_when_already_true():
    counter = Counter()
    assert await wait_until(lambda: counter.value >= 1, lambda: counter.changed, 0.05) is False
    counter.bump()
    assert await wait_until(lambda: counter.value >= 1, lambda: counter.changed, 0) is True

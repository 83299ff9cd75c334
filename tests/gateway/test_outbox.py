"""DecisionOutbox: ordering, contiguous sequences, removal, reopen, single writer, crash safety."""

from __future__ import annotations

import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from gateway.outbox import (
    DecisionOutbox,
    OutboxError,
    OutboxFullError,
    OutboxLockedError,
    OutboxSequenceError,
)

pytestmark = pytest.mark.timeout(30)

REPO_ROOT = Path(__file__).resolve().parents[2]


def test_new_outbox_is_empty(outbox):
    assert outbox.last_sequence == 0
    assert outbox.depth == 0
    assert outbox.pending(0, 10) == []
    assert outbox.oldest_appended_ns() is None


def test_append_then_pending_in_sequence_order(outbox):
    outbox.append([(1, b"one"), (2, b"two")])
    outbox.append([(3, b"three")])
    assert outbox.last_sequence == 3
    assert outbox.depth == 3
    assert outbox.pending(0, 10) == [(1, b"one"), (2, b"two"), (3, b"three")]
    assert outbox.pending(1, 1) == [(2, b"two")]
    assert outbox.pending(3, 10) == []


def test_empty_append_is_a_no_op(outbox):
    outbox.append([])
    assert outbox.last_sequence == 0


@pytest.mark.parametrize(
    "batch",
    [
        [(2, b"gap")],  # must start at last_sequence + 1
        [(1, b"a"), (3, b"gap")],
        [(1, b"a"), (1, b"again")],
        [(0, b"zero")],
    ],
)
def test_non_contiguous_sequences_are_refused_and_nothing_is_written(outbox, batch):
    with pytest.raises(OutboxSequenceError):
        outbox.append(batch)
    assert outbox.last_sequence == 0
    assert outbox.depth == 0


def test_remove_through_deletes_the_acked_prefix_only(outbox):
    outbox.append([(seq, b"d%d" % seq) for seq in range(1, 6)])
    assert outbox.remove_through(3) == 3
    assert outbox.depth == 2
    assert outbox.pending(0, 10) == [(4, b"d4"), (5, b"d5")]
    assert outbox.remove_through(3) == 0
    assert outbox.remove_through(-1) == 0
    assert outbox.pending(-5, 1) == [(4, b"d4")]
    assert outbox.remove_through(100) == 2
    assert outbox.depth == 0
    assert outbox.last_sequence == 5  # the sequence outlives the entries


def test_reopen_keeps_last_sequence_and_pending_entries(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        box.append([(1, b"a"), (2, b"b"), (3, b"c")])
        box.remove_through(2)
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 3
        assert box.pending(0, 10) == [(3, b"c")]
        box.append([(4, b"d")])  # continues the sequence
        box.remove_through(4)
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 4
        assert box.depth == 0


def test_oldest_appended_ns_is_the_append_time_of_the_head(outbox):
    before = time.time_ns()
    outbox.append([(1, b"a")])
    after = time.time_ns()
    oldest = outbox.oldest_appended_ns()
    assert oldest is not None and before <= oldest <= after
    outbox.append([(2, b"b")])
    assert outbox.oldest_appended_ns() == oldest
    outbox.remove_through(2)
    assert outbox.oldest_appended_ns() is None


def test_second_writer_is_refused_until_the_first_closes(tmp_path):
    path = tmp_path / "outbox"
    first = DecisionOutbox(path)
    with pytest.raises(OutboxLockedError):
        DecisionOutbox(path)
    first.close()
    DecisionOutbox(path).close()


def test_full_outbox_raises_outbox_full_and_keeps_what_it_has(tmp_path):
    with DecisionOutbox(tmp_path / "outbox", map_size_bytes=256 * 1024) as box:
        sequence = 0
        with pytest.raises(OutboxFullError):
            for _ in range(10_000):
                box.append([(sequence + 1, b"x" * 1000)])
                sequence += 1
        assert box.last_sequence == sequence
        assert box.depth == sequence
        box.remove_through(sequence)  # draining makes room again
        box.append([(sequence + 1, b"after drain")])


def test_unusable_path_raises_outbox_error(tmp_path):
    not_a_dir = tmp_path / "file"
    not_a_dir.write_text("x")
    with pytest.raises(OutboxError):
        DecisionOutbox(not_a_dir)


def test_close_is_idempotent_and_syncs(tmp_path):
    box = DecisionOutbox(tmp_path / "outbox")
    box.append([(1, b"a")])
    box.sync()
    box.close()
    box.close()


def test_appended_entries_survive_sigkill_of_the_writer(tmp_path):
    """Commit without fsync is in the page cache: a killed process loses nothing."""
    path = tmp_path / "outbox"
    child = textwrap.dedent(
        f"""
        import os
        from gateway.outbox import DecisionOutbox
        box = DecisionOutbox({str(path)!r})
        for first in range(1, 1001, 10):
            box.append([(seq, b"decision-%d" % seq) for seq in range(first, first + 10)])
        os.kill(os.getpid(), 9)
        """
    )
    result = subprocess.run([sys.executable, "-c", child], cwd=REPO_ROOT, timeout=20, capture_output=True)
    assert result.returncode == -signal.SIGKILL, result.stderr.decode()
    with DecisionOutbox(path) as box:  # the lock died with the process
        assert box.last_sequence == 1000
        assert box.pending(0, 2000) == [(seq, b"decision-%d" % seq) for seq in range(1, 1001)]

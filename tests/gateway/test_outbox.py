"""DecisionOutbox: ordering, contiguous sequences, removal, reopen, single writer, crash safety,
segments, recovery of torn tails, reboots, migration from LMDB."""

from __future__ import annotations

import os
import signal
import struct
import subprocess
import sys
import textwrap
import threading
import time
from pathlib import Path

import lmdb
import pytest

from gateway.outbox import (
    DEFAULT_OUTBOX_MAP_SIZE_BYTES,
    DEFAULT_OUTBOX_SEGMENT_BYTES,
    DecisionOutbox,
    OutboxError,
    OutboxFullError,
    OutboxLockedError,
    OutboxSequenceError,
    segment_bytes_for,
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


# --------------------------------------------------------------------------- segment log

SMALL_MAP_BYTES = 256 * 1024  # segments of 64 KiB (segment_bytes_for), at most 4 of them
SEGMENT_HEADER_BYTES = 64
RECORD_HEADER = struct.Struct("<IIQQ")  # size (commit word), size copy, sequence, appended ns


def segment_files(path: Path) -> list[Path]:
    return sorted(path.glob("*.seg"))


def record_offsets(payload_sizes: list[int]) -> list[int]:
    """Offsets of consecutive records with these payload sizes at the start of a segment."""
    offsets, offset = [], SEGMENT_HEADER_BYTES
    for size in payload_sizes:
        offsets.append(offset)
        offset = (offset + RECORD_HEADER.size + size + 7) & -8
    return offsets


def patch_file(path: Path, offset: int, data: bytes) -> None:
    with open(path, "r+b") as file:
        file.seek(offset)
        file.write(data)


def read_state(path: Path) -> tuple[int, int, bytes]:
    """(acked, synced, boot id) of an outbox's state file."""
    _, acked, synced, boot_id = struct.unpack_from("<8sQQ16s", (path / "state").read_bytes())
    return acked, synced, boot_id


def test_segment_size_follows_the_map_size():
    assert segment_bytes_for(SMALL_MAP_BYTES) == 64 * 1024
    assert segment_bytes_for(DEFAULT_OUTBOX_MAP_SIZE_BYTES) == DEFAULT_OUTBOX_SEGMENT_BYTES


def test_appends_roll_over_to_new_segments_and_read_back_across_them(tmp_path):
    path = tmp_path / "outbox"
    payloads = {seq: b"%d:" % seq + b"x" * 900 for seq in range(1, 151)}
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        for seq in range(1, 101):
            box.append([(seq, payloads[seq])])
        box.append([(seq, payloads[seq]) for seq in range(101, 151)])  # one batch across a boundary
        files = segment_files(path)
        assert len(files) == 3
        assert files[0].name == f"{1:020d}.seg"
        assert all(file.stat().st_size == segment_bytes_for(SMALL_MAP_BYTES) for file in files)
        assert box.pending(0, 1000) == sorted(payloads.items())
        assert box.pending(60, 3) == [(seq, payloads[seq]) for seq in (61, 62, 63)]
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.last_sequence == 150
        assert box.depth == 150
        assert box.pending(0, 1000) == sorted(payloads.items())


def test_remove_through_deletes_segments_once_all_their_entries_are_removed(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        for seq in range(1, 181):
            box.append([(seq, b"x" * 1000)])
        files = segment_files(path)
        assert len(files) == 3
        second_first = int(files[1].stem)
        box.remove_through(second_first - 2)  # the first segment still holds one entry
        assert segment_files(path) == files
        box.remove_through(second_first - 1)
        assert segment_files(path) == files[1:]
        assert box.oldest_appended_ns() is not None
        assert box.pending(0, 1) == [(second_first, b"x" * 1000)]
        assert box.remove_through(1000) == 180 - second_first + 1
        assert segment_files(path) == files[2:]  # the segment being written stays
        assert box.depth == 0
        assert box.oldest_appended_ns() is None


def test_last_sequence_survives_removing_everything_across_segments(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        for seq in range(1, 64 * 3):
            box.append([(seq, b"x" * 1000)])
        box.remove_through(box.last_sequence)
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.last_sequence == 64 * 3 - 1
        assert box.depth == 0
        assert box.pending(0, 10) == []
        box.append([(64 * 3, b"next")])
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.pending(0, 10) == [(64 * 3, b"next")]


def test_last_sequence_survives_when_the_newest_segment_is_empty(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        sequence = 0
        while len(segment_files(path)) < 2:
            sequence += 1
            box.append([(sequence, b"x" * 1000)])
        box.remove_through(sequence)
    # Leave only an empty newest segment: its name carries the sequence.
    newest_first = sequence + 1
    files = segment_files(path)
    files[-1].unlink()
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.last_sequence == sequence  # from `acked`
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        box.append([(newest_first, b"a")])
        assert box.last_sequence == newest_first


def test_full_refuses_a_whole_batch_then_accepts_after_removal(tmp_path):
    with DecisionOutbox(tmp_path / "outbox", map_size_bytes=SMALL_MAP_BYTES) as box:
        sequence = 0
        with pytest.raises(OutboxFullError):
            while True:
                box.append([(seq, b"x" * 1000) for seq in range(sequence + 1, sequence + 11)])
                sequence += 10
        assert box.last_sequence == sequence  # nothing of the refused batch
        assert box.depth == sequence
        assert [seq for seq, _ in box.pending(0, 10_000)] == list(range(1, sequence + 1))
        box.remove_through(sequence // 2)  # frees the oldest segment
        box.append([(seq, b"y" * 1000) for seq in range(sequence + 1, sequence + 11)])
        box.remove_through(box.last_sequence)
        box.append([(seq, b"y" * 1000) for seq in range(box.last_sequence + 1, box.last_sequence + 61)])
        assert box.depth == 60


def test_an_entry_larger_than_a_segment_is_refused(tmp_path):
    with DecisionOutbox(tmp_path / "outbox", map_size_bytes=SMALL_MAP_BYTES) as box:
        with pytest.raises(OutboxError):
            box.append([(1, b"x" * (64 * 1024))])
        assert box.last_sequence == 0
        box.append([(1, b"fits")])


def test_map_size_below_the_minimum_is_refused(tmp_path):
    with pytest.raises(OutboxError):
        DecisionOutbox(tmp_path / "outbox", map_size_bytes=1024)


def test_recovery_ignores_a_torn_tail_and_zeroes_it(tmp_path):
    """A process killed mid-append leaves a body without its commit word, or garbage."""
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        box.append([(seq, b"%016d" % seq) for seq in range(1, 6)])
    (segment,) = segment_files(path)
    tail = record_offsets([16] * 6)[5]
    # Record 6 written but not committed, then garbage further on.
    patch_file(segment, tail + 4, struct.pack("<IQQ", 40, 6, time.time_ns()) + b"partial!")
    patch_file(segment, tail + 4096, os.urandom(100))
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 5
        assert box.pending(4, 10) == [(5, b"%016d" % 5)]
        box.append([(6, b"six")])
    data = segment.read_bytes()
    assert data[record_offsets([16] * 5 + [3])[-1] + 32 :].strip(b"\0") == b""  # zeroed
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 6
        assert box.pending(5, 10) == [(6, b"six")]


def test_an_interrupted_batch_is_not_recovered_at_all(tmp_path):
    """The first record of a batch is committed last: without it no record of the batch
    counts, and the zeroed tail keeps the others from resurfacing later."""
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        box.append([(seq, b"%016d" % seq) for seq in range(1, 4)])
        box.append([(seq, b"%016d" % seq) for seq in range(4, 8)])
    (segment,) = segment_files(path)
    patch_file(segment, record_offsets([16] * 4)[3], b"\0\0\0\0")  # 4's commit word
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 3
        box.append([(4, b"%016d" % 44)])  # same size: old 5 would follow it exactly
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 4
        assert box.pending(0, 10)[-1] == (4, b"%016d" % 44)


@pytest.mark.parametrize(
    "corruption",
    [
        lambda size, seq: struct.pack("<II", size, size + 8),  # the two size words disagree
        lambda size, seq: struct.pack("<IIQ", size, size, seq + 1),  # not the expected sequence
        lambda size, seq: struct.pack("<II", 1 << 30, 1 << 30),  # beyond the segment
    ],
)
def test_a_corrupt_record_in_the_middle_ends_recovery_there(tmp_path, corruption):
    path = tmp_path / "outbox"
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        for seq in range(1, 151):  # three segments
            box.append([(seq, b"x" * 1000)])
    files = segment_files(path)
    patch_file(files[0], record_offsets([1000] * 11)[10], corruption(24 + 1000, 11))
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.last_sequence == 10
        assert segment_files(path) == files[:1]  # later segments no longer continue the log
        assert [seq for seq, _ in box.pending(0, 1000)] == list(range(1, 11))
        box.append([(11, b"eleven")])
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.pending(10, 10) == [(11, b"eleven")]


def test_after_a_reboot_only_synced_entries_are_trusted(tmp_path):
    """Pages reach the disk in any order before an fsync; after a reboot (another boot id)
    entries beyond the last completed sync() may be torn, and are dropped."""
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        box.append([(seq, b"d%d" % seq) for seq in range(1, 11)])
        box.sync()
        box.append([(seq, b"d%d" % seq) for seq in range(11, 21)])
        box.remove_through(3)
    acked, synced, boot_id = read_state(path)
    assert (acked, synced) == (3, 20)  # close() synced
    patch_file(path / "state", 16, struct.pack("<Q", 10))  # as if the last sync never ran
    with DecisionOutbox(path) as box:  # same boot: a process crash; everything is whole
        assert box.last_sequence == 20
    patch_file(path / "state", 16, struct.pack("<Q", 10) + os.urandom(16))  # another boot
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 10
        assert box.pending(0, 100) == [(seq, b"d%d" % seq) for seq in range(4, 11)]
        box.append([(11, b"new 11")])
    assert read_state(path)[2] == boot_id  # the opener's boot, synced through 11
    assert read_state(path)[1] == 11


def test_after_a_reboot_acked_entries_keep_last_sequence_even_if_lost(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:
        box.append([(seq, b"d%d" % seq) for seq in range(1, 11)])
        box.remove_through(8)
    patch_file(path / "state", 16, struct.pack("<Q", 5) + os.urandom(16))  # synced 5, rebooted
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 8  # JetStream has seen 1..8: never reuse them
        assert box.depth == 0
        box.append([(9, b"nine")])
    with DecisionOutbox(path) as box:
        assert box.pending(0, 10) == [(9, b"nine")]


def test_a_foreign_segment_file_is_an_error(tmp_path):
    path = tmp_path / "outbox"
    DecisionOutbox(path).close()
    (segment,) = segment_files(path)
    patch_file(segment, 0, b"NOTMINE!")
    with pytest.raises(OutboxError):
        DecisionOutbox(path)
    patch_file(segment, 0, b"PTOBXSG1")
    DecisionOutbox(path).close()  # the failed open released the lock


def test_appended_entries_survive_sigkill_at_any_moment(tmp_path):
    """The parent kills the writer while it appends (across segment boundaries): every
    sequence the child reported as appended is there, with its payload."""
    path = tmp_path / "outbox"
    child = textwrap.dedent(
        f"""
        import sys
        from gateway.outbox import DecisionOutbox
        box = DecisionOutbox({str(path)!r}, map_size_bytes=4 * 1024 * 1024)
        seq = 0
        while True:
            size = seq % 7 + 1
            batch = [(s, b"decision-%d-" % s + b"x" * (s % 200)) for s in range(seq + 1, seq + 1 + size)]
            box.append(batch)
            seq = batch[-1][0]
            print(seq, flush=True)
        """
    )
    process = subprocess.Popen(
        [sys.executable, "-c", child], cwd=REPO_ROOT, stdout=subprocess.PIPE, text=True
    )
    reported = 0
    try:
        for line in process.stdout:
            reported = int(line)
            if reported >= 12_000:
                break
    finally:
        process.send_signal(signal.SIGKILL)
        process.wait(10)
    assert reported >= 12_000, "the child died early"
    with DecisionOutbox(path, map_size_bytes=4 * 1024 * 1024) as box:
        assert len(segment_files(path)) > 1  # the test crossed segment boundaries
        assert box.last_sequence >= reported
        entries = box.pending(0, 1_000_000)
        expected = [(s, b"decision-%d-" % s + b"x" * (s % 200)) for s in range(1, box.last_sequence + 1)]
        assert entries == expected


def test_sync_in_another_thread_while_appending(tmp_path):
    path = tmp_path / "outbox"
    errors: list[BaseException] = []
    stop = threading.Event()
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES * 4) as box:

        def sync_forever():
            try:
                while not stop.is_set():
                    box.sync()
            except BaseException as error:  # noqa: BLE001
                errors.append(error)

        syncer = threading.Thread(target=sync_forever)
        syncer.start()
        try:
            for seq in range(1, 3001):
                box.append([(seq, b"%d" % seq + b"z" * 300)])
                if seq % 500 == 0:
                    box.remove_through(seq - 100)  # deletes segments under the syncer
        finally:
            stop.set()
            syncer.join(10)
        assert not errors
        box.sync()
        assert read_state(path)[1] == 3000
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES * 4) as box:
        assert box.last_sequence == 3000
        assert box.pending(0, 1000) == [(seq, b"%d" % seq + b"z" * 300) for seq in range(2901, 3001)]


def make_lmdb_outbox(path: Path, last_sequence: int, entries: list[tuple[int, int, bytes]]) -> None:
    """An outbox in the LMDB layout used before the segment log."""
    path.mkdir(parents=True)
    env = lmdb.open(str(path), map_size=16 * 1024 * 1024, max_dbs=2)
    entries_db = env.open_db(b"entries")
    meta_db = env.open_db(b"meta")
    with env.begin(write=True) as txn:
        for sequence, appended_ns, payload in entries:
            txn.put(struct.pack(">Q", sequence), struct.pack(">Q", appended_ns) + payload, db=entries_db)
        txn.put(b"last_sequence", struct.pack(">Q", last_sequence), db=meta_db)
    env.close()


def test_an_lmdb_outbox_is_migrated_on_open(tmp_path):
    path = tmp_path / "outbox"
    old = [(seq, 1_700_000_000_000_000_000 + seq, b"old-%d" % seq) for seq in range(4, 5004)]
    make_lmdb_outbox(path, 5003, old)
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 5003
        assert box.depth == 5000
        assert box.pending(0, 10_000) == [(seq, payload) for seq, _, payload in old]
        assert box.oldest_appended_ns() == old[0][1]
        box.append([(5004, b"new")])
    assert not (path / "data.mdb").exists()
    assert (path / "data.mdb.migrated").exists()
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 5004
        box.remove_through(5003)
        assert box.pending(0, 10) == [(5004, b"new")]


def test_an_empty_lmdb_outbox_keeps_its_last_sequence(tmp_path):
    path = tmp_path / "outbox"
    make_lmdb_outbox(path, 42, [])
    with DecisionOutbox(path) as box:
        assert box.last_sequence == 42
        assert box.depth == 0
        box.append([(43, b"next")])
    with DecisionOutbox(path) as box:
        assert box.pending(0, 10) == [(43, b"next")]


def test_an_interrupted_migration_starts_over(tmp_path):
    path = tmp_path / "outbox"
    make_lmdb_outbox(path, 3, [(seq, seq, b"p%d" % seq) for seq in (1, 2, 3)])
    (path / f"{1:020d}.seg").write_bytes(b"half-written migration")
    (path / "state").write_bytes(b"junk")
    with DecisionOutbox(path) as box:
        assert box.pending(0, 10) == [(1, b"p1"), (2, b"p2"), (3, b"p3")]


def test_sync_prepares_the_next_segment_and_a_rollover_takes_it(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        spare = path / "spare.seg.tmp"
        assert spare.exists()  # opening syncs, and a sync prepares a spare
        spare_inode = spare.stat().st_ino
        sequence = 0
        while len(segment_files(path)) < 2:
            sequence += 1
            box.append([(sequence, b"x" * 1000)])
        assert segment_files(path)[1].stat().st_ino == spare_inode
        assert not spare.exists()
        box.sync()
        assert spare.exists()
        assert box.pending(sequence - 1, 10) == [(sequence, b"x" * 1000)]
    assert not spare.exists()  # close removes it
    spare.write_bytes(b"left by a killed process")
    with DecisionOutbox(path, map_size_bytes=SMALL_MAP_BYTES) as box:
        assert box.last_sequence == sequence
        assert spare.stat().st_size == segment_bytes_for(SMALL_MAP_BYTES)  # a fresh one


def test_segments_take_disk_space_as_they_fill_not_up_front(tmp_path):
    path = tmp_path / "outbox"
    with DecisionOutbox(path) as box:  # 64 MiB segments
        box.append([(seq, b"x" * 300) for seq in range(1, 1001)])
        (segment,) = segment_files(path)
        assert segment.stat().st_size == DEFAULT_OUTBOX_SEGMENT_BYTES
        assert segment.stat().st_blocks * 512 < 4 * 1024 * 1024

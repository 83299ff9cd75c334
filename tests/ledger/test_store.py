"""LedgerStore on real LMDB files: lifecycle, errors, durability across reopen, readers in
other processes and threads, map growth, and the single-writer guard."""

from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from ledger import merkle
from ledger.errors import (
    ConcurrentWriterError,
    LeafIndexOutOfRangeError,
    LedgerExistsError,
    LedgerFormatError,
    LedgerHashMismatchError,
    LedgerNotFoundError,
    LedgerReadOnlyError,
    TrailingDataError,
    TreeSizeOutOfRangeError,
    UnknownHashError,
)
from ledger.store import LedgerStore
from tests.ledger.lmdb_tamper import key, raw_ledger
from tests.ledger.reference import ReferenceTree

REPOSITORY_ROOT = Path(__file__).resolve().parents[2]


def _entries(count: int, start: int = 0) -> list[bytes]:
    return [f"decision-{number}".encode() * (number % 5) for number in range(start, start + count)]


def test_default_hash_is_blake3(tmp_path: Path) -> None:
    with LedgerStore.create(tmp_path) as store:
        assert store.hash_name == "blake3" == merkle.DEFAULT_HASH_NAME
        assert store.size() == 0
        assert store.root() == merkle.BLAKE3.empty_root()


def test_append_batch_returns_first_index_and_stores_entries_exactly(tmp_path: Path) -> None:
    entries = _entries(10)
    assert entries[0] == b""  # empty entries are legal leaves
    with LedgerStore.create(tmp_path, hash_name="sha256") as store:
        assert store.append_batch(entries[:4]) == 0
        assert store.append_batch([]) == 4  # an empty batch writes nothing
        assert store.append_batch(entries[4:]) == 4
        assert store.size() == 10
        assert [store.entry(i) for i in range(10)] == entries
        assert [store.leaf_hash(i) for i in range(10)] == [merkle.SHA256.hash_leaf(e) for e in entries]
        assert store.root() == ReferenceTree("sha256", entries).root(10)


def test_reopen_keeps_everything_and_appends_continue_the_same_tree(tmp_path: Path) -> None:
    first, second = _entries(37), _entries(30, start=37)
    with LedgerStore.create(tmp_path, hash_name="sha256") as store:
        store.append_batch(first)
        roots_before = [store.root(size) for size in range(38)]
        checkpoint = store.create_checkpoint("example.com/ledger", timestamp_ms=1_700_000_000_000)
    with LedgerStore.open(tmp_path) as store:
        assert store.hash_name == "sha256"
        assert store.size() == 37
        assert [store.entry(i) for i in range(37)] == first
        assert [store.root(size) for size in range(38)] == roots_before
        assert store.latest_checkpoint() == checkpoint
        assert store.append_batch(second) == 37
        reference = ReferenceTree("sha256", first + second)
        assert store.root() == reference.root(67)
        assert store.consistency_proof(37) == reference.consistency_proof(37, 67)
        assert store.verify().tree_size == 67


def test_create_refuses_an_existing_ledger(tmp_path: Path) -> None:
    LedgerStore.create(tmp_path).close()
    with pytest.raises(LedgerExistsError):
        LedgerStore.create(tmp_path)


def test_open_refuses_a_missing_ledger(tmp_path: Path) -> None:
    with pytest.raises(LedgerNotFoundError):
        LedgerStore.open(tmp_path / "typo")
    assert not (tmp_path / "typo").exists()


@pytest.mark.parametrize(("created_with", "opened_with"), [("blake3", "sha256"), ("sha256", "blake3")])
def test_opening_with_another_hash_is_an_error(tmp_path: Path, created_with: str, opened_with: str) -> None:
    LedgerStore.create(tmp_path, hash_name=created_with).close()
    with pytest.raises(LedgerHashMismatchError):
        LedgerStore.open(tmp_path, hash_name=opened_with)
    with LedgerStore.open(tmp_path, hash_name=created_with) as store:
        assert store.hash_name == created_with


def test_unknown_hash_names_are_rejected(tmp_path: Path) -> None:
    with pytest.raises(UnknownHashError):
        LedgerStore.create(tmp_path, hash_name="md5")
    LedgerStore.create(tmp_path).close()
    with pytest.raises(UnknownHashError):
        LedgerStore.open(tmp_path, hash_name="sha3-256")


def test_unknown_format_version_is_refused(tmp_path: Path) -> None:
    LedgerStore.create(tmp_path).close()
    with raw_ledger(tmp_path) as (txn, databases):
        txn.put(b"format_version", b"2", db=databases["meta"])
    with pytest.raises(LedgerFormatError):
        LedgerStore.open(tmp_path)


def test_lmdb_environment_without_ledger_metadata_is_refused(tmp_path: Path) -> None:
    import lmdb

    lmdb.open(str(tmp_path), max_dbs=4).close()
    with pytest.raises(LedgerFormatError):
        LedgerStore.open(tmp_path)


def test_requests_outside_the_tree_are_errors(tmp_path: Path) -> None:
    with LedgerStore.create(tmp_path) as store:
        store.append_batch(_entries(5))
        for index in (-1, 5):
            with pytest.raises(LeafIndexOutOfRangeError):
                store.entry(index)
            with pytest.raises(LeafIndexOutOfRangeError):
                store.leaf_hash(index)
            with pytest.raises(LeafIndexOutOfRangeError):
                store.inclusion_proof(index)
        with pytest.raises(LeafIndexOutOfRangeError):
            store.inclusion_proof(3, 3)
        for size in (-1, 6):
            with pytest.raises(TreeSizeOutOfRangeError):
                store.root(size)
        for old_size, new_size in ((0, 5), (4, 3), (2, 6)):
            with pytest.raises(TreeSizeOutOfRangeError):
                store.consistency_proof(old_size, new_size)
        with pytest.raises(TreeSizeOutOfRangeError):
            store.verify(from_index=6)
        assert store.consistency_proof(5, 5) == []


def test_readonly_store_reads_but_refuses_writes(tmp_path: Path) -> None:
    with LedgerStore.create(tmp_path) as store:
        store.append_batch(_entries(9))
        root_hash = store.root()
    with LedgerStore.open(tmp_path, readonly=True) as reader:
        assert reader.root() == root_hash
        assert reader.verify().root_hash == root_hash
        with pytest.raises(LedgerReadOnlyError):
            reader.append_batch([b"x"])
        with pytest.raises(LedgerReadOnlyError):
            reader.create_checkpoint("example.com/ledger")


def test_appending_over_stray_data_beyond_the_tree_size_is_refused(tmp_path: Path) -> None:
    LedgerStore.create(tmp_path).close()
    with raw_ledger(tmp_path) as (txn, databases):
        txn.put(key(1), b"planted", db=databases["entries"])
    with LedgerStore.open(tmp_path) as store:
        with pytest.raises(TrailingDataError):
            store.append_batch([b"a", b"b"])
        assert store.size() == 0  # the failed batch left no trace


_READER_SCRIPT = """
import sys
from ledger.store import LedgerStore
store = LedgerStore.open(sys.argv[1], readonly=True, map_size_bytes=int(sys.argv[2]))
for command in sys.stdin:
    print(store.size(), store.root().hex(), store._env.info()["map_size"], flush=True)
"""


def _start_reader_process(path: Path, map_size_bytes: int) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", _READER_SCRIPT, str(path), str(map_size_bytes)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        cwd=REPOSITORY_ROOT,
    )


def _ask(reader: subprocess.Popen[str]) -> tuple[int, str, int]:
    """The reader's (tree size, root hex, LMDB map size in bytes)."""
    assert reader.stdin is not None and reader.stdout is not None
    reader.stdin.write("root\n")
    reader.stdin.flush()
    size, root_hex, map_size = reader.stdout.readline().split()
    return int(size), root_hex, int(map_size)


def test_reader_process_sees_commits_and_follows_map_growth(tmp_path: Path) -> None:
    """A reader in another process reads while the writer commits and grows the map past
    the reader's mapping (LMDB MDB_MAP_RESIZED, adopted on the reader's next read)."""
    one_mebibyte = 1 << 20
    with LedgerStore.create(tmp_path, map_size_bytes=one_mebibyte) as writer:
        writer.append_batch(_entries(3))
        with _start_reader_process(tmp_path, one_mebibyte) as reader:
            assert _ask(reader) == (3, writer.root().hex(), one_mebibyte)
            big_entries = [os.urandom(2000) for _ in range(400)]
            # 3.2 MB in 11 commits, small and large, far past the 1 MiB map: it must grow.
            for start in range(0, len(big_entries), 50):
                writer.append_batch(big_entries[start : start + 50])
            for _ in range(3):
                writer.append_batch(big_entries)
            assert os.path.getsize(tmp_path / "data.mdb") > 2 * one_mebibyte
            grown_map_size = writer._env.info()["map_size"]
            assert grown_map_size > 2 * one_mebibyte
            assert _ask(reader) == (1603, writer.root().hex(), grown_map_size)
            assert reader.stdin is not None
            reader.stdin.close()
            assert reader.wait(timeout=30) == 0
        assert writer.verify().tree_size == 1603


_WRITER_SCRIPT = """
import sys
from ledger.store import LedgerStore
with LedgerStore.open(sys.argv[1]) as store:
    store.append_batch([b"from another process"])
"""


def test_a_second_writer_process_is_detected(tmp_path: Path) -> None:
    with LedgerStore.create(tmp_path) as store:
        store.append_batch([b"first"])
        subprocess.run([sys.executable, "-c", _WRITER_SCRIPT, str(tmp_path)], check=True, cwd=REPOSITORY_ROOT)
        with pytest.raises(ConcurrentWriterError):
            store.append_batch([b"second"])


def test_reader_threads_see_consistent_snapshots_while_the_writer_appends(tmp_path: Path) -> None:
    failures: list[BaseException] = []
    with LedgerStore.create(tmp_path) as store:
        store.append_batch(_entries(1))
        done = threading.Event()

        def read_repeatedly() -> None:
            try:
                previous_size, previous_root = 1, store.root(1)
                while not done.is_set():
                    size = store.size()
                    root_hash = store.root(size)
                    index = size // 2
                    merkle.verify_inclusion(
                        store.hasher, index, size, store.leaf_hash(index), store.inclusion_proof(index, size), root_hash
                    )
                    merkle.verify_consistency(
                        store.hasher, previous_size, size, previous_root, root_hash, store.consistency_proof(previous_size, size)
                    )
                    previous_size, previous_root = size, root_hash
            except BaseException as exc:  # reported by the main thread
                failures.append(exc)

        readers = [threading.Thread(target=read_repeatedly) for _ in range(3)]
        for thread in readers:
            thread.start()
        for start in range(1, 2001, 40):
            store.append_batch(_entries(40, start=start))
        done.set()
        for thread in readers:
            thread.join()
        assert not failures, failures
        assert store.verify().tree_size == 2001

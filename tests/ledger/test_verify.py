"""Full and incremental verification against deliberate corruption of the LMDB files:
every tamper is detected, and the error names the first bad entry index and why."""

from __future__ import annotations

from pathlib import Path

import pytest

from ledger.checkpoint import NoteSigner
from ledger.errors import (
    CheckpointIntegrityError,
    LeafHashMismatchError,
    LedgerIntegrityError,
    MissingEntryError,
    MissingNodeError,
    NodeHashMismatchError,
    TrailingDataError,
)
from ledger.store import LedgerStore, stored_node_count, stored_node_position
from tests.ledger.lmdb_tamper import key, raw_ledger

LEDGER_SIZE = 100  # not a power of two: the tree has a ragged right edge
CHUNK_ENTRIES = 16  # small verify chunks, so tampering lands on and across chunk edges
ORIGIN = "example.com/decisions"


def _entry(index: int) -> bytes:
    return f"decision {index}: accept".encode()


@pytest.fixture(params=["blake3", "sha256"])
def ledger_path(request: pytest.FixtureRequest, tmp_path: Path) -> Path:
    with LedgerStore.create(tmp_path, hash_name=request.param) as store:
        for start in range(0, LEDGER_SIZE, 30):
            store.append_batch([_entry(i) for i in range(start, min(start + 30, LEDGER_SIZE))])
    return tmp_path


def _verify(path: Path, from_index: int = 0) -> None:
    with LedgerStore.open(path, readonly=True) as store:
        store.verify(from_index, chunk_entries=CHUNK_ENTRIES)


def _flip_first_byte(value: bytes) -> bytes:
    return bytes([value[0] ^ 0x01]) + value[1:]


def test_untouched_ledger_verifies(ledger_path: Path) -> None:
    with LedgerStore.open(ledger_path, readonly=True) as store:
        report = store.verify(chunk_entries=CHUNK_ENTRIES)
        assert report.tree_size == LEDGER_SIZE
        assert report.root_hash == store.root()
        assert report.entries_verified == LEDGER_SIZE
        assert report.nodes_verified == stored_node_count(LEDGER_SIZE)


@pytest.mark.parametrize("index", [0, 15, 16, 37, 99])
def test_flipped_entry_byte_is_named(ledger_path: Path, index: int) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(index), _flip_first_byte(_entry(index)), db=databases["entries"])
    with pytest.raises(LeafHashMismatchError) as caught:
        _verify(ledger_path)
    assert caught.value.index == index


@pytest.mark.parametrize("index", [0, 16, 37, 99])
def test_deleted_entry_is_named(ledger_path: Path, index: int) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        assert txn.delete(key(index), db=databases["entries"])
    with pytest.raises(MissingEntryError) as caught:
        _verify(ledger_path)
    assert caught.value.index == index


def test_swapped_entries_name_the_first(ledger_path: Path) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(20), _entry(50), db=databases["entries"])
        txn.put(key(50), _entry(20), db=databases["entries"])
    with pytest.raises(LeafHashMismatchError) as caught:
        _verify(ledger_path)
    assert caught.value.index == 20


def test_the_first_of_several_faults_is_reported(ledger_path: Path) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(60), b"forged", db=databases["entries"])
        assert txn.delete(key(45), db=databases["entries"])
        txn.put(key(30), b"forged", db=databases["entries"])
    with pytest.raises(LeafHashMismatchError) as caught:
        _verify(ledger_path)
    assert caught.value.index == 30


def test_truncated_entries_tail_is_named(ledger_path: Path) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        for index in range(90, LEDGER_SIZE):
            assert txn.delete(key(index), db=databases["entries"])
    with pytest.raises(MissingEntryError) as caught:
        _verify(ledger_path)
    assert caught.value.index == 90


def _truncate_consistently(path: Path, new_size: int) -> None:
    """Cut entries, nodes and recorded size together: self-consistent, so only a
    checkpoint taken before the cut can reveal it."""
    with raw_ledger(path) as (txn, databases):
        for index in range(new_size, LEDGER_SIZE):
            txn.delete(key(index), db=databases["entries"])
        for position in range(stored_node_count(new_size), stored_node_count(LEDGER_SIZE)):
            txn.delete(key(position), db=databases["nodes"])
        txn.put(b"tree_size", key(new_size), db=databases["meta"])


def test_consistent_truncation_is_caught_by_a_checkpoint(ledger_path: Path) -> None:
    with LedgerStore.open(ledger_path) as store:
        store.create_checkpoint(ORIGIN)
    _truncate_consistently(ledger_path, 90)
    with pytest.raises(CheckpointIntegrityError) as caught:
        _verify(ledger_path)
    assert caught.value.tree_size == LEDGER_SIZE
    assert caught.value.index == 90


def test_consistent_truncation_without_checkpoint_is_undetectable_locally(ledger_path: Path) -> None:
    """Documents the limit of self-verification: publish checkpoints to catch this."""
    _truncate_consistently(ledger_path, 90)
    _verify(ledger_path)


def test_altered_stored_leaf_hash_is_named(ledger_path: Path) -> None:
    position = stored_node_position(0, 41)
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(position), _flip_first_byte(txn.get(key(position), db=databases["nodes"])), db=databases["nodes"])
    with pytest.raises(LeafHashMismatchError) as caught:
        _verify(ledger_path)
    assert caught.value.index == 41


@pytest.mark.parametrize(("level", "node_index"), [(1, 0), (2, 5), (3, 2), (5, 0), (6, 0)])
def test_altered_interior_node_is_named(ledger_path: Path, level: int, node_index: int) -> None:
    position = stored_node_position(level, node_index)
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(position), _flip_first_byte(txn.get(key(position), db=databases["nodes"])), db=databases["nodes"])
    with pytest.raises(NodeHashMismatchError) as caught:
        _verify(ledger_path)
    last_leaf = ((node_index + 1) << level) - 1
    assert (caught.value.index, caught.value.level, caught.value.node_index) == (last_leaf, level, node_index)


def test_deleted_node_is_named(ledger_path: Path) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        assert txn.delete(key(stored_node_position(2, 3)), db=databases["nodes"])
    with pytest.raises(MissingNodeError) as caught:
        _verify(ledger_path)
    assert caught.value.index == 15


@pytest.mark.parametrize("database", ["entries", "nodes"])
def test_data_beyond_the_tree_size_is_reported(ledger_path: Path, database: str) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(stored_node_count(LEDGER_SIZE) + 3), b"x" * 32, db=databases[database])
    with pytest.raises(TrailingDataError) as caught:
        _verify(ledger_path)
    assert caught.value.index == LEDGER_SIZE


def test_lowered_recorded_size_is_reported(ledger_path: Path) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(b"tree_size", key(LEDGER_SIZE - 1), db=databases["meta"])
    with pytest.raises(TrailingDataError) as caught:
        _verify(ledger_path)
    assert caught.value.index == LEDGER_SIZE - 1


def test_incremental_verification_checks_only_the_tail(ledger_path: Path) -> None:
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(10), b"forged", db=databases["entries"])
    _verify(ledger_path, from_index=64)  # the prefix is trusted: forged entry 10 not re-read
    with pytest.raises(LeafHashMismatchError):
        _verify(ledger_path)
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(77), b"forged", db=databases["entries"])
    with pytest.raises(LeafHashMismatchError) as caught:
        _verify(ledger_path, from_index=64)
    assert caught.value.index == 77


def test_incremental_verification_catches_nodes_that_span_the_start(ledger_path: Path) -> None:
    """Nodes completed after from_index combine trusted left subtrees with new leaves;
    they must still be recomputed and compared."""
    position = stored_node_position(6, 0)  # entries 0..63, completed by entry 63
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(position), _flip_first_byte(txn.get(key(position), db=databases["nodes"])), db=databases["nodes"])
    with pytest.raises(NodeHashMismatchError):
        _verify(ledger_path, from_index=63)


def test_every_index_can_start_an_incremental_verification(ledger_path: Path) -> None:
    with LedgerStore.open(ledger_path, readonly=True) as store:
        root_hash = store.root()
        for from_index in range(LEDGER_SIZE + 1):
            report = store.verify(from_index, chunk_entries=CHUNK_ENTRIES)
            assert (report.root_hash, report.entries_verified) == (root_hash, LEDGER_SIZE - from_index)


# --- checkpoints --------------------------------------------------------------------------------


@pytest.fixture
def signer() -> NoteSigner:
    return NoteSigner.generate(ORIGIN)


def _checkpointed(path: Path, signer: NoteSigner | None, sizes: list[int]) -> None:
    """Rebuild the ledger's entries into checkpoints at ``sizes`` (re-created from scratch)."""
    with LedgerStore.open(path, signer=signer) as store:
        hash_name = store.hash_name
    for file in path.iterdir():
        file.unlink()
    with LedgerStore.create(path, hash_name=hash_name, signer=signer) as store:
        previous = 0
        for size in sizes:
            store.append_batch([_entry(i) for i in range(previous, size)])
            store.create_checkpoint(ORIGIN, timestamp_ms=1_700_000_000_000 + size)
            previous = size


def test_checkpoints_verify_with_roots_and_signatures(ledger_path: Path, signer: NoteSigner) -> None:
    _checkpointed(ledger_path, signer, [0, 1, 16, 17, 64, LEDGER_SIZE])
    with LedgerStore.open(ledger_path, readonly=True) as store:
        report = store.verify(chunk_entries=CHUNK_ENTRIES, checkpoint_verifiers=[signer.verifier()])
        assert report.checkpoints_verified == 6
        assert store.verify(from_index=17, checkpoint_verifiers=[signer.verifier()]).checkpoints_verified == 3


def test_altered_checkpoint_root_is_reported(ledger_path: Path) -> None:
    _checkpointed(ledger_path, None, [16, 64, LEDGER_SIZE])
    with raw_ledger(ledger_path) as (txn, databases):
        note = txn.get(key(64), db=databases["checkpoints"]).decode()
        origin, size, root_line, *rest = note.split("\n")
        forged_root = ("B" if root_line[0] == "A" else "A") + root_line[1:]
        txn.put(key(64), "\n".join([origin, size, forged_root, *rest]).encode(), db=databases["checkpoints"])
    with pytest.raises(CheckpointIntegrityError) as caught:
        _verify(ledger_path)
    assert caught.value.tree_size == 64
    assert "differs from the recomputed root" in caught.value.reason


def test_altered_signed_checkpoint_fails_its_signature(ledger_path: Path, signer: NoteSigner) -> None:
    _checkpointed(ledger_path, signer, [16, 64, LEDGER_SIZE])
    with raw_ledger(ledger_path) as (txn, databases):
        note = txn.get(key(16), db=databases["checkpoints"]).decode()
        backdated = note.replace("time-unix-ms 1700000000016\n", "time-unix-ms 1600000000016\n")
        assert backdated != note
        txn.put(key(16), backdated.encode(), db=databases["checkpoints"])
    _verify(ledger_path)  # roots still agree: only the signature reveals the edited time
    with LedgerStore.open(ledger_path, readonly=True) as store, pytest.raises(CheckpointIntegrityError) as caught:
        store.verify(checkpoint_verifiers=[signer.verifier()])
    assert caught.value.tree_size == 16
    assert "does not verify" in caught.value.reason


def test_checkpoint_signed_by_an_untrusted_key_is_reported(ledger_path: Path, signer: NoteSigner) -> None:
    _checkpointed(ledger_path, signer, [LEDGER_SIZE])
    other = NoteSigner.generate(ORIGIN)
    with LedgerStore.open(ledger_path, readonly=True) as store, pytest.raises(CheckpointIntegrityError):
        store.verify(checkpoint_verifiers=[other.verifier()])


def test_checkpoint_stored_under_the_wrong_size_is_reported(ledger_path: Path) -> None:
    _checkpointed(ledger_path, None, [16, 64])
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(32), txn.get(key(16), db=databases["checkpoints"]), db=databases["checkpoints"])
    with pytest.raises(CheckpointIntegrityError) as caught:
        _verify(ledger_path)
    assert caught.value.tree_size == 32


def test_unreadable_checkpoint_is_reported(ledger_path: Path) -> None:
    _checkpointed(ledger_path, None, [16])
    with raw_ledger(ledger_path) as (txn, databases):
        txn.put(key(16), b"\xff\xfe not a note", db=databases["checkpoints"])
    with pytest.raises(CheckpointIntegrityError):
        _verify(ledger_path)


def test_integrity_errors_share_one_base_class() -> None:
    assert issubclass(CheckpointIntegrityError, LedgerIntegrityError)
    assert issubclass(NodeHashMismatchError, LedgerIntegrityError)

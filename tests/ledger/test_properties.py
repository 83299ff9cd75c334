"""Property tests: proofs and roots of a real LMDB ledger, at every historical size, agree
with the naive recursive reference (tests/ledger/reference.py) and verify with the pure
RFC 9162 verifiers; every mutation of a valid proof is rejected."""

from __future__ import annotations

import random
import tempfile
from collections.abc import Iterator

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from ledger import merkle
from ledger.errors import ProofVerificationError
from ledger.store import LedgerStore, stored_node_count, stored_node_position
from tests.ledger.reference import ReferenceTree

LEDGER_SIZE = 300
HASH_NAMES = ["sha256", "blake3"]


@pytest.fixture(scope="module", params=HASH_NAMES)
def random_ledger(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[LedgerStore, ReferenceTree]]:
    """A ledger of LEDGER_SIZE random entries (some empty) appended in random batch sizes."""
    hash_name = request.param
    generator = random.Random(6962)
    entries = [generator.randbytes(generator.choice([0, 1, 7, 32, 300])) for _ in range(LEDGER_SIZE)]
    store = LedgerStore.create(tmp_path_factory.mktemp(f"random-{hash_name}"), hash_name=hash_name)
    position = 0
    while position < LEDGER_SIZE:
        batch = entries[position : position + generator.randint(1, 40)]
        assert store.append_batch(batch) == position
        position += len(batch)
    yield store, ReferenceTree(hash_name, entries)
    store.close()


@settings(max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(tree_size=st.integers(min_value=1, max_value=LEDGER_SIZE))
def test_every_proof_at_a_random_size_matches_the_reference(
    random_ledger: tuple[LedgerStore, ReferenceTree], tree_size: int
) -> None:
    store, reference = random_ledger
    hasher = store.hasher
    root_hash = store.root(tree_size)
    assert root_hash == reference.root(tree_size)
    for old_size in range(1, tree_size + 1):
        proof = store.consistency_proof(old_size, tree_size)
        assert proof == reference.consistency_proof(old_size, tree_size)
        old_root = store.root(old_size)
        assert old_root == reference.root(old_size)
        merkle.verify_consistency(hasher, old_size, tree_size, old_root, root_hash, proof)
    for leaf_index in range(tree_size):
        proof = store.inclusion_proof(leaf_index, tree_size)
        assert proof == reference.inclusion_proof(leaf_index, tree_size)
        merkle.verify_inclusion(hasher, leaf_index, tree_size, store.leaf_hash(leaf_index), proof, root_hash)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_inclusion_proofs_are_rejected(random_ledger: tuple[LedgerStore, ReferenceTree], data: st.DataObject) -> None:
    store, _ = random_ledger
    tree_size = data.draw(st.integers(1, LEDGER_SIZE), label="tree_size")
    leaf_index = data.draw(st.integers(0, tree_size - 1), label="leaf_index")
    proof = store.inclusion_proof(leaf_index, tree_size)
    leaf_hash = store.leaf_hash(leaf_index)
    root_hash = store.root(tree_size)
    mutated = _mutate(data, proof, store.hasher.digest_size_bytes)
    assert mutated != proof
    with pytest.raises(ProofVerificationError):
        merkle.verify_inclusion(store.hasher, leaf_index, tree_size, leaf_hash, mutated, root_hash)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(data=st.data())
def test_mutated_consistency_proofs_are_rejected(random_ledger: tuple[LedgerStore, ReferenceTree], data: st.DataObject) -> None:
    store, _ = random_ledger
    new_size = data.draw(st.integers(2, LEDGER_SIZE), label="new_size")
    old_size = data.draw(st.integers(1, new_size - 1), label="old_size")
    proof = store.consistency_proof(old_size, new_size)
    mutated = _mutate(data, proof, store.hasher.digest_size_bytes)
    with pytest.raises(ProofVerificationError):
        merkle.verify_consistency(store.hasher, old_size, new_size, store.root(old_size), store.root(new_size), mutated)


def _mutate(data: st.DataObject, proof: list[bytes], digest_size: int) -> list[bytes]:
    """One structural or bitwise corruption of a non-empty or empty proof."""
    kinds = ["append", "prepend", "truncate-hash"] + (["flip", "drop", "duplicate"] if proof else [])
    kind = data.draw(st.sampled_from(kinds), label="mutation")
    mutated = list(proof)
    if kind == "append":
        mutated.append(data.draw(st.binary(min_size=digest_size, max_size=digest_size)))
    elif kind == "prepend":
        mutated.insert(0, data.draw(st.binary(min_size=digest_size, max_size=digest_size)))
    elif kind == "truncate-hash":
        mutated.append(b"\x00" * data.draw(st.integers(0, digest_size - 1)))
    else:
        position = data.draw(st.integers(0, len(proof) - 1), label="position")
        if kind == "flip":
            bit = data.draw(st.integers(0, digest_size * 8 - 1), label="bit")
            flipped = bytearray(mutated[position])
            flipped[bit // 8] ^= 1 << (bit % 8)
            mutated[position] = bytes(flipped)
        elif kind == "drop":
            del mutated[position]
        else:
            mutated.insert(position, mutated[position])
    return mutated


@settings(max_examples=25, deadline=None)
@given(
    hash_name=st.sampled_from(HASH_NAMES),
    entries=st.lists(st.binary(max_size=40), max_size=70),
    cuts=st.lists(st.integers(0, 70), max_size=8),
)
def test_batch_boundaries_do_not_change_the_tree(hash_name: str, entries: list[bytes], cuts: list[int]) -> None:
    """However entries are grouped into commits, every root, stored node and verify agree."""
    reference = ReferenceTree(hash_name, entries)
    boundaries = sorted({0, len(entries), *(cut for cut in cuts if cut <= len(entries))})
    with tempfile.TemporaryDirectory() as directory, LedgerStore.create(directory, hash_name=hash_name) as store:
        for start, end in zip(boundaries, boundaries[1:]):
            assert store.append_batch(entries[start:end]) == start
        assert store.size() == len(entries)
        for size in range(len(entries) + 1):
            assert store.root(size) == reference.root(size)
        report = store.verify(chunk_entries=7)
        assert report.root_hash == reference.root(len(entries))
        assert report.nodes_verified == stored_node_count(len(entries))


def _go_tlog_stored_hash_index(level: int, n: int) -> int:
    """The algorithm of StoredHashIndex in golang.org/x/mod/sumdb/tlog, whose layout the store uses."""
    for _ in range(level):
        n = 2 * n + 1
    index = 0
    while n > 0:
        index += n
        n >>= 1
    return index + level


@given(level=st.integers(0, 40), index=st.integers(0, 1 << 30))
def test_stored_node_position_matches_go_tlog_layout(level: int, index: int) -> None:
    assert stored_node_position(level, index) == _go_tlog_stored_hash_index(level, index)


@given(tree_size=st.integers(0, 1 << 40))
def test_frontier_has_one_subtree_per_set_bit(tree_size: int) -> None:
    subtrees = merkle.frontier_subtrees(tree_size)
    assert len(subtrees) == tree_size.bit_count()
    assert sum(1 << level for level, _ in subtrees) == tree_size

"""The SHA-256 mode against EVERY published vector and must-reject probe of the shared
file, and the BLAKE3 mode against its regression vectors -- both through the pure
functions and through a real LMDB ledger holding the canonical entries."""

from __future__ import annotations

from typing import Any

import pytest
from blake3 import blake3

from ledger import merkle
from ledger.errors import ProofVerificationError
from ledger.store import LedgerStore
from tests.ledger.vectors import BLAKE3_VECTORS, LEAF_INPUTS, SHA256_VECTORS, unhex_all

SHA256 = merkle.SHA256
BLAKE3 = merkle.BLAKE3


def _probe_id(probe: dict[str, Any]) -> str:
    return probe["file"].removeprefix("testdata/")


def _size_pair_id(vector: dict[str, Any]) -> str:
    return f"{vector['size1']}->{vector['size2']}"


def _index_size_id(vector: dict[str, Any]) -> str:
    return f"leaf{vector['leaf_index']}-of-{vector['tree_size']}"


# --- hashing -------------------------------------------------------------------------------


def test_empty_tree_root_is_hash_of_empty_string() -> None:
    assert SHA256.empty_root().hex() == SHA256_VECTORS["empty_tree_root"]


@pytest.mark.parametrize("vector", SHA256_VECTORS["hasher_unit_vectors"], ids=lambda v: v["what"])
def test_hasher_unit_vectors(vector: dict[str, Any]) -> None:
    if "leaf_hex" in vector:
        computed = SHA256.hash_leaf(bytes.fromhex(vector["leaf_hex"]))
    elif "left_hex" in vector:
        computed = SHA256.hash_node(bytes.fromhex(vector["left_hex"]), bytes.fromhex(vector["right_hex"]))
    else:
        assert vector["input"] == ""
        computed = SHA256.empty_root()
    assert computed.hex() == vector["expected"]


def test_leaf_hashes() -> None:
    assert [SHA256.hash_leaf(entry).hex() for entry in LEAF_INPUTS] == SHA256_VECTORS["leaf_hashes"]


def test_stored_leaf_hashes(canonical_sha256_store: LedgerStore) -> None:
    assert [canonical_sha256_store.leaf_hash(i).hex() for i in range(8)] == SHA256_VECTORS["leaf_hashes"]


@pytest.mark.parametrize("level", sorted(SHA256_VECTORS["node_hashes_by_level"]))
def test_node_hashes_by_level(level: str, canonical_sha256_store: LedgerStore) -> None:
    """Every complete node of the 8-leaf tree, from the pure code and as stored in LMDB.

    In a perfect tree the audit path of leaf j holds, at position L, the node (L, (j >> L) ^ 1):
    so stored node (L, i) is element L of the path of leaf (i ^ 1) << L; the top level is the root.
    """
    height = int(level)
    leaf_hashes = [SHA256.hash_leaf(entry) for entry in LEAF_INPUTS]
    for index, expected in enumerate(SHA256_VECTORS["node_hashes_by_level"][level]):
        subtree = leaf_hashes[index << height : (index + 1) << height]
        assert merkle.root_from_leaf_hashes(SHA256, subtree).hex() == expected
        if height == 3:
            assert canonical_sha256_store.root(8).hex() == expected
        else:
            assert canonical_sha256_store.inclusion_proof((index ^ 1) << height, 8)[height].hex() == expected


@pytest.mark.parametrize("size", range(9))
def test_roots_by_tree_size(size: int, canonical_sha256_store: LedgerStore) -> None:
    expected = SHA256_VECTORS["roots_by_tree_size"][str(size)]
    assert merkle.root_from_leaf_hashes(SHA256, [SHA256.hash_leaf(e) for e in LEAF_INPUTS[:size]]).hex() == expected
    assert canonical_sha256_store.root(size).hex() == expected


# --- published happy paths ---------------------------------------------------------------


INCLUSION_VECTORS = SHA256_VECTORS["inclusion"] + SHA256_VECTORS["legacy_ct_cpp_inclusion"]
CONSISTENCY_VECTORS = SHA256_VECTORS["consistency"] + SHA256_VECTORS["legacy_ct_cpp_consistency"]


@pytest.mark.parametrize("vector", INCLUSION_VECTORS, ids=_index_size_id)
def test_published_inclusion(vector: dict[str, Any], canonical_sha256_store: LedgerStore) -> None:
    index, size = vector["leaf_index"], vector["tree_size"]
    leaf_hash = bytes.fromhex(vector["leaf_hash"])
    proof = unhex_all(vector["proof"])
    assert SHA256.hash_leaf(bytes.fromhex(vector["leaf_input"])) == leaf_hash
    merkle.verify_inclusion(SHA256, index, size, leaf_hash, proof, bytes.fromhex(vector["root"]))
    assert bytes.fromhex(vector["leaf_input"]) == LEAF_INPUTS[index]
    assert canonical_sha256_store.inclusion_proof(index, size) == proof


@pytest.mark.parametrize("vector", CONSISTENCY_VECTORS, ids=_size_pair_id)
def test_published_consistency(vector: dict[str, Any], canonical_sha256_store: LedgerStore) -> None:
    old_size, new_size = vector["size1"], vector["size2"]
    proof = unhex_all(vector["proof"])
    merkle.verify_consistency(
        SHA256, old_size, new_size, bytes.fromhex(vector["root1"]), bytes.fromhex(vector["root2"]), proof
    )
    assert canonical_sha256_store.consistency_proof(old_size, new_size) == proof


@pytest.mark.parametrize("vector", SHA256_VECTORS["derived_all_inclusion_proofs_up_to_8"], ids=_index_size_id)
def test_derived_inclusion(vector: dict[str, Any], canonical_sha256_store: LedgerStore) -> None:
    index, size = vector["leaf_index"], vector["tree_size"]
    proof = unhex_all(vector["proof"])
    assert canonical_sha256_store.inclusion_proof(index, size) == proof
    root_hash = bytes.fromhex(SHA256_VECTORS["roots_by_tree_size"][str(size)])
    merkle.verify_inclusion(SHA256, index, size, SHA256.hash_leaf(LEAF_INPUTS[index]), proof, root_hash)


@pytest.mark.parametrize("vector", SHA256_VECTORS["derived_all_consistency_proofs_up_to_8"], ids=_size_pair_id)
def test_derived_consistency(vector: dict[str, Any], canonical_sha256_store: LedgerStore) -> None:
    old_size, new_size = vector["size1"], vector["size2"]
    proof = unhex_all(vector["proof"])
    assert canonical_sha256_store.consistency_proof(old_size, new_size) == proof
    roots = SHA256_VECTORS["roots_by_tree_size"]
    merkle.verify_consistency(
        SHA256, old_size, new_size, bytes.fromhex(roots[str(old_size)]), bytes.fromhex(roots[str(new_size)]), proof
    )


# --- transparency-dev golden probes, including every MUST-REJECT case ------------------------


@pytest.mark.parametrize("probe", SHA256_VECTORS["inclusion_probes"], ids=_probe_id)
def test_inclusion_probe(probe: dict[str, Any]) -> None:
    def run() -> None:
        merkle.verify_inclusion(
            SHA256,
            probe["leaf_index"],
            probe["tree_size"],
            bytes.fromhex(probe["leaf_hash"]),
            unhex_all(probe["proof"]),
            bytes.fromhex(probe["root"]),
        )

    if probe["want_err"]:
        with pytest.raises(ProofVerificationError):
            run()
    else:
        run()


@pytest.mark.parametrize("probe", SHA256_VECTORS["consistency_probes"], ids=_probe_id)
def test_consistency_probe(probe: dict[str, Any]) -> None:
    def run() -> None:
        merkle.verify_consistency(
            SHA256,
            probe["size1"],
            probe["size2"],
            bytes.fromhex(probe["root1"]),
            bytes.fromhex(probe["root2"]),
            unhex_all(probe["proof"]),
        )

    if probe["want_err"]:
        with pytest.raises(ProofVerificationError):
            run()
    else:
        run()


def test_probe_sets_contain_must_reject_cases() -> None:
    """Guard against the parametrisation silently shrinking to happy paths only."""
    for probes in (SHA256_VECTORS["inclusion_probes"], SHA256_VECTORS["consistency_probes"]):
        assert sum(probe["want_err"] for probe in probes) > 80
        assert any(not probe["want_err"] for probe in probes)


# --- a real CT log ----------------------------------------------------------------------------


REAL_CT = SHA256_VECTORS["real_ct_log_inclusion"]


def test_real_ct_log_inclusion_proof() -> None:
    leaf_hash = SHA256.hash_leaf(bytes.fromhex(REAL_CT["leaf_input"]))
    assert leaf_hash.hex() == REAL_CT["leaf_hash"]
    proof = unhex_all(REAL_CT["proof"])
    root_hash = bytes.fromhex(REAL_CT["root"])
    assert merkle.root_from_inclusion_proof(SHA256, REAL_CT["leaf_index"], REAL_CT["tree_size"], leaf_hash, proof) == root_hash
    merkle.verify_inclusion(SHA256, REAL_CT["leaf_index"], REAL_CT["tree_size"], leaf_hash, proof, root_hash)


@pytest.mark.parametrize(
    "mutation",
    ["index+1", "size*2", "size/2", "drop-last", "extra-hash", "flip-bit", "swap-hashes"],
)
def test_real_ct_log_inclusion_proof_mutations_are_rejected(mutation: str) -> None:
    """(Not size+1: RFC 9162 checks the proof's shape, and leaf 848049 has the same path
    shape in trees of 3630887 and 3630888 leaves; the sizes below change the shape.)"""
    index, size = REAL_CT["leaf_index"], REAL_CT["tree_size"]
    proof = unhex_all(REAL_CT["proof"])
    if mutation == "index+1":
        index += 1
    elif mutation == "size*2":
        size *= 2
    elif mutation == "size/2":
        size //= 2
    elif mutation == "drop-last":
        proof = proof[:-1]
    elif mutation == "extra-hash":
        proof = proof + [proof[0]]
    elif mutation == "flip-bit":
        proof[7] = bytes([proof[7][0] ^ 1]) + proof[7][1:]
    else:
        proof[3], proof[4] = proof[4], proof[3]
    with pytest.raises(ProofVerificationError):
        merkle.verify_inclusion(
            SHA256, index, size, bytes.fromhex(REAL_CT["leaf_hash"]), proof, bytes.fromhex(REAL_CT["root"])
        )


# --- BLAKE3 mode (self-computed regression vectors) --------------------------------------------


@pytest.mark.parametrize("input_length", sorted(BLAKE3_VECTORS["blake3_library_check"]["checked"], key=int))
def test_blake3_library_matches_official_vectors(input_length: str) -> None:
    data = bytes(i % 251 for i in range(int(input_length)))
    assert blake3(data).digest().hex() == BLAKE3_VECTORS["blake3_library_check"]["checked"][input_length]


def test_blake3_leaf_hashes(canonical_blake3_store: LedgerStore) -> None:
    assert [BLAKE3.hash_leaf(entry).hex() for entry in LEAF_INPUTS] == BLAKE3_VECTORS["leaf_hashes"]
    assert [canonical_blake3_store.leaf_hash(i).hex() for i in range(8)] == BLAKE3_VECTORS["leaf_hashes"]


@pytest.mark.parametrize("size", range(9))
def test_blake3_roots_by_tree_size(size: int, canonical_blake3_store: LedgerStore) -> None:
    assert canonical_blake3_store.root(size).hex() == BLAKE3_VECTORS["roots_by_tree_size"][str(size)]


@pytest.mark.parametrize("vector", BLAKE3_VECTORS["inclusion"], ids=_index_size_id)
def test_blake3_inclusion(vector: dict[str, Any], canonical_blake3_store: LedgerStore) -> None:
    index, size = vector["leaf_index"], vector["tree_size"]
    proof = unhex_all(vector["proof"])
    assert canonical_blake3_store.inclusion_proof(index, size) == proof
    root_hash = bytes.fromhex(BLAKE3_VECTORS["roots_by_tree_size"][str(size)])
    merkle.verify_inclusion(BLAKE3, index, size, BLAKE3.hash_leaf(LEAF_INPUTS[index]), proof, root_hash)


@pytest.mark.parametrize("vector", BLAKE3_VECTORS["consistency"], ids=_size_pair_id)
def test_blake3_consistency(vector: dict[str, Any], canonical_blake3_store: LedgerStore) -> None:
    old_size, new_size = vector["size1"], vector["size2"]
    proof = unhex_all(vector["proof"])
    assert canonical_blake3_store.consistency_proof(old_size, new_size) == proof
    roots = BLAKE3_VECTORS["roots_by_tree_size"]
    merkle.verify_consistency(
        BLAKE3, old_size, new_size, bytes.fromhex(roots[str(old_size)]), bytes.fromhex(roots[str(new_size)]), proof
    )

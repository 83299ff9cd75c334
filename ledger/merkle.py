"""RFC 6962 / RFC 9162 Merkle tree hashing, proof construction and proof verification.

Everything here is a pure function of its arguments: no storage, no I/O. The store
(``ledger.store``) supplies stored hashes through a :data:`SubtreeHashGetter`; an offline
verifier needs nothing but :func:`verify_inclusion`, :func:`verify_consistency` and a
:class:`Hasher`.

Tree structure (RFC 6962 §2.1, RFC 9162 §2.1.1)::

    MTH({})       = H("")
    MTH({d0})     = H(0x00 || d0)                          leaf hash
    MTH(D[0:n])   = H(0x01 || MTH(D[0:k]) || MTH(D[k:n]))  node hash, k = largest power of 2 < n

A *perfect subtree* ``(level, index)`` is the complete subtree over the ``2**level`` leaves
``index * 2**level .. (index + 1) * 2**level - 1``; its hash never changes once its last
leaf is appended, which is what makes it worth storing. Every range the RFC recursion ever
hashes is a run of at most ``log2(n)`` perfect subtrees, so roots and proofs of any tree
size need only O(log n) stored hashes.

Indices are 0-based throughout.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from typing import Protocol

from blake3 import blake3

from ledger.errors import (
    LeafIndexOutOfRangeError,
    MalformedProofError,
    RootMismatchError,
    TreeSizeOutOfRangeError,
    UnknownHashError,
)

LEAF_PREFIX = b"\x00"
NODE_PREFIX = b"\x01"
DIGEST_SIZE_BYTES = 32  # both supported hashes produce 32-byte digests

SubtreeHashGetter = Callable[[int, int], bytes]
"""``(level, index) -> hash`` of the perfect subtree over leaves ``index*2**level ..``."""


class _HashObject(Protocol):
    def digest(self) -> bytes: ...


@dataclass(frozen=True)
class Hasher:
    """One hash function in its three RFC 6962 roles: leaf, interior node, empty tree.

    ``new`` is the hash's own constructor (``blake3.blake3``, ``hashlib.sha256``), both
    implemented in C/Rust: the hot loops of ingest and verification call
    ``new(data).digest()`` directly, with no Python frame per hash.
    """

    name: str
    new: Callable[[bytes], _HashObject]
    digest_size_bytes: int = DIGEST_SIZE_BYTES

    def digest(self, data: bytes) -> bytes:
        return self.new(data).digest()

    def hash_leaf(self, entry: bytes) -> bytes:
        """H(0x00 || entry): the leaf hash, domain-separated from interior nodes."""
        return self.new(LEAF_PREFIX + entry).digest()

    def hash_leaves(self, entries: Sequence[bytes]) -> list[bytes]:
        """The leaf hashes of many entries (one tight loop: ingest and verify use this)."""
        new = self.new
        return [new(LEAF_PREFIX + entry).digest() for entry in entries]

    def hash_node(self, left: bytes, right: bytes) -> bytes:
        """H(0x01 || left || right): an interior node over two child hashes."""
        return self.new(NODE_PREFIX + left + right).digest()

    def empty_root(self) -> bytes:
        """MTH({}) = H(""), the root of the tree with no leaves."""
        return self.new(b"").digest()


BLAKE3 = Hasher("blake3", blake3)
SHA256 = Hasher("sha256", hashlib.sha256)
HASHERS: dict[str, Hasher] = {hasher.name: hasher for hasher in (BLAKE3, SHA256)}
DEFAULT_HASH_NAME = BLAKE3.name


def hasher_for(name: str) -> Hasher:
    """The :class:`Hasher` called ``name`` (``"blake3"`` or ``"sha256"``)."""
    try:
        return HASHERS[name]
    except KeyError:
        raise UnknownHashError(f"unknown hash {name!r}; supported: {sorted(HASHERS)}") from None


# --- tree shape --------------------------------------------------------------------------


def largest_power_of_two_below(n: int) -> int:
    """The RFC 6962 split point k: the largest power of two strictly less than ``n`` (n >= 2)."""
    return 1 << ((n - 1).bit_length() - 1)


def range_subtrees(start: int, size: int) -> Iterator[tuple[int, int]]:
    """The perfect subtrees ``(level, index)`` that make up leaves ``start .. start+size-1``,
    left to right, largest first.

    Valid for the ranges RFC 6962 hashes: ``start`` is a multiple of a power of two that is
    at least ``size`` (true of ``[0, n)`` and of every range its recursion splits off). The
    subtrees then follow the set bits of ``size`` from high to low.
    """
    for level in range(size.bit_length() - 1, -1, -1):
        if size >> level & 1:
            yield level, start >> level
            start += 1 << level


def fold_subtree_hashes(hasher: Hasher, subtree_hashes: Sequence[bytes]) -> bytes:
    """MTH of a range given its perfect-subtree hashes, largest (leftmost) first.

    The RFC recursion splits off the largest perfect subtree on the left and recurses on the
    rest, so the range hash is a right fold: H(s0, H(s1, ... H(s_{k-2}, s_{k-1}))).
    """
    node_hash = subtree_hashes[-1]
    for left in reversed(subtree_hashes[:-1]):
        node_hash = hasher.hash_node(left, node_hash)
    return node_hash


def _range_hash(hasher: Hasher, start: int, end: int, subtree_hash: SubtreeHashGetter) -> bytes:
    size = end - start
    if size & (size - 1) == 0:  # a perfect subtree: one stored hash (most proof siblings are)
        level = size.bit_length() - 1
        return subtree_hash(level, start >> level)
    return fold_subtree_hashes(hasher, [subtree_hash(level, index) for level, index in range_subtrees(start, size)])


def root(hasher: Hasher, tree_size: int, subtree_hash: SubtreeHashGetter) -> bytes:
    """MTH(D[0:tree_size]) from at most log2(tree_size) stored perfect-subtree hashes."""
    if tree_size == 0:
        return hasher.empty_root()
    return _range_hash(hasher, 0, tree_size, subtree_hash)


# --- the right edge of a growing tree ------------------------------------------------------


def frontier_subtrees(tree_size: int) -> list[tuple[int, int]]:
    """The perfect subtrees ``(level, index)`` that a tree of ``tree_size`` leaves ends in:
    one per set bit of the size, largest first. Their hashes (the *frontier*) are all that
    is needed to keep appending leaves and to compute the current root."""
    return list(range_subtrees(0, tree_size))


def append_leaf_hashes(hasher: Hasher, frontier: list[bytes], tree_size: int, leaf_hashes: Sequence[bytes]) -> list[bytes]:
    """Append leaves to a tree of ``tree_size`` leaves whose frontier is ``frontier``.

    ``frontier`` is updated in place to the frontier of the grown tree. Returns every node
    that became complete, in completion order: for each leaf, the leaf hash itself, then the
    interior nodes whose last leaf it is, lowest level first. That order is the storage order
    of ``ledger.store`` (post-order), so ingest writes the list as is and full verification
    compares it with what is stored in one comparison.
    """
    new = hasher.new
    completed: list[bytes] = []
    keep = completed.append
    push = frontier.append
    pop = frontier.pop
    for leaf_hash in leaf_hashes:
        keep(leaf_hash)
        if tree_size & 1:
            # Each trailing 1 bit of the old size is a perfect subtree as high as the one
            # being carried up: merge them, like carries in binary addition.
            node_hash = leaf_hash
            carries = tree_size
            while carries & 1:
                node_hash = new(NODE_PREFIX + pop() + node_hash).digest()
                keep(node_hash)
                carries >>= 1
            push(node_hash)
        else:
            push(leaf_hash)
        tree_size += 1
    return completed


def root_from_frontier(hasher: Hasher, frontier: Sequence[bytes]) -> bytes:
    """The root of the tree whose frontier is ``frontier`` (empty frontier: empty tree)."""
    if not frontier:
        return hasher.empty_root()
    return fold_subtree_hashes(hasher, frontier)


def root_from_leaf_hashes(hasher: Hasher, leaf_hashes: Sequence[bytes]) -> bytes:
    """MTH of a whole tree given all its leaf hashes, streaming in O(log n) memory."""
    frontier: list[bytes] = []
    append_leaf_hashes(hasher, frontier, 0, leaf_hashes)
    return root_from_frontier(hasher, frontier)


# --- proof construction ----------------------------------------------------------------------


def inclusion_proof(hasher: Hasher, leaf_index: int, tree_size: int, subtree_hash: SubtreeHashGetter) -> list[bytes]:
    """RFC 6962 §2.1.1 PATH(leaf_index, D[0:tree_size]): the audit path, the leaf's sibling first.

    Walks down from the root: at each split the leaf's side is followed and the other side
    recorded. Once the walk goes left, every later sibling is a perfect subtree; only the
    first right-hand sibling can be a ragged range. Hence O(log n) stored hashes in total.
    """
    if not 0 <= leaf_index < tree_size:
        raise LeafIndexOutOfRangeError(f"leaf index {leaf_index} is not in a tree of size {tree_size}")
    siblings: list[tuple[int, int]] = []
    start, end = 0, tree_size
    while end - start > 1:
        split = start + largest_power_of_two_below(end - start)
        if leaf_index < split:
            siblings.append((split, end))
            end = split
        else:
            siblings.append((start, split))
            start = split
    return [_range_hash(hasher, lo, hi, subtree_hash) for lo, hi in reversed(siblings)]


def consistency_proof(hasher: Hasher, old_size: int, new_size: int, subtree_hash: SubtreeHashGetter) -> list[bytes]:
    """RFC 6962 §2.1.2 PROOF(old_size, D[0:new_size]) = SUBPROOF(m, D[n], true), in RFC order.

    Empty when the sizes are equal. ``old_size`` must be positive: RFC 9162 defines proofs
    for 0 < m < n only, and :func:`verify_consistency` refuses size 0 (as transparency-dev does).
    """
    if not 0 < old_size <= new_size:
        raise TreeSizeOutOfRangeError(
            f"consistency proof needs 0 < old_size <= new_size, got {old_size} and {new_size} "
            "(every tree extends the empty tree, so there is nothing to prove from size 0)"
        )
    ranges: list[tuple[int, int]] = []
    start, end = 0, new_size
    while old_size != end:
        split = start + largest_power_of_two_below(end - start)
        if old_size <= split:
            ranges.append((split, end))
            end = split
        else:
            ranges.append((start, split))
            start = split
    # The walk stops at a subtree ending exactly at old_size. Starting at 0 it is the whole
    # old tree, whose root the verifier already has (SUBPROOF's b = true); otherwise it is
    # part of the proof.
    if start != 0:
        ranges.append((start, end))
    return [_range_hash(hasher, lo, hi, subtree_hash) for lo, hi in reversed(ranges)]


# --- proof verification (no ledger needed) ----------------------------------------------------


def _check_digest(hasher: Hasher, value: bytes, what: str) -> None:
    if len(value) != hasher.digest_size_bytes:
        raise MalformedProofError(f"{what} is {len(value)} bytes, expected {hasher.digest_size_bytes}")


def _check_proof_hashes(hasher: Hasher, proof: Sequence[bytes]) -> None:
    for position, proof_hash in enumerate(proof):
        _check_digest(hasher, proof_hash, f"proof hash #{position}")


def root_from_inclusion_proof(
    hasher: Hasher, leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes]
) -> bytes:
    """The root that ``proof`` leads to from ``leaf_hash`` (RFC 9162 §2.1.3.2, steps 1-4).

    Raises :class:`MalformedProofError` for an index outside the tree, hashes of the wrong
    length, or a proof with too many or too few hashes for the index and size.
    """
    if not 0 <= leaf_index < tree_size:
        raise MalformedProofError(f"leaf index {leaf_index} is not in a tree of size {tree_size}")
    _check_digest(hasher, leaf_hash, "leaf hash")
    _check_proof_hashes(hasher, proof)
    digest = hasher.digest
    fn, sn = leaf_index, tree_size - 1
    node_hash = leaf_hash
    for proof_hash in proof:
        if sn == 0:
            raise MalformedProofError(f"inclusion proof of {len(proof)} hashes is too long for leaf {leaf_index} of {tree_size}")
        if fn & 1 or fn == sn:
            node_hash = digest(NODE_PREFIX + proof_hash + node_hash)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            node_hash = digest(NODE_PREFIX + node_hash + proof_hash)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MalformedProofError(f"inclusion proof of {len(proof)} hashes is too short for leaf {leaf_index} of {tree_size}")
    return node_hash


def verify_inclusion(
    hasher: Hasher, leaf_index: int, tree_size: int, leaf_hash: bytes, proof: Sequence[bytes], root_hash: bytes
) -> None:
    """Check that ``leaf_hash`` is leaf ``leaf_index`` of the tree of ``tree_size`` with root
    ``root_hash`` (RFC 9162 §2.1.3.2). Returns None; raises :class:`MalformedProofError` or
    :class:`RootMismatchError`."""
    computed = root_from_inclusion_proof(hasher, leaf_index, tree_size, leaf_hash, proof)
    if computed != root_hash:
        raise RootMismatchError(f"inclusion proof for leaf {leaf_index} leads to {computed.hex()}, not {root_hash.hex()}")


def verify_consistency(
    hasher: Hasher, old_size: int, new_size: int, old_root: bytes, new_root: bytes, proof: Sequence[bytes]
) -> None:
    """Check that the tree (``new_size``, ``new_root``) extends (``old_size``, ``old_root``)
    (RFC 9162 §2.1.4.2). Returns None; raises :class:`MalformedProofError` or
    :class:`RootMismatchError`.

    Edge cases follow transparency-dev/merkle: ``old_size == 0`` is refused (meaningless),
    equal sizes need an empty proof and equal roots.
    """
    if old_size > new_size:
        raise MalformedProofError(f"old size {old_size} is larger than new size {new_size}")
    if old_size == 0:
        raise MalformedProofError("consistency with the empty tree is meaningless; refusing size 0")
    if old_size == new_size:
        if proof:
            raise MalformedProofError(f"sizes are equal but the proof has {len(proof)} hashes, expected none")
        if old_root != new_root:
            raise RootMismatchError(f"trees of equal size {old_size} have different roots")
        return
    if not proof:
        raise MalformedProofError(f"empty consistency proof from size {old_size} to {new_size}")
    _check_proof_hashes(hasher, proof)
    digest = hasher.digest
    path = list(proof)
    if old_size & (old_size - 1) == 0:  # the old tree is one perfect subtree: its root seeds both walks
        path.insert(0, old_root)
    fn, sn = old_size - 1, new_size - 1
    while fn & 1:
        fn >>= 1
        sn >>= 1
    old_hash = new_hash = path[0]
    for proof_hash in path[1:]:
        if sn == 0:
            raise MalformedProofError(f"consistency proof from {old_size} to {new_size} has too many hashes ({len(proof)})")
        if fn & 1 or fn == sn:
            old_hash = digest(NODE_PREFIX + proof_hash + old_hash)
            new_hash = digest(NODE_PREFIX + proof_hash + new_hash)
            while not fn & 1 and fn != 0:
                fn >>= 1
                sn >>= 1
        else:
            new_hash = digest(NODE_PREFIX + new_hash + proof_hash)
        fn >>= 1
        sn >>= 1
    if sn != 0:
        raise MalformedProofError(f"consistency proof from {old_size} to {new_size} is too short ({len(proof)} hashes)")
    if old_hash != old_root:
        raise RootMismatchError(f"consistency proof leads to old root {old_hash.hex()}, not {old_root.hex()}")
    if new_hash != new_root:
        raise RootMismatchError(f"consistency proof leads to new root {new_hash.hex()}, not {new_root.hex()}")

"""An independent, deliberately naive RFC 6962 implementation for cross-checking.

Written straight from the recursive definitions of RFC 6962 §2.1 (MTH, PATH, PROOF,
SUBPROOF) over a list of entries, sharing no code with ``ledger``. Memoised on ranges so
that property tests can ask for every proof of a tree of a few hundred leaves.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from functools import lru_cache

from blake3 import blake3

HASH_FUNCTIONS: dict[str, Callable[[bytes], bytes]] = {
    "sha256": lambda data: hashlib.sha256(data).digest(),
    "blake3": lambda data: blake3(data).digest(),
}


class ReferenceTree:
    def __init__(self, hash_name: str, entries: list[bytes]) -> None:
        self._hash = HASH_FUNCTIONS[hash_name]
        self._entries = list(entries)
        self.mth = lru_cache(maxsize=None)(self._mth)

    @staticmethod
    def _split(n: int) -> int:
        k = 1
        while k * 2 < n:
            k *= 2
        return k

    def _mth(self, start: int, end: int) -> bytes:
        n = end - start
        if n == 0:
            return self._hash(b"")
        if n == 1:
            return self._hash(b"\x00" + self._entries[start])
        k = self._split(n)
        return self._hash(b"\x01" + self.mth(start, start + k) + self.mth(start + k, end))

    def root(self, size: int) -> bytes:
        return self.mth(0, size)

    def path(self, m: int, start: int, end: int) -> list[bytes]:
        """PATH(m, D[start:end]) with m relative to start."""
        n = end - start
        if n == 1:
            return []
        k = self._split(n)
        if m < k:
            return self.path(m, start, start + k) + [self.mth(start + k, end)]
        return self.path(m - k, start + k, end) + [self.mth(start, start + k)]

    def inclusion_proof(self, index: int, size: int) -> list[bytes]:
        return self.path(index, 0, size)

    def subproof(self, m: int, start: int, end: int, whole: bool) -> list[bytes]:
        """SUBPROOF(m, D[start:end], b) with m relative to start."""
        n = end - start
        if m == n:
            return [] if whole else [self.mth(start, end)]
        k = self._split(n)
        if m <= k:
            return self.subproof(m, start, start + k, whole) + [self.mth(start + k, end)]
        return self.subproof(m - k, start + k, end, False) + [self.mth(start, start + k)]

    def consistency_proof(self, old_size: int, new_size: int) -> list[bytes]:
        return self.subproof(old_size, 0, new_size, True)

"""The decision ledger: an append-only RFC 6962 Merkle tree over gateway decisions, on LMDB.

- ``ledger.merkle``: hashing (blake3 default, sha256), proofs and pure proof verification.
- ``ledger.store``: :class:`LedgerStore`, durable group-committed appends, O(log n) roots
  and proofs at any size, streaming full verification.
- ``ledger.checkpoint``: checkpoints as C2SP signed notes with Ed25519 keys.
- ``ledger.errors``: one exception class per condition, all under :class:`LedgerError`.
- ``ledger.entries``: the canonical entry encoding (docs/ledger.md) and lifecycle names.
- ``ledger.index``: lookup indexes, de-duplication and ingest positions beside the tree.
- ``ledger.ingest``: the ingest worker (JetStream -> LMDB, exactly once, checkpoints).
- ``ledger.reader``, ``ledger.explain``: entries, proofs, checkpoints, ExplainOrder.
- ``ledger.service``: the LedgerService gRPC servicer; ``ledger.runtime``: all of it running.
- ``ledger.pack``: evidence packs (export, verify-pack); ``ledger.cli``: ``pretrade ledger``.
- ``ledger.layout``: files under the data dir, signing keys.
"""

from ledger.checkpoint import (
    Checkpoint,
    NoteSigner,
    NoteVerifier,
    generate_key_pair,
    open_note,
    sign_checkpoint,
    verify_checkpoint,
)
from ledger.errors import LedgerError
from ledger.merkle import (
    DEFAULT_HASH_NAME,
    Hasher,
    hasher_for,
    root_from_inclusion_proof,
    verify_consistency,
    verify_inclusion,
)
from ledger.store import DEFAULT_MAP_SIZE_BYTES, LedgerStore, StoredCheckpoint, VerifyReport

__all__ = [
    "DEFAULT_HASH_NAME",
    "DEFAULT_MAP_SIZE_BYTES",
    "Checkpoint",
    "Hasher",
    "LedgerError",
    "LedgerStore",
    "NoteSigner",
    "NoteVerifier",
    "StoredCheckpoint",
    "VerifyReport",
    "generate_key_pair",
    "hasher_for",
    "open_note",
    "root_from_inclusion_proof",
    "sign_checkpoint",
    "verify_checkpoint",
    "verify_consistency",
    "verify_inclusion",
]

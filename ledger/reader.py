"""Read side of the ledger: entries, proofs and checkpoints as ``pretrade.v1`` messages.

Shared by the LedgerService (``ledger.service``), the CLI's local mode, ExplainOrder and
the evidence-pack export, so that all of them answer the same question the same way.
Every method is a few LMDB point reads (O(log n) for proofs) and is safe to call from any
thread, beside the ingest worker writing (a readonly store in another process, or the
worker's own store in-process).
"""

from __future__ import annotations

from ledger.checkpoint import NoteVerifier, verify_checkpoint
from ledger.entries import DecodedEntry, decode_entry, to_proto
from ledger.errors import CheckpointNotFoundError, EntryNotCheckpointedError, NoCheckpointError
from ledger.index import LedgerIndexes
from ledger.store import LedgerStore, StoredCheckpoint
from pretrade.v1 import ledger_pb2


class LedgerReader:
    """Answers about one open ledger. ``verifier`` (the checkpoint signer's public key)
    is reported with checkpoints and, when given, every checkpoint handed out is checked
    against it first."""

    def __init__(self, store: LedgerStore, verifier: NoteVerifier | None = None) -> None:
        self.store = store
        self.indexes = LedgerIndexes(store)
        self.verifier = verifier

    @property
    def hash_name(self) -> str:
        return self.store.hash_name

    def decoded(self, index: int) -> DecodedEntry:
        return decode_entry(self.store.entry(index))

    def entry(self, index: int) -> ledger_pb2.LedgerEntry:
        """Entry ``index`` decoded, with its canonical bytes and stored leaf hash."""
        return to_proto(index, self.decoded(index), self.store.leaf_hash(index))

    # --- checkpoints ---------------------------------------------------------------------------

    def signed_checkpoint(self, stored: StoredCheckpoint) -> ledger_pb2.SignedCheckpoint:
        if self.verifier is not None:
            verify_checkpoint(stored.note, [self.verifier])
        checkpoint = stored.checkpoint
        return ledger_pb2.SignedCheckpoint(
            note=stored.note,
            origin=checkpoint.origin,
            tree_size=checkpoint.tree_size,
            root_hash=checkpoint.root_hash,
            timestamp_ms=checkpoint.timestamp_ms or 0,
            hash_name=self.hash_name,
            verifier_key=self.verifier.vkey() if self.verifier is not None else "",
        )

    def latest_checkpoint(self) -> StoredCheckpoint:
        """The latest checkpoint; :class:`NoCheckpointError` while there is none."""
        latest = self.store.latest_checkpoint()
        if latest is None:
            raise NoCheckpointError("the ledger has no checkpoint yet")
        return latest

    def checkpoint(self, tree_size: int | None = None) -> ledger_pb2.SignedCheckpoint:
        """The checkpoint at ``tree_size`` (None: the latest)."""
        if tree_size is None:
            return self.signed_checkpoint(self.latest_checkpoint())
        stored = self.store.checkpoint(tree_size)
        if stored is None:
            raise CheckpointNotFoundError(f"no checkpoint at tree size {tree_size}")
        return self.signed_checkpoint(stored)

    # --- proofs --------------------------------------------------------------------------------

    def inclusion_proof(
        self, index: int, tree_size: int | None = None
    ) -> tuple[ledger_pb2.InclusionProof, ledger_pb2.SignedCheckpoint | None]:
        """The audit path of entry ``index`` in the tree of ``tree_size`` (None: the latest
        checkpoint's, which must cover the entry), and the checkpoint at that size if any."""
        if tree_size is None:
            stored = self.latest_checkpoint()
            tree_size = stored.checkpoint.tree_size
            if index >= tree_size:
                raise EntryNotCheckpointedError(
                    f"entry {index} is newer than the latest checkpoint (tree size {tree_size}); "
                    "it is covered by the next one"
                )
        else:
            stored = self.store.checkpoint(tree_size)
        proof = ledger_pb2.InclusionProof(
            leaf_index=index,
            tree_size=tree_size,
            leaf_hash=self.store.leaf_hash(index),
            hashes=self.store.inclusion_proof(index, tree_size),
            root_hash=self.store.root(tree_size),
            hash_name=self.hash_name,
        )
        return proof, self.signed_checkpoint(stored) if stored is not None else None

    def consistency_proof(self, old_size: int, new_size: int | None = None) -> ledger_pb2.GetConsistencyProofResponse:
        """Proof that the tree of ``new_size`` (None: the latest checkpoint's) extends the
        tree of ``old_size``."""
        if new_size is None:
            new_size = self.latest_checkpoint().checkpoint.tree_size
        return ledger_pb2.GetConsistencyProofResponse(
            old_size=old_size,
            new_size=new_size,
            hashes=self.store.consistency_proof(old_size, new_size),
            old_root=self.store.root(old_size),
            new_root=self.store.root(new_size),
            hash_name=self.hash_name,
        )

"""Exceptions of the decision ledger: one class per condition, all under ``LedgerError``.

Callers that only need "something is wrong with the ledger" catch ``LedgerError``; the
ingest path, the offline verifier and the tests tell conditions apart by class, never by
parsing messages.
"""

from __future__ import annotations


class LedgerError(Exception):
    """Base class of every error raised by the ``ledger`` package."""


# --- opening and configuration -------------------------------------------------------


class UnknownHashError(LedgerError, ValueError):
    """A hash name other than the supported ones (``blake3``, ``sha256``) was requested."""


class LedgerHashMismatchError(LedgerError):
    """A ledger was opened with a hash other than the one fixed in its metadata at creation.

    Mixing hashes would make every stored node and every published checkpoint unverifiable,
    so the hash is chosen once per ledger and checked on every open.
    """


class LedgerNotFoundError(LedgerError):
    """``LedgerStore.open`` found no ledger at the path (``create`` makes new ledgers)."""


class LedgerExistsError(LedgerError):
    """``LedgerStore.create`` found a ledger already at the path (``open`` opens it)."""


class LedgerFormatError(LedgerError):
    """The ledger's metadata is missing or written by an unknown format version."""


class LedgerReadOnlyError(LedgerError):
    """A write was attempted through a store opened with ``readonly=True``."""


class ConcurrentWriterError(LedgerError):
    """The tree grew under this writer: another process appended to the same ledger.

    A ledger has exactly one writer process; the writer keeps the right edge of the tree in
    memory and refuses to append on top of entries it did not write.
    """


# --- requests outside the tree ---------------------------------------------------------


class LeafIndexOutOfRangeError(LedgerError, IndexError):
    """A leaf index is negative or not below the tree size it is asked about."""


class TreeSizeOutOfRangeError(LedgerError, ValueError):
    """A tree size is negative, larger than the ledger, or out of order (old > new)."""


# --- proof verification ----------------------------------------------------------------


class ProofVerificationError(LedgerError):
    """An inclusion or consistency proof does not prove what it claims."""


class MalformedProofError(ProofVerificationError):
    """The proof is structurally wrong: impossible sizes or index, wrong number of hashes,
    or a hash of the wrong length."""


class RootMismatchError(ProofVerificationError):
    """The proof is well formed but the root it leads to differs from the expected root."""


# --- full verification of a stored ledger ----------------------------------------------


class LedgerIntegrityError(LedgerError):
    """``LedgerStore.verify`` found stored data that disagrees with the entries.

    ``index`` is the first entry index at which the ledger is wrong (``None`` when the fault
    cannot be pinned to one entry); ``reason`` says what is wrong there.
    """

    def __init__(self, index: int | None, reason: str) -> None:
        self.index = index
        self.reason = reason
        where = f"entry {index}" if index is not None else "ledger"
        super().__init__(f"{where}: {reason}")


class MissingEntryError(LedgerIntegrityError):
    """An entry below the recorded tree size is absent (deleted, or the tail truncated)."""


class LeafHashMismatchError(LedgerIntegrityError):
    """The stored leaf hash differs from H(0x00 || entry): the entry or its hash was altered."""


class NodeHashMismatchError(LedgerIntegrityError):
    """A stored interior node differs from the hash of its recomputed children.

    ``index`` is the last entry the node covers (the append that wrote it); ``level`` and
    ``node_index`` locate the node itself (it covers entries
    ``node_index * 2**level .. (node_index + 1) * 2**level - 1``).
    """

    def __init__(self, index: int, level: int, node_index: int, reason: str) -> None:
        self.level = level
        self.node_index = node_index
        super().__init__(index, reason)


class MissingNodeError(LedgerIntegrityError):
    """A perfect-subtree hash that the tree size implies is absent from the node store."""


class TrailingDataError(LedgerIntegrityError):
    """Entries or nodes exist beyond the recorded tree size (``index`` is that size)."""


class CheckpointIntegrityError(LedgerIntegrityError):
    """A stored checkpoint is unreadable, badly signed, or disagrees with the tree.

    ``tree_size`` is the checkpoint's size (its key in the checkpoint store).
    """

    def __init__(self, tree_size: int, index: int | None, reason: str) -> None:
        self.tree_size = tree_size
        super().__init__(index, f"checkpoint at tree size {tree_size}: {reason}")


# --- signed notes, keys and checkpoints --------------------------------------------------


class NoteError(LedgerError):
    """Base class of signed-note, key and checkpoint-format errors."""


class MalformedNoteError(NoteError):
    """The text is not a well-formed signed note (c2sp.org/signed-note)."""


class NoteSignatureError(NoteError):
    """A signature by a known key (same name and key ID) does not verify; the note is rejected."""


class UnverifiedNoteError(NoteError):
    """No signature in the note comes from any of the trusted keys."""


class InvalidKeyError(NoteError):
    """A signer or verifier key string, or a key name, is malformed or inconsistent."""


class MalformedCheckpointError(NoteError):
    """A note text is not a well-formed checkpoint body (c2sp.org/tlog-checkpoint)."""


# --- canonical entries ------------------------------------------------------------------


class EntryFormatError(LedgerError, ValueError):
    """Bytes that are not a canonical ledger entry: unknown encoding version or kind, too
    short, or a payload that does not decode as the kind's message with its identity set
    (docs/ledger.md, "Entry encoding")."""


# --- reading and explaining ---------------------------------------------------------------


class NoCheckpointError(LedgerError):
    """The ledger has no checkpoint yet, and the request needs one (a proof against the
    latest checkpoint, an evidence pack)."""


class EntryNotCheckpointedError(LedgerError):
    """The entry is newer than the latest checkpoint, so there is no signed root to prove
    it against yet (checkpoints follow within one checkpoint interval)."""


class CheckpointNotFoundError(LedgerError, LookupError):
    """No checkpoint is stored at the requested tree size."""


class UnknownOrderError(LedgerError, LookupError):
    """The ledger holds no entry for the requested (account, client order id) or trace id."""


class ExportRangeError(LedgerError, ValueError):
    """An export range that is empty, reversed, or not covered by the latest checkpoint."""


class SigningKeyFileError(LedgerError):
    """A signing or verifier key file that cannot be read, is malformed, or (keygen) would
    overwrite an existing key."""


# --- evidence packs -----------------------------------------------------------------------


class PackError(LedgerError):
    """Base class of evidence-pack errors: the pack does not prove what it claims."""


class PackFormatError(PackError):
    """Not an evidence pack: unreadable archive, missing member, malformed manifest or
    record, or an unknown pack format version."""


class PackFileMismatchError(PackError):
    """A member of the pack differs from the digest the manifest lists for it."""


class PackCheckpointError(PackError):
    """The pack's checkpoint does not parse, is not signed by the (pinned) verifier key, or
    disagrees with the manifest."""


class PackEntryError(PackError):
    """One entry of the pack fails; ``index`` is its ledger index, ``reason`` says why."""

    def __init__(self, index: int, reason: str) -> None:
        self.index = index
        self.reason = reason
        super().__init__(f"entry {index}: {reason}")


class PackLeafHashMismatchError(PackEntryError):
    """An entry's listed leaf hash differs from H(0x00 || entry bytes)."""


class PackInclusionProofError(PackEntryError):
    """An entry's inclusion proof does not lead to the checkpoint's root."""


class PackEntryFormatError(PackEntryError):
    """An entry's bytes are not a canonical ledger entry."""


class PackRangeError(PackError):
    """The pack's entries do not cover exactly the range its manifest states, once each."""


class PackRulesError(PackError):
    """A rules version referenced by a decision of the pack is not backed by a proven
    RulesLoaded entry, or a rules text file differs from the text in that entry."""


# --- ingest --------------------------------------------------------------------------------


class LedgerLockedError(LedgerError):
    """Another ingest worker (process, or instance in this one) owns the ledger directory:
    a ledger has one writer."""

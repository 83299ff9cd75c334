"""Evidence packs: a range of ledger entries that anyone can check with nothing else.

``export_pack`` writes one zip file; ``verify_pack`` checks it using only the pack and the
pure functions of ``ledger.merkle``, ``ledger.checkpoint`` and ``ledger.entries`` (no
ledger, no network, no gateway code). Members::

    manifest.json     what the pack claims (below), and the SHA-256 of every other member
    checkpoint.note   the checkpoint every proof leads to, as the ledger signed it
    verifier.vkey     the signer's verifier key (when the ledger signs); pin your own copy
    entries.jsonl     one JSON object per entry of the range, in index order:
                      {"index", "entry" (base64 of the canonical entry bytes),
                       "leaf_hash" (hex), "proof" (hex audit path, sibling first)}
    rules.jsonl       the same, for the RulesLoaded entries of every rules version a
                      decision of the range was checked against (anywhere in the ledger)
    rules/<index>.toml  the rules text of each of those entries, for reading

``manifest.json``: ``format`` (:data:`PACK_FORMAT`), ``hash`` (blake3 | sha256),
``origin``, ``created_ns``, ``range`` (``first``, ``last``: inclusive entry indices),
``checkpoint`` (``tree_size``, ``root_hash`` hex), ``verifier_key`` (or null), ``rules``
(``[{"version", "entry_index", "file"}]``), ``rules_unrecorded`` (versions referenced but
with no RulesLoaded entry in the ledger, e.g. from a gateway without ledger events) and
``files`` (member name -> SHA-256 hex).

What a successful verification means: the checkpoint is signed by the verifier key (the
pinned one when given), every entry's bytes hash to its leaf hash, every leaf hash is
proven by its audit path to be at its index in the checkpointed tree, the entries cover the
stated range exactly once each, and each decision's rules version is backed by a proven
RulesLoaded entry whose text is the rules file shipped (or is declared unrecorded). The
manifest itself is not signed; nothing in it is trusted that the checkpoint does not prove.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import os
import time
import zipfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, replace
from pathlib import Path

from ledger import merkle
from ledger.checkpoint import NoteVerifier, checkpoint_from_note, verify_checkpoint
from ledger.entries import DecodedEntry, EntryKind, decode_entry
from ledger.errors import (
    EntryFormatError,
    ExportRangeError,
    InvalidKeyError,
    NoteError,
    PackCheckpointError,
    PackEntryFormatError,
    PackFileMismatchError,
    PackFormatError,
    PackInclusionProofError,
    PackLeafHashMismatchError,
    PackRangeError,
    PackRulesError,
    ProofVerificationError,
    UnknownHashError,
)
from ledger.reader import LedgerReader
from ledger.store import StoredCheckpoint

PACK_FORMAT = "pretrade-evidence-pack/1"
MANIFEST_FILE = "manifest.json"
CHECKPOINT_FILE = "checkpoint.note"
VERIFIER_FILE = "verifier.vkey"
ENTRIES_FILE = "entries.jsonl"
RULES_FILE = "rules.jsonl"
RULES_TEXT_DIR = "rules"


@dataclass(frozen=True)
class PackSummary:
    """What an export wrote, or what a verification checked."""

    path: Path
    first_index: int
    last_index: int
    tree_size: int
    root_hash: bytes
    hash_name: str
    signed: bool  # the checkpoint carries a signature that was (verify) or can be checked
    verifier_key: str | None
    rules_versions: tuple[str, ...]  # backed by a proven RulesLoaded entry
    rules_unrecorded: tuple[str, ...]

    @property
    def entries(self) -> int:
        return self.last_index - self.first_index + 1


# --- export ---------------------------------------------------------------------------------


def _record(reader: LedgerReader, index: int, tree_size: int) -> dict[str, object]:
    return {
        "index": index,
        "entry": base64.b64encode(reader.store.entry(index)).decode("ascii"),
        "leaf_hash": reader.store.leaf_hash(index).hex(),
        "proof": [node.hex() for node in reader.store.inclusion_proof(index, tree_size)],
    }


def export_pack(
    reader: LedgerReader, path: str | os.PathLike[str], first_index: int, last_index: int | None = None
) -> PackSummary:
    """Write the evidence pack of entries ``first_index .. last_index`` (inclusive; None:
    the last entry the latest checkpoint covers) to ``path``, with proofs against the
    latest checkpoint. Raises ``NoCheckpointError`` or :class:`ExportRangeError`."""
    stored = reader.latest_checkpoint()
    checkpoint = stored.checkpoint
    tree_size = checkpoint.tree_size
    last_index = tree_size - 1 if last_index is None else last_index
    if not 0 <= first_index <= last_index:
        raise ExportRangeError(f"empty or reversed range {first_index}..{last_index}")
    if last_index >= tree_size:
        raise ExportRangeError(
            f"entry {last_index} is newer than the latest checkpoint (tree size {tree_size}); "
            f"export up to {tree_size - 1}, or wait for the next checkpoint"
        )
    signed_checkpoint = reader.signed_checkpoint(stored)  # checks the signature when a verifier is known
    path = Path(path)
    partial = path.with_name(path.name + ".partial")  # renamed into place once complete
    try:
        summary = _write_pack(reader, partial, stored, signed_checkpoint.verifier_key or None, first_index, last_index)
        os.replace(partial, path)
    finally:
        partial.unlink(missing_ok=True)
    return replace(summary, path=path)


def _write_pack(
    reader: LedgerReader, path: Path, stored: StoredCheckpoint, verifier_key: str | None, first_index: int, last_index: int
) -> PackSummary:
    checkpoint = stored.checkpoint
    tree_size = checkpoint.tree_size
    digests: dict[str, str] = {}
    referenced: dict[str, None] = {}
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as archive:

        def write_member(name: str, data: bytes) -> None:
            archive.writestr(name, data)
            digests[name] = hashlib.sha256(data).hexdigest()

        digest = hashlib.sha256()
        entries_info = zipfile.ZipInfo(ENTRIES_FILE, date_time=time.localtime()[:6])
        entries_info.compress_type = zipfile.ZIP_DEFLATED
        with archive.open(entries_info, "w") as member:
            for index in range(first_index, last_index + 1):
                record = _record(reader, index, tree_size)
                decoded = reader.decoded(index)
                if decoded.kind is EntryKind.DECISION:
                    referenced[decoded.message.rules_version] = None
                line = (json.dumps(record, separators=(",", ":")) + "\n").encode("utf-8")
                member.write(line)
                digest.update(line)
        digests[ENTRIES_FILE] = digest.hexdigest()

        rules, unrecorded, rules_lines = [], [], []
        for version in referenced:
            loads = [index for index in reader.indexes.rules_entries(version) if index < tree_size]
            if not loads:
                unrecorded.append(version)
                continue
            index = loads[0]
            text_file = f"{RULES_TEXT_DIR}/{index}.toml"
            write_member(text_file, reader.decoded(index).message.rules_loaded.text.encode("utf-8"))
            rules_lines.append(json.dumps(_record(reader, index, tree_size), separators=(",", ":")) + "\n")
            rules.append({"version": version, "entry_index": index, "file": text_file})
        write_member(RULES_FILE, "".join(rules_lines).encode("utf-8"))
        write_member(CHECKPOINT_FILE, stored.note.encode("utf-8"))
        if verifier_key:
            write_member(VERIFIER_FILE, (verifier_key + "\n").encode("utf-8"))
        manifest = {
            "format": PACK_FORMAT,
            "hash": reader.hash_name,
            "origin": checkpoint.origin,
            "created_ns": time.time_ns(),
            "range": {"first": first_index, "last": last_index},
            "checkpoint": {"file": CHECKPOINT_FILE, "tree_size": tree_size, "root_hash": checkpoint.root_hash.hex()},
            "verifier_key": verifier_key,
            "rules": rules,
            "rules_unrecorded": unrecorded,
            "files": digests,
        }
        archive.writestr(MANIFEST_FILE, json.dumps(manifest, indent=2, sort_keys=True) + "\n")
    return PackSummary(
        path=path,
        first_index=first_index,
        last_index=last_index,
        tree_size=tree_size,
        root_hash=checkpoint.root_hash,
        hash_name=reader.hash_name,
        signed="\n\n" in stored.note,
        verifier_key=verifier_key,
        rules_versions=tuple(rule["version"] for rule in rules),
        rules_unrecorded=tuple(unrecorded),
    )


# --- verification ---------------------------------------------------------------------------


def _read_member(archive: zipfile.ZipFile, name: str) -> bytes:
    try:
        return archive.read(name)
    except KeyError:
        raise PackFormatError(f"the pack has no {name}") from None


def _field(document: dict, key: str, expected_type: type, where: str):
    value = document.get(key) if isinstance(document, dict) else None
    if not isinstance(value, expected_type) or isinstance(value, bool) and expected_type is int:
        raise PackFormatError(f"{where}: {key!r} is missing or not a {expected_type.__name__}")
    return value


def _hex(text: object, where: str) -> bytes:
    try:
        return bytes.fromhex(text)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise PackFormatError(f"{where}: {text!r} is not hex") from None


def _records(data: bytes, member: str) -> Iterator[tuple[int, bytes, bytes, list[bytes]]]:
    """``(index, entry bytes, leaf hash, proof)`` of every line of a JSONL member."""
    for line_number, line in enumerate(data.decode("utf-8", errors="replace").splitlines(), 1):
        where = f"{member} line {line_number}"
        try:
            record = json.loads(line)
        except ValueError:
            raise PackFormatError(f"{where}: not JSON") from None
        index = _field(record, "index", int, where)
        try:
            entry = base64.b64decode(_field(record, "entry", str, where), validate=True)
        except binascii.Error:
            raise PackFormatError(f"{where}: entry is not base64") from None
        leaf_hash = _hex(_field(record, "leaf_hash", str, where), where)
        proof = [_hex(node, where) for node in _field(record, "proof", list, where)]
        yield index, entry, leaf_hash, proof


def _check_entry(
    hasher: merkle.Hasher, tree_size: int, root_hash: bytes, index: int, entry: bytes, leaf_hash: bytes, proof: Sequence[bytes]
) -> DecodedEntry:
    if hasher.hash_leaf(entry) != leaf_hash:
        raise PackLeafHashMismatchError(index, "the entry bytes do not hash to the listed leaf hash: entry altered")
    try:
        merkle.verify_inclusion(hasher, index, tree_size, leaf_hash, proof, root_hash)
    except ProofVerificationError as exc:
        raise PackInclusionProofError(index, f"inclusion proof fails: {exc}") from None
    try:
        return decode_entry(entry)
    except EntryFormatError as exc:
        raise PackEntryFormatError(index, str(exc)) from None


def _checkpoint(note: str, verifiers: Sequence[NoteVerifier]):
    try:
        return verify_checkpoint(note, verifiers) if verifiers else checkpoint_from_note(note)
    except NoteError as exc:
        raise PackCheckpointError(f"checkpoint: {exc}") from None


def verify_pack(path: str | os.PathLike[str], pinned_verifier: NoteVerifier | None = None) -> PackSummary:
    """Check the evidence pack at ``path`` (see the module docstring for what that means).

    The checkpoint's signature is checked against ``pinned_verifier`` when given, else
    against the key shipped in the pack (which only shows the pack is self-consistent:
    pin the ledger's published key to know who signed). Raises a :class:`PackError`
    subclass naming the first problem; returns a :class:`PackSummary` otherwise.
    """
    path = Path(path)
    try:
        archive = zipfile.ZipFile(path)
    except (OSError, zipfile.BadZipFile) as exc:
        raise PackFormatError(f"{path}: not a readable evidence pack: {exc}") from None
    with archive:
        try:
            manifest = json.loads(_read_member(archive, MANIFEST_FILE))
        except ValueError:
            raise PackFormatError(f"{MANIFEST_FILE} is not JSON") from None
        if not isinstance(manifest, dict) or manifest.get("format") != PACK_FORMAT:
            raise PackFormatError(f"{MANIFEST_FILE}: not a {PACK_FORMAT} manifest")
        try:
            hasher = merkle.hasher_for(_field(manifest, "hash", str, MANIFEST_FILE))
        except UnknownHashError as exc:
            raise PackFormatError(str(exc)) from None
        files = _field(manifest, "files", dict, MANIFEST_FILE)
        members = set(archive.namelist()) - {MANIFEST_FILE}
        if members != set(files):
            raise PackFormatError(f"members {sorted(members ^ set(files))} are not exactly those the manifest lists")
        contents = {}
        for name, expected in files.items():
            data = _read_member(archive, name)
            if hashlib.sha256(data).hexdigest() != expected:
                raise PackFileMismatchError(f"{name} differs from the digest in the manifest")
            contents[name] = data

    shipped_key = manifest.get("verifier_key")
    verifiers: list[NoteVerifier] = []
    if pinned_verifier is not None:
        verifiers.append(pinned_verifier)
    elif shipped_key:
        try:
            verifiers.append(NoteVerifier.from_vkey(shipped_key))
        except InvalidKeyError as exc:
            raise PackCheckpointError(f"the pack's verifier key: {exc}") from None
    note = contents.get(CHECKPOINT_FILE, b"").decode("utf-8", errors="replace")
    checkpoint = _checkpoint(note, verifiers)
    claimed = _field(manifest, "checkpoint", dict, MANIFEST_FILE)
    if checkpoint.tree_size != claimed.get("tree_size") or checkpoint.root_hash.hex() != claimed.get("root_hash"):
        raise PackCheckpointError("the manifest's tree size or root differs from the checkpoint's")
    if checkpoint.origin != manifest.get("origin"):
        raise PackCheckpointError("the manifest's origin differs from the checkpoint's")
    tree_size, root_hash = checkpoint.tree_size, checkpoint.root_hash

    claimed_range = _field(manifest, "range", dict, MANIFEST_FILE)
    first = _field(claimed_range, "first", int, "range")
    last = _field(claimed_range, "last", int, "range")
    expected_index = first
    referenced: dict[str, None] = {}
    for index, entry, leaf_hash, proof in _records(contents.get(ENTRIES_FILE, b""), ENTRIES_FILE):
        if index != expected_index:
            raise PackRangeError(f"entry {index} where entry {expected_index} was due: entries missing, repeated or out of order")
        decoded = _check_entry(hasher, tree_size, root_hash, index, entry, leaf_hash, proof)
        if decoded.kind is EntryKind.DECISION:
            referenced[decoded.message.rules_version] = None
        expected_index += 1
    if expected_index != last + 1:
        raise PackRangeError(f"the entries end at {expected_index - 1}, the manifest's range at {last}")

    rules_claims = {rule.get("entry_index"): rule for rule in _field(manifest, "rules", list, MANIFEST_FILE)}
    proven_versions = []
    for index, entry, leaf_hash, proof in _records(contents.get(RULES_FILE, b""), RULES_FILE):
        decoded = _check_entry(hasher, tree_size, root_hash, index, entry, leaf_hash, proof)
        claim = rules_claims.pop(index, None)
        message = decoded.message
        if claim is None or decoded.kind is not EntryKind.GATEWAY_EVENT or message.WhichOneof("event") != "rules_loaded":
            raise PackRulesError(f"entry {index} in {RULES_FILE} is not a RulesLoaded entry the manifest lists")
        loaded = message.rules_loaded
        if loaded.rules_version != claim.get("version"):
            raise PackRulesError(f"entry {index} loads rules {loaded.rules_version}, the manifest says {claim.get('version')}")
        if contents.get(claim.get("file")) != loaded.text.encode("utf-8"):
            raise PackRulesError(f"{claim.get('file')} differs from the rules text recorded in entry {index}")
        proven_versions.append(loaded.rules_version)
    if rules_claims:
        raise PackRulesError(f"the manifest lists rules entries {sorted(rules_claims)} that {RULES_FILE} does not prove")
    unrecorded = tuple(_field(manifest, "rules_unrecorded", list, MANIFEST_FILE))
    unbacked = [version for version in referenced if version not in proven_versions and version not in unrecorded]
    if unbacked:
        raise PackRulesError(f"rules versions {unbacked} are referenced by decisions but neither proven nor declared unrecorded")
    return PackSummary(
        path=path,
        first_index=first,
        last_index=last,
        tree_size=tree_size,
        root_hash=root_hash,
        hash_name=hasher.name,
        signed=bool(verifiers),
        verifier_key=verifiers[0].vkey() if verifiers else None,
        rules_versions=tuple(proven_versions),
        rules_unrecorded=unrecorded,
    )

"""Checkpoints as C2SP signed notes, signed with Ed25519.

Formats (https://c2sp.org/signed-note, https://c2sp.org/tlog-checkpoint)::

    <origin>\\n                      checkpoint body = the note text
    <tree size, decimal>\\n
    <base64 root hash>\\n
    [<extension line>\\n ...]
    \\n                              blank line, then one line per signature
    — <key name> <base64(4-byte key ID || 64-byte Ed25519 signature)>\\n

    key ID        = SHA-256(key name || 0x0A || 0x01 || 32-byte public key)[:4]  (big-endian)
    verifier key  = <name>+<8 hex key ID>+<base64(0x01 || public key)>
    signer key    = PRIVATE+KEY+<name>+<8 hex key ID>+<base64(0x01 || 32-byte seed)>

The key strings are those of Go's ``golang.org/x/mod/sumdb/note`` and transparency-dev
tooling, so keys and notes interoperate with the wider tlog ecosystem.

The checkpoint time is carried, signed, in one extension line ``time-unix-ms <integer>``.
tlog-checkpoint allows opaque extension lines; putting the time there (rather than beside
the note) means the signature attests when the log committed to the root.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import re
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey
from cryptography.hazmat.primitives.serialization import Encoding, NoEncryption, PrivateFormat, PublicFormat

from ledger.errors import (
    InvalidKeyError,
    MalformedCheckpointError,
    MalformedNoteError,
    NoteSignatureError,
    UnverifiedNoteError,
)
from ledger.merkle import DIGEST_SIZE_BYTES

ED25519_SIGNATURE_TYPE = 0x01
KEY_ID_SIZE_BYTES = 4
ED25519_KEY_SIZE_BYTES = 32  # public key, and private seed
SIGNATURE_LINE_PREFIX = "\u2014 "  # em dash, space
SIGNER_KEY_PREFIX = "PRIVATE+KEY+"
MAX_NOTE_SIGNATURES = 64  # the spec requires accepting at least 16
MAX_NOTE_SIZE_BYTES = 1 << 20
TIME_EXTENSION_PREFIX = "time-unix-ms "
MAX_TREE_SIZE = (1 << 64) - 1  # tree sizes are uint64 on the wire and in LMDB keys

_DECIMAL_NO_LEADING_ZERO = re.compile(r"0|[1-9][0-9]*")
_FORBIDDEN_CONTROL_CHARACTERS = re.compile(r"[\x00-\x09\x0b-\x1f]")


def _b64decode_strict(text: str, what: str, error: type[Exception]) -> bytes:
    try:
        return base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError) as exc:
        raise error(f"{what} is not valid base64: {exc}") from None


def _b64encode(data: bytes) -> str:
    return base64.b64encode(data).decode("ascii")


def _is_valid_key_name(name: str) -> bool:
    """Key names must be non-empty and free of Unicode spaces and '+' (signed-note §Format)."""
    return bool(name) and "+" not in name and not any(character.isspace() for character in name)


def _check_key_name(name: str) -> None:
    if not _is_valid_key_name(name):
        raise InvalidKeyError(f"key name {name!r} must be non-empty, without spaces or '+'")


def compute_key_id(name: str, public_key: bytes) -> int:
    """The Ed25519 key ID: SHA-256(name || 0x0A || 0x01 || public key)[:4] as a big-endian uint32."""
    material = name.encode("utf-8") + b"\n" + bytes([ED25519_SIGNATURE_TYPE]) + public_key
    return int.from_bytes(hashlib.sha256(material).digest()[:KEY_ID_SIZE_BYTES], "big")


def _public_key_bytes(public_key: Ed25519PublicKey) -> bytes:
    return public_key.public_bytes(Encoding.Raw, PublicFormat.Raw)


def _parse_typed_key(encoded: str, name: str, key_id_hex: str) -> bytes:
    """Decode ``base64(0x01 || key)`` of a key string and return the raw 32-byte key."""
    _check_key_name(name)
    if not re.fullmatch(r"[0-9a-f]{8}", key_id_hex):
        raise InvalidKeyError(f"key ID {key_id_hex!r} is not 8 lowercase hex digits")
    typed_key = _b64decode_strict(encoded, "key", InvalidKeyError)
    if len(typed_key) != 1 + ED25519_KEY_SIZE_BYTES or typed_key[0] != ED25519_SIGNATURE_TYPE:
        raise InvalidKeyError("key is not an Ed25519 key (type byte 0x01 followed by 32 bytes)")
    return typed_key[1:]


@dataclass(frozen=True)
class NoteVerifier:
    """A trusted public key: verifies signatures made by the signer of the same name and ID."""

    name: str
    key_id: int
    public_key: Ed25519PublicKey

    @classmethod
    def from_public_key(cls, name: str, public_key: Ed25519PublicKey) -> NoteVerifier:
        _check_key_name(name)
        return cls(name, compute_key_id(name, _public_key_bytes(public_key)), public_key)

    @classmethod
    def from_vkey(cls, vkey: str) -> NoteVerifier:
        """Parse ``<name>+<hex key ID>+<base64(0x01 || public key)>``; the ID must match the key."""
        parts = vkey.strip().split("+", 2)
        if len(parts) != 3:
            raise InvalidKeyError("verifier key must look like <name>+<hex key ID>+<base64 key>")
        name, key_id_hex, encoded = parts
        raw_key = _parse_typed_key(encoded, name, key_id_hex)
        if compute_key_id(name, raw_key) != int(key_id_hex, 16):
            raise InvalidKeyError(f"key ID {key_id_hex} does not match the key named {name!r}")
        return cls(name, int(key_id_hex, 16), Ed25519PublicKey.from_public_bytes(raw_key))

    def vkey(self) -> str:
        """This key in verifier-key form, for publication and for offline verifiers."""
        typed_key = bytes([ED25519_SIGNATURE_TYPE]) + _public_key_bytes(self.public_key)
        return f"{self.name}+{self.key_id:08x}+{_b64encode(typed_key)}"

    def verifies(self, text: bytes, signature: bytes) -> bool:
        """Whether ``signature`` (without the key-ID prefix) is this key's signature of ``text``."""
        try:
            self.public_key.verify(signature, text)
        except InvalidSignature:
            return False
        return True


@dataclass(frozen=True)
class NoteSigner:
    """A private key that signs notes under a key name. Keep its ``skey`` string secret."""

    name: str
    key_id: int
    private_key: Ed25519PrivateKey

    @classmethod
    def generate(cls, name: str) -> NoteSigner:
        """A fresh random Ed25519 signer named ``name``."""
        _check_key_name(name)
        private_key = Ed25519PrivateKey.generate()
        return cls(name, compute_key_id(name, _public_key_bytes(private_key.public_key())), private_key)

    @classmethod
    def from_skey(cls, skey: str) -> NoteSigner:
        """Parse ``PRIVATE+KEY+<name>+<hex key ID>+<base64(0x01 || seed)>``."""
        skey = skey.strip()
        if not skey.startswith(SIGNER_KEY_PREFIX):
            raise InvalidKeyError(f"signer key must start with {SIGNER_KEY_PREFIX!r}")
        parts = skey[len(SIGNER_KEY_PREFIX) :].split("+", 2)
        if len(parts) != 3:
            raise InvalidKeyError("signer key must look like PRIVATE+KEY+<name>+<hex key ID>+<base64 key>")
        name, key_id_hex, encoded = parts
        private_key = Ed25519PrivateKey.from_private_bytes(_parse_typed_key(encoded, name, key_id_hex))
        if compute_key_id(name, _public_key_bytes(private_key.public_key())) != int(key_id_hex, 16):
            raise InvalidKeyError(f"key ID {key_id_hex} does not match the key named {name!r}")
        return cls(name, int(key_id_hex, 16), private_key)

    def skey(self) -> str:
        """This key in signer-key form (secret: store it like a password)."""
        seed = self.private_key.private_bytes(Encoding.Raw, PrivateFormat.Raw, NoEncryption())
        return f"{SIGNER_KEY_PREFIX}{self.name}+{self.key_id:08x}+{_b64encode(bytes([ED25519_SIGNATURE_TYPE]) + seed)}"

    def verifier(self) -> NoteVerifier:
        """The public half, to hand to whoever checks this signer's notes."""
        return NoteVerifier(self.name, self.key_id, self.private_key.public_key())

    def signature_line(self, text: str) -> str:
        """``— <name> <base64(key ID || signature)>\\n`` over the note text."""
        signature = self.private_key.sign(text.encode("utf-8"))
        return f"{SIGNATURE_LINE_PREFIX}{self.name} {_b64encode(self.key_id.to_bytes(KEY_ID_SIZE_BYTES, 'big') + signature)}\n"


def generate_key_pair(name: str) -> tuple[str, str]:
    """A new Ed25519 key named ``name`` as ``(signer key, verifier key)`` strings."""
    signer = NoteSigner.generate(name)
    return signer.skey(), signer.verifier().vkey()


def _check_note_characters(text: str) -> None:
    try:
        size_bytes = len(text.encode("utf-8"))
    except UnicodeEncodeError:
        raise MalformedNoteError("note is not valid UTF-8 text") from None
    if size_bytes > MAX_NOTE_SIZE_BYTES:
        raise MalformedNoteError(f"note is larger than {MAX_NOTE_SIZE_BYTES} bytes")
    if _FORBIDDEN_CONTROL_CHARACTERS.search(text):
        raise MalformedNoteError("note contains an ASCII control character other than newline")


def sign_note(text: str, signers: Sequence[NoteSigner]) -> str:
    """The signed note: ``text`` (which must end in a newline), a blank line, one signature line per signer."""
    if not text.endswith("\n"):
        raise MalformedNoteError("note text must end with a newline")
    if not signers:
        raise MalformedNoteError("a signed note needs at least one signer")
    _check_note_characters(text)
    return text + "\n" + "".join(signer.signature_line(text) for signer in signers)


def split_note(note: str) -> tuple[str, list[tuple[str, bytes]]]:
    """Split a signed note into its text and ``(key name, key ID || signature)`` pairs,
    without verifying anything. The text is separated by the note's *last* blank line."""
    _check_note_characters(note)
    separator = note.rfind("\n\n")
    if separator < 0 or not note.endswith("\n"):
        raise MalformedNoteError("note has no blank line followed by signature lines")
    text, signature_block = note[: separator + 1], note[separator + 2 :]
    lines = signature_block[:-1].split("\n") if signature_block else []
    if not lines:
        raise MalformedNoteError("note has no signature lines")
    if len(lines) > MAX_NOTE_SIGNATURES:
        raise MalformedNoteError(f"note has {len(lines)} signatures, more than the {MAX_NOTE_SIGNATURES} accepted")
    signatures = []
    for line in lines:
        name, separator_space, encoded = line.removeprefix(SIGNATURE_LINE_PREFIX).partition(" ")
        if not line.startswith(SIGNATURE_LINE_PREFIX) or not separator_space or " " in encoded:
            raise MalformedNoteError(f"malformed signature line {line!r}")
        if not _is_valid_key_name(name):
            raise MalformedNoteError(f"signature line names an invalid key {name!r}")
        signature = _b64decode_strict(encoded, f"signature of {name!r}", MalformedNoteError)
        if len(signature) < KEY_ID_SIZE_BYTES:
            raise MalformedNoteError(f"signature of {name!r} is shorter than its key ID")
        signatures.append((name, signature))
    return text, signatures


def open_note(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> str:
    """Verify a signed note against trusted keys and return its text.

    Signed-note rules: signatures from unknown keys (name and ID not both matching a trusted
    key) are ignored; a failing signature from a known key rejects the whole note
    (:class:`NoteSignatureError`); at least one known key must have signed
    (:class:`UnverifiedNoteError`).
    """
    if isinstance(note, bytes):
        try:
            note = note.decode("utf-8")
        except UnicodeDecodeError:
            raise MalformedNoteError("note is not valid UTF-8") from None
    text, signatures = split_note(note)
    trusted = {(verifier.name, verifier.key_id): verifier for verifier in verifiers}
    text_bytes = text.encode("utf-8")
    verified_by_known_key = False
    for name, signature in signatures:
        verifier = trusted.get((name, int.from_bytes(signature[:KEY_ID_SIZE_BYTES], "big")))
        if verifier is None:
            continue
        if not verifier.verifies(text_bytes, signature[KEY_ID_SIZE_BYTES:]):
            raise NoteSignatureError(f"signature by {name!r} does not verify")
        verified_by_known_key = True
    if not verified_by_known_key:
        raise UnverifiedNoteError("note carries no signature from a trusted key")
    return text


@dataclass(frozen=True)
class Checkpoint:
    """A log's commitment to its tree at one size: the body of a tlog checkpoint note."""

    origin: str
    tree_size: int
    root_hash: bytes
    timestamp_ms: int | None = None
    extension_lines: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if not self.origin or "\n" in self.origin:
            raise MalformedCheckpointError(f"origin {self.origin!r} must be one non-empty line")
        if any(_FORBIDDEN_CONTROL_CHARACTERS.search(line) for line in (self.origin, *self.extension_lines)):
            raise MalformedCheckpointError("checkpoint lines must not contain ASCII control characters")
        if not 0 <= self.tree_size <= MAX_TREE_SIZE:
            raise MalformedCheckpointError(f"tree size {self.tree_size} is not a uint64")
        if len(self.root_hash) != DIGEST_SIZE_BYTES:
            raise MalformedCheckpointError(f"root hash is {len(self.root_hash)} bytes, expected {DIGEST_SIZE_BYTES}")
        if self.timestamp_ms is not None and self.timestamp_ms < 0:
            raise MalformedCheckpointError(f"timestamp {self.timestamp_ms} ms is negative")
        for line in self.extension_lines:
            if not line or "\n" in line or line.startswith(TIME_EXTENSION_PREFIX):
                raise MalformedCheckpointError(f"extension line {line!r} must be one non-empty line, not a time line")

    def body(self) -> str:
        """The note text: origin, size, base64 root, then the time line and other extensions."""
        lines = [self.origin, str(self.tree_size), _b64encode(self.root_hash)]
        if self.timestamp_ms is not None:
            lines.append(f"{TIME_EXTENSION_PREFIX}{self.timestamp_ms}")
        lines.extend(self.extension_lines)
        return "".join(line + "\n" for line in lines)

    @classmethod
    def parse(cls, body: str) -> Checkpoint:
        """Parse a checkpoint body (the text of a note, signatures already stripped)."""
        if not body.endswith("\n"):
            raise MalformedCheckpointError("checkpoint body must end with a newline")
        lines = body[:-1].split("\n")
        if len(lines) < 3 or not all(lines):
            raise MalformedCheckpointError("checkpoint body needs origin, size and root lines, none empty")
        origin, size_text, root_text, *extensions = lines
        if not _DECIMAL_NO_LEADING_ZERO.fullmatch(size_text):
            raise MalformedCheckpointError(f"tree size {size_text!r} is not a decimal without leading zeros")
        root_hash = _b64decode_strict(root_text, "root hash", MalformedCheckpointError)
        time_lines = [line for line in extensions if line.startswith(TIME_EXTENSION_PREFIX)]
        if len(time_lines) > 1:
            raise MalformedCheckpointError("checkpoint has more than one time line")
        timestamp_ms = None
        if time_lines:
            timestamp_text = time_lines[0].removeprefix(TIME_EXTENSION_PREFIX)
            if not _DECIMAL_NO_LEADING_ZERO.fullmatch(timestamp_text):
                raise MalformedCheckpointError(f"time {timestamp_text!r} is not a decimal number of milliseconds")
            timestamp_ms = int(timestamp_text)
        other_extensions = tuple(line for line in extensions if not line.startswith(TIME_EXTENSION_PREFIX))
        return cls(origin, int(size_text), root_hash, timestamp_ms, other_extensions)


def sign_checkpoint(checkpoint: Checkpoint, signers: Sequence[NoteSigner]) -> str:
    """The checkpoint as a signed note."""
    return sign_note(checkpoint.body(), signers)


def verify_checkpoint(note: str | bytes, verifiers: Iterable[NoteVerifier]) -> Checkpoint:
    """Verify a checkpoint note's signature against trusted keys, then parse its body."""
    return Checkpoint.parse(open_note(note, verifiers))


def checkpoint_from_note(note: str) -> Checkpoint:
    """Parse a checkpoint from a note WITHOUT checking signatures (for ledger-internal
    comparison of roots; anything trusted must go through :func:`verify_checkpoint`).

    Accepts an unsigned body too: a checkpoint body never contains a blank line, so a blank
    line marks the start of signatures.
    """
    return Checkpoint.parse(split_note(note)[0] if "\n\n" in note else note)

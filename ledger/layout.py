"""Where the ledger keeps its files under a data directory, and its signing keys.

::

    <data-dir>/ledger/                the LMDB environment (data.mdb, lock.mdb, writer.lock)
    <data-dir>/ledger-signing.key     the checkpoint signer key (PRIVATE+KEY+...), mode 0600
    <data-dir>/ledger-signing.vkey    its verifier key, to hand to auditors

The ingest worker signs checkpoints when the signer key file exists (``pretrade ledger
keygen`` writes both files); readers check signatures against the verifier key file when
it exists. Keys are the C2SP signed-note strings of ``ledger.checkpoint``.
"""

from __future__ import annotations

import os
from pathlib import Path

from ledger.checkpoint import NoteSigner, NoteVerifier
from ledger.errors import NoteError, SigningKeyFileError

LEDGER_SUBDIR = "ledger"
SIGNING_KEY_FILE = "ledger-signing.key"
VERIFIER_KEY_FILE = "ledger-signing.vkey"


def ledger_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / LEDGER_SUBDIR


def signing_key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / SIGNING_KEY_FILE


def verifier_key_path(data_dir: str | os.PathLike[str]) -> Path:
    return Path(data_dir) / VERIFIER_KEY_FILE


def _read_key(path: Path) -> str:
    try:
        return path.read_text(encoding="utf-8").strip()
    except (OSError, UnicodeDecodeError) as exc:
        raise SigningKeyFileError(f"{path}: cannot read key file: {exc}") from None


def load_signer(path: str | os.PathLike[str]) -> NoteSigner:
    """The signer in key file ``path``; :class:`SigningKeyFileError` if unreadable or malformed."""
    try:
        return NoteSigner.from_skey(_read_key(Path(path)))
    except NoteError as exc:
        raise SigningKeyFileError(f"{path}: not a signer key: {exc}") from None


def load_verifier(path: str | os.PathLike[str]) -> NoteVerifier:
    """The verifier in key file ``path``; :class:`SigningKeyFileError` if unreadable or malformed."""
    try:
        return NoteVerifier.from_vkey(_read_key(Path(path)))
    except NoteError as exc:
        raise SigningKeyFileError(f"{path}: not a verifier key: {exc}") from None


def configured_signer(data_dir: str | os.PathLike[str]) -> NoteSigner | None:
    """The data dir's signer, or None when it has no signing key file."""
    path = signing_key_path(data_dir)
    return load_signer(path) if path.exists() else None


def configured_verifier(data_dir: str | os.PathLike[str]) -> NoteVerifier | None:
    """The data dir's verifier, or None when it has no verifier key file."""
    path = verifier_key_path(data_dir)
    return load_verifier(path) if path.exists() else None


def write_key_pair(data_dir: str | os.PathLike[str], name: str, *, overwrite: bool = False) -> NoteSigner:
    """Generate a signer named ``name`` and write both key files into ``data_dir`` (the
    signer key readable by its owner only). Refuses to replace an existing signer key
    unless ``overwrite``: checkpoints signed with it would no longer verify against the
    new verifier key."""
    skey_path, vkey_path = signing_key_path(data_dir), verifier_key_path(data_dir)
    if skey_path.exists() and not overwrite:
        raise SigningKeyFileError(f"{skey_path} exists; refusing to replace the ledger's signing key")
    try:
        signer = NoteSigner.generate(name)
    except NoteError as exc:
        raise SigningKeyFileError(f"key name {name!r}: {exc}") from None
    Path(data_dir).mkdir(parents=True, exist_ok=True)
    fd = os.open(skey_path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as handle:
        os.fchmod(handle.fileno(), 0o600)
        handle.write(signer.skey() + "\n")
    vkey_path.write_text(signer.verifier().vkey() + "\n", encoding="utf-8")
    return signer

"""The shared RFC 6962 / RFC 9162 test vectors (../shared/testdata/rfc6962_vectors.json).

Loaded at import time on purpose: if the file is missing, collecting the ledger tests fails
with an error (it must never turn into skipped tests). Leaf indices in the file are 0-based.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

VECTORS_PATH = Path(__file__).resolve().parents[2] / ".." / "shared" / "testdata" / "rfc6962_vectors.json"


def _load() -> dict[str, Any]:
    if not VECTORS_PATH.is_file():
        raise FileNotFoundError(
            f"shared Merkle test vectors not found at {VECTORS_PATH}; the ledger tests cannot run without them"
        )
    return json.loads(VECTORS_PATH.read_text(encoding="utf-8"))


VECTORS = _load()
SHA256_VECTORS: dict[str, Any] = VECTORS["sha256"]
BLAKE3_VECTORS: dict[str, Any] = VECTORS["blake3_mode"]
SIGNED_NOTE_EXAMPLE: dict[str, Any] = VECTORS["c2sp_signed_note_example"]
LEAF_INPUTS: list[bytes] = [bytes.fromhex(leaf) for leaf in SHA256_VECTORS["leaf_inputs"]]


def unhex_all(values: list[str]) -> list[bytes]:
    return [bytes.fromhex(value) for value in values]

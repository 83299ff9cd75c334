"""Direct write access to a ledger's LMDB sub-databases, for tests that corrupt it on purpose.

The ledger must be closed first: LMDB allows one open environment per file per process.
"""

from __future__ import annotations

import struct
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

import lmdb

SUB_DATABASES = ("entries", "nodes", "meta", "checkpoints")


def key(number: int) -> bytes:
    return struct.pack(">Q", number)


@contextmanager
def raw_ledger(path: Path) -> Iterator[tuple[lmdb.Transaction, dict[str, object]]]:
    """One write transaction over the ledger's sub-databases, committed on exit."""
    env = lmdb.open(str(path), max_dbs=4, create=False)
    try:
        with env.begin(write=True) as txn:
            databases = {name: env.open_db(name.encode(), txn=txn, create=False) for name in SUB_DATABASES}
            yield txn, databases
    finally:
        env.close()

"""Fixtures shared by the ledger tests: small real LMDB ledgers in temporary directories."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from ledger.store import LedgerStore
from tests.ledger.vectors import LEAF_INPUTS


def _canonical_store(tmp_path_factory: pytest.TempPathFactory, hash_name: str) -> Iterator[LedgerStore]:
    """The 8 canonical vector entries, appended in uneven batches so batch edges are exercised."""
    store = LedgerStore.create(tmp_path_factory.mktemp(f"canonical-{hash_name}"), hash_name=hash_name)
    for batch in (LEAF_INPUTS[:3], LEAF_INPUTS[3:4], LEAF_INPUTS[4:]):
        store.append_batch(batch)
    yield store
    store.close()


@pytest.fixture(scope="module")
def canonical_sha256_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerStore]:
    yield from _canonical_store(tmp_path_factory, "sha256")


@pytest.fixture(scope="module")
def canonical_blake3_store(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LedgerStore]:
    yield from _canonical_store(tmp_path_factory, "blake3")


@pytest.fixture
def nats_server(tmp_path):
    """A real nats-server with JetStream for the ingest tests (see tests/gateway/conftest.py)."""
    from tests.gateway.conftest import NatsServerHandle

    handle = NatsServerHandle(tmp_path / "nats-data")
    handle.start()
    try:
        yield handle
    finally:
        handle.stop()

"""The running ledger: writer (with its lock), ingest worker and reader, in one object.

What ``pretrade ledger run`` runs as its own process, and what ``pretrade up`` runs inside
the gateway process::

    ledger = LedgerRuntime(data_dir)             # opens (or creates) <data-dir>/ledger, takes its lock
    add_ledger_service(grpc_server, ledger.reader)
    await ledger.start(nats_url)                 # ingest in the background
    ...
    await ledger.stop()                          # stop ingesting, close the ledger

In-process trade-off: ingest shares the interpreter, and so the GIL, with the order path;
its commits run in a worker thread and release the GIL during LMDB's fsync, but decoding
and hashing do not. At full order rate, run ``pretrade ledger run`` as a separate process
(the LMDB file then has one writer there and any number of readers elsewhere).

Health. The worker publishes ``ledger_lag_s`` and ``ledger_verified`` for db_watchdog
(``ledger.health``) every ``health_interval_s``: the argument, else
``$PRETRADE_LEDGER_HEALTH_INTERVAL_S``, else ``DEFAULT_HEALTH_INTERVAL_S`` (5 s); 0 turns
it off.

Metrics. With ``metrics_registry`` the runtime registers its
:class:`~ledger.metrics.LedgerCollector` (every ``pretrade_ledger_*`` metric, read at
scrape time) in that Prometheus registry, and unregisters it when it closes: ``pretrade up``
passes the gateway's registry, so the ledger's metrics are on the gateway's ``/metrics``;
``pretrade ledger run`` passes one of its own and serves it on ``--metrics-listen``.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from typing import TYPE_CHECKING

from ledger.health import DEFAULT_HEALTH_INTERVAL_S, HEALTH_INTERVAL_ENV

from ledger.checkpoint import NoteSigner, NoteVerifier
from ledger.ingest import DEFAULT_ORIGIN, LedgerIngestWorker, LedgerWriter
from ledger.layout import configured_signer, configured_verifier, ledger_path
from ledger.merkle import DEFAULT_HASH_NAME
from ledger.metrics import LedgerCollector
from ledger.reader import LedgerReader

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry


class LedgerRuntime:
    """Writer, ingest worker and reader over ``<data_dir>/ledger``.

    ``signer``/``verifier`` default to the data dir's key files (``ledger.layout``), so a
    ledger signs its checkpoints as soon as ``pretrade ledger keygen`` has run.
    ``writer_options`` go to :class:`LedgerWriter` (checkpoint policy, origin) and
    ``worker_options`` to :class:`LedgerIngestWorker` (sources, batch sizes, and
    ``health_verify_from``). ``health_interval_s`` and ``metrics_registry``: see the module
    docstring.
    """

    def __init__(
        self,
        data_dir: str | os.PathLike[str],
        *,
        origin: str = DEFAULT_ORIGIN,
        hash_name: str = DEFAULT_HASH_NAME,
        signer: NoteSigner | None = None,
        verifier: NoteVerifier | None = None,
        writer_options: dict[str, object] | None = None,
        worker_options: dict[str, object] | None = None,
        health_interval_s: float | None = None,
        metrics_registry: CollectorRegistry | None = None,
    ) -> None:
        worker_options = dict(worker_options or {})
        worker_options.setdefault("health_interval_s", health_interval(health_interval_s))  # before the lock
        signer = signer if signer is not None else configured_signer(data_dir)
        if verifier is None:
            verifier = signer.verifier() if signer is not None else configured_verifier(data_dir)
        self.path = ledger_path(data_dir)
        self.writer = LedgerWriter.open(
            self.path, signer=signer, hash_name=hash_name, origin=origin, **(writer_options or {})
        )
        self.reader = LedgerReader(self.writer.store, verifier)
        self.worker = LedgerIngestWorker(self.writer, **worker_options)
        self.signed = signer is not None
        self.metrics = LedgerCollector(self.worker)
        self.metrics_registry = metrics_registry
        if metrics_registry is not None:
            try:
                metrics_registry.register(self.metrics)
            except BaseException:
                self.writer.close()  # releases the writer lock
                raise
        self._closed = False

    async def start(self, nats_url: str | Sequence[str]) -> None:
        """Start ingesting (returns at once; connects and waits for streams in the background)."""
        await self.worker.start(nats_url)

    async def run(self, nats_url: str | Sequence[str]) -> None:
        """Ingest until cancelled or a commit fails (then raise); closes the ledger at the end."""
        try:
            await self.worker.run(nats_url)
        finally:
            self.close()

    async def stop(self) -> None:
        """Stop ingesting and close the ledger. Idempotent."""
        await self.worker.stop()
        self.close()

    def close(self) -> None:
        if not self._closed:
            self._closed = True
            if self.metrics_registry is not None:
                self.metrics_registry.unregister(self.metrics)
            self.writer.close()


def health_interval(configured: float | None = None) -> float:
    """The health interval in seconds: ``configured``, else ``$PRETRADE_LEDGER_HEALTH_INTERVAL_S``,
    else :data:`DEFAULT_HEALTH_INTERVAL_S`; 0 means off. A bad environment value is a
    ``ValueError`` naming the variable."""
    if configured is not None:
        if not configured >= 0:
            raise ValueError(f"health_interval_s {configured!r} must be >= 0 (0: off)")
        return configured
    text = os.environ.get(HEALTH_INTERVAL_ENV, "").strip()
    if not text:
        return DEFAULT_HEALTH_INTERVAL_S
    try:
        value = float(text)
    except ValueError:
        raise ValueError(f"{HEALTH_INTERVAL_ENV}={text!r}: a number of seconds (0: off)") from None
    if not value >= 0:
        raise ValueError(f"{HEALTH_INTERVAL_ENV}={text!r}: must be >= 0 (0: off)")
    return value

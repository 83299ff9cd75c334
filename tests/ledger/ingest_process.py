"""The ingest worker as a process of its own, for the crash tests.

    python -m tests.ledger.ingest_process DATA_DIR NATS_URL [--die-after-commits N]

Runs until killed. With ``--die-after-commits N`` it SIGKILLs itself right after its N-th
commit, before acknowledging it: the worst moment for exactly-once.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal

from ledger.ingest import LedgerIngestWorker
from ledger.runtime import LedgerRuntime
from tests.ledger.ingest_harness import FAST_WORKER

#: Bigger pulls than the other tests, so that kills land in commits of many entries; each
#: commit holds at most 1 000, so a worker dying after two commits has always left part of
#: a 5 000-message stream unacknowledged, however fast the machine.
CRASH_TEST_WORKER = {
    **FAST_WORKER,
    "fetch_batch_max": 500,
    "max_uncommitted": 5_000,
    "commit_batch_max_entries": 1_000,
}


def die_after_commits(count: int) -> None:
    acknowledge = LedgerIngestWorker._acknowledge
    commits = 0

    async def acknowledge_or_die(self, batches):
        nonlocal commits
        commits += 1
        if commits >= count:
            os.kill(os.getpid(), signal.SIGKILL)
        await acknowledge(self, batches)

    LedgerIngestWorker._acknowledge = acknowledge_or_die


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("data_dir")
    parser.add_argument("nats_url")
    parser.add_argument("--die-after-commits", type=int)
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if args.die_after_commits:
        die_after_commits(args.die_after_commits)
    runtime = LedgerRuntime(args.data_dir, worker_options=CRASH_TEST_WORKER)
    asyncio.run(runtime.run(args.nats_url))


if __name__ == "__main__":
    main()

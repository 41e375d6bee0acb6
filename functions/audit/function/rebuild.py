"""Recompute every KPI rollup from the stored events: ``python -m function.rebuild``.

Run in ``functions/audit`` with the audit function's settings in the environment and ingest
stopped (it replaces the rollup collections). For a backfill after bulk-loading events, or after
the rollup collections were lost. Prints the number of events read and the seconds taken.
"""
from __future__ import annotations

import datetime as dt
import sys
import time

from llmfn.settings import environ_copy

from .compaction import Rollups
from .settings import AuditSettings
from .store import AuditStore


def main() -> int:
    settings = AuditSettings.from_mapping(environ_copy())
    store = AuditStore(settings)
    t0 = time.perf_counter()
    try:
        n = Rollups(store, settings, clock=lambda: dt.datetime.now(dt.UTC)).rebuild()
    finally:
        store.close()
    print(f"rebuilt the rollups of {n} events in {time.perf_counter() - t0:.1f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())

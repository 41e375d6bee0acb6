"""Group commit of events with their KPI rollup part, exactly once per (source, id).

One thread owns the writes. Each request thread hands in a validated event document and waits;
the thread takes every document waiting (up to ``INGEST_MAX_BATCH``) and writes them in two
steps under one commit id ``B`` (rollup.new_batch_id):

1. ``insert_many`` of the events, each marked ``kb: B`` (``store.BATCH_FIELD``; an existing
   ``_id`` is a redelivery);
2. one *part* ``{_id: B, cells}``: the KPI cells of the events step 1 inserted.

A commit that stopped between the two steps (a crash, the database going away) leaves events
with no part. The broker redelivers them (no 2xx was sent), step 1 reports them as existing,
and :meth:`Committer.verify` decides: the part ``B`` exists, or the ledger of compacted parts
(ledger.py) names ``B`` -> counted; ``B`` younger than ``KPI_LEASE_S`` -> still in flight,
answer 503; otherwise rebuild part ``B`` from the events marked ``kb: B`` (the same content the
original would have written, so whichever write lands first is right). The original writes
step 2 only while ``B`` is younger than half the lease, so it never races a recovery.
"""
from __future__ import annotations

import datetime as dt
import logging
import queue
import threading
from collections.abc import Callable
from concurrent.futures import Future

from . import rollup
from .ledger import Ledger
from .store import BATCH_FIELD, AuditStore, StoreUnavailable

log = logging.getLogger(__name__)

RECORDED, DUPLICATE, UNAVAILABLE = "recorded", "duplicate", "unavailable"


class Committer:
    """The writer thread and the redelivery check."""

    def __init__(self, store: AuditStore, settings, metrics, *,
                 clock: Callable[[], dt.datetime]):
        self.store = store
        self.settings = settings
        self.metrics = metrics
        self.clock = clock
        self.ledger = Ledger(store)
        self._queue: queue.Queue = queue.Queue()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        if settings.timeout_ms / 1000 >= settings.commit_lease_s / 2:
            log.warning("MONGODB_TIMEOUT_MS should be below half of KPI_LEASE_S so a slow "
                        "commit cannot overlap the recovery of its own events")

    def start(self) -> None:
        if self._thread is None:
            self._stop.clear()
            self._thread = threading.Thread(target=self._run, name="audit-commit", daemon=True)
            self._thread.start()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Finish what is queued, then end the thread."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None

    def submit(self, doc: dict) -> Future:
        """Queue one event document; the future's result is RECORDED, DUPLICATE or
        UNAVAILABLE."""
        fut: Future = Future()
        self._queue.put((doc, fut))
        return fut

    def _run(self) -> None:
        while True:
            try:
                first = self._queue.get(timeout=0.1)
            except queue.Empty:
                if self._stop.is_set():
                    return
                continue
            batch = [first]
            while len(batch) < self.settings.max_batch:
                try:
                    batch.append(self._queue.get_nowait())
                except queue.Empty:
                    break
            try:
                self.commit(batch)
            except Exception:  # never let the writer die: answer 503, the broker retries
                log.exception("commit failed")
                for _, fut in batch:
                    if not fut.done():
                        fut.set_result(UNAVAILABLE)

    def commit(self, batch: list[tuple[dict, Future]]) -> None:
        """Write one batch (steps 1 and 2) and resolve its futures."""
        now = self.clock()
        batch_id = rollup.new_batch_id(now)
        first: dict[str, dict] = {}
        repeats: set[Future] = set()
        for doc, fut in batch:
            if doc["_id"] in first:  # the same event twice in one batch
                repeats.add(fut)
            else:
                doc[BATCH_FIELD] = batch_id
                first[doc["_id"]] = doc
        results: dict[str, str] = {}
        try:
            new, existing = self.store.insert_events(list(first.values()))
        except StoreUnavailable as err:
            self.metrics.db_errors.labels("insert").inc()
            log.warning("commit %s failed: %s", batch_id, err)
            new, existing = set(), set()
            results = dict.fromkeys(first, UNAVAILABLE)
        if new:
            results.update(dict.fromkeys(new, self._write_part(batch_id, [first[i] for i in new])))
        for _id in existing:
            results[_id] = self.verify(_id)
        self.metrics.batch_size.observe(len(first))
        for doc, fut in batch:
            result = results[doc["_id"]]
            if fut in repeats:
                result = UNAVAILABLE if result == UNAVAILABLE else DUPLICATE
            fut.set_result(result)

    def _write_part(self, batch_id: str, docs: list[dict]) -> str:
        age_s = self.clock().timestamp() - rollup.batch_time_s(batch_id)
        if age_s > self.settings.commit_lease_s / 2:
            log.warning("commit %s took %.1f s: its part is left to recovery", batch_id, age_s)
            return UNAVAILABLE
        try:
            self.store.insert(self.store.kpi("parts"), part_document(batch_id, docs))
        except StoreUnavailable as err:
            self.metrics.db_errors.labels("part").inc()
            log.warning("part of commit %s not written: %s", batch_id, err)
            return UNAVAILABLE
        return RECORDED

    def verify(self, event_id: str) -> str:
        """A redelivered event: DUPLICATE once its commit's part exists (recovering it if
        needed), UNAVAILABLE while that cannot be known yet."""
        try:
            stored = self.store.get(self.store.events, event_id)
            batch_id = (stored or {}).get(BATCH_FIELD)
            if stored is None or not batch_id:
                return DUPLICATE  # expired since, or loaded without a commit (then rebuilt)
            if self.store.get(self.store.kpi("parts"), batch_id) is not None:
                return DUPLICATE
            if self.ledger.names(batch_id):
                return DUPLICATE
            age_s = self.clock().timestamp() - rollup.batch_time_s(batch_id)
            if age_s < self.settings.commit_lease_s:
                return UNAVAILABLE  # the original commit may still write its part
            rebuilt_at = self.ledger.rebuilt_at()
            if rebuilt_at is not None and rollup.batch_time_s(batch_id) < rebuilt_at:
                return DUPLICATE  # counted by `function.rebuild` from the stored events
            if age_s > self.settings.ledger_hours * 3600:
                self.metrics.unverified.inc()
                return DUPLICATE  # past the ledger's horizon: cannot be checked any more
            docs = self.store.events_of_batch(batch_id)
            self.store.insert(self.store.kpi("parts"), part_document(batch_id, docs))
            self.metrics.recovered.inc()
            log.warning("recovered the rollup part of commit %s (%d events)", batch_id,
                        len(docs))
            return DUPLICATE
        except StoreUnavailable as err:
            self.metrics.db_errors.labels("verify").inc()
            log.warning("redelivery of %r not verified: %s", event_id, err)
            return UNAVAILABLE


def part_document(batch_id: str, docs: list[dict]) -> dict:
    """The rollup part of one commit: minute cells of its events."""
    return {"_id": batch_id, "cells": rollup.encode(rollup.build(docs, rollup.MINUTE_S))}

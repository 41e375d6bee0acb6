"""Rollups in the database: compaction of commit parts into minutes, hours and days, and the
read of every cell a KPI query needs.

Collections (prefix ``KPI_COLLECTION_PREFIX``):

- ``parts``: one document per commit ``{_id: B, cells}`` (commit.py); short-lived.
- ``rollups``: ``m|<minute>|<k>`` (minute cells, generation ``k`` of that commit minute),
  ``h|<first child id>`` (hour cells) and ``d|<first child id>`` (hour cells of a day), each
  ``{lvl, t, w, cells, absorbed: [child ids]}`` (:func:`rollup_document`: level ``m``/``h``/``d``,
  start and width of the span in epoch s, the cells as rollup.encode text, the ids it replaced).
- ``ledger``: which commits each minute rollup holds (ledger.py).
- ``locks``: one lease document so a single pod compacts at a time.

Every step writes the new document before deleting what it replaces, and a reader ignores any
document named in a present rollup's ``absorbed`` list (or, for a part, in the ledger of a
present minute rollup), so a crash between the two writes never counts an event twice. On
FerretDB v1 each query scans its whole collection, so these collections are kept small: a few
hundred documents of JSON-text cells, not the events.
"""
from __future__ import annotations

import datetime as dt
import logging
import os
import socket
import time
from collections.abc import Callable, Sequence

from . import ledger, rollup
from .ledger import Ledger
from .store import AuditStore

log = logging.getLogger(__name__)

LOCK_ID = "compactor"
_LEVELS = (("m", "h", rollup.HOUR_S), ("h", "d", rollup.DAY_S))  # child, parent, span


class CompactionAborted(Exception):
    """The run took longer than half its lock lease; the next run continues."""


class Rollups:
    """Reads and compacts the rollup collections of one store."""

    def __init__(self, store: AuditStore, settings, *, clock: Callable[[], dt.datetime]):
        self.store = store
        self.settings = settings
        self.clock = clock
        self.ledger = Ledger(store)
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.lock_lease_s = max(60.0, 4 * settings.compact_interval_s)
        self._last_ledger_prune = 0.0

    # -- read ------------------------------------------------------------------------------
    def cells(self) -> rollup.Cells:
        """Every KPI cell currently stored, each event counted once."""
        parts = self.store.all(self.store.kpi("parts"))
        rolls = self.store.all(self.store.kpi("rollups"))
        absorbed = {c for r in rolls for c in r.get("absorbed", [])}
        docs = [r for r in rolls if r["_id"] not in absorbed]
        present = {r["_id"] for r in rolls} | absorbed
        due = self._part_due_before()
        ledgers: dict[str, dict | None] = {}
        for p in parts:
            if rollup.batch_time_s(p["_id"]) < due:  # compaction may have taken it already
                lid = ledger.ledger_id(p["_id"])
                if lid not in ledgers:
                    ledgers[lid] = self.ledger.get(lid)
                k = ledger.generation_of(ledgers[lid], p["_id"])
                if k is not None and ledger.generation_rollup_id(lid, k) in present:
                    continue  # its minute rollup exists (or was absorbed): counted there
            docs.append(p)
        return _merged(docs)

    def _part_due_before(self) -> float:
        """Parts of commits before this time (epoch s) belong to a closed, compactable minute."""
        return (self.clock().timestamp() - self.settings.commit_lease_s) // 60 * 60

    # -- compaction --------------------------------------------------------------------------
    def compact(self) -> dict:
        """One compaction run if this pod gets the lock: parts -> minutes -> hours -> days,
        then retention. Returns the number of documents written per level."""
        now = self.clock()
        if not self._acquire(now):
            return {}
        started = time.monotonic()
        written = {"m": 0, "h": 0, "d": 0}
        try:
            written["m"] = self._compact_parts(started)
            rolls = self.store.all(self.store.kpi("rollups"))
            for child, parent, span in _LEVELS:
                n, rolls = self._compact_level(rolls, child, parent, span, started)
                written[parent] = n
            self._retention(now)
        finally:
            self.store.delete_where(self.store.kpi("locks"), {"_id": LOCK_ID,
                                                             "owner": self.owner})
        return written

    def _check_time(self, started: float) -> None:
        if time.monotonic() - started > self.lock_lease_s / 2:
            raise CompactionAborted("compaction ran past half its lock lease")

    def _acquire(self, now: dt.datetime) -> bool:
        locks = self.store.kpi("locks")
        doc = {"_id": LOCK_ID, "owner": self.owner,
               "until": now + dt.timedelta(seconds=self.lock_lease_s)}
        if self.store.insert(locks, doc):
            return True
        held = self.store.get(locks, LOCK_ID)
        if held is not None and held["until"] < now:  # its holder died: take it over
            self.store.delete_where(locks, {"_id": LOCK_ID, "owner": held["owner"],
                                            "until": held["until"]})
            return self.store.insert(locks, doc)
        return held is None and self.store.insert(locks, doc)

    def _compact_parts(self, started: float) -> int:
        """Parts of closed minutes -> one minute rollup per minute and generation."""
        due = self._part_due_before()
        by_minute: dict[int, list[dict]] = {}
        for p in self.store.all(self.store.kpi("parts")):
            if rollup.batch_time_s(p["_id"]) < due:
                by_minute.setdefault(rollup.batch_minute(p["_id"]), []).append(p)
        rollups_col = self.store.kpi("rollups")
        written = 0
        for minute, parts in sorted(by_minute.items()):
            self._check_time(started)
            # the ledger first: a reader then skips these parts once the rollup exists
            lid, k, gen = self.ledger.record(minute, sorted(p["_id"] for p in parts))
            members = [p for p in parts if p["_id"] in gen]
            doc = rollup_document(ledger.generation_rollup_id(lid, k), "m", minute,
                                  rollup.MINUTE_S, _merged(members))
            if self.store.get(rollups_col, doc["_id"]) is None:
                self.store.insert(rollups_col, doc)
                written += 1
            self.store.delete_ids(self.store.kpi("parts"), [p["_id"] for p in members])
        return written

    def _compact_level(self, rolls: list[dict], child: str, parent: str, span: int,
                       started: float) -> tuple[int, list[dict]]:
        """Children of closed spans -> one parent rollup (hour cells) per span."""
        col = self.store.kpi("rollups")
        absorbed = {c for r in rolls for c in r.get("absorbed", [])}
        stale = [r["_id"] for r in rolls if r["lvl"] == child and r["_id"] in absorbed]
        self.store.delete_ids(col, stale)  # replaced by a parent before a crash
        live = [r for r in rolls if r["_id"] not in absorbed]
        # A span is closed once every child that can still appear in it has been written.
        settle_s = 60 + 2 * (self.settings.commit_lease_s + self.settings.compact_interval_s)
        if child == "h":
            settle_s += rollup.HOUR_S
        cutoff = self.clock().timestamp() - settle_s
        groups: dict[int, list[dict]] = {}
        for r in live:
            if r["lvl"] == child and r["t"] // span * span + span <= cutoff:
                groups.setdefault(r["t"] // span * span, []).append(r)
        written = 0
        for start, children in sorted(groups.items()):
            self._check_time(started)
            ids = sorted(c["_id"] for c in children)
            doc = rollup_document(f"{parent}|{ids[0]}", parent, start, span,
                                  _merged(children, rollup.HOUR_S), absorbed=ids)
            if self.store.get(col, doc["_id"]) is None:
                self.store.insert(col, doc)
                written += 1
            self.store.delete_ids(col, ids)
            done = set(ids)
            live = [r for r in live if r["_id"] not in done] + [doc]
        return written, live

    def _retention(self, now: dt.datetime) -> None:
        t = now.timestamp()
        if self.settings.retention_days > 0:
            horizon = t - self.settings.retention_days * 86400
            self.store.delete_where(self.store.kpi("rollups"),
                                    {"lvl": "d", "t": {"$lt": horizon - rollup.DAY_S}})
        if t - self._last_ledger_prune > 600:
            self.ledger.prune(t - self.settings.ledger_hours * 3600)
            self._last_ledger_prune = t

    # -- rebuild ---------------------------------------------------------------------------
    def rebuild(self) -> int:
        """Recompute every rollup from the stored events (ingest must be stopped): one hour
        rollup per event hour. Returns the number of events read."""
        for name in ("parts", "rollups", ledger.COLLECTION, "locks"):
            self.store.delete_where(self.store.kpi(name), {})
        # Redeliveries of events stored before now are counted by this rebuild.
        self.ledger.mark_rebuilt(self.clock().timestamp())
        cells: rollup.Cells = {}
        n = 0
        for doc in self.store.all(self.store.events):
            rollup.add_event(cells, doc, rollup.HOUR_S)
            n += 1
        by_hour: dict[int, rollup.Cells] = {}
        for key, cell in cells.items():
            by_hour.setdefault(key.start_s, {})[key] = cell
        for hour, hour_cells in sorted(by_hour.items()):
            self.store.insert(self.store.kpi("rollups"), rollup_document(
                f"h|rebuild|{hour}", "h", hour, rollup.HOUR_S, hour_cells))
        return n


def rollup_document(_id: str, level: str, start_s: int, width_s: int, cells: rollup.Cells,
                    absorbed: Sequence[str] = ()) -> dict:
    """A document of the ``rollups`` collection (stored names: see the module docstring)."""
    return {"_id": _id, "lvl": level, "t": start_s, "w": width_s,
            "cells": rollup.encode(cells), "absorbed": list(absorbed)}


def _merged(docs: list[dict], resolution_s: int | None = None) -> rollup.Cells:
    """The cells of part or rollup documents, merged (coarsened to ``resolution_s``)."""
    out: rollup.Cells = {}
    for d in docs:
        rollup.merge(out, rollup.decode(d["cells"]), resolution_s)
    return out

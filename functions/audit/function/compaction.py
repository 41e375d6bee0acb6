"""Rollups in the database: compaction of commit parts into minutes, hours and days, and the
read of every cell a KPI query needs.

Collections (prefix ``KPI_COLLECTION_PREFIX``):

- ``parts``: one document per commit ``{_id: B, cells}`` (commit.py); short-lived.
- ``rollups``: ``m|<minute>|<k>`` (minute cells, generation ``k`` of that commit minute),
  ``h|<first child id>`` (hour cells) and ``d|<first child id>`` (hour cells of a day), each
  ``{lvl, t, w, cells, absorbed: [child ids]}``.
- ``ledger``: ``m|<minute>`` ``{t, gens: [{ids: [part ids of generation k]}, ...]}`` (FerretDB v1
  refuses nested arrays): which commits a
  minute rollup holds, read by ``_id`` only (commit.Committer.verify).
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
from typing import Callable

from . import rollup
from .commit import REBUILT_ID, ledger_id
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
        self.owner = f"{socket.gethostname()}-{os.getpid()}-{id(self):x}"
        self.lock_lease_s = max(60.0, 4 * settings.compact_interval_s)
        self._last_ledger_prune = 0.0

    # -- read ------------------------------------------------------------------------------
    def cells(self) -> dict:
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
                lid = ledger_id(p["_id"])
                if lid not in ledgers:
                    ledgers[lid] = self.store.get(self.store.kpi("ledger"), lid)
                if _in_present_generation(p["_id"], ledgers[lid], present):
                    continue
            docs.append(p)
        out: dict = {}
        for d in docs:
            rollup.merge(out, rollup.decode(d["cells"]))
        return out

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
        ledgers, rollups_col = self.store.kpi("ledger"), self.store.kpi("rollups")
        written = 0
        for minute, parts in sorted(by_minute.items()):
            self._check_time(started)
            lid, ids = ledger_id(parts[0]["_id"]), sorted(p["_id"] for p in parts)
            ledger = self.store.get(ledgers, lid)
            gens = [g["ids"] for g in ledger["gens"]] if ledger else []
            k = next((i for i, g in enumerate(gens) if set(ids) & set(g)), None)
            if k is None:  # a new generation: record it in the ledger first
                k = len(gens)
                if ledger is None:
                    self.store.insert(ledgers, {"_id": lid, "t": minute,
                                                "gens": [{"ids": ids}]})
                else:
                    self.store.push_ledger(lid, ids)
                gens = gens + [ids]
            gen = set(gens[k])
            members = [p for p in parts if p["_id"] in gen]
            doc = {"_id": f"{lid}|{k}", "lvl": "m", "t": minute, "w": 60,
                   "cells": rollup.encode(_merged(members)), "absorbed": []}
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
            doc = {"_id": f"{parent}|{ids[0]}", "lvl": parent, "t": start, "w": span,
                   "cells": rollup.encode(_merged(children, rollup.HOUR_S)), "absorbed": ids}
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
            self.store.delete_where(self.store.kpi("ledger"),
                                    {"t": {"$lt": t - self.settings.ledger_hours * 3600}})
            self._last_ledger_prune = t

    # -- rebuild ---------------------------------------------------------------------------
    def rebuild(self) -> int:
        """Recompute every rollup from the stored events (ingest must be stopped): one hour
        rollup per event hour. Returns the number of events read."""
        for name in ("parts", "rollups", "ledger", "locks"):
            self.store.delete_where(self.store.kpi(name), {})
        # Redeliveries of events stored before now are counted by this rebuild.
        self.store.insert(self.store.kpi("ledger"), {"_id": REBUILT_ID,
                                                     "at": self.clock().timestamp()})
        cells: dict = {}
        n = 0
        for doc in self.store.all(self.store.events):
            rollup.add_event(cells, doc, rollup.HOUR_S)
            n += 1
        by_hour: dict[int, dict] = {}
        for key, cell in cells.items():
            by_hour.setdefault(key[3], {})[key] = cell
        for hour, hour_cells in sorted(by_hour.items()):
            self.store.insert(self.store.kpi("rollups"), {
                "_id": f"h|rebuild|{hour}", "lvl": "h", "t": hour, "w": rollup.HOUR_S,
                "cells": rollup.encode(hour_cells), "absorbed": []})
        return n


def _merged(docs: list[dict], resolution_s: int | None = None) -> dict:
    out: dict = {}
    for d in docs:
        rollup.merge(out, rollup.decode(d["cells"]), resolution_s)
    return out


def _in_present_generation(part_id: str, ledger: dict | None, present: set[str]) -> bool:
    """True when the ledger puts ``part_id`` in a minute rollup that exists (or was absorbed)."""
    for k, gen in enumerate((ledger or {}).get("gens", [])):
        if part_id in gen["ids"]:
            return f"{ledger['_id']}|{k}" in present
    return False

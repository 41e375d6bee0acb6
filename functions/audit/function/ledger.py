"""The ledger: which commits each minute rollup holds, and when the rollups were rebuilt.

The one home of the ledger's document format: commit.py (is a redelivered commit counted?) and
compaction.py (record a minute's commits before writing its rollup; ignore parts a present
rollup holds; prune) read and write it only through :class:`Ledger`.

Documents of the collection ``<KPI_COLLECTION_PREFIX>ledger``, read by ``_id`` only (the one
filter FerretDB v1 does not answer with a full scan):

- ``m|<minute>`` -> ``{t: <minute, epoch s>, gens: [{ids: [commit ids]}, ...]}``. Generation
  ``k`` lists the commits (batch ids, which are also their parts' ``_id``) whose parts the
  minute rollup ``m|<minute>|<k>`` holds: the first compaction of the minute writes generation
  0, a part recovered after it (commit.py) becomes the next. Each generation is a sub-document
  because FerretDB v1 refuses nested arrays. Pruned once ``t`` is ``KPI_LEDGER_HOURS`` old.
- ``rebuilt`` -> ``{at: <epoch s>}``: every event stored before ``at`` is counted in the
  rollups (``python -m function.rebuild``).

The stored field names stay short, as first written (``t``, ``gens``, ``ids``, ``at``): nothing
persisted changes, and outside this module they have the names of the functions below.
"""
from __future__ import annotations

from collections.abc import Mapping

from . import rollup

COLLECTION = "ledger"  # AuditStore.kpi(COLLECTION)
REBUILT_ID = "rebuilt"
_MINUTE, _GENERATIONS, _IDS, _REBUILT_AT = "t", "gens", "ids", "at"  # stored field names


def ledger_id(batch_id: str) -> str:
    """The ledger document that lists ``batch_id`` once its commit minute is compacted."""
    return _minute_id(rollup.batch_minute(batch_id))


def _minute_id(minute: int) -> str:
    return f"m|{minute}"


def generation_rollup_id(lid: str, generation: int) -> str:
    """The ``_id`` of the minute rollup holding the commits of generation ``generation``."""
    return f"{lid}|{generation}"


def generations(doc: Mapping | None) -> list[list[str]]:
    """The commit ids of each generation of a ledger document (none for ``None``)."""
    return [g[_IDS] for g in (doc or {}).get(_GENERATIONS, [])]


def generation_of(doc: Mapping | None, batch_id: str) -> int | None:
    """The generation of a ledger document that lists ``batch_id``, if any."""
    return next((k for k, ids in enumerate(generations(doc)) if batch_id in ids), None)


class Ledger:
    """The ledger collection of one store."""

    def __init__(self, store):
        self.store = store

    @property
    def collection(self):
        return self.store.kpi(COLLECTION)

    def get(self, lid: str) -> dict | None:
        """One ledger document by ``_id`` (:func:`ledger_id`)."""
        return self.store.get(self.collection, lid)

    def names(self, batch_id: str) -> bool:
        """Whether a generation lists ``batch_id`` (its part went into a minute rollup)."""
        return generation_of(self.get(ledger_id(batch_id)), batch_id) is not None

    def record(self, minute: int, batch_ids: list[str]) -> tuple[str, int, set[str]]:
        """The generation that holds ``batch_ids`` (the parts of one commit minute about to be
        compacted): the existing one naming any of them, else a new one written now.
        Returns (the ledger id, the generation, the commit ids it lists)."""
        lid = _minute_id(minute)
        doc = self.get(lid)
        gens = generations(doc)
        wanted = set(batch_ids)
        k = next((i for i, ids in enumerate(gens) if wanted & set(ids)), None)
        if k is None:
            k, gens = len(gens), gens + [list(batch_ids)]
            if doc is None:
                self.store.insert(self.collection, {"_id": lid, _MINUTE: minute,
                                                    _GENERATIONS: [{_IDS: list(batch_ids)}]})
            else:
                self.store.update(self.collection, lid,
                                  {"$push": {_GENERATIONS: {_IDS: list(batch_ids)}}})
        return lid, k, set(gens[k])

    def rebuilt_at(self) -> float | None:
        """When the rollups were last rebuilt from the events (epoch s), if ever."""
        doc = self.get(REBUILT_ID)
        return doc[_REBUILT_AT] if doc else None

    def mark_rebuilt(self, at: float) -> None:
        """Record that every event stored before ``at`` is in the rollups."""
        self.store.insert(self.collection, {"_id": REBUILT_ID, _REBUILT_AT: at})

    def prune(self, before_s: float) -> int:
        """Forget the minutes before ``before_s`` (the rebuild mark has no minute: kept)."""
        return self.store.delete_where(self.collection, {_MINUTE: {"$lt": before_s}})

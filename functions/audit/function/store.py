"""MongoDB storage of inference events and dead letters (pymongo; FerretDB v1 compatible).

One ``MongoClient`` per process, created on first use (after fork, never at import). Every
pymongo failure is mapped to two outcomes by exception type: a duplicate ``_id`` (the event was
already recorded: at-least-once delivery) or :class:`StoreUnavailable` (retry later).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from collections.abc import Callable
from typing import Any, TypeVar

import pymongo
from bson.errors import InvalidDocument
from pymongo import errors as perr

from .settings import AuditSettings

log = logging.getLogger(__name__)

KEY_SEP = "\x1f"  # ASCII unit separator: cannot appear in a URI-reference source
NOT_IMPLEMENTED = 238  # MongoDB/FerretDB error code "NotImplemented"
DUPLICATE_KEY = 11000
BATCH_FIELD = "kb"  # on each event: the id of the commit that inserted it (commit.py)
T = TypeVar("T")


def event_key(source: str, event_id: str) -> str:
    """The ``_id`` of an event: CloudEvents identity is (source, id), joined by U+001F."""
    return f"{source}{KEY_SEP}{event_id}"


class StoreUnavailable(Exception):
    """The database cannot be reached or failed; the caller answers 503 (retried)."""


class DocumentRejected(Exception):
    """The document cannot be encoded as BSON (e.g. an integer beyond int64)."""


class AuditStore:
    """Events and dead letters in two collections; indexes made once the server answers."""

    def __init__(self, settings: AuditSettings, *,
                 client_factory: Callable[..., Any] = pymongo.MongoClient):
        self.settings = settings
        self._client_factory = client_factory
        self._client = None
        self._lock = threading.Lock()
        self.ttl_index = False  # True when the server expires documents itself

    def client(self):
        """The process's MongoClient, created on first use."""
        with self._lock:
            if self._client is None:
                t = self.settings.timeout_ms
                # No socketTimeoutMS: each operation runs under pymongo.timeout() instead, short
                # for writes and pings, long for KPI scans (FerretDB v1 reads every document).
                # pymongo.timeout() also bounds server selection, so a scan is preceded by a
                # short ping: a down database answers 503 at once, not after the scan deadline.
                self._client = self._client_factory(
                    self.settings.mongodb_uri, serverSelectionTimeoutMS=t, connectTimeoutMS=t,
                    tz_aware=True, appname="llmfn-audit")
            return self._client

    @property
    def events(self):
        return self.client()[self.settings.database][self.settings.collection]

    @property
    def dead_letters(self):
        return self.client()[self.settings.database][self.settings.deadletter_collection]

    def kpi(self, name: str):
        """A rollup collection: ``parts``, ``rollups``, ``ledger`` or ``locks`` (compaction.py,
        ledger.py)."""
        return self.client()[self.settings.database][self.settings.kpi_prefix + name]

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server answers."""
        self._call(lambda: self.client().admin.command("ping"))

    def ensure_indexes(self) -> None:
        """Create the query indexes (idempotent) and, with retention, a TTL index if supported."""
        try:
            ev = self.events
            ev.create_index([("time", pymongo.ASCENDING)], name="time")
            ev.create_index([("function", pymongo.ASCENDING), ("model", pymongo.ASCENDING),
                             ("time", pymongo.ASCENDING)], name="function_model_time")
            ev.create_index([(BATCH_FIELD, pymongo.ASCENDING)], name="batch", sparse=True)
            self.dead_letters.create_index([("received_at", pymongo.ASCENDING)],
                                           name="received_at")
            if self.settings.retention_days > 0:
                self.ttl_index = self._ensure_ttl(ev)
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err

    def _ensure_ttl(self, ev) -> bool:
        seconds = self.settings.retention_days * 86400
        try:
            ev.create_index([("expire_at", pymongo.ASCENDING)], name="retention_ttl",
                            expireAfterSeconds=0)
            return True
        except perr.OperationFailure as err:
            if err.code != NOT_IMPLEMENTED:
                raise
            log.info("server has no TTL indexes (FerretDB v1): retention of %s s by sweep",
                     seconds)
            return False

    def _call(self, fn: Callable[[], T], timeout_s: float | None = None) -> T:
        """Run one database operation under a deadline (default: the short write timeout);
        any pymongo failure becomes :class:`StoreUnavailable`."""
        try:
            with pymongo.timeout(timeout_s or self.settings.timeout_ms / 1000):
                return fn()
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err

    def insert(self, collection, doc: dict) -> bool:
        """Insert ``doc``; True if new, False if its ``_id`` exists (a redelivery)."""
        try:
            self._call(lambda: collection.insert_one(doc))
            return True
        except StoreUnavailable as err:
            if isinstance(err.__cause__, perr.DuplicateKeyError):
                return False
            raise
        except (InvalidDocument, OverflowError, UnicodeEncodeError) as err:
            # UnicodeEncodeError: a string with a lone surrogate has no UTF-8 (BSON) form
            raise DocumentRejected(str(type(err).__name__)) from err

    def with_expiry(self, doc: dict) -> dict:
        """Set ``expire_at`` when retention is on (read by the TTL index or the sweep)."""
        if self.settings.retention_days > 0:
            doc["expire_at"] = doc["time"] + dt.timedelta(days=self.settings.retention_days)
        return doc

    def insert_events(self, docs: list[dict]) -> tuple[set, set]:
        """One unordered ``insert_many``: (ids inserted, ids that already existed).

        Any other failure raises :class:`StoreUnavailable`; the caller cannot know which
        documents landed and answers 503 for all (the broker redelivers, ingest recovers)."""
        ids = {d["_id"] for d in docs}
        try:
            self._call(lambda: self.events.insert_many(docs, ordered=False))
            return ids, set()
        except StoreUnavailable as exc:
            err = exc.__cause__
            if not isinstance(err, perr.BulkWriteError):
                raise
            errors = err.details.get("writeErrors", [])
            if any(e.get("code") != DUPLICATE_KEY for e in errors):
                raise
            dups = {docs[e["index"]]["_id"] for e in errors}
            return ids - dups, dups

    def get(self, collection, _id: str) -> dict | None:
        """One document by ``_id`` (FerretDB v1 pushes this filter down: fast)."""
        return self._call(lambda: collection.find_one({"_id": _id}))

    def all(self, collection) -> list[dict]:
        """Every document of a (small) collection."""
        return self._call(lambda: list(collection.find({})), self.settings.kpi_timeout_s)

    def delete_where(self, collection, query: dict) -> int:
        return self._call(lambda: collection.delete_many(query).deleted_count,
                          self.settings.kpi_timeout_s)

    def delete_ids(self, collection, ids: list[str]) -> int:
        return self.delete_where(collection, {"_id": {"$in": list(ids)}}) if ids else 0

    def events_of_batch(self, batch_id: str) -> list[dict]:
        """The events one commit inserted (a scan on FerretDB v1: used only to recover a
        commit that stopped between its two writes)."""
        return self._call(lambda: list(self.events.find({BATCH_FIELD: batch_id})),
                          self.settings.kpi_timeout_s)

    def update(self, collection, _id: str, update: dict) -> None:
        """Apply ``update`` to one document by ``_id`` (a scan on FerretDB v1: rare use)."""
        self._call(lambda: collection.update_one({"_id": _id}, update))

    def insert_dead_letter(self, doc: dict) -> bool:
        return self.insert(self.dead_letters, doc)

    def prune(self, now: dt.datetime) -> int:
        """Delete events whose expiry passed (the sweep used when TTL indexes are missing)."""
        return self.delete_where(self.events, {"expire_at": {"$lt": now}})

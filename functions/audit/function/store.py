"""MongoDB storage of inference events and dead letters (pymongo; FerretDB v1 compatible).

One ``MongoClient`` per process, created on first use (after fork, never at import). Every
pymongo failure is mapped to two outcomes by exception type: a duplicate ``_id`` (the event was
already recorded: at-least-once delivery) or :class:`StoreUnavailable` (retry later).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
from typing import Any, Callable, Iterator, TypeVar

import pymongo
from bson.errors import InvalidDocument
from pymongo import errors as perr

from .settings import AuditSettings

log = logging.getLogger(__name__)

KEY_SEP = "\x1f"  # ASCII unit separator: cannot appear in a URI-reference source
NOT_IMPLEMENTED = 238  # MongoDB/FerretDB error code "NotImplemented"
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
        self.indexes_ready = False
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

    def close(self) -> None:
        with self._lock:
            client, self._client = self._client, None
        if client is not None:
            client.close()

    def ping(self) -> None:
        """Raise :class:`StoreUnavailable` unless the server answers."""
        try:
            with pymongo.timeout(self.settings.timeout_ms / 1000):
                self.client().admin.command("ping")
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err

    def ensure_indexes(self) -> None:
        """Create the query indexes (idempotent) and, with retention, a TTL index if supported."""
        try:
            ev = self.events
            ev.create_index([("time", pymongo.ASCENDING)], name="time")
            ev.create_index([("function", pymongo.ASCENDING), ("model", pymongo.ASCENDING),
                             ("time", pymongo.ASCENDING)], name="function_model_time")
            self.dead_letters.create_index([("received_at", pymongo.ASCENDING)],
                                           name="received_at")
            if self.settings.retention_days > 0:
                self.ttl_index = self._ensure_ttl(ev)
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err
        self.indexes_ready = True

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

    def insert(self, collection, doc: dict) -> bool:
        """Insert ``doc``; True if new, False if its ``_id`` exists (a redelivery)."""
        try:
            with pymongo.timeout(self.settings.timeout_ms / 1000):
                collection.insert_one(doc)
            return True
        except perr.DuplicateKeyError:
            return False
        except (InvalidDocument, OverflowError) as err:
            raise DocumentRejected(str(type(err).__name__)) from err
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err

    def insert_event(self, doc: dict) -> bool:
        if self.settings.retention_days > 0:
            doc["expire_at"] = doc["time"] + dt.timedelta(days=self.settings.retention_days)
        return self.insert(self.events, doc)

    def insert_dead_letter(self, doc: dict) -> bool:
        return self.insert(self.dead_letters, doc)

    def scan(self, match: dict, fields: list[str], limit: int,
             reduce: Callable[[Iterator[dict]], T]) -> T:
        """``reduce`` over documents matching ``match`` with only ``fields`` (at most ``limit``),
        filtered and projected by one aggregation pipeline, all under one deadline."""
        pipeline = [{"$match": match}, {"$limit": limit},
                    {"$project": {"_id": 0, **{f: 1 for f in fields}}}]
        self.ping()
        try:
            with pymongo.timeout(self.settings.kpi_timeout_s):
                with self.events.aggregate(pipeline, batchSize=10000) as cursor:
                    return reduce(cursor)
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err

    def prune(self, now: dt.datetime) -> int:
        """Delete events whose expiry passed (the sweep used when TTL indexes are missing)."""
        try:
            return self.events.delete_many({"expire_at": {"$lt": now}}).deleted_count
        except perr.PyMongoError as err:
            raise StoreUnavailable(type(err).__name__) from err

"""The audit service: lifecycle, recording, dead letters and KPI queries, free of HTTP.

``function.api`` maps HTTP onto it; errors are raised as ``APIError`` subclasses and mapped to
HTTP in one place (``llmfn.errors``).
"""
from __future__ import annotations

import datetime as dt
import logging
import threading
import time
from collections.abc import Callable, Mapping

from prometheus_client import CollectorRegistry, Counter, Histogram

from llmfn.contract import Worker
from llmfn.errors import InvalidRequest
from llmfn.metrics import HTTPMetrics

from . import kpis
from .commit import Committer
from .compaction import CompactionAborted, Rollups
from .ingest import Ingestor
from .settings import AuditSettings
from .store import AuditStore, StoreUnavailable

log = logging.getLogger(__name__)

_CONNECT_BACKOFF_S = (0.2, 0.5, 1.0, 2.0, 5.0)


class InvalidQuery(InvalidRequest):
    """A KPI query with a bad parameter (400)."""
    code = "invalid_query"


class AuditMetrics(HTTPMetrics):
    """The audit function's counters, beside the requests every function counts."""

    def __init__(self, registry: CollectorRegistry | None = None):
        super().__init__(registry)
        r = self.registry
        self.received = Counter("audit_events_received_total", "events received by type",
                                ["type"], registry=r)
        self.recorded = Counter("audit_events_recorded_total", "events stored for the first time",
                                registry=r)
        self.duplicates = Counter("audit_events_duplicate_total",
                                  "redelivered events already stored", registry=r)
        self.invalid = Counter("audit_events_invalid_total", "events answered 400, by reason",
                               ["reason"], registry=r)
        self.db_errors = Counter("audit_db_errors_total", "database failures by operation",
                                 ["op"], registry=r)
        self.dead_letters = Counter("audit_dead_letters_total", "dead letters by result",
                                    ["result"], registry=r)
        self.batch_size = Histogram("audit_commit_events", "events per database commit",
                                    buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256), registry=r)
        self.recovered = Counter("audit_rollup_recovered_total",
                                 "commits whose rollup part was rebuilt from their events",
                                 registry=r)
        self.unverified = Counter("audit_duplicates_unverified_total",
                                  "redeliveries older than KPI_LEDGER_HOURS, taken as counted",
                                  registry=r)
        self.compacted = Counter("audit_rollups_written_total", "rollups written by level",
                                 ["level"], registry=r)


class AuditService(Worker):
    """Records inference events, keeps dead letters and answers KPI queries: audit's worker
    (its contract's, ``llmfn.contract.Worker``)."""

    def __init__(self, settings: AuditSettings, *, retry_after_s: int = 2,
                 store: AuditStore | None = None, metrics: AuditMetrics | None = None,
                 clock: Callable[[], dt.datetime] = lambda: dt.datetime.now(dt.UTC)):
        self.settings = settings
        self.capacity = settings.max_batch
        """Deliveries wait for their commit, which groups up to INGEST_MAX_BATCH events."""
        self.store = store or AuditStore(settings)
        self.metrics = metrics or AuditMetrics()
        self.clock = clock
        self.committer = Committer(self.store, settings, self.metrics, clock=clock)
        self.rollups = Rollups(self.store, settings, clock=clock)
        self.ingestor = Ingestor(self.store, self.metrics, self.committer,
                                 retry_after_s=retry_after_s,
                                 wait_s=settings.kpi_timeout_s + 4 * settings.timeout_ms / 1000,
                                 clock=clock)
        self._stop = threading.Event()
        self._connected = threading.Event()
        self._thread: threading.Thread | None = None

    # -- lifecycle -------------------------------------------------------------------------
    def start(self) -> None:
        """Called once per process (after fork): connect and index in the background."""
        if self._thread is not None:
            return
        self._stop.clear()
        self.committer.start()
        self._thread = threading.Thread(target=self._background, name="audit-store",
                                        daemon=True)
        self._thread.start()

    def drain(self, grace_s: float) -> bool:
        """Called on stop once the events being recorded got their commit (new ones get 503
        meanwhile): finish queued commits and close the database client."""
        self.stop(grace_s)
        return True

    def stop(self, timeout_s: float = 5.0) -> None:
        """Called on shutdown: finish queued commits, end the background thread, close."""
        self._stop.set()
        self.committer.stop(timeout_s)
        if self._thread is not None:
            self._thread.join(timeout_s)
            self._thread = None
        self.store.close()

    def alive(self) -> tuple[bool, str]:
        """Liveness: the process answers; a database outage is not a reason to restart it."""
        return True, "OK"

    def ready(self) -> tuple[bool, str]:
        """Ready once the database answered once since start; a later blip does not flap it
        (events then get 503 and the broker retries them)."""
        if self._connected.is_set():
            return True, "OK"
        return False, "waiting for the database"

    def _background(self) -> None:
        attempt = 0
        while not self._stop.is_set():
            try:
                self.store.ping()
                self.store.ensure_indexes()
                self._connected.set()
                break
            except StoreUnavailable as err:
                self.metrics.db_errors.labels("connect").inc()
                log.warning("database not reachable yet (%s)", err)
            self._stop.wait(_CONNECT_BACKOFF_S[min(attempt, len(_CONNECT_BACKOFF_S) - 1)])
            attempt += 1
        next_prune = 0.0
        while not self._stop.wait(self.settings.compact_interval_s):
            self._compact()
            if self.settings.retention_days > 0 and not self.store.ttl_index \
                    and time.monotonic() >= next_prune:
                self._prune()
                next_prune = time.monotonic() + self.settings.retention_sweep_s

    def _compact(self) -> None:
        try:
            for level, n in self.rollups.compact().items():
                self.metrics.compacted.labels(level).inc(n)
        except (StoreUnavailable, CompactionAborted) as err:
            self.metrics.db_errors.labels("compact").inc()
            log.warning("rollup compaction stopped (%s); the next run continues", err)

    def _prune(self) -> None:
        try:
            n = self.store.prune(self.clock())
            if n:
                log.info("retention sweep deleted %d events", n)
        except StoreUnavailable as err:
            self.metrics.db_errors.labels("prune").inc()
            log.warning("retention sweep failed (%s)", err)

    # -- work ------------------------------------------------------------------------------
    def record(self, event) -> dict:
        """Record one inference event exactly once (by source and id)."""
        return self.ingestor.record(event)

    def dead_letter(self, event) -> dict:
        """Keep any event a Knative delivery gave up on."""
        return self.ingestor.dead_letter(event)

    def kpis(self, path: str, args: Mapping[str, str]) -> dict:
        """``/kpis`` (totals and groups) or ``/kpis/timeseries`` (buckets) over a window."""
        try:
            return self._kpis(path, args)
        except kpis.QueryError as err:
            raise InvalidQuery(str(err)) from None
        except StoreUnavailable as err:
            raise self.ingestor.unavailable("query", err) from None

    def _kpis(self, path: str, args: Mapping[str, str]) -> dict:
        query = kpis.parse_query(args, self.clock())
        if path == "/kpis/timeseries":
            if query.group_by:
                raise kpis.QueryError("group_by is a parameter of /kpis (a series is one "
                                      "group: filter by api instead)")
            bucket_s = kpis.parse_bucket(args.get("bucket") or "1m")
            n = kpis.bucket_count(query.since, query.until, bucket_s)
            if n > self.settings.kpi_max_buckets:
                raise kpis.QueryError(f"{n} buckets exceed KPI_MAX_BUCKETS="
                                      f"{self.settings.kpi_max_buckets}; use a larger bucket")
        self.store.ping()  # a down database answers 503 at once, not after the read deadline
        chosen, window = kpis.select(self.rollups.cells(), query)
        out = (kpis.summarize(chosen, query.group_by) if path == "/kpis"
               else kpis.timeseries(chosen, query.since, query.until, bucket_s))
        return {**query.echo(), "window": window, **out}

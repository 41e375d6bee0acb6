"""Settings of the audit function, one frozen object built once from a mapping (cfg or environ)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Mapping

from llmfn.settings import build, setting


@dataclass(frozen=True)
class AuditSettings:
    """Where inference events are stored and the limits of the audit HTTP surface."""
    mongodb_uri: str = setting("MONGODB_URI", "mongodb://127.0.0.1:27017/",
                               "MongoDB connection string (a Secret in the cluster)", secret=True)
    database: str = setting("MONGODB_DATABASE", "llmfn", "database name")
    collection: str = setting("MONGODB_COLLECTION", "inference_events",
                              "collection of recorded inference events")
    deadletter_collection: str = setting("MONGODB_DEADLETTER_COLLECTION", "dead_letters",
                                         "collection of dead-lettered events")
    timeout_ms: int = setting("MONGODB_TIMEOUT_MS", 2000,
                              "deadline of server selection, connect and one insert or "
                              "ping (short: a down database gets 503 fast), ms", lo=50, hi=60000)
    kpi_timeout_s: float = setting("KPI_TIMEOUT_S", 120.0,
                                   "deadline of one KPI query's database scan, s", lo=0.1)
    retention_days: int = setting("RETENTION_DAYS", 0,
                                  "days events are kept (by their time); 0 = forever", lo=0)
    retention_sweep_s: float = setting("RETENTION_SWEEP_S", 3600.0,
                                       "interval of the retention sweep when the server has no "
                                       "TTL indexes, s", lo=1)
    max_request_bytes: int = setting("MAX_REQUEST_BYTES", 1024 * 1024,
                                     "largest accepted event body, bytes (larger: 413)", lo=1)
    retry_after_s: int = setting("RETRY_AFTER_S", 2,
                                 "Retry-After sent with 503 when the database is down, s", lo=0)
    kpi_max_events: int = setting("KPI_MAX_EVENTS", 1_000_000,
                                  "events one KPI query reads at most (more: `truncated`)", lo=1)
    kpi_max_buckets: int = setting("KPI_MAX_BUCKETS", 10_000,
                                   "buckets one timeseries query may return", lo=1)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> "AuditSettings":
        """Build from ``env`` (unknown keys ignored; errors name the key)."""
        return build(cls, env)

"""Settings of the audit function, one frozen object built once from a mapping (cfg or environ).

HTTP limits (``MAX_REQUEST_BYTES``, ``RETRY_AFTER_S``, ``API_KEYS``, ``SHUTDOWN_GRACE_S``) are
llmfn's ``ServerSettings``, shared with generate and embed; audit gives them its own defaults in
:data:`DEFAULTS`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from pymongo.errors import ConfigurationError
from pymongo.uri_parser import parse_uri

from llmfn.settings import SettingsError, build, setting

FUNCTION = "audit"

# Defaults of shared server settings for audit; the cfg mapping (or the environment) overrides.
DEFAULTS = {
    "FUNCTION_NAME": FUNCTION,
    # Event deliveries wait for their database commit: many run at once (one commit's worth,
    # INGEST_MAX_BATCH, with the default), none queue.
    "QUEUE_SIZE": "0",
}


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
                                   "deadline of a KPI read, a compaction step or the recovery "
                                   "scan of one lost commit, s", lo=0.1)
    kpi_prefix: str = setting("KPI_COLLECTION_PREFIX", "kpi_",
                              "prefix of the rollup collections (parts, rollups, ledger, locks)")
    commit_lease_s: float = setting("KPI_LEASE_S", 10.0,
                                    "a commit younger than this may still be writing its rollup "
                                    "part; older parts are compacted, s", lo=0.05)
    compact_interval_s: float = setting("KPI_COMPACT_INTERVAL_S", 5.0,
                                        "interval of the rollup compaction, s", lo=0.05)
    ledger_hours: float = setting("KPI_LEDGER_HOURS", 6.0,
                                  "how long the ids of compacted commits are kept to verify "
                                  "redeliveries (longer than the Trigger's retry span), h", lo=0)
    max_batch: int = setting("INGEST_MAX_BATCH", 256,
                             "events one database commit writes at most", lo=1, hi=10000)
    retention_days: int = setting("RETENTION_DAYS", 0,
                                  "days events are kept (by their time); 0 = forever", lo=0)
    retention_sweep_s: float = setting("RETENTION_SWEEP_S", 3600.0,
                                       "interval of the retention sweep when the server has no "
                                       "TTL indexes, s", lo=1)
    kpi_max_buckets: int = setting("KPI_MAX_BUCKETS", 10_000,
                                   "buckets one timeseries query may return", lo=1)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> AuditSettings:
        """Build from ``env`` (unknown keys ignored; errors name the key)."""
        settings = build(cls, env)
        check_mongodb_uri(settings.mongodb_uri)
        return settings


def check_mongodb_uri(uri: str) -> None:
    """Raise a SettingsError naming MONGODB_URI unless pymongo can parse it; at start, so a bad
    URI is a clear start-up error instead of a 500 on the first query. Only the syntax: an SRV
    URI is parsed as a plain one (no DNS lookup here). The value, a secret, is not repeated."""
    plain = "mongodb://" + uri[len("mongodb+srv://"):] if uri.startswith("mongodb+srv://") else uri
    try:
        parse_uri(plain)
    except (ConfigurationError, ValueError) as err:  # InvalidURI is a ConfigurationError
        raise SettingsError(f"MONGODB_URI is not a MongoDB connection string ({err})") from None

"""KPI queries over the rollup cells (rollup.py): summary by (function, model), or with
``group_by=api`` by (function, model, api), and a series.

FerretDB v1.24.2 (SQLite) scans a whole collection for any filter but an `_id` match, and has
none of the `$group` accumulators percentiles need (`$push`, `$percentile`, `$avg`) nor date
arithmetic (`$dateTrunc`). So the KPIs are pre-aggregated at ingest into minute cells (commit.py)
compacted into hour cells (compaction.py), and a query reads those few documents and merges
them here. A cell counts when its interval overlaps ``[since, until)``; the answer's ``window``
gives the interval the counted cells cover. Percentiles come from log-bucket histograms
(within 4.4 % of the nearest-rank value).
"""
from __future__ import annotations

import datetime as dt
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass

from . import rollup

UTC = dt.UTC
DEFAULT_WINDOW = dt.timedelta(hours=24)
_BUCKET = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}
FILTERS = ("function", "model", "service", "api")  # query parameters a cell's key must equal
GROUP_BY = {"": ("function", "model"), "api": ("function", "model", "api")}
"""``group_by`` values: the key fields a summary's groups have."""


class QueryError(ValueError):
    """A query parameter is invalid; the message names it (answered 400)."""


def parse_time(name: str, raw: str) -> dt.datetime:
    """RFC 3339 (offset required; a bare date-time is taken as UTC) or epoch seconds."""
    raw = raw.strip()
    try:
        return dt.datetime.fromtimestamp(float(raw), UTC)
    except (ValueError, OverflowError, OSError):
        pass
    if "T" in raw.upper() and " " in raw:
        raw = raw.replace(" ", "+")  # an unencoded `+` in a query string arrives as a space
    try:
        value = dt.datetime.fromisoformat(raw)
    except ValueError:
        raise QueryError(f"{name} must be RFC 3339 or epoch seconds, got {raw!r}") from None
    return (value if value.tzinfo else value.replace(tzinfo=UTC)).astimezone(UTC)


def parse_bucket(raw: str) -> int:
    """`30s`, `1m`, `5m`, `1h`, `1d` -> seconds."""
    m = _BUCKET.match(raw.strip())
    if not m or int(m.group(1)) < 1:
        raise QueryError(f"bucket must look like 30s, 1m, 5m, 1h or 1d, got {raw!r}")
    return int(m.group(1)) * _UNIT_S[m.group(2)]


@dataclass(frozen=True)
class Query:
    """What a KPI query asks for: the window ``[since, until)`` and the filters (``None`` when
    not given)."""
    since: dt.datetime
    until: dt.datetime
    function: str | None = None
    model: str | None = None
    service: str | None = None
    api: str | None = None
    group_by: str = ""  # a GROUP_BY key

    def filters(self) -> dict[str, str]:
        """The filters given, by name."""
        return {k: getattr(self, k) for k in FILTERS if getattr(self, k) is not None}

    def echo(self) -> dict:
        """The window, filters and grouping as the answer repeats them."""
        return {"since": _iso(self.since), "until": _iso(self.until), **self.filters(),
                **({"group_by": self.group_by} if self.group_by else {})}

    def counts(self, key: rollup.CellKey) -> bool:
        """Whether the cell of ``key`` counts: it overlaps the window and equals the filters."""
        return (key.start_s < self.until.timestamp()
                and key.start_s + key.resolution_s > self.since.timestamp()
                and all(getattr(key, k) == v for k, v in self.filters().items()))


def parse_query(args: Mapping[str, str], now: dt.datetime) -> Query:
    """The :class:`Query` of the query parameters (default window: the last 24 h to ``now``;
    an empty filter is no filter)."""
    until = parse_time("until", args["until"]) if args.get("until") else now
    since = parse_time("since", args["since"]) if args.get("since") else until - DEFAULT_WINDOW
    if since >= until:
        raise QueryError("since must be before until")
    group_by = args.get("group_by") or ""
    if group_by not in GROUP_BY:
        raise QueryError(f"group_by must be api (groups by function, model and api), "
                         f"got {group_by!r}")
    return Query(since, until, **{k: args[k] for k in FILTERS if args.get(k)},
                 group_by=group_by)


def _iso(t: dt.datetime | float) -> str:
    if not isinstance(t, dt.datetime):
        t = dt.datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


Chosen = list[tuple[rollup.CellKey, rollup.Cell]]


def select(cells: rollup.Cells, query: Query) -> tuple[Chosen, dict]:
    """The cells a query counts (:meth:`Query.counts`), and the window those cells cover
    (``None`` bounds when there are none)."""
    chosen = [(key, cell) for key, cell in cells.items() if query.counts(key)]
    keys = [key for key, _ in chosen]
    window = {"since": _iso(min(k.start_s for k in keys)) if keys else None,
              "until": _iso(max(k.start_s + k.resolution_s for k in keys)) if keys else None,
              "coarsest_cell_s": max((k.resolution_s for k in keys), default=None)}
    return chosen, window


def summarize(chosen: Chosen, group_by: str = "") -> dict:
    """KPIs per group (:data:`GROUP_BY`: (function, model), or (function, model, api)) plus a
    total."""
    fields = GROUP_BY[group_by]
    groups: dict[tuple[str, ...], list[rollup.Cell]] = {}
    for key, cell in chosen:
        groups.setdefault(tuple(getattr(key, f) for f in fields), []).append(cell)
    return {"groups": [{**dict(zip(fields, values, strict=True)), **rollup.summary(cs)}
                       for values, cs in sorted(groups.items())],
            "total": rollup.summary(c for _, c in chosen)}


def timeseries(chosen: Chosen, since: dt.datetime, until: dt.datetime,
               bucket_s: int) -> dict:
    """Count, errors, latency and time-to-first-token p50/p95, mean tokens/s, cold starts,
    tokens and finish reasons per bucket aligned to epoch multiples of ``bucket_s``; a cell goes
    to the bucket holding its start."""
    first = math.floor(since.timestamp() / bucket_s) * bucket_s
    buckets: dict[int, list] = {}
    for key, cell in chosen:
        buckets.setdefault(max(first, key.start_s // bucket_s * bucket_s), []).append(cell)
    series = []
    start = first
    while start < until.timestamp():
        s = rollup.summary(buckets.get(start, []))
        series.append({"start": _iso(start), "count": s["count"], "errors": s["errors"],
                       "error_rate": s["error_rate"],
                       "latency_p50_s": s["latency_s"]["p50"],
                       "latency_p95_s": s["latency_s"]["p95"],
                       "ttft_p50_s": s["ttft_s"]["p50"], "ttft_p95_s": s["ttft_s"]["p95"],
                       "tokens_per_s_mean": s["tokens_per_s_mean"],
                       "cold_starts": s["cold_starts"]["count"],
                       "cold_start_p50_s": s["cold_starts"]["duration_p50_s"],
                       "completion_tokens": s["completion_tokens"],
                       "prompt_tokens": s["prompt_tokens"],
                       "finish_reasons": s["finish_reasons"]})
        start += bucket_s
    return {"bucket_s": bucket_s, "series": series}


def bucket_count(since: dt.datetime, until: dt.datetime, bucket_s: int) -> int:
    """How many buckets :func:`timeseries` answers for the window."""
    first = math.floor(since.timestamp() / bucket_s) * bucket_s
    return max(0, math.ceil((until.timestamp() - first) / bucket_s))

"""KPI queries over the rollup cells (rollup.py): summary by (function, model) and a series.

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
from typing import Mapping

from . import rollup

UTC = dt.timezone.utc
DEFAULT_WINDOW = dt.timedelta(hours=24)
_BUCKET = re.compile(r"^(\d+)(s|m|h|d)$")
_UNIT_S = {"s": 1, "m": 60, "h": 3600, "d": 86400}


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


def parse_query(args: Mapping[str, str], now: dt.datetime) -> tuple[dict, dict]:
    """(the `$match` filter, the echo of the window and filters) from query parameters."""
    until = parse_time("until", args["until"]) if args.get("until") else now
    since = parse_time("since", args["since"]) if args.get("since") else until - DEFAULT_WINDOW
    if since >= until:
        raise QueryError("since must be before until")
    match: dict = {"time": {"$gte": since, "$lt": until}}
    echo = {"since": _iso(since), "until": _iso(until)}
    for key in ("function", "model", "service"):
        if args.get(key):
            match[key] = args[key]
            echo[key] = args[key]
    return match, echo


def _iso(t: dt.datetime | float) -> str:
    if not isinstance(t, dt.datetime):
        t = dt.datetime.fromtimestamp(t, UTC)
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def select(cells: Mapping, match: Mapping) -> tuple[list[tuple], dict]:
    """The cells a query counts: overlapping its window and equal on its filters; and the
    window those cells cover (``None`` bounds when there are none)."""
    since, until = match["time"]["$gte"].timestamp(), match["time"]["$lt"].timestamp()
    want = [(i, match[k]) for i, k in enumerate(("function", "model", "service")) if k in match]
    chosen = [(key, cell) for key, cell in cells.items()
              if key[3] < until and key[3] + key[4] > since
              and all(key[i] == v for i, v in want)]
    window = {"since": _iso(min(k[3] for k, _ in chosen)) if chosen else None,
              "until": _iso(max(k[3] + k[4] for k, _ in chosen)) if chosen else None,
              "coarsest_cell_s": max((k[4] for k, _ in chosen), default=None)}
    return chosen, window


def summarize(chosen: list[tuple]) -> dict:
    """KPIs per (function, model) plus a total."""
    groups: dict[tuple[str, str], list] = {}
    for key, cell in chosen:
        groups.setdefault((key[0], key[1]), []).append(cell)
    return {"groups": [{"function": f, "model": m, **rollup.summary(cs)}
                       for (f, m), cs in sorted(groups.items())],
            "total": rollup.summary(c for _, c in chosen)}


def timeseries(chosen: list[tuple], since: dt.datetime, until: dt.datetime,
               bucket_s: int) -> dict:
    """Count, errors, p50 latency and tokens per bucket aligned to epoch multiples of
    ``bucket_s``; a cell goes to the bucket holding its start."""
    first = math.floor(since.timestamp() / bucket_s) * bucket_s
    buckets: dict[int, list] = {}
    for key, cell in chosen:
        buckets.setdefault(max(first, key[3] // bucket_s * bucket_s), []).append(cell)
    series = []
    start = first
    while start < until.timestamp():
        s = rollup.summary(buckets.get(start, []))
        series.append({"start": _iso(start), "count": s["count"], "errors": s["errors"],
                       "latency_p50_s": s["latency_s"]["p50"],
                       "completion_tokens": s["completion_tokens"],
                       "prompt_tokens": s["prompt_tokens"]})
        start += bucket_s
    return {"bucket_s": bucket_s, "series": series}


def bucket_count(since: dt.datetime, until: dt.datetime, bucket_s: int) -> int:
    first = math.floor(since.timestamp() / bucket_s) * bucket_s
    return max(0, math.ceil((until.timestamp() - first) / bucket_s))

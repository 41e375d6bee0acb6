"""KPI queries over recorded events: summary by (function, model) and a time series.

FerretDB v1.24.2 (SQLite) runs `$match`, `$limit` and `$project` but answers NotImplemented
for the `$group` accumulators percentiles need (`$push`, `$percentile`, `$min`, `$max`, `$avg`)
and for date arithmetic (`$dateTrunc`, `$subtract`). So the database filters and projects
(one aggregation pipeline, one scan) and this module reduces the rows in one pass.
Percentiles are nearest-rank (the smallest value with at least p of the values at or below it).
"""
from __future__ import annotations

import datetime as dt
import math
import re
from typing import Iterable, Mapping

UTC = dt.timezone.utc
DEFAULT_WINDOW = dt.timedelta(hours=24)
FIELDS = ["time", "function", "model", "error", "duration_s", "ttft_s", "tokens_per_s",
          "completion_tokens", "prompt_tokens", "cold_start"]
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


def _iso(t: dt.datetime) -> str:
    return t.astimezone(UTC).isoformat().replace("+00:00", "Z")


def percentile(sorted_values: list[float], p: float) -> float | None:
    """Nearest-rank percentile of an ascending list (None when empty)."""
    if not sorted_values:
        return None
    return sorted_values[max(0, math.ceil(p * len(sorted_values)) - 1)]


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


class _Acc:
    """Running totals and value lists of one group."""

    def __init__(self):
        self.count = self.errors = self.cold = 0
        self.completion = self.prompt = 0
        self.latency: list[float] = []
        self.ttft: list[float] = []
        self.tps: list[float] = []
        self.cold_latency: list[float] = []

    def add(self, row: dict) -> None:
        self.count += 1
        self.errors += 1 if row.get("error") else 0
        self.completion += int(_num(row.get("completion_tokens")) or 0)
        self.prompt += int(_num(row.get("prompt_tokens")) or 0)
        d = _num(row.get("duration_s"))
        if d is not None:
            self.latency.append(d)
        for name, values in (("ttft_s", self.ttft), ("tokens_per_s", self.tps)):
            v = _num(row.get(name))
            if v is not None:
                values.append(v)
        if row.get("cold_start") is True:
            self.cold += 1
            if d is not None:
                self.cold_latency.append(d)

    def summary(self) -> dict:
        lat, ttft, cold = sorted(self.latency), sorted(self.ttft), sorted(self.cold_latency)
        return {
            "count": self.count, "errors": self.errors,
            "error_rate": self.errors / self.count if self.count else 0.0,
            "latency_s": {"p50": percentile(lat, 0.5), "p95": percentile(lat, 0.95),
                          "p99": percentile(lat, 0.99)},
            "ttft_s": {"p50": percentile(ttft, 0.5), "p95": percentile(ttft, 0.95)},
            "tokens_per_s_mean": sum(self.tps) / len(self.tps) if self.tps else None,
            "completion_tokens": self.completion, "prompt_tokens": self.prompt,
            "cold_starts": {"count": self.cold, "duration_p50_s": percentile(cold, 0.5)},
        }


def summarize(rows: Iterable[dict], limit: int) -> dict:
    """KPIs per (function, model) plus a total over all rows (at most ``limit`` rows read)."""
    groups: dict[tuple[str, str], _Acc] = {}
    total = _Acc()
    n = 0
    for row in rows:
        n += 1
        if n > limit:
            break
        key = (str(row.get("function", "")), str(row.get("model", "")))
        groups.setdefault(key, _Acc()).add(row)
        total.add(row)
    return {"truncated": n > limit,
            "groups": [{"function": f, "model": m, **acc.summary()}
                       for (f, m), acc in sorted(groups.items())],
            "total": total.summary()}


def timeseries(rows: Iterable[dict], since: dt.datetime, until: dt.datetime, bucket_s: int,
               limit: int) -> dict:
    """Count, errors, p50 latency and tokens per bucket aligned to epoch multiples of bucket_s."""
    first = math.floor(since.timestamp() / bucket_s) * bucket_s
    buckets: dict[int, _Acc] = {}
    n = 0
    for row in rows:
        n += 1
        if n > limit:
            break
        t = row.get("time")
        if not isinstance(t, dt.datetime):
            continue
        start = math.floor(t.timestamp() / bucket_s) * bucket_s
        buckets.setdefault(start, _Acc()).add(row)
    series = []
    start = first
    while start < until.timestamp():
        acc = buckets.get(start) or _Acc()
        lat = sorted(acc.latency)
        series.append({"start": _iso(dt.datetime.fromtimestamp(start, UTC)),
                       "count": acc.count, "errors": acc.errors,
                       "latency_p50_s": percentile(lat, 0.5),
                       "completion_tokens": acc.completion, "prompt_tokens": acc.prompt})
        start += bucket_s
    return {"truncated": n > limit, "bucket_s": bucket_s, "series": series}


def bucket_count(since: dt.datetime, until: dt.datetime, bucket_s: int) -> int:
    first = math.floor(since.timestamp() / bucket_s) * bucket_s
    return max(0, math.ceil((until.timestamp() - first) / bucket_s))

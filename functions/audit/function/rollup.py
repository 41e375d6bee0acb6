"""KPI rollup cells: what one group of events contributes to `/kpis`, mergeable and small.

A *cell* holds the KPIs of the events of one (function, model, service) whose event time falls
in one aligned interval ``[t, t + r)``: counts, token sums and log-bucket histograms of latency,
time to first token and cold-start latency. Cells add up exactly (counts, sums) and their
histograms merge exactly, so a rollup over a day is the same as the rollup of its minutes.

Percentiles come from the histograms: bucket ``i`` holds values in ``[G**i, G**(i+1))`` with
``G = 2**(1/8)``, and a percentile is reported as the bucket's geometric middle, so it is within
``G**0.5 - 1`` (4.4 %) of the nearest-rank value. Stored as JSON text in one field: FerretDB v1
spends its time per field it decodes, and one string is one field.
"""
from __future__ import annotations

import datetime as dt
import json
import math
import secrets
from typing import Iterable, Mapping

GAMMA = 2 ** (1 / 8)
RELATIVE_ERROR = math.sqrt(GAMMA) - 1  # 0.044
_LOG_GAMMA = math.log(GAMMA)
_MIN_INDEX, _MAX_INDEX = -200, 200  # 2**-25 s .. 2**25 s
ZERO = "z"  # values <= 0 (or below the smallest bucket)
MINUTE_S, HOUR_S, DAY_S = 60, 3600, 86400
Key = tuple  # (function, model, service, start_s, resolution_s)


def bucket_index(value: float) -> str:
    """The histogram bucket of a positive value (``"z"`` for zero and tiny values)."""
    if value <= 0:
        return ZERO
    i = math.floor(math.log(value) / _LOG_GAMMA)
    return ZERO if i < _MIN_INDEX else str(min(i, _MAX_INDEX))


def bucket_value(index: str) -> float:
    """The value reported for a bucket: its geometric middle (0 for ``"z"``)."""
    return 0.0 if index == ZERO else GAMMA ** (int(index) + 0.5)


def hist_percentile(hist: Mapping[str, int], p: float) -> float | None:
    """Nearest-rank percentile from a histogram, as the value of the bucket it falls in."""
    total = sum(hist.values())
    if not total:
        return None
    rank = max(1, math.ceil(p * total))
    seen = 0
    for index in sorted(hist, key=lambda k: -math.inf if k == ZERO else int(k)):
        seen += hist[index]
        if seen >= rank:
            return bucket_value(index)
    return None  # unreachable: seen reaches total


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _new_cell() -> dict:
    return {"n": 0, "e": 0, "c": 0, "pt": 0, "ct": 0, "tn": 0, "ts": 0.0,
            "hl": {}, "ht": {}, "hc": {}}


def _inc(hist: dict, value: float) -> None:
    k = bucket_index(value)
    hist[k] = hist.get(k, 0) + 1


def _epoch(t) -> float:
    return t.timestamp() if isinstance(t, dt.datetime) else float(t)


def cell_key(doc: Mapping, resolution_s: int) -> Key:
    """The cell an event document belongs to at ``resolution_s``."""
    start = int(_epoch(doc["time"]) // resolution_s * resolution_s)
    return (str(doc.get("function", "")), str(doc.get("model", "")),
            str(doc.get("service", "")), start, resolution_s)


def add_event(cells: dict, doc: Mapping, resolution_s: int = MINUTE_S) -> None:
    """Add one stored event document (ingest.event_document's shape) to ``cells``."""
    c = cells.setdefault(cell_key(doc, resolution_s), _new_cell())
    c["n"] += 1
    c["e"] += 1 if doc.get("error") else 0
    c["pt"] += int(_num(doc.get("prompt_tokens")) or 0)
    c["ct"] += int(_num(doc.get("completion_tokens")) or 0)
    d = _num(doc.get("duration_s"))
    if d is not None:
        _inc(c["hl"], d)
    ttft = _num(doc.get("ttft_s"))
    if ttft is not None:
        _inc(c["ht"], ttft)
    tps = _num(doc.get("tokens_per_s"))
    if tps is not None:
        c["tn"] += 1
        c["ts"] += tps
    if doc.get("cold_start") is True:
        c["c"] += 1
        if d is not None:
            _inc(c["hc"], d)


def merge_cell(into: dict, cell: Mapping) -> None:
    """Add ``cell`` to ``into`` (counts, sums and histograms)."""
    for k in ("n", "e", "c", "pt", "ct", "tn", "ts"):
        into[k] += cell[k]
    for h in ("hl", "ht", "hc"):
        target = into[h]
        for index, count in cell[h].items():
            target[index] = target.get(index, 0) + count


def merge(into: dict, cells: Mapping[Key, Mapping], resolution_s: int | None = None) -> dict:
    """Add ``cells`` to ``into``, coarsened to ``resolution_s`` when given (it must be a
    multiple of each cell's resolution). Returns ``into``."""
    for (f, m, s, start, res), cell in cells.items():
        if resolution_s is not None and resolution_s != res:
            start, res = start // resolution_s * resolution_s, resolution_s
        merge_cell(into.setdefault((f, m, s, start, res), _new_cell()), cell)
    return into


def encode(cells: Mapping[Key, Mapping]) -> str:
    """Cells as compact JSON text (one BSON string field)."""
    rows = [[f, m, s, start, res, c] for (f, m, s, start, res), c in sorted(cells.items())]
    return json.dumps(rows, separators=(",", ":"))


def decode(text: str) -> dict:
    """The inverse of :func:`encode`."""
    return {(f, m, s, start, res): c for f, m, s, start, res, c in json.loads(text)}


def build(docs: Iterable[Mapping], resolution_s: int = MINUTE_S) -> dict:
    """Cells of many event documents."""
    cells: dict = {}
    for doc in docs:
        add_event(cells, doc, resolution_s)
    return cells


# -- batch ids -------------------------------------------------------------------------------
def new_batch_id(now: dt.datetime) -> str:
    """A commit's id: its creation time in ms (sortable, 13 digits) and 48 random bits."""
    return f"{int(now.timestamp() * 1000):013d}-{secrets.token_hex(6)}"


def batch_time_s(batch_id: str) -> float:
    """When the batch was created, epoch seconds."""
    return int(batch_id.split("-", 1)[0]) / 1000


def batch_minute(batch_id: str) -> int:
    """The start of the minute the batch was created in, epoch seconds."""
    return int(batch_time_s(batch_id)) // MINUTE_S * MINUTE_S


def summary(cells: Iterable[Mapping]) -> dict:
    """The `/kpis` numbers of merged cells."""
    acc = _new_cell()
    for c in cells:
        merge_cell(acc, c)
    n = acc["n"]
    return {
        "count": n, "errors": acc["e"], "error_rate": acc["e"] / n if n else 0.0,
        "latency_s": {"p50": hist_percentile(acc["hl"], 0.5),
                      "p95": hist_percentile(acc["hl"], 0.95),
                      "p99": hist_percentile(acc["hl"], 0.99)},
        "ttft_s": {"p50": hist_percentile(acc["ht"], 0.5),
                   "p95": hist_percentile(acc["ht"], 0.95)},
        "tokens_per_s_mean": acc["ts"] / acc["tn"] if acc["tn"] else None,
        "completion_tokens": acc["ct"], "prompt_tokens": acc["pt"],
        "cold_starts": {"count": acc["c"], "duration_p50_s": hist_percentile(acc["hc"], 0.5)},
    }

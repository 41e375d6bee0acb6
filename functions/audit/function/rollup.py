"""KPI rollup cells: what one group of events contributes to `/kpis`, mergeable and small.

A :class:`Cell` holds the KPIs of the events of one (function, model, service, api) whose event
time falls in one aligned interval ``[start_s, start_s + resolution_s)``, named by its
:class:`CellKey`: counts, token sums, log-bucket histograms of latency, time to first token and
cold-start latency, and counts by label of the events' ``finish_reason``, ``output_format`` and
``key_id`` (who called: a hash prefix of the bearer key). Cells add up exactly (counts, sums) and
their histograms and label counts merge exactly (label counts: below their cap), so a rollup
over a day is the same as the rollup of its minutes.

Label counts stay open-ended but bounded (:func:`label`, :data:`MAX_LABELS`): an event's value
is counted under its own name when it is a string of 1 to :data:`MAX_LABEL_CHARS` characters,
null as ``"none"``, anything else as ``"other"``; and a cell names at most
:data:`MAX_LABELS` labels per field, ``"other"`` included: once it has ``MAX_LABELS - 1``
named ones, a new name (from an event or a merged cell) is folded into ``"other"``. The counts
always add up to ``count``; which names are kept past the cap depends on the merge order.

Percentiles come from the histograms: bucket ``i`` holds values in ``[G**i, G**(i+1))`` with
``G = 2**(1/8)``, and a percentile is reported as the bucket's geometric middle, so it is within
``G**0.5 - 1`` (4.4 %) of the nearest-rank value.

Stored format (:func:`encode`, :func:`decode`; the one place that knows it): the cells of a document
are JSON text in one field (FerretDB v1 spends its time per field it decodes, and one string is one
field), a list of rows ``[function, model, service, start_s, resolution_s, {stored name: value}]``,
then ``api`` when the cell has one (rows stored before cells had an API, and cells of events that
name none, have none: ``""``).
The stored names stay the short ones the first version wrote (``n``, ``e``, ``c``, ``pt``, ``ct``,
``tn``, ``ts``, ``hl``, ``ht``, ``hc``, and since the label counts ``fr``, ``of`` and ``ki``; each
:class:`Cell` field declares its own, gathered in :data:`STORED_NAMES`): the text is read whole on
every KPI query, short keys keep it compact, and documents written before the fields got words
decode unchanged, so nothing persisted needs a migration. A field missing from a stored row (written
before the field existed) decodes as its empty default. Python code uses only the field names;
nothing outside this module sees a stored name.
"""
from __future__ import annotations

import dataclasses
import datetime as dt
import json
import math
import secrets
from collections.abc import Iterable, Mapping
from typing import NamedTuple

from llmfn.events import api_of

GAMMA = 2 ** (1 / 8)
RELATIVE_ERROR = math.sqrt(GAMMA) - 1  # 0.044
_LOG_GAMMA = math.log(GAMMA)
_MIN_INDEX, _MAX_INDEX = -200, 200  # 2**-25 s .. 2**25 s
ZERO = "z"  # values <= 0 (or below the smallest bucket)
MINUTE_S, HOUR_S, DAY_S = 60, 3600, 86400
MAX_LABELS = 16  # labels a cell names per label field, OTHER included
MAX_LABEL_CHARS = 32  # a longer value is counted as OTHER
OTHER, NONE = "other", "none"  # the labels of folded or odd values, and of null
DEFAULT_OUTPUT_FORMAT = "text"  # what an event without `output_format` (older versions) had


# -- histograms ------------------------------------------------------------------------------
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


# -- counts by key (histograms, labels) ------------------------------------------------------
def _add(counts: dict, key: str, n: int = 1, bounded: bool = False) -> None:
    """Add ``n`` events to ``counts[key]``; when ``bounded``, a new key beyond the first
    ``MAX_LABELS - 1`` names is counted as :data:`OTHER`."""
    if bounded and key not in counts and len(counts) - (OTHER in counts) >= MAX_LABELS - 1:
        key = OTHER
    counts[key] = counts.get(key, 0) + n


def label(value) -> str:
    """The label an event's string field is counted under: the string itself when it has 1 to
    ``MAX_LABEL_CHARS`` characters, :data:`NONE` for null, :data:`OTHER` for anything else."""
    if value is None:
        return NONE
    if isinstance(value, str) and 0 < len(value) <= MAX_LABEL_CHARS:
        return value
    return OTHER


# -- cells -----------------------------------------------------------------------------------
class CellKey(NamedTuple):
    """Which events a cell counts: one (function, model, service, api) over one interval."""
    function: str
    model: str
    service: str
    start_s: int  # epoch seconds, a multiple of resolution_s
    resolution_s: int  # the interval's length: MINUTE_S or HOUR_S
    api: str = ""  # the events' API (event_api); "" when they name none

    def coarsened(self, resolution_s: int) -> CellKey:
        """The key of the coarser cell (a multiple of this resolution) holding this one."""
        return self._replace(start_s=self.start_s // resolution_s * resolution_s,
                             resolution_s=resolution_s)


def _stored(name: str, kind: type = int, labels: bool = False):
    """A cell field, stored under the short key ``name`` (see the module docstring);
    ``labels``: a dict of label counts, bounded by :data:`MAX_LABELS`."""
    return dataclasses.field(default_factory=kind, metadata={"stored": name, "labels": labels})


@dataclasses.dataclass(slots=True)
class Cell:
    """The KPIs of the events of one :class:`CellKey`; histograms map bucket -> events."""
    count: int = _stored("n")  # events
    errors: int = _stored("e")  # events with `error` set
    cold_starts: int = _stored("c")  # events with `cold_start: true`
    prompt_tokens: int = _stored("pt")  # sum of `prompt_tokens`
    completion_tokens: int = _stored("ct")  # sum of `completion_tokens`
    tokens_per_s_count: int = _stored("tn")  # events that reported `tokens_per_s`
    tokens_per_s_sum: float = _stored("ts", float)  # sum of their `tokens_per_s`
    latency_hist: dict = _stored("hl", dict)  # `duration_s` of every event
    ttft_hist: dict = _stored("ht", dict)  # `ttft_s` of the events that have one
    cold_start_latency_hist: dict = _stored("hc", dict)  # `duration_s` of cold starts
    finish_reasons: dict = _stored("fr", dict, labels=True)  # label(`finish_reason`) -> events
    output_formats: dict = _stored("of", dict, labels=True)  # label(`output_format`) -> events
    key_ids: dict = _stored("ki", dict, labels=True)  # label(`key_id`) -> events; none = no auth

    def add_event(self, doc: Mapping) -> None:
        """Count one stored event document (ingest.event_document's shape)."""
        self.count += 1
        self.errors += 1 if doc.get("error") else 0
        self.prompt_tokens += int(_num(doc.get("prompt_tokens")) or 0)
        self.completion_tokens += int(_num(doc.get("completion_tokens")) or 0)
        duration = _num(doc.get("duration_s"))
        if duration is not None:
            _add(self.latency_hist, bucket_index(duration))
        ttft = _num(doc.get("ttft_s"))
        if ttft is not None:
            _add(self.ttft_hist, bucket_index(ttft))
        tps = _num(doc.get("tokens_per_s"))
        if tps is not None:
            self.tokens_per_s_count += 1
            self.tokens_per_s_sum += tps
        if doc.get("cold_start") is True:
            self.cold_starts += 1
            if duration is not None:
                _add(self.cold_start_latency_hist, bucket_index(duration))
        _add(self.finish_reasons, label(doc.get("finish_reason")), bounded=True)
        _add(self.output_formats, label(doc.get("output_format", DEFAULT_OUTPUT_FORMAT)),
             bounded=True)
        _add(self.key_ids, label(doc.get("key_id")), bounded=True)

    def merge(self, other: Cell) -> None:
        """Add ``other`` to this cell (counts, sums, histograms and label counts)."""
        for name in _SUMS:
            setattr(self, name, getattr(self, name) + getattr(other, name))
        for name, bounded in _COUNTS:
            target = getattr(self, name)
            for key, n in getattr(other, name).items():
                _add(target, key, n, bounded)


_FIELDS = dataclasses.fields(Cell)
STORED_NAMES = {f.name: f.metadata["stored"] for f in _FIELDS}  # field -> stored key
# the dicts (histograms and label counts: key -> events), with whether they are bounded
_COUNTS = tuple((f.name, f.metadata["labels"]) for f in _FIELDS if f.default_factory is dict)
_SUMS = tuple(f.name for f in _FIELDS if f.default_factory is not dict)

Cells = dict[CellKey, Cell]  # a set of cells, by key


def _num(value) -> float | None:
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        return None
    return float(value) if math.isfinite(value) else None


def _epoch(t) -> float:
    return t.timestamp() if isinstance(t, dt.datetime) else float(t)


def event_api(doc: Mapping) -> str:
    """The API an event document counts under: its ``api`` (as a :func:`label`); for an event
    sent before the field, the API of its ``endpoint`` (``llmfn.events.api_of``); else ``""``."""
    api = doc.get("api")
    if api is None:
        api = api_of(doc.get("endpoint"))
    return "" if api is None else label(api)


def cell_key(doc: Mapping, resolution_s: int) -> CellKey:
    """The cell an event document belongs to at ``resolution_s``."""
    start = int(_epoch(doc["time"]) // resolution_s * resolution_s)
    return CellKey(str(doc.get("function", "")), str(doc.get("model", "")),
                   str(doc.get("service", "")), start, resolution_s, event_api(doc))


def add_event(cells: Cells, doc: Mapping, resolution_s: int = MINUTE_S) -> None:
    """Add one stored event document to the cell of ``cells`` it belongs to."""
    cells.setdefault(cell_key(doc, resolution_s), Cell()).add_event(doc)


def merge(into: Cells, cells: Mapping[CellKey, Cell], resolution_s: int | None = None) -> Cells:
    """Add ``cells`` to ``into``, coarsened to ``resolution_s`` when given (it must be a
    multiple of each cell's resolution). Returns ``into``."""
    for key, cell in cells.items():
        if resolution_s is not None and resolution_s != key.resolution_s:
            key = key.coarsened(resolution_s)
        into.setdefault(key, Cell()).merge(cell)
    return into


def build(docs: Iterable[Mapping], resolution_s: int = MINUTE_S) -> Cells:
    """Cells of many event documents."""
    cells: Cells = {}
    for doc in docs:
        add_event(cells, doc, resolution_s)
    return cells


# -- stored format ---------------------------------------------------------------------------
def encode(cells: Mapping[CellKey, Cell]) -> str:
    """Cells as compact JSON text (one BSON string field), with the stored names; a cell's api
    after its values, when it has one."""
    rows = [[*key[:5], {stored: getattr(cell, name) for name, stored in STORED_NAMES.items()},
             *([key.api] if key.api else [])]
            for key, cell in sorted(cells.items())]
    return json.dumps(rows, separators=(",", ":"))


def decode(text: str) -> Cells:
    """The inverse of :func:`encode`; a field a row lacks (stored before the field existed)
    takes its empty default, and so does its api."""
    return {CellKey(f, m, s, start, res, *api):
            Cell(**{name: values[stored] for name, stored in STORED_NAMES.items()
                    if stored in values})
            for f, m, s, start, res, values, *api in json.loads(text)}


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


# -- the `/kpis` numbers ---------------------------------------------------------------------
def summary(cells: Iterable[Cell]) -> dict:
    """The `/kpis` numbers of merged cells."""
    acc = Cell()
    for c in cells:
        acc.merge(c)
    n = acc.count
    return {
        "count": n, "errors": acc.errors, "error_rate": acc.errors / n if n else 0.0,
        "latency_s": {"p50": hist_percentile(acc.latency_hist, 0.5),
                      "p95": hist_percentile(acc.latency_hist, 0.95),
                      "p99": hist_percentile(acc.latency_hist, 0.99)},
        "ttft_s": {"p50": hist_percentile(acc.ttft_hist, 0.5),
                   "p95": hist_percentile(acc.ttft_hist, 0.95)},
        "tokens_per_s_mean": (acc.tokens_per_s_sum / acc.tokens_per_s_count
                              if acc.tokens_per_s_count else None),
        "completion_tokens": acc.completion_tokens, "prompt_tokens": acc.prompt_tokens,
        "cold_starts": {"count": acc.cold_starts,
                        "duration_p50_s": hist_percentile(acc.cold_start_latency_hist, 0.5)},
        "finish_reasons": dict(sorted(acc.finish_reasons.items())),
        "output_formats": dict(sorted(acc.output_formats.items())),
        "key_ids": dict(sorted(acc.key_ids.items())),
    }

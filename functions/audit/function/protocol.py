"""audit's protocol: what its routes take and answer, as types.

Events come in as CloudEvents (binary or structured mode, ``llmfn.ce_http``); an inference
event's data is ``llmfn.events.InferenceData``. The KPI queries take query strings, parsed by
kpis.py; their parameters are declared here for the document. The answers are the types below.
:data:`OPERATIONS` writes the OpenAPI document from them (``llmfn.openapi.function_document``).
Imports only llmfn: tools load this module by path.
"""
from __future__ import annotations

from typing import Annotated, Literal

from llmfn import openapi
from llmfn.events import INFERENCE_COMPLETED, InferenceData
from llmfn.openapi import Operation, Param
from llmfn.protocol import UNSET, Meta, Model, UnsetType


class Recorded(Model):
    """An event stored, or recognised as a redelivery (same source and id)."""
    status: Literal["recorded", "duplicate"]
    id: str


class DeadLettered(Model):
    """A dead letter stored, or recognised as a redelivery (same source and id)."""
    status: Literal["dead_letter", "duplicate"]
    id: str


class Latency(Model):
    """Percentiles of the request duration, s (null without requests)."""
    p50: float | None
    p95: float | None
    p99: float | None


class TimeToFirstToken(Model):
    """Percentiles of the time to the first token, s (null without streamed requests)."""
    p50: float | None
    p95: float | None


class ColdStarts(Model):
    """Requests that waited for a cold start, and its median duration, s."""
    count: int
    duration_p50_s: float | None


class Summary(Model):
    """The KPIs of the requests counted."""
    count: int
    errors: int
    error_rate: float
    latency_s: Latency
    ttft_s: TimeToFirstToken
    tokens_per_s_mean: float | None
    completion_tokens: int
    prompt_tokens: int
    cold_starts: ColdStarts
    finish_reasons: dict[str, int]
    output_formats: dict[str, int]
    key_ids: dict[str, int]


class Group(Summary):
    """The KPIs of one function and model (and API, with ``group_by=api``)."""
    function: str
    model: str
    api: Annotated[str | UnsetType, Meta(
        description="with group_by=api: chat, completions, responses, messages, embeddings, or "
        "\"\" for cells stored before events had an API")] = UNSET


class Window(Model):
    """The time the counted rollup cells cover (null bounds when none counts), and the
    coarsest cell among them, s."""
    since: str | None
    until: str | None
    coarsest_cell_s: int | None


class Filtered(Model):
    """The window asked for and the filters given (a filter not given is left out)."""
    since: str
    until: str
    function: str | UnsetType = UNSET
    model: str | UnsetType = UNSET
    service: str | UnsetType = UNSET
    api: str | UnsetType = UNSET
    group_by: Literal["api"] | UnsetType = UNSET


class KPIs(Filtered, kw_only=True):
    """The answer of /kpis: the window, the filters, per-group and total KPIs."""
    window: Window
    groups: list[Group]
    total: Summary


class Bucket(Model):
    """The KPIs of one time bucket (starting at ``start``)."""
    start: str
    count: int
    errors: int
    error_rate: float
    latency_p50_s: float | None
    latency_p95_s: float | None
    ttft_p50_s: float | None
    ttft_p95_s: float | None
    tokens_per_s_mean: float | None
    cold_starts: int
    cold_start_p50_s: float | None
    completion_tokens: int
    prompt_tokens: int
    finish_reasons: dict[str, int]


class KPISeries(Filtered, kw_only=True):
    """The answer of /kpis/timeseries: one entry per bucket."""
    window: Window
    bucket_s: int
    series: list[Bucket]


# -- the document ---------------------------------------------------------------------------------
TITLE = "llmfn audit"
DESCRIPTION = "Inference CloudEvents in, stored once; KPIs out (docs/audit.md)."
GROUPS = ("base",)

_EVENT_IN = ("A CloudEvent in binary mode (`ce-*` headers, the event's data as the body) or "
             "structured mode (`application/cloudevents+json`); batch mode is refused. Public: "
             "the Broker sends no key.")
_INVALID_EVENT = {400: openapi.error_response(
    "not an acceptable CloudEvent (`code: invalid_event`; not retried)")}
_EVENT_HEADERS = openapi.event_parameters(INFERENCE_COMPLETED)
_WINDOW = (
    Param("since", description="ISO 8601 start of the window (default: 24 h before `until`)"),
    Param("until", description="ISO 8601 end of the window (default: now)"),
    Param("function", description="only this function"),
    Param("model", description="only this model"),
    Param("service", description="only this Knative service"),
    Param("api", description="only this API (the events' `api`: chat, completions, responses, "
          "messages, embeddings)"),
)
_INVALID_QUERY = {400: openapi.error_response("a bad query parameter (`code: invalid_query`)")}


def _record(path: str, operation_id: str, summary: str) -> Operation:
    return Operation(path, "post", operation_id, summary, ("events",), request=InferenceData,
                     response=Recorded, public=True, errors=(503,), description=_EVENT_IN,
                     event=INFERENCE_COMPLETED, parameters=_EVENT_HEADERS,
                     returns="stored, or recognised as a redelivery", responses=_INVALID_EVENT)


OPERATIONS = [
    _record("/", "recordEvent", "Record an inference event (`dev.llmfn.inference.*`)"),
    _record("/events", "recordEventAlias", "Record an inference event (same as POST /)"),
    Operation("/dead-letter", "post", "deadLetter",
              "A Trigger's dead-letter sink: keep any event a delivery gave up on", ("events",),
              response=DeadLettered, public=True, errors=(503,), description=_EVENT_IN,
              event=INFERENCE_COMPLETED, parameters=_EVENT_HEADERS,
              returns="stored, or recognised as a redelivery", responses=_INVALID_EVENT),
    openapi.page("/dashboard", "dashboard", "HTML KPI dashboard"),
    Operation("/kpis", "get", "kpis", "KPIs per function and model over a window", ("kpis",),
              response=KPIs, errors=(401, 429, 503),
              parameters=(*_WINDOW, Param("group_by", schema={"type": "string", "enum": ["api"]},
                                          description="`api`: groups by function, model and API "
                                          "(default: function and model)")),
              returns="the window, the filters, per-group and total KPIs",
              responses=_INVALID_QUERY),
    Operation("/kpis/timeseries", "get", "kpisTimeseries", "KPIs per time bucket", ("kpis",),
              response=KPISeries, errors=(401, 429, 503), returns="one entry per bucket",
              parameters=(*_WINDOW, Param("bucket", description="e.g. `1m`, `5m`, `1h`, `1d` "
                                          "(default `1m`); at most `KPI_MAX_BUCKETS` buckets")),
              responses=_INVALID_QUERY),
]
"""audit's routes (its document has only the ``base`` group: no model, no request events)."""

"""audit's OpenAPI document, regenerated from its protocol types (function/protocol.py and
llmfn's shared parts), is served at /openapi.json, is valid OpenAPI 3.1 and describes exactly
the app's routes; the KPI answers are what its types say."""
from __future__ import annotations

import datetime as dt
import json

import msgspec
from audit_function import kpis, protocol, rollup
from audit_function.func import create_runtime

from tests.support import openapi_routes

NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=dt.UTC)


def test_openapi_document_matches_the_app():
    rt = create_runtime({"MONGODB_URI": "mongodb://127.0.0.1:9/", "MONGODB_TIMEOUT_MS": "100"})
    doc = openapi_routes.served_document(rt.app, "audit")
    assert {("POST", "/"), ("POST", "/events"), ("POST", "/dead-letter"), ("GET", "/kpis"),
            ("GET", "/kpis/timeseries"), ("GET", "/dashboard")} <= \
        openapi_routes.document_operations(doc)
    assert "/v1/models" not in doc["paths"]  # no model: only the base group
    params = {p["name"] for p in doc["paths"]["/kpis/timeseries"]["get"]["parameters"]}
    assert params == {"since", "until", "function", "model", "service", "api", "bucket"}
    params = {p["name"] for p in doc["paths"]["/kpis"]["get"]["parameters"]}
    assert params == {"since", "until", "function", "model", "service", "api", "group_by"}


def _rows():
    row = {"function": "generate", "model": "m", "service": "generate", "error": 0,
           "ttft_s": 0.1, "tokens_per_s": 10.0, "completion_tokens": 2, "prompt_tokens": 3,
           "cold_start": False, "finish_reason": "stop", "output_format": "text"}
    return ([{**row, "time": NOW - dt.timedelta(seconds=i), "duration_s": float(i)}
             for i in range(1, 5)]
            + [{**row, "time": NOW - dt.timedelta(seconds=90), "duration_s": 1.0, "error": 1,
                "ttft_s": None, "tokens_per_s": None, "cold_start": True, "function": "embed"}])


def _as(kind, answer):
    """``answer`` as the JSON it is sent as, read strictly as ``kind``."""
    return msgspec.json.decode(json.dumps(answer), type=kind, strict=True)


def test_kpi_answers_are_their_types():
    """service._kpis' answers (its own one-line assembly of these parts) read back as
    protocol.KPIs and protocol.KPISeries, filters and empty windows included."""
    cells = rollup.build(_rows())
    for args in ({}, {"model": "m"}, {"since": "2026-01-02T12:00:00Z",
                                      "until": "2026-01-02T12:05:00Z"}):
        query = kpis.parse_query(args, NOW)
        chosen, window = kpis.select(cells, query)
        kpi = _as(protocol.KPIs, {**query.echo(), "window": window, **kpis.summarize(chosen)})
        assert kpi.since == query.echo()["since"]
        series = kpis.timeseries(chosen, query.since, query.until, 60)
        got = _as(protocol.KPISeries, {**query.echo(), "window": window, **series})
        assert len(got.series) == kpis.bucket_count(query.since, query.until, 60)
    assert {g.function for g in kpi.groups} == set() and kpi.window.since is None
    query = kpis.parse_query({}, NOW)
    kpi = _as(protocol.KPIs, {**query.echo(), "window": kpis.select(cells, query)[1],
                              **kpis.summarize(kpis.select(cells, query)[0])})
    assert {g.function for g in kpi.groups} == {"embed", "generate"}
    assert kpi.total.count == 5 and kpi.total.errors == 1
    query = kpis.parse_query({"group_by": "api", "api": ""}, NOW)
    chosen, window = kpis.select(cells, query)
    kpi = _as(protocol.KPIs, {**query.echo(), "window": window,
                              **kpis.summarize(chosen, query.group_by)})
    assert kpi.group_by == "api" and {(g.function, g.api) for g in kpi.groups} == {
        ("embed", ""), ("generate", "")}

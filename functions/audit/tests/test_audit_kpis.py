import datetime as dt

import pytest
from audit_function import kpis, rollup

UTC = dt.UTC
NOW = dt.datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def test_parse_time_rfc3339_and_epoch():
    assert kpis.parse_time("since", "2026-01-02T03:04:05Z") == dt.datetime(2026, 1, 2, 3, 4, 5,
                                                                            tzinfo=UTC)
    assert kpis.parse_time("since", "2026-01-02T05:04:05+02:00").hour == 3
    assert kpis.parse_time("since", "2026-01-02T05:04:05 02:00").hour == 3  # `+` unencoded
    assert kpis.parse_time("since", "0") == dt.datetime(1970, 1, 1, tzinfo=UTC)
    assert kpis.parse_time("since", "1.5").microsecond == 500000
    with pytest.raises(kpis.QueryError, match="since"):
        kpis.parse_time("since", "yesterday")


def test_parse_query_defaults_to_last_24h_and_filters():
    query = kpis.parse_query({"model": "m", "function": "", "service": "s"}, NOW)
    assert (query.since, query.until) == (NOW - dt.timedelta(hours=24), NOW)
    assert query.model == "m" and query.service == "s" and query.function is None
    assert query.filters() == {"model": "m", "service": "s"}
    assert query.echo() == {"since": "2026-01-01T12:00:00Z", "until": "2026-01-02T12:00:00Z",
                            "model": "m", "service": "s"}
    with pytest.raises(kpis.QueryError, match="before"):
        kpis.parse_query({"since": "2026-01-03T00:00:00Z"}, NOW)


@pytest.mark.parametrize("raw,seconds", [("30s", 30), ("1m", 60), ("5m", 300), ("1h", 3600),
                                         ("1d", 86400)])
def test_parse_bucket(raw, seconds):
    assert kpis.parse_bucket(raw) == seconds


@pytest.mark.parametrize("raw", ["", "0m", "1w", "m", "-1m", "1.5m"])
def test_parse_bucket_rejects(raw):
    with pytest.raises(kpis.QueryError, match="bucket"):
        kpis.parse_bucket(raw)


def _row(i, **kw):
    row = {"time": NOW - dt.timedelta(seconds=i), "function": "generate", "model": "m",
           "service": "generate", "error": 0, "duration_s": float(i), "ttft_s": 0.1,
           "tokens_per_s": 10.0, "completion_tokens": 2, "prompt_tokens": 3, "cold_start": False,
           "finish_reason": "stop", "output_format": "text"}
    row.update(kw)
    return row


def _query(**args):
    return kpis.parse_query(args, NOW)


def test_summarize_groups_and_total():
    rows = [_row(i, **({"finish_reason": "length"} if i % 5 == 0 else {}))
            for i in range(1, 9)]
    rows += [_row(9, finish_reason="tool_calls", output_format="tool_call"),
             _row(10, output_format="json_schema")]
    rows += [_row(1, function="embed", error=1, ttft_s=None, tokens_per_s=None,
                  cold_start=True, duration_s=4.0, finish_reason=None)]
    chosen, window = kpis.select(rollup.build(rows), _query())
    out = kpis.summarize(chosen)
    embed, gen = out["groups"]
    assert (embed["function"], gen["function"]) == ("embed", "generate")
    assert gen["count"] == 10 and gen["errors"] == 0
    assert gen["latency_s"]["p50"] == pytest.approx(5.0, rel=rollup.RELATIVE_ERROR)
    assert gen["latency_s"]["p99"] == pytest.approx(10.0, rel=rollup.RELATIVE_ERROR)
    assert gen["tokens_per_s_mean"] == 10.0
    assert gen["completion_tokens"] == 20 and gen["prompt_tokens"] == 30
    assert embed["error_rate"] == 1.0 and embed["ttft_s"] == {"p50": None, "p95": None}
    assert embed["cold_starts"]["count"] == 1
    assert embed["cold_starts"]["duration_p50_s"] == pytest.approx(4.0,
                                                                   rel=rollup.RELATIVE_ERROR)
    assert gen["finish_reasons"] == {"length": 1, "stop": 8, "tool_calls": 1}
    assert gen["output_formats"] == {"json_schema": 1, "text": 8, "tool_call": 1}
    assert embed["finish_reasons"] == {"none": 1} and embed["output_formats"] == {"text": 1}
    assert out["total"]["count"] == 11 and out["total"]["errors"] == 1
    assert out["total"]["finish_reasons"] == {"length": 1, "none": 1, "stop": 8,
                                              "tool_calls": 1}
    assert list(out["total"]["output_formats"]) == ["json_schema", "text", "tool_call"]
    assert out["total"]["key_ids"] == {"none": 11}  # no key_id in these rows: auth off
    assert window == {"since": "2026-01-02T11:59:00Z", "until": "2026-01-02T12:00:00Z",
                      "coarsest_cell_s": 60}


def test_select_filters_and_window_overlap():
    cells = rollup.build([_row(30), _row(90, model="x"), _row(3000, service="other")])
    chosen, _ = kpis.select(cells, _query(model="m"))
    assert sum(c.count for _, c in chosen) == 2
    chosen, _ = kpis.select(cells, _query(service="other"))
    assert sum(c.count for _, c in chosen) == 1
    # a cell overlapping the window's start counts whole: the window says so
    chosen, window = kpis.select(cells, _query(since="2026-01-02T11:59:30Z"))
    assert sum(c.count for _, c in chosen) == 1 and window["since"] == "2026-01-02T11:59:00Z"
    assert kpis.select(cells, _query(since="2026-01-02T12:00:00Z",
                                     until="2026-01-02T12:05:00Z"))[1]["since"] is None


def test_summarize_tolerates_odd_values():
    rows = [_row(1, duration_s="x", completion_tokens=None), _row(2, duration_s=float("nan")),
            _row(3, duration_s=0.0)]
    out = kpis.summarize(kpis.select(rollup.build(rows), _query())[0])
    assert out["total"]["count"] == 3 and out["total"]["latency_s"]["p50"] == 0.0
    assert out["total"]["completion_tokens"] == 4


def test_timeseries_zero_fills_aligned_buckets():
    since, until = NOW - dt.timedelta(minutes=3), NOW
    rows = [_row(30), _row(31, error=1, finish_reason="error"), _row(150)]
    chosen, _ = kpis.select(rollup.build(rows), _query(since=since.isoformat()))
    out = kpis.timeseries(chosen, since, until, 60)
    starts = [b["start"] for b in out["series"]]
    assert starts == ["2026-01-02T11:57:00Z", "2026-01-02T11:58:00Z", "2026-01-02T11:59:00Z"]
    counts = [(b["count"], b["errors"]) for b in out["series"]]
    assert counts == [(1, 0), (0, 0), (2, 1)]
    assert out["series"][2]["latency_p50_s"] == pytest.approx(30.0, rel=rollup.RELATIVE_ERROR)
    assert out["series"][2]["completion_tokens"] == 4
    assert [b["finish_reasons"] for b in out["series"]] == [{"stop": 1}, {},
                                                            {"error": 1, "stop": 1}]
    assert kpis.bucket_count(since, until, 60) == 3


def test_timeseries_buckets_have_the_dashboard_percentiles():
    """p95 latency, TTFT p50/p95, tokens/s, error rate and cold starts per bucket (the
    /dashboard charts), equal to /kpis' numbers over the same cells."""
    since, until = NOW - dt.timedelta(minutes=2), NOW
    rows = ([_row(i, ttft_s=0.01 * i, tokens_per_s=float(i)) for i in range(1, 21)]
            + [_row(21, error=1, cold_start=True, ttft_s=None, tokens_per_s=None)])
    chosen, _ = kpis.select(rollup.build(rows), _query(since=since.isoformat()))
    last = kpis.timeseries(chosen, since, until, 60)["series"][-1]
    total = kpis.summarize(chosen)["total"]
    assert last["count"] == 21 and last["errors"] == 1
    assert last["error_rate"] == pytest.approx(1 / 21)
    assert last["latency_p95_s"] == total["latency_s"]["p95"]
    assert last["latency_p95_s"] == pytest.approx(20.0, rel=rollup.RELATIVE_ERROR)
    assert (last["ttft_p50_s"], last["ttft_p95_s"]) == (total["ttft_s"]["p50"],
                                                        total["ttft_s"]["p95"])
    assert last["ttft_p95_s"] == pytest.approx(0.19, rel=rollup.RELATIVE_ERROR)
    assert last["tokens_per_s_mean"] == pytest.approx(10.5)
    assert last["cold_starts"] == 1
    assert last["cold_start_p50_s"] == pytest.approx(21.0, rel=rollup.RELATIVE_ERROR)
    empty = kpis.timeseries([], since, until, 60)["series"][0]
    assert empty["ttft_p95_s"] is None and empty["tokens_per_s_mean"] is None
    assert empty["cold_starts"] == 0 and empty["error_rate"] == 0.0


def test_group_by_api_and_filter_by_api():
    """Groups by (function, model, api) with group_by=api, the API of an event from before the
    field read from its endpoint ("" when it has neither); the api filter keeps one API; by
    default the groups are (function, model) as before."""
    rows = [_row(1, api="chat", duration_s=1.0), _row(2, api="chat", duration_s=1.0),
            _row(3, api="responses", duration_s=8.0),
            _row(4, endpoint="/v1/chat/completions"),  # sent before events had an api
            _row(5, endpoint="/v1/completions"), _row(6),
            _row(7, function="embed", api="embeddings")]
    cells = rollup.build(rows)
    chosen, _ = kpis.select(cells, _query())
    assert [(g["function"], g["model"], g["count"]) for g in kpis.summarize(chosen)["groups"]] \
        == [("embed", "m", 1), ("generate", "m", 6)]
    assert "api" not in kpis.summarize(chosen)["groups"][0]
    query = _query(group_by="api")
    assert query.echo()["group_by"] == "api"
    groups = kpis.summarize(kpis.select(cells, query)[0], query.group_by)["groups"]
    by = {(g["function"], g["api"]): g for g in groups}
    assert {k: g["count"] for k, g in by.items()} == {
        ("embed", "embeddings"): 1, ("generate", ""): 1, ("generate", "chat"): 3,
        ("generate", "completions"): 1, ("generate", "responses"): 1}
    assert by["generate", "responses"]["latency_s"]["p50"] == pytest.approx(
        8.0, rel=rollup.RELATIVE_ERROR)
    only, _ = kpis.select(cells, _query(api="responses"))
    assert kpis.summarize(only)["total"]["count"] == 1
    assert _query(api="responses").echo()["api"] == "responses"
    with pytest.raises(kpis.QueryError, match="group_by"):
        _query(group_by="service")

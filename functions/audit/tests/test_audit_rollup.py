import collections
import dataclasses
import datetime as dt
import json
import math
import random

import pytest
from audit_function import rollup

UTC = dt.UTC
T0 = dt.datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def _doc(i, rng, **kw):
    d = {"time": T0 + dt.timedelta(seconds=i * 7), "function": rng.choice(["generate", "embed"]),
         "model": "m", "service": "s", "error": int(rng.random() < 0.1),
         "duration_s": rng.lognormvariate(0, 1.5), "ttft_s": rng.uniform(0.001, 2),
         "tokens_per_s": rng.uniform(5, 90), "completion_tokens": rng.randint(0, 300),
         "prompt_tokens": rng.randint(1, 900), "cold_start": rng.random() < 0.05,
         "finish_reason": rng.choice(["stop", "stop", "length", "tool_calls", None]),
         "output_format": rng.choice(["text", "json_object", "json_schema", "tool_call"])}
    if rng.random() < 0.2:
        del d["output_format"]  # an event from before the field: counted as "text"
    d.update(kw)
    return d


def nearest_rank(values, p):
    values = sorted(values)
    return values[max(0, math.ceil(p * len(values)) - 1)]


@pytest.mark.parametrize("p", [0.5, 0.95, 0.99])
def test_percentiles_within_the_stated_error(p):
    rng = random.Random(p)
    docs = [_doc(i, rng) for i in range(5000)]
    got = rollup.summary(rollup.build(docs).values())
    want = nearest_rank([d["duration_s"] for d in docs], p)
    key = {0.5: "p50", 0.95: "p95", 0.99: "p99"}[p]
    assert got["latency_s"][key] == pytest.approx(want, rel=rollup.RELATIVE_ERROR)
    assert got["count"] == 5000
    assert got["completion_tokens"] == sum(d["completion_tokens"] for d in docs)
    assert got["errors"] == sum(d["error"] for d in docs)
    assert got["cold_starts"]["count"] == sum(d["cold_start"] for d in docs)
    assert got["tokens_per_s_mean"] == pytest.approx(
        sum(d["tokens_per_s"] for d in docs) / len(docs))
    assert got["finish_reasons"] == dict(sorted(collections.Counter(
        d["finish_reason"] or "none" for d in docs).items()))
    assert got["output_formats"] == dict(sorted(collections.Counter(
        d.get("output_format", "text") for d in docs).items()))


def test_merging_minutes_equals_building_hours():
    rng = random.Random(7)
    docs = [_doc(i, rng) for i in range(2000)]
    by_parts: dict = {}
    for i in range(0, len(docs), 37):  # arbitrary commits
        rollup.merge(by_parts, rollup.decode(rollup.encode(rollup.build(docs[i:i + 37]))))
    hours = rollup.merge({}, by_parts, rollup.HOUR_S)
    want = rollup.build(docs, rollup.HOUR_S)
    assert hours.keys() == want.keys()
    for key, cell in hours.items():  # float sums differ only by the order of addition
        assert cell.tokens_per_s_sum == pytest.approx(want[key].tokens_per_s_sum)
        assert (dataclasses.replace(cell, tokens_per_s_sum=0)
                == dataclasses.replace(want[key], tokens_per_s_sum=0))
    assert all(k.resolution_s == 3600 and k.start_s % 3600 == 0 for k in hours)


# A document written before the cell fields had words, and before the label counts
# (`fr`, `of`) existed: the stored names are unchanged, and the missing fields decode empty.
STORED = ('[["generate","m","s",1767355200,60,{"n":2,"e":1,"c":1,"pt":7,"ct":5,"tn":1,'
          '"ts":12.5,"hl":{"0":1,"8":1},"ht":{"z":1},"hc":{"8":1}}]]')
STORED_LABELS = STORED[:-3] + ',"fr":{"length":1,"stop":1},"of":{"text":2}}]]'
STORED_NOW = STORED_LABELS[:-3] + ',"ki":{"0123456789ab":1,"none":1}}]]'


def test_the_stored_format_keeps_its_short_names():
    cells = rollup.decode(STORED)
    key = rollup.CellKey("generate", "m", "s", 1767355200, 60)
    assert list(cells) == [key]
    old = rollup.Cell(count=2, errors=1, cold_starts=1, prompt_tokens=7, completion_tokens=5,
                      tokens_per_s_count=1, tokens_per_s_sum=12.5,
                      latency_hist={"0": 1, "8": 1}, ttft_hist={"z": 1},
                      cold_start_latency_hist={"8": 1})
    assert cells[key] == old and old.finish_reasons == old.output_formats == {}
    assert rollup.encode(cells) == STORED[:-3] + ',"fr":{},"of":{},"ki":{}}]]'
    labels = dataclasses.replace(old, finish_reasons={"length": 1, "stop": 1},
                                 output_formats={"text": 2})
    assert rollup.decode(STORED_LABELS) == {key: labels}  # stored before key_ids: {}
    now = dataclasses.replace(labels, key_ids={"0123456789ab": 1, "none": 1})
    assert rollup.decode(STORED_NOW) == {key: now} and rollup.encode({key: now}) == STORED_NOW
    # an old cell merges with a new one: the label counts are the new one's
    merged = rollup.merge(rollup.decode(STORED), rollup.decode(STORED_NOW))[key]
    assert merged.count == 4 and merged.finish_reasons == {"length": 1, "stop": 1}
    assert rollup.STORED_NAMES["finish_reasons"] == "fr"
    assert rollup.STORED_NAMES["output_formats"] == "of"
    assert rollup.STORED_NAMES["key_ids"] == "ki"
    assert json.loads(rollup.encode(rollup.build([_doc(0, random.Random(1))])))[0][5].keys() \
        == set(rollup.STORED_NAMES.values())
    assert len(set(rollup.STORED_NAMES.values())) == len(rollup.STORED_NAMES)


def test_cells_of_an_api_store_it_after_their_values():
    """A cell with an api writes it last in its row and reads it back; a row without one
    (stored before cells had an API) reads as api ""; the api of an event from before the
    field is its endpoint's, and an odd one is a bounded label."""
    key = rollup.CellKey("generate", "m", "s", 1767355200, 60, "responses")
    cells = rollup.decode(STORED_NOW)
    old = cells[key._replace(api="")]
    text = rollup.encode({key: old})
    assert json.loads(text)[0][6] == "responses" and rollup.decode(text) == {key: old}
    both = rollup.merge(rollup.decode(STORED_NOW), rollup.decode(text))
    assert sorted(k.api for k in both) == ["", "responses"]
    assert rollup.decode(rollup.encode(both)) == both
    assert [rollup.event_api(d) for d in (
        {"api": "messages", "endpoint": "/v1/chat/completions"},
        {"endpoint": "/v1/chat/completions"}, {"endpoint": "/v1/embeddings"}, {},
        {"endpoint": "/tokenize"}, {"api": "x" * 40}, {"api": 3})] == \
        ["messages", "chat", "embeddings", "", "", "other", "other"]
    assert rollup.cell_key({"time": 7265.5, "function": "f", "model": "m", "service": "s",
                            "endpoint": "/v1/completions"}, 60).api == "completions"


def test_coarsening_a_key():
    key = rollup.CellKey("f", "m", "s", 7260, 60)
    assert key.coarsened(rollup.HOUR_S) == ("f", "m", "s", 7200, 3600, "")
    assert rollup.cell_key({"time": 7265.5, "function": "f", "model": "m", "service": "s"},
                           60) == key


def test_bucket_edges():
    assert rollup.bucket_index(0) == rollup.bucket_index(-1) == rollup.ZERO
    assert rollup.bucket_index(1e-30) == rollup.ZERO
    assert rollup.bucket_index(1.0) == "0" and rollup.bucket_index(rollup.GAMMA) == "1"
    assert rollup.bucket_index(1e30) == "200"
    assert rollup.hist_percentile({}, 0.5) is None
    assert rollup.hist_percentile({"z": 3, "0": 1}, 0.5) == 0.0


def test_batch_ids_sort_by_time():
    a = rollup.new_batch_id(T0)
    b = rollup.new_batch_id(T0 + dt.timedelta(milliseconds=1))
    assert a < b and rollup.batch_time_s(a) == T0.timestamp()


def _one_cell(docs):
    """One cell counting every document (whatever its key)."""
    cell = rollup.Cell()
    for d in docs:
        cell.add_event(d)
    return cell


def test_label_counts_add_and_merge():
    docs = [_doc(i, random.Random(i), finish_reason=r, output_format=f) for i, (r, f) in
            enumerate([("stop", "text"), ("length", "json_object"), ("tool_calls", "tool_call"),
                       (None, "text"), ("stop", "json_schema")])]
    cell = _one_cell(docs)
    assert cell.finish_reasons == {"stop": 2, "length": 1, "tool_calls": 1, "none": 1}
    assert cell.output_formats == {"text": 2, "json_object": 1, "tool_call": 1,
                                   "json_schema": 1}
    two = _one_cell(docs[:2])
    assert two.finish_reasons == {"stop": 1, "length": 1}
    cell.merge(two)
    assert cell.finish_reasons == {"stop": 3, "length": 2, "tool_calls": 1, "none": 1}
    assert cell.output_formats["json_object"] == 2 and cell.count == 7
    assert sum(cell.finish_reasons.values()) == sum(cell.output_formats.values()) == 7


def test_labels_are_bounded():
    assert rollup.label("stop") == "stop" and rollup.label(None) == rollup.NONE
    for odd in ("", "x" * (rollup.MAX_LABEL_CHARS + 1), 3, True, ["stop"]):
        assert rollup.label(odd) == rollup.OTHER
    assert rollup.label("x" * rollup.MAX_LABEL_CHARS) == "x" * rollup.MAX_LABEL_CHARS
    rng = random.Random(3)
    docs = [_doc(i, rng, finish_reason=f"r{i % 40}") for i in range(400)]
    cell = _one_cell(docs)
    named = [f"r{i}" for i in range(rollup.MAX_LABELS - 1)]  # the first names seen stay
    assert list(cell.finish_reasons) == named + [rollup.OTHER]
    assert all(cell.finish_reasons[n] == 10 for n in named)
    assert cell.finish_reasons[rollup.OTHER] == 400 - 10 * len(named)
    # merging two cells whose names together pass the cap folds the rest, counts kept
    a = _one_cell(docs[:10])  # r0..r9
    b = _one_cell(docs[20:40])  # r20..r39: 15 names and other
    assert len(b.finish_reasons) == rollup.MAX_LABELS
    a.merge(b)
    assert len(a.finish_reasons) == rollup.MAX_LABELS and rollup.OTHER in a.finish_reasons
    assert sum(a.finish_reasons.values()) == a.count == 30
    assert list(a.finish_reasons)[:10] == [f"r{i}" for i in range(10)]
    # an event's own "other" joins the folded ones; it takes no name's place
    c = _one_cell([_doc(0, rng, finish_reason="other")] + docs[:15])
    assert len(c.finish_reasons) == rollup.MAX_LABELS
    assert c.finish_reasons[rollup.OTHER] == 1


def test_key_ids_count_who_called():
    """`key_id` (a hash prefix of the bearer key) is counted like the other labels: null or
    absent (no auth, request events, older producers) as "none"."""
    rng = random.Random(3)
    docs = [_doc(i, rng, key_id=k) for i, k in
            enumerate(["0123456789ab", "0123456789ab", "fedcba987654", None])]
    docs.append(_doc(9, rng))  # no key_id field at all
    cell = rollup.Cell()
    for d in docs:
        cell.add_event(d)
    assert cell.key_ids == {"0123456789ab": 2, "fedcba987654": 1, "none": 2}
    assert rollup.summary([cell])["key_ids"] == {"0123456789ab": 2, "fedcba987654": 1,
                                                  "none": 2}

import dataclasses
import datetime as dt
import json
import math
import random

import pytest

from audit_function import rollup

UTC = dt.timezone.utc
T0 = dt.datetime(2026, 1, 2, 12, 0, tzinfo=UTC)


def _doc(i, rng, **kw):
    d = {"time": T0 + dt.timedelta(seconds=i * 7), "function": rng.choice(["generate", "embed"]),
         "model": "m", "service": "s", "error": int(rng.random() < 0.1),
         "duration_s": rng.lognormvariate(0, 1.5), "ttft_s": rng.uniform(0.001, 2),
         "tokens_per_s": rng.uniform(5, 90), "completion_tokens": rng.randint(0, 300),
         "prompt_tokens": rng.randint(1, 900), "cold_start": rng.random() < 0.05}
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


# A document written before the cell fields had words: the stored format is unchanged.
STORED = ('[["generate","m","s",1767355200,60,{"n":2,"e":1,"c":1,"pt":7,"ct":5,"tn":1,'
          '"ts":12.5,"hl":{"0":1,"8":1},"ht":{"z":1},"hc":{"8":1}}]]')


def test_the_stored_format_keeps_its_short_names():
    cells = rollup.decode(STORED)
    key = rollup.CellKey("generate", "m", "s", 1767355200, 60)
    assert list(cells) == [key]
    assert cells[key] == rollup.Cell(count=2, errors=1, cold_starts=1, prompt_tokens=7,
                                     completion_tokens=5, tokens_per_s_count=1,
                                     tokens_per_s_sum=12.5, latency_hist={"0": 1, "8": 1},
                                     ttft_hist={"z": 1}, cold_start_latency_hist={"8": 1})
    assert rollup.encode(cells) == STORED
    assert json.loads(rollup.encode(rollup.build([_doc(0, random.Random(1))])))[0][5].keys() \
        == set(rollup.STORED_NAMES.values())
    assert len(set(rollup.STORED_NAMES.values())) == len(rollup.STORED_NAMES)


def test_coarsening_a_key():
    key = rollup.CellKey("f", "m", "s", 7260, 60)
    assert key.coarsened(rollup.HOUR_S) == ("f", "m", "s", 7200, 3600)
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

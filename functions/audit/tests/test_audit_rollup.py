import datetime as dt
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
        assert cell["ts"] == pytest.approx(want[key]["ts"])
        assert {**cell, "ts": 0} == {**want[key], "ts": 0}
    assert all(k[4] == 3600 and k[3] % 3600 == 0 for k in hours)


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

"""KPI rollups on a real FerretDB: compaction keeps every count, crashes count nothing twice.

The clock is injected (a rollup's fate depends on its age); the database and the
metrics are the real ones. Failures are
injected by a store subclass that fails one chosen call, as a dying process would.
"""
from __future__ import annotations

import datetime as dt
import random
from collections import Counter
from concurrent.futures import Future

import pymongo
import pytest

from tests.support.audit import load_audit, unique_db

UTC = dt.UTC
T0 = dt.datetime(2026, 3, 4, 10, 15, 30, tzinfo=UTC)


class Clock:
    def __init__(self, t: dt.datetime):
        self.t = t

    def __call__(self) -> dt.datetime:
        return self.t

    def advance(self, **kw) -> None:
        self.t += dt.timedelta(**kw)


def recovered(metrics) -> float:
    return metrics.registry.get_sample_value("audit_rollup_recovered_total")


@pytest.fixture()
def env(ferretdb):
    audit = load_audit()
    settings = audit.settings.AuditSettings.from_mapping({
        "MONGODB_URI": ferretdb.uri, "MONGODB_DATABASE": unique_db(), "MONGODB_TIMEOUT_MS": "1000",
        "KPI_LEASE_S": "4", "KPI_COMPACT_INTERVAL_S": "1"})
    clock = Clock(T0)
    store = FlakyStore(settings)
    metrics = audit.service.AuditMetrics()
    committer = audit.commit.Committer(store, settings, metrics, clock=clock)
    rollups = audit.compaction.Rollups(store, settings, clock=clock)
    yield audit, store, committer, rollups, clock, metrics
    client = pymongo.MongoClient(ferretdb.uri)
    client.drop_database(settings.database)
    store.close()


def _store_class():
    return load_audit().store.AuditStore


class FlakyStore(_store_class()):
    """The real store, with the next call of one method made to fail once."""
    fail_next: str | None = None

    def delete_ids(self, collection, ids):
        if self.fail_next == "delete_ids" and ids:
            self.fail_next = None
            raise load_audit().store.StoreUnavailable("injected: process died")
        return super().delete_ids(collection, ids)


def docs(n: int, start: dt.datetime, seed: int = 1) -> list[dict]:
    rng = random.Random(seed)
    out = []
    for i in range(n):
        out.append({"_id": f"/src\x1f{seed}-{i}", "time": start + dt.timedelta(seconds=i * 13),
                    "function": rng.choice(["generate", "embed"]), "model": "m",
                    "service": "svc", "error": int(rng.random() < 0.2),
                    "duration_s": rng.uniform(0.01, 9), "ttft_s": rng.uniform(0.01, 1),
                    "tokens_per_s": 20.0, "prompt_tokens": rng.randint(1, 50),
                    "completion_tokens": rng.randint(0, 50), "cold_start": rng.random() < 0.1,
                    "finish_reason": rng.choice(["stop", "length", "tool_calls", None]),
                    "output_format": rng.choice(["text", "json_object", "tool_call", None])})
        if out[-1]["output_format"] is None:
            del out[-1]["output_format"]  # stored by an older producer
        # an api; or only an endpoint, from a producer before the field; or neither
        out[-1].update(({"api": "chat"}, {"api": "responses"},
                        {"endpoint": "/v1/completions"}, {})[i % 4])
    return out


def commit(committer, batch: list[dict]) -> list[str]:
    futures = [Future() for _ in batch]
    committer.commit([(dict(d), f) for d, f in zip(batch, futures)])
    return [f.result(0) for f in futures]


def numbers(audit, cells) -> dict:
    """The /kpis total of ``cells`` that compaction must keep."""
    s = audit.rollup.summary(cells.values())
    by_api: Counter = Counter()
    for key, cell in cells.items():
        by_api[key.api] += cell.count
    return {k: s[k] for k in ("count", "errors", "completion_tokens", "prompt_tokens",
                              "finish_reasons", "output_formats")} | {
        "cold": s["cold_starts"]["count"], "p95": s["latency_s"]["p95"], "by_api": by_api}


def totals(audit, rollups) -> dict:
    return numbers(audit, rollups.cells())


def expected(audit, batch: list[dict]) -> dict:
    return numbers(audit, audit.rollup.build(batch))


def die_before_part(audit, store, clock, batch: list[dict]) -> str:
    """Step 1 of a commit only, as a process that died before writing its part."""
    batch_id = audit.rollup.new_batch_id(clock())
    new, _ = store.insert_events([{**d, audit.store.BATCH_FIELD: batch_id} for d in batch])
    assert len(new) == len(batch)
    return batch_id


def count(store, name: str) -> int:
    return store.kpi(name).count_documents({})


def test_compaction_through_minutes_hours_days_keeps_every_count(env):
    audit, store, committer, rollups, clock, _ = env
    all_docs = docs(300, T0 - dt.timedelta(hours=1))  # event times span 65 minutes
    for i in range(0, 300, 25):  # 12 commits, 10 s apart
        assert commit(committer, all_docs[i:i + 25]) == ["recorded"] * 25
        clock.advance(seconds=10)
    want = expected(audit, all_docs)
    assert totals(audit, rollups) == want and count(store, "parts") == 12

    clock.advance(minutes=2)
    assert rollups.compact()["m"] == 3  # commits fell in three wall-clock minutes
    assert count(store, "parts") == 0 and totals(audit, rollups) == want
    clock.advance(hours=2)
    assert rollups.compact()["h"] == 1
    assert count(store, "rollups") == 1 and totals(audit, rollups) == want
    clock.advance(days=2)
    assert rollups.compact()["d"] == 1
    assert count(store, "rollups") == 1 and totals(audit, rollups) == want
    # redeliveries are still recognised through the ledger
    assert commit(committer, all_docs[:5]) == ["duplicate"] * 5


def test_a_commit_that_died_between_its_writes_is_recovered_once(env):
    audit, store, committer, rollups, clock, metrics = env
    batch = docs(20, T0, seed=2)
    die_before_part(audit, store, clock, batch)
    assert totals(audit, rollups)["count"] == 0

    clock.advance(seconds=1)  # within the lease the original might still write its part
    assert commit(committer, batch[:3]) == ["unavailable"] * 3
    clock.advance(seconds=5)
    assert commit(committer, batch[:3]) == ["duplicate"] * 3
    assert recovered(metrics) == 1
    assert commit(committer, batch) == ["duplicate"] * 20  # the part exists now
    assert recovered(metrics) == 1
    assert totals(audit, rollups) == expected(audit, batch)
    assert store.events.count_documents({}) == 20


def test_a_compaction_that_died_between_its_writes_counts_once(env):
    audit, store, committer, rollups, clock, _ = env
    batch = docs(40, T0, seed=3)
    commit(committer, batch[:20])
    clock.advance(minutes=2)
    store.fail_next = "delete_ids"  # minute rollup written, its parts not yet deleted
    with pytest.raises(audit.store.StoreUnavailable):
        rollups.compact()
    assert count(store, "parts") == 1 and count(store, "rollups") == 1
    assert totals(audit, rollups) == expected(audit, batch[:20])
    store.kpi("locks").delete_many({})  # the dead pod's lock expired
    rollups.compact()
    assert count(store, "parts") == 0 and totals(audit, rollups) == expected(audit, batch[:20])

    # hour level: the parent is written, its children linger
    commit(committer, batch[20:])
    clock.advance(minutes=2)
    rollups.compact()
    assert count(store, "parts") == 0 and count(store, "rollups") == 2
    clock.advance(hours=2)
    store.fail_next = "delete_ids"
    with pytest.raises(audit.store.StoreUnavailable):
        rollups.compact()  # the hour step dies after writing the hour
    assert count(store, "rollups") == 3
    assert totals(audit, rollups) == expected(audit, batch)
    store.kpi("locks").delete_many({})
    rollups.compact()
    assert count(store, "rollups") == 1 and totals(audit, rollups) == expected(audit, batch)


def test_a_late_recovery_after_compaction_is_a_new_generation(env):
    audit, store, committer, rollups, clock, metrics = env
    early, lost = docs(10, T0, seed=4), docs(10, T0, seed=5)
    commit(committer, early)
    lost_id = die_before_part(audit, store, clock, lost)
    clock.advance(minutes=2)
    rollups.compact()  # the minute is compacted without the lost commit
    assert totals(audit, rollups) == expected(audit, early)
    assert commit(committer, lost[:1]) == ["duplicate"]  # recovered as a late part
    assert recovered(metrics) == 1
    assert totals(audit, rollups) == expected(audit, early + lost)
    clock.advance(minutes=2)
    rollups.compact()
    generations = audit.ledger.generations(store.kpi("ledger").find_one({}))
    assert len(generations) == 2 and lost_id in generations[1]
    assert totals(audit, rollups) == expected(audit, early + lost)
    assert commit(committer, lost) == ["duplicate"] * 10 and recovered(metrics) == 1


def test_rebuild_counts_every_stored_event_once(env):
    audit, store, committer, rollups, clock, metrics = env
    committed, lost = docs(15, T0, seed=6), docs(5, T0, seed=7)
    commit(committer, committed)
    die_before_part(audit, store, clock, lost)
    loaded = docs(30, T0 - dt.timedelta(days=3), seed=8)
    store.insert_events(loaded)  # bulk-loaded, never committed
    clock.advance(minutes=1)
    assert rollups.rebuild() == 50
    want = expected(audit, committed + lost + loaded)
    assert totals(audit, rollups) == want
    # the label counts, straight from the inputs (null reason "none", no format "text")
    every = committed + lost + loaded
    assert want["finish_reasons"] == Counter(d["finish_reason"] or "none" for d in every)
    assert want["output_formats"] == Counter(d.get("output_format", "text") for d in every)
    assert want["by_api"] == Counter(
        d.get("api", {"/v1/completions": "completions"}.get(d.get("endpoint"), ""))
        for d in every)
    assert set(want["by_api"]) == {"chat", "responses", "completions", ""}
    # a redelivery of the lost commit's events is counted already: no recovery
    clock.advance(minutes=5)
    assert commit(committer, lost + loaded[:3]) == ["duplicate"] * 8
    assert recovered(metrics) == 0 and totals(audit, rollups) == want
    clock.advance(days=5)
    rollups.compact()
    assert totals(audit, rollups) == want

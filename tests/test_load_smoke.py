"""The load suite's smoke run: the `smoke` profile (3 users, 20 s) of load/ with locust,
against a stack of its own wired as `make run` wires it (tests/test_stack_e2e.py's way).

audit on the real FerretDB, generate (SmolLM2-135M) and embed (MiniLM) under gunicorn with
their weights from the real MinIO and K_SINK at audit. The locust users (load/locustfile.py)
send SSE chat streams, completions, embeddings and CloudEvents; a 429/503 with Retry-After is
retried as the header asks. Asserted: every request type was exercised and succeeded, and no
request failed unexpectedly. The full profiles are `make load` (docs/load.md), not tests.
"""
from __future__ import annotations

import pytest

from load import run_load
from scripts import (
    procs,
    run,  # scripts/run.py: the models, S3 keys and function environments of `make run`
)
from tests.support.audit import unique_db
from tests.support.models import upload_function_models

READY_S = 180


@pytest.fixture(scope="module")
def stack_urls(minio, ferretdb, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("load-stack")
    upload_function_models(minio)
    servers: dict[str, procs.ServerProcess] = {}
    try:
        servers["audit"] = procs.gunicorn_server(
            "audit", procs.free_port(), log_path=tmp / "audit.log",
            env={"MONGODB_URI": ferretdb.uri, "MONGODB_DATABASE": unique_db()}).start()
        servers["audit"].wait_ready(60)
        for name in ("generate", "embed"):
            env = run.function_env(name, run.FUNCTIONS[name][2], minio, ferretdb, True,
                                   f"{servers['audit'].url}/")
            env.update(MODEL_CACHE_DIR=str(tmp / "cache"), N_THREADS="2")
            servers[name] = procs.gunicorn_server(name, procs.free_port(), env=env,
                                                  log_path=tmp / f"{name}.log").start()
        for server in servers.values():
            server.wait_ready(READY_S)
        yield {name: s.url for name, s in servers.items()}
    finally:
        codes = {name: servers[name].stop() for name in ("generate", "embed", "audit")
                 if name in servers}
    assert set(codes.values()) == {0}, codes


def test_smoke_profile_has_no_unexpected_failures(stack_urls, tmp_path):
    run_load.warm_up(stack_urls, n=1)
    out = run_load.run_locust("smoke", stack_urls, tmp_path / "smoke", max_tokens=16)
    summary = run_load.summarize(out)
    rows = {r["name"]: r for r in summary["rows"]}
    # completions are 1 in 4 generate tasks: likely, not certain, in 20 s
    assert set(rows) >= {"audit: event", "embed: embeddings", "generate: chat stream"}, rows
    assert summary["unexpected_failures"] == 0, summary["errors"]
    for name, row in rows.items():
        assert row["succeeded"] >= 1 and row["failed"] == 0, (name, row)
    stream = rows["generate: chat stream"]
    assert stream["ttft_avg_ms"] is not None and stream["tps_p50"] is not None

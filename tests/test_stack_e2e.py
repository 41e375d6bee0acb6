"""The whole stack end to end, wired as `make run` wires it (scripts/run.py).

audit (gunicorn, its own database on the real FerretDB), then generate (SmolLM2-135M) and embed
(all-MiniLM-L6-v2) under gunicorn with their weights from the real MinIO and ``K_SINK`` at
audit. A chat completion and an embedding request -> two CloudEvents -> two documents in
FerretDB -> /kpis shows them with the token counts the responses returned and one cold start
per freshly started function; a second chat request counts, but not as a cold start.
"""
from __future__ import annotations

import time
from dataclasses import dataclass

import pymongo
import pytest
import requests

from scripts import (
    procs,
    run,  # scripts/run.py: the models, S3 keys and function environments of `make run`
)
from scripts.procs import ServerProcess
from tests.support.audit import count, unique_db
from tests.support.calls import ANSWER, chat, embed
from tests.support.models import upload_function_models

GENERATE_MODEL = "smollm2-135m-instruct-q4_1"
EMBED_MODEL = "all-minilm-l6-v2-f16"
READY_S = 180  # model download + load
EVENTS_S = 30  # events are sent asynchronously; they reach audit well within this


@dataclass
class Stack:
    audit: ServerProcess
    generate: ServerProcess
    embed: ServerProcess
    mongodb_uri: str
    database: str

    def kpis(self) -> dict:
        r = requests.get(f"{self.audit.url}/kpis", timeout=30)
        assert r.status_code == 200, r.text
        return r.json()

    def documents(self) -> list[dict]:
        with pymongo.MongoClient(self.mongodb_uri, serverSelectionTimeoutMS=5000) as client:
            return list(client[self.database].inference_events.find({}))

    def wait_recorded(self, n: int) -> dict:
        """The /kpis answer once it counts ``n`` events (bounded poll)."""
        end = time.monotonic() + EVENTS_S
        while True:
            kpis = self.kpis()
            if kpis["total"]["count"] >= n or time.monotonic() > end:
                assert kpis["total"]["count"] == n, (kpis, self.audit.log_tail())
                assert count(self.mongodb_uri, self.database) == n
                return kpis
            time.sleep(0.1)


def by_function(kpis: dict) -> dict[str, dict]:
    """The /kpis groups by function (one model each here)."""
    groups = {g["function"]: g for g in kpis["groups"]}
    assert len(groups) == len(kpis["groups"]), kpis["groups"]
    return groups


def start(name: str, env: dict[str, str], tmp) -> ServerProcess:
    return procs.gunicorn_server(name, procs.free_port(), env=env,
                                 log_path=tmp / f"{name}.log").start()


@pytest.fixture(scope="module")
def stack(minio, ferretdb, tmp_path_factory):
    tmp = tmp_path_factory.mktemp("stack")
    upload_function_models(minio)
    database = unique_db()
    servers: dict[str, ServerProcess] = {}
    try:
        # audit first, so the sink is up before the first inference event
        servers["audit"] = start("audit", {"MONGODB_URI": ferretdb.uri,
                                           "MONGODB_DATABASE": database}, tmp)
        servers["audit"].wait_ready(60)
        for name in ("generate", "embed"):
            env = run.function_env(name, run.FUNCTIONS[name][2], minio, ferretdb, True,
                                   f"{servers['audit'].url}/")
            env.update(MODEL_CACHE_DIR=str(tmp / "cache"), N_THREADS="2")
            servers[name] = start(name, env, tmp)
        for server in servers.values():
            server.wait_ready(READY_S)
        yield Stack(servers["audit"], servers["generate"], servers["embed"], ferretdb.uri,
                    database)
    finally:
        # inference functions first (they flush their events to audit), then audit
        codes = {name: servers[name].stop() for name in ("generate", "embed", "audit")
                 if name in servers}
    assert codes == {"generate": 0, "embed": 0, "audit": 0}  # each stopped cleanly


def test_requests_become_documents_and_kpis(stack):
    answer = chat(stack.generate.url, max_tokens=8)
    assert answer.status_code == 200, answer.text
    usage = answer.json()["usage"]
    # a clear-margin answer (scripts/kernel_noise.py): the same on every CPU
    assert answer.json()["choices"][0]["message"]["content"].startswith(ANSWER.expected)
    vectors = embed(stack.embed.url, input=["The capital of France is Paris."])
    assert vectors.status_code == 200, vectors.text
    embed_tokens = vectors.json()["usage"]["prompt_tokens"]
    assert usage["prompt_tokens"] > 0 and 0 < usage["completion_tokens"] <= 8
    assert embed_tokens > 0

    kpis = stack.wait_recorded(2)
    docs = {d["function"]: d for d in stack.documents()}
    assert sorted(docs) == ["embed", "generate"]
    gen, emb = docs["generate"], docs["embed"]
    assert gen["request_id"] == answer.headers["X-Request-Id"]
    assert emb["request_id"] == vectors.headers["X-Request-Id"]
    assert (gen["model"], emb["model"]) == (GENERATE_MODEL, EMBED_MODEL)
    assert (gen["status"], emb["status"]) == (200, 200)
    assert (gen["prompt_tokens"], gen["completion_tokens"]) == (usage["prompt_tokens"],
                                                                 usage["completion_tokens"])
    assert (emb["prompt_tokens"], emb["completion_tokens"]) == (embed_tokens, 0)
    # host.take_cold_start: the first request a process serves is its cold start
    assert gen["cold_start"] is True and emb["cold_start"] is True

    groups = by_function(kpis)
    assert sorted(groups) == ["embed", "generate"]
    assert (groups["generate"]["model"], groups["embed"]["model"]) == (GENERATE_MODEL,
                                                                        EMBED_MODEL)
    g, e = groups["generate"], groups["embed"]
    assert (g["count"], e["count"]) == (1, 1)
    assert (g["prompt_tokens"], g["completion_tokens"]) == (usage["prompt_tokens"],
                                                             usage["completion_tokens"])
    assert (e["prompt_tokens"], e["completion_tokens"]) == (embed_tokens, 0)
    assert (g["cold_starts"]["count"], e["cold_starts"]["count"]) == (1, 1)
    assert (g["errors"], e["errors"]) == (0, 0)

    # a second chat request is counted, and it is not a cold start
    again = chat(stack.generate.url, max_tokens=8)
    assert again.status_code == 200, again.text
    usage2 = again.json()["usage"]
    g = by_function(stack.wait_recorded(3))["generate"]
    assert g["count"] == 2 and g["cold_starts"]["count"] == 1
    assert g["prompt_tokens"] == usage["prompt_tokens"] + usage2["prompt_tokens"]
    assert g["completion_tokens"] == usage["completion_tokens"] + usage2["completion_tokens"]
    second = [d for d in stack.documents() if d["request_id"] == again.headers["X-Request-Id"]]
    assert len(second) == 1 and second[0]["cold_start"] is False

"""The three functions as users run them with the real Knative Functions CLI (.state/bin/func from
../shared/knative, `make knative`): `func run --builder=host` against MinIO and FerretDB with the
local values given by -e, as `make func-run-<f>` does (scripts/func_run.py); pip in func's fresh
venv runs offline from the wheelhouse (built once per session, nothing compiled). `func invoke`
gets a real answer, and the function stops cleanly at Ctrl-C.

And the case the issue found: audit started with func.yaml's own
`{{ secret:llmfn-mongodb:MONGODB_URI }}`, which a host run passes as text. It is a clear start-up
error naming MONGODB_URI, never a 500 from a route (tests/test_startup_errors.py has the other
unusable settings, under gunicorn).
"""
from __future__ import annotations

import datetime as dt
import json
import re
import time
import uuid
from pathlib import Path

import pymongo
import pytest
import requests

from scripts import func_run, procs, run
from tests.support.route_walk import assert_every_route_answers

ROOT = procs.REPO_ROOT
FIXTURE = ROOT / "tests" / "fixtures" / "cloudevent_inference_completed_v1.json"
CHAT_REQUESTED = "dev.llmfn.chat.completion.requested.v1"
INFERENCE_COMPLETED = "dev.llmfn.inference.completed.v1"
LISTEN_S = 120.0
GROUP_EXIT_S = 30.0


@pytest.fixture(scope="session")
def wheelhouse() -> Path:
    """.state/wheelhouse, built once (stamped on the functions' constraints files)."""
    return func_run.ensure_wheelhouse()


def values(name: str, minio, tmp: Path, ferretdb=None, **extra: str) -> dict[str, str]:
    """The -e values of `make func-run-<name>` (scripts/func_run.py), one llama.cpp thread."""
    return {**func_run.local_values(name, minio, ferretdb, tmp / "cache"), "N_THREADS": "1",
            **extra}


class Runs:
    """The `func run --builder=host` processes of this module, each started once: func makes a
    fresh venv and pip-installs the function first, and started together these installs
    overlap instead of adding up. Two runs of one folder never overlap (func writes its
    scaffolding and pip builds the project in that folder): audit starts once the "template"
    run (audit without MONGODB_URI, so func.yaml's secret template stays) was stopped."""

    def __init__(self, plan: dict[str, tuple[str, dict[str, str]]], tmp: Path, wheelhouse: Path):
        self.plan, self.tmp, self.wheelhouse = plan, tmp, wheelhouse
        self.started: dict[str, tuple[procs.ServerProcess, int]] = {}

    def start(self, key: str) -> procs.ServerProcess:
        if key not in self.started:
            name, vals = self.plan[key]
            port = procs.free_port()
            server = func_run.func_server(name, port, vals, log_path=self.tmp / f"{key}.log",
                                          wheelhouse=self.wheelhouse)
            server.values = vals
            self.started[key] = (server.start(), port)
        return self.started[key][0]

    __getitem__ = start

    def stop_all(self) -> None:
        for key, (server, port) in self.started.items():
            func_run.interrupt(server)
            func_run.tidy(self.plan[key][0], port)  # func's run folder (its venv), pip's build


@pytest.fixture(scope="module")
def runs(minio, ferretdb, wheelhouse, tmp_path_factory):
    """generate, embed and the template case started at once; audit later (:class:`Runs`).
    The local values are `make func-run-<f>`'s, the models uploaded as `make run` does."""
    run.upload_models(minio.client(), run.local_models())
    tmp = tmp_path_factory.mktemp("func-run")
    template = values("audit", minio, tmp / "template", ferretdb)
    del template["MONGODB_URI"]
    runs = Runs({"generate": ("generate", values("generate", minio, tmp)),
                 "embed": ("embed", values("embed", minio, tmp)),
                 "template": ("audit", template),
                 "audit": ("audit", values("audit", minio, tmp, ferretdb,
                                           MONGODB_DATABASE=f"funccli_{uuid.uuid4().hex[:8]}"))},
                tmp, wheelhouse)
    try:
        for key in ("template", "generate", "embed"):
            runs.start(key)
        yield runs
    finally:
        runs.stop_all()


def assert_stops_cleanly(server: procs.ServerProcess) -> None:
    """Ctrl-C (SIGINT to the terminal's process group): func exits with 0, and the function,
    which got the signal too and drains (it may still be at it when func is gone), exits
    within GROUP_EXIT_S; the port is closed."""
    code = func_run.interrupt(server)
    assert code == 0, server.log_tail()
    deadline = time.monotonic() + GROUP_EXIT_S
    while group_alive(server.proc.pid) and time.monotonic() < deadline:
        time.sleep(0.1)
    left = group_alive(server.proc.pid)
    assert not left, f"{left} outlived func by {GROUP_EXIT_S} s:\n{server.log_tail()}"
    assert procs.http_status(server.host, server.port, "/health/readiness")[0] is None


def group_alive(pgid: int) -> list[str]:
    """The processes of group ``pgid`` still running (zombies, already exited, left out)."""
    alive = []
    for stat in Path("/proc").glob("[0-9]*/stat"):
        try:
            text = stat.read_text()
        except OSError:
            continue
        fields = text[text.rindex(")") + 2:].split()
        if fields[0] != "Z" and int(fields[2]) == pgid:
            alive.append(text[:text.rindex(")") + 1])
    return alive


def assert_installed_offline(server: procs.ServerProcess, *wheels: str) -> None:
    """func's pip took everything from the wheelhouse (``wheels`` by name), downloaded nothing
    and built only func's scaffold and the function itself (pure Python)."""
    log = server.log_tail(1 << 20)
    assert f"Looking in links: {func_run.WHEELHOUSE}" in log, log[:2000]
    assert "Downloading" not in log
    assert set(re.findall(r"Building wheel for (\S+) ", log)) == {"service", "function"}
    for wheel in wheels:
        assert f"Processing {func_run.WHEELHOUSE}/{wheel}-" in log, wheel


def invoke(name: str, target: str, *args: str) -> str:
    out = func_run.invoke(name, target, *args)
    assert out.returncode == 0, f"func invoke exited {out.returncode}:\n{out.stdout}\n{out.stderr}"
    return out.stdout


def json_in(text: str) -> dict:
    """The JSON object func invoke printed (its first '{' to its last '}')."""
    return json.loads(text[text.index("{"):text.rindex("}") + 1])


def test_unresolved_secret_template_is_a_clear_startup_error(runs):
    """audit with func.yaml's MONGODB_URI as it is, `{{ secret:llmfn-mongodb:MONGODB_URI }}`:
    the process stays up and says why, naming MONGODB_URI; no route answers 500 because of
    it. (Readiness and liveness are func-python's own handlers, which answer any not-ready
    with 500 and our reason as the body: not ours to change.) First in this module: func
    gives up 60 s after the process started when readiness never turns 200."""
    fn = runs["template"]
    assert "MONGODB_URI" not in fn.values
    fn.wait_listening(LISTEN_S)
    for probe in ("readiness", "liveness"):
        status, text = procs.http_status(fn.host, fn.port, f"/health/{probe}")
        assert status != 200 and "MONGODB_URI" in text and "{{ secret:" in text, text
    assert_every_route_answers(fn.url, "audit", "MONGODB_URI",
                               skip=("/health/readiness", "/health/liveness"))
    kpis = requests.get(fn.url + "/kpis", timeout=30)
    assert kpis.status_code == 503 and "MONGODB_URI" in kpis.json()["error"]["message"]
    assert "MONGODB_URI" in fn.log_tail(20000)
    func_run.interrupt(fn)
    runs.start("audit")  # its pip install overlaps the tests below


def test_generate(runs):
    fn = runs["generate"]
    fn.wait_ready()
    assert_installed_offline(fn, "llama_cpp_python")
    body = json_in(invoke("generate", fn.url + "/v1/chat/completions", "--format", "http",
                          "--data", json.dumps({"messages": [
                              {"role": "user", "content": "Say hi"}], "max_tokens": 8})))
    assert body["object"] == "chat.completion", body
    assert body["choices"][0]["message"]["content"], body
    assert 1 <= body["usage"]["completion_tokens"] <= 8, body
    event_id = f"func-invoke-{uuid.uuid4().hex}"
    reply = invoke("generate", fn.url + "/", "--format", "cloudevent",
                   "--type", CHAT_REQUESTED, "--source", "/tests/func-invoke",
                   "--id", event_id, "--data", json.dumps({"messages": [
                       {"role": "user", "content": "Say hi"}], "max_tokens": 8}))
    assert "type: dev.llmfn.chat.completion.v1" in reply, reply
    assert f"causationid: {event_id}" in reply, reply
    data = json_in(reply)
    assert data["object"] == "chat.completion" and data["choices"][0]["message"]["content"]
    assert_stops_cleanly(fn)


def test_embed(runs):
    fn = runs["embed"]
    fn.wait_ready()
    assert_installed_offline(fn, "llama_cpp_python")
    body = json_in(invoke("embed", fn.url + "/v1/embeddings", "--format", "http",
                          "--data", json.dumps({"input": "hello world"})))
    vector = body["data"][0]["embedding"]
    assert len(vector) == 384 and abs(sum(x * x for x in vector) - 1.0) < 1e-3, body
    assert_stops_cleanly(fn)


def test_audit(runs, ferretdb):
    fn = runs["audit"]
    database = fn.values["MONGODB_DATABASE"]
    fn.wait_ready()
    assert_installed_offline(fn, "pymongo")
    event = json.loads(FIXTURE.read_text())["data"]
    event["request_id"] = uuid.uuid4().hex
    event["time"] = dt.datetime.now(dt.UTC).isoformat(timespec="milliseconds")
    event_id, source = f"func-invoke-{uuid.uuid4().hex}", "/tests/func-invoke"
    invoke("audit", fn.url + "/", "--format", "cloudevent", "--type", INFERENCE_COMPLETED,
           "--source", source, "--id", event_id, "--data", json.dumps(event))
    with pymongo.MongoClient(ferretdb.uri) as client:
        stored = client[database]["inference_events"].find_one(
            {"request_id": event["request_id"]})
    assert stored is not None and stored["endpoint"] == event["endpoint"], stored
    kpis = json_in(invoke("audit", fn.url + "/kpis", "--format", "http",
                          "--request-type", "GET"))
    assert kpis["total"]["count"] == 1, kpis  # its own database: only this event
    assert [(g["function"], g["count"]) for g in kpis["groups"]] == [("generate", 1)], kpis
    assert_stops_cleanly(fn)

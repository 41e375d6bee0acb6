"""Hostile input, no 5xx: schemathesis fuzzes each running function from its own /openapi.json.

generate (the tiny LLaMA), embed (MiniLM) and audit (the test FerretDB) run under gunicorn as
in `make run`. For every operation of the document, schemathesis generates requests (valid ones
from the schemas and invalid ones that break them: wrong types, missing fields, bad headers,
not-JSON bodies), some with a lone surrogate appended to one of their strings, and
checks each answer: never a 5xx, and its status code, content type and
body are the ones the document gives for that operation.

Bounds: ``MAX_EXAMPLES`` per operation and generation mode (positive, negative), each request
``REQUEST_TIMEOUT_S``, each function's run ``RUN_BOUND_S`` (the test fails past it: a run that
slow would not stay within `make test`'s budget). Every HTML page a document lists must answer
``text/html`` (checked before the run, which then covers the JSON operations and the pages).
"""
from __future__ import annotations

import time
import uuid

import pytest
import requests
import schemathesis
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from hypothesis.errors import Unsatisfiable
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_schema_conformance,
    status_code_conformance,
)

from scripts import procs
from scripts.procs import REPO_ROOT as ROOT

MODELS = ROOT / ".state" / "models"
MAX_EXAMPLES = 25
REQUEST_TIMEOUT_S = 30
LONE_SURROGATES = ("\ud800", "\udfff")
RUN_BOUND_S = 120
CHECKS = [not_a_server_error, status_code_conformance, content_type_conformance,
          response_schema_conformance]
FUZZ = settings(max_examples=MAX_EXAMPLES, deadline=None, database=None, derandomize=True,
                suppress_health_check=list(HealthCheck))


def model(name: str) -> str:
    path = MODELS / name
    assert path.is_file(), f"run `make models` ({path} is missing)"
    return f"file://{path}"


def serve(function: str, env: dict[str, str], tmp_path_factory):
    """A started gunicorn server of ``function``; stopped at teardown."""
    tmp = tmp_path_factory.mktemp(f"fuzz-{function}")
    proc = procs.gunicorn_server(function, procs.free_port(), log_path=tmp / "gunicorn.log",
                                 env={"MODEL_CACHE_DIR": str(tmp / "cache"), "K_SINK": "",
                                      "N_THREADS": "1", **env}).start()
    try:
        proc.wait_ready(180)
        yield proc
    finally:
        proc.stop()


def loaded_schema(server):
    """The document the server serves; each HTML page it lists answers text/html."""
    doc = requests.get(f"{server.url}/openapi.json", timeout=10).json()
    for path, item in doc["paths"].items():
        for method, op in item.items():
            types = {t for r in op["responses"].values() for t in r.get("content", {})}
            if types == {"text/html"}:
                got = requests.request(method, server.url + path, timeout=10)
                assert got.headers.get("Content-Type", "").startswith("text/html"), \
                    (method, path, got.status_code)
    return schemathesis.openapi.from_dict(doc)  # from_url would leave /openapi.json out


@pytest.fixture(scope="module")
def generate_server(tmp_path_factory):
    yield from serve("generate", {"MODEL_URI": model("tiny-llama.gguf"), "N_CTX": "256"},
                     tmp_path_factory)


@pytest.fixture(scope="module")
def embed_server(tmp_path_factory):
    yield from serve("embed", {"MODEL_URI": model("all-minilm-l6-v2-f16.gguf"),
                               "MAX_INPUTS": "16"}, tmp_path_factory)


@pytest.fixture(scope="module")
def audit_server(ferretdb, tmp_path_factory):
    yield from serve("audit", {"MONGODB_URI": ferretdb.uri,
                               "MONGODB_DATABASE": f"fuzz_{uuid.uuid4().hex[:8]}"},
                     tmp_path_factory)


def string_leaves(value, path=()):
    """Paths to the strings of a JSON value."""
    if isinstance(value, str):
        yield path
    elif isinstance(value, dict):
        for k, v in value.items():
            yield from string_leaves(v, (*path, k))
    elif isinstance(value, list):
        for i, v in enumerate(value):
            yield from string_leaves(v, (*path, i))


def poison(case, char: str, which: int) -> None:
    """Append a lone surrogate to one string of a JSON body: valid JSON (``"\\ud800"``), no
    text. schemathesis never generates lone surrogates itself (it excludes category Cs)."""
    if not isinstance(case.body, (dict, list)):
        return
    leaves = list(string_leaves(case.body))
    if not leaves:
        return
    *parents, last = leaves[which % len(leaves)]
    node = case.body
    for key in parents:
        node = node[key]
    node[last] = node[last] + char


def fuzz(server, mode: GenerationMode) -> tuple[list[str], dict[str, int]]:
    """Every operation of the server's document, ``MAX_EXAMPLES`` cases each in ``mode``:
    the failures (one per failing operation, shrunk by Hypothesis), the cases per operation."""
    failures, counts = [], {}
    for result in loaded_schema(server).get_all_operations():
        operation = result.ok()
        counts[operation.label] = 0
        failure = fuzz_operation(server, operation, mode, counts)
        if failure is not None:
            failures.append(failure)
    return failures, counts


def fuzz_operation(server, operation, mode: GenerationMode, counts: dict[str, int]) -> str | None:
    """``MAX_EXAMPLES`` cases of one operation in ``mode``, counted in ``counts``: its failure
    (shrunk by Hypothesis), or None."""
    body = operation.method.upper() == "POST"

    @FUZZ
    @given(case=operation.as_strategy(generation_mode=mode),
           hostile=st.sampled_from([None, *LONE_SURROGATES]) if body else st.none(),
           which=st.integers(0, 63) if body else st.just(0))
    def run(case, hostile, which):
        counts[operation.label] += 1
        if hostile is not None:
            poison(case, hostile, which)
        case.call_and_validate(base_url=server.url, checks=CHECKS, timeout=REQUEST_TIMEOUT_S)

    try:
        run()
    except Unsatisfiable:  # nothing to negate (no parameters, no body)
        pass
    except (Exception, BaseExceptionGroup) as err:  # schemathesis' FailureGroup is the latter
        return f"{operation.label} ({mode.value}):\n{err}"
    return None


def check_function(server, function: str) -> None:
    t0 = time.monotonic()
    failures = []
    for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE):
        found, counts = fuzz(server, mode)
        failures += found
        print(f"{function} {mode.value}: " + ", ".join(f"{k} {n}" for k, n in counts.items()))
    spent = time.monotonic() - t0
    print(f"fuzz {function}: {spent:.1f} s")
    assert not failures, "\n\n".join(failures)
    assert spent < RUN_BOUND_S, f"fuzzing {function} took {spent:.0f} s (bound {RUN_BOUND_S} s)"


def test_generate(generate_server):
    check_function(generate_server, "generate")


def test_embed(embed_server):
    check_function(embed_server, "embed")


def test_audit(audit_server):
    check_function(audit_server, "audit")

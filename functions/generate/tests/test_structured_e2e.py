"""Structured outputs end to end on SmolLM2-135M-Instruct (in process, N_THREADS=2): real
schemas from JSONSchemaBench through /v1/chat/completions and forced tool calls, prompts that
invite out-of-bounds answers at temperature 0.9, and the official openai client's
``chat.completions.parse()`` with a bounded Pydantic field.

Every answer that is 200 with finish_reason ``stop``/``tool_calls`` must validate with
jsonschema (the schema's dialect, its FORMAT_CHECKER): a silent violation fails the test.
"""
from __future__ import annotations

import json
import lzma
import os
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import httpx
import pytest
from jsonschema.validators import validator_for
from openai import OpenAI
from pydantic import BaseModel, Field

from function.func import create_runtime
from scripts.model_files import smollm2_path
from tests.support.runtimes import RuntimeFactory

ROOT = Path(__file__).resolve().parents[3]
BENCH = Path(os.environ.get("STRUCTURED_BENCH",
                            ROOT.parent / "shared" / "jsonschemabench" / "sample.jsonl.xz"))
DATASETS = ("Github_easy", "Github_hard", "Github_medium", "Github_trivial", "Github_ultra",
            "Glaiveai2K", "JsonSchemaStore", "Kubernetes", "Snowplow", "WashingtonPost")
PER_DATASET = 4  # the first 4 schemas of each dataset in the file: 40 in all
TOOL_SCHEMAS = 10  # the first Glaive and BFCL_simple function schemas, 5 each
MAX_TOKENS = 512
SEEDS = (1, 2, 3)
PENALTY = 1.0  # greedy SmolLM2 loops inside strings and arrays; a client's usual remedy
STREAMS = 16  # requests at once, one slot each: a batch of 16 costs far less than 4 of 4
THREADS = "2"  # both cores of the 2-core machine make test runs on (OMP_WAIT_POLICY=passive)


@pytest.fixture(scope="module")
def smol(tmp_path_factory):
    factory = RuntimeFactory(create_runtime, {
        "MODEL_URI": f"file://{smollm2_path()}",
        "MODEL_CACHE_DIR": str(tmp_path_factory.mktemp("smol") / "cache"),
        "N_CTX": "1024", "N_THREADS": THREADS, "SLOTS": str(STREAMS), "N_BATCH": "512",
        "SHUTDOWN_GRACE_S": "5",
        "EVENTS_FLUSH_S": "2"})
    rt = factory()
    yield rt
    factory.stop_all()


@pytest.fixture(scope="module")
def client(smol):
    return smol.app.test_client()


def _rows() -> list[dict]:
    with lzma.open(BENCH, "rt", encoding="utf-8") as f:
        return [json.loads(line) for line in f]


def _chat(client, body: dict):
    r = client.post("/v1/chat/completions", json={"max_tokens": MAX_TOKENS, "temperature": 0,
                                                  **body})
    return r.status_code, r.get_json()


def _check(schema, text: str) -> list[str]:
    """jsonschema's verdict on an answer: the schema's dialect with its FORMAT_CHECKER."""
    cls = validator_for(schema)
    validator = cls(schema, format_checker=cls.FORMAT_CHECKER)
    return [e.message for e in validator.iter_errors(json.loads(text))]


def _run_all(client, bodies: list[dict]) -> list:
    with ThreadPoolExecutor(STREAMS) as pool:  # concurrent streams: one llama_decode a step
        return list(pool.map(lambda b: _chat(client, b), bodies))


def _schema_bodies(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    picked = [r for ds in DATASETS for r in [x for x in rows if x["dataset"] == ds][:PER_DATASET]]
    assert len(picked) == 40
    bodies = [{"messages": [{"role": "user", "content": f"Write a realistic example JSON "
                             f"document for '{r['name']}'."}], "frequency_penalty": PENALTY,
               "response_format": {"type": "json_schema", "json_schema": {
                   "name": "doc", "schema": r["schema"]}}} for r in picked]
    return picked, bodies


def _tool_bodies(rows: list[dict]) -> tuple[list[dict], list[dict]]:
    picked = ([r for r in rows if r["dataset"] == "Glaiveai2K"][:TOOL_SCHEMAS // 2]
              + [r for r in rows if r["dataset"] == "BFCL_simple"][:TOOL_SCHEMAS // 2])
    tools = [_tool(r, i) for i, r in enumerate(picked)]
    bodies = [{"messages": [{"role": "user", "content": f"Call {t['function']['name']} with "
                             "sensible arguments."}], "tools": [t], "tool_choice": "required"}
              for t in tools]
    return tools, bodies


@pytest.fixture(scope="module")
def bench_answers(client):
    """The 40 response_format requests and the 10 forced tool calls sent together, STREAMS
    at a time: the tool calls fill the slots the schemas' last wave leaves idle."""
    rows = _rows()
    picked, schema_bodies = _schema_bodies(rows)
    tools, tool_bodies = _tool_bodies(rows)
    answers = _run_all(client, schema_bodies + tool_bodies)
    return (picked, answers[:len(schema_bodies)]), (tools, answers[len(schema_bodies):])


@pytest.mark.skipif(not BENCH.exists(), reason=f"{BENCH} is not there")
def test_bench_schemas_through_response_format(bench_answers):
    (picked, answers), _ = bench_answers
    served = stop = length = 0
    violations = []
    for row, (status, body) in zip(picked, answers):
        assert status in (200, 400), (row["name"], status, body)
        if status == 400:
            print(f"400 {row['dataset']}/{row['name']}: {body['error']['message'][:150]}")
            continue
        served += 1
        choice = body["choices"][0]
        if choice["finish_reason"] == "stop":
            stop += 1
            errors = _check(row["schema"], choice["message"]["content"])
            if errors:
                violations.append((row["name"], errors[:2], choice["message"]["content"][:200]))
        else:
            assert choice["finish_reason"] == "length"
            length += 1
    print(f"\nresponse_format: {served}/40 served, {stop} stop, {length} length at "
          f"max_tokens {MAX_TOKENS} ({length / max(1, served):.0%} of served); "
          f"silent violations {len(violations)}")
    assert violations == []
    assert served >= 0.75 * 40


def _tool(row: dict, i: int) -> dict:
    """A tool from a Glaive parameters schema or a BFCL_simple ``{name: parameters}``."""
    schema = row["schema"]
    props = schema.get("properties", {})
    if row["dataset"].startswith("BFCL") and len(props) == 1:
        name, params = next(iter(props.items()))
    else:
        name, params = f"tool_{i}", schema
    return {"type": "function", "function": {"name": name, "description": row["name"],
                                             "parameters": params}}


@pytest.mark.skipif(not BENCH.exists(), reason=f"{BENCH} is not there")
def test_bench_function_schemas_through_forced_tool_calls(bench_answers):
    _, (tools, answers) = bench_answers
    served = calls = length = 0
    violations = []
    for tool, (status, body) in zip(tools, answers):
        assert status in (200, 400), (tool["function"]["name"], status, body)
        if status == 400:
            print(f"400 {tool['function']['name']}: {body['error']['message'][:150]}")
            continue
        served += 1
        choice = body["choices"][0]
        if choice["finish_reason"] == "tool_calls":
            calls += 1
            call = choice["message"]["tool_calls"][0]["function"]
            errors = _check(tool["function"]["parameters"], call["arguments"])
            if call["name"] != tool["function"]["name"] or errors:
                violations.append((call["name"], errors[:2], call["arguments"][:200]))
        else:
            assert choice["finish_reason"] == "length", choice
            length += 1
    print(f"\ntool calls: {served}/{len(tools)} served, {calls} tool_calls, {length} length; "
          f"silent violations {len(violations)}")
    assert violations == []
    assert served >= 0.75 * len(tools)


BOUNDED = {"type": "object", "properties": {
    "legs": {"type": "integer", "minimum": 0, "maximum": 8},
    "weight_kg": {"type": "number", "exclusiveMinimum": 0, "maximum": 2.5},
    "name": {"type": "string", "minLength": 2, "maxLength": 6},
    "colors": {"type": "array", "items": {"type": "string", "maxLength": 8},
               "minItems": 1, "maxItems": 2}},
    "required": ["legs", "weight_kg", "name", "colors"], "additionalProperties": False}
TEMPTING = [
    "Describe a centipede as JSON: it has 100 legs, weighs 40 kg, is called "
    "'Gigantic Scolopendra of the Amazon', and its colors are red, orange, yellow, black, "
    "brown and green.",
    "Give JSON for an elephant: legs 4, weight 6000 kg, name 'Elephas maximus indicus', "
    "colors grey, pink, brown, white.",
    "JSON for a millipede with 750 legs, weight -3, the name 'Illacme plenipes the "
    "thousand-legged', colors: cream, white, translucent, pale yellow, ivory.",
]


@pytest.fixture(scope="module")
def bounds_answers(client) -> dict:
    """Each seed's answers to the tempting prompts, all seeds' requests sent at once."""
    bodies = [{"messages": [{"role": "user", "content": p}], "temperature": 0.9,
               "seed": seed, "max_tokens": 96,
               "response_format": {"type": "json_schema", "json_schema": {
                   "name": "animal", "schema": BOUNDED}}} for seed in SEEDS for p in TEMPTING]
    answers = _run_all(client, bodies)
    n = len(TEMPTING)
    return {seed: answers[i * n:(i + 1) * n] for i, seed in enumerate(SEEDS)}


@pytest.mark.parametrize("seed", SEEDS)
def test_bounds_hold_at_temperature_0_9(bounds_answers, seed):
    """Prompts that invite breaking every bound; each stop answer must still validate."""
    answers = bounds_answers[seed]
    stops = 0
    for status, body in answers:
        assert status == 200, body
        choice = body["choices"][0]
        print(seed, choice["finish_reason"], choice["message"]["content"])
        if choice["finish_reason"] == "stop":
            stops += 1
            assert _check(BOUNDED, choice["message"]["content"]) == [], \
                choice["message"]["content"]
    assert stops >= 1, "no answer ended: the bounds were not tested"


class Animal(BaseModel):
    name: str
    legs: int = Field(ge=0, le=8)


def test_openai_client_parse_with_bounded_field(smol):
    """The issue's report: ``parse()`` with ``legs: int = Field(ge=0, le=8)`` gave legs=10
    with finish_reason stop; now the answer parses (the client's Pydantic check)."""
    http = httpx.Client(transport=httpx.WSGITransport(app=smol.app), base_url="http://smol")
    openai = OpenAI(base_url="http://smol/v1", api_key="unused", http_client=http,
                    max_retries=0)

    def parse(seed: int):
        return openai.chat.completions.parse(
            model=smol.host.model_id, response_format=Animal, temperature=0.9, seed=seed,
            max_tokens=64, messages=[{"role": "user",
                                      "content": "A centipede has 100 legs. Give its "
                                                 "name and its number of legs."}])

    with ThreadPoolExecutor(len(SEEDS)) as pool:  # one batch, as _run_all
        completions = list(pool.map(parse, SEEDS))
    for completion in completions:
        choice = completion.choices[0]
        assert choice.finish_reason == "stop", choice
        assert isinstance(choice.message.parsed, Animal)
        assert 0 <= choice.message.parsed.legs <= 8

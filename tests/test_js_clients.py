"""JavaScript clients against generate (the session's ``agents_generate``: SmolLM2, a key on):
node runs the scripts of clients/js, installed by `make js-clients` (npm ci, pinned by
clients/js/package-lock.json), and prints what each call returned as JSON for the test to check.

- anthropic.mjs: @anthropic-ai/sdk's messages.create, messages.stream (text events and the
  final message) and a 400 raised as the SDK's BadRequestError (Anthropic's error shape);
- responses.mjs: the Vercel AI SDK's @ai-sdk/openai provider (its default model speaks the
  Responses API): generateText and streamText.
"""
from __future__ import annotations

import json
import os
import shutil
import subprocess

import pytest

from scripts.procs import REPO_ROOT as ROOT
from tests.support.agents import AGENTS_KEY as KEY

NODE_S = 180
MODEL = "smollm2-135m-instruct-q4_1"
CLIENTS = ROOT / "clients" / "js"


@pytest.fixture(scope="module")
def server(agents_generate):
    assert shutil.which("node"), "node is not installed"
    assert (CLIENTS / "node_modules" / "@anthropic-ai" / "sdk").is_dir(), \
        "run `make js-clients` (npm ci in clients/js)"
    return agents_generate


def node(script: str, *args: str, **env: str) -> dict:
    """Run clients/js/``script`` with node; its JSON output."""
    done = subprocess.run(["node", script, *args], cwd=CLIENTS, capture_output=True, text=True,
                          timeout=NODE_S, env={**os.environ, **env}, check=False)
    assert done.returncode == 0, done.stderr[-3000:]
    return json.loads(done.stdout.strip().splitlines()[-1])


def test_anthropic_sdk(server):
    out = node("anthropic.mjs", server.url, MODEL, ANTHROPIC_API_KEY=KEY)
    created = out["created"]
    assert created["type"] == "message" and created["model"] == MODEL
    assert created["content"][0]["type"] == "text" and created["content"][0]["text"]
    assert created["stop_reason"] in ("end_turn", "max_tokens")
    assert 1 <= created["usage"]["output_tokens"] <= 8
    streamed = out["streamed"]
    final = streamed["final"]
    assert streamed["deltas"] and final["content"][0]["text"] == "".join(streamed["deltas"])
    assert final["stop_reason"] in ("end_turn", "max_tokens")
    assert final["usage"]["input_tokens"] + final["usage"]["cache_read_input_tokens"] > 5
    assert out["error"] == {"name": "BadRequestError", "status": 400,
                            "type": "invalid_request_error"}


def test_ai_sdk_responses(server):
    out = node("responses.mjs", f"{server.url}/v1", MODEL, OPENAI_API_KEY=KEY)
    generated, streamed = out["generated"], out["streamed"]
    assert generated["text"] and generated["finishReason"] in ("stop", "length")
    assert 1 <= generated["usage"]["outputTokens"] <= 8
    assert generated["usage"]["inputTokens"] > 5
    assert streamed["deltas"] and streamed["text"] == "".join(streamed["deltas"])
    assert streamed["finishReason"] in ("stop", "length")

"""Print docs/generate.md's table of OpenAI parameters: what generate does with each one.

The statuses come from generate's parameter tables (functions/generate/function/schema.py);
tests/test_openai_params.py checks docs/generate.md against this output and the tables against the
installed openai SDK's own request types.
"""
from __future__ import annotations

import sys

from scripts.packages import load_package

NOTES = {
    "model": "optional; must name the served model (404 otherwise)",
    "max_tokens": "default `DEFAULT_MAX_TOKENS`, bounded by `N_CTX`",
    "max_completion_tokens": "same as max_tokens",
    "n": "choices run as parallel slots; at most `SLOTS`",
    "best_of": "candidates run as slots; the best by log-probability per token; not streamed",
    "logprobs": "the model's raw log-softmax (before bias, penalties, grammar, temperature)",
    "top_logprobs": "0-20, with logprobs: true",
    "echo": "the prompt before the text; not with logprobs (400)",
    "presence_penalty": "-2..2, over the generated tokens",
    "frequency_penalty": "-2..2, over the generated tokens",
    "logit_bias": "token id (string key) -> -100..100",
    "ignore_eos": "extension (llama-server, vLLM): end-of-generation tokens never end the "
                  "answer, `stop` and `max_tokens` do; not with structured output (400)",
    "response_format": "text, json_object, json_schema (a grammar; unsupported keywords: 400)",
    "tools": "function tools; their parameters schema is enforced when a call is forced",
    "tool_choice": "none, auto (the model decides), required, or a named function (forced)",
    "parallel_tool_calls": "at most one call per answer either way",
    "modalities": "only [\"text\"]",
    "stop": "up to 4; not with structured output (a stop could cut the JSON)",
    "seed": "the same seed and request give the same sampled answer on one node",
    "user": "no effect here", "metadata": "no effect here", "store": "no effect here",
    "safety_identifier": "no effect here", "prompt_cache_key": "prompt KV is reused anyway",
    "prompt_cache_retention": "no effect here", "prompt_cache_options": "no effect here",
    "service_tier": "no effect here", "prediction": "a speed hint; no effect here",
}


def _schema():
    return load_package("generate", ("schema",)).schema


def table() -> str:
    schema = _schema()
    chat, completion = schema.CHAT_PARAMETERS, schema.COMPLETION_PARAMETERS
    lines = ["| parameter | /v1/chat/completions | /v1/completions | notes |", "|---|---|---|---|"]
    for name in sorted(set(chat) | set(completion)):
        note = NOTES.get(name) or schema.REJECTED_WHY.get(name, "")
        lines.append(f"| `{name}` | {chat.get(name, '-')} | {completion.get(name, '-')} | "
                     f"{note} |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.stdout.write(table() + "\n")

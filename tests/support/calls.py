"""The HTTP calls the end-to-end tests make to a running function, and the answer they expect.

The chat question is scripts/kernel_noise.py's clear-margin "pythagoras" prompt, whose
answer is the same on every llama.cpp kernel path.
"""
from __future__ import annotations

import requests

from scripts.kernel_noise import CLEAR_PROMPTS

WAIT_S = 60
CLEAR = {c.name: c for c in CLEAR_PROMPTS}
ANSWER = CLEAR["pythagoras"]  # "The Pythagorean theorem": 3 greedy steps, margin >= 6.15
QUESTION = ANSWER.messages


def chat(url: str, **extra) -> requests.Response:
    """POST /v1/chat/completions with :data:`QUESTION`, greedy, 24 tokens (``extra`` overrides)."""
    return requests.post(f"{url}/v1/chat/completions", timeout=WAIT_S,
                         json={"messages": QUESTION, "max_tokens": 24, "temperature": 0, **extra})


def embed(url: str, **body) -> requests.Response:
    """POST /v1/embeddings with ``body``."""
    return requests.post(f"{url}/v1/embeddings", json=body, timeout=WAIT_S)

"""The embed function's own settings (batching, limits), built from the same mapping as llmfn's.

Shared settings (model, storage, server, events) come from ``llmfn.settings.Settings``; embed
gives them its own defaults in :data:`DEFAULTS` (MiniLM has 512 positions; a batch holds
several sequences, so the llama.cpp batch is larger than one input).
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmfn.settings import build, setting

FUNCTION = "embed"

# Defaults of shared settings for embed; the cfg mapping (or the environment) overrides them.
DEFAULTS = {
    "FUNCTION_NAME": FUNCTION,
    "N_CTX": "512",
    "N_BATCH": "2048",
    "N_UBATCH": "2048",
    "QUEUE_SIZE": "16",
}


@dataclass(frozen=True)
class EmbedSettings:
    """Dynamic batching and request limits of /v1/embeddings."""
    batch_window_ms: float = setting("BATCH_WINDOW_MS", 5.0, "how long the first waiting "
                                     "request waits for others to share its model call, ms; "
                                     "0 = no merging across requests", lo=0, hi=1000)
    max_batch_size: int = setting("MAX_BATCH_SIZE", 32, "inputs per model call (several "
                                  "llama.cpp batches of N_BATCH tokens if needed)", lo=1, hi=256)
    max_inputs: int = setting("MAX_INPUTS", 2048, "inputs per request (OpenAI: 2048)", lo=1,
                              hi=100000)
    truncate: bool = setting("TRUNCATE", False, "cut inputs longer than N_CTX tokens instead "
                             "of answering 400")

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> EmbedSettings:
        return build(cls, env)  # a key set to None is unset

"""The generate function's own settings (continuous batching), built from the same mapping as
llmfn's. Shared settings (model, storage, server, events) come from ``llmfn.settings.Settings``
with generate's defaults in :data:`DEFAULTS`.
"""
from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from llmfn.settings import build, setting

FUNCTION = "generate"

# Defaults of shared settings for generate; the cfg mapping (or the environment) overrides them.
DEFAULTS = {
    "FUNCTION_NAME": FUNCTION,
}


@dataclass(frozen=True)
class GenerateSettings:
    """How many streams one process decodes together, and how long one request may take."""
    slots: int = setting("SLOTS", 0, "streams decoded together in one llama.cpp batch "
                         "(continuous batching); KV cache = SLOTS x N_CTX cells; 0 = as many "
                         "as fit the memory limit beside the weights, at most 4 "
                         "(docs/deploy.md \"Sizing\")", lo=0, hi=64)
    request_timeout_s: float = setting("REQUEST_TIMEOUT_S", 270.0, "deadline of one request "
                                       "from its arrival: the generation ends there with "
                                       "finish_reason length (event: deadline); below the "
                                       "revision's responseStartTimeoutSeconds (docs/deploy.md "
                                       "\"Timeouts\"); 0 = none, s", lo=0)

    @classmethod
    def from_mapping(cls, env: Mapping[str, str]) -> GenerateSettings:
        return build(cls, env)  # a key set to None is unset

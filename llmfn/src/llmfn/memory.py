"""The container's memory limit and the runtime's allowance beside weights and KV cache.

A pod whose model does not fit is OOM-killed during load or, worse, under load when the KV
cache fills; the kubelet then restarts it in a loop with no message. llmfn.sizing checks the
arithmetic at start-up (and derives SLOTS from it), which turns that into a clear error in the
log and a failed liveness probe.
"""
from __future__ import annotations

from pathlib import Path

# Python, Flask, gunicorn and llama.cpp's compute buffers beside weights and KV (measured RSS of
# a loaded generate process minus file and KV sizes: ~110 MB with SmolLM2-135M; 135 MiB with
# the Qwen2.5-0.5B Q4_K_M shape after a 500-token prompt; rounded up).
RUNTIME_OVERHEAD_BYTES = 160 * 1024 * 1024
CGROUP_ROOT = Path("/sys/fs/cgroup")


class DoesNotFit(RuntimeError):
    """Weights + KV cache + runtime exceed the memory limit; the message gives the arithmetic."""


def cgroup_memory_limit(root: Path = CGROUP_ROOT) -> int | None:
    """The memory limit of this container in bytes (cgroup v2, else v1); None when unlimited."""
    for path in (root / "memory.max", root / "memory" / "memory.limit_in_bytes"):
        try:
            raw = path.read_text().strip()
        except OSError:
            continue
        if raw == "max":
            return None
        value = int(raw)
        return None if value >= 1 << 60 else value  # v1 reports "unlimited" as ~2^63
    return None

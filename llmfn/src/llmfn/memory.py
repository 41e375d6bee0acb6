"""Does the model fit? Weights + KV cache checked against the container's memory limit.

A pod whose model does not fit is OOM-killed during load or, worse, under load when the KV
cache fills; the kubelet then restarts it in a loop with no message. Checking the arithmetic
at start-up turns that into a clear error in the log and a failed liveness probe.
"""
from __future__ import annotations

from pathlib import Path

# Python, Flask, gunicorn and llama.cpp's compute buffers beside weights and KV (measured RSS of
# a loaded generate process minus file and KV sizes: ~110 MB; rounded up).
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


def check_fits(*, weights_bytes: int, kv_bytes: int, limit_bytes: int | None,
               what: str) -> None:
    """Raise DoesNotFit when weights + KV + runtime overhead exceed ``limit_bytes``."""
    if limit_bytes is None:
        return
    need = weights_bytes + kv_bytes + RUNTIME_OVERHEAD_BYTES
    if need > limit_bytes:
        mib = 1024 * 1024
        raise DoesNotFit(
            f"{what} needs {need / mib:.0f} MiB (weights {weights_bytes / mib:.0f} MiB + KV cache "
            f"{kv_bytes / mib:.0f} MiB + runtime {RUNTIME_OVERHEAD_BYTES / mib:.0f} MiB) but the "
            f"container memory limit is {limit_bytes / mib:.0f} MiB: lower SLOTS or N_CTX, or "
            "raise the limit")

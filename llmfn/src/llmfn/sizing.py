"""SLOTS and threads from the model and the container: the one place for their arithmetic.

At start-up (the model loader, before the context is made) and in the manifest tests:

- KV bytes per slot = 2 (K and V) x n_layer x n_kv_head x head_dim x N_CTX x type size (f16: 2),
  read from the GGUF's header (:func:`read_shape`);
- SLOTS = how many slots fit beside the weights (the file's size: llama.cpp maps it) and the
  runtime allowance in the memory limit (cgroup v2 ``memory.max``, v1
  ``memory.limit_in_bytes``, else the machine's RAM), at most :data:`MAX_AUTO_SLOTS`;
- threads = the CPU limit (cgroup v2 ``cpu.max``, v1 ``cpu.cfs_quota_us``/``cfs_period_us``)
  rounded up, at most the CPUs this process may run on.

An explicit SLOTS or N_THREADS wins. :meth:`Plan.explain` is the line the start-up log and
``/health/readiness`` show.
"""
from __future__ import annotations

import math
import os
import struct
from dataclasses import dataclass
from pathlib import Path

from .memory import CGROUP_ROOT, RUNTIME_OVERHEAD_BYTES, DoesNotFit, cgroup_memory_limit

KV_TYPE_BYTES = 2  # f16 K and V cache (llama.cpp's default type_k / type_v)
MAX_AUTO_SLOTS = 4
"""The most slots a derived SLOTS gives (the default before it was derived): beyond it, more
streams per pod trade each stream's speed for the pod's total, a choice the sizing table makes
per model (docs/deploy.md "Sizing") by setting SLOTS."""
MIB = 1024 * 1024
MAX_KEPT_ARRAY = 1024  # integer arrays up to this length are read (per-layer values)


class NotGGUF(ValueError):
    """The file does not start with a GGUF header this reader knows."""


@dataclass(frozen=True)
class ModelShape:
    """What sizing needs of a model, from its GGUF header."""
    arch: str
    n_layer: int
    n_embd: int
    n_head: int
    n_head_kv: int
    head_dim: int
    n_ctx_train: int
    file_bytes: int
    head_dim_v: int = 0  # V's head size where it differs from K's (0: the same)
    kv_heads_all_layers: int = 0  # per-layer KV head counts summed (0: n_layer x n_head_kv)

    def kv_bytes_per_token(self, type_bytes: int = KV_TYPE_BYTES) -> int:
        """K and V of one token in every layer (SmolLM2-135M: 23,040 bytes): 2 x n_layer x
        n_kv_head x head_dim x type size when K and V heads have one size in every layer."""
        heads = self.kv_heads_all_layers or self.n_layer * self.n_head_kv
        return heads * (self.head_dim + (self.head_dim_v or self.head_dim)) * type_bytes

    def kv_bytes_per_slot(self, n_ctx: int, type_bytes: int = KV_TYPE_BYTES) -> int:
        return self.kv_bytes_per_token(type_bytes) * n_ctx


# GGUF value types (gguf.md): fixed sizes; 8 = string, 9 = array
_FIXED = {0: 1, 1: 1, 2: 2, 3: 2, 4: 4, 5: 4, 6: 4, 7: 1, 10: 8, 11: 8, 12: 8}
_INT = {0: "<B", 1: "<b", 2: "<H", 3: "<h", 4: "<I", 5: "<i", 10: "<Q", 11: "<q"}


def read_shape(path: str | Path) -> ModelShape:
    """The shape in the GGUF header at ``path`` (its metadata only: token lists are skipped,
    tensor data never read, so a header-only file serves as well as the model)."""
    meta = _read_metadata(Path(path))
    arch = str(meta.get("general.architecture", ""))

    def get(key: str, default: int | None = None) -> int:
        value = meta.get(f"{arch}.{key}", default)
        if isinstance(value, list) and value:  # per layer (some architectures): the largest
            value = max(value)
        if not isinstance(value, int | float):
            raise NotGGUF(f"{path}: the GGUF header has no number {arch}.{key}")
        return int(value)

    n_embd, n_head = get("embedding_length"), get("attention.head_count")
    head_dim = get("attention.key_length", n_embd // n_head if n_head else 0)
    per_layer = meta.get(f"{arch}.attention.head_count_kv")
    return ModelShape(arch=arch, n_layer=get("block_count"), n_embd=n_embd, n_head=n_head,
                      n_head_kv=get("attention.head_count_kv", n_head), head_dim=head_dim,
                      head_dim_v=get("attention.value_length", head_dim),
                      kv_heads_all_layers=sum(per_layer) if isinstance(per_layer, list) else 0,
                      n_ctx_train=get("context_length", 0),
                      file_bytes=os.path.getsize(path))


def _read_metadata(path: Path) -> dict[str, object]:
    """The GGUF key/values with scalar values (arrays skipped), read up to the tensor infos."""
    with open(path, "rb") as f:
        head = f.read(24)
        if len(head) < 24 or head[:4] != b"GGUF":
            raise NotGGUF(f"{path} does not start with the GGUF magic")
        version, _n_tensors, n_kv = struct.unpack("<IQQ", head[4:])
        if version not in (2, 3):
            raise NotGGUF(f"{path}: unsupported GGUF version {version}")

        def read(n: int) -> bytes:
            data = f.read(n)
            if len(data) < n:
                raise NotGGUF(f"{path}: the GGUF header is cut short")
            return data

        def string() -> str:
            (n,) = struct.unpack("<Q", read(8))
            return read(n).decode("utf-8", errors="replace")

        def value(vtype: int) -> object:
            if vtype in _INT:
                return struct.unpack(_INT[vtype], read(_FIXED[vtype]))[0]
            if vtype == 6:
                return struct.unpack("<f", read(4))[0]
            if vtype == 12:
                return struct.unpack("<d", read(8))[0]
            if vtype == 7:
                return read(1) != b"\0"
            if vtype == 8:
                return string()
            if vtype == 9:
                etype, count = struct.unpack("<IQ", read(12))
                if etype in _INT and count <= MAX_KEPT_ARRAY:  # e.g. KV heads per layer
                    return [value(etype) for _ in range(count)]
                if etype in _FIXED:
                    f.seek(_FIXED[etype] * count, os.SEEK_CUR)
                else:
                    for _ in range(count):
                        value(etype)
                return None
            raise NotGGUF(f"{path}: unknown GGUF value type {vtype}")

        meta: dict[str, object] = {}
        for _ in range(n_kv):
            key = string()
            (vtype,) = struct.unpack("<I", read(4))
            meta[key] = value(vtype)
        return meta


def cgroup_cpu_limit(root: Path = CGROUP_ROOT) -> float | None:
    """CPUs this container may use (quota / period: cgroup v2 ``cpu.max``, else v1); None
    when unlimited."""
    try:
        quota, period = (root / "cpu.max").read_text().split()[:2]
        return None if quota == "max" else int(quota) / int(period)
    except (OSError, ValueError):
        pass
    try:
        quota_us = int((root / "cpu" / "cpu.cfs_quota_us").read_text())
        period_us = int((root / "cpu" / "cpu.cfs_period_us").read_text())
        return None if quota_us <= 0 else quota_us / period_us
    except (OSError, ValueError):
        return None


def machine_cpus() -> int:
    """CPUs this process may run on (its affinity, e.g. the static CPU manager's set)."""
    try:
        return len(os.sched_getaffinity(0))
    except (AttributeError, OSError):
        return os.cpu_count() or 1


def machine_memory() -> int | None:
    """The machine's RAM in bytes (when the container has no memory limit)."""
    try:
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (ValueError, OSError, AttributeError):
        return None


@dataclass(frozen=True)
class Limits:
    """The container's limits: memory in bytes and CPUs, each None when unlimited."""
    memory_bytes: int | None
    cpus: float | None

    @classmethod
    def detect(cls, root: Path = CGROUP_ROOT) -> Limits:
        return cls(cgroup_memory_limit(root), cgroup_cpu_limit(root))


@dataclass(frozen=True)
class Plan:
    """SLOTS and threads for one model in one container, with the numbers behind them."""
    slots: int
    threads: int
    slots_source: str  # "SLOTS" (set) or "derived"
    threads_source: str  # "N_THREADS" (set), "cpu limit" or "machine"
    weights_bytes: int
    kv_slot_bytes: int
    runtime_bytes: int
    memory_bytes: int | None  # the limit the slots were fitted in
    memory_source: str  # "cgroup", "machine" or "none"
    n_ctx: int

    @property
    def need_bytes(self) -> int:
        return self.weights_bytes + self.slots * self.kv_slot_bytes + self.runtime_bytes

    @property
    def fits(self) -> bool:
        return self.memory_bytes is None or self.need_bytes <= self.memory_bytes

    def check(self) -> None:
        """Raise DoesNotFit, with the arithmetic, when a cgroup memory limit is exceeded (the
        machine's RAM is only used to count slots: other processes share it)."""
        limit = self.memory_bytes
        if self.memory_source == "cgroup" and limit is not None and not self.fits:
            raise DoesNotFit(
                f"{self.slots} slots x {self.n_ctx} tokens need {self.need_bytes / MIB:.0f} MiB "
                f"(weights {self.weights_bytes / MIB:.0f} MiB + KV cache "
                f"{self.slots * self.kv_slot_bytes / MIB:.0f} MiB + runtime "
                f"{self.runtime_bytes / MIB:.0f} MiB) but the container memory limit is "
                f"{limit / MIB:.0f} MiB: lower SLOTS or N_CTX, or raise the limit")

    def explain(self) -> str:
        """One line: the arithmetic, e.g. for /health/readiness and the start-up log."""
        mem = ("no memory limit" if self.memory_bytes is None else
               f"{self.memory_source} memory {self.memory_bytes / MIB:.0f} MiB")
        return (f"SLOTS {self.slots} ({self.slots_source}), N_THREADS {self.threads} "
                f"({self.threads_source}): weights {self.weights_bytes / MIB:.0f} MiB + "
                f"{self.slots} x KV {self.kv_slot_bytes / MIB:.1f} MiB ({self.n_ctx} tokens) + "
                f"runtime {self.runtime_bytes / MIB:.0f} MiB = {self.need_bytes / MIB:.0f} MiB"
                f" of {mem}")


def fit_slots(*, weights_bytes: int, kv_slot_bytes: int, memory_bytes: int | None,
              runtime_bytes: int = RUNTIME_OVERHEAD_BYTES, most: int = MAX_AUTO_SLOTS) -> int:
    """Slots whose KV fits beside the weights and the runtime (at least 1, at most ``most``;
    1 when even one does not fit: the load then fails with the arithmetic)."""
    if memory_bytes is None:
        return most
    room = memory_bytes - weights_bytes - runtime_bytes
    return max(1, min(most, room // kv_slot_bytes if kv_slot_bytes else most))


def threads_for(cpus: float | None, machine: int) -> int:
    """Threads for a CPU limit: its CPUs rounded up (a 1.5-CPU quota runs 2 threads, each
    throttled in turn), never more than the CPUs the process may run on."""
    if cpus is None:
        return machine
    return max(1, min(machine, math.ceil(cpus - 1e-9)))


def plan(shape: ModelShape, *, n_ctx: int, slots: int = 0, threads: int = 0,
         limits: Limits | None = None, machine: int | None = None,
         machine_mem: int | None = None) -> Plan:
    """SLOTS and threads for ``shape`` at ``n_ctx`` tokens per slot in ``limits``; a nonzero
    ``slots`` or ``threads`` (an explicit setting) wins."""
    limits = limits if limits is not None else Limits.detect()
    machine = machine if machine is not None else machine_cpus()
    memory, source = limits.memory_bytes, "cgroup"
    if memory is None:
        memory, source = (machine_mem if machine_mem is not None else machine_memory()), "machine"
    if memory is None:
        source = "none"
    kv = shape.kv_bytes_per_slot(n_ctx)
    derived = fit_slots(weights_bytes=shape.file_bytes, kv_slot_bytes=kv, memory_bytes=memory)
    return Plan(
        slots=slots or derived, slots_source="SLOTS" if slots else "derived",
        threads=threads or threads_for(limits.cpus, machine),
        threads_source=("N_THREADS" if threads else
                        "cpu limit" if limits.cpus is not None else "machine"),
        weights_bytes=shape.file_bytes, kv_slot_bytes=kv, runtime_bytes=RUNTIME_OVERHEAD_BYTES,
        memory_bytes=memory, memory_source=source, n_ctx=n_ctx)

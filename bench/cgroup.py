"""A child cgroup beside this process's own, with a CPU quota and/or a memory limit.

cgroup v2 (one hierarchy: ``cpu.max``, ``memory.max``) or v1 (the ``cpu`` and ``memory``
controllers' own hierarchies: ``cpu.cfs_quota_us``, ``memory.limit_in_bytes``). Used by the
benchmarks that run a server as a pod's container would be limited: bench_contention's CPU
quota, bench_sizes' memory limit of each sizing example. Needs root (or a delegated subtree).
"""
from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path

ROOT = Path("/sys/fs/cgroup")
PERIOD_US = 100_000


def _own() -> dict[str, str]:
    """This process's cgroup path per v1 controller list ("" for v2), from /proc/self/cgroup."""
    return {parts[1]: parts[2] for parts in
            (line.rstrip("\n").split(":", 2) for line in open("/proc/self/cgroup"))}


class Cgroup:
    """``cpus``: a CFS quota of that many CPUs; ``memory_bytes``: the memory limit (page cache
    included, as a container's). ``remove()`` moves the processes back and deletes it."""

    def __init__(self, name: str, *, cpus: float | None = None,
                 memory_bytes: int | None = None):
        own = _own()
        limits: dict[str, dict[str, str]] = {}  # parent dir -> {file: value}
        self.v2 = (ROOT / "cgroup.controllers").exists()
        if self.v2:
            parent = ROOT / own.get("", "/").lstrip("/")
            want = [c for c, on in (("cpu", cpus), ("memory", memory_bytes)) if on is not None]
            enabled = (parent / "cgroup.subtree_control").read_text().split()
            for c in want:
                if c not in enabled:
                    (parent / "cgroup.subtree_control").write_text(f"+{c}")
            files = {}
            if cpus is not None:
                files["cpu.max"] = f"{int(cpus * PERIOD_US)} {PERIOD_US}"
            if memory_bytes is not None:
                files["memory.max"] = str(memory_bytes)
            limits[str(parent)] = files
        else:
            if cpus is not None:
                limits[str(self._v1_parent(own, "cpu", "cpu.cfs_quota_us"))] = {
                    "cpu.cfs_period_us": str(PERIOD_US),
                    "cpu.cfs_quota_us": str(int(cpus * PERIOD_US))}
            if memory_bytes is not None:
                limits[str(self._v1_parent(own, "memory", "memory.limit_in_bytes"))] = {
                    "memory.limit_in_bytes": str(memory_bytes)}
        self.dirs: list[tuple[Path, Path]] = []  # (parent, ours)
        try:
            for parent, files in limits.items():
                d = Path(parent) / name
                d.mkdir()
                self.dirs.append((Path(parent), d))
                for key, value in files.items():
                    (d / key).write_text(value)
        except OSError:
            self.remove()
            raise
        self.pids: list[int] = []

    @staticmethod
    def _v1_parent(own: dict[str, str], controller: str, probe: str) -> Path:
        key = next((k for k in own if controller in k.split(",")), None)
        mount = next((m for m in (ROOT / controller, ROOT / f"{controller},cpuacct",
                                  ROOT / f"cpu,{controller}") if (m / probe).exists()), None)
        if key is None or mount is None:
            raise RuntimeError(f"no cgroup v2 and no cgroup v1 {controller} controller mounted")
        return mount / own[key].lstrip("/")

    def add(self, pids: list[int]) -> None:
        """Move running processes in (v1 memory: their earlier charges stay where they were;
        start a process inside with :meth:`inside` to have all of its memory counted)."""
        for pid in pids:
            for _, d in self.dirs:
                (d / "cgroup.procs").write_text(str(pid))
            self.pids.append(pid)

    @contextlib.contextmanager
    def inside(self) -> Iterator[None]:
        """This process in the group for the block: children started in it stay there."""
        me = os.getpid()
        for _, d in self.dirs:
            (d / "cgroup.procs").write_text(str(me))
        try:
            yield
        finally:
            for parent, _ in self.dirs:
                (parent / "cgroup.procs").write_text(str(me))

    def _memory_dir(self) -> Path:
        return next(d for _, d in self.dirs if (d / ("memory.max" if self.v2 else
                                                     "memory.limit_in_bytes")).exists())

    def memory(self) -> dict:
        """Peak usage (bytes; v2 memory.peak, v1 memory.max_usage_in_bytes: page cache
        included), the limit, the OOM kills (v2 memory.events, v1 memory.oom_control) and the
        working set now: anonymous memory + mapped file pages, what reclaim cannot drop without
        the process faulting it back (v2 memory.stat anon + file_mapped, v1 rss +
        mapped_file)."""
        d = self._memory_dir()

        def kv(name: str) -> dict[str, int]:
            return {k: int(v) for k, v in (line.split() for line in
                                           (d / name).read_text().splitlines())}
        if self.v2:
            peak, stat = d / "memory.peak", kv("memory.stat")
            return {"peak": int(peak.read_text()) if peak.exists() else None,
                    "limit": int((d / "memory.max").read_text()),
                    "oom_kills": kv("memory.events").get("oom_kill", 0),
                    "working_set": stat["anon"] + stat["file_mapped"]}
        stat = kv("memory.stat")
        return {"peak": int((d / "memory.max_usage_in_bytes").read_text()),
                "limit": int((d / "memory.limit_in_bytes").read_text()),
                "oom_kills": kv("memory.oom_control").get("oom_kill", 0),
                "working_set": stat["rss"] + stat["mapped_file"]}

    def remove(self) -> None:
        """Move the processes back to the parent cgroup and delete ours."""
        for parent, d in self.dirs:
            for pid in self.pids:
                with contextlib.suppress(ProcessLookupError, FileNotFoundError, OSError):
                    (parent / "cgroup.procs").write_text(str(pid))
            with contextlib.suppress(FileNotFoundError):
                d.rmdir()
        self.dirs = []

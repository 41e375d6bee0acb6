"""Threads for each decode step from the CPUs that are free now: generate's thread policy.

llama.cpp's OpenMP threads meet at a barrier hundreds of times per token. Waiting there by
spinning (libgomp's default: 300,000 spins, then sleep) is about 3x faster than sleeping at
once (``OMP_WAIT_POLICY=passive``) while every thread has a core, and 20-40x slower when a
neighbour holds one of the cores: the spinning thread burns the time slice that the one it waits
for needs (docs/deploy.md "Threads and CPU"). Neither wait policy is right for both.

So generate keeps libgomp's default wait and never asks for more threads than there are CPUs
free for it. :class:`FreeCpus` samples, every ``interval_s`` on a thread of its own, how busy
the CPUs this process may run on were (``/proc/stat``, only the CPUs in its affinity mask)
minus this process's own CPU time (which counts its own spinning):

    free = CPUs - (busy CPU-seconds - ours) / seconds

and :meth:`FreeCpus.threads` gives ``round(free)`` threads, between 1 and the most allowed
(N_THREADS or the CPU limit). Two pods on the same cores see each other as the neighbour and
settle at one thread each; a lone pod gets every thread back one interval after the neighbour
stops. On a large node shared under a CPU quota the mask holds many idle CPUs and the policy
gives the full count; under Kubernetes' static CPU manager the mask holds only the pod's own
CPUs and nothing else runs there.
"""
from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable
from pathlib import Path

log = logging.getLogger(__name__)

PROC_STAT = Path("/proc/stat")
PROC_LOADAVG = Path("/proc/loadavg")
INTERVAL_S = 0.05
IDLE_FIELDS = (3, 4)  # idle, iowait in a "cpuN" line's counters (user nice system idle iowait...)


def busy_seconds(cpus: frozenset[int], text: str, hz: float) -> float | None:
    """CPU-seconds the ``cpus`` have been busy since boot, from /proc/stat's ``text``; None
    when none of them is listed."""
    total, seen = 0, False
    for line in text.splitlines():
        if not line.startswith("cpu") or line[3:4] == " ":
            continue
        name, *counters = line.split()
        if int(name[3:]) not in cpus:
            continue
        ticks = [int(c) for c in counters[:8]]  # guest time is inside user already
        total += sum(ticks) - sum(ticks[i] for i in IDLE_FIELDS)
        seen = True
    return total / hz if seen else None


class FreeCpus:
    """How many of ``max_threads`` threads the next decode step should use.

    ``threads()`` is read by the decode loop and costs an attribute read; the sampling thread
    starts with :meth:`start` and stops with :meth:`stop` (or when the process exits)."""

    def __init__(self, max_threads: int, *, interval_s: float = INTERVAL_S,
                 cpus: set[int] | None = None, stat: Path = PROC_STAT,
                 loadavg: Path = PROC_LOADAVG,
                 ours: Callable[[], float] = time.process_time,
                 clock: Callable[[], float] = time.monotonic):
        self.max_threads = max(1, max_threads)
        self.interval_s = interval_s
        self.cpus = frozenset(cpus if cpus is not None else os.sched_getaffinity(0))
        self._stat, self._ours, self._clock = stat, ours, clock
        self._loadavg = loadavg
        self._hz = float(os.sysconf("SC_CLK_TCK"))
        self.free = float(len(self.cpus))  # CPUs free for this process over the last interval
        self._threads = self.max_threads
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._last = self._sample()
        self.available = self._last[1] is not None  # False: no /proc/stat, threads stay max

    def threads(self) -> int:
        return self._threads

    def woken(self) -> int:
        """For the steps right after the decode loop was idle: the last interval's average
        still counts a neighbour that stopped during it (e.g. the request served just before
        ours). If the tasks runnable now (/proc/loadavg), this thread aside, leave more CPUs
        than the threads in use, use them and start a new interval now. Only ever adds threads;
        a busy neighbour still takes them away at the next sample."""
        if self._threads >= self.max_threads or not self.available:
            return self._threads
        try:
            running = int(self._loadavg.read_text().split()[3].split("/")[0])
        except (OSError, IndexError, ValueError):
            return self._threads
        free_now = len(self.cpus) - max(0, running - 1)
        if free_now > self._threads:
            self._threads = min(self.max_threads, free_now)
            self._last = self._sample()
        return self._threads

    def _sample(self) -> tuple[float, float | None, float]:
        try:
            text = self._stat.read_text()
        except OSError:
            return self._clock(), None, self._ours()
        return self._clock(), busy_seconds(self.cpus, text, self._hz), self._ours()

    def update(self) -> int:
        """Take a sample and set the threads from the interval since the last one."""
        now = self._sample()
        (t0, busy0, ours0), (t1, busy1, ours1) = self._last, now
        self._last = now
        if busy0 is None or busy1 is None or t1 <= t0:
            return self._threads
        others = max(0.0, (busy1 - busy0) - (ours1 - ours0)) / (t1 - t0)
        self.free = max(0.0, len(self.cpus) - others)
        threads = max(1, min(self.max_threads, int(self.free + 0.5)))
        if threads != self._threads:
            log.debug("threads %d -> %d (%.2f CPUs free)", self._threads, threads, self.free)
            self._threads = threads
        return threads

    def start(self) -> FreeCpus:
        if self.max_threads > 1 and self.available and self._thread is None:
            self._thread = threading.Thread(target=self._run, name="free-cpus", daemon=True)
            self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        while not self._stop.wait(self.interval_s):
            self.update()

    def explain(self) -> str:
        if self.max_threads == 1:
            return "1 thread"
        if not self.available:
            return f"{self.max_threads} threads (no /proc/stat: not following free CPUs)"
        return (f"1-{self.max_threads} threads, as many as CPUs are free "
                f"(of {len(self.cpus)} in the affinity mask; now {self._threads})")

"""llmfn.cpu_share: threads from the CPUs free now, on /proc/stat texts written here and on
this machine's own /proc/stat beside a real busy loop."""
from __future__ import annotations

import os
import subprocess
import sys
import time

import pytest

from llmfn.cpu_share import FreeCpus, busy_seconds

HZ = os.sysconf("SC_CLK_TCK")


def stat_text(ticks: dict[int, tuple[int, int]]) -> str:
    """A /proc/stat of CPUs {n: (busy ticks, idle ticks)}, busy split over user and system."""
    lines = ["cpu  1 2 3 4 5 6 7 8 0 0"]
    for n, (busy, idle) in ticks.items():
        lines.append(f"cpu{n} {busy - busy // 3} 0 {busy // 3} {idle} 0 0 0 0 0 0")
    return "\n".join(lines + ["intr 1 2 3", "ctxt 9"]) + "\n"


class Node:
    """A fake node: CPUs whose busy/idle ticks advance, our process's CPU time, a clock."""

    def __init__(self, tmp_path, cpus=(0, 1)):
        self.path = tmp_path / "stat"
        self.ticks = {n: (1000, 1000) for n in cpus}
        self.ours = 0.0
        self.now = 100.0
        self.write()

    def write(self):
        self.path.write_text(stat_text(self.ticks))

    def run(self, seconds: float, busy: dict[int, float], ours: float):
        """``busy[n]``: the share of CPU n that was busy; ``ours``: CPUs our process used."""
        for n, (b, i) in self.ticks.items():
            used = round(busy.get(n, 0.0) * seconds * HZ)
            self.ticks[n] = (b + used, i + round(seconds * HZ) - used)
        self.ours += ours * seconds
        self.now += seconds
        self.write()

    def share(self, max_threads: int, cpus=None) -> FreeCpus:
        return FreeCpus(max_threads, cpus=cpus or set(self.ticks), stat=self.path,
                        ours=lambda: self.ours, clock=lambda: self.now)


def test_busy_seconds_counts_the_cpus_asked_for_without_idle_and_iowait():
    text = stat_text({0: (300, 700), 1: (50, 950), 2: (1000, 0)})
    assert busy_seconds(frozenset({0, 1}), text, 100) == pytest.approx(3.5)
    assert busy_seconds(frozenset({2}), text, 100) == pytest.approx(10.0)
    assert busy_seconds(frozenset({7}), text, 100) is None


@pytest.mark.parametrize(("busy", "ours", "threads"), [
    ({}, 0.0, 2),  # quiet, idle
    ({0: 1.0, 1: 1.0}, 2.0, 2),  # quiet, our two threads (spinning included) busy
    ({0: 1.0}, 0.0, 1),  # a neighbour holds one core
    ({0: 1.0, 1: 1.0}, 1.0, 1),  # a neighbour and our one thread
    ({0: 1.0, 1: 1.0}, 0.0, 1),  # two neighbours: still one thread, never none
    ({0: 0.3}, 0.0, 2),  # a neighbour using a third of a core: two threads
])
def test_threads_follow_the_cpus_the_neighbours_leave(tmp_path, busy, ours, threads):
    node = Node(tmp_path)
    share = node.share(2)
    node.run(0.2, busy, ours)
    assert share.update() == threads == share.threads()


def test_the_threads_come_back_when_the_neighbour_stops_and_never_exceed_the_most(tmp_path):
    node = Node(tmp_path, cpus=range(4))
    share = node.share(2)
    node.run(0.2, {0: 1.0, 1: 1.0, 2: 1.0}, 0.0)
    assert share.update() == 1 and share.free == pytest.approx(1.0)
    node.run(0.2, {3: 1.0}, 1.0)
    assert share.update() == 2  # 4 CPUs free: capped at the most (N_THREADS)
    assert "1-2 threads" in share.explain()


def test_without_proc_stat_the_threads_stay_at_the_most(tmp_path):
    share = FreeCpus(3, stat=tmp_path / "missing")
    assert not share.available and share.update() == 3 and share.threads() == 3
    assert "not following" in share.explain()
    assert share.start()._thread is None  # nothing to sample
    assert FreeCpus(1).explain() == "1 thread"


@pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs two CPUs")
def test_a_real_busy_loop_on_one_of_two_cpus_leaves_one_thread():
    cpus = sorted(os.sched_getaffinity(0))[:2]
    hog = subprocess.Popen([sys.executable, "-c", (
        "import os, time\n"
        f"os.sched_setaffinity(0, {{{cpus[0]}}})\n"
        "end = time.monotonic() + 20\n"
        "while time.monotonic() < end:\n    pass\n")])
    try:
        time.sleep(0.3)  # the loop is running
        share = FreeCpus(2, cpus=set(cpus), interval_s=0.1).start()
        seen = []
        for _ in range(10):  # a second of samples: each interval sees the loop's core busy
            time.sleep(0.1)
            seen.append(share.threads())
        share.stop()
        assert seen[-5:] == [1] * 5, seen
        assert share.free < 1.5
    finally:
        hog.kill()
        hog.wait(timeout=10)


@pytest.mark.parametrize(("runnable", "threads"), [(1, 2), (2, 1), (5, 1)])
def test_after_idle_the_tasks_runnable_now_may_give_threads_back(tmp_path, runnable, threads):
    """The last interval saw a neighbour on one core; at the first steps after idle, only the
    runnable tasks now count (this thread is one): 1 -> the neighbour stopped."""
    node = Node(tmp_path)
    loadavg = tmp_path / "loadavg"
    loadavg.write_text(f"0.50 0.40 0.30 {runnable}/120 999\n")
    share = FreeCpus(2, cpus=set(node.ticks), stat=node.path, loadavg=loadavg,
                     ours=lambda: node.ours, clock=lambda: node.now)
    node.run(0.2, {0: 1.0}, 0.0)
    assert share.update() == 1
    assert share.woken() == threads == share.threads()
    node.run(0.2, {}, 0.0)  # the next interval starts at the wake: nothing else ran since
    assert share.update() == 2

"""The thread policy's targets in every test run (issue 24): generate as deployed, only
N_THREADS=2, against llama-server built from the same llama.cpp source, on SmolLM2-135M, quiet
and beside a busy loop pinned to one of the two cores (a short ``bench/bench_contention.py``
run, ``--no-doc``).

The benchmark's targets are p100 quiet <= 1.1 x llama-server spinning (its default) and beside
the loop <= 1.2 x llama-server passive (its best setting there); with 8 requests per server on
a shared machine this test allows 1.5 times each. Both are ratios of servers measured in turns
in one run, never a wall-clock threshold. With OMP_WAIT_POLICY=passive (the old deployment) the
quiet ratio is about 3; with spinning at all N_THREADS beside the loop, 20-40 (docs/deploy.md
"Threads and CPU"): either fails here.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from bench import common
from bench.bench_contention import OMP_KEYS, TARGETS
from scripts import procs

MARGIN = 1.5
REQUESTS = 8
OUT = common.STATE / "bench" / "contention-scratch.json"


@pytest.fixture(scope="module")
def run():
    if len(os.sched_getaffinity(0)) < 2:
        pytest.skip("needs two CPUs: one for the busy loop, one left free")
    assert procs.LLAMA_SERVER.exists(), "make test builds llama-server first"
    env = {k: v for k, v in os.environ.items() if k not in OMP_KEYS}  # TEST_ENV's passive
    OUT.unlink(missing_ok=True)
    proc = subprocess.run(
        [sys.executable, "bench/bench_contention.py", "--requests", str(REQUESTS),
         "--threads", "2", "--variants", "deployed", "--theirs-quiet", "spin",
         "--theirs-hog", "passive", "--no-doc", "--no-plot"],
        cwd=common.REPO_ROOT, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, proc.stderr[-3000:]
    return json.loads(OUT.read_text())


@pytest.mark.parametrize("cond", list(TARGETS))
def test_generate_as_deployed_keeps_up_with_llama_servers_best_setting(run, cond):
    theirs, target = TARGETS[cond]
    r = run["results"]["deployed"][cond]
    assert r["omp_env"] == {}  # as deployed: libgomp's default wait, threads follow free CPUs
    ratio = r["ours"]["p100"] / r["theirs"][theirs]["p100"]
    assert r["ours"]["n"] == REQUESTS == r["theirs"][theirs]["n"]
    assert ratio <= target * MARGIN, (
        f"{cond}: ours p100 {r['ours']['p100']:.3f} s = {ratio:.2f} x llama-server ({theirs}) "
        f"{r['theirs'][theirs]['p100']:.3f} s, target {target} (x{MARGIN} for noise); "
        f"load before {r['load_1min_before']:.2f}")

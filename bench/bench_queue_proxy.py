"""The latency Knative's queue-proxy adds: a 1-token completion (generate, SmolLM2-135M) and one
embedding (embed, all-MiniLM-L6-v2), straight to the function and through queue-proxy.

Each function runs as a revision pod (scripts/knative_pod.py: gunicorn and the real
``.state/bin/queue``, configured from ``kustomize build deploy``, in their own network
namespace; needs root). Both paths cross the same veth, so the difference is queue-proxy's
alone. Requests alternate between the paths one by one (the order of each pair drawn at
random), on keep-alive connections as the activator keeps them. Prints a markdown table for
docs/benchmarks.md ("queue-proxy overhead") and writes .state/bench/queue-proxy.json.

    .venv/bin/python bench/bench_queue_proxy.py [--requests 200]
"""
from __future__ import annotations

import argparse
import json
import platform
import random
import sys
import tempfile
import time
from pathlib import Path

import requests

from bench.common import percentile
from scripts import knative_pod
from tests.support.queueproxy import function_env  # the tests' pod environment

REPO_ROOT = Path(__file__).resolve().parents[1]

OUT = REPO_ROOT / ".state" / "bench" / "queue-proxy.json"
CALLS = {
    "generate": ("/v1/completions", {"prompt": "Hello", "max_tokens": 1, "temperature": 0}),
    "embed": ("/v1/embeddings", {"input": "The quick brown fox jumps over the lazy dog."}),
}


def measure(pod: knative_pod.Pod, path: str, body: dict, n: int, rng: random.Random) -> dict:
    sessions = {"direct": requests.Session(), "queue-proxy": requests.Session()}
    urls = {"direct": pod.direct_url, "queue-proxy": pod.url}
    times: dict[str, list[float]] = {"direct": [], "queue-proxy": []}
    for p in urls:  # warm both connections and the model
        for _ in range(5):
            sessions[p].post(urls[p] + path, json=body, timeout=60).raise_for_status()
    for _ in range(n):
        order = list(urls)
        rng.shuffle(order)
        for p in order:
            t0 = time.perf_counter()
            r = sessions[p].post(urls[p] + path, json=body, timeout=60)
            times[p].append(time.perf_counter() - t0)
            r.raise_for_status()
    out = {p: {"p50_ms": percentile(v, 0.5) * 1000, "p95_ms": percentile(v, 0.95) * 1000,
               "n": len(v)} for p, v in times.items()}
    out["added"] = {q: out["queue-proxy"][q] - out["direct"][q] for q in ("p50_ms", "p95_ms")}
    # the median per pair (its two requests ran back to back): less of the machine's drift
    paired = [b - a for a, b in zip(times["direct"], times["queue-proxy"])]
    out["paired_added"] = {"p50_ms": percentile(paired, 0.5) * 1000}
    return out


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--requests", type=int, default=200, help="per path and function")
    args = ap.parse_args()
    specs = knative_pod.revision_specs()
    results = {}
    rng = random.Random(1)
    with tempfile.TemporaryDirectory() as tmp:
        for fn, (path, body) in CALLS.items():
            env = function_env(fn, Path(tmp), model="smollm2")
            with knative_pod.Pod(fn, specs[fn], env, Path(tmp)) as pod:
                pod.start()
                pod.wait_ready(180)
                results[fn] = measure(pod, path, body, args.requests, rng)
    report = {"cpu": platform.processor() or platform.machine(), "requests": args.requests,
              "results": results}
    OUT.parent.mkdir(parents=True, exist_ok=True)
    OUT.write_text(json.dumps(report, indent=2))
    print("| request | direct p50 / p95 (ms) | through queue-proxy p50 / p95 (ms) "
          "| added p50 / p95 (ms) | added, median of pairs (ms) |\n|---|---|---|---|---|")
    for fn, r in results.items():
        d, q, a, pa = r["direct"], r["queue-proxy"], r["added"], r["paired_added"]
        label = "1-token completion (generate)" if fn == "generate" else "one embedding (embed)"
        print(f"| {label} | {d['p50_ms']:.2f} / {d['p95_ms']:.2f} | {q['p50_ms']:.2f} / "
              f"{q['p95_ms']:.2f} | {a['p50_ms']:+.2f} / {a['p95_ms']:+.2f} | "
              f"{pa['p50_ms']:+.2f} |")
    return 0


if __name__ == "__main__":
    sys.exit(main())

#!/usr/bin/env python3
"""Run tests/test_kernel_agreement.py on each CPU variant of the portable build (test-cpu-variants).

Usage: cpu_variants.py [--python .state/venv-portable/bin/python] [--only haswell,sse42]

The portable llama-cpp-python wheel (scripts/build_portable_wheel.sh) ships one
libggml-cpu-<variant>.so per x86 instruction-set level; ggml loads the best one the CPU runs.
Here each variant this CPU can execute (ggml_backend_score > 0, asked in a throwaway process)
runs the agreement test in its own pytest process (LLMFN_CPU_VARIANT=<variant>), one at a time.
Prints per variant: pass/fail, the largest |Δlogit| between kernel paths, and how far its
batched prompt-end logits are from the best variant's (the cross-ISA noise that issue 9 §1
sees between machines); and the variants skipped because this CPU cannot run them.
Exit status 1 if any variant fails.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
OUT = ROOT / ".state" / "bench" / "cpu-variants"
TEST = "tests/test_kernel_agreement.py"
TIMEOUT_S = 1800  # one variant; x64 (no SIMD) is the slowest

# Run by --python (llmfn and llmfn-dev installed there by scripts/build_portable_wheel.sh): the
# variants and their scores, each score asked in its own process.
LIST = """
import json
from scripts.kernel_noise import cpu_variants
print(json.dumps({k: str(v) for k, v in cpu_variants().items()}))
"""
SCORE = """
import sys
from pathlib import Path
from scripts.kernel_noise import variant_score
print(variant_score(Path(sys.argv[1])))
"""


def run_py(python: str, code: str, *args: str) -> str:
    return subprocess.run([python, "-c", code, *args], check=True, timeout=60,
                          capture_output=True, text=True, cwd=ROOT).stdout.strip()


def cross_variant(reports: dict[str, Path], best: str) -> dict[str, tuple[float, float]]:
    """Per variant: max (top-40, vocabulary) |Δlogit| of its batched prompt-end logits against
    the best variant's, same path, every prompt."""
    from scripts.kernel_noise import deltas

    ref = np.load(str(reports[best]) + ".npz")
    out = {}
    for name, path in reports.items():
        got = np.load(str(path) + ".npz")
        pairs = [deltas(ref[k], got[k]) for k in ref.files]
        out[name] = (max(p[0] for p in pairs), max(p[1] for p in pairs))
    return out


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--python", default=str(ROOT / ".state" / "venv-portable" / "bin" / "python"))
    ap.add_argument("--only", default="", help="comma-separated variants (default: all)")
    args = ap.parse_args(argv)

    variants = json.loads(run_py(args.python, LIST))
    if not variants:
        print(f"no libggml-cpu-*.so under {args.python}'s llama_cpp: not a portable build")
        return 1
    wanted = [v for v in args.only.split(",") if v] or list(variants)
    scores = {v: int(run_py(args.python, SCORE, variants[v])) for v in wanted}
    runnable = sorted((v for v in wanted if scores[v] > 0), key=lambda v: -scores[v])
    skipped = [v for v in wanted if scores[v] == 0]
    print(f"variants: {len(variants)}; this CPU runs {runnable} (best first by ggml score); "
          f"cannot run {skipped}", flush=True)

    OUT.mkdir(parents=True, exist_ok=True)
    results, reports = {}, {}
    for v in runnable:
        report = OUT / f"{v}.json"
        report.unlink(missing_ok=True)
        env = {**os.environ, "LLMFN_CPU_VARIANT": v, "LLMFN_KERNEL_REPORT": str(report)}
        t0 = time.monotonic()
        # --noconftest: the root conftest needs the project venv (MinIO, FerretDB helpers)
        proc = subprocess.run([args.python, "-m", "pytest", "-q", "-p", "no:cacheprovider",
                               "--noconftest", TEST], cwd=ROOT, env=env, timeout=TIMEOUT_S,
                              capture_output=True, text=True)
        tail = proc.stdout.strip().splitlines()[-1] if proc.stdout.strip() else proc.stderr
        results[v] = {"rc": proc.returncode, "s": time.monotonic() - t0, "summary": tail}
        if report.exists():
            reports[v] = report
            results[v]["pairs"] = json.loads(report.read_text())["pairs"]
        if proc.returncode != 0:
            print(proc.stdout[-4000:], proc.stderr[-2000:])
        print(f"{v}: {'PASS' if proc.returncode == 0 else 'FAIL'} ({tail})", flush=True)

    cross = cross_variant(reports, runnable[0]) if reports else {}
    print(f"\n| variant | score | result | max top-40 / vocab |Δlogit| between paths | "
          f"vs {runnable[0] if runnable else '-'} (batched, top-40 / vocab) | time (s) |")
    print("|---|---|---|---|---|---|")
    for v in runnable:
        r = results[v]
        worst = (max(p[0] for p in r["pairs"].values()), max(p[1] for p in r["pairs"].values())) \
            if "pairs" in r else None
        print(f"| {v} | {scores[v]} | {'pass' if r['rc'] == 0 else 'FAIL'} | "
              f"{f'{worst[0]:.3f} / {worst[1]:.3f}' if worst else 'n/a'} | "
              f"{f'{cross[v][0]:.3f} / {cross[v][1]:.3f}' if v in cross else 'n/a'} | "
              f"{r['s']:.0f} |")
    for v in skipped:
        print(f"| {v} | 0 | skipped: this CPU cannot run it | | | |")
    (OUT / "summary.json").write_text(json.dumps(
        {"scores": scores, "results": results,
         "cross": {k: list(v) for k, v in cross.items()}}, indent=1))
    return 0 if runnable and all(r["rc"] == 0 for r in results.values()) else 1


if __name__ == "__main__":
    sys.exit(main())

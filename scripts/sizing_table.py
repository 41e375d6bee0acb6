"""Print docs/deploy.md's sizing table from deploy/examples/sizing.json and llmfn.sizing.

The derived columns (weights, KV, memory, SLOTS, threads, emptyDir) come from the model shapes
(scripts/make_synthetic_gguf.py SHAPES) and the table's limits; the measured ones are the
table's ``measured`` values that bench/bench_sizes.py writes (``~x*`` where it extrapolated
them), "to be measured (bench-sizes)" while they are null, and the cost per million output
tokens at the table's ``price``.
tests/test_manifests_examples.py checks that docs/deploy.md holds this output.
"""
from __future__ import annotations

import json
from pathlib import Path

from llmfn import sizing
from scripts.make_synthetic_gguf import SHAPES

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "deploy" / "examples" / "sizing.json"
MIB = 1024 * 1024
UNITS = {"Mi": MIB, "Gi": 1024 * MIB}
PENDING = "to be measured (bench-sizes)"


def quantity_bytes(text: str) -> int:
    """Bytes of a Kubernetes memory quantity in Mi or Gi (what the examples use)."""
    return int(text[:-2]) * UNITS[text[-2:]]


def model_shape(name: str, file_bytes: int) -> sizing.ModelShape:
    """What llmfn.sizing reads from the GGUF header of ``name``'s shape."""
    s = SHAPES[name]
    return sizing.ModelShape(arch=s.arch, n_layer=s.n_layer, n_embd=s.n_embd, n_head=s.n_head,
                             n_head_kv=s.n_head_kv, head_dim=s.head_dim,
                             n_ctx_train=s.n_ctx_train, file_bytes=file_bytes)


def table(data: dict | None = None) -> str:
    data = data if data is not None else json.loads(TABLE.read_text())
    n_ctx = data["n_ctx"]
    rows = ["| model (Q4_K_M) | weights | KV per token | KV per slot | memory (req = limit) "
            "| need | SLOTS = containerConcurrency | target | CPU (req = limit) = N_THREADS "
            "| emptyDir | tokens/s per pod: 1 stream / SLOTS streams (threads) "
            "| cold start: empty (capped S3) / warm | $ per 1M output tokens |",
            "|---|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, row in data["models"].items():
        shape = model_shape(name, row["file_bytes"])
        mem = row["memory"]
        limits = sizing.Limits(quantity_bytes(mem), float(row["cpu"]))
        derived = sizing.plan(shape, n_ctx=n_ctx, limits=limits, machine=row["cpu"])
        plan = (sizing.plan(shape, n_ctx=n_ctx, slots=row["slots"], limits=limits,
                            machine=row["cpu"]) if row.get("slots_set") else derived)
        slots = (f"{plan.slots} (set; derived {derived.slots})" if plan.slots != derived.slots
                 else str(plan.slots))
        tps, cold, cost = measured_cells(row["measured"])
        rows.append(
            f"| {name} | {shape.file_bytes / MIB:,.0f} MiB "
            f"| {shape.kv_bytes_per_token() / 1024:,.0f} KiB "
            f"| {plan.kv_slot_bytes / MIB:,.0f} MiB | {mem} | {plan.need_bytes / MIB:,.0f} MiB "
            f"| {slots} | {row['target']} ({row['utilization']} %) | {plan.threads} "
            f"| {row['empty_dir']} | {tps} | {cold} | {cost} |")
    price = data.get("price")
    note = (f"\nMeasured columns: {MEASURED_NOTE} Cost: the pod's measured vCPUs x "
            f"${price['vcpu_hour']} per vCPU-hour + its memory x ${price['gib_hour']} per "
            f"GiB-hour ({price['source']}), over its SLOTS-stream tokens/s.\n") if price else ""
    return "\n".join(rows) + "\n" + note


MEASURED_NOTE = ("make bench-sizes on a 2-core machine, so at most 2 threads whatever the "
                 "example's CPU; `~x*` is extrapolated from the smaller sizes, not measured.")


def measured_cells(m: dict) -> tuple[str, str, str]:
    """tokens/s, cold start and cost cells of a row's ``measured`` values."""
    ext = set(m.get("extrapolated") or ())

    def cell(key: str, unit: str = "") -> str | None:
        v = m.get(key)
        if v is None:
            return None
        return f"~{v}{unit}*" if key in ext else f"{v}{unit}"

    one, agg = cell("decode_tokens_per_s"), cell("aggregate_tokens_per_s")
    tps = PENDING if one is None else f"{one} / {agg or 'n/a'} ({m.get('threads')})"
    empty, warm = cell("cold_start_s", " s"), cell("warm_start_s", " s")
    cold = PENDING if empty is None and warm is None else f"{empty or 'n/a'} / {warm or 'n/a'}"
    v = m.get("cost_per_million_tokens")
    cost = PENDING if v is None else f"~${v}*" if "cost_per_million_tokens" in ext else f"${v}"
    return tps, cold, cost


if __name__ == "__main__":
    print(table(), end="")

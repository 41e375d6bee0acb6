"""bench/sizes_report.py's extrapolation and scripts/sizing_table.py's measured cells: the
arithmetic behind the 8B figures that make bench-sizes does not measure (no model runs here)."""
from __future__ import annotations

import pytest

from bench import sizes_report as rep
from scripts import sizing_table

SIZES = {"qwen2.5-0.5b": 4e8, "llama-3.2-1b": 8e8, "qwen2.5-3b": 1.9e9, "llama-3.1-8b": 4.9e9}


def fig(b: float, full: bool) -> dict:
    """Figures on exact power laws of the file bytes ``b``: TTFT ~ b^0.9, decode ~ b^-1, the
    aggregate at 4 streams ~ 3 x decode x b^-0.1 (so relative to decode, b^-0.1)."""
    decode = 8e9 / b
    f = {"file_bytes": b, "decode_main_ours": decode, f"load_{rep.OURS}": b / 4e8}
    if full:
        f |= {f"ttft_{rep.OURS}": 1e-8 * b ** 0.9, f"agg_4_{rep.OURS}": 3 * decode * b ** -0.1,
              "cold_empty": 2.0 * b / 4e8}
    return f


def test_a_power_law_is_extrapolated_exactly_and_checked_on_3b():
    figs = {n: fig(b, n != "llama-3.1-8b") for n, b in SIZES.items()}
    results = {n: {"full": n != "llama-3.1-8b"} for n in SIZES}
    out = rep.fill(figs, results)
    big = figs["llama-3.1-8b"]
    assert sorted(out["extrapolated"]["llama-3.1-8b"]) == sorted(
        [f"ttft_{rep.OURS}", f"agg_4_{rep.OURS}", "cold_empty"])
    assert big[f"ttft_{rep.OURS}"] == pytest.approx(1e-8 * 4.9e9 ** 0.9)
    assert big[f"agg_4_{rep.OURS}"] == pytest.approx(3 * big["decode_main_ours"] * 4.9e9 ** -0.1)
    assert big["cold_empty"] == pytest.approx(2.0 * 4.9e9 / 4e8)
    assert set(out["check"]) == {f"ttft_{rep.OURS}", f"agg_4_{rep.OURS}", "cold_empty"}
    assert all(abs(c["error"]) < 1e-9 for c in out["check"].values())


def test_the_check_reports_the_error_of_a_law_that_does_not_hold():
    figs = {n: fig(b, n != "llama-3.1-8b") for n, b in SIZES.items()}
    figs["qwen2.5-3b"][f"ttft_{rep.OURS}"] *= 2  # 3B twice as slow as the law says
    out = rep.fill(figs, {n: {"full": n != "llama-3.1-8b"} for n in SIZES})
    assert out["check"][f"ttft_{rep.OURS}"]["error"] == pytest.approx(-0.5)


def test_measured_cells_mark_the_extrapolated_and_the_pending():
    m = {"decode_tokens_per_s": 1.5, "aggregate_tokens_per_s": 3.2, "threads": 2,
         "cold_start_s": 120.0, "warm_start_s": 9.1, "cost_per_million_tokens": 7.3,
         "extrapolated": ["aggregate_tokens_per_s", "cold_start_s", "cost_per_million_tokens"]}
    assert sizing_table.measured_cells(m) == ("1.5 / ~3.2* (2)", "~120.0 s* / 9.1 s", "~$7.3*")
    pending = {"decode_tokens_per_s": None, "aggregate_tokens_per_s": None, "cold_start_s": None}
    assert sizing_table.measured_cells(pending) == (sizing_table.PENDING,) * 3

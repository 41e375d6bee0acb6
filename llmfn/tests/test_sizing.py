"""llmfn.sizing: SLOTS and threads from header-only GGUFs of real shapes (0.5B, 8B) and the
memory limits of the example overlays (deploy/examples/sizing.json); the cgroup readers."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from llmfn import sizing
from llmfn.memory import RUNTIME_OVERHEAD_BYTES, DoesNotFit
from scripts.make_synthetic_gguf import SHAPES, write_shape

ROOT = Path(__file__).resolve().parents[2]
TABLE = json.loads((ROOT / "deploy" / "examples" / "sizing.json").read_text())
N_CTX = TABLE["n_ctx"]
GI = 1024 ** 3
LIMITS = {name: int(row["memory"].removesuffix("Gi")) * GI for name, row in TABLE["models"].items()}
# SLOTS derived at N_CTX 4096 for each example's memory limit (by hand: see test_figures)
DERIVED = {"qwen2.5-0.5b": {"qwen2.5-0.5b": 4, "llama-3.2-1b": 4, "qwen2.5-3b": 4,
                            "llama-3.1-8b": 4},
           "llama-3.1-8b": {"qwen2.5-0.5b": 1, "llama-3.2-1b": 1, "qwen2.5-3b": 1,
                            "llama-3.1-8b": 4}}
FITS = {"qwen2.5-0.5b": {k: True for k in LIMITS},
        "llama-3.1-8b": {"qwen2.5-0.5b": False, "llama-3.2-1b": False, "qwen2.5-3b": False,
                         "llama-3.1-8b": True}}


@pytest.fixture(scope="module")
def headers(tmp_path_factory) -> dict[str, Path]:
    """Header-only Q4_K_M GGUFs (sparse files of the real size) of the 0.5B and 8B shapes."""
    d = tmp_path_factory.mktemp("gguf")
    out = {}
    for name in ("qwen2.5-0.5b", "llama-3.1-8b"):
        out[name] = d / f"{name}.gguf"
        write_shape(out[name], name, TABLE["quant"], header_only=True)
    return out


def test_read_shape_from_a_header_only_file(headers):
    for name, path in headers.items():
        shape, real = sizing.read_shape(path), SHAPES[name]
        assert (shape.n_layer, shape.n_head_kv, shape.head_dim, shape.n_embd) == (
            real.n_layer, real.n_head_kv, real.head_dim, real.n_embd)
        assert shape.n_ctx_train == real.n_ctx_train
        assert shape.file_bytes == TABLE["models"][name]["file_bytes"]  # the real file's size
        assert path.stat().st_blocks * 512 < 16 * 1024 * 1024  # but no weights on disk


def test_kv_bytes_per_token_and_slot(headers):
    half, eight = (sizing.read_shape(headers[n]) for n in ("qwen2.5-0.5b", "llama-3.1-8b"))
    assert half.kv_bytes_per_token() == 2 * 24 * 2 * 64 * 2 == 12_288
    assert eight.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2 == 131_072
    assert half.kv_bytes_per_slot(N_CTX) == 48 * 1024 * 1024
    assert eight.kv_bytes_per_slot(N_CTX) == 512 * 1024 * 1024


@pytest.mark.parametrize("model", ["qwen2.5-0.5b", "llama-3.1-8b"])
@pytest.mark.parametrize("example", sorted(LIMITS))
def test_slots_derived_for_each_example_limit(headers, model, example):
    shape = sizing.read_shape(headers[model])
    plan = sizing.plan(shape, n_ctx=N_CTX, limits=sizing.Limits(LIMITS[example], 2.0),
                       machine=8)
    assert (plan.slots, plan.slots_source, plan.fits) == (DERIVED[model][example], "derived",
                                                          FITS[model][example])
    assert (plan.threads, plan.threads_source) == (2, "cpu limit")
    if plan.fits:  # one more slot would not fit, unless the cap stopped it
        more = plan.need_bytes + plan.kv_slot_bytes
        assert plan.slots == sizing.MAX_AUTO_SLOTS or more > LIMITS[example]
    else:
        with pytest.raises(DoesNotFit, match="lower SLOTS or N_CTX"):
            plan.check()


def test_figures(headers):
    """The arithmetic behind DERIVED, uncapped: 0.5B in 1 GiB holds 10 slots, 8B in 8 GiB 6."""
    half, eight = (sizing.read_shape(headers[n]) for n in ("qwen2.5-0.5b", "llama-3.1-8b"))
    mib = 1024 * 1024
    assert RUNTIME_OVERHEAD_BYTES == 160 * mib
    assert sizing.fit_slots(weights_bytes=half.file_bytes, kv_slot_bytes=48 * mib,
                            memory_bytes=1 * GI, most=64) == (1024 * mib - half.file_bytes
                                                               - 160 * mib) // (48 * mib) == 10
    assert sizing.fit_slots(weights_bytes=eight.file_bytes, kv_slot_bytes=512 * mib,
                            memory_bytes=8 * GI, most=64) == 6
    line = sizing.plan(eight, n_ctx=N_CTX, limits=sizing.Limits(8 * GI, 4.0),
                       machine=8).explain()
    assert line == ("SLOTS 4 (derived), N_THREADS 4 (cpu limit): weights 4688 MiB + 4 x KV "
                    "512.0 MiB (4096 tokens) + runtime 160 MiB = 6896 MiB of cgroup memory "
                    "8192 MiB")


def test_explicit_settings_win(headers):
    eight = sizing.read_shape(headers["llama-3.1-8b"])
    plan = sizing.plan(eight, n_ctx=N_CTX, slots=8, threads=3,
                       limits=sizing.Limits(8 * GI, 4.0), machine=8)
    assert (plan.slots, plan.slots_source, plan.threads, plan.threads_source) == (
        8, "SLOTS", 3, "N_THREADS")
    assert not plan.fits  # 8 x 512 MiB beside 4.6 GiB of weights: the load fails, explained
    with pytest.raises(DoesNotFit, match="8 slots x 4096 tokens"):
        plan.check()


def test_no_limits_use_the_machine(headers):
    half = sizing.read_shape(headers["qwen2.5-0.5b"])
    plan = sizing.plan(half, n_ctx=N_CTX, limits=sizing.Limits(None, None), machine=6,
                       machine_mem=500 * 1024 * 1024)
    assert (plan.threads, plan.threads_source, plan.memory_source) == (6, "machine", "machine")
    assert plan.slots == 1 and not plan.fits
    plan.check()  # a machine's RAM is not a limit to refuse a load for: only a cgroup's


def test_threads_for_cpu_limits():
    assert sizing.threads_for(1.5, 8) == 2
    assert sizing.threads_for(2.0, 8) == 2
    assert sizing.threads_for(0.25, 8) == 1
    assert sizing.threads_for(16.0, 4) == 4  # never more than the CPUs it may run on
    assert sizing.threads_for(None, 4) == 4


def test_cgroup_v2(tmp_path):
    (tmp_path / "memory.max").write_text(f"{2 * GI}\n")
    (tmp_path / "cpu.max").write_text("150000 100000\n")
    assert sizing.Limits.detect(tmp_path) == sizing.Limits(2 * GI, 1.5)
    (tmp_path / "memory.max").write_text("max\n")
    (tmp_path / "cpu.max").write_text("max 100000\n")
    assert sizing.Limits.detect(tmp_path) == sizing.Limits(None, None)


def test_cgroup_v1_and_none(tmp_path):
    (tmp_path / "memory").mkdir()
    (tmp_path / "cpu").mkdir()
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{GI}\n")
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("200000\n")
    (tmp_path / "cpu" / "cpu.cfs_period_us").write_text("100000\n")
    assert sizing.Limits.detect(tmp_path) == sizing.Limits(GI, 2.0)
    (tmp_path / "cpu" / "cpu.cfs_quota_us").write_text("-1\n")
    (tmp_path / "memory" / "memory.limit_in_bytes").write_text(f"{1 << 63}\n")
    assert sizing.Limits.detect(tmp_path) == sizing.Limits(None, None)
    assert sizing.Limits.detect(tmp_path / "absent") == sizing.Limits(None, None)


def test_not_a_gguf(tmp_path):
    bad = tmp_path / "x.gguf"
    bad.write_bytes(b"not a model at all, not at all")
    with pytest.raises(sizing.NotGGUF, match="GGUF magic"):
        sizing.read_shape(bad)


def test_reader_agrees_with_llama_cpp_on_smollm2():
    """The header reader and llama.cpp's loader give SmolLM2-135M the same shape."""
    import llama_cpp
    from llama_cpp import _internals as internals

    from scripts.model_files import smollm2_path

    path = str(smollm2_path())
    shape = sizing.read_shape(path)
    llm = internals.LlamaModel(path_model=path, params=internals.LlamaModel.default_params(),
                               verbose=False)
    try:
        m = llm.model
        assert (shape.n_layer, shape.n_head, shape.n_head_kv, shape.n_embd) == (
            llama_cpp.llama_model_n_layer(m), llama_cpp.llama_model_n_head(m),
            llama_cpp.llama_model_n_head_kv(m), llama_cpp.llama_model_n_embd(m))
    finally:
        llm.close()
    assert shape.kv_bytes_per_token() == 23_040


def test_per_layer_kv_heads_and_value_length(tmp_path):
    """Architectures with KV heads per layer (an array) or V heads of another size."""
    import gguf

    path = tmp_path / "odd.gguf"
    w = gguf.GGUFWriter(path, "llama")
    w.add_block_count(3)
    w.add_embedding_length(256)
    w.add_head_count(4)
    w.add_head_count_kv([2, 4, 0])
    w.add_key_length(64)
    w.add_value_length(32)
    w.add_context_length(1024)
    w.add_token_list([f"t{i}" for i in range(2000)])  # a long array is skipped
    w.write_header_to_file()
    w.write_kv_data_to_file()
    w.close()
    shape = sizing.read_shape(path)
    assert (shape.n_layer, shape.n_head_kv, shape.head_dim, shape.head_dim_v) == (3, 4, 64, 32)
    assert shape.kv_bytes_per_token() == (2 + 4 + 0) * (64 + 32) * 2


def test_fits_exactly_and_not_one_byte_less():
    """need = weights + SLOTS x KV + runtime: a limit of exactly that fits, one byte less not."""
    mib = 1024 * 1024
    shape = sizing.ModelShape(arch="llama", n_layer=30, n_embd=576, n_head=9, n_head_kv=3,
                              head_dim=64, n_ctx_train=8192, file_bytes=94 * mib)
    assert shape.kv_bytes_per_token() == 23_040  # SmolLM2-135M's
    need = 94 * mib + 4 * 23_040 * 2048 + RUNTIME_OVERHEAD_BYTES
    exact = sizing.plan(shape, n_ctx=2048, slots=4, limits=sizing.Limits(need, 1.0), machine=2)
    assert exact.need_bytes == need and exact.fits
    exact.check()
    short = sizing.plan(shape, n_ctx=2048, slots=4, limits=sizing.Limits(need - 1, 1.0),
                        machine=2)
    with pytest.raises(DoesNotFit) as err:
        short.check()
    assert "weights 94 MiB + KV cache 180 MiB + runtime 160 MiB" in str(err.value)
    assert sizing.plan(shape, n_ctx=2048, limits=sizing.Limits(need - 1, 1.0),
                       machine=2).slots == 3  # derived: one slot fewer

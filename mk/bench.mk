# Benchmarks (not part of `make test`): our functions vs llama.cpp's llama-server (single
# requests, CPU contention, concurrent streams), cold start, portable vs native llama.cpp build.
# Results: docs/benchmarks.md, raw JSON in .state/bench/.
# Long-running; the machine should be otherwise idle. Extra flags: BENCH_ARGS="--runs 9".
.PHONY: bench bench-generate bench-coldstart bench-portable bench-contention bench-concurrency \
        bench-sizes bench-aggregate bench-memory-limit bench-deps bench-protocol-libs \
        llama-server portable-wheel

LLAMA_SERVER := $(STATE)/llama.cpp/build/bin/llama-server
BENCH_ARGS ?=
# Benchmark-only packages (matplotlib for the plots), installed into the venv once per pin change.
BENCH_STAMP := $(VENV)/.bench-requirements.stamp

bench: bench-generate bench-coldstart bench-portable bench-contention bench-concurrency

bench-deps: $(BENCH_STAMP)

$(BENCH_STAMP): bench/requirements.txt $(VENV_STAMP)
	$(PIP) install -r bench/requirements.txt
	touch $@

# llama-server from the llama.cpp that llama-cpp-python vendors (same flags as the pip build).
llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): scripts/build_llama_server.sh
	bash scripts/build_llama_server.sh

# The portable wheel (as functions/Containerfile builds it) in .state/venv-portable; idempotent.
portable-wheel:
	bash scripts/build_portable_wheel.sh

bench-generate: venv $(LLAMA_SERVER)
	$(PY) bench/bench_generate.py $(BENCH_ARGS)

bench-coldstart: venv services bench-deps vendor $(LLAMA_SERVER)
	$(PY) bench/bench_coldstart.py $(BENCH_ARGS)

bench-portable: venv portable-wheel
	$(PY) bench/bench_portable.py $(BENCH_ARGS)

# p50/p95/p100 latency, quiet and with a CPU hog on one core (optionally a cgroup CPU quota),
# e.g. BENCH_ARGS="--variants passive,active --cgroup-quota 1".
bench-contention: venv $(LLAMA_SERVER)
	$(PY) bench/bench_contention.py $(BENCH_ARGS)

# 1, 2, 4, 8 concurrent SSE streams vs llama-server -np N -kvu; writes docs/img/bench-concurrency.png.
bench-concurrency: venv bench-deps $(LLAMA_SERVER)
	$(PY) bench/bench_concurrency.py $(BENCH_ARGS)

# Model sizes 0.5B-8B (synthetic GGUFs of real shapes, made under .state/models on first use):
# decode, aggregate, TTFT, RSS, KV, cold start, ours vs llama-server -np 8 -kvu; fills the
# measured columns of deploy/examples/sizing.json and docs/deploy.md. 53 min on 2 cores (docs/benchmarks.md);
# a reduced run: BENCH_ARGS="--sizes qwen2.5-0.5b --quick".
bench-sizes: venv services bench-deps vendor $(LLAMA_SERVER)
	$(PY) bench/bench_sizes.py $(BENCH_ARGS)

# Aggregate tok/s at 4 and 8 streams, 2 threads, as deployed: SmolLM2 (SLOTS 4, and 8) and the
# 0.5B example vs llama-server -np 8 -kvu, in one run; writes docs/img/bench-aggregate.png.
bench-aggregate: venv bench-deps vendor $(LLAMA_SERVER)
	$(PY) bench/bench_aggregate.py $(BENCH_ARGS)

# Each sizing example under its own memory limit (a cgroup: needs root): peak, OOM kills.
bench-memory-limit: venv vendor
	$(PY) bench/bench_memory_limit.py $(BENCH_ARGS)

# msgspec vs pydantic v2: import + declare once per pod, decode per request (docs/architecture.md
# "Protocol types").
bench-protocol-libs: venv
	$(PY) bench/protocol_libs.py $(BENCH_ARGS)

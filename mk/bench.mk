# Benchmarks (not part of `make test`): our functions vs llama.cpp's llama-server, cold start,
# portable vs native llama.cpp build. Results: docs/benchmarks.md, raw JSON in .state/bench/.
# Long-running; the machine should be otherwise idle. Extra flags: BENCH_ARGS="--runs 9".
.PHONY: bench bench-generate bench-coldstart bench-portable llama-server portable-wheel

LLAMA_SERVER := $(STATE)/llama.cpp/build/bin/llama-server
BENCH_ARGS ?=

bench: bench-generate bench-coldstart bench-portable

# llama-server from the llama.cpp that llama-cpp-python vendors (same flags as the pip build).
llama-server: $(LLAMA_SERVER)

$(LLAMA_SERVER): scripts/build_llama_server.sh
	bash scripts/build_llama_server.sh

# The portable wheel (as functions/Containerfile builds it) in .state/venv-portable; idempotent.
portable-wheel:
	bash scripts/build_portable_wheel.sh

bench-generate: venv $(LLAMA_SERVER)
	$(PY) bench/bench_generate.py $(BENCH_ARGS)

bench-coldstart: venv services $(LLAMA_SERVER)
	$(PY) bench/bench_coldstart.py $(BENCH_ARGS)

bench-portable: venv portable-wheel
	$(PY) bench/bench_portable.py $(BENCH_ARGS)

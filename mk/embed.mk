# embed: benchmark (docs/embeddings.md "Performance").
# OMP_WAIT_POLICY=passive: llama.cpp's OpenMP threads sleep instead of spinning between calls,
# so they do not steal the CPU from the HTTP threads (2 cores); every contender gets the same.
.PHONY: bench bench-embed

bench: bench-embed

bench-embed: venv models vendor
	OMP_WAIT_POLICY=passive $(PY) bench/bench_embed.py --out $(STATE)/bench/embed.json

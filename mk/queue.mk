# queue-proxy overhead (issue 20): generate and embed direct vs through Knative's real
# queue-proxy, alternated request by request; docs/benchmarks.md "queue-proxy overhead".
# Needs root (each pod gets its own network namespace: scripts/knative_pod.py).
.PHONY: bench-queue-proxy

bench-queue-proxy: venv services models vendor knative
	$(PY) bench/bench_queue_proxy.py $(BENCH_ARGS)

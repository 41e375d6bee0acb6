# The audit function (included by the top-level Makefile; docs/audit.md explains it).
#   make test-audit    its unit, end-to-end and reliability tests (real FerretDB)
#   make bench-audit   ingest events/s and /kpis latency on 100k documents (bounded)
#   make audit-rebuild recompute the KPI rollups from the stored events (audit stopped;
#                      MONGODB_URI / MONGODB_DATABASE from the environment)
AUDIT_BENCH_ARGS ?=

.PHONY: test-audit bench-audit bench audit-rebuild

test-audit: venv services vendor
	$(VENV)/bin/pytest -q functions/audit/tests tests/test_audit_e2e.py tests/test_audit_reliability.py \
	  tests/test_audit_rollups.py tests/test_stack_e2e.py

bench-audit: venv services vendor
	$(PY) bench/bench_audit.py $(AUDIT_BENCH_ARGS)

bench: bench-audit

audit-rebuild: venv vendor
	cd functions/audit && ../../$(PY) -m function.rebuild

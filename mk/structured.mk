# Structured outputs (issue 22), not part of `make test`: docs/structured.md.
# bench-structured: generate's json_schema vs the same prompts unconstrained (1 and 4 streams)
# and vs llama-server's json_schema, compile time across JSONSchemaBench; plot and raw JSON.
# bench-structured-engines: llguidance vs XGrammar vs today's GBNF converter on the sample,
# without a model; XGrammar pulls torch, so those two run in a venv of their own (without the
# project installed: `-m` from the root imports bench/ and its stdlib-only scripts/ helpers).
.PHONY: bench-structured bench-structured-engines

ENGINES_VENV := $(STATE)/venv-engines
ENGINES_STAMP := $(ENGINES_VENV)/.requirements.stamp

bench-structured: venv models bench-deps $(LLAMA_SERVER)
	$(PY) bench/bench_structured.py $(BENCH_ARGS)

$(ENGINES_STAMP): bench/requirements-engines.txt
	$(PYTHON) -m venv $(ENGINES_VENV)
	$(ENGINES_VENV)/bin/pip install -r bench/requirements-engines.txt
	touch $@

bench-structured-engines: venv models $(ENGINES_STAMP)
	$(ENGINES_VENV)/bin/python -m bench.structured_engines --engines llguidance,xgrammar $(BENCH_ARGS)
	$(PY) bench/structured_engines.py --engines gbnf $(BENCH_ARGS)
	$(PY) bench/structured_engines.py --report

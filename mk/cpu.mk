# Kernel agreement on every CPU variant of the portable llama.cpp build this CPU can run:
# tests/test_kernel_agreement.py once per libggml-cpu-<variant>.so, each in its own process
# (scripts/cpu_variants.py). The portable venv (scripts/build_portable_wheel.sh, long the
# first time, installs llmfn and llmfn-dev there without their dependencies) gets the pytest of
# requirements.txt. Not part of `make test`.
.PHONY: test-cpu-variants

PORTABLE_PY := $(STATE)/venv-portable/bin/python

test-cpu-variants: venv models
	test -x $(PORTABLE_PY) || bash scripts/build_portable_wheel.sh
	$(PORTABLE_PY) -c 'import pytest' 2>/dev/null || \
	  $(PORTABLE_PY) -m pip install --quiet "$$(grep -E '^pytest==' requirements.txt)"
	$(PORTABLE_PY) -m pip show --quiet llmfn-dev 2>/dev/null || \
	  $(PORTABLE_PY) -m pip install --quiet --no-deps -e ./llmfn -e .
	$(PY) scripts/cpu_variants.py --python $(PORTABLE_PY)

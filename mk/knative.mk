# Knative's own parts, run locally (included by the top-level Makefile; docs/deploy.md
# "Tested against real Knative parts").
#   make knative             the Knative binaries of ../shared/knative into .state/bin (func,
#                            queue, kn-validate-serving, kn-validate-eventing); `make test` runs it
#   make test-knative        only the tests against them (tests/test_knative_*.py)
#   make wheelhouse          .state/wheelhouse: the wheels func's host builds install offline
#   make func-run-generate   generate run by the real func CLI (`func run --builder=host`)
#   make func-run-embed      against MinIO/FerretDB, local values given with -e; Ctrl-C stops
#   make func-run-audit      (scripts/func_run.py)
KNATIVE_DIR := ../shared/knative
KNATIVE_STAMP := $(STATE)/bin/.knative.stamp
WHEELHOUSE_STAMP := $(STATE)/wheelhouse/.stamp

.PHONY: knative test-knative wheelhouse func-run-generate func-run-embed func-run-audit

knative: $(KNATIVE_STAMP)

# install.sh is idempotent (keeps a binary whose sha256 matches); the stamp skips even that
# until SHA256SUMS changes or a binary is gone.
$(KNATIVE_STAMP): $(KNATIVE_DIR)/SHA256SUMS
	bash $(KNATIVE_DIR)/install.sh $(STATE)/bin
	touch $@
ifneq ($(wildcard $(KNATIVE_STAMP)),)
ifneq ($(words $(wildcard $(addprefix $(STATE)/bin/,func queue kn-validate-serving kn-validate-eventing))),4)
.PHONY: $(KNATIVE_STAMP)
endif
endif

test-knative: venv services models vendor knative
	$(TEST_ENV) $(VENV)/bin/pytest -q $(wildcard tests/test_knative_*.py)

# scripts/func_run.py checks its own stamp (the constraints files): the tests build it the same way.
wheelhouse: venv
	$(PY) scripts/func_run.py --wheelhouse

func-run-generate func-run-embed func-run-audit: func-run-%: venv services models vendor knative
	$(PY) scripts/func_run.py $*

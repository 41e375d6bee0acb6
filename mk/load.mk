# The load suite (included by the top-level Makefile; docs/load.md explains it). Not part of
# `make test` (only its 20 s smoke run is: tests/test_load_smoke.py); bounded in time.
#   make load PROFILE=load|stress|spike|soak   locust, headless, against the `make run` stack
#                                              (the running one, else scripts/run.py on free
#                                              ports); writes docs/load.md and docs/img/load-*.png
# Profiles (load/profiles.py): load 5 users 2 min, stress up to 20 users 3 min, spike 30 users
# 50 s, soak 5 users 12 min. Raw CSVs and per-request records: .state/load/<profile>/.
PROFILE ?= load
LOAD_ARGS ?=

.PHONY: load

load: venv bench-deps services models vendor
	$(PY) load/run_load.py --profile $(PROFILE) $(LOAD_ARGS)

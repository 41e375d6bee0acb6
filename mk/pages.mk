# The pages (included by the top-level Makefile; docs/pages.md explains them).
#   make test-tools   Debian's chromium and promtool (scripts/install_browser.sh), which
#                     `make test` installs first
#   make test-pages   the browser test of the pages and the Grafana/Prometheus checks
.PHONY: test-tools test-pages

test-tools:
	bash scripts/install_browser.sh

test-pages: venv services models vendor test-tools
	$(TEST_ENV) $(VENV)/bin/pytest -q llmfn/tests/test_pages_routes.py tests/test_pages.py \
	  tests/test_grafana.py

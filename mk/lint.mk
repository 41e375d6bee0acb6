# Lint and types (included by the top-level Makefile; `make test` runs it before the tests):
#   make lint   ruff (pyflakes, pycodestyle, import order, bugbear, pyupgrade) over the whole
#               tree, then mypy on llmfn and on each function's `function` package; both are
#               configured in the root pyproject.toml and pinned in requirements.lock
# The three packages are all named `function`, so mypy runs once per function, from its folder,
# with a cache of its own (.state/mypy/<name>), started as a copy of llmfn's so the libraries
# both import are analysed once. llmfn is checked from llmfn/src, never from a function's
# vendored copy (the root pyproject's mypy_path).
.PHONY: lint

MYPY_CACHE := $(CURDIR)/$(STATE)/mypy

lint: venv
	$(VENV)/bin/ruff check --quiet .
	$(VENV)/bin/mypy --cache-dir $(MYPY_CACHE)/llmfn llmfn/src/llmfn
	for fn in $(FUNCTIONS); do \
	  cache="$(MYPY_CACHE)/$$(basename "$$fn")"; \
	  test -d "$$cache" || cp -R $(MYPY_CACHE)/llmfn "$$cache"; \
	  (cd "$$fn" && $(CURDIR)/$(VENV)/bin/mypy --config-file $(CURDIR)/pyproject.toml \
	    --cache-dir "$$cache" function); \
	done

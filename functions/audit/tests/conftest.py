"""Load this folder's `function` package as `audit_function`.

`make test` runs each function's tests in a pytest process of its own, but every function folder
has a package named `function`, and `tests/test_audit_e2e.py` imports audit's beside the root
tree's, so the audit package is imported under a unique name everywhere.
"""
from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

AUDIT_DIR = Path(__file__).resolve().parents[1]


def _load(name: str = "audit_function"):
    if name in sys.modules:
        return sys.modules[name]
    pkg = AUDIT_DIR / "function"
    spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py",
                                                  submodule_search_locations=[str(pkg)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_load()

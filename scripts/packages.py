"""A function's ``function`` package under a unique name, beside the others in one process.

Every function folder has a top-level package named ``function`` (func requires it), so the
root test tree (and audit's own tests, params_table.py, the structured benchmark) import it as
``<function>_function``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def load_package(function: str, submodules: tuple[str, ...] = (), *, root: Path = ROOT):
    """``functions/<function>/function`` of the tree at ``root`` (this one unless a benchmark
    names another checkout) as ``<function>_function``, with ``submodules``; the first load
    in a process is the one kept."""
    name = f"{function}_function"
    if name not in sys.modules:
        pkg = root / "functions" / function / "function"
        spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    for sub in submodules:
        importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]

"""A function's ``function`` package under a unique name, beside the others in one process.

Every function folder has a top-level package named ``function`` (func requires it), so the
root test tree (and audit's own tests) import it as ``<function>_function``.
"""
from __future__ import annotations

import importlib
import importlib.util
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def load_package(function: str, submodules: tuple[str, ...] = ()):
    """``functions/<function>/function`` as ``<function>_function``, with ``submodules``."""
    name = f"{function}_function"
    if name not in sys.modules:
        pkg = ROOT / "functions" / function / "function"
        spec = importlib.util.spec_from_file_location(name, pkg / "__init__.py",
                                                      submodule_search_locations=[str(pkg)])
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    for sub in submodules:
        importlib.import_module(f"{name}.{sub}")
    return sys.modules[name]

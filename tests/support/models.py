"""Model files the tests use, made by the project's scripts when missing (as `make models` does)."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]


def model_file(name: str, script: str, timeout_s: float = 600) -> Path:
    """``.state/models/<name>``, written by ``scripts/<script> --out`` if it does not exist."""
    path = ROOT / ".state" / "models" / name
    if not path.exists():
        subprocess.run([sys.executable, str(ROOT / "scripts" / script), "--out", str(path)],
                       check=True, timeout=timeout_s)
    return path


def upload_function_models(minio) -> None:
    """Put generate's and embed's weights into MinIO where `make run` puts them."""
    from scripts import run
    run.upload_models(minio.client(), {
        run.FUNCTIONS["generate"][2]: run.smollm2_path(),
        run.FUNCTIONS["embed"][2]: model_file(run.FUNCTIONS["embed"][2], "convert_minilm.py")})

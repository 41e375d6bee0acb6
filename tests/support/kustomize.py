"""`kustomize build` with the real binary, installed into .state/bin/ by scripts/install_services.sh
(`make services`, which `make test` runs first; the version is pinned there).

A missing binary fails the calling test (it never skips): the manifests would go unchecked.
"""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
KUSTOMIZE = ROOT / ".state" / "bin" / "kustomize"
TIMEOUT_S = 120


class BuildError(Exception):
    """`kustomize build` exited non-zero; the message is its stderr."""


def binary() -> Path:
    """The kustomize binary, or a test failure that says how to install it."""
    if not (KUSTOMIZE.is_file() and KUSTOMIZE.stat().st_mode & 0o111):
        pytest.fail(f"{KUSTOMIZE.relative_to(ROOT)} is missing: run `make services` "
                    "(scripts/install_services.sh go-installs the pinned kustomize)",
                    pytrace=False)
    return KUSTOMIZE


def build(kdir: Path) -> list[dict]:
    """The objects `kustomize build kdir` renders (empty documents dropped), or BuildError."""
    proc = subprocess.run([str(binary()), "build", str(kdir)], capture_output=True, text=True,
                          timeout=TIMEOUT_S)
    if proc.returncode != 0:
        raise BuildError(f"kustomize build {kdir} exited {proc.returncode}:\n{proc.stderr}")
    return [d for d in yaml.safe_load_all(proc.stdout) if d is not None]

"""The dev package llmfn-dev (root pyproject.toml): its parts import one way, none edits sys.path.

scripts/ is the base (the local stack, model files, `make run`); tests/support and load/ build
on it, bench/ on scripts and tests/support. A cycle would make `python scripts/x.py` import test
helpers, and a path edit would hide a module that only imports from one working directory.
"""
from __future__ import annotations

import ast
import re
import subprocess
import tomllib
from pathlib import Path

import pytest

from scripts.procs import REPO_ROOT as ROOT

# each part of the package -> the other parts it may import
ALLOWED = {"scripts": set(), "tests.support": {"scripts"}, "load": {"scripts"},
           "bench": {"scripts", "tests.support"}}
SYS_PATH_EDIT = re.compile(r"sys\.path\s*(\.(insert|append|extend)\b|\[.*\]\s*=|\s*[+]?=)")


def part_of(module: str) -> str | None:
    return next((p for p in ALLOWED if module == p or module.startswith(p + ".")), None)


def imported(path: Path) -> set[str]:
    """Every absolute module name ``path`` imports, at any depth (function-local imports too)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            names.update(a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            names.add(node.module)
            names.update(f"{node.module}.{a.name}" for a in node.names)
    return names


def tracked(*patterns: str) -> list[Path]:
    out = subprocess.run(["git", "ls-files", "--", *patterns], cwd=ROOT, capture_output=True,
                         text=True, check=True).stdout.split()
    return [ROOT / name for name in out if (ROOT / name).exists()]


def test_pyproject_declares_the_parts():
    with open(ROOT / "pyproject.toml", "rb") as f:
        project = tomllib.load(f)
    assert project["project"]["name"] == "llmfn-dev"
    assert sorted(project["tool"]["setuptools"]["packages"]) == sorted(ALLOWED)


@pytest.mark.parametrize("part", sorted(ALLOWED))
def test_imports_go_one_way(part):
    files = tracked(part.replace(".", "/") + "/*.py")
    assert files
    wrong = sorted({f"{p.relative_to(ROOT)} imports {m}" for p in files for m in imported(p)
                    if part_of(m) not in (None, part, *ALLOWED[part])})
    assert wrong == []


def test_no_tracked_file_edits_sys_path():
    edits = [f"{p.relative_to(ROOT)}:{n}" for p in tracked("*.py", "*.sh", "*.mk", "Makefile")
             for n, line in enumerate(p.read_text(errors="replace").splitlines(), 1)
             if SYS_PATH_EDIT.search(line)]
    assert edits == []
    assert "pythonpath" not in (ROOT / "pytest.ini").read_text()

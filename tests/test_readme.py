"""README.md stays true: every setting is in its configuration table, with its default."""
from __future__ import annotations

import re

import config_table  # scripts/config_table.py
from llmfn.settings import describe
from procs import REPO_ROOT as ROOT  # scripts/procs.py


def test_every_setting_is_documented_with_its_default():
    readme = (ROOT / "README.md").read_text()
    missing = []
    for _title, cls in config_table.sections():
        for key, default, _doc in describe(cls):
            row = next((line for line in readme.splitlines() if line.startswith(f"| `{key}` |")),
                       None)
            if row is None or (default not in ("", None) and f"`{default}`" not in row):
                missing.append(key)
    assert not missing, f"README configuration table is stale: {missing}"


def test_readme_names_the_make_targets_that_exist():
    readme = (ROOT / "README.md").read_text()
    makefile = (ROOT / "Makefile").read_text() + "".join(
        p.read_text() for p in (ROOT / "mk").glob("*.mk"))
    def defined(target: str) -> bool:
        return re.search(rf"^{re.escape(target)}\s*:", makefile, re.M) is not None

    assert not defined("no-such-target")
    for target in ("run", "test", "bench", "deploy", "undeploy", "vendor", "bench-contention",
                   "bench-concurrency", "test-cpu-variants", "load", "lock"):
        assert f"make {target}" in readme, target
        assert defined(target), target

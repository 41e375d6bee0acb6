"""audit's own tests import its `function` package as `audit_function` (tests/support/audit.py).

`make test` runs them in a pytest process of their own, from this folder.
"""
from __future__ import annotations

import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[3]
sys.path.insert(0, str(ROOT))

from tests.support.audit import load_audit  # noqa: E402

load_audit()

"""audit's own tests import its `function` package as `audit_function` (tests/support/audit.py).

`make test` runs them in a pytest process of their own, from this folder (`python -m pytest`).
"""
from __future__ import annotations

from tests.support.audit import load_audit

load_audit()

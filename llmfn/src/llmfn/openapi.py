"""Each function's OpenAPI 3.1 document: its own file plus the parts every function shares.

A function's ``function/openapi.json`` describes its own routes and lists, under
``x-llmfn-include``, the shared path groups of ``openapi_common.json`` its app has: ``base``
(health, /metrics, /openapi.json, /docs: the base app's), ``models`` (/v1/models) and
``event-requests`` (``POST /``). The shared components (the OpenAI error shape, the error
responses, headers) are merged in, so each is written once. The base app serves the result at
``GET /openapi.json`` (:func:`attach`); each function's tests check it against the app's routes.
"""
from __future__ import annotations

import copy
import json
from pathlib import Path
from typing import Any

from flask import Flask

COMMON = Path(__file__).with_name("openapi_common.json")
INCLUDE = "x-llmfn-include"
GROUPS = "x-llmfn-paths"
EXTENSION_KEY = "llmfn.openapi"
"""``app.extensions`` key of the document the base app serves at ``/openapi.json``."""


def load(path: str | Path) -> dict[str, Any]:
    """The function's document at ``path`` with the shared path groups and components merged."""
    doc = json.loads(Path(path).read_text(encoding="utf-8"))
    common = json.loads(COMMON.read_text(encoding="utf-8"))
    paths: dict[str, dict] = {}
    for group in doc.pop(INCLUDE, []):
        _merge_paths(paths, copy.deepcopy(common[GROUPS][group]))
    _merge_paths(paths, doc.get("paths", {}))
    doc["paths"] = paths
    components = doc.setdefault("components", {})
    for section, items in common.get("components", {}).items():
        own = components.get(section, {})
        clash = set(own) & set(items)
        if clash:
            raise ValueError(f"{path}: components.{section} redefines shared {sorted(clash)}")
        components[section] = {**items, **own}
    return doc


def _merge_paths(into: dict[str, dict], paths: dict[str, dict]) -> None:
    for route, item in paths.items():
        have = into.setdefault(route, {})
        clash = set(have) & set(item)
        if clash:
            raise ValueError(f"{route}: {sorted(clash)} described twice")
        have.update(item)


def attach(app: Flask, path: str | Path) -> dict[str, Any]:
    """Serve the function's document (``path``, merged by :func:`load`) at ``/openapi.json``."""
    doc = load(path)
    app.extensions[EXTENSION_KEY] = doc
    return doc

"""A function's OpenAPI document held against its Flask app (each function's test_openapi.py).

Every route of the app (but ``static``) must be described, with each of its methods, and every
described operation must exist. The HTML pages (``text/html`` only: the playgrounds, /dashboard,
/docs) are added by other work: one the app does not have yet is tolerated and reported by
:func:`pages_missing`, and checked like any other route as soon as the app has it.
"""
from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

from openapi_spec_validator import validate

ROOT = Path(__file__).resolve().parents[2]
IGNORED_METHODS = {"HEAD", "OPTIONS"}
METHODS = ("get", "put", "post", "delete", "patch")


def app_operations(app) -> set[tuple[str, str]]:
    """(METHOD, /openapi/{path}) for every rule of ``app`` but ``static``."""
    ops = set()
    for rule in app.url_map.iter_rules():
        if rule.endpoint == "static":
            continue
        path = re.sub(r"<(?:[^:<>]+:)?([^<>]+)>", r"{\1}", rule.rule)
        ops.update((m, path) for m in rule.methods - IGNORED_METHODS)
    return ops


def document_operations(doc: dict) -> set[tuple[str, str]]:
    return {(m.upper(), path) for path, item in doc["paths"].items() for m in item
            if m in METHODS}


def is_page(doc: dict, method: str, path: str) -> bool:
    """An operation whose every answer is an HTML page."""
    responses = doc["paths"][path][method.lower()]["responses"].values()
    types = {t for r in responses for t in r.get("content", {})}
    return types == {"text/html"}


def pages_missing(app, doc: dict) -> set[tuple[str, str]]:
    """The described HTML pages the app does not serve (yet)."""
    return {op for op in document_operations(doc) - app_operations(app) if is_page(doc, *op)}


def check(app, doc: dict) -> None:
    """The document is valid OpenAPI 3.1 and describes exactly the app's routes."""
    assert doc["openapi"].startswith("3.1"), doc["openapi"]
    validate(doc)
    routes, described = app_operations(app), document_operations(doc)
    assert not routes - described, f"routes missing from openapi.json: {sorted(routes - described)}"
    extra = described - routes - pages_missing(app, doc)
    assert not extra, f"openapi.json describes routes the app does not have: {sorted(extra)}"
    for path, item in doc["paths"].items():
        for method, op in item.items():
            if method in METHODS:
                assert op.get("responses"), (method, path)


def protocol_of(function: str) -> ModuleType:
    """functions/<function>/function/protocol.py, loaded by path (it imports only llmfn and
    its sibling ``*_protocol`` modules): every function's package is named ``function``, and
    importing it would start its model fetch. It is loaded as a module of a stand-in package
    (no ``__init__`` run), so its relative imports of siblings work."""
    folder = ROOT / "functions" / function / "function"
    package = f"_protocol_{function}"
    if package not in sys.modules:
        stand_in = ModuleType(package)
        stand_in.__path__ = [str(folder)]
        sys.modules[package] = stand_in
    path = folder / "protocol.py"
    spec = importlib.util.spec_from_file_location(f"{package}.protocol", path)
    assert spec is not None and spec.loader is not None, path
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # msgspec reads the annotations in it
    spec.loader.exec_module(module)
    return module


def function_document(function: str) -> dict:
    """The function's document, regenerated from its protocol types."""
    from llmfn import openapi

    return openapi.function_document(protocol_of(function))


def served_document(app, function: str) -> dict:
    """The document ``app`` serves at /openapi.json, after checking it is the function's own
    (regenerated from its protocol types), valid, and describes exactly the app's routes."""
    r = app.test_client().get("/openapi.json")
    assert r.status_code == 200 and r.mimetype == "application/json"
    doc = r.get_json()
    assert doc == json.loads(json.dumps(function_document(function)))
    check(app, doc)
    return doc

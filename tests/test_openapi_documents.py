"""Each function's OpenAPI document is regenerated from its protocol types, and no hand-written
one is left (issue 21: no tracked OpenAPI JSON over 200 lines).

The document is checked here as a whole (valid OpenAPI 3.1, every reference resolves, every
operation answers with something and names its errors in OpenAI's shape); each function's own
tests/test_openapi.py holds it against the app's routes (url_map, both ways), and
tests/test_fuzz.py fuzzes each running function against it.
"""
from __future__ import annotations

import json
import subprocess

import pytest
from openapi_spec_validator import validate

from scripts.procs import REPO_ROOT as ROOT
from tests.support.openapi_routes import METHODS, function_document

FUNCTIONS = sorted(p.parts[-3] for p in (ROOT / "functions").glob("*/function/protocol.py"))
MAX_LINES = 200


def test_every_function_declares_its_protocol():
    assert FUNCTIONS == ["audit", "embed", "generate"]


def _refs(value):
    if isinstance(value, dict):
        for key, item in value.items():
            if key == "$ref" and isinstance(item, str):
                yield item
            else:
                yield from _refs(item)
    elif isinstance(value, list):
        for item in value:
            yield from _refs(item)


@pytest.mark.parametrize("function", FUNCTIONS)
def test_document_is_regenerated_from_the_types(function):
    doc = function_document(function)
    assert doc["openapi"] == "3.1.0"
    validate(doc)
    for ref in set(_refs(doc)):
        node = doc
        for part in ref.removeprefix("#/").split("/"):
            node = node[part]  # KeyError: a reference to nothing
    errors = doc["components"]["responses"]
    for path, item in doc["paths"].items():
        for method, op in item.items():
            assert method in METHODS and "200" in op["responses"], (method, path)
            for status, response in op["responses"].items():
                if status.startswith(("4", "5")) and "$ref" in response:
                    assert response["$ref"].rsplit("/", 1)[1] in errors
    assert doc == function_document(function)  # the same types, the same document


def test_no_hand_written_openapi_document_is_left():
    tracked = subprocess.run(["git", "ls-files", "*.json"], cwd=ROOT, check=True,
                             capture_output=True, text=True).stdout.split()
    big = []
    for name in tracked:
        text = (ROOT / name).read_text(encoding="utf-8")
        try:
            doc = json.loads(text)
        except ValueError:
            continue
        if isinstance(doc, dict) and ("openapi" in doc or "paths" in doc) and \
                text.count("\n") + 1 > MAX_LINES:
            big.append(name)
    assert not big, f"hand-written OpenAPI documents over {MAX_LINES} lines: {big}"

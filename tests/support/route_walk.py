"""Every route of a running function, from its OpenAPI document, for the start-up error tests
(tests/test_startup_errors.py, tests/test_knative_func_cli.py): a function whose settings cannot
be used answers every route, never with a 500, and its API answers name the variable."""
from __future__ import annotations

import re

import requests

from tests.support.openapi_routes import METHODS, function_document


def operations(function: str) -> list[tuple[str, str]]:
    """(METHOD, path) of every operation of the function's OpenAPI document (the one it serves
    at /openapi.json: its own paths and llmfn's shared ones), path parameters filled in."""
    doc = function_document(function)
    return sorted((m.upper(), re.sub(r"\{[^}]+\}", "x", path))
                  for path, item in doc["paths"].items() for m in item if m in METHODS)


def assert_every_route_answers(url: str, function: str, variable: str, *,
                               skip: tuple[str, ...] = ()) -> dict[str, int]:
    """Every operation (but the paths in ``skip``) answers, none with a 500; an API answer of
    503 is ``invalid_settings`` naming ``variable``. What each got, ``"GET /kpis": 503``."""
    got = {}
    for method, path in operations(function):
        if path in skip:
            continue
        r = requests.request(method, url + path, json={}, timeout=30)
        got[f"{method} {path}"] = r.status_code
        assert r.status_code != 500, (method, path, r.text)
        if r.status_code == 503 and not path.startswith("/health/"):
            err = r.json()["error"]
            assert err["code"] == "invalid_settings" and variable in err["message"], err
    assert 503 in got.values(), got
    return got

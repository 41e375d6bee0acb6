"""llmfn.openapi: a function's document merged with the shared parts, written once."""
import json

import pytest
from openapi_spec_validator import validate

from llmfn import openapi


def write(tmp_path, doc) -> str:
    path = tmp_path / "openapi.json"
    path.write_text(json.dumps(doc))
    return path


BASE = {"openapi": "3.1.0", "info": {"title": "t", "version": "1"}}


def test_shared_groups_and_components_are_merged(tmp_path):
    doc = openapi.load(write(tmp_path, {
        **BASE, "x-llmfn-include": ["base", "models", "event-requests"],
        "paths": {"/": {"get": {"responses": {"200": {"description": "page"}}}}},
        "components": {"schemas": {"Own": {"type": "object"}}}}))
    validate(doc)
    assert set(doc["paths"]["/"]) == {"get", "post"}  # the page beside the request events
    assert {"/v1/models", "/v1/models/{model}", "/health/readiness"} <= set(doc["paths"])
    assert {"Own", "Error"} <= set(doc["components"]["schemas"])
    assert not [k for k in doc if k.startswith("x-llmfn")]


@pytest.mark.parametrize("extra", [
    {"paths": {"/metrics": {"get": {"responses": {}}}}},
    {"components": {"schemas": {"Error": {}}}}])
def test_a_shared_part_is_not_redefined(tmp_path, extra):
    with pytest.raises(ValueError):
        openapi.load(write(tmp_path, {**BASE, "x-llmfn-include": ["base"], **extra}))

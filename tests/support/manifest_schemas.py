"""The schemas the manifest tests validate with: the Knative Serving/Eventing CRD
``openAPIV3Schema`` and the Kubernetes OpenAPI v3 schema of NetworkPolicy, made strict (a field the
API server would prune is an error here), our own statement of the func.yaml fields we use, and the
Knative annotation keys declared in the Serving source. scripts/fetch_schemas.sh fetches and caches
them (tests/support/manifest_fixtures.py)."""
from __future__ import annotations

import json
import re
from pathlib import Path

import jsonschema

from tests.support.manifests import load_docs

OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema):
    """A structural CRD schema as JSON schema where unknown fields fail instead of being pruned.

    Objects with ``properties`` get ``additionalProperties: false`` unless they carry
    ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` becomes
    integer-or-string.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: strict(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_validator(path: Path, version: str = "v1") -> jsonschema.protocols.Validator:
    crd = load_docs(path)[0]
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(ver["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind",
                                                                    "metadata"})
    api = f"{crd['spec']['group']}/{version}"
    schema["properties"]["apiVersion"] = {"const": api}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    return jsonschema.Draft7Validator(schema)


def openapi_validator(path: Path, schema_name: str, api: str,
                      kind: str) -> jsonschema.protocols.Validator:
    """A Kubernetes built-in kind from the OpenAPI v3 document of its group version (the
    kubernetes repo's api/openapi-spec/v3/), made strict like the CRDs (:func:`strict`)."""
    doc = json.loads(path.read_text())
    components = {name: strict(schema) for name, schema in doc["components"]["schemas"].items()}
    root = dict(components[schema_name])
    root["properties"] = {**root["properties"], "apiVersion": {"const": api},
                          "kind": {"const": kind}, "metadata": OBJECT_META}
    root["required"] = sorted(set(root.get("required", [])) | {"apiVersion", "kind", "metadata"})
    return jsonschema.Draft7Validator({**root, "components": {"schemas": components}})


def schema_errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]


def crd_errors(crds: dict, obj: dict) -> list[str]:
    validator = crds.get(obj.get("kind"))
    if validator is None:
        return [f"no CRD schema for kind {obj.get('kind')!r}"]
    return schema_errors(validator, obj)


# Our own statement of the func.yaml fields we use (knative/func pkg/functions types), checked
# always; the official schema is checked in addition whenever fetch_schemas.sh could get it.
_QTY = {"type": "string", "pattern": r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"}
_ENV = {"type": "object", "additionalProperties": False, "required": ["name", "value"],
        "properties": {"name": {"type": "string", "pattern": r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"},
                       "value": {"type": "string"}}}
FUNC_SUBSET_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["specVersion", "name", "runtime", "created"],
    "properties": {
        "specVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "runtime": {"enum": ["python"]},
        "created": {"type": "string", "format": "date-time"},
        "invoke": {"enum": ["http", "cloudevent"]},
        "build": {"type": "object", "additionalProperties": False, "properties": {
            "builder": {"enum": ["pack", "s2i"]},
            "builderImages": {"type": "object", "additionalProperties": {"type": "string"}},
            "buildEnvs": {"type": "array", "items": _ENV}}},
        "run": {"type": "object", "additionalProperties": False, "properties": {
            "envs": {"type": "array", "items": _ENV},
            "volumes": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["path"],
                "properties": {
                    "path": {"type": "string", "pattern": "^/"},
                    "emptyDir": {"type": "object", "additionalProperties": False, "properties": {
                        "medium": {"enum": ["", "Memory"]}, "sizeLimit": _QTY}},
                    "persistentVolumeClaim": {"type": "object"},
                    "secret": {"type": "string"}, "configMap": {"type": "string"}},
                "oneOf": [{"required": [k]} for k in
                          ("emptyDir", "persistentVolumeClaim", "secret", "configMap")]}}}},
        "deploy": {"type": "object", "additionalProperties": False, "properties": {
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "healthEndpoints": {"type": "object", "additionalProperties": False, "properties": {
                "liveness": {"type": "string"}, "readiness": {"type": "string"}}},
            "subscriptions": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["source"],
                "properties": {"source": {"type": "string"},
                               "filters": {"type": "object",
                                           "additionalProperties": {"type": "string"}}}}},
            "options": {"type": "object", "additionalProperties": False, "properties": {
                "scale": {"type": "object", "additionalProperties": False, "properties": {
                    "min": {"type": "integer", "minimum": 0},
                    "max": {"type": "integer", "minimum": 0},
                    "metric": {"enum": ["concurrency", "rps"]},
                    "target": {"type": "number", "minimum": 0},
                    "utilization": {"type": "number", "minimum": 1, "maximum": 100}}},
                "resources": {"type": "object", "additionalProperties": False, "properties": {
                    "requests": {"type": "object", "additionalProperties": False,
                                 "properties": {"cpu": _QTY, "memory": _QTY}},
                    "limits": {"type": "object", "additionalProperties": False, "properties": {
                        "cpu": _QTY, "memory": _QTY,
                        "concurrency": {"type": "integer", "minimum": 0}}}}}}}}},
    },
}


def func_subset_errors(doc) -> list[str]:
    v = jsonschema.Draft7Validator(FUNC_SUBSET_SCHEMA,
                                   format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return schema_errors(v, doc)


_KEY_CONST = re.compile(r'^\s*(\w+)\s*=\s*(?:"([\w.]*)"\s*\+\s*)?GroupName\s*\+\s*"(/[^"]+)"',
                        re.M)


def annotation_keys(serving_dir: Path) -> set[str]:
    """Annotation keys declared as constants in knative.dev/serving
    pkg/apis/{autoscaling,serving}."""
    keys = set()
    for fname, group in (("autoscaling_register.go", "autoscaling.knative.dev"),
                         ("serving_register.go", "serving.knative.dev")):
        for _, prefix, suffix in _KEY_CONST.findall((serving_dir / fname).read_text()):
            keys.add(f"{prefix or ''}{group}{suffix}")
    assert "autoscaling.knative.dev/initial-scale" in keys, "register.go parsing broke"
    assert "serving.knative.dev/progress-deadline" in keys, "register.go parsing broke"
    return keys

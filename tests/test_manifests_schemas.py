"""The rendered objects (and the RequestReply example) and func.yaml against their schemas: the
Knative Serving/Eventing CRD ``openAPIV3Schema`` (made strict: a field the API server would
prune is an error here) and knative/func's ``func_yaml-schema.json``, fetched and cached by
``scripts/fetch_schemas.sh``, plus our own statement of the func.yaml fields we use. Each schema
rejects deliberately broken copies."""
from __future__ import annotations

import copy

import pytest

from tests.support.manifest_schemas import crd_errors, func_subset_errors, schema_errors
from tests.support.manifests import (
    FUNCTIONS,
    REQUESTREPLY_YAML,
    ksvc_copy,
    ksvcs,
    load_docs,
    load_func,
    of_kind,
)

pytest_plugins = ("tests.support.manifest_fixtures",)


def test_rendered_objects_match_crd_schemas(crds, deploy_objs, eventing_objs):
    for obj in deploy_objs + eventing_objs:
        assert crd_errors(crds, obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
    assert sorted(ksvcs(deploy_objs)) == sorted(FUNCTIONS)


def test_separately_applied_eventing_objects_match_crd_schemas(crds):
    """eventing/examples/requestreply.yaml against the RequestReply CRD (v1alpha1) of the
    pinned Eventing; the feature flag ConfigMap has its own rule (test_manifests_eventing)."""
    (rr,) = load_docs(REQUESTREPLY_YAML)
    assert crd_errors(crds, rr) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml_matches_official_schema(func_schema, name):
    validator, reason = func_schema
    if validator is None:
        pytest.skip(f"official func.yaml schema unavailable ({reason}); set FUNC_SCHEMA_JSON "
                    "to a local copy of schema/func_yaml-schema.json to check it")
    assert schema_errors(validator, load_func(name)) == []


@pytest.mark.parametrize("breakage, expect", [
    (lambda s: s["spec"]["template"]["spec"]["containers"][0].update(portz=[]), "portz"),
    (lambda s: s["spec"]["template"]["spec"].update(containerConcurrency="one"), "not of type"),
    (lambda s: s["spec"]["template"]["spec"].update(timeoutSecond=600), "timeoutSecond"),
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
        httpGet={"path": 5}), "not of type"),
    (lambda s: s["metadata"].update(name="Generate"), "does not match"),
    (lambda s: s.update(apiVersion="serving.knative.dev/v2"), "serving.knative.dev/v1"),
])
def test_crd_schema_rejects_broken_service(crds, deploy_objs, breakage, expect):
    svc = ksvc_copy(deploy_objs)
    breakage(svc)
    errors = crd_errors(crds, svc)
    assert any(expect in e for e in errors), errors


@pytest.mark.parametrize("kind, breakage, expect", [
    ("Trigger", lambda t: t["spec"]["filters"][0].update(prefx={"type": "x"}), "prefx"),
    ("Trigger", lambda t: t["spec"]["delivery"].update(retry="five"), "not of type"),
    ("Broker", lambda b: b["spec"].update(delivery={"retry": "x"}) if "spec" in b
     else b.update(spec={"delivery": {"retry": "x"}}), "not of type"),
    ("SinkBinding", lambda s: s["spec"].update(sinc={}), "sinc"),
    ("RequestReply", lambda r: r["spec"].update(timeOut="PT6M"), "timeOut"),
    ("RequestReply", lambda r: r["spec"]["brokerRef"].update(nam="llmfn"), "nam"),
    ("RequestReply", lambda r: r["spec"].update(timeout=360), "not of type"),
    ("RequestReply", lambda r: r.update(apiVersion="eventing.knative.dev/v1"), "v1alpha1"),
])
def test_crd_schema_rejects_broken_eventing(crds, eventing_objs, kind, breakage, expect):
    objs = eventing_objs + load_docs(REQUESTREPLY_YAML)
    obj = copy.deepcopy(of_kind(objs, kind)[0])
    breakage(obj)
    errors = crd_errors(crds, obj)
    assert any(expect in e for e in errors), errors


FUNC_BREAKAGES = [
    (lambda d: d["deploy"]["options"]["scale"].update(metric="latency"), "latency"),
    (lambda d: d.update(unknownField=1), "unknownField"),
    (lambda d: d["deploy"]["options"]["scale"].update(utilization=0), "minimum"),
    (lambda d: d["build"].update(builder="docker"), "docker"),
    (lambda d: d["run"]["envs"].append({"name": "1BAD", "value": "x"}), "1BAD"),
]


@pytest.mark.parametrize("breakage, expect", FUNC_BREAKAGES)
def test_func_subset_schema_rejects_broken_copy(breakage, expect):
    doc = load_func("generate")
    breakage(doc)
    errors = func_subset_errors(doc)
    assert any(expect in e for e in errors), errors


@pytest.mark.parametrize("breakage, expect", FUNC_BREAKAGES)
def test_official_func_schema_rejects_broken_copy(func_schema, breakage, expect):
    validator, reason = func_schema
    if validator is None:
        pytest.skip(f"official func.yaml schema unavailable ({reason})")
    doc = load_func("generate")
    breakage(doc)
    errors = schema_errors(validator, doc)
    assert any(expect in e for e in errors), errors

"""The plain Knative Services of deploy/ (rendered by kustomize): one container on port 8080,
probes on the functions' health paths, Knative annotation keys that exist, revision timeouts
within the cluster maximum (also once deploy/patches/ are merged in). Each rule rejects a
deliberately broken copy."""
from __future__ import annotations

import pytest

from tests.support.manifest_rules import (
    annotation_errors,
    func_health_errors,
    ksvc_secret_errors,
    probe_errors,
    timeout_errors,
)
from tests.support.manifest_schemas import crd_errors
from tests.support.manifests import (
    FUNCTIONS,
    LIVENESS,
    READINESS,
    ROOT,
    ksvc_copy,
    ksvcs,
    load_func,
    merge_patch,
    patch_for,
)

pytest_plugins = ("tests.support.manifest_fixtures",)


def test_knative_services_rules(deploy_objs, known_annotations):
    for name, ksvc in ksvcs(deploy_objs).items():
        tmpl = ksvc["spec"]["template"]
        assert probe_errors(ksvc) == []
        assert ksvc_secret_errors(ksvc) == []
        assert annotation_errors(tmpl["metadata"].get("annotations", {}), known_annotations,
                                 name) == []
        assert timeout_errors(tmpl["spec"], name) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_timeout_patch_keeps_service_valid(crds, deploy_objs, name):
    patch = patch_for(name)
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"template"}
    patched = merge_patch(ksvcs(deploy_objs)[name], patch)
    assert crd_errors(crds, patched) == []
    assert timeout_errors(patched["spec"]["template"]["spec"], name) == []


def test_health_paths_are_served_by_the_runtime():
    """The gunicorn path serves the probe paths we configure (func-python serves the same)."""
    webapp = ROOT / "llmfn" / "src" / "llmfn" / "webapp.py"
    if not webapp.exists():
        pytest.skip("llmfn/webapp.py not written yet")
    text = webapp.read_text()
    assert LIVENESS in text and READINESS in text


def test_annotation_rule_rejects_unknown_key(known_annotations):
    errors = annotation_errors({"autoscaling.knative.dev/min-scael": "0",
                                "example.com/other": "x"}, known_annotations, "t")
    assert len(errors) == 1 and "min-scael" in errors[0]


def test_probe_rules_reject_wrong_paths_and_ports(deploy_objs):
    svc = ksvc_copy(deploy_objs)
    c = svc["spec"]["template"]["spec"]["containers"][0]
    c["readinessProbe"]["httpGet"]["path"] = "/healthz"
    c["ports"][0]["containerPort"] = 9000
    errors = probe_errors(svc)
    assert any("/healthz" in e for e in errors) and any("9000" in e for e in errors)
    doc = load_func("embed")
    doc["deploy"]["healthEndpoints"]["liveness"] = "/health"
    assert func_health_errors(doc)


def test_timeout_rule_rejects_out_of_range():
    assert timeout_errors({"timeoutSeconds": 900, "responseStartTimeoutSeconds": 10,
                           "idleTimeoutSeconds": 10}, "t")
    assert timeout_errors({"timeoutSeconds": 60, "responseStartTimeoutSeconds": 120,
                           "idleTimeoutSeconds": 0}, "t")

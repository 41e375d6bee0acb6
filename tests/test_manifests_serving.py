"""The plain Knative Services of deploy/ (rendered by kustomize): one container on port 8080,
probes on the functions' health paths, Knative annotation keys that exist, revision timeouts
within the cluster maximum (also once deploy/patches/ are merged in). Each rule rejects a
deliberately broken copy."""
from __future__ import annotations

import pytest

from llmfn.metrics import HTTPMetrics
from llmfn.webapp import create_base_app
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


class _Up:
    """A runtime that is alive and ready, for the base app's health routes."""

    def ready(self):
        return True, "ready"

    def alive(self):
        return True, "alive"


def test_health_paths_are_served_by_the_runtime():
    """The app every function serves (gunicorn and func-python alike) answers the probe paths
    the manifests configure."""
    app = create_base_app("t", max_request_bytes=1024, probes=_Up(), metrics=HTTPMetrics())
    client = app.test_client()
    assert [client.get(path).status_code for path in (LIVENESS, READINESS)] == [200, 200]


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

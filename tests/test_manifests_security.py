"""What must never ship and how images are built: no credential values in any shipped YAML or
Containerfile (credential envs come from Secrets: secretKeyRef in deploy/, {{ secret:... }} in
func.yaml), and Containerfile hygiene (pinned slim base, non-root, portable llama.cpp built in a
builder stage, dependency layer first, bytecode compiled). Each rule rejects a deliberately
broken copy."""
from __future__ import annotations

import copy

import pytest

from tests.support.manifest_rules import (
    containerfile_errors,
    func_secret_errors,
    ksvc_secret_errors,
    networkpolicy_errors,
    text_secret_errors,
)
from tests.support.manifest_schemas import crd_errors
from tests.support.manifests import (
    FUNCTIONS,
    MODEL_FUNCTIONS,
    ROOT,
    containerfile,
    ksvc_copy,
    load_func,
    named,
    shipped_yaml,
)

pytest_plugins = ("tests.support.manifest_fixtures",)


def test_no_secret_values_in_shipped_files():
    for path in shipped_yaml() + sorted({containerfile(f) for f in FUNCTIONS}):
        assert text_secret_errors(path.read_text(), str(path.relative_to(ROOT)),
                                  is_yaml=path.suffix == ".yaml") == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_containerfile(name):
    assert containerfile_errors(containerfile(name).read_text(), name) == []
    if name in MODEL_FUNCTIONS:  # no per-folder copy of the shared file
        assert not (ROOT / "functions" / name / "Containerfile").exists()


def test_secret_rules_reject_literal_values(deploy_objs):
    svc = ksvc_copy(deploy_objs)
    env = svc["spec"]["template"]["spec"]["containers"][0]["env"]
    for e in env:
        if e["name"] == "AWS_SECRET_ACCESS_KEY":
            e.pop("valueFrom")
            e["value"] = "not-a-ref"
    assert any("AWS_SECRET_ACCESS_KEY" in e for e in ksvc_secret_errors(svc))
    doc = load_func("audit")
    for e in doc["run"]["envs"]:
        if e["name"] == "MONGODB_URI":
            e["value"] = "mongodb://127.0.0.1:27017"
    assert any("MONGODB_URI" in e for e in func_secret_errors(doc))
    fake_key = "AKIA" + "ABCDEFGHIJKLMNOP"
    assert text_secret_errors(f"env:\n  - value: {fake_key}\n", "t")
    assert text_secret_errors("kind: Secret\nmetadata: {name: s}\n", "t")
    assert text_secret_errors("uri: mongodb://admin:hunter2@db:27017\n", "t")


@pytest.mark.parametrize("breakage, expect", [
    (lambda t: t.replace("python:3.11.14-slim-bookworm", "python:3.11-slim"), "base image"),
    (lambda t: t.replace("USER 10001:10001", "USER root"), "non-root"),
    (lambda t: t.replace("-DGGML_NATIVE=OFF", "-march=native"), "native"),
    (lambda t: t.replace("COPY pyproject.toml ./\n", "") + "COPY pyproject.toml ./\n",
     "dependency layer"),
    (lambda t: t.replace("RUN python -m compileall -q llmfn function\n", ""), "bytecode"),
])
def test_containerfile_rule_rejects_broken_copy(breakage, expect):
    text = containerfile("generate").read_text()
    errors = containerfile_errors(breakage(text), "generate")
    assert any(expect in e for e in errors), errors


def _policy(deploy_objs) -> dict:
    return copy.deepcopy(named(deploy_objs, "NetworkPolicy", "llmfn-functions"))


def test_network_policy_lets_in_only_what_must_reach_the_functions(crds, deploy_objs,
                                                                    knative_data_plane):
    """deploy/networkpolicy.yaml: valid against the Kubernetes networking.k8s.io/v1 schema;
    the activator, the ingress gateway and the broker filter on queue-proxy's serving ports,
    the autoscaler on its metrics port, Prometheus on /metrics; selectors that match the pods
    of the pinned Knative releases; nothing else."""
    policy = _policy(deploy_objs)
    assert crd_errors(crds, policy) == []
    assert networkpolicy_errors(policy, knative_data_plane) == []
    assert knative_data_plane["ports"]["BackendHTTPPort"] == 8012  # the constants were parsed


def _rule(policy, i):
    return policy["spec"]["ingress"][i]


@pytest.mark.parametrize("breakage, expect", [
    (lambda p: p["spec"]["ingress"].append({"from": [{"namespaceSelector": {}}],
                                                    "ports": [{"port": 8080}]}), "must name"),
    (lambda p: p["spec"]["ingress"].append({"ports": [{"port": 8080}]}), "without `from`"),
    (lambda p: _rule(p, 0)["from"].append({"ipBlock": {"cidr": "0.0.0.0/0"}}), "must name"),
    (lambda p: _rule(p, 0)["from"][0]["podSelector"]["matchLabels"].update(app="activatr"),
     "pinned release"),
    (lambda p: _rule(p, 1)["ports"].append({"port": 8012}), "autoscaler"),
    (lambda p: _rule(p, 0)["ports"].pop(), "activator"),
    (lambda p: p["spec"]["ingress"].pop(2), "prometheus"),
    (lambda p: p["spec"]["podSelector"]["matchExpressions"][0]["values"].pop(), "podSelector"),
    (lambda p: p["spec"].update(policyTypes=["Ingress", "Egress"]), "policyTypes"),
])
def test_network_policy_rule_rejects_broken_copy(deploy_objs, knative_data_plane, breakage,
                                                 expect):
    policy = _policy(deploy_objs)
    breakage(policy)
    errors = networkpolicy_errors(policy, knative_data_plane)
    assert any(expect in e for e in errors), errors


@pytest.mark.parametrize("breakage, expect", [
    (lambda p: _rule(p, 0)["from"][0].update(podSelectr={}), "podSelectr"),
    (lambda p: _rule(p, 0)["ports"][0].update(port=[8012]), "not valid"),
    (lambda p: p["spec"].update(ingres=[]), "ingres"),
    (lambda p: p.update(apiVersion="networking.k8s.io/v1beta1"), "networking.k8s.io/v1"),
])
def test_network_policy_schema_rejects_broken_copy(crds, deploy_objs, breakage, expect):
    policy = _policy(deploy_objs)
    breakage(policy)
    errors = crd_errors(crds, policy)
    assert any(expect in e for e in errors), errors

"""deploy/ and eventing/ through Knative's own admission logic (the Serving and Eventing webhooks'
SetDefaults + Validate, tests/support/kn_validate.py), with the cluster settings that
docs/deploy.md has admins apply as inputs: deploy/cluster/config-autoscaler.yaml
(allow-zero-initial-scale) and eventing/features/delivery-retryafter.yaml. The CRD-schema and
rule checks are tests/test_manifests_*.py; these catch what only the webhooks know (annotation
value formats, cluster-gated values, feature-flagged fields)."""
from __future__ import annotations

import copy
import os

import pytest

from scripts import knative_pod
from tests.support import kustomize
from tests.support.kn_validate import AUTOSCALER_CM, CLUSTER, EVENTING_FLAG_CM, ROOT, validate
from tests.support.manifests import (
    FUNCTIONS,
    NO_RETRY_AFTER,
    REQUESTREPLY_YAML,
    SETTING_DEFAULTS,
    build_example,
    load_docs,
    load_func,
    patch_for,
    service_setting,
    sizing_table,
)

SERVING, EVENTING = "kn-validate-serving", "kn-validate-eventing"
EVENTING_KINDS = ("Broker", "Trigger", "SinkBinding")


@pytest.fixture(scope="module")
def deploy_objs() -> list[dict]:
    return kustomize.build(ROOT / "deploy")


@pytest.fixture(scope="module")
def eventing_objs() -> list[dict]:
    return kustomize.build(ROOT / "eventing")


def services(objs: list[dict]) -> list[dict]:
    return list(knative_pod.services(objs).values())


# What each function admits before answering 429 (its own admission), from its settings: the
# requests that run at once + QUEUE_SIZE waiting. generate runs SLOTS streams; embed's running
# model call may hold a single request (several inputs), so count 1; audit refuses nothing
# (requests wait for their commit: no QueueFull in functions/audit).
RUNNING = {"generate": lambda svc: int(service_setting(svc, "SLOTS")),
           "embed": lambda svc: 1}


def test_our_admission_holds_what_queue_proxy_admits(deploy_objs):
    """queue-proxy lets containerConcurrency requests through to the function at once: the
    function must take them all (run or queue them), never 429 one queue-proxy admitted."""
    assert "QueueFull" not in "".join(
        p.read_text() for p in (ROOT / "functions" / "audit" / "function").glob("*.py"))
    for svc in services(deploy_objs):
        name = svc["metadata"]["name"]
        cc = svc["spec"]["template"]["spec"]["containerConcurrency"]
        assert cc > 0, name
        if name in RUNNING:
            admits = RUNNING[name](svc) + int(service_setting(svc, "QUEUE_SIZE"))
            assert admits >= cc, (name, "SLOTS + QUEUE_SIZE", admits, "containerConcurrency", cc)


def test_sse_heartbeat_comes_before_the_response_start_timeout(deploy_objs):
    """A stream's first byte is its SSE heartbeat: it must come before queue-proxy's
    responseStartTimeoutSeconds (504 otherwise), for the Services of deploy/ and for the
    func-deployed ones (func.yaml's env, deploy/patches' timeouts)."""
    for svc in services(deploy_objs):
        name = svc["metadata"]["name"]
        start_s = svc["spec"]["template"]["spec"]["responseStartTimeoutSeconds"]
        assert float(service_setting(svc, "SSE_HEARTBEAT_S")) < start_s, name
        func_env = {e["name"]: e.get("value") for e in load_func(name)["run"]["envs"]}
        heartbeat = func_env.get("SSE_HEARTBEAT_S", SETTING_DEFAULTS["SSE_HEARTBEAT_S"])
        patched_s = patch_for(name)["spec"]["template"]["spec"]["responseStartTimeoutSeconds"]
        assert float(heartbeat) < patched_s, name


def test_deploy_services_pass_serving_admission(deploy_objs):
    verdict = validate(SERVING, deploy_objs, AUTOSCALER_CM)
    assert verdict.ok, verdict.out
    assert sorted(s["metadata"]["name"] for s in services(deploy_objs)) == sorted(FUNCTIONS)
    for name in FUNCTIONS:
        assert ": valid (" in verdict.line("Service", name)
    assert f"{len(FUNCTIONS)} Service(s) checked, 0 invalid" in verdict.out


def test_without_allow_zero_initial_scale_every_service_is_refused(deploy_objs):
    """Knative's default cluster configuration refuses `initial-scale: "0"`: the Services only
    pass with allow-zero-initial-scale: "true" in config-autoscaler (knative-serving), the one
    non-default cluster setting they need, kept in deploy/cluster/config-autoscaler.yaml."""
    (cm,) = load_docs(AUTOSCALER_CM)
    assert (cm["kind"], cm["metadata"], cm["data"]) == (
        "ConfigMap", {"name": "config-autoscaler", "namespace": "knative-serving"},
        {"allow-zero-initial-scale": "true"}), "the file sets exactly this one setting"
    verdict = validate(SERVING, deploy_objs)
    assert not verdict.ok, ("the Services pass without allow-zero-initial-scale: drop the "
                            "setting from deploy/cluster/ and docs/deploy.md")
    for name in FUNCTIONS:
        assert "initial-scale=0 not allowed by cluster" in verdict.line("Service", name), (
            f"{name} should be refused without allow-zero-initial-scale: {verdict.out}")


def test_serving_negative_control_invalid_autoscaling_value(deploy_objs):
    """The validator does refuse a bad value: a target that is not a number."""
    objs = copy.deepcopy(deploy_objs)
    bad = services(objs)[0]
    bad["spec"]["template"]["metadata"]["annotations"]["autoscaling.knative.dev/target"] = "ten"
    verdict = validate(SERVING, objs, AUTOSCALER_CM)
    assert not verdict.ok
    assert "autoscaling.knative.dev/target" in verdict.line("Service", bad["metadata"]["name"])
    assert "1 invalid" in verdict.out, verdict.out


@pytest.mark.parametrize("name", sorted(sizing_table()["models"]))
def test_sizing_examples_pass_serving_admission(name, tmp_path):
    """deploy/ with each deploy/examples/ Component (generate sized for a model): Knative's
    admission takes every Service, and generate still admits what queue-proxy lets through."""
    objs = build_example(name, tmp_path)
    verdict = validate(SERVING, objs, AUTOSCALER_CM)
    assert verdict.ok, verdict.out
    assert ": valid (" in verdict.line("Service", "generate")
    (svc,) = [s for s in services(objs) if s["metadata"]["name"] == "generate"]
    cc = svc["spec"]["template"]["spec"]["containerConcurrency"]
    assert cc == int(service_setting(svc, "SLOTS"))
    assert RUNNING["generate"](svc) + int(service_setting(svc, "QUEUE_SIZE")) >= cc


def test_eventing_passes_eventing_admission(eventing_objs, deploy_objs):
    """eventing/ alone and as part of deploy/, with the delivery-retryafter flag."""
    for objs in (eventing_objs, deploy_objs):
        verdict = validate(EVENTING, objs, EVENTING_FLAG_CM)
        assert verdict.ok, verdict.out
        checked = [o for o in objs if o["kind"] in EVENTING_KINDS]
        assert len(checked) >= 7
        for o in checked:
            assert ": valid" in verdict.line(o["kind"], o["metadata"]["name"])


def test_eventing_negative_control_retry_after_without_the_flag(eventing_objs):
    """Without the delivery-retryafter flag the request Triggers (retryAfterMax) are refused."""
    verdict = validate(EVENTING, eventing_objs)
    assert not verdict.ok
    refused = [t["metadata"]["name"] for t in eventing_objs if t["kind"] == "Trigger"
               and "retryAfterMax" in t["spec"].get("delivery", {})]
    assert refused
    for name in refused:
        assert "must not set the field(s): spec.delivery.retryAfterMax" in verdict.line(
            "Trigger", name)


def test_no_retry_after_overlay_passes_without_the_flag(tmp_path):
    """Clusters that cannot enable the flag deploy eventing/ with components/no-retry-after."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel(ROOT / 'eventing')}\n"
        f"components:\n  - {rel(NO_RETRY_AFTER)}\n")
    verdict = validate(EVENTING, kustomize.build(tmp_path))
    assert verdict.ok, verdict.out


def test_requestreply_example_passes(eventing_objs):
    objs = [*eventing_objs, *(dict(d, metadata={**d["metadata"], "namespace": "llmfn"})
                              for d in load_docs(REQUESTREPLY_YAML))]
    verdict = validate(EVENTING, objs, EVENTING_FLAG_CM)
    assert verdict.ok, verdict.out
    for d in load_docs(REQUESTREPLY_YAML):
        assert ": valid" in verdict.line(d["kind"], d["metadata"]["name"])


def test_cluster_settings_stay_out_of_the_kustomization(deploy_objs):
    """deploy/cluster/ is applied by a cluster admin, on its own: `kubectl apply -k deploy/`
    must not pick it up (kustomize would even move it into the llmfn namespace)."""
    names = {(o["kind"], o["metadata"]["name"]) for o in deploy_objs}
    for path in CLUSTER.glob("*.yaml"):
        for doc in load_docs(path):
            assert (doc["kind"], doc["metadata"]["name"]) not in names


def test_docs_apply_the_cluster_files():
    """docs/deploy.md has admins apply the very files these tests validate with."""
    text = (ROOT / "docs" / "deploy.md").read_text()
    for path in [*sorted(CLUSTER.glob("*.yaml")), EVENTING_FLAG_CM]:
        assert f"-f {path.relative_to(ROOT)}" in text, path

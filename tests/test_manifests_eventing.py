"""eventing/ (rendered by kustomize): one Broker of a known class; Triggers whose filters let
through exactly the event types their subscribers accept (audit: the inference event; generate
and embed: their request events, from their contracts) with retries, timeouts and audit's
dead-letter path; SinkBindings that give exactly generate and embed the Broker as K_SINK. Beside
the kustomization: the delivery-retryafter feature flag, the component that drops retryAfterMax,
and the RequestReply example. Each rule rejects a deliberately broken copy."""
from __future__ import annotations

import copy
import os

import pytest

from tests.support import kustomize
from tests.support.manifest_rules import (
    broker_errors,
    deadline_chain_errors,
    features_errors,
    requestreply_errors,
    routing_errors,
    sinkbinding_errors,
    trigger_errors,
)
from tests.support.manifests import (
    FEATURES_YAML,
    INFERENCE_COMPLETED,
    NO_RETRY_AFTER,
    REQUEST_TYPES,
    REQUESTREPLY_YAML,
    ROOT,
    ksvcs,
    load_docs,
    load_func,
    named,
    of_kind,
    trigger_files,
)

pytest_plugins = ("tests.support.manifest_fixtures",)

AUDIT = "audit-inference-events"
CHAT = "generate-chat-completion-requests"
EMBED = "embed-embeddings-requests"


@pytest.fixture(scope="session")
def services(deploy_objs) -> dict:
    """deploy/'s Knative Services: the request Triggers' timeouts are checked against them."""
    return ksvcs(deploy_objs)


def test_eventing_rules(eventing_objs, services):
    assert broker_errors(eventing_objs) == []
    assert trigger_errors(eventing_objs, services) == []
    assert sinkbinding_errors(eventing_objs) == []
    # audit's func subscription (for `func subscribe` users) filters on the same event type.
    subs = load_func("audit")["deploy"].get("subscriptions", [])
    assert all(s["filters"].get("type") == INFERENCE_COMPLETED for s in subs)
    # ... from the Broker eventing/ creates (func subscribe's `source` is the broker's name).
    brokers = {b["metadata"]["name"] for b in of_kind(eventing_objs, "Broker")}
    assert subs and all(s["source"] in brokers for s in subs), (subs, brokers)


def test_every_request_type_has_its_trigger(eventing_objs):
    """One Trigger per request type, to the function whose contract serves it."""
    routed = {}
    for t in of_kind(eventing_objs, "Trigger"):
        for f in t["spec"]["filters"]:
            if "exact" in f:
                routed[f["exact"]["type"]] = t["spec"]["subscriber"]["ref"]["name"]
    assert routed == REQUEST_TYPES
    assert set(REQUEST_TYPES.values()) == {"generate", "embed"}


def test_trigger_files_are_what_kustomize_renders(eventing_objs):
    """scripts/broker.py reads eventing/trigger-*.yaml: one Trigger per file, and the same
    Triggers as `kubectl apply -k eventing/` creates (none left out of the kustomization)."""
    from_files = []
    for path in trigger_files():
        docs = load_docs(path)
        assert [d["kind"] for d in docs] == ["Trigger"], path
        from_files.append(docs[0]["metadata"]["name"])
    assert sorted(from_files) == sorted(t["metadata"]["name"]
                                        for t in of_kind(eventing_objs, "Trigger"))


def test_kustomization_leaves_out_the_separately_applied_objects(eventing_objs):
    """No ConfigMap (feature flag, knative-eventing) or RequestReply (alpha CRD) in eventing/:
    `kubectl apply -k eventing/` works without the RequestReply CRD."""
    assert {o["kind"] for o in eventing_objs} == {"Broker", "Trigger", "SinkBinding"}


def test_sinkbinding_rule_rejects_wrong_subject_and_sink(eventing_objs):
    objs = copy.deepcopy(eventing_objs)
    sb = of_kind(objs, "SinkBinding")[0]
    sb["spec"]["subject"]["name"] = "generat"
    sb["spec"]["sink"]["ref"]["name"] = "default"
    errors = sinkbinding_errors(objs)
    assert any("generat" in e for e in errors) and any("sink" in e for e in errors)


@pytest.mark.parametrize("name, breakage, expect", [
    (AUDIT, lambda t: t["spec"]["filters"][0]["prefix"].update(type="dev.llmfn.other."),
     "prefix"),
    (AUDIT, lambda t: t["spec"].update(broker="default"), "broker"),
    (AUDIT, lambda t: t["spec"]["delivery"].update(backoffDelay="500ms"), "ISO 8601"),
    (AUDIT, lambda t: t["spec"]["delivery"]["deadLetterSink"].update(uri="/"), "dead-letter"),
    (AUDIT, lambda t: t["spec"]["delivery"].update(backoffpolicy="linear"), "unknown delivery"),
    # the prefix broadened to every llmfn event: request events would reach audit
    (AUDIT, lambda t: t["spec"]["filters"][0]["prefix"].update(type="dev.llmfn."),
     "dev.llmfn.chat.completion.requested.v1"),
    # a generate Trigger filtering embed's type: embed loses it, generate gets what it refuses
    (CHAT, lambda t: t["spec"]["filters"][0]["exact"].update(
        type="dev.llmfn.embeddings.requested.v1"), "accepts"),
    (CHAT, lambda t: t["spec"]["filters"][0]["exact"].update(
        type="dev.llmfn.chat.completion.v1"), "dev.llmfn.chat.completion.v1"),  # its own reply
    (CHAT, lambda t: t["spec"]["filters"][0].update(exact={"type": "dev.llmfn.chat.completion"
                                                           ".requested.v2"}), "match no"),
    (CHAT, lambda t: t["spec"].update(filters=[]), "accepts"),  # no filter: every event
    (CHAT, lambda t: t["spec"].update(filters=[{"cesql": "type = 'x'"}]), "cesql"),
    (CHAT, lambda t: t["spec"]["subscriber"]["ref"].update(name="embed"), "accepts"),
    (CHAT, lambda t: t["spec"]["subscriber"].update(uri="/v1/chat/completions"), "POST /"),
    (CHAT, lambda t: t["spec"]["delivery"].pop("timeout"), "timeout missing"),
    (CHAT, lambda t: t["spec"]["delivery"].update(timeout="PT30S"),
     "responseStartTimeoutSeconds"),
    (CHAT, lambda t: t["spec"]["delivery"].update(timeout="300s"), "ISO 8601"),
    (CHAT, lambda t: t["spec"]["delivery"].pop("retryAfterMax"), "retryAfterMax missing"),
    (CHAT, lambda t: t["spec"]["delivery"].update(retryAfterMax="PT1S"), "clips"),
    (CHAT, lambda t: t["spec"]["delivery"].update(retry=0), "retry"),
    (CHAT, lambda t: t["metadata"]["labels"].pop("app.kubernetes.io/component"), "label"),
    (EMBED, lambda t: t["spec"]["delivery"].update(timeout="PT5M"), "responseStartTimeout"),
    (EMBED, lambda t: t["spec"]["delivery"].pop("deadLetterSink"), "dead-letter"),
])
def test_trigger_rule_rejects_broken_copy(eventing_objs, services, name, breakage, expect):
    objs = copy.deepcopy(eventing_objs)
    breakage(named(objs, "Trigger", name))
    errors = trigger_errors(objs, services)
    assert any(expect in e for e in errors), errors


def test_routing_rule_rejects_a_duplicate_and_a_missing_trigger(eventing_objs):
    triggers = copy.deepcopy(of_kind(eventing_objs, "Trigger"))
    twice = copy.deepcopy(named(triggers, "Trigger", CHAT))
    twice["metadata"]["name"] = "again"
    errors = routing_errors(triggers + [twice])
    assert any("through 2 Triggers" in e for e in errors), errors
    errors = routing_errors([t for t in triggers if t["metadata"]["name"] != EMBED])
    assert any("dev.llmfn.embeddings.requested.v1 reaches embed through 0" in e
               for e in errors), errors


def test_broker_rule_rejects_unknown_class(eventing_objs):
    objs = copy.deepcopy(eventing_objs)
    of_kind(objs, "Broker")[0]["metadata"]["annotations"]["eventing.knative.dev/broker.class"] = "X"
    assert broker_errors(objs)


def test_feature_flag_manifest(upstream_features):
    """Exactly delivery-retryafter: enabled, in knative-eventing/config-features, a flag the
    pinned Eventing knows (its default there is disabled)."""
    (doc,) = load_docs(FEATURES_YAML)
    assert features_errors(doc, upstream_features) == []
    assert upstream_features["data"]["delivery-retryafter"] == "disabled"


@pytest.mark.parametrize("breakage, expect", [
    (lambda d: d["metadata"].update(namespace="llmfn"), "ConfigMap"),
    (lambda d: d["data"].update({"authentication-oidc": "disabled"}), "data"),
    (lambda d: d.update(data={"delivery-retry-after": "enabled"}), "not flags"),
])
def test_feature_flag_rule_rejects_broken_copy(upstream_features, breakage, expect):
    (doc,) = load_docs(FEATURES_YAML)
    breakage(doc)
    errors = features_errors(doc, upstream_features)
    assert any(expect in e for e in errors), errors


def test_no_retry_after_component(tmp_path, services):
    """The overlay for clusters without the feature flag: no retryAfterMax anywhere, the rest
    of every Trigger as in eventing/."""
    rel = lambda p: os.path.relpath(p, tmp_path)  # noqa: E731
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {rel(ROOT / 'eventing')}\n"
        f"components:\n  - {rel(NO_RETRY_AFTER)}\n")
    objs = kustomize.build(tmp_path)
    assert trigger_errors(objs, services, retry_after=False) == []
    full = {t["metadata"]["name"]: t for t in of_kind(kustomize.build(ROOT / "eventing"),
                                                      "Trigger")}
    for t in of_kind(objs, "Trigger"):
        want = copy.deepcopy(full[t["metadata"]["name"]])
        want["spec"]["delivery"].pop("retryAfterMax", None)
        assert t == want
    assert trigger_errors(objs, services) != []  # the default rule wants retryAfterMax


def test_requestreply_example(eventing_objs, services):
    (rr,) = load_docs(REQUESTREPLY_YAML)
    assert requestreply_errors(rr, eventing_objs, services) == []


@pytest.mark.parametrize("breakage, expect", [
    (lambda r: r["spec"].update(timeout="PT30S"), "must exceed"),
    (lambda r: r["spec"].update(timeout="PT4M"), "must exceed"),
    (lambda r: r["spec"].pop("timeout"), "missing"),
    (lambda r: r["spec"].update(correlationAttribute="rrid"), "REPLY_CORRELATION_ATTRIBUTE"),
    (lambda r: r["spec"].update(replyAttribute="reply"), "REPLY_ID_ATTRIBUTE"),
    (lambda r: r["spec"]["brokerRef"].update(name="default"), "brokerRef"),
    (lambda r: r["spec"]["brokerRef"].update(namespace="llmfn"), "brokerRef"),
])
def test_requestreply_rule_rejects_broken_copy(eventing_objs, services, breakage, expect):
    (rr,) = load_docs(REQUESTREPLY_YAML)
    breakage(rr)
    errors = requestreply_errors(rr, eventing_objs, services)
    assert any(expect in e for e in errors), errors


def test_one_deadline_per_request_below_every_outer_timeout(eventing_objs, services):
    """generate's REQUEST_TIMEOUT_S < responseStartTimeoutSeconds <= timeoutSeconds, and
    responseStartTimeoutSeconds <= its request Triggers' timeout <= RequestReply's timeout
    (docs/deploy.md "Timeouts"): the function ends a request before any layer around it."""
    (rr,) = load_docs(REQUESTREPLY_YAML)
    triggers = of_kind(eventing_objs, "Trigger")
    assert deadline_chain_errors(services["generate"], triggers, rr) == []


def _env(ksvc, key, value):
    (c,) = ksvc["spec"]["template"]["spec"]["containers"]
    c["env"] = [e for e in c["env"] if e["name"] != key] + (
        [] if value is None else [{"name": key, "value": value}])


@pytest.mark.parametrize("breakage, expect", [
    (lambda s, t, r: _env(s, "REQUEST_TIMEOUT_S", "300"), "below responseStartTimeoutSeconds"),
    (lambda s, t, r: _env(s, "REQUEST_TIMEOUT_S", "0"), "must be > 0"),
    (lambda s, t, r: _env(s, "REQUEST_TIMEOUT_S", None), "must be set"),
    (lambda s, t, r: s["spec"]["template"]["spec"].update(timeoutSeconds=250), "below"),
    (lambda s, t, r: named(t, "Trigger", CHAT)["spec"]["delivery"].update(timeout="PT4M"),
     "must be >= responseStartTimeoutSeconds"),
    (lambda s, t, r: r["spec"].update(timeout="PT4M59S"), "RequestReply"),
])
def test_deadline_chain_rule_rejects_broken_copy(eventing_objs, services, breakage, expect):
    svc, objs = copy.deepcopy(services["generate"]), copy.deepcopy(eventing_objs)
    (rr,) = load_docs(REQUESTREPLY_YAML)
    breakage(svc, objs, rr)
    errors = deadline_chain_errors(svc, of_kind(objs, "Trigger"), rr)
    assert any(expect in e for e in errors), errors

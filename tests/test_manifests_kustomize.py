"""deploy/ and eventing/ as `kubectl apply -k` sees them: every shipped YAML parses, both
kustomizations render with the real kustomize (tests/support/kustomize.py), the images and the
namespace they set land on every object, and the namespace overlay `make deploy` applies
(mk/deploy.mk) moves everything. The rules for what they render are in the other
tests/test_manifests_*.py modules."""
from __future__ import annotations

import os

import pytest

from tests.support import kustomize
from tests.support.manifest_rules import broker_errors, sinkbinding_errors, trigger_errors
from tests.support.manifests import (
    FUNCTIONS,
    KUSTOMIZATIONS,
    ROOT,
    ksvcs,
    load_docs,
    shipped_yaml,
)

pytest_plugins = ("tests.support.manifest_fixtures",)


def test_every_shipped_yaml_parses():
    for path in shipped_yaml():
        assert load_docs(path), f"{path} is empty"


@pytest.mark.parametrize("kdir", KUSTOMIZATIONS)
def test_kustomization_renders_into_its_namespace(kdir):
    objs = kustomize.build(ROOT / kdir)
    assert objs
    namespace = load_docs(ROOT / kdir / "kustomization.yaml")[0]["namespace"]
    assert {(o["kind"], o["metadata"]["name"], o["metadata"].get("namespace")) for o in objs
            if o["metadata"].get("namespace") != namespace} == set()


def test_every_image_entry_sets_a_container_image(deploy_objs):
    """Each `images:` entry of deploy/kustomization.yaml rewrites a container (kustomize
    ignores an entry whose name matches nothing, e.g. after a typo), and none is left as is."""
    images = load_docs(ROOT / "deploy" / "kustomization.yaml")[0]["images"]
    got = {name: [c["image"] for c in svc["spec"]["template"]["spec"]["containers"]]
           for name, svc in ksvcs(deploy_objs).items()}
    assert sorted(got) == sorted(FUNCTIONS)
    used = {image for containers in got.values() for image in containers}
    for img in images:
        assert f"{img['newName']}:{img['newTag']}" in used, f"{img['name']} matches no container"
    assert not used - {f"{img['newName']}:{img['newTag']}" for img in images}, used


def test_namespace_overlay_of_make_deploy(tmp_path):
    """`make deploy NAMESPACE=...` applies eventing/ through an overlay that only sets the
    namespace (mk/deploy.mk deploy-overlay): every object moves, references still resolve."""
    eventing = os.path.relpath(ROOT / "eventing", tmp_path)
    (tmp_path / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"namespace: other-ns\nresources:\n  - {eventing}\n")
    objs = kustomize.build(tmp_path)
    assert objs and {o["metadata"].get("namespace") for o in objs} == {"other-ns"}
    assert broker_errors(objs) == []
    assert trigger_errors(objs) == []
    assert sinkbinding_errors(objs) == []


def test_kustomization_rejects_missing_resource(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - nothing-here.yaml\n")
    with pytest.raises(kustomize.BuildError, match="nothing-here.yaml"):
        kustomize.build(tmp_path)


def test_replacement_into_a_missing_field_fails(tmp_path):
    """eventing/ copies the Broker name into fields that must exist: a renamed field fails."""
    (tmp_path / "kustomization.yaml").write_text(
        "resources:\n  - objs.yaml\nreplacements:\n"
        "  - source: {kind: Broker, fieldPath: metadata.name}\n"
        "    targets:\n      - select: {kind: Trigger}\n        fieldPaths: [spec.broker]\n")
    (tmp_path / "objs.yaml").write_text(
        "apiVersion: eventing.knative.dev/v1\nkind: Broker\nmetadata: {name: b}\n---\n"
        "apiVersion: eventing.knative.dev/v1\nkind: Trigger\nmetadata: {name: t}\n"
        "spec: {brokr: b}\n")
    with pytest.raises(kustomize.BuildError, match="spec.broker"):
        kustomize.build(tmp_path)


def test_missing_kustomize_fails_and_names_make_services(monkeypatch, tmp_path):
    monkeypatch.setattr(kustomize, "KUSTOMIZE", tmp_path / ".state" / "bin" / "kustomize")
    monkeypatch.setattr(kustomize, "ROOT", tmp_path)
    with pytest.raises(pytest.fail.Exception, match="make services"):
        kustomize.build(ROOT / "eventing")

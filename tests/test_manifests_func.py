"""functions/*/func.yaml: our rules for it (health endpoints, secrets as references, the
LLM-on-CPU scaling and thread policy), its agreement with the plain Knative Services of deploy/
and the timeout patches, and generate's memory limit vs the model's weights and KV cache. Each
rule rejects a deliberately broken copy."""
from __future__ import annotations

import copy

import pytest

from tests.support.manifest_rules import (
    annotation_errors,
    consistency_errors,
    func_health_errors,
    func_scaling_errors,
    func_secret_errors,
)
from tests.support.manifest_schemas import func_subset_errors
from tests.support.manifests import FUNCTIONS, ksvcs, load_func, mebibytes, patch_for

pytest_plugins = ("tests.support.manifest_fixtures",)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml_rules(name, known_annotations):
    doc = load_func(name)
    assert doc["name"] == name
    assert func_subset_errors(doc) == []
    assert func_health_errors(doc) == []
    assert func_scaling_errors(doc) == []
    assert func_secret_errors(doc) == []
    assert annotation_errors(doc["deploy"].get("annotations", {}), known_annotations, name) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml_deploy_and_patch_agree(deploy_objs, name):
    assert consistency_errors(load_func(name), ksvcs(deploy_objs)[name], patch_for(name)) == []


@pytest.mark.parametrize("name, breakage, expect", [
    ("generate", lambda d: d["deploy"]["options"]["scale"].update(utilization=70), "utilization"),
    ("generate", lambda d: d["run"]["envs"].append({"name": "SLOTS", "value": "8"}) or
     d["run"]["envs"].remove({"name": "SLOTS", "value": "4"}), "limits.concurrency"),
    ("generate", lambda d: d["deploy"]["options"]["resources"]["requests"].update(cpu="2"),
     "N_THREADS"),
    ("embed", lambda d: d["run"]["envs"].remove({"name": "OMP_WAIT_POLICY", "value": "passive"}),
     "OMP_WAIT_POLICY"),
    ("generate", lambda d: d["run"]["envs"].append({"name": "OMP_WAIT_POLICY",
                                                    "value": "passive"}), "ADAPTIVE_THREADS"),
    ("generate", lambda d: d["run"]["envs"].append({"name": "ADAPTIVE_THREADS", "value": "0"}),
     "ADAPTIVE_THREADS"),
    ("generate", lambda d: d["deploy"]["annotations"].pop("autoscaling.knative.dev/initial-scale"),
     "initial-scale"),
    ("embed", lambda d: d["build"]["buildEnvs"][0].update(value="-DGGML_NATIVE=ON"), "CMAKE_ARGS"),
    ("embed", lambda d: d["deploy"]["options"]["scale"].update(max=1000), "bounded"),
    ("audit", lambda d: d.update(invoke="cloudevent"), "invoke"),
])
def test_scaling_rules_reject_broken_copy(name, breakage, expect):
    doc = load_func(name)
    breakage(doc)
    errors = func_scaling_errors(doc)
    assert any(expect in e for e in errors), errors


def test_consistency_rule_rejects_drift(deploy_objs):
    doc = load_func("generate")
    doc["deploy"]["options"]["scale"]["max"] = 9
    doc["run"]["envs"][0]["value"] = "other"
    patch = copy.deepcopy(patch_for("generate"))
    patch["spec"]["template"]["spec"]["idleTimeoutSeconds"] = 1
    errors = consistency_errors(doc, ksvcs(deploy_objs)["generate"], patch)
    assert any("max-scale" in e for e in errors)
    assert any("env differs" in e for e in errors)
    assert any("idleTimeoutSeconds" in e for e in errors)


@pytest.mark.parametrize("slots, fits", [(None, True), ("16", False)])
def test_generate_memory_limit_holds_weights_and_kv(slots, fits):
    """func.yaml's memory limit holds weights + SLOTS x N_CTX KV cells + runtime, by the
    arithmetic generate checks at start-up (llmfn.sizing, SmolLM2's GGUF header); 16 slots
    would not fit."""
    from llmfn import sizing
    from llmfn.memory import DoesNotFit
    from scripts.model_files import smollm2_path

    doc = load_func("generate")
    envs = {e["name"]: e["value"] for e in doc["run"]["envs"]}
    shape = sizing.read_shape(smollm2_path())
    assert shape.kv_bytes_per_token() == 23040  # the "about 23 KB a cell" the sizing comments use
    limits = doc["deploy"]["options"]["resources"]["limits"]
    plan = sizing.plan(shape, n_ctx=int(envs["N_CTX"]), slots=int(slots or envs["SLOTS"]),
                       limits=sizing.Limits(int(mebibytes(limits["memory"]) * 2**20),
                                            float(limits["cpu"])), machine=64)
    if fits:
        plan.check()
    else:
        with pytest.raises(DoesNotFit, match="lower SLOTS or N_CTX"):
            plan.check()

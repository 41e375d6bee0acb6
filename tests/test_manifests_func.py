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


def smollm2_kv_bytes_per_cell() -> int:
    """(K + V bytes per token over all layers in f16, file size) of SmolLM2, from its GGUF."""
    import gguf

    from scripts.model_files import smollm2_path

    path = smollm2_path()
    reader = gguf.GGUFReader(str(path))

    def value(key):
        return int(reader.fields[key].contents())

    head_dim = value("llama.embedding_length") // value("llama.attention.head_count")
    return (value("llama.block_count") * 2 * head_dim * value("llama.attention.head_count_kv")
            * 2), path.stat().st_size


@pytest.mark.parametrize("slots, fits", [(None, True), ("16", False)])
def test_generate_memory_limit_holds_weights_and_kv(slots, fits):
    """func.yaml's memory limit holds weights + SLOTS x N_CTX KV cells + runtime, by the same
    arithmetic generate checks at start-up (llmfn.memory); 16 slots would not fit."""
    from llmfn.memory import DoesNotFit, check_fits

    doc = load_func("generate")
    envs = {e["name"]: e["value"] for e in doc["run"]["envs"]}
    per_cell, weights = smollm2_kv_bytes_per_cell()
    assert per_cell == 23040  # the "about 23 KB a cell" the sizing comments use
    limit = mebibytes(doc["deploy"]["options"]["resources"]["limits"]["memory"]) * 2**20
    cells = int(slots or envs["SLOTS"]) * int(envs["N_CTX"])
    if fits:
        check_fits(weights_bytes=weights, kv_bytes=cells * per_cell, limit_bytes=int(limit),
                   what="func.yaml")
    else:
        with pytest.raises(DoesNotFit, match="lower SLOTS or N_CTX"):
            check_fits(weights_bytes=weights, kv_bytes=cells * per_cell,
                       limit_bytes=int(limit), what="func.yaml")

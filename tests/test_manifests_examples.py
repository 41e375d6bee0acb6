"""deploy/examples/: generate sized per model (kustomize Components over deploy/), checked
against the sizing table deploy/examples/sizing.json: every value the table gives lands in the
rendered Service, containerConcurrency = SLOTS = the SLOTS llmfn.sizing derives for the overlay's
limits from a header-only GGUF of the model's shape, and the Service keeps every rule of deploy/
(CRD schema, annotations, probes, secrets, timeouts, the thread policy). Knative's own admission
of the examples is in tests/test_knative_admission.py."""
from __future__ import annotations

import math

import pytest

from llmfn import sizing
from scripts import sizing_table as sizing_table_doc
from scripts.make_synthetic_gguf import write_shape
from tests.support.manifest_rules import (
    annotation_errors,
    ksvc_secret_errors,
    probe_errors,
    thread_policy_errors,
    timeout_errors,
)
from tests.support.manifest_schemas import crd_errors
from tests.support.manifests import EXAMPLES, ROOT, build_example, ksvcs, sizing_table

pytest_plugins = ("tests.support.manifest_fixtures",)

TABLE = sizing_table()
MODELS = sorted(TABLE["models"])
UNITS = {"Mi": 1024 ** 2, "Gi": 1024 ** 3}


def quantity(text: str) -> int:
    """Bytes of a Kubernetes memory quantity in Mi or Gi (what the examples use)."""
    return int(text[:-2]) * UNITS[text[-2:]]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    return {name: build_example(name, tmp_path_factory.mktemp(name)) for name in MODELS}


def generate_of(objs: list[dict]) -> tuple[dict, dict, dict]:
    svc = ksvcs(objs)["generate"]
    (c,) = svc["spec"]["template"]["spec"]["containers"]
    return svc, c, {e["name"]: e.get("value") for e in c["env"]}


def test_every_example_has_a_row_and_every_row_an_example():
    dirs = sorted(p.name for p in EXAMPLES.iterdir() if p.is_dir())
    assert dirs == MODELS
    for name in dirs:
        assert (EXAMPLES / name / "kustomization.yaml").is_file()


@pytest.mark.parametrize("name", MODELS)
def test_example_follows_the_sizing_table(rendered, name):
    row = TABLE["models"][name]
    svc, c, env = generate_of(rendered[name])
    spec, ann = svc["spec"]["template"]["spec"], svc["spec"]["template"]["metadata"]["annotations"]
    assert (env["MODEL_URI"], env["MODEL_NAME"], env["N_CTX"]) == (
        row["model_uri"], row["model_name"], str(TABLE["n_ctx"]))
    assert (env["SLOTS"], env["N_THREADS"]) == (str(row["slots"]), str(row["threads"]))
    assert spec["containerConcurrency"] == row["slots"] == int(env["SLOTS"])
    assert (ann["autoscaling.knative.dev/target"],
            ann["autoscaling.knative.dev/target-utilization-percentage"]) == (
        str(row["target"]), str(row["utilization"]))
    # Guaranteed QoS with integer CPUs: requests = limits (docs/deploy.md "Sizing")
    res = c["resources"]
    assert res["requests"] == res["limits"] == {"cpu": str(row["cpu"]), "memory": row["memory"]}
    (vol,) = [v for v in spec["volumes"] if v["name"] == "model-cache"]
    assert vol["emptyDir"]["sizeLimit"] == row["empty_dir"]
    # the download (a temp file, renamed) fits the emptyDir, with at least 5 % to spare
    assert quantity(row["empty_dir"]) >= 1.05 * row["file_bytes"]


@pytest.mark.parametrize("name", MODELS)
def test_slots_are_those_derived_for_the_limits(rendered, name, tmp_path):
    """containerConcurrency = SLOTS, and SLOTS is what llmfn.sizing derives from the model's
    shape (a header-only GGUF of it) within the overlay's memory limit; N_THREADS is what it
    derives from the CPU limit; and the memory holds weights + KV + runtime."""
    row = TABLE["models"][name]
    svc, c, env = generate_of(rendered[name])
    path = tmp_path / f"{name}.gguf"
    write_shape(path, name, TABLE["quant"], header_only=True)
    shape = sizing.read_shape(path)
    assert shape.file_bytes == row["file_bytes"]
    limits = sizing.Limits(quantity(c["resources"]["limits"]["memory"]),
                           float(c["resources"]["limits"]["cpu"]))
    derived = sizing.plan(shape, n_ctx=int(env["N_CTX"]), limits=limits, machine=64)
    assert derived.fits, derived.explain()
    if row.get("slots_set"):  # an explicit SLOTS, with its reason: it must fit the limit too
        assert row["slots_set"].startswith(f"{row['slots']}, not the derived {derived.slots}")
        derived = sizing.plan(shape, n_ctx=int(env["N_CTX"]), slots=row["slots"],
                              limits=limits, machine=64)
        assert derived.fits, derived.explain()
    assert (derived.slots, derived.threads) == (int(env["SLOTS"]), int(env["N_THREADS"]))
    assert svc["spec"]["template"]["spec"]["containerConcurrency"] == derived.slots
    assert derived.threads == math.ceil(limits.cpus)


@pytest.mark.parametrize("name", MODELS)
def test_example_keeps_the_rules_of_deploy(rendered, deploy_objs, crds, known_annotations,
                                           name):
    svc, c, env = generate_of(rendered[name])
    tmpl = svc["spec"]["template"]
    assert crd_errors(crds, svc) == []
    assert probe_errors(svc) == []
    assert ksvc_secret_errors(svc) == []
    assert annotation_errors(tmpl["metadata"]["annotations"], known_annotations, name) == []
    assert timeout_errors(tmpl["spec"], name) == []
    assert thread_policy_errors(name, env, c["resources"]) == []
    # only generate changes: every other object is deploy/'s
    key = lambda o: (o["kind"], o["metadata"]["name"])  # noqa: E731
    base = {key(o): o for o in deploy_objs}
    got = {key(o): o for o in rendered[name]}
    assert set(got) == set(base)
    assert [k for k in base if base[k] != got[k]] == [("Service", "generate")]


def test_a_wrong_row_fails(rendered, tmp_path):
    """Negative controls: the derived SLOTS of the 8B shape in 3 GiB is 1 (it does not fit),
    not the 4 its overlay sets; with the table's 8 GiB it is 4. An explicit SLOTS too large
    for the limit does not fit."""
    path = tmp_path / "8b.gguf"
    write_shape(path, "llama-3.1-8b", TABLE["quant"], header_only=True)
    shape = sizing.read_shape(path)
    small = sizing.plan(shape, n_ctx=TABLE["n_ctx"], limits=sizing.Limits(3 * UNITS["Gi"], 4.0))
    assert (small.slots, small.fits) == (1, False)
    right = sizing.plan(shape, n_ctx=TABLE["n_ctx"],
                        limits=sizing.Limits(quantity(TABLE["models"]["llama-3.1-8b"]["memory"]),
                                             4.0))
    assert (right.slots, right.fits) == (4, True)
    # an explicit SLOTS (slots_set) must fit too: the 0.5B shape's 8 in 1 GiB does, 16 does not
    path = tmp_path / "half.gguf"
    write_shape(path, "qwen2.5-0.5b", TABLE["quant"], header_only=True)
    half = sizing.read_shape(path)
    fits = {n: sizing.plan(half, n_ctx=TABLE["n_ctx"], slots=n,
                           limits=sizing.Limits(UNITS["Gi"], 2.0)).fits for n in (8, 16)}
    assert fits == {8: True, 16: False}


def test_docs_show_the_sizing_table():
    """docs/deploy.md "Sizing" holds scripts/sizing_table.py's output for the current table."""
    assert sizing_table_doc.table() in (ROOT / "docs" / "deploy.md").read_text(), \
        "docs/deploy.md's sizing table is stale: paste the output of scripts/sizing_table.py"

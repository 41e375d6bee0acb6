"""Session fixtures of the manifest tests (tests/test_manifests_*.py load this module with
``pytest_plugins``, so each fixture is made once per run): the schemas fetched by
scripts/fetch_schemas.sh and the objects the real kustomize renders from deploy/ and eventing/."""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys

import jsonschema
import pytest

from tests.support import kustomize
from tests.support.manifest_schemas import annotation_keys, crd_validator, openapi_validator
from tests.support.manifests import ROOT, SCHEMAS, load_docs


@pytest.fixture(scope="session")
def schema_index() -> dict:
    """Run scripts/fetch_schemas.sh (idempotent, cached) and return its index.json."""
    env = {**os.environ, "PYTHON": sys.executable, "SCHEMAS_DIR": str(SCHEMAS)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_schemas.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"fetch_schemas.sh failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads((SCHEMAS / "index.json").read_text())


@pytest.fixture(scope="session")
def crds(schema_index) -> dict[str, jsonschema.protocols.Validator]:
    serving = SCHEMAS / schema_index["serving"]["dir"]
    eventing = SCHEMAS / schema_index["eventing"]["dir"]
    return {
        "Service": crd_validator(serving / "service.yaml"),
        "Broker": crd_validator(eventing / "broker.yaml"),
        "Trigger": crd_validator(eventing / "trigger.yaml"),
        "SinkBinding": crd_validator(eventing / "sinkbindings.yaml"),
        "RequestReply": crd_validator(eventing / "requestreply.yaml", "v1alpha1"),
        "NetworkPolicy": openapi_validator(
            SCHEMAS / schema_index["kubernetes"]["dir"] / "networking-v1-openapi.json",
            "io.k8s.api.networking.v1.NetworkPolicy", "networking.k8s.io/v1", "NetworkPolicy"),
    }


@pytest.fixture(scope="session")
def knative_data_plane(schema_index) -> dict:
    """What deploy/networkpolicy.yaml is checked against, from the pinned releases:
    queue-proxy's port constants (name -> port) and the pod labels of the activator, the
    autoscaler and the MT broker filter."""
    serving = SCHEMAS / schema_index["serving"]["dir"]
    eventing = SCHEMAS / schema_index["eventing"]["dir"]
    consts = dict((k, int(v)) for k, v in re.findall(
        r"^\s*(\w+Port)\s*=\s*(\d+)", (serving / "networking_constants.go").read_text(), re.M))

    def labels(path):
        (dep,) = [d for d in load_docs(path) if d.get("kind") == "Deployment"]
        return dep["spec"]["template"]["metadata"]["labels"]

    return {"ports": consts,
            "activator": labels(serving / "activator-deployment.yaml"),
            "autoscaler": labels(serving / "autoscaler-deployment.yaml"),
            "broker-filter": labels(eventing / "broker-filter-deployment.yaml")}


@pytest.fixture(scope="session")
def upstream_features(schema_index) -> dict:
    """The pinned Eventing release's config-features ConfigMap (its flag names)."""
    return load_docs(SCHEMAS / schema_index["eventing"]["dir"] / "config-features.yaml")[0]


@pytest.fixture(scope="session")
def func_schema(schema_index):
    """The official func.yaml schema validator, or None with the reason it is unavailable."""
    entry = schema_index["func"]
    if "dir" not in entry:
        return None, entry.get("error", "missing")
    schema = json.loads((SCHEMAS / entry["dir"] / "func_yaml-schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER), ""


@pytest.fixture(scope="session")
def known_annotations(schema_index) -> set[str]:
    """Annotation keys declared as constants in knative.dev/serving
    pkg/apis/{autoscaling,serving}."""
    return annotation_keys(SCHEMAS / schema_index["serving"]["dir"])


@pytest.fixture(scope="session")
def deploy_objs() -> list[dict]:
    """`kustomize build deploy/`: the Knative Services, and eventing/ through ../eventing."""
    return kustomize.build(ROOT / "deploy")


@pytest.fixture(scope="session")
def eventing_objs() -> list[dict]:
    """`kustomize build eventing/`: Broker, Triggers, SinkBindings."""
    return kustomize.build(ROOT / "eventing")

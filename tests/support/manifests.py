"""What the manifest tests (tests/test_manifests_*.py) check against: the shipped files, the
constants they must agree with, and small loaders. Rendering is tests/support/kustomize.py,
schemas tests/support/manifest_schemas.py, our own rules tests/support/manifest_rules.py."""
from __future__ import annotations

import copy
import json
import os
import re
from pathlib import Path

import yaml

# the functions' contracts (their request event types), the failed reply and the inference
# event: the truth the Trigger filters are checked against (no copy here, so they cannot drift)
from llmfn.contract import FunctionSpec, discover
from llmfn.event_requests import FAILED
from llmfn.events import INFERENCE_COMPLETED, TYPE_PREFIX  # noqa: F401  (manifest_rules)
from tests.support import kustomize

ROOT = Path(__file__).resolve().parents[2]
SCHEMAS = Path(os.environ.get("SCHEMAS_DIR", ROOT / ".state" / "schemas"))
LIVENESS, READINESS = "/health/liveness", "/health/readiness"
PORT = 8080
# Cluster default of config-defaults max-revision-timeout-seconds.
MAX_REVISION_TIMEOUT_S = 600
# The kustomizations we ship (`kubectl apply -k`).
KUSTOMIZATIONS = ("deploy", "eventing")


def function_specs(root: Path = ROOT) -> dict[str, FunctionSpec]:
    """The functions under ``root/functions``, from their contracts (``llmfn.contract``)."""
    return discover(root)


SPECS = function_specs()
FUNCTIONS = tuple(SPECS)
MODEL_FUNCTIONS = tuple(name for name, spec in SPECS.items() if spec.model is not None)
# The function serving each request event type (a Trigger routes it there).
REQUEST_TYPES = {typ: name for name, spec in SPECS.items() for typ in spec.events}
# What each Trigger subscriber accepts on POST /: its request event types, audit the inference
# event (the contracts' ``accepts``).
ACCEPTED_TYPES = {name: spec.event_types for name, spec in SPECS.items()}
# Every event type llmfn knows: a Trigger filter is evaluated against each of them.
KNOWN_TYPES = frozenset({*REQUEST_TYPES, FAILED, INFERENCE_COMPLETED,
                         *(kind.reply for spec in SPECS.values() for kind in spec.events.values())})
# eventing/: applied separately (docs/events.md), not part of eventing/kustomization.yaml.
FEATURES_YAML = ROOT / "eventing" / "features" / "delivery-retryafter.yaml"
REQUESTREPLY_YAML = ROOT / "eventing" / "examples" / "requestreply.yaml"
NO_RETRY_AFTER = ROOT / "eventing" / "components" / "no-retry-after"
# The feature flag the request Triggers' retryAfterMax needs.
RETRY_AFTER_FLAG = "delivery-retryafter"
# config-features requestreply-default-timeout when unset (knative.dev/eventing
# pkg/apis/feature DefaultRequestReplyTimeout).
REQUESTREPLY_DEFAULT_TIMEOUT_S = 30

# Env names whose values are credentials: must come from a Secret.
SECRET_ENVS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "API_KEYS", "MONGODB_URI"}
# Default of every llmfn setting, by env name (llmfn/src/llmfn/settings.py).
SETTING_DEFAULTS: dict = {}
try:
    import dataclasses

    from llmfn import settings as _settings

    for _cls in vars(_settings).values():
        if dataclasses.is_dataclass(_cls) and isinstance(_cls, type):
            SECRET_ENVS |= {f.metadata["key"] for f in dataclasses.fields(_cls)
                            if f.metadata.get("secret")}
            SETTING_DEFAULTS.update({f.metadata["key"]: f.default for f in dataclasses.fields(_cls)
                                     if "key" in f.metadata})
except ImportError:  # pragma: no cover
    pass

FUNC_SECRET_REF = re.compile(
    r"^\{\{\s*secret:[a-z0-9]([-a-z0-9.]*[a-z0-9])?:[-._a-zA-Z0-9]+\s*\}\}$")
# Literal credentials anywhere in a shipped file.
CREDENTIAL_PATTERNS = (
    re.compile(r"AKIA[0-9A-Z]{16}"),                       # AWS access key id
    re.compile(r"mongodb(\+srv)?://[^/\s:@]+:[^/\s@]+@"),   # user:password in a Mongo URI
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bsk-[A-Za-z0-9]{20,}"),                   # OpenAI-style key
)


def load_docs(path: Path) -> list[dict]:
    """All YAML documents of ``path`` (empty ones dropped)."""
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_func(name: str) -> dict:
    return load_docs(ROOT / "functions" / name / "func.yaml")[0]


def ksvcs(objs) -> dict[str, dict]:
    """The Knative Services among ``objs``, by name."""
    return {o["metadata"]["name"]: o for o in objs
            if o.get("kind") == "Service" and o["apiVersion"] == "serving.knative.dev/v1"}


def ksvc_copy(objs, name="generate") -> dict:
    """A copy of one Knative Service to break in a negative test."""
    return copy.deepcopy(ksvcs(objs)[name])


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


def named(objs, kind: str, name: str) -> dict:
    """The one object of ``kind`` called ``name``."""
    (obj,) = [o for o in of_kind(objs, kind) if o["metadata"]["name"] == name]
    return obj


def service_setting(ksvc: dict, key: str):
    """The value of llmfn setting ``key`` in a Knative Service: its env, else the default."""
    (c,) = ksvc["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    return env.get(key, SETTING_DEFAULTS.get(key))


_ISO_SECONDS = re.compile(r"^P(?:(\d+(?:\.\d+)?)D)?(?:T(?=\d)(?:(\d+(?:\.\d+)?)H)?"
                          r"(?:(\d+(?:\.\d+)?)M)?(?:(\d+(?:\.\d+)?)S)?)?$")


def iso_seconds(value) -> float | None:
    """An ISO 8601 duration of days, hours, minutes, seconds (``PT5M``) in seconds; None if it
    is not one (years and months have no fixed length: not accepted either)."""
    m = _ISO_SECONDS.match(str(value)) if value not in (None, "P", "PT") else None
    if m is None or not any(m.groups()):
        return None
    d, h, mi, s = (float(g or 0) for g in m.groups())
    return ((d * 24 + h) * 60 + mi) * 60 + s


def trigger_files() -> list[Path]:
    """eventing/trigger-*.yaml: the files a Trigger lives in (scripts/broker.py reads them)."""
    return sorted((ROOT / "eventing").glob("trigger-*.yaml"))


def shipped_yaml() -> list[Path]:
    files = [ROOT / "functions" / f / "func.yaml" for f in FUNCTIONS]
    for d in KUSTOMIZATIONS:
        files += sorted((ROOT / d).rglob("*.yaml"))
    return files


def patch_for(name: str) -> dict:
    return load_docs(ROOT / "deploy" / "patches" / f"{name}-timeouts.yaml")[0]


def containerfile(name: str) -> Path:
    """generate and embed share functions/Containerfile (their folder is the build context)."""
    return ROOT / "functions" / ("Containerfile" if name in MODEL_FUNCTIONS
                                 else f"{name}/Containerfile")


def merge_patch(target, patch):
    """RFC 7386 JSON merge patch (what `kubectl patch --type merge` applies)."""
    if not isinstance(patch, dict):
        return copy.deepcopy(patch)
    out = copy.deepcopy(target) if isinstance(target, dict) else {}
    for k, v in patch.items():
        if v is None:
            out.pop(k, None)
        else:
            out[k] = merge_patch(out.get(k), v)
    return out


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


# -- deploy/examples: generate sized per model, kustomize Components over deploy/ --------------
EXAMPLES = ROOT / "deploy" / "examples"


def sizing_table() -> dict:
    """deploy/examples/sizing.json: the sizing table the overlays and docs follow."""
    return json.loads((EXAMPLES / "sizing.json").read_text())


def build_example(name: str, workdir: Path) -> list[dict]:
    """`kustomize build` of deploy/ with the Component deploy/examples/``name``, through a
    kustomization in ``workdir`` (as docs/deploy.md "Sizing" has users write it)."""
    deploy = os.path.relpath(ROOT / "deploy", workdir)
    (workdir / "kustomization.yaml").write_text(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\n"
        f"resources:\n  - {deploy}\ncomponents:\n  - {deploy}/examples/{name}\n")
    return kustomize.build(workdir)

"""Validate every YAML we ship without a cluster.

Schemas: the Knative Serving/Eventing CRD ``openAPIV3Schema`` (made strict: a field the API
server would prune is an error here) and knative/func's ``func_yaml-schema.json``, fetched and
cached by ``scripts/fetch_schemas.sh``. Rules of our own: Knative annotation keys exist (from the
Serving source), probe paths, SinkBinding subjects, the Trigger filter vs the emitted event type,
no secret values, func.yaml <-> deploy/ <-> patches agree, Containerfile hygiene. Every validator
returns a list of errors and has a negative test: a deliberately broken copy must be rejected.
"""
from __future__ import annotations

import copy
import json
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import jsonschema
import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
SCHEMAS = Path(os.environ.get("SCHEMAS_DIR", ROOT / ".state" / "schemas"))
FUNCTIONS = ("generate", "embed", "audit")
MODEL_FUNCTIONS = ("generate", "embed")
LIVENESS, READINESS = "/health/liveness", "/health/readiness"
PORT = 8080
# Cluster default of config-defaults max-revision-timeout-seconds.
MAX_REVISION_TIMEOUT_S = 600

try:  # the event type the functions emit (llmfn/src/llmfn/events.py)
    sys.path.insert(0, str(ROOT / "llmfn" / "src"))
    from llmfn.events import INFERENCE_COMPLETED, TYPE_PREFIX
except ImportError:  # pragma: no cover - before events.py exists
    INFERENCE_COMPLETED, TYPE_PREFIX = "dev.llmfn.inference.completed.v1", "dev.llmfn.inference."

# Env names whose values are credentials: must come from a Secret.
SECRET_ENVS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "API_KEYS", "MONGODB_URI"}
try:
    import dataclasses

    from llmfn import settings as _settings

    for _cls in vars(_settings).values():
        if dataclasses.is_dataclass(_cls) and isinstance(_cls, type):
            SECRET_ENVS |= {f.metadata["key"] for f in dataclasses.fields(_cls)
                            if f.metadata.get("secret")}
except ImportError:  # pragma: no cover
    pass

FUNC_SECRET_REF = re.compile(r"^\{\{\s*secret:[a-z0-9]([-a-z0-9.]*[a-z0-9])?:[-._a-zA-Z0-9]+\s*\}\}$")
# Literal credentials anywhere in a shipped file.
CREDENTIAL_PATTERNS = (
    re.compile(r"AKIA[0-9A-Z]{16}"),                       # AWS access key id
    re.compile(r"mongodb(\+srv)?://[^/\s:@]+:[^/\s@]+@"),   # user:password in a Mongo URI
    re.compile(r"-----BEGIN [A-Z ]*PRIVATE KEY-----"),
    re.compile(r"\bsk-[A-Za-z0-9]{20,}"),                   # OpenAI-style key
)


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------

def load_docs(path: Path) -> list[dict]:
    """All YAML documents of ``path`` (empty ones dropped)."""
    with open(path) as fh:
        return [d for d in yaml.safe_load_all(fh) if d is not None]


def load_func(name: str) -> dict:
    return load_docs(ROOT / "functions" / name / "func.yaml")[0]


def get_path(obj, dotted: str):
    for part in dotted.split("."):
        obj = obj[part]
    return obj


def set_path(obj, dotted: str, value) -> None:
    *parents, last = dotted.split(".")
    for part in parents:
        obj = obj[part]
    obj[last] = value


KUSTOMIZE_KEYS = {"apiVersion", "kind", "namespace", "resources", "images", "replacements"}


def render(kdir: Path) -> tuple[list[dict], list[str]]:
    """A small `kustomize build` for the features we use; returns (objects, errors)."""
    errors: list[str] = []
    kfile = kdir / "kustomization.yaml"
    if not kfile.is_file():
        return [], [f"{kdir}: no kustomization.yaml"]
    k = load_docs(kfile)[0]
    unknown = set(k) - KUSTOMIZE_KEYS
    if unknown:
        errors.append(f"{kfile}: keys this renderer does not support: {sorted(unknown)}")
    objs: list[dict] = []
    for res in k.get("resources", []):
        path = (kdir / res).resolve()
        if path.is_dir():
            sub, sub_errors = render(path)
            objs += sub
            errors += sub_errors
        elif path.is_file():
            objs += load_docs(path)
        else:
            errors.append(f"{kfile}: resource {res!r} does not exist")
    for img in k.get("images", []):
        hits = 0
        for obj in objs:
            for c in _containers(obj):
                base = c.get("image", "").rsplit(":", 1)[0]
                if base == img["name"]:
                    hits += 1
                    c["image"] = f"{img.get('newName', img['name'])}:{img.get('newTag', 'latest')}"
        if not hits:
            errors.append(f"{kfile}: image {img['name']!r} matches no container")
    if "namespace" in k:
        for obj in objs:
            obj.setdefault("metadata", {})["namespace"] = k["namespace"]
    for rep in k.get("replacements", []):
        src = [o for o in objs if o.get("kind") == rep["source"]["kind"]]
        if len(src) != 1:
            errors.append(f"{kfile}: replacement source {rep['source']} matches {len(src)} objects")
            continue
        value = get_path(src[0], rep["source"]["fieldPath"])
        for target in rep["targets"]:
            matched = [o for o in objs if o.get("kind") == target["select"]["kind"]]
            if not matched:
                errors.append(f"{kfile}: replacement target {target['select']} matches nothing")
            for obj in matched:
                for fp in target["fieldPaths"]:
                    try:
                        get_path(obj, fp)
                    except (KeyError, TypeError):
                        errors.append(f"{kfile}: {obj['kind']}/{obj['metadata']['name']} "
                                      f"has no {fp}")
                        continue
                    set_path(obj, fp, value)
    return objs, errors


def _containers(obj: dict) -> list[dict]:
    if obj.get("kind") != "Service" or not obj.get("apiVersion", "").startswith("serving.knative"):
        return []
    return obj.get("spec", {}).get("template", {}).get("spec", {}).get("containers", [])


def ksvcs(objs) -> dict[str, dict]:
    return {o["metadata"]["name"]: o for o in objs
            if o.get("kind") == "Service" and o["apiVersion"] == "serving.knative.dev/v1"}


def of_kind(objs, kind: str) -> list[dict]:
    return [o for o in objs if o.get("kind") == kind]


# --------------------------------------------------------------------------------------------
# Schemas
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def schema_index() -> dict:
    """Run scripts/fetch_schemas.sh (idempotent, cached) and return its index.json."""
    env = {**os.environ, "PYTHON": sys.executable, "SCHEMAS_DIR": str(SCHEMAS)}
    proc = subprocess.run(["bash", str(ROOT / "scripts" / "fetch_schemas.sh")], env=env,
                          capture_output=True, text=True, timeout=900)
    if proc.returncode != 0:
        pytest.fail(f"fetch_schemas.sh failed:\n{proc.stdout}\n{proc.stderr}")
    return json.loads((SCHEMAS / "index.json").read_text())


OBJECT_META = {
    "type": "object",
    "required": ["name"],
    "additionalProperties": False,
    "properties": {
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$", "maxLength": 63},
        "namespace": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "labels": {"type": "object", "additionalProperties": {"type": "string"}},
        "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
    },
}


def strict(schema):
    """A structural CRD schema as JSON schema where unknown fields fail instead of being pruned.

    Objects with ``properties`` get ``additionalProperties: false`` unless they carry
    ``x-kubernetes-preserve-unknown-fields``; ``x-kubernetes-int-or-string`` becomes
    integer-or-string.
    """
    if isinstance(schema, list):
        return [strict(s) for s in schema]
    if not isinstance(schema, dict):
        return schema
    out = {}
    for key, value in schema.items():
        if key in ("properties", "patternProperties"):
            out[key] = {k: strict(v) for k, v in value.items()}
        elif key in ("items", "additionalProperties", "not", "allOf", "anyOf", "oneOf"):
            out[key] = strict(value)
        else:
            out[key] = value
    if out.pop("x-kubernetes-int-or-string", False):
        out.pop("type", None)
        out["anyOf"] = [{"type": "integer"}, {"type": "string"}]
    if ("properties" in out and "additionalProperties" not in out
            and not out.get("x-kubernetes-preserve-unknown-fields")):
        out["additionalProperties"] = False
    return out


def crd_validator(path: Path, version: str = "v1") -> jsonschema.protocols.Validator:
    crd = load_docs(path)[0]
    (ver,) = [v for v in crd["spec"]["versions"] if v["name"] == version]
    schema = strict(ver["schema"]["openAPIV3Schema"])
    schema["properties"]["metadata"] = OBJECT_META
    schema["required"] = sorted(set(schema.get("required", [])) | {"apiVersion", "kind",
                                                                    "metadata"})
    api = f"{crd['spec']['group']}/{version}"
    schema["properties"]["apiVersion"] = {"const": api}
    schema["properties"]["kind"] = {"const": crd["spec"]["names"]["kind"]}
    return jsonschema.Draft7Validator(schema)


def schema_errors(validator, doc) -> list[str]:
    return [f"{'/'.join(map(str, e.absolute_path)) or '<root>'}: {e.message}"
            for e in sorted(validator.iter_errors(doc), key=lambda e: list(e.absolute_path))]


@pytest.fixture(scope="session")
def crds(schema_index) -> dict[str, jsonschema.protocols.Validator]:
    serving = SCHEMAS / schema_index["serving"]["dir"]
    eventing = SCHEMAS / schema_index["eventing"]["dir"]
    return {
        "Service": crd_validator(serving / "service.yaml"),
        "Broker": crd_validator(eventing / "broker.yaml"),
        "Trigger": crd_validator(eventing / "trigger.yaml"),
        "SinkBinding": crd_validator(eventing / "sinkbindings.yaml"),
    }


def crd_errors(crds, obj) -> list[str]:
    validator = crds.get(obj.get("kind"))
    if validator is None:
        return [f"no CRD schema for kind {obj.get('kind')!r}"]
    return schema_errors(validator, obj)


# Our own statement of the func.yaml fields we use (knative/func pkg/functions types), checked
# always; the official schema is checked in addition whenever fetch_schemas.sh could get it.
_QTY = {"type": "string", "pattern": r"^([+-]?[0-9.]+)([eEinumkKMGTP]*[-+]?[0-9]*)$"}
_ENV = {"type": "object", "additionalProperties": False, "required": ["name", "value"],
        "properties": {"name": {"type": "string", "pattern": r"^[-._a-zA-Z][-._a-zA-Z0-9]*$"},
                       "value": {"type": "string"}}}
FUNC_SUBSET_SCHEMA = {
    "type": "object",
    "additionalProperties": False,
    "required": ["specVersion", "name", "runtime", "created"],
    "properties": {
        "specVersion": {"type": "string", "pattern": r"^\d+\.\d+\.\d+$"},
        "name": {"type": "string", "pattern": r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$"},
        "runtime": {"enum": ["python"]},
        "created": {"type": "string", "format": "date-time"},
        "invoke": {"enum": ["http", "cloudevent"]},
        "build": {"type": "object", "additionalProperties": False, "properties": {
            "builder": {"enum": ["pack", "s2i"]},
            "builderImages": {"type": "object", "additionalProperties": {"type": "string"}},
            "buildEnvs": {"type": "array", "items": _ENV}}},
        "run": {"type": "object", "additionalProperties": False, "properties": {
            "envs": {"type": "array", "items": _ENV},
            "volumes": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["path"],
                "properties": {
                    "path": {"type": "string", "pattern": "^/"},
                    "emptyDir": {"type": "object", "additionalProperties": False, "properties": {
                        "medium": {"enum": ["", "Memory"]}, "sizeLimit": _QTY}},
                    "persistentVolumeClaim": {"type": "object"},
                    "secret": {"type": "string"}, "configMap": {"type": "string"}},
                "oneOf": [{"required": [k]} for k in
                          ("emptyDir", "persistentVolumeClaim", "secret", "configMap")]}}}},
        "deploy": {"type": "object", "additionalProperties": False, "properties": {
            "annotations": {"type": "object", "additionalProperties": {"type": "string"}},
            "healthEndpoints": {"type": "object", "additionalProperties": False, "properties": {
                "liveness": {"type": "string"}, "readiness": {"type": "string"}}},
            "subscriptions": {"type": "array", "items": {
                "type": "object", "additionalProperties": False, "required": ["source"],
                "properties": {"source": {"type": "string"},
                               "filters": {"type": "object",
                                           "additionalProperties": {"type": "string"}}}}},
            "options": {"type": "object", "additionalProperties": False, "properties": {
                "scale": {"type": "object", "additionalProperties": False, "properties": {
                    "min": {"type": "integer", "minimum": 0},
                    "max": {"type": "integer", "minimum": 0},
                    "metric": {"enum": ["concurrency", "rps"]},
                    "target": {"type": "number", "minimum": 0},
                    "utilization": {"type": "number", "minimum": 1, "maximum": 100}}},
                "resources": {"type": "object", "additionalProperties": False, "properties": {
                    "requests": {"type": "object", "additionalProperties": False,
                                 "properties": {"cpu": _QTY, "memory": _QTY}},
                    "limits": {"type": "object", "additionalProperties": False, "properties": {
                        "cpu": _QTY, "memory": _QTY,
                        "concurrency": {"type": "integer", "minimum": 0}}}}}}}}},
    },
}


@pytest.fixture(scope="session")
def func_schema(schema_index):
    """The official func.yaml schema validator, or None with the reason it is unavailable."""
    entry = schema_index["func"]
    if "dir" not in entry:
        return None, entry.get("error", "missing")
    schema = json.loads((SCHEMAS / entry["dir"] / "func_yaml-schema.json").read_text())
    cls = jsonschema.validators.validator_for(schema)
    return cls(schema, format_checker=cls.FORMAT_CHECKER), ""


def func_subset_errors(doc) -> list[str]:
    v = jsonschema.Draft7Validator(FUNC_SUBSET_SCHEMA,
                                   format_checker=jsonschema.Draft7Validator.FORMAT_CHECKER)
    return schema_errors(v, doc)


# --------------------------------------------------------------------------------------------
# Rules of our own
# --------------------------------------------------------------------------------------------

_KEY_CONST = re.compile(r'^\s*(\w+)\s*=\s*(?:"([\w.]*)"\s*\+\s*)?GroupName\s*\+\s*"(/[^"]+)"',
                        re.M)


@pytest.fixture(scope="session")
def known_annotations(schema_index) -> set[str]:
    """Annotation keys declared as constants in knative.dev/serving pkg/apis/{autoscaling,serving}."""
    d = SCHEMAS / schema_index["serving"]["dir"]
    keys = set()
    for fname, group in (("autoscaling_register.go", "autoscaling.knative.dev"),
                         ("serving_register.go", "serving.knative.dev")):
        for _, prefix, suffix in _KEY_CONST.findall((d / fname).read_text()):
            keys.add(f"{prefix or ''}{group}{suffix}")
    assert "autoscaling.knative.dev/initial-scale" in keys, "register.go parsing broke"
    assert "serving.knative.dev/progress-deadline" in keys, "register.go parsing broke"
    return keys


KNATIVE_ANNOTATION = re.compile(r"^([\w.-]+\.)?(autoscaling|serving)\.knative\.dev/")


def annotation_errors(annotations: dict, known: set[str], where: str) -> list[str]:
    return [f"{where}: unknown Knative annotation {k!r}" for k in annotations
            if KNATIVE_ANNOTATION.match(k) and k not in known]


def probe_errors(ksvc: dict) -> list[str]:
    """One container, one port 8080 named http1/h2c, probes on the functions' health paths."""
    name = ksvc["metadata"]["name"]
    errors = []
    containers = ksvc["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        errors.append(f"{name}: expected 1 container, got {len(containers)}")
    for c in containers:
        ports = c.get("ports", [])
        if [p.get("containerPort") for p in ports] != [PORT]:
            errors.append(f"{name}: container ports {ports} != one port {PORT}")
        if any(p.get("name") not in ("http1", "h2c") for p in ports):
            errors.append(f"{name}: port name must be http1 or h2c")
        for probe, path in (("livenessProbe", LIVENESS), ("readinessProbe", READINESS)):
            got = c.get(probe, {}).get("httpGet", {})
            if got.get("path") != path:
                errors.append(f"{name}: {probe} path {got.get('path')!r} != {path!r}")
            if got.get("port") not in (None, PORT):
                errors.append(f"{name}: {probe} port {got.get('port')} != {PORT}")
    return errors


def func_health_errors(doc: dict) -> list[str]:
    he = doc.get("deploy", {}).get("healthEndpoints", {})
    return [f"{doc['name']}: healthEndpoints.{k} {he.get(k)!r} != {v!r}"
            for k, v in (("liveness", LIVENESS), ("readiness", READINESS)) if he.get(k) != v]


def sinkbinding_errors(objs: list[dict]) -> list[str]:
    """Exactly generate and embed are bound, each to the Broker of this kustomization."""
    errors = []
    brokers = {b["metadata"]["name"] for b in of_kind(objs, "Broker")}
    subjects = []
    for sb in of_kind(objs, "SinkBinding"):
        subj, sink = sb["spec"]["subject"], sb["spec"]["sink"].get("ref", {})
        if (subj.get("apiVersion"), subj.get("kind")) != ("serving.knative.dev/v1", "Service"):
            errors.append(f"{sb['metadata']['name']}: subject is not a Knative Service")
        if "name" not in subj:
            errors.append(f"{sb['metadata']['name']}: subject must name the service")
        subjects.append(subj.get("name"))
        if sink.get("kind") != "Broker" or sink.get("name") not in brokers:
            errors.append(f"{sb['metadata']['name']}: sink {sink} is not the Broker {brokers}")
    if sorted(subjects) != sorted(MODEL_FUNCTIONS):
        errors.append(f"SinkBinding subjects {sorted(subjects)} != {sorted(MODEL_FUNCTIONS)}")
    return errors


ISO_DURATION = re.compile(r"^P(?!$)(\d+(\.\d+)?Y)?(\d+(\.\d+)?M)?(\d+(\.\d+)?D)?"
                          r"(T(?=\d)(\d+(\.\d+)?H)?(\d+(\.\d+)?M)?(\d+(\.\d+)?S)?)?$")
DELIVERY_KEYS = {"retry", "backoffPolicy", "backoffDelay", "deadLetterSink", "timeout", "format"}


def trigger_errors(objs: list[dict]) -> list[str]:
    """The audit Trigger: on our Broker, filters match the emitted type, delivery is complete."""
    errors = []
    brokers = {b["metadata"]["name"] for b in of_kind(objs, "Broker")}
    triggers = of_kind(objs, "Trigger")
    if len(triggers) != 1:
        return [f"expected 1 Trigger, got {len(triggers)}"]
    spec = triggers[0]["spec"]
    if spec.get("broker") not in brokers:
        errors.append(f"Trigger broker {spec.get('broker')!r} not in {brokers}")
    prefixes = [f["prefix"]["type"] for f in spec.get("filters", []) if "type" in f.get("prefix", {})]
    if prefixes != [TYPE_PREFIX]:
        errors.append(f"Trigger filters prefix {prefixes} != [{TYPE_PREFIX!r}]")
    if not all(INFERENCE_COMPLETED.startswith(p) for p in prefixes):
        errors.append(f"Trigger prefix does not match {INFERENCE_COMPLETED!r}")
    sub = spec.get("subscriber", {}).get("ref", {})
    if (sub.get("kind"), sub.get("name")) != ("Service", "audit") or "uri" in spec["subscriber"]:
        errors.append(f"Trigger subscriber {spec.get('subscriber')} is not audit's POST /")
    delivery = spec.get("delivery", {})
    if set(delivery) - DELIVERY_KEYS:
        errors.append(f"unknown delivery keys {sorted(set(delivery) - DELIVERY_KEYS)}")
    if not isinstance(delivery.get("retry"), int) or delivery["retry"] < 1:
        errors.append("delivery.retry must be >= 1")
    if delivery.get("backoffPolicy") not in ("exponential", "linear"):
        errors.append(f"delivery.backoffPolicy {delivery.get('backoffPolicy')!r}")
    if not ISO_DURATION.match(str(delivery.get("backoffDelay", ""))):
        errors.append(f"delivery.backoffDelay {delivery.get('backoffDelay')!r} is not ISO 8601")
    dls = delivery.get("deadLetterSink", {})
    if (dls.get("ref", {}).get("name"), dls.get("uri")) != ("audit", "/dead-letter"):
        errors.append(f"deadLetterSink {dls} is not audit's /dead-letter")
    return errors


def broker_errors(objs: list[dict]) -> list[str]:
    brokers = of_kind(objs, "Broker")
    if len(brokers) != 1:
        return [f"expected 1 Broker, got {len(brokers)}"]
    cls = brokers[0]["metadata"].get("annotations", {}).get("eventing.knative.dev/broker.class")
    return [] if cls in ("MTChannelBasedBroker", "Kafka") else [f"broker class {cls!r}"]


def ksvc_secret_errors(ksvc: dict) -> list[str]:
    errors = []
    for c in ksvc["spec"]["template"]["spec"]["containers"]:
        for env in c.get("env", []):
            if env["name"] in SECRET_ENVS and ("value" in env or
                                               "secretKeyRef" not in env.get("valueFrom", {})):
                errors.append(f"{ksvc['metadata']['name']}: {env['name']} must use secretKeyRef")
    return errors


def func_secret_errors(doc: dict) -> list[str]:
    envs = doc.get("run", {}).get("envs", []) + doc.get("build", {}).get("buildEnvs", [])
    return [f"{doc['name']}: {e['name']} must be a {{{{ secret:name:key }}}} reference"
            for e in envs if e["name"] in SECRET_ENVS and not FUNC_SECRET_REF.match(e["value"])]


def text_secret_errors(text: str, where: str, *, is_yaml: bool = True) -> list[str]:
    errors = [f"{where}: looks like a credential ({p.pattern})"
              for p in CREDENTIAL_PATTERNS if p.search(text)]
    for doc in yaml.safe_load_all(text) if is_yaml else ():
        if isinstance(doc, dict) and doc.get("kind") == "Secret":
            errors.append(f"{where}: ships a Secret object")
    return errors


def func_scaling_errors(doc: dict) -> list[str]:
    """The LLM-on-CPU scaling policy of the issue."""
    name, errors = doc["name"], []
    opts = doc["deploy"]["options"]
    scale, limits = opts["scale"], opts["resources"]["limits"]
    ann = doc["deploy"].get("annotations", {})
    if scale.get("min") != 0 or scale.get("metric") != "concurrency":
        errors.append(f"{name}: scale must be min 0, metric concurrency")
    if not 1 <= scale.get("max", 0) <= 10:
        errors.append(f"{name}: scale.max must be bounded (1..10)")
    if ann.get("autoscaling.knative.dev/initial-scale") != "0":
        errors.append(f"{name}: initial-scale must be \"0\"")
    if "serving.knative.dev/progress-deadline" not in ann:
        errors.append(f"{name}: progress-deadline missing")
    if not ({"autoscaling.knative.dev/scale-to-zero-pod-retention-period",
             "autoscaling.knative.dev/scale-down-delay"} & set(ann)):
        errors.append(f"{name}: no scale-down delay / scale-to-zero retention")
    envs = {e["name"]: e.get("value") for e in doc["run"].get("envs", [])}
    # generate: one pod serves SLOTS streams; scale out when 3 of 4 are busy (docs/deploy.md)
    want = {"generate": (int(envs.get("SLOTS", 0)), 75, int(envs.get("SLOTS", 0))),
            "embed": (8, 100, 8)}.get(name)
    got = (scale.get("target"), scale.get("utilization"), limits.get("concurrency"))
    if want and got != want:
        errors.append(f"{name}: (target, utilization, limits.concurrency) {got} != {want}")
    if name == "audit" and not limits.get("concurrency", 0) > 8:
        errors.append("audit: concurrency must exceed embed's")
    if name in MODEL_FUNCTIONS:
        cmake = {e["name"]: e["value"] for e in doc["build"].get("buildEnvs", [])}.get("CMAKE_ARGS",
                                                                                      "")
        if "-DGGML_NATIVE=OFF" not in cmake or "-DGGML_CPU_ALL_VARIANTS=ON" not in cmake:
            errors.append(f"{name}: buildEnvs CMAKE_ARGS must build portable CPU variants")
        errors += thread_policy_errors(name, envs, opts["resources"])
        vols = {v["path"]: v for v in doc["run"].get("volumes", [])}
        cache = vols.get(envs.get("MODEL_CACHE_DIR"), {})
        if "sizeLimit" not in cache.get("emptyDir", {}):
            errors.append(f"{name}: MODEL_CACHE_DIR must be an emptyDir with sizeLimit")
    want_invoke = "cloudevent" if name == "audit" else "http"
    if doc.get("invoke", "http") != want_invoke:
        errors.append(f"{name}: invoke must be {want_invoke}")
    return errors


def thread_policy_errors(name: str, envs: dict, resources: dict) -> list[str]:
    """One decision for generate and embed (docs/deploy.md "Threads and CPU"): llama.cpp
    threads = CPU request = CPU limit, and OpenMP threads sleep instead of spinning."""
    errors = []
    cpus = {resources["requests"].get("cpu"), resources["limits"].get("cpu")}
    if cpus != {envs.get("N_THREADS")}:
        errors.append(f"{name}: N_THREADS {envs.get('N_THREADS')} must equal the CPU request "
                      f"and limit {sorted(map(str, cpus))}")
    if envs.get("OMP_WAIT_POLICY") != "passive":
        errors.append(f"{name}: OMP_WAIT_POLICY must be passive")
    return errors


def mebibytes(quantity: str) -> float:
    units = {"Ki": 1 / 1024, "Mi": 1, "Gi": 1024}
    return float(quantity[:-2]) * units[quantity[-2:]]


def _secret_ref(env: dict) -> str:
    ref = env["valueFrom"]["secretKeyRef"]
    return f"{{{{ secret:{ref['name']}:{ref['key']} }}}}"


def consistency_errors(doc: dict, ksvc: dict, patch: dict | None) -> list[str]:
    """func.yaml, the plain Knative Service and the timeout patch say the same thing."""
    name, errors = doc["name"], []
    tmpl = ksvc["spec"]["template"]
    (c,) = tmpl["spec"]["containers"]
    ann = tmpl["metadata"].get("annotations", {})
    opts = doc["deploy"]["options"]
    scale = opts["scale"]
    expect = {"autoscaling.knative.dev/min-scale": scale["min"],
              "autoscaling.knative.dev/max-scale": scale["max"],
              "autoscaling.knative.dev/metric": scale["metric"],
              "autoscaling.knative.dev/target": scale["target"],
              "autoscaling.knative.dev/target-utilization-percentage": scale["utilization"],
              **doc["deploy"].get("annotations", {})}
    for k, v in expect.items():
        if ann.get(k) != str(v):
            errors.append(f"{name}: annotation {k} {ann.get(k)!r} != func.yaml {str(v)!r}")
    if tmpl["spec"].get("containerConcurrency") != opts["resources"]["limits"]["concurrency"]:
        errors.append(f"{name}: containerConcurrency != limits.concurrency")
    res = {k: {r: v for r, v in opts["resources"][k].items() if r != "concurrency"}
           for k in ("requests", "limits")}
    if c.get("resources") != res:
        errors.append(f"{name}: resources {c.get('resources')} != func.yaml {res}")
    func_env = {e["name"]: e["value"] for e in doc["run"]["envs"]}
    svc_env = {e["name"]: e["value"] if "value" in e else _secret_ref(e) for e in c.get("env", [])}
    if func_env != svc_env:
        diff = sorted(set(func_env.items()) ^ set(svc_env.items()))
        errors.append(f"{name}: env differs from func.yaml: {diff}")
    func_vols = {v["path"]: v.get("emptyDir") for v in doc["run"].get("volumes", [])}
    vols = {v["name"]: v.get("emptyDir") for v in tmpl["spec"].get("volumes", [])}
    svc_vols = {m["mountPath"]: vols.get(m["name"]) for m in c.get("volumeMounts", [])}
    if func_vols != svc_vols:
        errors.append(f"{name}: volumes {svc_vols} != func.yaml {func_vols}")
    keys = ("timeoutSeconds", "responseStartTimeoutSeconds", "idleTimeoutSeconds")
    if patch is not None:
        p = patch["spec"]["template"]["spec"]
        for k in keys:
            if p.get(k) != tmpl["spec"].get(k):
                errors.append(f"{name}: {k} patch {p.get(k)} != deploy/ {tmpl['spec'].get(k)}")
    return errors


def timeout_errors(spec: dict, where: str) -> list[str]:
    t = spec.get("timeoutSeconds")
    r, i = spec.get("responseStartTimeoutSeconds"), spec.get("idleTimeoutSeconds")
    errors = []
    if not isinstance(t, int) or not 0 < t <= MAX_REVISION_TIMEOUT_S:
        errors.append(f"{where}: timeoutSeconds {t} not in 1..{MAX_REVISION_TIMEOUT_S}")
    for k, v in (("responseStartTimeoutSeconds", r), ("idleTimeoutSeconds", i)):
        if not isinstance(v, int) or not isinstance(t, int) or not 0 <= v <= t:
            errors.append(f"{where}: {k} {v} must be within 0..timeoutSeconds")
    return errors


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


BASE_IMAGE = re.compile(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", re.M)


def containerfile(name: str) -> Path:
    """generate and embed share functions/Containerfile (their folder is the build context)."""
    return ROOT / "functions" / ("Containerfile" if name in MODEL_FUNCTIONS
                                 else f"{name}/Containerfile")


def containerfile_errors(text: str, name: str) -> list[str]:
    errors = []
    text = "\n".join(line for line in text.splitlines() if not line.lstrip().startswith("#"))
    if not BASE_IMAGE.search(text):
        errors.append(f"{name}: base image must be python:3.11.<patch>-slim-bookworm")
    user = re.findall(r"^USER\s+(\S+)", text, re.M)
    if not user or user[-1].split(":")[0] in ("0", "root"):
        errors.append(f"{name}: must end as a non-root USER")
    if '"-c", "llmfn/gunicorn_conf.py", "function.wsgi:app"' not in text:
        errors.append(f"{name}: entry point must be gunicorn -c llmfn/gunicorn_conf.py ...")
    if f"EXPOSE {PORT}" not in text or f"PORT={PORT}" not in text:
        errors.append(f"{name}: must EXPOSE and default PORT {PORT}")
    if "march=native" in text or "GGML_NATIVE=ON" in text:
        errors.append(f"{name}: native CPU flags in an image")
    lines = text.splitlines()
    idx = {key: next((n for n, line in enumerate(lines) if line.startswith(key)), None)
           for key in ("COPY pyproject.toml", "COPY function/", "COPY llmfn/")}
    if None in idx.values() or not idx["COPY pyproject.toml"] < min(idx["COPY function/"],
                                                                    idx["COPY llmfn/"]):
        errors.append(f"{name}: dependency layer (pyproject.toml) must come before the code")
    if name in MODEL_FUNCTIONS:
        if "-DGGML_NATIVE=OFF" not in text or "-DGGML_CPU_ALL_VARIANTS=ON" not in text:
            errors.append(f"{name}: llama.cpp must be built with portable CPU dispatch")
        if not re.search(r"^FROM .* AS builder$", text, re.M) or "COPY --from=builder" not in text:
            errors.append(f"{name}: llama.cpp must be built in a builder stage")
    return errors


# --------------------------------------------------------------------------------------------
# Fixtures: what we ship
# --------------------------------------------------------------------------------------------

@pytest.fixture(scope="session")
def deploy_objs():
    objs, errors = render(ROOT / "deploy")
    assert errors == []
    return objs


@pytest.fixture(scope="session")
def eventing_objs():
    objs, errors = render(ROOT / "eventing")
    assert errors == []
    return objs


def shipped_yaml() -> list[Path]:
    files = [ROOT / "functions" / f / "func.yaml" for f in FUNCTIONS]
    for d in ("deploy", "eventing"):
        files += sorted((ROOT / d).rglob("*.yaml"))
    return files


def patch_for(name: str) -> dict:
    return load_docs(ROOT / "deploy" / "patches" / f"{name}-timeouts.yaml")[0]


# --------------------------------------------------------------------------------------------
# Positive tests
# --------------------------------------------------------------------------------------------

def test_every_shipped_yaml_parses():
    for path in shipped_yaml():
        assert load_docs(path), f"{path} is empty"


@pytest.mark.parametrize("kdir", ["deploy", "eventing"])
def test_kustomization_renders(kdir):
    objs, errors = render(ROOT / kdir)
    assert errors == []
    assert objs


@pytest.mark.parametrize("kdir", ["deploy", "eventing"])
def test_renderer_agrees_with_kubectl_kustomize(kdir):
    """Our small renderer gives exactly what `kubectl kustomize` gives, where kubectl exists."""
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("kubectl not installed; the renderer alone is used")
    proc = subprocess.run([kubectl, "kustomize", str(ROOT / kdir)], capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    theirs = [d for d in yaml.safe_load_all(proc.stdout) if d is not None]
    ours, _ = render(ROOT / kdir)
    canon = lambda objs: sorted(json.dumps(o, sort_keys=True) for o in objs)  # noqa: E731
    assert canon(ours) == canon(theirs)


def test_rendered_objects_match_crd_schemas(crds, deploy_objs, eventing_objs):
    for obj in deploy_objs + eventing_objs:
        assert crd_errors(crds, obj) == [], f"{obj['kind']}/{obj['metadata']['name']}"
    assert sorted(ksvcs(deploy_objs)) == sorted(FUNCTIONS)


@pytest.mark.parametrize("name", FUNCTIONS)
def test_timeout_patch_keeps_service_valid(crds, deploy_objs, name):
    patch = patch_for(name)
    assert set(patch) == {"spec"} and set(patch["spec"]) == {"template"}
    patched = merge_patch(ksvcs(deploy_objs)[name], patch)
    assert crd_errors(crds, patched) == []
    assert timeout_errors(patched["spec"]["template"]["spec"], name) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml_matches_official_schema(func_schema, name):
    validator, reason = func_schema
    if validator is None:
        pytest.skip(f"official func.yaml schema unavailable ({reason}); set FUNC_SCHEMA_JSON "
                    "to a local copy of schema/func_yaml-schema.json to check it")
    assert schema_errors(validator, load_func(name)) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml_rules(name, known_annotations):
    doc = load_func(name)
    assert doc["name"] == name
    assert func_subset_errors(doc) == []
    assert func_health_errors(doc) == []
    assert func_scaling_errors(doc) == []
    assert func_secret_errors(doc) == []
    assert annotation_errors(doc["deploy"].get("annotations", {}), known_annotations, name) == []


def test_knative_services_rules(deploy_objs, known_annotations):
    for name, ksvc in ksvcs(deploy_objs).items():
        tmpl = ksvc["spec"]["template"]
        assert probe_errors(ksvc) == []
        assert ksvc_secret_errors(ksvc) == []
        assert annotation_errors(tmpl["metadata"].get("annotations", {}), known_annotations,
                                 name) == []
        assert timeout_errors(tmpl["spec"], name) == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_func_yaml_deploy_and_patch_agree(deploy_objs, name):
    assert consistency_errors(load_func(name), ksvcs(deploy_objs)[name], patch_for(name)) == []


def test_eventing_rules(eventing_objs):
    assert broker_errors(eventing_objs) == []
    assert trigger_errors(eventing_objs) == []
    assert sinkbinding_errors(eventing_objs) == []
    # audit's func subscription (for `func subscribe` users) filters on the same event type.
    subs = load_func("audit")["deploy"].get("subscriptions", [])
    assert all(s["filters"].get("type") == INFERENCE_COMPLETED for s in subs)


def test_no_secret_values_in_shipped_files():
    for path in shipped_yaml() + sorted({containerfile(f) for f in FUNCTIONS}):
        assert text_secret_errors(path.read_text(), str(path.relative_to(ROOT)),
                                  is_yaml=path.suffix == ".yaml") == []


@pytest.mark.parametrize("name", FUNCTIONS)
def test_containerfile(name):
    assert containerfile_errors(containerfile(name).read_text(), name) == []
    if name in MODEL_FUNCTIONS:  # no per-folder copy of the shared file
        assert not (ROOT / "functions" / name / "Containerfile").exists()


def test_health_paths_are_served_by_the_runtime():
    """The gunicorn path serves the probe paths we configure (func-python serves the same)."""
    webapp = ROOT / "llmfn" / "src" / "llmfn" / "webapp.py"
    if not webapp.exists():
        pytest.skip("llmfn/webapp.py not written yet")
    text = webapp.read_text()
    assert LIVENESS in text and READINESS in text


# --------------------------------------------------------------------------------------------
# Negative tests: every validator rejects a deliberately broken copy
# --------------------------------------------------------------------------------------------

def _ksvc(deploy_objs, name="generate") -> dict:
    return copy.deepcopy(ksvcs(deploy_objs)[name])


@pytest.mark.parametrize("breakage, expect", [
    (lambda s: s["spec"]["template"]["spec"]["containers"][0].update(portz=[]), "portz"),
    (lambda s: s["spec"]["template"]["spec"].update(containerConcurrency="one"), "not of type"),
    (lambda s: s["spec"]["template"]["spec"].update(timeoutSecond=600), "timeoutSecond"),
    (lambda s: s["spec"]["template"]["spec"]["containers"][0]["readinessProbe"].update(
        httpGet={"path": 5}), "not of type"),
    (lambda s: s["metadata"].update(name="Generate"), "does not match"),
    (lambda s: s.update(apiVersion="serving.knative.dev/v2"), "serving.knative.dev/v1"),
])
def test_crd_schema_rejects_broken_service(crds, deploy_objs, breakage, expect):
    svc = _ksvc(deploy_objs)
    breakage(svc)
    errors = crd_errors(crds, svc)
    assert any(expect in e for e in errors), errors


@pytest.mark.parametrize("kind, breakage, expect", [
    ("Trigger", lambda t: t["spec"]["filters"][0].update(prefx={"type": "x"}), "prefx"),
    ("Trigger", lambda t: t["spec"]["delivery"].update(retry="five"), "not of type"),
    ("Broker", lambda b: b["spec"].update(delivery={"retry": "x"}) if "spec" in b
     else b.update(spec={"delivery": {"retry": "x"}}), "not of type"),
    ("SinkBinding", lambda s: s["spec"].update(sinc={}), "sinc"),
])
def test_crd_schema_rejects_broken_eventing(crds, eventing_objs, kind, breakage, expect):
    obj = copy.deepcopy(of_kind(eventing_objs, kind)[0])
    breakage(obj)
    errors = crd_errors(crds, obj)
    assert any(expect in e for e in errors), errors


FUNC_BREAKAGES = [
    (lambda d: d["deploy"]["options"]["scale"].update(metric="latency"), "latency"),
    (lambda d: d.update(unknownField=1), "unknownField"),
    (lambda d: d["deploy"]["options"]["scale"].update(utilization=0), "minimum"),
    (lambda d: d["build"].update(builder="docker"), "docker"),
    (lambda d: d["run"]["envs"].append({"name": "1BAD", "value": "x"}), "1BAD"),
]


@pytest.mark.parametrize("breakage, expect", FUNC_BREAKAGES)
def test_func_subset_schema_rejects_broken_copy(breakage, expect):
    doc = load_func("generate")
    breakage(doc)
    errors = func_subset_errors(doc)
    assert any(expect in e for e in errors), errors


@pytest.mark.parametrize("breakage, expect", FUNC_BREAKAGES)
def test_official_func_schema_rejects_broken_copy(func_schema, breakage, expect):
    validator, reason = func_schema
    if validator is None:
        pytest.skip(f"official func.yaml schema unavailable ({reason})")
    doc = load_func("generate")
    breakage(doc)
    errors = schema_errors(validator, doc)
    assert any(expect in e for e in errors), errors


def test_annotation_rule_rejects_unknown_key(known_annotations):
    errors = annotation_errors({"autoscaling.knative.dev/min-scael": "0",
                                "example.com/other": "x"}, known_annotations, "t")
    assert len(errors) == 1 and "min-scael" in errors[0]


def test_probe_rules_reject_wrong_paths_and_ports(deploy_objs):
    svc = _ksvc(deploy_objs)
    c = svc["spec"]["template"]["spec"]["containers"][0]
    c["readinessProbe"]["httpGet"]["path"] = "/healthz"
    c["ports"][0]["containerPort"] = 9000
    errors = probe_errors(svc)
    assert any("/healthz" in e for e in errors) and any("9000" in e for e in errors)
    doc = load_func("embed")
    doc["deploy"]["healthEndpoints"]["liveness"] = "/health"
    assert func_health_errors(doc)


def test_sinkbinding_rule_rejects_wrong_subject_and_sink(eventing_objs):
    objs = copy.deepcopy(eventing_objs)
    sb = of_kind(objs, "SinkBinding")[0]
    sb["spec"]["subject"]["name"] = "generat"
    sb["spec"]["sink"]["ref"]["name"] = "default"
    errors = sinkbinding_errors(objs)
    assert any("generat" in e for e in errors) and any("sink" in e for e in errors)


@pytest.mark.parametrize("breakage, expect", [
    (lambda t: t["spec"]["filters"][0]["prefix"].update(type="dev.llmfn.other."), "prefix"),
    (lambda t: t["spec"].update(broker="default"), "broker"),
    (lambda t: t["spec"]["delivery"].update(backoffDelay="500ms"), "ISO 8601"),
    (lambda t: t["spec"]["delivery"]["deadLetterSink"].update(uri="/"), "dead-letter"),
    (lambda t: t["spec"]["delivery"].update(backoffpolicy="linear"), "unknown delivery"),
])
def test_trigger_rule_rejects_broken_copy(eventing_objs, breakage, expect):
    objs = copy.deepcopy(eventing_objs)
    breakage(of_kind(objs, "Trigger")[0])
    errors = trigger_errors(objs)
    assert any(expect in e for e in errors), errors


def test_broker_rule_rejects_unknown_class(eventing_objs):
    objs = copy.deepcopy(eventing_objs)
    of_kind(objs, "Broker")[0]["metadata"]["annotations"]["eventing.knative.dev/broker.class"] = "X"
    assert broker_errors(objs)


def test_secret_rules_reject_literal_values(deploy_objs):
    svc = _ksvc(deploy_objs)
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
    ("audit", lambda d: d.update(invoke="http"), "invoke"),
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


def test_timeout_rule_rejects_out_of_range():
    assert timeout_errors({"timeoutSeconds": 900, "responseStartTimeoutSeconds": 10,
                           "idleTimeoutSeconds": 10}, "t")
    assert timeout_errors({"timeoutSeconds": 60, "responseStartTimeoutSeconds": 120,
                           "idleTimeoutSeconds": 0}, "t")


def test_kustomization_rejects_missing_resource(tmp_path):
    (tmp_path / "kustomization.yaml").write_text("resources:\n  - nothing-here.yaml\n")
    _, errors = render(tmp_path)
    assert any("does not exist" in e for e in errors)
    (tmp_path / "kustomization.yaml").write_text("resources: []\npatchesJson6902: []\n")
    _, errors = render(tmp_path)
    assert any("does not support" in e for e in errors)


@pytest.mark.parametrize("breakage, expect", [
    (lambda t: t.replace("python:3.11.14-slim-bookworm", "python:3.11-slim"), "base image"),
    (lambda t: t.replace("USER 10001:10001", "USER root"), "non-root"),
    (lambda t: t.replace("-DGGML_NATIVE=OFF", "-march=native"), "native"),
    (lambda t: t.replace("COPY pyproject.toml ./\n", "") + "COPY pyproject.toml ./\n",
     "dependency layer"),
])
def test_containerfile_rule_rejects_broken_copy(breakage, expect):
    text = containerfile("generate").read_text()
    errors = containerfile_errors(breakage(text), "generate")
    assert any(expect in e for e in errors), errors


def smollm2_kv_bytes_per_cell() -> int:
    """(K + V bytes per token over all layers in f16, file size) of SmolLM2, from its GGUF."""
    import gguf

    from model_files import smollm2_path

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

"""Rules of our own for the manifests we ship, each a function that returns a list of errors
(empty = fine): Knative annotation keys exist, probe paths and port, SinkBinding subjects, the
Trigger filters vs the event types their subscribers accept, delivery, the RequestReply example
and the feature flag manifest, no secret values, the LLM-on-CPU scaling and thread
policy, func.yaml <-> deploy/ <-> patches agree, revision timeouts, Containerfile hygiene.
Every rule has a negative test in tests/test_manifests_*.py: a broken copy must be rejected."""
from __future__ import annotations

import re

import yaml

from tests.support.manifests import (
    ACCEPTED_TYPES,
    CREDENTIAL_PATTERNS,
    FUNC_SECRET_REF,
    KNOWN_TYPES,
    LIVENESS,
    MAX_REVISION_TIMEOUT_S,
    MODEL_FUNCTIONS,
    PORT,
    READINESS,
    REQUESTREPLY_DEFAULT_TIMEOUT_S,
    RETRY_AFTER_FLAG,
    SECRET_ENVS,
    TYPE_PREFIX,
    iso_seconds,
    of_kind,
    service_setting,
)

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
DELIVERY_KEYS = {"retry", "backoffPolicy", "backoffDelay", "deadLetterSink", "timeout", "format",
                 "retryAfterMax"}
REQUEST_TRIGGER_LABEL = ("app.kubernetes.io/component", "inference-requests")


def filter_passes(flt: dict, attrs: dict) -> bool:
    """One CloudEvents Subscriptions API filter (a Trigger's ``filters`` item) on ``attrs``.

    The dialects our Triggers may use: exact, prefix, suffix (every attribute named must
    match), all, any, not. Others (cesql) raise ValueError: this check could not vouch for them.
    """
    if len(flt) != 1:
        raise ValueError(f"a filter has exactly one dialect, got {sorted(flt)}")
    (dialect, body), = flt.items()
    tests = {"exact": str.__eq__, "prefix": str.startswith, "suffix": str.endswith}
    if dialect in tests:
        if not body:
            raise ValueError(f"empty {dialect} filter")
        for attr, want in body.items():
            if attr not in attrs:
                raise ValueError(f"{dialect} filter on {attr!r}: only {sorted(attrs)} checked")
            if not tests[dialect](attrs[attr], want):
                return False
        return True
    if dialect in ("all", "any"):
        results = [filter_passes(f, attrs) for f in body]
        return all(results) if dialect == "all" else any(results)
    if dialect == "not":
        return not filter_passes(body, attrs)
    raise ValueError(f"filter dialect {dialect!r} is not checked here")


def matched_types(trigger: dict) -> set[str]:
    """The known llmfn event types a Trigger lets through (all of them when it has no filter)."""
    spec = trigger["spec"]
    if "filter" in spec and "filters" not in spec:
        raise ValueError("uses the exact-match `filter.attributes`; use `filters`")
    return {t for t in KNOWN_TYPES
            if all(filter_passes(f, {"type": t}) for f in spec.get("filters", []))}


def routing_errors(triggers: list[dict]) -> list[str]:
    """Every Trigger lets through only types its subscriber accepts (ACCEPTED_TYPES, from
    llmfn.event_requests and llmfn.events), at least one, and every accepted type reaches its
    subscriber through exactly one Trigger (two would deliver it twice)."""
    errors, routes = [], {}
    for t in triggers:
        name = t["metadata"]["name"]
        sub = t["spec"].get("subscriber", {}).get("ref", {}).get("name")
        try:
            types = matched_types(t)
        except ValueError as err:
            errors.append(f"Trigger {name}: {err}")
            continue
        accepted = ACCEPTED_TYPES.get(sub, frozenset())
        if not types:
            errors.append(f"Trigger {name}: its filters match no llmfn event type")
        if types - accepted:
            errors.append(f"Trigger {name}: filters let {sorted(types - accepted)} through to "
                          f"{sub!r}, which accepts {sorted(accepted)}")
        for typ in types & accepted:
            routes.setdefault((typ, sub), []).append(name)
    for sub, accepted in ACCEPTED_TYPES.items():
        for typ in sorted(accepted):
            via = routes.get((typ, sub), [])
            if len(via) != 1:
                errors.append(f"{typ} reaches {sub} through {len(via)} Triggers {via}, not 1")
    return errors


def _iso_errors(delivery: dict, key: str, where: str, *, positive: bool = False) -> list[str]:
    value = delivery.get(key)
    if not ISO_DURATION.match(str(value or "")) or iso_seconds(value) is None:
        return [f"{where}: delivery.{key} {value!r} is not ISO 8601 (e.g. PT30S)"]
    if positive and not iso_seconds(value) > 0:
        return [f"{where}: delivery.{key} {value!r} must be > 0"]
    return []


def delivery_errors(trigger: dict) -> list[str]:
    """Retries with backoff into audit's dead-letter route (every Trigger)."""
    name = trigger["metadata"]["name"]
    delivery = trigger["spec"].get("delivery", {})
    errors = []
    if set(delivery) - DELIVERY_KEYS:
        errors.append(f"{name}: unknown delivery keys {sorted(set(delivery) - DELIVERY_KEYS)}")
    if not isinstance(delivery.get("retry"), int) or delivery["retry"] < 1:
        errors.append(f"{name}: delivery.retry must be >= 1")
    if delivery.get("backoffPolicy") not in ("exponential", "linear"):
        errors.append(f"{name}: delivery.backoffPolicy {delivery.get('backoffPolicy')!r}")
    errors += _iso_errors(delivery, "backoffDelay", name)
    for key in ("timeout", "retryAfterMax"):
        if key in delivery:
            errors += _iso_errors(delivery, key, name, positive=True)
    dls = delivery.get("deadLetterSink", {})
    ref = dls.get("ref", {})
    if ((ref.get("apiVersion"), ref.get("kind"), ref.get("name"), dls.get("uri"))
            != ("serving.knative.dev/v1", "Service", "audit", "/dead-letter")):
        errors.append(f"{name}: deadLetterSink {dls} is not audit's /dead-letter")
    return errors


def request_delivery_errors(trigger: dict, services: dict | None,
                            retry_after: bool = True) -> list[str]:
    """A request Trigger (to generate/embed): a per-attempt timeout equal to the subscriber's
    responseStartTimeoutSeconds (the reply is one body at the end: a shorter timeout cuts
    answers Knative allows, a longer one waits for nothing), and retryAfterMax (needs the
    delivery-retryafter feature) at least the Retry-After the function sends."""
    name = trigger["metadata"]["name"]
    delivery = trigger["spec"].get("delivery", {})
    sub = trigger["spec"]["subscriber"]["ref"]["name"]
    errors = []
    if "timeout" not in delivery:
        errors.append(f"{name}: delivery.timeout missing (one attempt must fit a whole answer)")
    if retry_after and "retryAfterMax" not in delivery:
        errors.append(f"{name}: delivery.retryAfterMax missing: Retry-After would be ignored")
    if not retry_after and "retryAfterMax" in delivery:
        errors.append(f"{name}: delivery.retryAfterMax present without {RETRY_AFTER_FLAG}")
    ksvc = (services or {}).get(sub)
    if ksvc is not None:
        start = ksvc["spec"]["template"]["spec"].get("responseStartTimeoutSeconds")
        got = iso_seconds(delivery.get("timeout"))
        if got is not None and got != start:
            errors.append(f"{name}: delivery.timeout {got:g} s != {sub} "
                          f"responseStartTimeoutSeconds {start}")
        hint = int(service_setting(ksvc, "RETRY_AFTER_S"))
        cap = iso_seconds(delivery.get("retryAfterMax"))
        if cap is not None and cap < hint:
            errors.append(f"{name}: retryAfterMax {cap:g} s clips {sub}'s Retry-After "
                          f"(RETRY_AFTER_S {hint} s)")
    return errors


def is_request_trigger(trigger: dict) -> bool:
    sub = trigger["spec"].get("subscriber", {}).get("ref", {}).get("name")
    return sub in MODEL_FUNCTIONS


def trigger_errors(objs: list[dict], services: dict | None = None, *,
                   retry_after: bool = True) -> list[str]:
    """The Triggers: all on our Broker, each to a Knative Service's POST / (audit for inference
    events, generate/embed for request events), filters that match what the subscriber accepts,
    a complete delivery spec. ``services`` (Knative Services by name, e.g. from deploy/) adds
    the timeout checks against them; ``retry_after=False`` for the no-retry-after component."""
    errors = []
    brokers = {b["metadata"]["name"] for b in of_kind(objs, "Broker")}
    triggers = of_kind(objs, "Trigger")
    if not triggers:
        return ["no Trigger"]
    for t in triggers:
        name, spec = t["metadata"]["name"], t["spec"]
        if spec.get("broker") not in brokers:
            errors.append(f"Trigger {name}: broker {spec.get('broker')!r} not in {brokers}")
        sub = spec.get("subscriber", {})
        ref = sub.get("ref", {})
        if ((ref.get("apiVersion"), ref.get("kind")) != ("serving.knative.dev/v1", "Service")
                or ref.get("name") not in ACCEPTED_TYPES or "uri" in sub):
            errors.append(f"Trigger {name}: subscriber {sub} is not the POST / of one of "
                          f"{sorted(ACCEPTED_TYPES)}")
            continue
        errors += delivery_errors(t)
        labelled = t["metadata"].get("labels", {}).get(REQUEST_TRIGGER_LABEL[0])
        if is_request_trigger(t):
            errors += request_delivery_errors(t, services, retry_after)
            if labelled != REQUEST_TRIGGER_LABEL[1]:
                errors.append(f"Trigger {name}: label {'='.join(REQUEST_TRIGGER_LABEL)} missing "
                              "(components/no-retry-after/ selects by it)")
        else:
            prefixes = [f["prefix"]["type"] for f in spec.get("filters", [])
                        if "type" in f.get("prefix", {})]
            if prefixes != [TYPE_PREFIX]:
                errors.append(f"Trigger {name}: filters prefix {prefixes} != [{TYPE_PREFIX!r}]")
            if labelled == REQUEST_TRIGGER_LABEL[1]:
                errors.append(f"Trigger {name}: labelled as a request Trigger")
    errors += routing_errors(triggers)
    return errors


def requestreply_errors(rr: dict, objs: list[dict], services: dict) -> list[str]:
    """eventing/examples/requestreply.yaml: on our Broker (same namespace: no brokerRef
    namespace), the correlation attributes generate and embed copy (REPLY_CORRELATION_ATTRIBUTE,
    REPLY_ID_ATTRIBUTE), and a timeout that outlasts one full-length attempt of every request
    Trigger (the 30 s default does not)."""
    errors = []
    spec = rr.get("spec", {})
    ref = spec.get("brokerRef", {})
    brokers = {b["metadata"]["name"] for b in of_kind(objs, "Broker")}
    if ((ref.get("apiVersion"), ref.get("kind")) != ("eventing.knative.dev/v1", "Broker")
            or ref.get("name") not in brokers or "namespace" in ref):
        errors.append(f"RequestReply brokerRef {ref} is not the Broker {brokers} (same namespace)")
    if "namespace" in rr.get("metadata", {}):
        errors.append("RequestReply: no metadata.namespace (applied with -n, beside the Broker)")
    for field, key, default in (("correlationAttribute", "REPLY_CORRELATION_ATTRIBUTE",
                                 "correlationid"), ("replyAttribute", "REPLY_ID_ATTRIBUTE",
                                                    "replyid")):
        got = spec.get(field, default)
        for fn in MODEL_FUNCTIONS:
            want = service_setting(services[fn], key)
            if got != want:
                errors.append(f"RequestReply {field} {got!r} != {fn} {key} {want!r}")
    timeout = iso_seconds(spec.get("timeout"))
    longest = max((iso_seconds(t["spec"].get("delivery", {}).get("timeout")) or 0
                   for t in of_kind(objs, "Trigger") if is_request_trigger(t)), default=0)
    if timeout is None:
        errors.append(f"RequestReply timeout {spec.get('timeout')!r} missing or not ISO 8601 "
                      f"(the default is {REQUESTREPLY_DEFAULT_TIMEOUT_S} s)")
    elif timeout <= max(longest, REQUESTREPLY_DEFAULT_TIMEOUT_S):
        errors.append(f"RequestReply timeout {timeout:g} s must exceed the longest request "
                      f"Trigger timeout {longest:g} s")
    return errors


def features_errors(doc: dict, upstream: dict) -> list[str]:
    """eventing/features/delivery-retryafter.yaml: exactly the one flag the request Triggers'
    retryAfterMax needs, in Knative's config-features (``upstream``: the pinned release's), so a
    server-side apply of it changes nothing else."""
    errors = []
    meta = doc.get("metadata", {})
    if ((doc.get("apiVersion"), doc.get("kind"), meta.get("name"), meta.get("namespace"))
            != ("v1", "ConfigMap", upstream["metadata"]["name"],
                upstream["metadata"]["namespace"])):
        errors.append(f"features: not the ConfigMap {upstream['metadata']['namespace']}/"
                      f"{upstream['metadata']['name']}")
    if doc.get("data") != {RETRY_AFTER_FLAG: "enabled"}:
        errors.append(f"features: data {doc.get('data')} != {{{RETRY_AFTER_FLAG!r}: 'enabled'}}")
    unknown = set(doc.get("data") or {}) - set(upstream.get("data") or {})
    if unknown:
        errors.append(f"features: {sorted(unknown)} not flags of the pinned Eventing")
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
        errors += thread_policy_errors(name, envs, opts["resources"], name)
        vols = {v["path"]: v for v in doc["run"].get("volumes", [])}
        cache = vols.get(envs.get("MODEL_CACHE_DIR"), {})
        if "sizeLimit" not in cache.get("emptyDir", {}):
            errors.append(f"{name}: MODEL_CACHE_DIR must be an emptyDir with sizeLimit")
    # One adapter for all three: func-python's cloudevent middleware would answer a plain
    # GET (KPIs, metrics, pages) 400 before the function runs; the functions decode events.
    if doc.get("invoke", "http") != "http":
        errors.append(f"{name}: invoke must be http")
    return errors


def thread_policy_errors(name: str, envs: dict, resources: dict,
                         function: str = "generate") -> list[str]:
    """The thread policy (docs/deploy.md "Threads and CPU"): llama.cpp threads = CPU request =
    CPU limit; generate keeps libgomp's default wait (spin, then sleep) with its threads
    following the free CPUs (ADAPTIVE_THREADS, on by default), embed's OpenMP threads sleep."""
    errors = []
    cpus = {resources["requests"].get("cpu"), resources["limits"].get("cpu")}
    if cpus != {envs.get("N_THREADS")}:
        errors.append(f"{name}: N_THREADS {envs.get('N_THREADS')} must equal the CPU request "
                      f"and limit {sorted(map(str, cpus))}")
    if function == "generate":
        if "OMP_WAIT_POLICY" in envs or envs.get("ADAPTIVE_THREADS", "1") in ("0", "false"):
            errors.append(f"{name}: OMP_WAIT_POLICY must be unset and ADAPTIVE_THREADS on: "
                          "generate's threads follow the free CPUs")
    elif envs.get("OMP_WAIT_POLICY") != "passive":
        errors.append(f"{name}: OMP_WAIT_POLICY must be passive")
    return errors


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


BASE_IMAGE = re.compile(r"^ARG PYTHON_IMAGE=python:3\.11\.\d+-slim-bookworm$", re.M)


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
    compile_at = next((n for n, line in enumerate(lines)
                       if re.match(r"RUN python -m compileall .*\bllmfn\b.*\bfunction\b", line)),
                      None)
    if compile_at is None or None in idx.values() or compile_at < max(idx["COPY function/"],
                                                                       idx["COPY llmfn/"]):
        # PYTHONDONTWRITEBYTECODE and a read-only tree: without it every cold start compiles
        errors.append(f"{name}: the code's bytecode must be compiled in the image (compileall "
                      "after copying llmfn/ and function/)")
    if name in MODEL_FUNCTIONS:
        if "-DGGML_NATIVE=OFF" not in text or "-DGGML_CPU_ALL_VARIANTS=ON" not in text:
            errors.append(f"{name}: llama.cpp must be built with portable CPU dispatch")
        if not re.search(r"^FROM .* AS builder$", text, re.M) or "COPY --from=builder" not in text:
            errors.append(f"{name}: llama.cpp must be built in a builder stage")
    return errors


# -- the NetworkPolicy (deploy/networkpolicy.yaml) -------------------------------------------
SERVING_PORTS = ("BackendHTTPPort", "BackendHTTP2Port", "BackendHTTPSPort")  # queue-proxy
AUTOSCALER_PORT, USER_METRICS_PORT = "AutoscalingQueueMetricsPort", "UserQueueMetricsPort"
NAMESPACE_NAME = "kubernetes.io/metadata.name"
# Who must reach the functions' pods (namespace, the pinned release's pod kind or our labels as
# (key, value) pairs)
# -> the ports (queue-proxy constant names, or an int) they may reach.
NETWORK_PEERS = {
    ("knative-serving", "activator"): SERVING_PORTS,
    ("knative-eventing", "broker-filter"): SERVING_PORTS,
    ("knative-serving", "autoscaler"): (AUTOSCALER_PORT,),
    ("kourier-system", (("app", "3scale-kourier-gateway"),)): SERVING_PORTS,
    ("monitoring", (("app.kubernetes.io/name", "prometheus"),)): (PORT, USER_METRICS_PORT),
}


def networkpolicy_errors(np: dict, data_plane: dict) -> list[str]:
    """The policy selects exactly the functions' pods, lets in exactly NETWORK_PEERS (each
    peer a namespace and pod selector pair whose labels the pinned deployment's pods carry) on
    exactly their ports (queue-proxy's constants), and nothing else (no ipBlock, no rule
    without `from` or `ports`, no egress rules)."""
    from tests.support.manifests import FUNCTIONS

    errors = []
    spec = np.get("spec", {})
    want_pods = {"matchExpressions": [{"key": "serving.knative.dev/service", "operator": "In",
                                       "values": list(FUNCTIONS)}]}
    sel = spec.get("podSelector", {})
    if sel.get("matchLabels") or [
            {**e, "values": sorted(e.get("values", []))} for e in sel.get("matchExpressions", [])
    ] != [{**want_pods["matchExpressions"][0], "values": sorted(FUNCTIONS)}]:
        errors.append(f"podSelector {sel} must select the pods of {list(FUNCTIONS)} by "
                      "serving.knative.dev/service")
    if spec.get("policyTypes") != ["Ingress"] or "egress" in spec:
        errors.append(f"policyTypes {spec.get('policyTypes')} must be [Ingress], no egress")

    def port_numbers(names) -> set[int]:
        return {n if isinstance(n, int) else data_plane["ports"][n] for n in names}

    want = {peer: port_numbers(ports) for peer, ports in NETWORK_PEERS.items()}
    got: dict = {}
    for i, rule in enumerate(spec.get("ingress", [])):
        peers, ports = rule.get("from"), rule.get("ports")
        if not peers or not ports:
            errors.append(f"ingress[{i}] without `from` or `ports` lets everyone or every port in")
            continue
        numbers = set()
        for p in ports:
            if p.get("protocol", "TCP") != "TCP" or not isinstance(p.get("port"), int) \
                    or "endPort" in p:
                errors.append(f"ingress[{i}] port {p} must be one TCP port number")
            else:
                numbers.add(p["port"])
        for peer in peers:
            ns = peer.get("namespaceSelector", {}).get("matchLabels", {}).get(NAMESPACE_NAME)
            pods = peer.get("podSelector", {}).get("matchLabels")
            if "ipBlock" in peer or ns is None or not pods or set(peer) != {
                    "namespaceSelector", "podSelector"}:
                errors.append(f"ingress[{i}] peer {peer} must name a namespace and pod labels")
                continue
            key = next((k for k in want if k[0] == ns and (
                pods == dict(k[1]) if isinstance(k[1], tuple)
                else pods.items() <= data_plane[k[1]].items())), None)
            if key is None:
                errors.append(f"ingress[{i}] peer {ns}/{pods} is not one that must reach the "
                              "functions (or its labels are not the pinned release's)")
                continue
            got.setdefault(key, set()).update(numbers)
    for key, ports in want.items():
        if got.get(key, set()) != ports:
            errors.append(f"{key[0]}/{key[1]} may reach ports {sorted(got.get(key, []))}, "
                          f"must reach exactly {sorted(ports)}")
    return errors


# -- one deadline per request across layers --------------------------------------------------
def deadline_chain_errors(ksvc: dict, triggers: list[dict], rr: dict) -> list[str]:
    """generate's chain of timeouts, innermost first: its REQUEST_TIMEOUT_S (set explicitly,
    > 0) < the revision's responseStartTimeoutSeconds <= timeoutSeconds, and
    responseStartTimeoutSeconds <= the delivery.timeout of every request Trigger to it <= the
    RequestReply's timeout. So the function ends a request itself (finish_reason and event)
    before any outer layer gives up on it."""
    name = ksvc["metadata"]["name"]
    (c,) = ksvc["spec"]["template"]["spec"]["containers"]
    env = {e["name"]: e.get("value") for e in c.get("env", [])}
    errors = []
    try:
        deadline = float(env["REQUEST_TIMEOUT_S"])
    except (KeyError, TypeError, ValueError):
        return [f"{name}: REQUEST_TIMEOUT_S must be set to a number of seconds"]
    spec = ksvc["spec"]["template"]["spec"]
    start, total = spec.get("responseStartTimeoutSeconds"), spec.get("timeoutSeconds")
    if not 0 < deadline < (start or 0) <= (total or 0):
        errors.append(f"{name}: REQUEST_TIMEOUT_S {deadline:g} must be > 0 and below "
                      f"responseStartTimeoutSeconds {start} <= timeoutSeconds {total}")
    rr_timeout = iso_seconds(rr.get("spec", {}).get("timeout"))
    mine = [t for t in triggers if is_request_trigger(t)
            and t["spec"].get("subscriber", {}).get("ref", {}).get("name") == name]
    if not mine:
        errors.append(f"{name}: no request Trigger delivers to it")
    for t in mine:
        got = iso_seconds(t["spec"].get("delivery", {}).get("timeout"))
        if got is None or not (start or 0) <= got <= (rr_timeout or 0):
            errors.append(f"Trigger {t['metadata']['name']}: delivery.timeout {got} s must be "
                          f">= responseStartTimeoutSeconds {start} and <= the RequestReply "
                          f"timeout {rr_timeout} s")
    return errors

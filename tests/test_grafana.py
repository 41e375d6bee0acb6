"""The operators' files: deploy/grafana/llmfn.json (a Grafana dashboard) and
deploy/prometheus/llmfn-alerts.rules.yaml (Prometheus alert rules).

- The dashboard is valid JSON of Grafana's dashboard model: unique panel ids, a grid of 24
  columns, every panel with Prometheus queries on the ``$datasource`` variable.
- Every metric a query or a variable names is one the functions really export: generate
  (tiny-llama), embed (MiniLM) and audit run under gunicorn, serve a streamed chat, an embedding
  and the inference events (K_SINK at audit), then their /metrics are scraped and compared;
  the labels a selector matches on exist on that metric too.
- The dashboard covers requests, latency, TTFT, tokens/s, queue depth, slots busy, cold-start
  phases and event delivery.
- The alert rules pass ``promtool check rules`` and their unit tests ``promtool test rules``
  (promtool from Debian's prometheus package, scripts/install_browser.sh), and name exported
  metrics only.
"""
from __future__ import annotations

import json
import re
import subprocess
import time
import uuid

import pytest
import requests
import yaml
from prometheus_client.parser import text_string_to_metric_families

from scripts.procs import REPO_ROOT as ROOT
from tests.support import stack

GRAFANA = ROOT / "deploy" / "grafana" / "llmfn.json"
RULES = ROOT / "deploy" / "prometheus" / "llmfn-alerts.rules.yaml"
RULE_TESTS = ROOT / "deploy" / "prometheus" / "llmfn-alerts.test.yaml"
PROMTOOL = ROOT / ".state" / "bin" / "promtool"
MODELS = ROOT / ".state" / "models"
METRIC = re.compile(r"\b((?:llmfn|audit)_[a-z0-9_]+)\b")
SELECTOR = re.compile(r"\b((?:llmfn|audit)_[a-z0-9_]+)\{([^}]*)\}")
MATCHER = re.compile(r"([a-zA-Z_][a-zA-Z0-9_]*)\s*(?:=~|!~|!=|=)")
# labels Prometheus adds when it scrapes (target labels), not the functions
TARGET_LABELS = {"namespace", "job", "pod", "instance", "service", "container"}
# what the issue asks the dashboard to show, by the metrics that show it
REQUIRED = {
    "requests": "llmfn_requests_total",
    "latency": "llmfn_request_duration_seconds_bucket",
    "ttft": "llmfn_time_to_first_token_seconds_bucket",
    "tokens/s": "llmfn_completion_tokens_total",
    "queue depth": "llmfn_queue_depth",
    "slots busy": "llmfn_slots_busy",
    "cold-start phases": "llmfn_cold_start_seconds",
    "event delivery": "llmfn_events_sent_total",
    "event delivery (audit)": "audit_events_recorded_total",
}
SUFFIXES = {"counter": ("_total", "_created"),
            "histogram": ("_bucket", "_sum", "_count", "_created"),
            "summary": ("", "_sum", "_count", "_created"), "gauge": ("",), "info": ("_info",),
            "stateset": ("",), "gaugehistogram": ("_bucket", "_gsum", "_gcount"),
            "unknown": ("",)}


def dashboard() -> dict:
    return json.loads(GRAFANA.read_text(encoding="utf-8"))


def panels(dash: dict) -> list[dict]:
    out = []
    for p in dash["panels"]:
        out.append(p)
        out.extend(p.get("panels", []))  # a collapsed row holds its panels
    return out


def queries(dash: dict) -> list[str]:
    """Every PromQL text of the dashboard: panel targets and variable queries."""
    exprs = [t["expr"] for p in panels(dash) for t in p.get("targets", [])]
    for var in dash["templating"]["list"]:
        if var["type"] == "query":
            q = var["query"]
            exprs.append(q["query"] if isinstance(q, dict) else q)
    return exprs


def rule_exprs() -> list[str]:
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    return [r["expr"] for g in doc["groups"] for r in g["rules"]]


def test_dashboard_is_a_valid_grafana_model():
    dash = dashboard()
    assert dash["uid"] and dash["title"] and isinstance(dash["schemaVersion"], int)
    ids = [p["id"] for p in panels(dash)]
    assert len(ids) == len(set(ids)), "panel ids must be unique"
    variables = {v["name"]: v for v in dash["templating"]["list"]}
    assert variables["datasource"]["type"] == "datasource"
    assert variables["datasource"]["query"] == "prometheus"
    for p in panels(dash):
        g = p["gridPos"]
        assert 0 <= g["x"] and g["x"] + g["w"] <= 24 and g["h"] > 0, p["title"]
        if p["type"] == "row":
            continue
        assert p["datasource"] == {"type": "prometheus", "uid": "${datasource}"}, p["title"]
        assert p["targets"], p["title"]
        for t in p["targets"]:
            assert t["expr"].strip() and t["refId"], p["title"]
            assert t["expr"].count("(") == t["expr"].count(")"), t["expr"]
            assert t["expr"].count("{") == t["expr"].count("}"), t["expr"]
    named = {m for q in queries(dash) for m in METRIC.findall(q)}
    missing = {what: m for what, m in REQUIRED.items() if m not in named}
    assert not missing, f"the dashboard shows no {missing}"


def test_alert_rules_pass_promtool():
    assert PROMTOOL.exists(), \
        "promtool is missing: run `make test-tools` (scripts/install_browser.sh)"
    for args in (["check", "rules", RULES.name], ["test", "rules", RULE_TESTS.name]):
        out = subprocess.run([str(PROMTOOL), *args], cwd=RULES.parent, capture_output=True,
                             text=True, timeout=60)
        assert out.returncode == 0, out.stdout + out.stderr
        assert "SUCCESS" in out.stdout, out.stdout
    doc = yaml.safe_load(RULES.read_text(encoding="utf-8"))
    alerts = {r["alert"]: r for g in doc["groups"] for r in g["rules"]}
    assert {"LLMFnHighErrorRate", "LLMFnSlowFirstToken"} <= set(alerts)
    for rule in alerts.values():
        assert rule["labels"]["severity"] and rule["annotations"]["summary"], rule


def exported(text: str) -> dict[str, set[str]]:
    """Sample name -> the label names seen on it (empty when it had no sample yet), for every
    metric family of a /metrics page."""
    out: dict[str, set[str]] = {}
    for fam in text_string_to_metric_families(text):
        labels = {k for s in fam.samples for k in s.labels if k not in ("le", "quantile")}
        for suffix in SUFFIXES.get(fam.type, ("",)):
            out.setdefault(fam.name + suffix, set()).update(labels)
    return out


@pytest.fixture(scope="module")
def metrics(ferretdb, tmp_path_factory) -> dict[str, set[str]]:
    """The metrics generate, embed and audit export after serving a little of everything."""
    with stack.Functions(tmp_path_factory.mktemp("grafana")) as fns:
        audit = fns.start("audit", {"MONGODB_URI": ferretdb.uri,
                                    "MONGODB_DATABASE": f"grafana_{uuid.uuid4().hex[:8]}"})
        sink = {"K_SINK": f"{audit.url}/"}
        gen = fns.start("generate", {"MODEL_URI": f"file://{MODELS / 'tiny-llama.gguf'}",
                                     "N_CTX": "256", **sink})
        emb = fns.start("embed", {"MODEL_URI": f"file://{MODELS / 'all-minilm-l6-v2-f16.gguf'}",
                                  **sink})
        fns.wait_ready(120)
        r = requests.post(f"{gen.url}/v1/chat/completions", timeout=60, json={
            "messages": [{"role": "user", "content": "hi"}], "max_tokens": 4, "stream": True})
        assert r.status_code == 200 and "[DONE]" in r.text
        r = requests.post(f"{emb.url}/v1/embeddings", json={"input": ["a", "b"]}, timeout=60)
        assert r.status_code == 200, r.text
        end = time.monotonic() + 30
        while requests.get(f"{audit.url}/kpis", timeout=30).json()["total"]["count"] < 2:
            assert time.monotonic() < end, "the inference events did not reach audit"
            time.sleep(0.2)
        out: dict[str, set[str]] = {}
        for proc in fns.started.values():
            text = requests.get(f"{proc.url}/metrics", timeout=30).text
            for name, labels in exported(text).items():
                out.setdefault(name, set()).update(labels)
        return out


@pytest.mark.parametrize("source", ["grafana", "rules"])
def test_every_query_names_an_exported_metric(metrics, source):
    exprs = queries(dashboard()) if source == "grafana" else rule_exprs()
    named = {m for e in exprs for m in METRIC.findall(e)}
    assert named
    unknown = sorted(named - set(metrics))
    assert not unknown, f"{source} names metrics no function exports: {unknown}"
    for expr in exprs:
        for metric, matchers in SELECTOR.findall(expr):
            labels = set(MATCHER.findall(matchers)) - TARGET_LABELS
            if metrics[metric]:  # a metric with samples: its selector's labels exist on it
                assert labels <= metrics[metric], (metric, labels - metrics[metric])
    for what, metric in REQUIRED.items():  # and what the dashboard must show is exported
        assert metric in metrics, (what, metric)

"""The pages in a real browser: headless Chromium (Debian's, installed by
scripts/install_browser.sh) driven by Playwright for Python, against real processes.

generate (tiny-llama.gguf) and embed (all-MiniLM-L6-v2) under gunicorn with ``K_SINK`` at audit
(gunicorn, on the shared FerretDB, with ``API_KEYS`` set so its dashboard must ask for a key):
- generate's playground streams a chat answer (several DOM updates from SSE chunks) and shows
  its usage and time to first token, then goes on on the Responses API (its API selector);
- embed's playground shows the cosine similarities, equal to those of the vectors /v1/embeddings
  returns (and a paraphrase closer than an unrelated text);
- /docs renders each function's /openapi.json;
- audit's dashboard, after the key prompt, charts exactly the events the test sent (requests,
  errors, latency, TTFT, tokens/s, cold starts, finish reasons, the groups table and the window);
  the function filter changes the charts and the table.
No page logs a console error or loads anything from another origin. Screenshots go to
.state/screenshots/ (docs/img/pages-*.png are copies of them, see docs/pages.md).
"""
from __future__ import annotations

import datetime as dt
import math
import shutil
import time
import uuid
from pathlib import Path

import pytest
import requests
from playwright.sync_api import sync_playwright

from scripts.procs import REPO_ROOT as ROOT
from tests.support import stack
from tests.support.audit import encode, make_event

MODELS = ROOT / ".state" / "models"
SCREENSHOTS = ROOT / ".state" / "screenshots"
READY_S = 120
KEY = "pages-test-key"
VIEWPORT = {"width": 1280, "height": 860}
TIMEOUT_MS = 30_000

# The events the dashboard test sends (function, model, count): two groups of its own, apart
# from the groups the playground requests add through K_SINK.
GEN, EMB = ("generate", "smollm2-test"), ("embed", "minilm-test")


def chromium() -> str:
    path = shutil.which("chromium")
    assert path, "Debian's chromium is missing: run `make test-tools` (scripts/install_browser.sh)"
    return path


def wait_js(page, expression: str, timeout_s: float = TIMEOUT_MS / 1000) -> None:
    """Poll ``expression`` until it is truthy (Playwright's wait_for_function evaluates its
    predicate with eval(), which the pages' Content-Security-Policy forbids: kept enforced)."""
    end = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        assert time.monotonic() < end, f"timed out waiting for {expression}"
        page.wait_for_timeout(50)


def model_uri(name: str) -> str:
    path = MODELS / name
    assert path.is_file(), f"run `make models` ({path} is missing)"
    return f"file://{path}"


@pytest.fixture(scope="module")
def servers(ferretdb, tmp_path_factory):
    with stack.Functions(tmp_path_factory.mktemp("pages")) as fns:
        # no compaction during the test: the events stay in minute cells (past an hour boundary
        # compaction would merge them into hour cells, one point per hour)
        audit = fns.start("audit", {"MONGODB_URI": ferretdb.uri, "API_KEYS": KEY,
                                    "KPI_COMPACT_INTERVAL_S": "3600",
                                    "MONGODB_DATABASE": f"pages_{uuid.uuid4().hex[:8]}"})
        sink = {"K_SINK": f"{audit.url}/"}
        fns.start("generate", {"MODEL_URI": model_uri("tiny-llama.gguf"), "N_CTX": "512", **sink})
        fns.start("embed", {"MODEL_URI": model_uri("all-minilm-l6-v2-f16.gguf"), **sink})
        fns.wait_ready(READY_S)
        yield fns.started


@pytest.fixture(scope="module")
def browser():
    with sync_playwright() as pw:
        b = pw.chromium.launch(executable_path=chromium(), args=["--no-sandbox"])
        try:
            yield b
        finally:
            b.close()


class Watched:
    """A page whose console errors, page errors and requests to other origins are recorded."""

    def __init__(self, browser, origin: str):
        self.context = browser.new_context(viewport=VIEWPORT)
        self.page = self.context.new_page()
        self.page.set_default_timeout(TIMEOUT_MS)
        self.origin = origin
        self.errors: list[str] = []
        self.foreign: list[str] = []
        self.page.on("console", lambda m: m.type == "error" and self.errors.append(
            f"{m.text} ({m.location.get('url')})"))
        self.page.on("pageerror", lambda e: self.errors.append(f"pageerror: {e}"))
        self.page.on("request", lambda r: r.url.startswith((origin + "/", "data:"))
                     or self.foreign.append(r.url))

    def screenshot(self, name: str, full_page: bool = True) -> Path:
        SCREENSHOTS.mkdir(parents=True, exist_ok=True)
        path = SCREENSHOTS / f"{name}.png"
        self.page.screenshot(path=str(path), full_page=full_page)
        return path

    def check_clean(self, allowed=lambda text: False) -> None:
        errors = [e for e in self.errors if not allowed(e)]
        assert errors == [], errors
        assert self.foreign == [], self.foreign

    def close(self) -> None:
        self.context.close()


@pytest.fixture
def watch(browser):
    opened: list[Watched] = []

    def open_(origin: str) -> Watched:
        opened.append(Watched(browser, origin))
        return opened[-1]

    yield open_
    for w in opened:
        w.close()


def test_generate_playground_streams_a_chat(servers, watch):
    url = servers["generate"].url
    w = watch(url)
    page = w.page
    page.goto(url + "/")
    wait_js(page, "document.getElementById('model').value === 'tiny-llama'")
    page.fill("#system", "You are a terse assistant.")
    page.eval_on_selector("#temperature",
                          "(e) => { e.value = '0'; e.dispatchEvent(new Event('input')); }")
    page.fill("#max-tokens", "24")
    # count the DOM updates of the answer: a streamed answer arrives in several chunks
    page.evaluate("""() => {
        window.textUpdates = 0;
        new MutationObserver((records) => {
            const inAnswer = (n) => n && n.closest && n.closest('.msg.assistant .text');
            for (const r of records) if (inAnswer(r.target) || inAnswer(r.target.parentElement))
                window.textUpdates++;
        }).observe(document.getElementById('messages'),
                   {subtree: true, childList: true, characterData: true});
    }""")
    page.fill("#prompt", "Say hello to the playground.")
    with page.expect_response(lambda r: r.url.endswith("/v1/chat/completions")) as resp_info:
        page.click("#send")
    resp = resp_info.value
    assert resp.status == 200 and resp.headers["content-type"].startswith("text/event-stream")
    assert resp.request.post_data_json["stream_options"] == {"include_usage": True}
    assert resp.request.post_data_json["temperature"] == 0
    stats = page.wait_for_selector(".msg.assistant .stats")
    answer = page.inner_text(".msg.assistant .text")
    assert answer.strip(), "no answer text"
    assert page.evaluate("window.textUpdates") >= 3  # streamed, not set once
    assert stats.get_attribute("data-completion-tokens") == "24"  # the tiny model never stops early
    assert int(stats.get_attribute("data-ttft-ms")) >= 0
    text = stats.inner_text()
    assert "completion 24" in text and "TTFT" in text and "finish: length" in text, text
    assert page.inner_text(".msg.user") == "Say hello to the playground."
    # a second turn carries the conversation
    page.fill("#prompt", "And again.")
    with page.expect_request(lambda r: r.url.endswith("/v1/chat/completions")) as req_info:
        page.click("#send")
    roles = [m["role"] for m in req_info.value.post_data_json["messages"]]
    assert roles == ["system", "user", "assistant", "user"]
    wait_js(page, "document.querySelectorAll('.msg.assistant .stats').length === 2")
    # switched to the Responses API, the conversation goes on there
    page.select_option("#api", "responses")
    assert page.inner_text("#route") == "/v1/responses"
    page.fill("#prompt", "Once more.")
    with page.expect_request(lambda r: r.url.endswith("/v1/responses")) as req_info:
        page.click("#send")
    sent = req_info.value.post_data_json
    assert sent["instructions"] == "You are a terse assistant." and sent["stream"] is True
    assert [m["role"] for m in sent["input"]] == ["user", "assistant"] * 2 + ["user"]
    assert sent["max_output_tokens"] == 24
    wait_js(page, "document.querySelectorAll('.msg.assistant .stats').length === 3")
    last = page.locator(".msg.assistant").nth(2)
    assert last.locator(".text").inner_text().strip()
    text = last.locator(".stats").inner_text()
    assert "completion 24" in text and "finish: incomplete" in text, text
    w.screenshot("generate-playground")
    w.check_clean()


def cosine(a: list[float], b: list[float]) -> float:
    dot = sum(x * y for x, y in zip(a, b))
    return dot / math.sqrt(sum(x * x for x in a) * sum(y * y for y in b))


def test_embed_playground_shows_similarities(servers, watch):
    url = servers["embed"].url
    w = watch(url)
    page = w.page
    page.goto(url + "/")
    wait_js(page, "document.getElementById('model').textContent.includes('minilm')")
    texts = page.eval_on_selector_all("#texts textarea", "(ts) => ts.map((t) => t.value)")
    assert len(texts) == 3
    page.click("#add")
    page.locator("#texts textarea").nth(3).fill("Felines like to nap on carpets.")
    texts.append("Felines like to nap on carpets.")
    page.click("#compare")
    page.wait_for_selector("#result:not([hidden]) td[data-similarity]")
    cells = page.eval_on_selector_all(
        "td[data-similarity]", "(tds) => tds.map((t) => [+t.dataset.i, +t.dataset.j, "
        "+t.dataset.similarity, t.textContent])")
    assert len(cells) == 16
    sim = {(i, j): s for i, j, s, _ in cells}
    # the same numbers as the vectors a client gets
    vectors = [d["embedding"] for d in requests.post(
        f"{url}/v1/embeddings", json={"input": texts}, timeout=60).json()["data"]]
    for (i, j), s in sim.items():
        assert s == pytest.approx(cosine(vectors[i], vectors[j]), abs=1e-5)
        assert s == pytest.approx(sim[j, i], abs=1e-9)
    assert all(sim[i, i] == pytest.approx(1.0, abs=1e-4) for i in range(4))
    assert sim[0, 1] > sim[0, 2] and sim[1, 3] > sim[1, 2]  # paraphrases closer than unrelated
    assert "4 vectors of 384 dimensions" in page.inner_text("#usage")
    w.screenshot("embed-playground")
    w.check_clean()


@pytest.mark.parametrize("name", ["generate", "embed", "audit"])
def test_docs_render_the_openapi_document(servers, watch, name):
    url = servers[name].url
    w = watch(url)
    page = w.page
    r = requests.get(f"{url}/openapi.json", timeout=30)
    page.goto(url + "/docs")
    if r.status_code != 200:  # the OpenAPI document is another piece of work: say so
        page.wait_for_selector("#info .error")
        w.check_clean(lambda e: "404" in e)
        return
    doc = r.json()
    ops = sorted((m, p) for p, item in doc["paths"].items() for m in item
                 if m in ("get", "put", "post", "delete", "patch"))
    page.wait_for_selector(".op")
    shown = sorted(page.eval_on_selector_all(
        ".op", "(ds) => ds.map((d) => [d.dataset.method, d.dataset.path])"))
    assert [tuple(x) for x in shown] == ops
    assert doc["info"]["title"] in page.inner_text("#title")
    first = "/v1/chat/completions" if name == "generate" else (
        "/v1/embeddings" if name == "embed" else "/kpis")
    method = "get" if name == "audit" else "post"
    op = page.locator(f'.op[data-path="{first}"][data-method="{method}"]')
    op.locator("summary").click()
    assert "Responses" in op.inner_text()
    page.fill("#filter", first)
    assert page.locator(".op:not([hidden])").count() >= 1
    page.fill("#filter", "")
    page.evaluate("window.scrollTo(0, 0)")
    w.screenshot(f"docs-{name}", full_page=False)
    w.check_clean()


def dashboard_events(now: dt.datetime) -> list[dict]:
    """24 events over the last 24 minutes: 16 of GEN (2 errors, 2 cold starts, stop/length;
    the last 4 name their api, responses, the others have only their endpoint's, chat) and 8 of
    EMB (1 cold start, no TTFT, no finish reason), as producers send them."""
    out = []
    for i in range(1, 25):
        gen = i <= 16
        function, model = GEN if gen else EMB
        error = gen and i % 8 == 0
        out.append(dict(
            function=function, model=model, service=function, status=500 if error else 200,
            duration_s=0.2 + 0.05 * i, ttft_s=0.02 * i if gen else None,
            tokens_per_s=20.0 + i if gen else None, completion_tokens=10 if gen else 0,
            prompt_tokens=5 + i, cold_start=i in (1, 9, 17),
            finish_reason=("error" if error else "length" if i % 5 == 0 else "stop") if gen
            else None, endpoint="/v1/chat/completions" if gen else "/v1/embeddings",
            time=(now - dt.timedelta(seconds=60 * i - 30)).isoformat(),
            **({"api": "responses"} if 12 < i <= 16 else {})))
    return out


def charts(page) -> dict:
    """Each chart's series labels and data, as uPlot holds them."""
    return page.evaluate("""() => Object.fromEntries(Object.entries(window.dashboard.charts).map(
        ([id, u]) => [id, Object.fromEntries(u.series.slice(1).map(
            (s, k) => [s.label, u.data[k + 1]]))]))""")


def total(values) -> float:
    return sum(v for v in values if v is not None)


def test_dashboard_charts_the_events_sent_and_filters(servers, watch):
    audit = servers["audit"]
    now = dt.datetime.now(dt.UTC)
    events = dashboard_events(now)
    for i, data in enumerate(events, start=1):
        headers, body = encode(make_event(i, now, source="/pages-test", **data), "binary")
        r = requests.post(f"{audit.url}/", headers=headers, data=body, timeout=30)
        assert r.status_code == 200, r.text
    auth = {"Authorization": f"Bearer {KEY}"}
    kpis = requests.get(f"{audit.url}/kpis?since={int(now.timestamp()) - 3600}", headers=auth,
                        timeout=30).json()
    groups = {(g["function"], g["model"]): g for g in kpis["groups"]}
    assert (groups[GEN]["count"], groups[EMB]["count"]) == (16, 8)

    w = watch(audit.url)
    page = w.page
    page.goto(audit.url + "/dashboard")
    page.wait_for_selector("#key-dialog:not([hidden])")  # API_KEYS is set: it asks
    page.fill("#key-dialog input", KEY)
    page.click("#key-dialog button[type=submit]")
    # at once with the key given, not at the next auto-refresh (30 s)
    wait_js(page, "window.dashboard.refreshes >= 1 && !!window.dashboard.charts.requests",
            timeout_s=15)
    assert page.inner_text("#error") == ""

    gen, emb = " · ".join(GEN), " · ".join(EMB)
    c = charts(page)
    assert set(c) == {"requests", "error_rate", "latency", "ttft", "tokens_per_s", "cold_starts",
                      "cold_start_latency", "finish_reasons"}
    assert total(c["requests"][gen]) == 16 and total(c["requests"][emb]) == 8
    assert total(c["cold_starts"][gen]) == 2 and total(c["cold_starts"][emb]) == 1
    assert [round(x, 4) for x in c["error_rate"][gen] if x] == [1.0, 1.0]  # one event a minute
    for chart, label in (("latency", gen + " p95"), ("ttft", gen + " p50"),
                         ("tokens_per_s", gen), ("cold_start_latency", emb)):
        assert total(c[chart][label]) > 0, (chart, label)
    assert total(c["ttft"][emb + " p95"]) == 0  # embed has no first token
    assert len([v for v in c["latency"][gen + " p50"] if v is not None]) == 16  # a bucket each
    reasons = {r: total(v) for r, v in c["finish_reasons"].items()}
    assert reasons["error"] == 2 and reasons["length"] >= 3 and reasons["none"] >= 8
    assert sum(reasons.values()) == total(x for s in c["requests"].values() for x in s)
    # the table: each group as /kpis reports it, and the window the counted cells cover
    row = page.locator(f'#groups tr[data-function="{GEN[0]}"][data-model="{GEN[1]}"]')
    assert row.locator('[data-col="count"]').inner_text() == "16"
    assert "error 2" in row.inner_text() and "12.5 %" in row.inner_text()
    window = page.inner_text("#window-text")
    assert "Counted cells cover" in window and "cells of up to 60 s" in window, window
    w.screenshot("dashboard")

    # the function filter: only embed's groups, in the charts and the table
    before = page.evaluate("window.dashboard.refreshes")
    page.select_option("#function", "embed")
    wait_js(page, f"window.dashboard.refreshes > {before}")
    c = charts(page)
    assert set(c["requests"]) and all(label.startswith("embed · ") for label in c["requests"])
    assert total(c["requests"][emb]) == 8
    assert set(c["finish_reasons"]) == {"none"}
    assert {r.get_attribute("data-function") for r in
            page.locator("#groups tr.group").all()} == {"embed"}
    assert "function=embed" in page.url  # the view is in the link
    assert page.inner_text("#error") == ""
    w.screenshot("dashboard-embed")

    # grouped by API: generate's events split by theirs (from the endpoint when not named)
    for control, value in (("#group", "api"), ("#function", "")):
        before = page.evaluate("window.dashboard.refreshes")
        page.select_option(control, value)
        wait_js(page, f"window.dashboard.refreshes > {before}")
    rows = {(r.get_attribute("data-function"), r.get_attribute("data-model"),
             r.get_attribute("data-api")): r.locator('[data-col="count"]').inner_text()
            for r in page.locator("#groups tr.group").all()}
    assert (rows[(*GEN, "chat")], rows[(*GEN, "responses")], rows[(*EMB, "embeddings")]) == \
        ("12", "4", "8"), rows
    assert total(charts(page)["requests"][gen + " · responses"]) == 4
    assert page.inner_text("#groups-title") == "By function, model and API"
    assert "group=api" in page.url and page.inner_text("#error") == ""
    # the only errors: the first /kpis answered 401 before the key was given
    w.check_clean(lambda e: "401" in e and "/kpis" in e)

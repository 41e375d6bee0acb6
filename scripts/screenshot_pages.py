#!/usr/bin/env python3
"""Screenshots of the pages as a user of `make run` sees them, for docs/img/pages-*.png.

    make run                                  # in one terminal (SmolLM2, MiniLM, FerretDB)
    .venv/bin/python scripts/screenshot_pages.py

Drives Debian's chromium (`make test-tools`) with Playwright, against the running stack only:
a two-turn chat in generate's playground (SmolLM2-135M, its temperature slider set to 0), a
comparison in embed's playground, then audit's dashboard over the last 15 minutes, charting the
requests those pages (and whatever else used the stack) made; for the dashboard the page's
1400 px width cap is lifted and the window widened until its "By function and model" table
fits, so no column is cut. Nothing is sent to audit directly: the events are the
ones generate and embed emitted. Writes docs/img/pages-{generate,embed}-playground.png and
docs/img/pages-dashboard.png (`--out` elsewhere). Every wait has a deadline.
"""
from __future__ import annotations

import argparse
import os
import shutil
import sys
import time
from pathlib import Path

from playwright.sync_api import sync_playwright

ROOT = Path(__file__).resolve().parents[1]
VIEWPORT = {"width": 1280, "height": 860}
TIMEOUT_MS = 120_000
QUESTIONS = ("What is the capital of Japan?", "And of France?")


def url(port_var: str, default: int) -> str:
    return f"http://127.0.0.1:{os.environ.get(port_var, default)}"


def wait_js(page, expression: str, timeout_s: float) -> None:
    """Poll ``expression`` (the pages' CSP forbids the eval() of wait_for_function)."""
    end = time.monotonic() + timeout_s
    while not page.evaluate(expression):
        if time.monotonic() > end:
            raise TimeoutError(expression)
        page.wait_for_timeout(100)


def generate_playground(page, base: str, out: Path) -> None:
    page.goto(base + "/")
    page.fill("#system", "You are a helpful assistant.")
    page.fill("#max-tokens", "48")
    # The slider's own input event updates the label beside it (generate.js), as a drag does.
    page.evaluate("""() => { const t = document.getElementById('temperature');
        t.value = '0'; t.dispatchEvent(new Event('input', {bubbles: true})); }""")
    wait_js(page, "document.getElementById('temperature-value').value === '0'", 5)
    for i, question in enumerate(QUESTIONS, 1):
        page.fill("#prompt", question)
        page.click("#send")
        wait_js(page, f"document.querySelectorAll('.msg.assistant .stats').length === {i}",
                TIMEOUT_MS / 1000)
    page.screenshot(path=str(out), full_page=True)


def embed_playground(page, base: str, out: Path) -> None:
    page.goto(base + "/")
    page.click("#compare")
    page.wait_for_selector("#similarity td")
    page.screenshot(path=str(out), full_page=True)


def dashboard(page, base: str, out: Path, settle_s: float) -> None:
    page.goto(base + "/dashboard#window=900")
    page.wait_for_timeout(settle_s * 1000)  # the events reach audit through the broker
    page.click("#reload")
    before = page.evaluate("window.dashboard.refreshes")
    wait_js(page, f"window.dashboard.refreshes > {before} && !!window.dashboard.charts.requests",
            30)
    # The groups table scrolls sideways when narrower than its columns, even in a wide window
    # (pages.css caps <main> at 1400 px): lift the cap (a style set from script, which the
    # CSP allows), widen the window by what is hidden (bounded), let the charts re-layout on
    # the resize, and capture the whole page.
    page.evaluate("() => { document.querySelector('main').style.maxWidth = 'none'; }")
    for _ in range(3):
        hidden = page.evaluate("""() => { const w = document.querySelector('.table-wrap');
            return w.scrollWidth - w.clientWidth; }""")
        if hidden <= 0:
            break
        size = page.viewport_size
        page.set_viewport_size({"width": min(size["width"] + hidden + 40, 2400),
                                "height": size["height"]})
        page.wait_for_timeout(500)
    page.screenshot(path=str(out), full_page=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--out", type=Path, default=ROOT / "docs" / "img")
    ap.add_argument("--settle-s", type=float, default=5.0,
                    help="wait before the dashboard's refresh, for the last events")
    args = ap.parse_args()
    chromium = shutil.which("chromium")
    if not chromium:
        sys.exit("Debian's chromium is missing: run `make test-tools`")
    args.out.mkdir(parents=True, exist_ok=True)
    with sync_playwright() as pw:
        browser = pw.chromium.launch(executable_path=chromium, args=["--no-sandbox"])
        try:
            page = browser.new_context(viewport=VIEWPORT).new_page()
            page.set_default_timeout(TIMEOUT_MS)
            generate_playground(page, url("GENERATE_PORT", 8081),
                                args.out / "pages-generate-playground.png")
            embed_playground(page, url("EMBED_PORT", 8082), args.out / "pages-embed-playground.png")
            dashboard(page, url("AUDIT_PORT", 8083), args.out / "pages-dashboard.png",
                      args.settle_s)
        finally:
            browser.close()
    print(f"wrote {args.out}/pages-{{generate-playground,embed-playground,dashboard}}.png")
    return 0


if __name__ == "__main__":
    sys.exit(main())

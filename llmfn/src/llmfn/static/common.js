/* llmfn pages: the helpers every page shares (no framework, no build step).
 *
 * - llmfn.api(path, options): fetch a relative API path with the bearer key the user gave (kept
 *   in sessionStorage for this tab); a 401 opens the key prompt and retries once a key is given.
 * - llmfn.el(tag, attrs, ...children): build DOM nodes (text always as text, never as HTML).
 * - small formatters.
 */
"use strict";

const llmfn = (() => {
  const KEY = "llmfn.apiKey";

  function el(tag, attrs, ...children) {
    const node = document.createElement(tag);
    for (const [k, v] of Object.entries(attrs || {})) {
      if (v === undefined || v === null || v === false) continue;
      if (k === "class") node.className = v;
      else if (k === "text") node.textContent = v;
      else if (k.startsWith("on")) node.addEventListener(k.slice(2), v);
      else node.setAttribute(k, v === true ? "" : String(v));
    }
    for (const c of children.flat()) {
      if (c === undefined || c === null || c === false) continue;
      node.append(c instanceof Node ? c : document.createTextNode(String(c)));
    }
    return node;
  }

  function key() { return sessionStorage.getItem(KEY) || ""; }

  function setKey(value) {
    if (value) sessionStorage.setItem(KEY, value); else sessionStorage.removeItem(KEY);
    renderKeyState();
  }

  function headers(extra) {
    const h = Object.assign({}, extra || {});
    if (key()) h["Authorization"] = "Bearer " + key();
    return h;
  }

  let pendingPrompt = null;

  /* The key prompt's dialog, made once, after the header of a page that shows the key state
   * (#key-state); null on other pages. */
  function keyDialog() {
    let dialog = document.getElementById("key-dialog");
    if (dialog || !document.getElementById("key-state")) return dialog;
    dialog = el("div", {id: "key-dialog", class: "card", hidden: true},
      el("form", {},
        el("div", {class: "key-message"}),
        el("input", {type: "password", name: "key", autocomplete: "off", placeholder: "API key",
                     "aria-label": "API key"}),
        el("div", {class: "row"},
          el("button", {type: "submit"}, "Use key"),
          el("button", {type: "button", class: "secondary cancel",
                        onclick: () => { dialog.hidden = true; }}, "Cancel"))));
    document.querySelector("header.top").after(dialog);
    return dialog;
  }

  /* The key prompt (a dialog below the page header). Resolves once a key is saved. */
  function askKey(message) {
    const dialog = keyDialog();
    if (!dialog) return Promise.reject(new Error("no key dialog on this page"));
    dialog.querySelector(".key-message").textContent =
      message || "This function needs an API key (API_KEYS is set).";
    dialog.hidden = false;
    const input = dialog.querySelector("input");
    input.value = "";
    input.focus();
    if (!pendingPrompt) {
      pendingPrompt = new Promise((resolve) => {
        dialog.querySelector("form").onsubmit = (ev) => {
          ev.preventDefault();
          setKey(input.value.trim());
          dialog.hidden = true;
          pendingPrompt = null;
          resolve();
        };
      });
    }
    return pendingPrompt;
  }

  /* fetch(path) with the key; on 401 ask for a key and try again (at most 3 times). */
  async function api(path, options) {
    const opts = Object.assign({}, options || {});
    for (let attempt = 0; ; attempt++) {
      opts.headers = headers((options || {}).headers);
      const resp = await fetch(path, opts);
      if (resp.status !== 401 || attempt >= 3) return resp;
      const body = await resp.json().catch(() => ({}));
      const why = key() ? "That key was refused" : "This function needs an API key";
      await askKey(why + ((body.error && body.error.message) ? ": " + body.error.message : "."));
    }
  }

  /* The error message of a failed API response (OpenAI's shape), else its status. */
  async function errorText(resp) {
    const text = await resp.text();
    try {
      const body = JSON.parse(text);
      if (body.error && body.error.message) return `${resp.status}: ${body.error.message}`;
    } catch (e) { /* not JSON */ }
    return `${resp.status} ${resp.statusText}${text ? ": " + text.slice(0, 200) : ""}`;
  }

  function renderKeyState() {
    const state = document.getElementById("key-state");
    if (!state) return;
    state.replaceChildren(key()
      ? el("span", {}, "key set ", el("button", {type: "button", class: "link",
          onclick: () => setKey("")}, "forget"))
      : el("button", {type: "button", class: "link", onclick: () => askKey(
          "Enter an API key (needed only when the function has API_KEYS set).")}, "set key"));
  }

  function fmt(value, digits) {
    if (value === null || value === undefined || Number.isNaN(value)) return "–";
    if (typeof value !== "number") return String(value);
    if (Number.isInteger(value)) return value.toLocaleString("en-US");
    return value.toFixed(digits === undefined ? 3 : digits);
  }

  function fmtSeconds(s) {
    if (s === null || s === undefined) return "–";
    if (s === 0) return "0";
    if (s < 1) return (s * 1000).toFixed(s < 0.01 ? 2 : 1) + " ms";
    return s.toFixed(2) + " s";
  }

  function fmtPercent(x) {
    if (x === null || x === undefined) return "–";
    return (100 * x).toFixed(x && x < 0.01 ? 2 : 1) + " %";
  }

  document.addEventListener("DOMContentLoaded", renderKeyState);

  return {api, askKey, el, errorText, fmt, fmtPercent, fmtSeconds, key, setKey};
})();

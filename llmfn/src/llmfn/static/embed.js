/* embed's playground: texts -> one /v1/embeddings request -> the cosine similarity of each pair. */
"use strict";

(() => {
  const {api, el, errorText, fmt} = llmfn;
  const $ = (id) => document.getElementById(id);
  const EXAMPLES = ["The cat sits on the mat.", "A kitten is resting on a rug.",
                    "Stock markets fell sharply today."];
  let modelId = null;

  function letter(i) { return String.fromCharCode(65 + (i % 26)) + (i >= 26 ? Math.floor(i / 26) : ""); }

  function addText(value) {
    const row = el("div", {class: "text-row"},
      el("span", {class: "tag"}),
      el("textarea", {rows: 2, "aria-label": "text"}),
      el("button", {type: "button", class: "secondary", title: "remove this text",
        onclick: () => { if ($("texts").children.length > 2) { row.remove(); relabel(); } }}, "×"));
    row.querySelector("textarea").value = value || "";
    $("texts").append(row);
    relabel();
  }

  function relabel() {
    [...$("texts").children].forEach((row, i) => { row.querySelector(".tag").textContent = letter(i); });
  }

  function cosine(a, b) {
    let dot = 0, na = 0, nb = 0;
    for (let i = 0; i < a.length; i++) { dot += a[i] * b[i]; na += a[i] * a[i]; nb += b[i] * b[i]; }
    return na && nb ? dot / Math.sqrt(na * nb) : 0;
  }

  /* A cell's background: from white (0 or below) to blue (1). */
  function shade(x) {
    const t = Math.max(0, Math.min(1, x));
    return `rgba(47, 111, 223, ${(0.08 + 0.6 * t).toFixed(2)})`;
  }

  async function compare() {
    const texts = [...$("texts").querySelectorAll("textarea")].map((t) => t.value);
    if (texts.length < 2 || texts.some((t) => !t.trim())) {
      $("status").textContent = "Give at least two non-empty texts.";
      return;
    }
    $("compare").disabled = true;
    $("status").textContent = "embedding…";
    const t0 = performance.now();
    try {
      const body = {input: texts};
      if (modelId) body.model = modelId;
      const resp = await api("v1/embeddings", {method: "POST",
        headers: {"Content-Type": "application/json"}, body: JSON.stringify(body)});
      if (!resp.ok) throw new Error(await errorText(resp));
      const out = await resp.json();
      const ms = performance.now() - t0;
      const vectors = out.data.slice().sort((a, b) => a.index - b.index).map((d) => d.embedding);
      render(texts, vectors);
      $("usage").textContent = `${vectors.length} vectors of ${vectors[0].length} dimensions · ` +
        `${fmt(out.usage.prompt_tokens)} tokens · ${ms.toFixed(0)} ms · model ${out.model}`;
      $("status").textContent = "";
    } catch (err) {
      $("status").replaceChildren(el("span", {class: "error"}, String(err.message || err)));
    } finally {
      $("compare").disabled = false;
    }
  }

  function render(texts, vectors) {
    const n = vectors.length;
    const head = el("tr", {}, el("th", {}, ""), texts.map((t, j) => el("th", {title: t}, letter(j))));
    const rows = vectors.map((v, i) => el("tr", {},
      el("th", {class: "left", title: texts[i]}, `${letter(i)}  ${texts[i].slice(0, 40)}${texts[i].length > 40 ? "…" : ""}`),
      vectors.map((w, j) => {
        const s = cosine(v, w);
        const td = el("td", {class: i === j ? "self" : "pair", "data-i": i, "data-j": j,
          "data-similarity": s.toFixed(6)}, s.toFixed(3));
        if (i !== j) td.style.background = shade(s);
        return td;
      })));
    $("similarity").replaceChildren(el("thead", {}, head), el("tbody", {}, rows));
    $("result").hidden = n < 2;
  }

  async function loadModel() {
    const resp = await api("v1/models");
    if (!resp.ok) { $("model").textContent = await errorText(resp); return; }
    const body = await resp.json();
    modelId = body.data.length ? body.data[0].id : null;
    $("model").textContent = modelId ? `(${modelId})` : "";
  }

  document.addEventListener("DOMContentLoaded", () => {
    EXAMPLES.forEach(addText);
    $("add").addEventListener("click", () => addText(""));
    $("compare").addEventListener("click", compare);
    loadModel().catch((err) => { $("model").textContent = String(err); });
  });
})();

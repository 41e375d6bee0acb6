/* generate's playground: a chat on /v1/chat/completions or /v1/responses (the API selector),
 * streamed (SSE), with the usage and the time to first token of each answer. The conversation
 * is kept in this page only. */
"use strict";

(() => {
  const {api, el, errorText, fmt} = llmfn;
  const $ = (id) => document.getElementById(id);
  const history = [];  // [{role, content}] of the conversation so far (without the system prompt)
  let controller = null;
  let modelId = null;  // the served model, from /v1/models

  async function loadModel() {
    const resp = await api("v1/models");
    if (!resp.ok) { $("model").value = await errorText(resp); return; }
    const body = await resp.json();
    modelId = body.data.length ? body.data[0].id : null;
    $("model").value = modelId || "(none)";
  }

  function bubble(role, text) {
    const node = el("div", {class: `msg ${role}`}, el("span", {class: "text"}, text));
    $("messages").append(node);
    $("messages").scrollTop = $("messages").scrollHeight;
    return node;
  }

  /* Reads an SSE body: calls onData(json) for each `data:` event until `[DONE]` or its end. */
  async function readSSE(resp, onData) {
    const reader = resp.body.getReader();
    const decoder = new TextDecoder();
    let buffer = "";
    for (;;) {
      const {value, done} = await reader.read();
      if (done) break;
      buffer += decoder.decode(value, {stream: true});
      let cut;
      while ((cut = buffer.indexOf("\n\n")) >= 0) {
        const event = buffer.slice(0, cut);
        buffer = buffer.slice(cut + 2);
        const data = event.split("\n").filter((l) => l.startsWith("data:"))
          .map((l) => l.slice(5).trimStart()).join("\n");
        if (!data) continue;  // a comment (": keep-alive")
        if (data === "[DONE]") return;
        onData(JSON.parse(data));
      }
    }
  }

  /* Each API: its route, its request body, and what one streamed event adds (text, usage,
   * finish; usage in chat's names). */
  const APIS = {
    chat: {
      route: "v1/chat/completions",
      body: (system, turns, temperature, maxTokens) => ({
        messages: (system ? [{role: "system", content: system}] : []).concat(turns),
        stream: true, stream_options: {include_usage: true}, temperature, max_tokens: maxTokens,
      }),
      read: (chunk, out) => {
        if (chunk.error) throw new Error(chunk.error.message || JSON.stringify(chunk.error));
        if (chunk.usage) out.usage = chunk.usage;
        for (const choice of chunk.choices || []) {
          out.delta += (choice.delta && choice.delta.content) || "";
          if (choice.finish_reason) out.finish = choice.finish_reason;
        }
      },
    },
    responses: {
      route: "v1/responses",
      body: (system, turns, temperature, maxTokens) => ({
        instructions: system || undefined, input: turns, stream: true, temperature,
        max_output_tokens: maxTokens,
      }),
      read: (event, out) => {
        if (event.type === "error") throw new Error(event.message || JSON.stringify(event));
        if (event.type === "response.output_text.delta") out.delta += event.delta;
        if (event.type === "response.completed" || event.type === "response.incomplete") {
          const u = event.response.usage;
          out.usage = {prompt_tokens: u.input_tokens, completion_tokens: u.output_tokens,
                       total_tokens: u.total_tokens};
          out.finish = event.response.status;
        }
      },
    },
  };

  async function send(text) {
    const which = APIS[$("api").value];
    const body = which.body($("system").value.trim(), history.concat(
      [{role: "user", content: text}]), Number($("temperature").value),
      Number($("max-tokens").value) || undefined);
    if (modelId) body.model = modelId;
    bubble("user", text);
    const answer = bubble("assistant streaming", "");
    const textNode = answer.querySelector(".text");
    controller = new AbortController();
    setBusy(true);
    const t0 = performance.now();
    let ttft = null, usage = null, finish = null, content = "";
    try {
      const resp = await api(which.route, {
        method: "POST", headers: {"Content-Type": "application/json"},
        body: JSON.stringify(body), signal: controller.signal,
      });
      if (!resp.ok) throw new Error(await errorText(resp));
      await readSSE(resp, (data) => {
        const out = {delta: "", usage, finish};
        which.read(data, out);
        ({usage, finish} = out);
        if (out.delta) {
          if (ttft === null) ttft = (performance.now() - t0) / 1000;
          content += out.delta;
          textNode.textContent = content;
          $("messages").scrollTop = $("messages").scrollHeight;
        }
      });
      history.push({role: "user", content: text}, {role: "assistant", content});
      const total = (performance.now() - t0) / 1000;
      answer.append(stats({usage, ttft, total, finish}));
    } catch (err) {
      answer.classList.add("error");
      if (err.name === "AbortError") {
        answer.append(el("span", {class: "stats"}, "stopped"));
        if (content) history.push({role: "user", content: text}, {role: "assistant", content});
      } else {
        answer.append(el("span", {class: "stats error"}, String(err.message || err)));
      }
    } finally {
      answer.classList.remove("streaming");
      controller = null;
      setBusy(false);
    }
  }

  function stats({usage, ttft, total, finish}) {
    const parts = [];
    if (usage) {
      parts.push(`prompt ${fmt(usage.prompt_tokens)} · completion ${fmt(usage.completion_tokens)}` +
                 ` · total ${fmt(usage.total_tokens)} tokens`);
    }
    parts.push(`TTFT ${ttft === null ? "–" : (ttft * 1000).toFixed(0) + " ms"}`);
    if (usage && usage.completion_tokens > 1 && ttft !== null && total > ttft) {
      parts.push(`${((usage.completion_tokens - 1) / (total - ttft)).toFixed(1)} tokens/s`);
    }
    parts.push(`${total.toFixed(2)} s`);
    if (finish) parts.push(`finish: ${finish}`);
    const node = el("span", {class: "stats"}, parts.join(" · "));
    node.dataset.ttftMs = ttft === null ? "" : String(Math.round(ttft * 1000));
    node.dataset.completionTokens = usage ? String(usage.completion_tokens) : "";
    return node;
  }

  function setBusy(busy) {
    $("send").disabled = busy;
    $("stop").disabled = !busy;
  }

  document.addEventListener("DOMContentLoaded", () => {
    $("api").addEventListener("change", () => {
      $("route").textContent = "/" + APIS[$("api").value].route;
    });
    $("temperature").addEventListener("input", () => {
      $("temperature-value").value = $("temperature").value;
    });
    $("compose").addEventListener("submit", (ev) => {
      ev.preventDefault();
      const text = $("prompt").value.trim();
      if (!text || controller) return;
      $("prompt").value = "";
      send(text);
    });
    $("prompt").addEventListener("keydown", (ev) => {
      if (ev.key === "Enter" && !ev.shiftKey) { ev.preventDefault(); $("compose").requestSubmit(); }
    });
    $("stop").addEventListener("click", () => controller && controller.abort());
    $("clear").addEventListener("click", () => { history.length = 0; $("messages").replaceChildren(); });
    loadModel().catch((err) => { $("model").value = String(err); });
  });
})();

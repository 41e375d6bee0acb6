/* /docs: the function's /openapi.json rendered as HTML (a small renderer of our own: operations
 * by tag, parameters, request bodies, responses and their schemas, $refs resolved). Text only:
 * nothing from the document is ever inserted as HTML. */
"use strict";

(() => {
  const {el} = llmfn;
  const $ = (id) => document.getElementById(id);
  const METHODS = ["get", "put", "post", "delete", "patch", "options", "head"];
  const MAX_DEPTH = 6;
  let doc = null;

  function resolve(obj) {
    let seen = 0;
    while (obj && typeof obj.$ref === "string" && obj.$ref.startsWith("#/") && seen++ < 20) {
      obj = obj.$ref.slice(2).split("/").reduce(
        (o, k) => (o ? o[k.replace(/~1/g, "/").replace(/~0/g, "~")] : undefined), doc);
    }
    return obj || {};
  }

  /* Text with `code` spans (the documents' descriptions use Markdown backticks). */
  function rich(tag, attrs, text) {
    const parts = String(text).split("`");
    return el(tag, attrs, parts.map((p, i) => (i % 2 ? el("code", {}, p) : p)));
  }

  function refName(schema) {
    return schema && typeof schema.$ref === "string" ? schema.$ref.split("/").pop() : null;
  }

  function typeOf(s) {
    if (s.const !== undefined) return `const ${JSON.stringify(s.const)}`;
    if (s.enum) return `enum ${s.enum.map((v) => JSON.stringify(v)).join(" | ")}`;
    let t = Array.isArray(s.type) ? s.type.join(" | ") : (s.type || "");
    if (t.includes("array") && s.items) {
      const item = resolve(s.items);
      t = t.replace("array", `array of ${refName(s.items) || item.type || "items"}`);
    }
    if (s.format) t += ` (${s.format})`;
    const bounds = [];
    for (const k of ["minimum", "maximum", "minLength", "maxLength", "minItems", "maxItems"]) {
      if (s[k] !== undefined) bounds.push(`${k} ${s[k]}`);
    }
    if (s.default !== undefined) bounds.push(`default ${JSON.stringify(s.default)}`);
    return t + (bounds.length ? ` [${bounds.join(", ")}]` : "");
  }

  /* One schema as a nested list: properties with type, required mark and description. */
  function schemaNode(schema, depth, seen) {
    const name = refName(schema);
    const s = resolve(schema);
    const box = el("div", {class: "schema"});
    if (name && seen.has(name)) return el("span", {class: "type"}, `${name} (see above)`);
    const seen2 = new Set(seen); if (name) seen2.add(name);
    const head = [name ? el("span", {class: "type"}, name + " ") : null, el("span", {class: "type"}, typeOf(s))];
    if (s.description) head.push(rich("span", {class: "desc"}, " — " + s.description));
    box.append(...head.filter(Boolean));
    if (depth >= MAX_DEPTH) return box;
    for (const key of ["oneOf", "anyOf", "allOf"]) {
      if (Array.isArray(s[key])) {
        box.append(el("div", {class: "desc"}, key),
          el("ul", {}, s[key].map((sub) => el("li", {}, schemaNode(sub, depth + 1, seen2)))));
      }
    }
    const props = s.properties || {};
    if (Object.keys(props).length) {
      const required = new Set(s.required || []);
      box.append(el("ul", {}, Object.entries(props).map(([k, v]) => el("li", {},
        el("span", {class: "name"}, k), required.has(k) ? el("span", {class: "req"}, " required") : null,
        ": ", schemaNode(v, depth + 1, seen2)))));
    }
    const items = s.items && resolve(s.items);
    if (items && (items.properties || items.oneOf || items.anyOf)) {
      box.append(el("ul", {}, el("li", {}, "items: ", schemaNode(s.items, depth + 1, seen2))));
    }
    return box;
  }

  function content(contentMap) {
    return Object.entries(contentMap || {}).map(([type, media]) => el("div", {},
      el("code", {}, type), media.schema ? schemaNode(media.schema, 0, new Set()) : null,
      media.example !== undefined ? el("pre", {}, JSON.stringify(media.example, null, 2)) : null));
  }

  function operation(path, method, op, pathItem) {
    const params = [...(pathItem.parameters || []), ...(op.parameters || [])].map(resolve);
    const body = [];
    if (op.description) body.push(rich("p", {}, op.description));
    if (op.security) {
      const schemes = op.security.map((s) => Object.keys(s).join(" + ") || "none").join(" or ");
      body.push(el("p", {class: "muted"}, `auth: ${schemes}`));
    }
    if (params.length) {
      body.push(el("h4", {}, "Parameters"), el("table", {}, el("tbody", {}, params.map((p) => el("tr", {},
        el("td", {class: "left"}, el("code", {}, p.name)), el("td", {class: "left"}, p.in),
        el("td", {class: "left"}, p.required ? "required" : ""),
        el("td", {class: "left"}, p.schema ? typeOf(resolve(p.schema)) : ""),
        rich("td", {class: "left"}, p.description || ""))))));
    }
    if (op.requestBody) {
      const rb = resolve(op.requestBody);
      body.push(el("h4", {}, "Request body" + (rb.required ? " (required)" : "")));
      if (rb.description) body.push(rich("p", {}, rb.description));
      body.push(...content(rb.content));
    }
    body.push(el("h4", {}, "Responses"));
    for (const [status, r0] of Object.entries(op.responses || {})) {
      const r = resolve(r0);
      body.push(el("div", {class: "response"}, el("strong", {}, status), " ", rich("span", {}, r.description || ""),
        Object.keys(r.headers || {}).length ? el("div", {class: "muted"}, "headers: " + Object.keys(r.headers).join(", ")) : null,
        ...content(r.content)));
    }
    const tags = (op.tags || []).join(" ");
    return el("details", {class: "op", "data-search": `${path} ${method} ${op.summary || ""} ${tags}`.toLowerCase(),
      "data-path": path, "data-method": method},
      el("summary", {}, el("span", {class: `method ${method}`}, method), el("span", {class: "path"}, path),
        el("span", {class: "muted"}, op.summary || "")),
      el("div", {class: "body"}, body));
  }

  function render() {
    const info = doc.info || {};
    document.title = `${info.title || "API"} · docs`;
    $("title").textContent = `${info.title || "API"} ${info.version ? "· " + info.version : ""}`;
    $("info").replaceChildren(
      el("div", {}, el("strong", {}, info.title || ""), " ", el("span", {class: "muted"}, `OpenAPI ${doc.openapi || "?"}`)),
      info.description ? rich("p", {}, info.description) : null,
      doc.components && doc.components.securitySchemes
        ? el("p", {class: "muted"}, "security schemes: " + Object.keys(doc.components.securitySchemes).join(", "))
        : null);
    const byTag = new Map();
    for (const [path, item] of Object.entries(doc.paths || {})) {
      for (const method of METHODS) {
        const op = item[method];
        if (!op) continue;
        const tag = (op.tags && op.tags[0]) || "other";
        if (!byTag.has(tag)) byTag.set(tag, []);
        byTag.get(tag).push(operation(path, method, op, item));
        if (method === "get" && path !== "/docs" && isPage(op)) addNav(path, op.summary);
      }
    }
    const out = [];
    for (const [tag, ops] of byTag) out.push(el("h2", {class: "tag"}, tag), ...ops);
    $("operations").replaceChildren(...out);
  }

  function isPage(op) {
    const types = Object.values(op.responses || {}).flatMap((r) => Object.keys(resolve(r).content || {}));
    return types.length > 0 && types.every((t) => t === "text/html");
  }

  function addNav(path, summary) {
    const href = path === "/" ? "./" : path.replace(/^\//, "");
    const label = path === "/" ? "Playground" : (path === "/dashboard" ? "Dashboard" : summary || path);
    $("nav").prepend(el("a", {href}, label));
  }

  function filter() {
    const q = $("filter").value.trim().toLowerCase();
    for (const op of document.querySelectorAll(".op")) op.hidden = q && !op.dataset.search.includes(q);
  }

  document.addEventListener("DOMContentLoaded", async () => {
    $("filter").addEventListener("input", filter);
    $("expand").addEventListener("click", () => {
      const open = $("expand").textContent === "Expand all";
      document.querySelectorAll(".op").forEach((d) => { d.open = open; });
      $("expand").textContent = open ? "Collapse all" : "Expand all";
    });
    try {
      const resp = await fetch("openapi.json");
      if (!resp.ok) throw new Error(`/openapi.json answered ${resp.status}`);
      doc = await resp.json();
      render();
    } catch (err) {
      $("info").replaceChildren(el("span", {class: "error"}, `No OpenAPI document: ${err.message || err}`));
    }
  });
})();

/* audit's KPI dashboard: /kpis (groups, totals, the window the counted cells cover) and one
 * /kpis/timeseries per (function, model) group, or per (function, model, API) group with
 * "Group by" (/kpis?group_by=api), drawn with the vendored uPlot.
 *
 * State for tests and the console: window.dashboard = {charts: {id: uPlot}, state: {...}}. */
"use strict";

(() => {
  const {api, el, errorText, fmt, fmtPercent, fmtSeconds} = llmfn;
  const $ = (id) => document.getElementById(id);
  // "auto" picks the smallest bucket giving at most MAX_POINTS; never below a minute: the
  // rollups' finest cells are minutes (a 30 s bucket would alternate a minute and nothing)
  const BUCKETS = [[60, "1m"], [300, "5m"], [900, "15m"], [3600, "1h"], [21600, "6h"],
                   [86400, "1d"]];
  const MAX_POINTS = 120;
  const MAX_GROUPS = 12;   // series per chart: one timeseries query per group
  const COLORS = ["#2f6fdf", "#e67e22", "#1e8449", "#c0392b", "#7d3c98", "#17a2b8",
                  "#b9770e", "#5d6d7e", "#d35400", "#27ae60", "#8e44ad", "#2c3e50"];
  const REASON_COLORS = {stop: "#1e8449", length: "#e67e22", tool_calls: "#2f6fdf",
                         error: "#c0392b", cancelled: "#7d3c98", none: "#5d6d7e", other: "#17a2b8"};

  const seconds = (v) => fmtSeconds(v);
  const count = (v) => fmt(v);
  const rate = (v) => fmt(v, 1);
  /* The charts: each plots its metrics (timeseries bucket fields) per group. */
  const CHARTS = [
    {id: "requests", title: "Requests", metrics: [["count", ""]], fmt: count, zero: true,
     integer: true},
    {id: "error_rate", title: "Error rate", metrics: [["error_rate", ""]], fmt: fmtPercent,
     zero: true, whenCounted: true},
    {id: "latency", title: "Latency p50 / p95", metrics: [["latency_p50_s", "p50"],
     ["latency_p95_s", "p95"]], fmt: seconds, zero: true},
    {id: "ttft", title: "Time to first token p50 / p95", metrics: [["ttft_p50_s", "p50"],
     ["ttft_p95_s", "p95"]], fmt: seconds, zero: true},
    {id: "tokens_per_s", title: "Tokens/s (mean)", metrics: [["tokens_per_s_mean", ""]],
     fmt: rate, zero: true},
    {id: "cold_starts", title: "Cold starts", metrics: [["cold_starts", ""]], fmt: count,
     zero: true, integer: true},
    {id: "cold_start_latency", title: "Cold-start latency p50", metrics: [["cold_start_p50_s", ""]],
     fmt: seconds, zero: true},
    {id: "finish_reasons", title: "Finish reasons (all groups shown)", reasons: true, fmt: count,
     zero: true, integer: true},
  ];

  const INTEGER_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5,
                         2e5, 5e5, 1e6];  // count axes: whole numbers only
  const dashboard = {charts: {}, state: null, refreshes: 0};
  window.dashboard = dashboard;
  let timer = null, running = null;

  function bucketFor(windowS) {
    for (const [s, name] of BUCKETS) if (windowS / s <= MAX_POINTS) return name;
    return "1d";
  }

  function params(extra) {
    const p = new URLSearchParams();
    for (const [k, v] of Object.entries(extra)) if (v !== "" && v !== undefined && v !== null) p.set(k, v);
    return p.toString();
  }

  async function getJSON(path) {
    const resp = await api(path);
    if (!resp.ok) throw new Error(`${path.split("?")[0]}: ${await errorText(resp)}`);
    return resp.json();
  }

  function controls() {
    const windowS = Number($("window").value);
    const until = Math.ceil(Date.now() / 1000);
    const bucket = $("bucket").value === "auto" ? bucketFor(windowS) : $("bucket").value;
    return {since: until - windowS, until, bucket, function: $("function").value,
            model: $("model").value, service: $("service").value.trim(),
            group_by: $("group").value};
  }

  async function refresh() {
    if (running) return running;
    running = (async () => {
      const c = controls();
      const win = {since: c.since, until: c.until, service: c.service};
      const all = await getJSON("kpis?" + params({...win, group_by: c.group_by}));
      const filtered = (c.function || c.model)
        ? await getJSON("kpis?" + params({...win, group_by: c.group_by, function: c.function,
                                          model: c.model}))
        : all;
      const groups = filtered.groups.slice(0, MAX_GROUPS);
      /* a group of cells stored before events had an API (api "") cannot be filtered on: its
       * series is its function's and model's */
      const series = await Promise.all(groups.map((g) => getJSON("kpis/timeseries?" + params(
        {...win, bucket: c.bucket, function: g.function, model: g.model, api: g.api}))));
      dashboard.state = {controls: c, all, kpis: filtered, groups, series};
      options(all.groups);
      tiles(filtered.total);
      charts(groups, series);
      table(filtered);
      $("error").textContent = "";
      $("updated").textContent = `updated ${new Date().toLocaleTimeString()} · bucket ${c.bucket}` +
        (filtered.groups.length > MAX_GROUPS ? ` · first ${MAX_GROUPS} of ${filtered.groups.length} groups charted` : "");
      dashboard.refreshes++;
    })();
    try {
      await running;
    } catch (err) {
      $("error").textContent = String(err.message || err);
    } finally {
      running = null;
    }
  }

  /* The function and model filters list what the window holds (a chosen value stays). */
  function options(groups) {
    for (const [id, key] of [["function", "function"], ["model", "model"]]) {
      const select = $(id);
      const chosen = select.value;
      const values = [...new Set(groups.map((g) => g[key]))].sort();
      if (chosen && !values.includes(chosen)) values.push(chosen);
      select.replaceChildren(el("option", {value: ""}, "all"),
        ...values.map((v) => el("option", {value: v}, v)));
      select.value = chosen;
    }
  }

  function tiles(total) {
    const items = [
      ["requests", fmt(total.count)], ["errors", `${fmt(total.errors)} (${fmtPercent(total.error_rate)})`],
      ["latency p50 / p95", `${fmtSeconds(total.latency_s.p50)} / ${fmtSeconds(total.latency_s.p95)}`],
      ["TTFT p50 / p95", `${fmtSeconds(total.ttft_s.p50)} / ${fmtSeconds(total.ttft_s.p95)}`],
      ["tokens/s (mean)", fmt(total.tokens_per_s_mean, 1)],
      ["tokens in / out", `${fmt(total.prompt_tokens)} / ${fmt(total.completion_tokens)}`],
      ["cold starts", `${fmt(total.cold_starts.count)} (p50 ${fmtSeconds(total.cold_starts.duration_p50_s)})`],
    ];
    $("tiles").replaceChildren(...items.map(([k, v]) => el("div", {class: "tile", "data-tile": k},
      el("div", {class: "v"}, v), el("div", {class: "k"}, k))));
  }

  function groupLabel(g) {
    return `${g.function} · ${g.model}` + (g.api === undefined ? "" : ` · ${g.api || "?"}`);
  }

  /* [x, ys...] and the uPlot series of one chart. */
  function chartData(spec, groups, series) {
    const first = series[0] ? series[0].series : [];
    const x = first.map((b) => Date.parse(b.start) / 1000);
    /* Off the chart the legend shows each series' latest value ("latest"), on it the hovered one. */
    const ys = [], defs = [{value: (u, v, si, idx) => idx == null ? "latest" :
                                     new Date(v * 1000).toLocaleString()}];
    if (spec.reasons) {
      const reasons = [...new Set(series.flatMap((s) => s.series.flatMap((b) => Object.keys(b.finish_reasons))))].sort();
      reasons.forEach((r, i) => {
        ys.push(x.map((_, k) => series.reduce((n, s) => n + (((s.series[k] || {}).finish_reasons || {})[r] || 0), 0)));
        defs.push(line(r, REASON_COLORS[r] || COLORS[i % COLORS.length], false, spec.fmt));
      });
    } else {
      groups.forEach((g, gi) => {
        spec.metrics.forEach(([field, label], mi) => {
          ys.push(series[gi].series.map((b) => (spec.whenCounted && !b.count) ? null : b[field]));
          defs.push(line(groupLabel(g) + (label ? " " + label : ""), COLORS[gi % COLORS.length],
            mi > 0, spec.fmt));
        });
      });
    }
    return {data: [x, ...ys], series: defs};
  }

  function line(label, color, dashed, format) {
    return {label, stroke: color, width: dashed ? 1.5 : 2, dash: dashed ? [6, 4] : undefined,
            points: {show: true, size: 5, fill: color},
            value: (u, v, si, idx) => format(idx == null ? latest(u.data[si]) : v)};
  }

  /* The last non-null value of a series (null when it has none). */
  function latest(values) {
    for (let i = values.length - 1; i >= 0; i--) if (values[i] != null) return values[i];
    return null;
  }

  function charts(groups, series) {
    for (const chart of Object.values(dashboard.charts)) chart.destroy();
    dashboard.charts = {};
    const boxes = CHARTS.map((spec) => {
      return [spec, el("div", {class: "chart", "data-chart": spec.id}, el("h3", {}, spec.title))];
    });
    $("charts").replaceChildren(...boxes.map(([, box]) => box));
    for (const [spec, box] of boxes) {
      const {data, series: defs} = chartData(spec, groups, series);
      box.dataset.series = String(defs.length - 1);
      if (defs.length === 1) {
        box.append(el("div", {class: "empty"}, "no events in this window"));
        continue;
      }
      const opts = {
        width: Math.max(280, box.clientWidth - 14), height: 220, series: defs,
        scales: {x: {time: true}, y: {range: (u, min, max) => [spec.zero ? 0 : min, max > 0 ? max * 1.1 : 1]}},
        axes: [{}, {size: 70, values: (u, vals) => vals.map((v) => spec.fmt(v)),
                    incrs: spec.integer ? INTEGER_INCRS : undefined}],
        legend: {live: true},
      };
      dashboard.charts[spec.id] = new uPlot(opts, data, box);
    }
  }

  function reasonsText(reasons) {
    return Object.entries(reasons || {}).map(([k, v]) => `${k} ${v}`).join(" · ") || "–";
  }

  function table(k) {
    const byApi = k.group_by === "api";  // an API column
    const head = ["function", "model", ...(byApi ? ["API"] : []), "requests", "errors",
      "error rate", "latency p50", "p95", "p99", "TTFT p50", "p95", "tokens/s", "tokens in",
      "tokens out", "cold starts", "cold p50", "finish reasons"];
    const row = (g, cls) => el("tr", {class: cls, "data-function": g.function || "", "data-model": g.model || "",
                                      ...(byApi ? {"data-api": g.api || ""} : {})},
      el("td", {}, g.function || "total"), el("td", {class: "left"}, g.model || ""),
      ...(byApi ? [el("td", {class: "left", "data-col": "api"},
                      cls === "total" ? "" : g.api || "?")] : []),
      el("td", {"data-col": "count"}, fmt(g.count)), el("td", {}, fmt(g.errors)),
      el("td", {}, fmtPercent(g.error_rate)),
      el("td", {}, fmtSeconds(g.latency_s.p50)), el("td", {}, fmtSeconds(g.latency_s.p95)),
      el("td", {}, fmtSeconds(g.latency_s.p99)),
      el("td", {}, fmtSeconds(g.ttft_s.p50)), el("td", {}, fmtSeconds(g.ttft_s.p95)),
      el("td", {}, fmt(g.tokens_per_s_mean, 1)), el("td", {}, fmt(g.prompt_tokens)),
      el("td", {}, fmt(g.completion_tokens)), el("td", {}, fmt(g.cold_starts.count)),
      el("td", {}, fmtSeconds(g.cold_starts.duration_p50_s)),
      el("td", {class: "left"}, reasonsText(g.finish_reasons)));
    $("groups").replaceChildren(
      el("thead", {}, el("tr", {}, head.map((h, i) => el("th", {
        class: i === 1 || i === head.length - 1 || h === "API" ? "left" : ""}, h)))),
      el("tbody", {}, k.groups.map((g) => row(g, "group")), row(k.total, "total")));
    const w = k.window || {};
    const filters = ["function", "model", "service"].filter((f) => k[f]).map((f) => `${f}=${k[f]}`);
    $("groups-title").textContent = byApi ? "By function, model and API" : "By function and model";
    $("window-text").textContent = `Asked: ${k.since} to ${k.until}` +
      (filters.length ? ` (${filters.join(", ")})` : "") + ". " +
      (w.since ? `Counted cells cover ${w.since} to ${w.until} (cells of up to ${w.coarsest_cell_s} s: ` +
                 "a cell counts whole when it overlaps the window)."
               : "No cells in this window.");
  }

  function schedule() {
    if (timer) clearInterval(timer);
    const s = Number($("refresh").value);
    timer = s > 0 ? setInterval(() => { if (!document.hidden) refresh(); }, s * 1000) : null;
  }

  /* The controls live in the URL's fragment, so a view can be linked. */
  function saveHash() {
    const p = new URLSearchParams();
    for (const id of ["window", "bucket", "function", "model", "service", "group", "refresh"]) {
      if ($(id).value) p.set(id, $(id).value);
    }
    history.replaceState(null, "", "#" + p.toString());
  }

  function loadHash() {
    const p = new URLSearchParams(location.hash.slice(1));
    for (const [id, v] of p) {
      const node = $(id);
      if (!node) continue;
      if (node.tagName === "SELECT" && ![...node.options].some((o) => o.value === v)) {
        node.append(el("option", {value: v}, v));
      }
      node.value = v;
    }
  }

  document.addEventListener("DOMContentLoaded", () => {
    loadHash();
    for (const id of ["window", "bucket", "function", "model", "group", "refresh"]) {
      $(id).addEventListener("change", () => { saveHash(); schedule(); refresh(); });
    }
    $("service").addEventListener("change", () => { saveHash(); refresh(); });
    $("controls").addEventListener("submit", (ev) => { ev.preventDefault(); refresh(); });
    let resizeTimer = null;
    window.addEventListener("resize", () => {
      clearTimeout(resizeTimer);
      resizeTimer = setTimeout(() => {
        for (const [id, chart] of Object.entries(dashboard.charts)) {
          const box = document.querySelector(`[data-chart="${id}"]`);
          chart.setSize({width: Math.max(280, box.clientWidth - 14), height: 220});
        }
      }, 150);
    });
    schedule();
    refresh();
  });
})();

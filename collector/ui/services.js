// Services page (`/services`): the service map (callers left, callees right) with rate, error
// ratio and p90 on each edge; a selected service's operations and RED charts.

import {
  h, api, qs, errorBox, emptyBox, loading, fmtDur, fmtRate, fmtPct, colorFor, durParam,
  rangeControl, resolveRange, navigate, setUrl,
} from "./util.js";

const NODE_W = 210;
const NODE_H = 56;
const COL_GAP = 170;
const ROW_GAP = 34;
const PAD = 24;

export function render(main, params) {
  const ctl = new AbortController();
  const range = rangeControl(params, "15m");
  const form = h("form", { class: "card row" },
    h("label", {}, "Time", range.el),
    h("button", { type: "submit" }, "Refresh"),
    h("span", { class: "muted small" }, "Click a service for its operations and RED charts (rate, errors, duration)."));
  const mapBox = h("section", { class: "card map-card" }, loading("Loading the service map"));
  const detail = h("section", { class: "service-detail" });
  main.append(h("div", { class: "page" }, form, mapBox, detail));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const r = range.read();
    navigate("/services" + qs({ range: r.range, start: r.start, end: r.end, service: params.get("service"), op: params.get("op") }));
  });
  const [start, end] = resolveRange(params, "15m");
  const state = { service: params.get("service") || "", op: params.get("op") || "" };

  const selectService = (name, op = "") => {
    state.service = name;
    state.op = op;
    const p = new URLSearchParams(location.search);
    if (name) p.set("service", name); else p.delete("service");
    if (op) p.set("op", op); else p.delete("op");
    setUrl("/services?" + p.toString(), { push: true });
    mapBox.querySelectorAll(".svc-node").forEach((g) => g.classList.toggle("selected", g.dataset.service === name));
    showService(detail, name, op, start, end, ctl.signal, selectService);
  };

  (async () => {
    let r;
    try {
      r = await api("/skein/api/services", { start, end }, { signal: ctl.signal });
    } catch (e) {
      if (e.name !== "AbortError") mapBox.replaceChildren(errorBox(e, "Loading the service map"));
      return;
    }
    const svcs = r.services || [];
    const edges = r.edges || [];
    if (!svcs.length && !edges.length) {
      mapBox.replaceChildren(emptyBox(h("strong", {}, "No services in this window"),
        h("p", {}, "Services appear once spans arrive — is anything sending to :4317 (OTLP gRPC) or :4318 (HTTP)? ",
          h("code", {}, "skein demo"), " starts a shop that does. Widen the time range to see older traffic.")));
      return;
    }
    mapBox.replaceChildren(h("h2", {}, "Service map", h("span", { class: "muted small" }, ` ${svcs.length} services · ${edges.length} edges`)),
      drawMap(svcs, edges, state.service, (name) => selectService(name)));
    if (state.service) showService(detail, state.service, state.op, start, end, ctl.signal, selectService);
  })();
  return () => ctl.abort();
}

/** Layers by longest path from the callers (back edges of cycles ignored), ordered by barycentre. */
export function layout(names, edges) {
  const out = new Map(names.map((n) => [n, []]));
  const inc = new Map(names.map((n) => [n, []]));
  for (const e of edges) {
    if (e.client === e.server) continue;
    out.get(e.client).push(e.server);
    inc.get(e.server).push(e.client);
  }
  // DFS to drop back edges (cycles), giving a DAG.
  const state = new Map();
  const dag = new Map(names.map((n) => [n, []]));
  const order = [];
  const dfs = (start) => {
    const stack = [[start, 0]];
    state.set(start, 1);
    while (stack.length) {
      const top = stack[stack.length - 1];
      const [n, i] = top;
      const succ = out.get(n);
      if (i < succ.length) {
        top[1]++;
        const m = succ[i];
        const st = state.get(m);
        if (!st) {
          dag.get(n).push(m);
          state.set(m, 1);
          stack.push([m, 0]);
        } else if (st === 2) dag.get(n).push(m);
      } else {
        state.set(n, 2);
        order.push(n);
        stack.pop();
      }
    }
  };
  const roots = names.filter((n) => !inc.get(n).length).sort();
  for (const n of [...roots, ...[...names].sort()]) if (!state.get(n)) dfs(n);
  const layer = new Map(names.map((n) => [n, 0]));
  for (const n of order.reverse()) for (const m of dag.get(n)) layer.set(m, Math.max(layer.get(m), layer.get(n) + 1));
  const cols = [];
  for (const n of names) (cols[layer.get(n)] ||= []).push(n);
  const pos = new Map();
  cols.forEach((col, c) => {
    col.sort((a, b) => {
      const bary = (x) => {
        const ps = inc.get(x).filter((p) => pos.has(p)).map((p) => pos.get(p).row);
        return ps.length ? ps.reduce((s, v) => s + v, 0) / ps.length : Infinity;
      };
      return bary(a) - bary(b) || a.localeCompare(b);
    });
    col.forEach((n, r) => pos.set(n, { col: c, row: r }));
  });
  return { cols, pos };
}

function drawMap(svcs, edges, selected, onSelect) {
  const info = new Map(svcs.map((s) => [s.name, s]));
  const names = [...new Set([...svcs.map((s) => s.name), ...edges.flatMap((e) => [e.client, e.server])])];
  const { cols, pos } = layout(names, edges);
  const maxRows = Math.max(...cols.map((c) => c.length));
  const width = PAD * 2 + cols.length * NODE_W + (cols.length - 1) * COL_GAP;
  const height = PAD * 2 + maxRows * NODE_H + (maxRows - 1) * ROW_GAP + 20;
  const xy = (n) => {
    const p = pos.get(n);
    const colH = cols[p.col].length * NODE_H + (cols[p.col].length - 1) * ROW_GAP;
    const y0 = PAD + (maxRows * NODE_H + (maxRows - 1) * ROW_GAP - colH) / 2;
    return { x: PAD + p.col * (NODE_W + COL_GAP), y: y0 + p.row * (NODE_H + ROW_GAP) };
  };
  const svg = h("svg", {
    class: "service-map", viewBox: `0 0 ${width} ${height}`, width, height, role: "img",
    "aria-label": `service map of ${names.length} services`,
  }, h("defs", {},
    h("marker", { id: "arrow", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
      h("path", { d: "M0,0 L10,5 L0,10 z", fill: "#8a94a6" })),
    h("marker", { id: "arrow-err", viewBox: "0 0 10 10", refX: "9", refY: "5", markerWidth: "7", markerHeight: "7", orient: "auto-start-reverse" },
      h("path", { d: "M0,0 L10,5 L0,10 z", fill: "#d64545" }))));
  const labels = [];
  for (const e of edges) {
    if (!pos.has(e.client) || !pos.has(e.server)) continue;
    const a = xy(e.client);
    const b = xy(e.server);
    const err = (e.error_ratio || 0) > 0;
    let d;
    let lx;
    let ly;
    if (e.client === e.server) {
      d = `M${a.x + NODE_W - 30},${a.y} C${a.x + NODE_W},${a.y - 50} ${a.x + NODE_W + 40},${a.y + 10} ${a.x + NODE_W},${a.y + NODE_H / 2}`;
      lx = a.x + NODE_W + 20;
      ly = a.y - 18;
    } else if (pos.get(e.server).col > pos.get(e.client).col) {
      const x1 = a.x + NODE_W;
      const y1 = a.y + NODE_H / 2;
      const x2 = b.x - 2;
      const y2 = b.y + NODE_H / 2;
      const mx = (x1 + x2) / 2;
      d = `M${x1},${y1} C${mx},${y1} ${mx},${y2} ${x2},${y2}`;
      // The curve's midpoint; a caller's fan-out labels are apart by half the callees' distance.
      lx = mx;
      ly = (y1 + y2) / 2 - 6;
    } else {
      // Back edge or same column: arc under the nodes.
      const x1 = a.x + NODE_W / 2;
      const y1 = a.y + NODE_H;
      const x2 = b.x + NODE_W / 2;
      const y2 = b.y + NODE_H + 2;
      const dip = Math.max(y1, y2) + 40;
      d = `M${x1},${y1} C${x1},${dip} ${x2},${dip} ${x2},${y2}`;
      lx = (x1 + x2) / 2;
      ly = dip - 8;
    }
    const title = `${e.client} → ${e.server}${e.connection_type ? ` (${e.connection_type})` : ""}: ${fmtRate(e.rate)}, ${fmtPct(e.error_ratio)} errors, p90 ${fmtDur(e.p90_ns)}`;
    svg.append(h("path", { class: `edge ${err ? "err" : ""}`, d, "marker-end": `url(#${err ? "arrow-err" : "arrow"})` }, h("title", {}, title)));
    labels.push(h("text", { class: `edge-label ${err ? "err" : ""}`, x: lx, y: ly - 12, "text-anchor": "middle" },
      h("title", {}, title),
      h("tspan", {}, `${fmtRate(e.rate)} · `),
      h("tspan", { class: err ? "err" : "" }, `${fmtPct(e.error_ratio)} err`),
      h("tspan", { x: lx, dy: "1.2em" }, `p90 ${fmtDur(e.p90_ns)}`)));
  }
  for (const n of names) {
    const { x, y } = xy(n);
    const s = info.get(n);
    const g = h("g", {
      class: `svc-node ${n === selected ? "selected" : ""} ${s ? "" : "virtual"}`, tabindex: "0", role: "button",
      "aria-label": `service ${n}`, dataset: { service: n }, transform: `translate(${x},${y})`,
    },
    h("rect", { class: "node-bg", width: NODE_W, height: NODE_H, rx: 8 }),
    h("rect", { width: 6, height: NODE_H, rx: 3, fill: colorFor(n) }),
    h("text", { class: "node-name", x: 16, y: 22 }, n.length > 22 ? n.slice(0, 21) + "…" : n),
    h("text", { class: "node-stats", x: 16, y: 42 }, s
      ? `${fmtRate(s.rate)} · ${fmtPct(s.error_ratio)} err · p90 ${fmtDur(s.p90_ns)}`
      : "not instrumented"),
    h("title", {}, s ? `${n}: ${fmtRate(s.rate)}, ${fmtPct(s.error_ratio)} errors, p50 ${fmtDur(s.p50_ns)}, p90 ${fmtDur(s.p90_ns)}, p99 ${fmtDur(s.p99_ns)}` : n));
    if (s) {
      g.addEventListener("click", () => onSelect(n));
      g.addEventListener("keydown", (ev) => {
        if (ev.key === "Enter" || ev.key === " ") {
          ev.preventDefault();
          onSelect(n);
        }
      });
    }
    svg.append(g);
  }
  for (const l of labels) svg.append(l);
  return h("div", { class: "map-scroll" }, svg);
}

async function showService(box, service, op, start, end, signal, select) {
  if (!service) {
    box.replaceChildren();
    return;
  }
  const charts = h("div", { class: "red-charts" }, loading("Loading RED charts"));
  const ops = h("div", {}, loading("Loading operations"));
  box.replaceChildren(h("div", { class: "card" },
    h("div", { class: "row between" },
      h("h2", {}, h("span", { class: "svc-dot big", style: { background: colorFor(service) } }), service,
        op ? h("span", { class: "muted" }, ` › ${op}`) : null),
      h("div", { class: "row" },
        op ? h("button", { type: "button", class: "ghost", onclick: () => select(service, "") }, "Whole service") : null,
        h("a", { class: "button ghost", href: `/${qs({ service, operation: op })}` }, "Search traces"))),
    charts), h("div", { class: "card" }, h("h2", {}, "Operations"), ops));
  const step = Math.max(15, Math.round((end - start) / 60));
  api("/skein/api/red", { service, span_name: op, start, end, step: `${step}s` }, { signal })
    .then((r) => charts.replaceChildren(...redCharts(r, [start * 1000, end * 1000])))
    .catch((e) => { if (e.name !== "AbortError") charts.replaceChildren(errorBox(e, "RED charts")); });
  try {
    const r = await api("/skein/api/operations", { service, start, end }, { signal });
    const list = (r.operations || []).sort((a, b) => (b.rate || 0) - (a.rate || 0));
    if (!list.length) {
      ops.replaceChildren(emptyBox(`No operations of ${service} in this window.`));
      return;
    }
    ops.replaceChildren(h("table", { class: "grid ops" },
      h("thead", {}, h("tr", {}, ["Operation", "Kind", "Rate", "Errors", "p90", ""].map((c, i) =>
        h("th", { scope: "col", class: i >= 2 && i <= 4 ? "num" : "" }, c)))),
      h("tbody", {}, list.map((o) => {
        const opq = { service, span_name: o.span_name };
        return h("tr", { class: o.span_name === op ? "selected" : "" },
          h("td", {}, h("button", { type: "button", class: "linklike op-select", onclick: () => select(service, o.span_name) }, o.span_name)),
          h("td", { class: "muted" }, String(o.span_kind || "").replace(/^SPAN_KIND_/, "").toLowerCase()),
          h("td", { class: "num" }, fmtRate(o.rate)),
          h("td", { class: `num ${o.error_ratio > 0 ? "err" : ""}` }, fmtPct(o.error_ratio)),
          h("td", { class: "num" }, fmtDur(o.p90_ns)),
          h("td", { class: "links" },
            h("a", { href: `/${qs({ service, operation: o.span_name })}` }, "traces"), " · ",
            h("a", { href: `/flamegraph${qs(opq)}` }, "flamegraph"), " · ",
            h("a", { href: `/compare${qs({ ...opq, threshold: o.p90_ns ? durParam(o.p90_ns) : "" })}` }, "slow vs normal")));
      }))));
  } catch (e) {
    if (e.name !== "AbortError") ops.replaceChildren(errorBox(e, "Loading operations"));
  }
}

function redCharts(r, win) {
  const s = r.series || {};
  return [
    chart("Rate", [["requests", s.rate, "#3b6fd4"]], fmtRate, win),
    chart("Error ratio", [["errors", s.error_ratio, "#d64545"]], (v) => fmtPct(v), win),
    chart("Duration", [["p50", s.p50_ns, "#7aa6e8"], ["p90", s.p90_ns, "#3b6fd4"], ["p99", s.p99_ns, "#1d3a78"]], fmtDur, win),
  ];
}

/** A small SVG line chart over the window; null/NaN values break the line (a lone point is a
 * dot). Hover shows the values. */
function chart(title, series, fmt, [w0, w1]) {
  const W = 360;
  const H = 130;
  const L = 8;
  const T = 22;
  const B = 20;
  const pts = series.flatMap(([, data]) => (data || []).map(([t, v]) => [Number(t), Number(v)]));
  const valid = pts.filter(([, v]) => Number.isFinite(v));
  const readout = h("span", { class: "muted small readout" });
  const head = h("div", { class: "chart-head" }, h("strong", {}, title), " ",
    series.length > 1 ? series.map(([name, , color]) => h("span", { class: "legend-item" }, h("span", { class: "swatch", style: { background: color } }), name)) : null,
    readout);
  if (!valid.length) return h("div", { class: "chart" }, head, h("div", { class: "chart-empty muted small" }, "no data in this window"));
  const t0 = Math.min(w0, ...pts.map(([t]) => t));
  const t1 = Math.max(w1, ...pts.map(([t]) => t), t0 + 1);
  const vmax = Math.max(...valid.map(([, v]) => v)) || 1;
  const x = (t) => L + ((t - t0) / (t1 - t0)) * (W - L * 2);
  const y = (v) => T + (1 - v / vmax) * (H - T - B);
  const svg = h("svg", { viewBox: `0 0 ${W} ${H}`, class: "chart-svg", role: "img", "aria-label": `${title} over time` },
    h("line", { x1: L, x2: W - L, y1: y(0), y2: y(0), class: "axis" }),
    h("line", { x1: L, x2: W - L, y1: y(vmax), y2: y(vmax), class: "grid" }),
    h("text", { x: L, y: T - 6, class: "tick" }, `max ${fmt(vmax)}`),
    h("text", { x: L, y: H - 4, class: "tick" }, fmtClock(t0)),
    h("text", { x: W - L, y: H - 4, class: "tick", "text-anchor": "end" }, fmtClock(t1)));
  for (const [, data, color] of series) {
    const p = (data || []).map(([a, b]) => [Number(a), Number(b)]);
    let d = "";
    for (let i = 0; i < p.length; i++) {
      const [t, v] = p[i];
      if (!Number.isFinite(v)) continue;
      const joined = i > 0 && Number.isFinite(p[i - 1][1]);
      d += `${joined ? "L" : "M"}${x(t).toFixed(1)},${y(v).toFixed(1)}`;
      if (!joined && !(i + 1 < p.length && Number.isFinite(p[i + 1][1]))) {
        svg.append(h("circle", { cx: x(t), cy: y(v), r: 2.5, fill: color }));
      }
    }
    svg.append(h("path", { d, fill: "none", stroke: color, "stroke-width": 1.8, "stroke-linejoin": "round" }));
  }
  const cursor = h("line", { y1: T, y2: H - B, class: "cursor", visibility: "hidden" });
  svg.append(cursor);
  svg.addEventListener("mousemove", (ev) => {
    const box = svg.getBoundingClientRect();
    const t = t0 + ((ev.clientX - box.left) / box.width * W - L) / (W - L * 2) * (t1 - t0);
    const near = (data) => (data || []).reduce((best, p) => (!best || Math.abs(p[0] - t) < Math.abs(best[0] - t) ? p : best), null);
    const first = near(series[0][1]);
    if (!first) return;
    cursor.setAttribute("x1", x(first[0]));
    cursor.setAttribute("x2", x(first[0]));
    cursor.setAttribute("visibility", "visible");
    readout.textContent = `${fmtClock(first[0])}: ` + series.map(([name, data]) => {
      const p = near(data);
      return `${series.length > 1 ? name + " " : ""}${p && Number.isFinite(Number(p[1])) ? fmt(Number(p[1])) : "–"}`;
    }).join(", ");
  });
  svg.addEventListener("mouseleave", () => {
    cursor.setAttribute("visibility", "hidden");
    readout.textContent = "";
  });
  return h("div", { class: "chart" }, head, svg);
}

function fmtClock(ms) {
  return new Date(ms).toLocaleTimeString(undefined, { hour: "2-digit", minute: "2-digit", hour12: false });
}

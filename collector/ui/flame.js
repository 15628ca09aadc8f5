// Flamegraph page (`/flamegraph`): CPU samples of one span, of an operation, of an operation's
// calls slower than X, or the slow-vs-normal diff, drawn from /skein/api/flamegraph's JSON
// tree as an icicle (callers on top). Click a frame to zoom, search to highlight, hover for
// totals.

import {
  h, api, qs, errorBox, emptyBox, loading, fmtDur, fmtPct, rangeControl, resolveRange, navigate,
  tagSelect, fillTagSelect, serviceFilter, openApi,
} from "./util.js";

const ROW = 20;
const MIN_PX = 0.5;
const MODES = [
  ["span", "one span"],
  ["operation", "an operation"],
  ["slow", "an operation, slower than"],
  ["diff", "slow vs normal (diff)"],
];

function modeOf(p) {
  const m = p.get("mode");
  if (MODES.some(([k]) => k === m)) return m;
  if (p.get("threshold")) return "diff";
  if (p.get("span_id")) return "span";
  if (p.get("min_duration")) return "slow";
  return "operation";
}

export function render(main, params) {
  const ctl = new AbortController();
  const mode = modeOf(params);
  const g = (k) => params.get(k) || "";

  const modeSel = h("select", { name: "mode", "aria-label": "what to show" },
    MODES.map(([k, l]) => h("option", { value: k, selected: k === mode }, l)));
  const service = tagSelect("service", "resource.service.name", {
    selected: g("service"), any: "choose a service", label: "service",
    onchange: () => fillTagSelect(op, "name", serviceFilter(service.value), ""),
  });
  const op = tagSelect("span_name", "name", {
    selected: g("span_name"), any: "choose an operation", label: "operation", q: serviceFilter(g("service")),
  });
  const spanId = h("input", { name: "span_id", value: g("span_id"), placeholder: "16 hex digits", size: 18, spellcheck: "false", "aria-label": "span id" });
  const minDur = h("input", { name: "min_duration", value: g("min_duration"), placeholder: "e.g. 250ms", size: 9, "aria-label": "slower than" });
  const threshold = h("input", { name: "threshold", value: g("threshold"), placeholder: "e.g. 250ms", size: 9, "aria-label": "threshold" });
  const range = rangeControl(params, "1h");
  const fields = {
    span_id: h("label", {}, "Span ID", spanId),
    min_duration: h("label", {}, "Slower than", minDur),
    threshold: h("label", {}, "Slow = at least", threshold),
  };
  const showFields = () => {
    fields.span_id.hidden = modeSel.value !== "span";
    fields.min_duration.hidden = modeSel.value !== "slow";
    fields.threshold.hidden = modeSel.value !== "diff";
  };
  modeSel.addEventListener("change", showFields);
  showFields();
  const form = h("form", { class: "card row flame-form" },
    h("label", {}, "Show", modeSel),
    h("label", {}, "Service", service),
    h("label", {}, "Operation", op),
    fields.span_id, fields.min_duration, fields.threshold,
    h("label", {}, "Time", range.el),
    h("button", { type: "submit" }, "Show"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const m = modeSel.value;
    const r = range.read();
    navigate("/flamegraph" + qs({
      mode: m,
      service: service.value, span_name: op.value,
      span_id: m === "span" ? spanId.value.trim() : "",
      trace: m === "span" && spanId.value.trim() === g("span_id") ? g("trace") : "",
      min_duration: m === "slow" ? minDur.value.trim() : "",
      threshold: m === "diff" ? threshold.value.trim() : "",
      range: r.range, start: r.start, end: r.end,
    }));
  });

  const out = h("section", { class: "flame-out" });
  main.append(h("div", { class: "page" }, form, out));

  const svc = g("service");
  const name = g("span_name");
  const need = mode === "span" ? (g("span_id") ? null : "a span id")
    : !svc || !name ? "a service and an operation"
      : mode === "slow" && !g("min_duration") ? "a duration (slower than)"
        : mode === "diff" && !g("threshold") ? "a threshold (slow = at least)" : null;
  if (need) {
    out.replaceChildren(emptyBox(h("strong", {}, `Choose ${need}`),
      h("p", {}, "Flamegraphs come from span profiles: CPU samples the instrumentation tags with the span that was running. ",
        "Open one from a span in the trace view, or pick an operation above.")));
    return () => ctl.abort();
  }
  let graph = null;
  (async () => {
    out.replaceChildren(loading("Loading samples"));
    const hasRange = params.get("range") || params.get("start");
    const [start, end] = hasRange ? resolveRange(params, "1h") : [undefined, undefined];
    const base = {
      service: svc, span_name: name, start, end, format: "json",
      ...(mode === "span" ? { span_id: g("span_id") } : {}),
      ...(mode === "slow" ? { min_duration: g("min_duration") } : {}),
      ...(mode === "diff" ? { threshold: g("threshold") } : {}),
    };
    if (mode === "span" && !svc) delete base.service;
    let data;
    try {
      data = await api(mode === "diff" ? "/skein/api/flamegraph/diff" : "/skein/api/flamegraph", base, { signal: ctl.signal });
    } catch (e) {
      if (e.name !== "AbortError") out.replaceChildren(errorBox(e, "Loading the flamegraph"));
      return;
    }
    const svgUrl = (mode === "diff" ? "/skein/api/flamegraph/diff" : "/skein/api/flamegraph") + qs({ ...base, format: "svg" });
    const links = [h("button", { type: "button", class: "ghost", id: "open-svg", onclick: () => openApi(svgUrl, "image/svg+xml") }, "SVG")];
    if (g("trace")) {
      links.unshift(h("a", { class: "button ghost", id: "to-trace", href: `/trace/${encodeURIComponent(g("trace"))}${qs({ span: g("span_id") })}` }, "Back to the trace"));
    }
    if (svc && name && mode !== "diff") {
      const th = g("min_duration") || "";
      links.unshift(h("a", { class: "button ghost", id: "to-compare", href: `/compare${qs({ service: svc, span_name: name, threshold: th })}` }, "Compare slow vs normal"));
    }
    if (mode === "diff") {
      links.unshift(h("a", { class: "button ghost", href: `/compare${qs({ service: svc, span_name: name, threshold: g("threshold") })}` }, "Slow-vs-normal comparison"));
    }
    const unit = /nanoseconds/.test(data.profile_type || "") ? "ns" : "samples";
    let title;
    let tree;
    if (mode === "diff") {
      tree = diffTree(data.tree);
      title = [
        h("strong", {}, `${svc}: ${name}`), ` — calls ≥ ${g("threshold")} (slow, ${data.comparison.spans} spans) vs faster (normal, ${data.baseline.spans} spans)`,
        h("div", { class: "muted small" }, "Width: both together; colour: ",
          h("span", { class: "swatch grew" }), " more of the time when slow, ",
          h("span", { class: "swatch shrank" }), " less. Slow samples are scaled to the normal total."),
      ];
      if (!data.comparison.total || !data.baseline.total) {
        out.replaceChildren(emptyBox(h("strong", {}, `No samples for the ${!data.comparison.total ? "slow" : "normal"} calls`),
          h("p", {}, `${data.comparison.spans} slow and ${data.baseline.spans} normal spans matched in the window; a diff needs CPU samples on both sides. `,
            "Is span profiling on for this service (skein demo turns it on)? Try another threshold or a wider window.")));
        return;
      }
    } else {
      tree = plainTree(data.tree.root);
      const what = mode === "span" ? `span ${g("span_id")}${svc ? ` (${svc}: ${name})` : ""}`
        : mode === "slow" ? `${svc}: ${name} slower than ${g("min_duration")}` : `${svc}: ${name}`;
      title = [h("strong", {}, what), ` — ${data.spans} span${data.spans === 1 ? "" : "s"}, ${fmtVal(tree.value, unit)} ${unit === "ns" ? "CPU" : ""}`];
      if (!tree.value) {
        out.replaceChildren(emptyBox(h("strong", {}, "No CPU samples for this selection"),
          h("p", {}, data.spans ? `${data.spans} span${data.spans === 1 ? "" : "s"} matched but none was sampled. ` : "No spans matched in the window. ",
            "Span profiling must be on in the service (skein demo turns it on; sampling is at 99 Hz, so spans shorter than ~10 ms are often missed). ",
            "Try the operation's flamegraph or a wider window.")));
        return;
      }
    }
    graph = new Flame(tree, unit, mode === "diff");
    out.replaceChildren(
      h("div", { class: "card flame-card" },
        h("div", { class: "row between" }, h("div", { class: "flame-title" }, title), h("div", { class: "row" }, links)),
        graph.toolbar, graph.el));
    graph.draw();
  })();
  return () => {
    ctl.abort();
    if (graph) graph.destroy();
  };
}

function fmtVal(v, unit) {
  return unit === "ns" ? fmtDur(v) : `${Math.round(v)} samples`;
}

function plainTree(n, parent = null, depth = 0) {
  const node = { name: n.name, value: n.total, self: n.self, parent, depth, children: [] };
  node.children = (n.children || []).map((c) => plainTree(c, node, depth + 1)).sort((a, b) => b.value - a.value);
  return node;
}

function diffTree(n, parent = null, depth = 0) {
  const node = { name: n.name, b: n.baseline, c: n.comparison, value: n.baseline + n.comparison, parent, depth, children: [] };
  node.children = (n.children || []).map((c) => diffTree(c, node, depth + 1)).filter((c) => c.value > 0)
    .sort((a, b) => b.value - a.value);
  node.self = Math.max(0, node.value - node.children.reduce((s, c) => s + c.value, 0));
  return node;
}

function hashHue(s, lo, span) {
  let x = 2166136261;
  for (let i = 0; i < s.length; i++) x = Math.imul(x ^ s.charCodeAt(i), 16777619);
  return lo + ((x >>> 0) % span);
}

/** Warm colours, one per crate/module prefix so related frames look related. */
function frameColor(name) {
  const key = name.split("::")[0].split(/[ (<]/)[0];
  return `hsl(${hashHue(key, 8, 42)} 78% ${60 + (hashHue(name, 0, 10) - 5)}%)`;
}

function diffColor(n) {
  const d = (n.c - n.b) / Math.max(n.b, n.c, 1);
  const a = Math.min(1, Math.abs(d));
  if (a < 0.05) return "hsl(220 8% 82%)";
  return d > 0 ? `hsl(2 ${40 + a * 45}% ${84 - a * 30}%)` : `hsl(212 ${40 + a * 45}% ${84 - a * 30}%)`;
}

class Flame {
  constructor(root, unit, diff) {
    this.root = root;
    this.zoom = root;
    this.unit = unit;
    this.diff = diff;
    this.needle = null;
    let depth = 0;
    const stack = [root];
    while (stack.length) {
      const n = stack.pop();
      depth = Math.max(depth, n.depth);
      for (const c of n.children) stack.push(c);
    }
    this.maxDepth = depth;
    // The common trunk: frames every sample passes through (thread start, runtime, …) fold
    // into one row so the interesting part is in view.
    let k = 0;
    let end = root;
    for (; end.children.length === 1 && end.children[0].value === end.value; end = end.children[0]) k++;
    // A single chain (one stack) keeps its last frames in view.
    if (!end.children.length) k -= 8;
    this.trunk = k >= 3 ? k : 0;
    this.folded = this.trunk > 0;
    this.canvas = h("div", { class: "fg-frames" });
    this.tip = h("div", { class: "fg-tip", hidden: true, role: "tooltip" });
    this.el = h("div", { class: "fg", tabindex: "0", "aria-label": "flamegraph; click a frame to zoom, Escape to reset" }, this.canvas, this.tip);
    this.search = h("input", { type: "search", placeholder: "highlight frames (text or /regex/)", "aria-label": "search frames", "data-focus-key": "", size: 30 });
    this.searchInfo = h("span", { class: "muted small" });
    this.reset = h("button", { type: "button", class: "ghost", disabled: true, onclick: () => this.setZoom(this.root) }, "Reset zoom");
    this.crumb = h("span", { class: "muted small crumb" });
    this.foldBox = h("input", { type: "checkbox", checked: this.folded });
    this.foldBox.addEventListener("change", () => { this.folded = this.foldBox.checked; this.draw(); });
    this.toolbar = h("div", { class: "row toolbar" }, this.search, this.searchInfo, this.reset,
      this.trunk ? h("label", { class: "inline", title: "frames that every sample passes through" }, this.foldBox, ` fold the common trunk (${this.trunk - 1} frames)`) : null,
      this.crumb);
    this.search.addEventListener("input", () => this.setNeedle(this.search.value));
    this.canvas.addEventListener("click", (ev) => {
      const f = ev.target.closest(".fg-frame");
      if (!f) return;
      if (f.dataset.k === "trunk") {
        this.folded = false;
        this.foldBox.checked = false;
        this.draw();
      } else this.setZoom(this.nodes[Number(f.dataset.k)]);
    });
    this.canvas.addEventListener("mousemove", (ev) => this.hover(ev));
    this.canvas.addEventListener("mouseleave", () => { this.tip.hidden = true; });
    this.el.addEventListener("keydown", (ev) => {
      if (ev.key === "Escape") this.setZoom(this.root);
    });
    this.onResize = () => this.draw();
    window.addEventListener("resize", this.onResize);
  }

  destroy() {
    window.removeEventListener("resize", this.onResize);
  }

  setZoom(n) {
    this.zoom = n;
    this.reset.disabled = n === this.root;
    const path = [];
    for (let p = n; p && p !== this.root; p = p.parent) path.unshift(p.name);
    const tail = path.slice(-3).map(short).join(" › ");
    this.crumb.textContent = path.length ? `zoomed: ${path.length > 3 ? "… › " : ""}${tail}` : "";
    this.crumb.title = path.join("\n");
    this.draw();
  }

  setNeedle(text) {
    text = text.trim();
    this.needle = null;
    if (text) {
      const m = /^\/(.+)\/$/.exec(text);
      try {
        this.needle = m ? new RegExp(m[1], "i") : { test: (s) => s.toLowerCase().includes(text.toLowerCase()) };
      } catch {
        this.needle = null;
      }
    }
    this.draw();
  }

  /** Total of the top-most frames matching the search (nested matches counted once). */
  matchedShare() {
    let sum = 0;
    const stack = [this.zoom];
    while (stack.length) {
      const n = stack.pop();
      if (this.needle.test(n.name)) sum += n.value;
      else for (const c of n.children) stack.push(c);
    }
    return sum / (this.zoom.value || 1);
  }

  draw() {
    const width = this.canvas.clientWidth || 1000;
    const z = this.zoom;
    const scale = width / (z.value || 1);
    this.nodes = [];
    const frag = document.createDocumentFragment();
    const fold = this.folded ? this.trunk - 2 : 0;
    const row = (n) => (fold && n.depth >= this.trunk ? n.depth - fold : n.depth);
    const hidden = (n) => fold && n.depth >= 1 && n.depth < this.trunk;
    if (fold) {
      const el = h("div", {
        class: "fg-frame trunk", dataset: { k: "trunk" }, title: "click to unfold",
        style: { left: "0px", width: `${width - 1}px`, top: `${ROW}px` },
      }, `⋯ ${this.trunk - 1} frames every sample passes through (click to unfold)`);
      frag.append(el);
    }
    const add = (n, x, w, dim) => {
      if (hidden(n)) return;
      const k = this.nodes.push(n) - 1;
      const hit = this.needle && this.needle.test(n.name);
      const cls = ["fg-frame"];
      if (dim) cls.push("ancestor");
      if (this.needle) cls.push(hit ? "hit" : "miss");
      const el = h("div", {
        class: cls.join(" "), dataset: { k: String(k) },
        style: {
          left: `${x}px`, width: `${Math.max(w - 1, 0.5)}px`, top: `${row(n) * ROW}px`,
          background: this.diff ? diffColor(n) : n === this.root ? "hsl(220 10% 80%)" : frameColor(n.name),
        },
      });
      if (w > 28) el.textContent = n.name;
      frag.append(el);
    };
    // Ancestors of the zoomed frame span the whole width.
    for (let p = z.parent; p; p = p.parent) add(p, 0, width, true);
    const stack = [[z, 0]];
    while (stack.length) {
      const [n, x] = stack.pop();
      const w = n.value * scale;
      if (w < MIN_PX) continue;
      add(n, x, w, false);
      let cx = x;
      for (const c of n.children) {
        const cw = c.value * scale;
        if (cx >= x + w) break;
        stack.push([c, cx]);
        cx += cw;
      }
    }
    this.canvas.style.height = `${(this.maxDepth - fold + 1) * ROW}px`;
    this.canvas.replaceChildren(frag);
    this.canvas.dataset.frames = String(this.nodes.length);
    this.searchInfo.textContent = this.needle ? `matches ${fmtPct(this.matchedShare())} of ${this.zoom === this.root ? "all" : "the zoomed"} samples` : "";
  }

  hover(ev) {
    const f = ev.target.closest(".fg-frame");
    if (!f || f.dataset.k === "trunk") {
      this.tip.hidden = true;
      return;
    }
    const n = this.nodes[Number(f.dataset.k)];
    const total = this.root.value || 1;
    const rows = [h("strong", {}, n.name)];
    if (this.diff) {
      const bt = this.root.b || 1;
      const ct = this.root.c || 1;
      rows.push(h("div", {}, `normal calls: ${fmtPct(n.b / bt)} of their samples`),
        h("div", {}, `slow calls: ${fmtPct(n.c / ct)} of their samples`),
        h("div", { class: n.c > n.b ? "err" : "" }, `change: ${n.c >= n.b ? "+" : ""}${fmtPct((n.c - n.b) / bt)} points`));
    } else {
      rows.push(h("div", {}, `total: ${fmtVal(n.value, this.unit)} (${fmtPct(n.value / total)})`),
        h("div", {}, `self: ${fmtVal(n.self, this.unit)} (${fmtPct(n.self / total)})`));
      if (this.zoom !== this.root) rows.push(h("div", { class: "muted" }, `${fmtPct(n.value / (this.zoom.value || 1))} of the zoomed frame`));
    }
    this.tip.replaceChildren(...rows);
    this.tip.hidden = false;
    const box = this.el.getBoundingClientRect();
    const x = ev.clientX - box.left + 14;
    const y = ev.clientY - box.top + 14;
    this.tip.style.left = `${Math.min(x, box.width - 340)}px`;
    this.tip.style.top = `${y}px`;
  }
}

function short(name) {
  return name.length > 40 ? name.slice(0, 38) + "…" : name;
}

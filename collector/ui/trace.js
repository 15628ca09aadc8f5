// Trace view (`/trace/{id}`): a virtualised waterfall of the whole call chain (only the rows
// in view are in the DOM, so traces of tens of thousands of spans stay responsive), services
// coloured, collapsible subtrees, error markers, the critical path, and a span detail panel.

import {
  h, api, errorBox, emptyBox, loading, fmtDur, fmtTime, colorFor, durParam, qs, kv, setUrl, openApi,
} from "./util.js";

const ROW = 24;
const OVERSCAN = 12;
const INDENT = 14;
const MAX_INDENT_LEVELS = 40;
const KINDS = ["unspecified", "internal", "server", "client", "producer", "consumer"];
const STATUS = ["unset", "ok", "error"];

export function render(main, params, traceId) {
  const ctl = new AbortController();
  const page = h("div", { class: "page trace-page" }, loading(`Loading trace ${traceId}`));
  main.append(page);
  let view = null;
  (async () => {
    let body;
    try {
      body = await api(`/api/traces/${encodeURIComponent(traceId)}`, {}, { signal: ctl.signal });
    } catch (e) {
      if (e.name === "AbortError") return;
      page.replaceChildren(e.status === 404
        ? emptyBox(h("strong", {}, "Trace not found"), h("p", {}, "No spans of trace ", h("code", {}, traceId),
          " are stored (for this tenant). It may be outside the retention, or not flushed by its senders yet."))
        : errorBox(e, "Loading the trace"));
      return;
    }
    const t = buildTrace(body);
    if (!t.spans.length) {
      page.replaceChildren(emptyBox(h("strong", {}, "This trace has no spans")));
      return;
    }
    view = new TraceView(page, t, traceId, params);
    loadCriticalPath(traceId, ctl.signal).then((cp) => view && view.setCriticalPath(cp));
  })();
  return {
    destroy() {
      ctl.abort();
      if (view) view.destroy();
    },
    update(p) {
      if (!view) return false;
      view.select(p.get("span"), { scroll: true, url: false });
      return true;
    },
  };
}

async function loadCriticalPath(traceId, signal) {
  try {
    return await api(`/skein/api/critical-path/${encodeURIComponent(traceId)}`, {}, { signal });
  } catch (e) {
    return { error: e };
  }
}

// ---- model -----------------------------------------------------------------------------------

/** Ids as lower-case hex (strict protojson writes them in base64). */
function hexId(v, len) {
  if (!v) return "";
  if (new RegExp(`^[0-9a-fA-F]{${len}}$`).test(v)) return v.toLowerCase();
  try {
    return [...atob(v)].map((c) => c.charCodeAt(0).toString(16).padStart(2, "0")).join("");
  } catch {
    return String(v);
  }
}

export function anyValue(v) {
  if (!v || typeof v !== "object") return v === undefined ? "" : String(v);
  if ("stringValue" in v) return v.stringValue;
  if ("intValue" in v) return String(v.intValue);
  if ("doubleValue" in v) return String(v.doubleValue);
  if ("boolValue" in v) return String(v.boolValue);
  if ("arrayValue" in v) return `[${(v.arrayValue.values || []).map(anyValue).join(", ")}]`;
  if ("kvlistValue" in v) return `{${(v.kvlistValue.values || []).map((x) => `${x.key}: ${anyValue(x.value)}`).join(", ")}}`;
  if ("bytesValue" in v) return `bytes ${v.bytesValue}`;
  return "";
}

function attrs(list) {
  return (list || []).map((a) => [a.key, anyValue(a.value)]);
}

function enumIndex(v, names, prefix) {
  if (typeof v === "number") return v;
  if (typeof v === "string") {
    const i = names.indexOf(v.replace(prefix, "").toLowerCase());
    return i < 0 ? 0 : i;
  }
  return 0;
}

/** Spans with relative times (ns from the trace's first start), tree links and layout. */
export function buildTrace(body) {
  const batches = body.batches || (body.trace && body.trace.resourceSpans) || body.resourceSpans || [];
  const raw = [];
  let t0 = null;
  for (const rs of batches) {
    const resource = attrs(rs.resource && rs.resource.attributes);
    const service = (resource.find(([k]) => k === "service.name") || [])[1] || "unknown service";
    const rkey = JSON.stringify(resource);
    for (const ss of rs.scopeSpans || rs.instrumentationLibrarySpans || []) {
      const scope = ss.scope || ss.instrumentationLibrary || {};
      for (const s of ss.spans || []) {
        const st = BigInt(s.startTimeUnixNano || 0);
        const en = BigInt(s.endTimeUnixNano || s.startTimeUnixNano || 0);
        if (t0 === null || st < t0) t0 = st;
        raw.push({ s, st, en, service, resource, rkey, scope });
      }
    }
  }
  const spans = raw.map(({ s, st, en, service, resource, rkey, scope }, i) => {
    const start = Number(st - t0);
    const end = Math.max(start, Number(en - t0));
    const status = s.status || {};
    return {
      i,
      id: hexId(s.spanId, 16),
      parentId: hexId(s.parentSpanId, 16),
      name: s.name || "<unnamed>",
      service,
      start,
      end,
      dur: end - start,
      kind: enumIndex(s.kind, KINDS, "SPAN_KIND_"),
      status: enumIndex(status.code, STATUS, "STATUS_CODE_"),
      statusMessage: status.message || "",
      attrs: s.attributes || [],
      events: s.events || [],
      links: s.links || [],
      resource,
      rkey,
      scope,
      children: [],
      parent: null,
      depth: 0,
      ds: start,
      de: end,
      skew: 0,
      errorsBelow: 0,
      startAbs: st,
    };
  });
  const byId = new Map();
  for (const s of spans) if (s.id && !byId.has(s.id)) byId.set(s.id, s);
  const roots = [];
  for (const s of spans) {
    const p = s.parentId ? byId.get(s.parentId) : null;
    if (p && p !== s) {
      s.parent = p;
      p.children.push(s);
    } else {
      s.orphan = !!s.parentId;
      roots.push(s);
    }
  }
  const byStart = (a, b) => a.start - b.start || a.end - b.end;
  for (const s of spans) if (s.children.length > 1) s.children.sort(byStart);
  roots.sort((a, b) => (a.orphan - b.orphan) || byStart(a, b));
  // Depth-first layout; spans caught in a parent cycle are unreachable from the roots and
  // become roots themselves.
  const seen = new Uint8Array(spans.length);
  const order = [];
  const visit = (r) => {
    const stack = [r];
    while (stack.length) {
      const s = stack.pop();
      if (seen[s.i]) continue;
      seen[s.i] = 1;
      order.push(s);
      const p = s.parent;
      if (p && seen[p.i] && p !== s) {
        s.depth = p.depth + 1;
        // A child moves with its parent; across processes (where clocks differ) its bar is
        // also kept inside the parent's.
        let ds = s.start + p.skew;
        let de = s.end + p.skew;
        if (p.rkey !== s.rkey) {
          if (ds < p.ds) { de += p.ds - ds; ds = p.ds; }
          if (de > p.de) { ds = Math.max(p.ds, ds - (de - p.de)); de = p.de; }
        }
        s.skew = ds - s.start;
        s.ds = ds;
        s.de = Math.max(ds, de);
      }
      for (let k = s.children.length - 1; k >= 0; k--) if (!seen[s.children[k].i]) stack.push(s.children[k]);
    }
  };
  for (const r of roots) visit(r);
  for (const s of spans) {
    if (!seen[s.i]) {
      if (s.parent) s.parent.children = s.parent.children.filter((c) => c !== s);
      s.parent = null;
      s.cycle = true;
      roots.push(s);
      visit(s);
    }
  }
  for (let k = order.length - 1; k >= 0; k--) {
    const s = order[k];
    if (s.parent) s.parent.errorsBelow += s.errorsBelow + (s.status === 2 ? 1 : 0);
  }
  let lo = Infinity;
  let hi = -Infinity;
  for (const s of spans) {
    lo = Math.min(lo, s.ds);
    hi = Math.max(hi, s.de);
  }
  const services = [...new Set(order.map((s) => s.service))];
  return { spans, roots, order, byId, t0, lo, hi: Math.max(hi, lo + 1), services };
}

// ---- view -----------------------------------------------------------------------------------

class TraceView {
  constructor(page, t, traceId, params) {
    this.t = t;
    this.traceId = traceId;
    this.collapsed = new Set();
    this.selected = null;
    this.cp = new Map();
    this.cpOn = true;
    this.find = "";
    this.raf = 0;
    this.page = page;
    this.build();
    this.recompute();
    this.select(params.get("span"), { scroll: true, url: false });
    this.draw();
  }

  destroy() {
    cancelAnimationFrame(this.raf);
    window.removeEventListener("resize", this.onResize);
  }

  build() {
    const t = this.t;
    const root = t.roots[0];
    const errors = t.spans.filter((s) => s.status === 2).length;
    const traceDur = t.hi - t.lo;
    this.cpNote = h("span", { class: "muted small cp-note" }, "critical path: loading…");
    this.cpToggle = h("input", { type: "checkbox", checked: true, id: "cp-toggle" });
    this.cpToggle.addEventListener("change", () => { this.cpOn = this.cpToggle.checked; this.draw(); });
    this.findInput = h("input", { type: "search", placeholder: "find span or service", "aria-label": "find spans", "data-focus-key": "", size: 22 });
    this.findCount = h("span", { class: "muted small" });
    this.findInput.addEventListener("input", () => this.setFind(this.findInput.value));
    this.findInput.addEventListener("keydown", (ev) => {
      if (ev.key === "Enter") {
        ev.preventDefault();
        this.nextMatch(ev.shiftKey ? -1 : 1);
      }
    });
    document.title = `${root.service}: ${root.name} · skein`;
    const header = h("div", { class: "trace-header card" },
      h("div", { class: "row between" },
        h("h1", {},
          h("span", { class: "svc-dot big", style: { background: colorFor(root.service) } }),
          h("span", { class: "root-svc" }, root.service), " ", h("span", { class: "root-name" }, root.name)),
        h("div", { class: "row" },
          h("button", { type: "button", class: "ghost", id: "open-json", onclick: () => openApi(`/api/traces/${this.traceId}`, "application/json") }, "JSON"))),
      h("div", { class: "row stats" },
        stat("Trace ID", h("code", { class: "trace-id" }, this.traceId)),
        stat("Start", fmtTime(Number(t.t0 / 1000000n))),
        stat("Duration", fmtDur(traceDur)),
        stat("Spans", String(t.spans.length)),
        stat("Services", String(t.services.length)),
        stat("Errors", errors ? h("span", { class: "err" }, `${errors} ⚠`) : "0")),
      h("div", { class: "row legend" }, t.services.map((s) =>
        h("span", { class: "chip", style: { borderColor: colorFor(s) } },
          h("span", { class: "svc-dot", style: { background: colorFor(s) } }), s))),
      h("div", { class: "row toolbar" },
        this.findInput, this.findCount,
        h("button", { type: "button", class: "ghost", onclick: () => this.expandAll() }, "Expand all"),
        h("button", { type: "button", class: "ghost", onclick: () => this.collapseTo(1) }, "Collapse per service"),
        h("label", { class: "inline" }, this.cpToggle, " highlight critical path"), this.cpNote));

    this.axis = h("div", { class: "wf-axis" });
    this.spacer = h("div", { class: "wf-spacer" });
    this.scroll = h("div", { class: "wf-scroll", tabindex: "0", role: "tree", "aria-label": "spans of the trace" }, this.spacer);
    this.scroll.addEventListener("scroll", () => this.schedule());
    this.scroll.addEventListener("keydown", (ev) => this.onKey(ev));
    this.spacer.addEventListener("click", (ev) => this.onClick(ev));
    this.detail = h("aside", { class: "detail card", hidden: true, "aria-label": "span details" });
    const wf = h("div", { class: "waterfall card" },
      h("div", { class: "wf-head" }, h("div", { class: "wf-name-head" }, "Service & operation"), this.axis),
      this.scroll);
    this.body = h("div", { class: "trace-body" }, wf, this.detail);
    this.page.replaceChildren(header, this.body);
    for (let k = 0; k <= 4; k++) {
      this.axis.append(h("span", { class: "tick", style: { left: `${k * 25}%` } }, fmtDur((traceDur * k) / 4)));
    }
    this.onResize = () => this.schedule();
    window.addEventListener("resize", this.onResize);
  }

  recompute() {
    const rows = [];
    const stack = [...this.t.roots].reverse();
    while (stack.length) {
      const s = stack.pop();
      rows.push(s);
      if (!this.collapsed.has(s) && s.children.length) {
        for (let k = s.children.length - 1; k >= 0; k--) stack.push(s.children[k]);
      }
    }
    this.rows = rows;
    this.rowIndex = new Map(rows.map((s, i) => [s, i]));
    this.spacer.style.height = `${rows.length * ROW}px`;
  }

  schedule() {
    if (this.raf) return;
    this.raf = requestAnimationFrame(() => {
      this.raf = 0;
      this.draw();
    });
  }

  draw() {
    const { lo, hi } = this.t;
    const span = hi - lo;
    const top = this.scroll.scrollTop;
    const height = this.scroll.clientHeight || 600;
    const first = Math.max(0, Math.floor(top / ROW) - OVERSCAN);
    const last = Math.min(this.rows.length, Math.ceil((top + height) / ROW) + OVERSCAN);
    const frag = document.createDocumentFragment();
    const needle = this.find;
    for (let i = first; i < last; i++) {
      const s = this.rows[i];
      const left = ((s.ds - lo) / span) * 100;
      const width = Math.max(((s.de - s.ds) / span) * 100, 0.15);
      const err = s.status === 2;
      const collapsed = this.collapsed.has(s);
      const color = colorFor(s.service);
      const cls = ["wf-row"];
      if (s === this.selected) cls.push("selected");
      if (err) cls.push("error");
      if (needle && matches(s, needle)) cls.push("match");
      if (this.cpOn && this.cp.has(s.id)) cls.push("on-cp");
      const indent = Math.min(s.depth, MAX_INDENT_LEVELS) * INDENT;
      const toggle = s.children.length
        ? h("button", { type: "button", class: "tg", tabindex: "-1", "aria-label": collapsed ? "expand" : "collapse", dataset: { act: "toggle" } },
          collapsed ? "▸" : "▾")
        : h("span", { class: "tg leaf" });
      const bar = h("div", {
        class: "wf-bar", style: { left: `${left}%`, width: `${width}%`, background: err ? "" : color },
      });
      const segs = this.cpOn ? this.cp.get(s.id) : null;
      const cpEls = segs ? segs.map(([a, b]) => h("div", {
        class: "wf-cp",
        style: { left: `${((a - lo) / span) * 100}%`, width: `${Math.max(((b - a) / span) * 100, 0.1)}%` },
      })) : [];
      // Duration label after the bar; inside it when the bar reaches the right edge.
      const inside = left + width > 80 && width > 12;
      const label = h("span", {
        class: `wf-label ${inside ? "inside" : ""}`,
        style: inside ? { right: `${100 - left - width}%` } : left + width > 80 ? { right: `${100 - left}%` } : { left: `${left + width}%` },
      }, fmtDur(s.dur), s.skew ? " ⇆" : "");
      frag.append(h("div", {
        class: cls.join(" "), style: { top: `${i * ROW}px` }, dataset: { i: String(i) },
        role: "treeitem", "aria-level": String(s.depth + 1), "aria-selected": s === this.selected ? "true" : "false",
        "aria-expanded": s.children.length ? String(!collapsed) : undefined,
      },
      h("div", { class: "wf-name", style: { paddingLeft: `${indent + 4}px` }, title: `${s.service}: ${s.name}` },
        toggle,
        h("span", { class: "svc-dot", style: { background: color } }),
        h("span", { class: "svc" }, s.service),
        h("span", { class: "op" }, s.name),
        err ? h("span", { class: "err-mark", title: `error${s.statusMessage ? ": " + s.statusMessage : ""}` }, "!") : null,
        collapsed && s.errorsBelow ? h("span", { class: "err-below", title: `${s.errorsBelow} error span(s) in this subtree` }, `${s.errorsBelow}⚠`) : null,
        collapsed ? h("span", { class: "hidden-count muted" }, `+${countBelow(s)}`) : null),
      h("div", { class: "wf-time" }, bar, cpEls, label)));
    }
    this.spacer.replaceChildren(frag);
  }

  onClick(ev) {
    const row = ev.target.closest(".wf-row");
    if (!row) return;
    const s = this.rows[Number(row.dataset.i)];
    if (ev.target.closest("[data-act=toggle]")) {
      this.toggle(s);
      return;
    }
    this.select(s.id, { url: true });
    this.scroll.focus({ preventScroll: true });
  }

  onKey(ev) {
    const i = this.selected ? this.rowIndex.get(this.selected) : -1;
    const go = (j) => {
      j = Math.max(0, Math.min(this.rows.length - 1, j));
      this.select(this.rows[j].id, { url: true, scroll: true });
    };
    switch (ev.key) {
      case "ArrowDown": go(i + 1); break;
      case "ArrowUp": go(i < 0 ? 0 : i - 1); break;
      case "PageDown": go(i + Math.floor(this.scroll.clientHeight / ROW)); break;
      case "PageUp": go(i - Math.floor(this.scroll.clientHeight / ROW)); break;
      case "Home": go(0); break;
      case "End": go(this.rows.length - 1); break;
      case "ArrowLeft":
        if (!this.selected) return;
        if (this.selected.children.length && !this.collapsed.has(this.selected)) this.toggle(this.selected);
        else if (this.selected.parent) this.select(this.selected.parent.id, { url: true, scroll: true });
        break;
      case "ArrowRight":
      case "Enter":
        if (this.selected && this.collapsed.has(this.selected)) this.toggle(this.selected);
        break;
      case "Escape": this.select(null, { url: true }); break;
      default: return;
    }
    ev.preventDefault();
  }

  toggle(s) {
    if (this.collapsed.has(s)) this.collapsed.delete(s); else this.collapsed.add(s);
    this.recompute();
    this.draw();
  }

  expandAll() {
    this.collapsed.clear();
    this.recompute();
    this.draw();
  }

  /** Collapses every span whose parent is in another service (keeps each service's entry). */
  collapseTo() {
    this.collapsed.clear();
    for (const s of this.t.spans) {
      if (s.children.length && s.children.some((c) => c.service !== s.service)) this.collapsed.add(s);
    }
    for (const r of this.t.roots) this.collapsed.delete(r);
    this.recompute();
    this.draw();
  }

  reveal(s) {
    let changed = false;
    for (let p = s.parent; p; p = p.parent) if (this.collapsed.delete(p)) changed = true;
    if (changed) this.recompute();
  }

  scrollTo(s) {
    const i = this.rowIndex.get(s);
    if (i === undefined) return;
    const top = i * ROW;
    const h0 = this.scroll.clientHeight;
    if (top < this.scroll.scrollTop || top + ROW > this.scroll.scrollTop + h0) {
      this.scroll.scrollTop = Math.max(0, top - h0 / 3);
    }
  }

  select(spanId, { scroll = false, url = false } = {}) {
    const s = spanId ? this.t.byId.get(String(spanId).toLowerCase()) : null;
    this.selected = s || null;
    if (s) {
      this.reveal(s);
      if (scroll) this.scrollTo(s);
    }
    if (url) {
      const p = new URLSearchParams(location.search);
      if (s) p.set("span", s.id); else p.delete("span");
      const q = p.toString();
      setUrl(location.pathname + (q ? "?" + q : ""));
    }
    this.showDetail();
    this.draw();
  }

  setFind(text) {
    this.find = text.trim().toLowerCase();
    this.matches = this.find ? this.t.order.filter((s) => matches(s, this.find)) : [];
    this.matchAt = -1;
    this.findCount.textContent = this.find ? `${this.matches.length} match${this.matches.length === 1 ? "" : "es"}` : "";
    this.draw();
  }

  nextMatch(dir) {
    if (!this.matches || !this.matches.length) return;
    this.matchAt = (this.matchAt + dir + this.matches.length) % this.matches.length;
    this.select(this.matches[this.matchAt].id, { url: true, scroll: true });
  }

  setCriticalPath(cp) {
    if (!cp || cp.error) {
      const e = cp && cp.error;
      this.cpNote.textContent = `critical path unavailable: ${e ? e.message : "no answer"}`;
      this.cpNote.classList.add("err");
      this.cpToggle.disabled = true;
      return;
    }
    const base = this.t.t0;
    const rel = (v) => (typeof v === "string" ? Number(BigInt(v) - base) : v - Number(base));
    this.cp = new Map();
    this.cpSelf = new Map();
    for (const seg of cp.spans || []) {
      const id = String(seg.span_id).toLowerCase();
      const s = this.t.byId.get(id);
      let a = rel(seg.start_ns);
      let b = rel(seg.end_ns);
      if (s && s.skew) {
        a += s.skew;
        b += s.skew;
      }
      if (!this.cp.has(id)) this.cp.set(id, []);
      this.cp.get(id).push([a, Math.max(a, b)]);
      this.cpSelf.set(id, (this.cpSelf.get(id) || 0) + (seg.self_ns || 0));
    }
    this.cpNote.textContent = `critical path: ${this.cp.size} span${this.cp.size === 1 ? "" : "s"}`;
    this.draw();
    if (this.selected && this.cpSelf.has(this.selected.id)) this.showDetail();
  }

  showDetail() {
    const s = this.selected;
    this.body.classList.toggle("with-detail", !!s);
    if (!s) {
      this.detail.hidden = true;
      this.detail.replaceChildren();
      return;
    }
    this.detail.hidden = false;
    const t = this.t;
    const startSec = Number(s.startAbs / 1000000000n);
    const win = { start: startSec - 60, end: startSec + Math.ceil(s.dur / 1e9) + 60 };
    const op = { service: s.service, span_name: s.name };
    const cpSelf = this.cpSelf && this.cpSelf.get(s.id);
    const events = s.events.map((e) => {
      const at = e.timeUnixNano ? Number(BigInt(e.timeUnixNano) - t.t0) - s.start : null;
      return h("li", {}, h("span", { class: "mono muted" }, at === null ? "" : `+${fmtDur(at)} `),
        h("strong", {}, e.name || "event"), attrs(e.attributes).length ? kv(attrs(e.attributes)) : null);
    });
    const links = s.links.map((l) => {
      const tid = hexId(l.traceId, 32);
      const sid = hexId(l.spanId, 16);
      return h("li", {}, h("a", { href: `/trace/${tid}${qs({ span: sid })}` }, `${tid.slice(0, 16)}… / ${sid}`),
        attrs(l.attributes).length ? kv(attrs(l.attributes)) : null);
    });
    const section = (title, content, empty) => h("section", {},
      h("h3", {}, title), content && (!Array.isArray(content) || content.length) ? content : h("p", { class: "muted small" }, empty));
    this.detail.replaceChildren(
      h("div", { class: "row between detail-head" },
        h("h2", {}, h("span", { class: "svc-dot", style: { background: colorFor(s.service) } }), s.name),
        h("button", { type: "button", class: "ghost icon", "aria-label": "close details", title: "close (Esc)", onclick: () => this.select(null, { url: true }) }, "×")),
      h("div", { class: "actions" },
        h("a", { class: "button", id: "span-flamegraph", href: `/flamegraph${qs({ span_id: s.id, ...op, ...win, trace: this.traceId })}` }, "Flamegraph of this span"),
        h("a", { class: "button ghost", id: "op-flamegraph", href: `/flamegraph${qs(op)}` }, "Flamegraph of this operation"),
        h("a", { class: "button ghost", id: "span-compare", href: `/compare${qs({ ...op, threshold: durParam(s.dur) })}` }, "Compare slow vs normal"),
        h("a", { class: "button ghost", href: `/${qs({ service: s.service, operation: s.name })}` }, "Search this operation")),
      kv([
        ["Service", s.service],
        ["Duration", fmtDur(s.dur)],
        ["Start", `+${fmtDur(s.start)} into the trace`],
        ["Kind", KINDS[s.kind] || String(s.kind)],
        ["Status", s.status === 2
          ? h("span", { class: "err" }, `error${s.statusMessage ? ": " + s.statusMessage : ""}`)
          : `${STATUS[s.status] || s.status}${s.statusMessage ? ": " + s.statusMessage : ""}`],
        ["Span ID", h("code", {}, s.id)],
        ["Parent", s.parent ? h("button", { type: "button", class: "linklike mono", onclick: () => this.select(s.parent.id, { url: true, scroll: true }) }, s.parent.id)
          : s.parentId ? h("span", { class: "muted" }, `${s.parentId} (not in this trace)`) : "root"],
        ["Children", String(s.children.length)],
        cpSelf !== undefined ? ["Critical path", `${fmtDur(cpSelf)} of this span's own time is on it`] : null,
        s.skew ? ["Clock skew", `drawn ${fmtDur(Math.abs(s.skew))} ${s.skew > 0 ? "later" : "earlier"} to fit inside its parent`] : null,
        ["Scope", [s.scope.name, s.scope.version].filter(Boolean).join(" ") || "–"],
      ].filter(Boolean)),
      section("Attributes", attrs(s.attrs).length ? kv(attrs(s.attrs).sort(([a], [b]) => a.localeCompare(b))) : null, "no attributes"),
      section(`Events (${events.length})`, events.length ? h("ul", { class: "events" }, events) : null, "no events"),
      section(`Links (${links.length})`, links.length ? h("ul", { class: "links" }, links) : null, "no links"),
      section("Resource", s.resource.length ? kv(s.resource) : null, "no resource attributes"));
  }
}

function stat(label, value) {
  return h("div", { class: "stat" }, h("div", { class: "muted small" }, label), h("div", {}, value));
}

function matches(s, needle) {
  return s.name.toLowerCase().includes(needle) || s.service.toLowerCase().includes(needle) || s.id === needle;
}

function countBelow(s) {
  let n = 0;
  const stack = [...s.children];
  while (stack.length) {
    const c = stack.pop();
    n++;
    for (const x of c.children) stack.push(x);
  }
  return n;
}

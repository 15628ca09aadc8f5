// Search page (`/`): a form that builds a TraceQL query (or takes one typed in), results with
// duration bars, span and error counts, sortable columns. The URL mirrors the form.

import {
  h, api, qs, errorBox, emptyBox, loading, fmtDur, fmtTime, fmtAgo, colorFor, parseDur,
  rangeControl, resolveRange, navigate, tagSelect, fillTagSelect, tqlString, serviceFilter,
} from "./util.js";

const OPS = ["=", "!=", "=~", "!~", ">", ">=", "<", "<="];
const STATUSES = [["", "any status"], ["error", "error"], ["ok", "ok"], ["unset", "unset"]];
const SORTS = { start: "Start", duration: "Duration", spans: "Spans", errors: "Errors" };

/** An attribute name as TraceQL wants it: scoped names stay, others get the `.` (any) scope. */
function attrName(k) {
  k = k.trim();
  if (/^(resource|span)\./.test(k) || k.startsWith(".")) return k;
  if (/^(name|status|kind|duration|statusMessage|rootName|rootServiceName|traceDuration)$/.test(k)) return k;
  return "." + k;
}

/** A literal: numbers, booleans, durations and bare status/kind words as they are; strings quoted. */
function literal(op, v) {
  v = v.trim();
  if (op === "=~" || op === "!~") return tqlString(v);
  if (/^-?\d+(\.\d+)?$/.test(v) || /^(true|false)$/.test(v) || parseDur(v) !== null) return v;
  if (/^".*"$/.test(v)) return v;
  return tqlString(v);
}

/** The TraceQL query the form fields describe. */
export function buildQuery(f) {
  const parts = [];
  if (f.service) parts.push(`resource.service.name = ${tqlString(f.service)}`);
  if (f.op) parts.push(`name = ${tqlString(f.op)}`);
  for (const a of f.attrs) {
    if (!a.key.trim()) continue;
    parts.push(`${attrName(a.key)} ${a.op} ${literal(a.op, a.value)}`);
  }
  if (f.min) parts.push(`duration >= ${f.min.trim()}`);
  if (f.max) parts.push(`duration <= ${f.max.trim()}`);
  if (f.status) parts.push(`status = ${f.status}`);
  return parts.length ? `{ ${parts.join(" && ")} }` : "{}";
}

function readParams(p) {
  return {
    service: p.get("service") || "",
    op: p.get("operation") || "",
    q: p.get("q") || "",
    attrs: p.getAll("attr").map((s) => {
      const [key = "", op = "=", ...rest] = s.split("|");
      return { key, op: OPS.includes(op) ? op : "=", value: rest.join("|") };
    }),
    min: p.get("min") || "",
    max: p.get("max") || "",
    status: p.get("status") || "",
    limit: p.get("limit") || "",
    sort: p.get("sort") || "",
  };
}

export function render(main, params) {
  const f = readParams(params);
  const ctl = new AbortController();

  const service = tagSelect("service", "resource.service.name", {
    selected: f.service, any: "all services", label: "service",
    onchange: () => reloadOps(),
  });
  const op = tagSelect("operation", "name", {
    selected: f.op, any: "all operations", label: "operation", q: serviceFilter(f.service),
  });
  const reloadOps = () => {
    op.value = "";
    fillTagSelect(op, "name", serviceFilter(service.value), "");
  };
  const q = h("textarea", {
    name: "q", rows: 1, spellcheck: "false", "data-focus-key": "",
    placeholder: "TraceQL, e.g. { resource.service.name = \"gateway\" && duration > 300ms }  (empty: built from the fields)",
    "aria-label": "TraceQL query",
  });
  q.value = f.q;
  q.addEventListener("keydown", (ev) => {
    if (ev.key === "Enter" && !ev.shiftKey) {
      ev.preventDefault();
      form.requestSubmit();
    }
  });
  // Attribute names for the filter rows' suggestions.
  const names = h("datalist", { id: "attr-names" });
  api("/api/v2/search/tags", {}, { signal: ctl.signal }).then((r) => {
    for (const sc of r.scopes || []) {
      if (sc.name !== "span" && sc.name !== "resource") continue;
      for (const t of sc.tags || []) names.append(h("option", { value: `${sc.name}.${t}` }));
    }
  }).catch(() => { /* suggestions only */ });
  const attrRows = h("div", { class: "attr-rows" }, names);
  const addAttr = (a = { key: "", op: "=", value: "" }) => {
    const row = h("div", { class: "attr-row" },
      h("input", { name: "attr-key", placeholder: "attribute, e.g. http.route", value: a.key, "aria-label": "attribute name", spellcheck: "false", list: "attr-names" }),
      h("select", { name: "attr-op", "aria-label": "operator" }, OPS.map((o) => h("option", { value: o, selected: o === a.op }, o))),
      h("input", { name: "attr-value", placeholder: "value", value: a.value, "aria-label": "attribute value", spellcheck: "false" }),
      h("button", { type: "button", class: "ghost icon", title: "remove this filter", "aria-label": "remove filter", onclick: () => row.remove() }, "×"));
    attrRows.append(row);
    return row;
  };
  f.attrs.forEach((a) => addAttr(a));
  const min = h("input", { name: "min", placeholder: "e.g. 100ms", value: f.min, size: 8, "aria-label": "minimum span duration" });
  const max = h("input", { name: "max", placeholder: "e.g. 2s", value: f.max, size: 8, "aria-label": "maximum span duration" });
  const status = h("select", { name: "status", "aria-label": "status" },
    STATUSES.map(([v, l]) => h("option", { value: v, selected: v === f.status }, l)));
  const range = rangeControl(params, "1h");
  const limit = h("select", { name: "limit", "aria-label": "result limit" },
    ["20", "50", "100", "500"].map((n) => h("option", { value: n, selected: n === (f.limit || "50") }, `${n} traces`)));
  const preview = h("code", { class: "preview" });
  const readForm = () => ({
    service: service.value,
    op: op.value,
    q: q.value.trim(),
    attrs: [...attrRows.querySelectorAll(".attr-row")].map((r) => ({
      key: r.querySelector("[name=attr-key]").value,
      op: r.querySelector("[name=attr-op]").value,
      value: r.querySelector("[name=attr-value]").value,
    })).filter((a) => a.key.trim()),
    min: min.value.trim(),
    max: max.value.trim(),
    status: status.value,
  });
  const updatePreview = () => {
    const cur = readForm();
    preview.textContent = cur.q ? "using the TraceQL above" : buildQuery(cur);
  };
  const form = h("form", { class: "search-form card", role: "search" },
    h("div", { class: "row" },
      h("label", {}, "Service", service),
      h("label", {}, "Operation", op),
      h("label", {}, "Status", status),
      h("label", {}, "Span duration ≥", min),
      h("label", {}, "≤", max),
      h("label", {}, "Time", range.el),
      h("label", {}, "Limit", limit)),
    h("div", { class: "row" }, h("label", { class: "grow" }, "TraceQL", q)),
    attrRows,
    h("div", { class: "row between" },
      h("div", { class: "row" },
        h("button", { type: "button", class: "ghost", onclick: () => addAttr().querySelector("input").focus() }, "+ attribute filter"),
        h("span", { class: "muted small" }, "query: ", preview)),
      h("button", { type: "submit", id: "search-submit" }, "Search")));
  form.addEventListener("input", updatePreview);
  form.addEventListener("change", updatePreview);
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const cur = readForm();
    const r = range.read();
    const url = "/" + qs({
      service: cur.service, operation: cur.op, q: cur.q,
      attr: cur.attrs.map((a) => `${a.key}|${a.op}|${a.value}`),
      min: cur.min, max: cur.max, status: cur.status,
      range: r.range, start: r.start, end: r.end,
      limit: limit.value === "50" ? "" : limit.value, sort: f.sort,
    });
    if (url === location.pathname + location.search) run(); else navigate(url);
  });
  updatePreview();

  const results = h("section", { class: "results", "aria-live": "polite" });
  main.append(h("div", { class: "page" }, form, results));

  let traces = [];
  let sort = f.sort || "start:desc";
  const run = async () => {
    results.replaceChildren(loading("Searching"));
    const [start, end] = resolveRange(params, "1h");
    const query = f.q || buildQuery(f);
    try {
      const r = await api("/api/search", { q: query, limit: f.limit || 50, spss: 3, start, end }, { signal: ctl.signal });
      traces = (r.traces || []).map(row);
      draw(query);
    } catch (e) {
      if (e.name === "AbortError") return;
      results.replaceChildren(errorBox(e, "Search"));
    }
  };

  const draw = (query) => {
    const filtered = query.replace(/\s/g, "") !== "{}";
    if (!traces.length) {
      results.replaceChildren(emptyBox(
        h("strong", {}, "No traces in this window"),
        h("p", {}, "Query ", h("code", {}, query), ". Widen the time range or loosen the filters — or is anything sending to skein? ",
          "OTLP goes to :4317 (gRPC) or :4318 (HTTP); ", h("code", {}, "skein demo"), " starts a shop that does.")));
      return;
    }
    const [key, dir] = sort.split(":");
    const sign = dir === "asc" ? 1 : -1;
    const sorted = [...traces].sort((a, b) => sign * (a[key] - b[key]));
    const maxDur = Math.max(...traces.map((t) => t.duration), 1);
    const head = h("tr", {},
      h("th", { scope: "col" }, "Trace"),
      h("th", { scope: "col" }, "Services"),
      filtered ? h("th", { scope: "col" }, "Matched spans") : null,
      Object.entries(SORTS).map(([k, label]) => {
        const active = k === key;
        return h("th", { scope: "col", class: `sortable ${k === "start" ? "" : "num"}`, dataset: { sort: k }, "aria-sort": active ? (dir === "asc" ? "ascending" : "descending") : "none" },
          h("button", { type: "button", class: "linklike", onclick: () => setSort(k, active && dir === "desc" ? "asc" : "desc") },
            label, active ? (dir === "asc" ? " ▲" : " ▼") : ""));
      }));
    const body = sorted.map((t) => h("tr", { class: t.errors ? "has-error" : "" },
      h("td", { class: "trace-name" },
        h("a", { href: `/trace/${t.id}`, class: "trace-link" },
          h("span", { class: "svc-dot", style: { background: colorFor(t.rootService) } }),
          h("strong", {}, t.rootService), " ", t.rootName),
        h("div", { class: "muted small mono" }, t.id)),
      h("td", { class: "svc-list" }, t.services.map((s) => h("span", { class: "chip", style: { borderColor: colorFor(s) } }, s))),
      filtered ? h("td", { class: "matched" }, t.matched.slice(0, 2).map((m) =>
        h("div", {}, h("a", { href: `/trace/${t.id}${qs({ span: m.spanID })}`, class: "span-link", title: `open the trace at span ${m.spanID}` },
          m.name || m.spanID), " ", h("span", { class: "muted" }, fmtDur(Number(m.durationNanos || 0))))),
        t.matchedCount > 2 ? h("div", { class: "muted small" }, `+${t.matchedCount - 2} more`) : null) : null,
      h("td", { title: new Date(t.start).toISOString() }, fmtTime(t.start), h("div", { class: "muted small" }, fmtAgo(t.start))),
      h("td", { class: "num dur-cell" },
        h("div", { class: "dur" },
          h("span", { class: "dur-track" }, h("span", { class: "dur-bar", style: { width: `${Math.max(1, (t.duration / maxDur) * 100)}%` } })),
          h("span", { class: "dur-val" }, t.duration ? fmtDur(t.duration) : "<1 ms"))),
      h("td", { class: "num" }, t.spans || "–"),
      h("td", { class: `num ${t.errors ? "err" : "muted"}` }, t.errors ? `${t.errors} ⚠` : "0")));
    results.replaceChildren(
      h("div", { class: "muted small result-count" }, `${traces.length} trace${traces.length === 1 ? "" : "s"} · `, h("code", {}, query)),
      h("table", { class: "grid traces" }, h("thead", {}, head), h("tbody", {}, body)));
  };

  const setSort = (k, dir) => {
    sort = `${k}:${dir}`;
    const p = new URLSearchParams(location.search);
    if (sort === "start:desc") p.delete("sort"); else p.set("sort", sort);
    const s = p.toString();
    history.replaceState(null, "", "/" + (s ? "?" + s : ""));
    f.sort = sort;
    draw(f.q || buildQuery(f));
    const btn = results.querySelector(`th[aria-sort]:not([aria-sort=none]) button`);
    if (btn) btn.focus();
  };

  run();
  return () => ctl.abort();
}

function row(t) {
  const stats = t.serviceStats || {};
  const services = Object.keys(stats).sort();
  let spans = 0;
  let errors = 0;
  for (const s of Object.values(stats)) {
    spans += s.spanCount || 0;
    errors += s.errorCount || 0;
  }
  if (t.rootServiceName && !services.includes(t.rootServiceName)) services.unshift(t.rootServiceName);
  const set = t.spanSet || (t.spanSets || [])[0] || {};
  return {
    matched: [...(set.spans || [])].sort((x, y) => Number(y.durationNanos || 0) - Number(x.durationNanos || 0)),
    matchedCount: set.matched || (set.spans || []).length,
    id: t.traceID,
    rootService: t.rootServiceName || "<root span not yet received>",
    rootName: t.rootTraceName || "",
    start: Number(BigInt(t.startTimeUnixNano || "0") / 1000000n),
    duration: (t.durationMs || 0) * 1e6,
    spans,
    errors,
    services,
  };
}

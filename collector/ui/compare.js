// Slow-vs-normal comparison (`/compare?service&span_name&threshold`): which attributes, child
// operations and services differ between an operation's slow calls and its normal ones,
// ranked by score, with example traces and a link to the diff flamegraph.

import {
  h, api, qs, errorBox, emptyBox, loading, fmtDur, rangeControl, resolveRange, navigate,
  tagSelect, fillTagSelect, serviceFilter, shareBars, colorFor,
} from "./util.js";

export function render(main, params) {
  const ctl = new AbortController();
  const g = (k) => params.get(k) || "";
  const service = tagSelect("service", "resource.service.name", {
    selected: g("service"), any: "choose a service", label: "service",
    onchange: () => fillTagSelect(op, "name", serviceFilter(service.value), ""),
  });
  const op = tagSelect("span_name", "name", {
    selected: g("span_name"), any: "choose an operation", label: "operation", q: serviceFilter(g("service")),
  });
  const threshold = h("input", { name: "threshold", value: g("threshold"), placeholder: "e.g. 250ms (empty: p90)", size: 14, "aria-label": "threshold", "data-focus-key": "" });
  const range = rangeControl(params, "1h");
  const form = h("form", { class: "card row" },
    h("label", {}, "Service", service),
    h("label", {}, "Operation", op),
    h("label", {}, "Slow = at least", threshold),
    h("label", {}, "Time", range.el),
    h("button", { type: "submit" }, "Compare"));
  form.addEventListener("submit", (ev) => {
    ev.preventDefault();
    const r = range.read();
    navigate("/compare" + qs({
      service: service.value, span_name: op.value, threshold: threshold.value.trim(),
      range: r.range, start: r.start, end: r.end,
    }));
  });
  const out = h("section", { class: "compare-out" });
  main.append(h("div", { class: "page" }, form, out));

  if (!g("service") || !g("span_name")) {
    out.replaceChildren(emptyBox(h("strong", {}, "Choose an operation to compare"),
      h("p", {}, "The comparison splits one operation's calls into slow (at least the threshold) and normal, ",
        "and ranks the attributes, child operations and services by how much more often they appear in slow calls. ",
        "From a trace, a span's “Compare slow vs normal” link fills this in.")));
    return () => ctl.abort();
  }

  (async () => {
    out.replaceChildren(loading("Comparing slow and normal calls"));
    const hasRange = params.get("range") || params.get("start");
    const [start, end] = hasRange ? resolveRange(params, "1h") : [undefined, undefined];
    let r;
    try {
      r = await api("/skein/api/compare", { service: g("service"), span_name: g("span_name"), threshold: g("threshold"), start, end }, { signal: ctl.signal });
    } catch (e) {
      if (e.name !== "AbortError") out.replaceChildren(errorBox(e, "The comparison"));
      return;
    }
    out.replaceChildren(...view(r, params));
  })();
  return () => ctl.abort();
}

function view(r, params) {
  const svc = r.service || params.get("service");
  const name = r.span_name || params.get("span_name");
  const th = r.threshold_ns;
  const slow = r.slow || {};
  const normal = r.normal || {};
  const thParam = params.get("threshold") || (th ? `${Math.max(1, Math.round(th / 1e6))}ms` : "");
  const range = {};
  for (const k of ["range", "start", "end"]) if (params.get(k)) range[k] = params.get(k);
  const summary = h("div", { class: "card compare-summary" },
    h("div", { class: "row between" },
      h("h1", {}, h("span", { class: "svc-dot big", style: { background: colorFor(svc) } }), `${svc}: `, h("span", { class: "root-name" }, name)),
      h("div", { class: "row" },
        h("a", { class: "button", id: "to-diff", href: `/flamegraph${qs({ mode: "diff", service: svc, span_name: name, threshold: thParam, ...range })}` }, "Diff flamegraph"),
        h("a", { class: "button ghost", href: `/flamegraph${qs({ mode: "slow", service: svc, span_name: name, min_duration: thParam, ...range })}` }, "Flamegraph of slow calls"),
        h("a", { class: "button ghost", href: `/${qs({ service: svc, operation: name, min: thParam })}` }, "Search slow calls"))),
    h("div", { class: "row stats" },
      statBlock("Threshold", th ? fmtDur(th) : "–"),
      statBlock("Slow calls", `${slow.count ?? 0}`, `p50 ${fmtDur(slow.p50_ns)} · p99 ${fmtDur(slow.p99_ns)}`, "slow"),
      statBlock("Normal calls", `${normal.count ?? 0}`, `p50 ${fmtDur(normal.p50_ns)} · p99 ${fmtDur(normal.p99_ns)}`, "normal")),
    h("div", { class: "muted small" }, "Share = fraction of slow (red) and normal (blue) calls with the attribute, child operation or service. ",
      "Score ranks how much of the slowness it explains."));

  if (!slow.count || !normal.count) {
    return [summary, emptyBox(h("strong", {}, !slow.count && !normal.count ? "No calls of this operation in the window"
      : !slow.count ? "No slow calls: none reached the threshold" : "No normal calls: every call reached the threshold"),
    h("p", {}, "A comparison needs calls on both sides. Try another threshold or a wider time range."))];
  }
  const traceLinks = (ids) => (ids || []).slice(0, 3).map((id, i) =>
    h("a", { class: "mono small ex", href: `/trace/${id}`, title: id }, i ? ` ${id.slice(0, 8)}` : id.slice(0, 8)));
  const maxScore = (list) => Math.max(1e-9, ...list.map((x) => Math.abs(x.score || 0)));
  const scoreCell = (v, max) => h("td", { class: "num score" }, h("div", { class: "score-wrap" },
    h("span", { class: "score-track" }, h("span", { class: "score-bar", style: { width: `${(Math.abs(v || 0) / max) * 100}%` } })),
    h("span", { class: "score-val" }, (v || 0).toFixed(2))));

  const attrs = r.attributes || [];
  const am = maxScore(attrs);
  const attrTable = table("Attributes", ["Attribute", "Share of calls", "Score", "Examples"], attrs.map((a) =>
    h("tr", {},
      h("td", { class: "mono" }, h("span", { class: "attr-key" }, a.key), " = ", h("span", { class: "attr-val" }, String(a.value))),
      h("td", {}, shareBars(a.slow_share, a.normal_share)),
      scoreCell(a.score, am),
      h("td", {}, traceLinks(a.example_trace_ids)))), "no attribute differs between slow and normal calls", "cmp-attributes");

  const kids = r.children || [];
  const km = maxScore(kids);
  const childTable = table("Child operations", ["Operation", "Share of calls", "Mean slow / normal", "Score", "Examples"], kids.map((c) =>
    h("tr", {},
      h("td", { class: "svc-cell" }, h("span", { class: "svc-dot", style: { background: colorFor(c.service) } }), " ", h("strong", {}, c.service), " ", c.span_name),
      h("td", {}, shareBars(c.slow_share, c.normal_share)),
      h("td", { class: "num" }, h("span", { class: "err" }, fmtDur(c.slow_mean_ns)), " / ", fmtDur(c.normal_mean_ns)),
      scoreCell(c.score, km),
      h("td", {}, traceLinks(c.example_trace_ids)))), "no child operations", "cmp-children");

  const svcs = r.services || [];
  const sm = maxScore(svcs);
  const svcTable = table("Services", ["Service", "Share of calls", "Mean slow / normal", "Score"], svcs.map((s) =>
    h("tr", {},
      h("td", { class: "svc-cell" }, h("span", { class: "svc-dot", style: { background: colorFor(s.service) } }), " ", s.service),
      h("td", {}, shareBars(s.slow_share, s.normal_share)),
      h("td", { class: "num" }, h("span", { class: "err" }, fmtDur(s.slow_mean_ns)), " / ", fmtDur(s.normal_mean_ns)),
      scoreCell(s.score, sm))), "no downstream services", "cmp-services");

  const ex = r.examples || {};
  const exList = (title, list, cls) => h("div", { class: `examples ${cls}` }, h("h3", {}, title),
    (list || []).length ? h("ul", {}, list.map((e) => h("li", {},
      h("a", { class: "mono", href: `/trace/${e.trace_id}${qs({ span: e.span_id })}` }, e.trace_id),
      " ", h("span", { class: "muted" }, fmtDur(e.duration_ns)))))
      : h("p", { class: "muted small" }, "none"));
  const examples = h("div", { class: "card" }, h("h2", {}, "Example traces"),
    h("div", { class: "two-col" }, exList("Slow", ex.slow, "slow"), exList("Normal", ex.normal, "normal")));

  return [summary, attrTable, childTable, svcTable, examples];
}

function statBlock(label, value, sub, cls) {
  return h("div", { class: `stat ${cls || ""}` }, h("div", { class: "muted small" }, label),
    h("div", { class: "big-num" }, value), sub ? h("div", { class: "muted small" }, sub) : null);
}

function table(title, cols, rows, empty, id) {
  return h("div", { class: "card", id },
    h("h2", {}, title, h("span", { class: "muted small" }, ` ${rows.length} ranked`)),
    rows.length
      ? h("table", { class: "grid ranked" },
        h("thead", {}, h("tr", {}, cols.map((c, i) => h("th", { scope: "col", class: i && c !== "Share of calls" && c !== "Examples" ? "num" : "" }, c)))),
        h("tbody", {}, rows))
      : h("p", { class: "muted small" }, empty));
}

// Shared helpers: DOM building, API calls (with the tenant header and the session's token),
// formatting, colours, time ranges and in-app navigation.

/** Creates an element: h("a", {href: "/x", class: "y", onclick: f}, "text", child, [more]). */
export function h(tag, attrs, ...children) {
  const el = tag === "svg" || SVG_TAGS.has(tag)
    ? document.createElementNS("http://www.w3.org/2000/svg", tag)
    : document.createElement(tag);
  for (const [k, v] of Object.entries(attrs || {})) {
    if (v === undefined || v === null || v === false) continue;
    if (k.startsWith("on") && typeof v === "function") el.addEventListener(k.slice(2), v);
    else if (k === "style" && typeof v === "object") Object.assign(el.style, v);
    else if (k === "dataset") Object.assign(el.dataset, v);
    else if (k === "value" && "value" in el && !(el instanceof SVGElement)) el.value = v;
    else el.setAttribute(k, v === true ? "" : String(v));
  }
  append(el, children);
  return el;
}

const SVG_TAGS = new Set(["g", "path", "rect", "circle", "line", "polyline", "text", "title",
  "defs", "marker", "tspan"]);

function append(el, children) {
  for (const c of children) {
    if (c === undefined || c === null || c === false) continue;
    if (Array.isArray(c)) append(el, c);
    else el.append(c instanceof Node ? c : String(c));
  }
}

export class ApiError extends Error {
  constructor(message, status, path) {
    super(message);
    this.status = status;
    this.path = path;
  }
}

const TENANT_KEY = "skein.tenant";
export function getTenant() {
  try { return localStorage.getItem(TENANT_KEY) || ""; } catch { return ""; }
}
export function setTenant(t) {
  try {
    if (t) localStorage.setItem(TENANT_KEY, t); else localStorage.removeItem(TENANT_KEY);
  } catch { /* storage unavailable: the setting lasts for this page only */ }
}

// The token of a collector started with --auth-file: asked for on the first 401, kept in
// sessionStorage (this tab, until it closes; never localStorage, never a URL) and sent as
// `Authorization: Bearer`.
const TOKEN_KEY = "skein.token";
let pageToken = "";
export function getToken() {
  try { return sessionStorage.getItem(TOKEN_KEY) || ""; } catch { return pageToken; }
}
export function setToken(t) {
  pageToken = t || "";
  try {
    if (t) sessionStorage.setItem(TOKEN_KEY, t); else sessionStorage.removeItem(TOKEN_KEY);
  } catch { /* storage unavailable: the token lasts for this page only */ }
  window.dispatchEvent(new Event("skein:token"));
}

/** Request headers: `extra`, the tenant and the token when set. */
export function authHeaders(extra) {
  const headers = { ...(extra || {}) };
  const tenant = getTenant();
  if (tenant) headers["X-Scope-OrgID"] = tenant;
  const token = getToken();
  if (token) headers.Authorization = `Bearer ${token}`;
  return headers;
}

let signIn = null;
/**
 * Shows the sign-in dialog with `message`; resolves true once a token is saved, false when the
 * user cancels. Requests refused at the same time share one dialog.
 */
export function askToken(message) {
  if (signIn) return signIn;
  const dlg = document.getElementById("signin");
  const input = document.getElementById("token-input");
  if (!dlg || !input) return Promise.resolve(false);
  document.getElementById("signin-msg").textContent = message;
  input.value = "";
  signIn = new Promise((resolve) => {
    dlg.addEventListener("close", () => {
      signIn = null;
      const token = input.value.trim();
      input.value = "";
      if (dlg.returnValue === "save" && token) {
        setToken(token);
        resolve(true);
      } else {
        resolve(false);
      }
    }, { once: true });
  });
  dlg.showModal();
  input.focus();
  return signIn;
}

/** fetch() with the tenant and token; a 401 asks for a token and retries with it. */
export async function authFetch(url, { headers, signal } = {}) {
  for (;;) {
    const resp = await fetch(url, { headers: authHeaders(headers), signal });
    if (resp.status !== 401) return resp;
    const text = await resp.text();
    const why = text.trim() || "authentication required";
    const message = getToken()
      ? `The token was not accepted (${why}). Enter another one.`
      : `This skein needs a token (${why}).`;
    if (!(await askToken(message))) {
      return new Response(text, { status: 401, statusText: resp.statusText, headers: resp.headers });
    }
  }
}

/**
 * Opens an API answer (an SVG flame graph, a trace's JSON) in a new tab. Fetched with the
 * headers and shown from a blob: URL, so the token never appears in an address.
 */
export async function openApi(url, accept) {
  const win = window.open("about:blank", "_blank");
  try {
    const resp = await authFetch(url, { headers: { Accept: accept } });
    if (!resp.ok) throw new Error(`${resp.status}: ${(await resp.text()).trim()}`);
    const blob = await resp.blob();
    const blobUrl = URL.createObjectURL(blob);
    if (win) win.location.href = blobUrl; else window.open(blobUrl, "_blank");
    setTimeout(() => URL.revokeObjectURL(blobUrl), 60_000);
  } catch (e) {
    if (win) win.close();
    window.alert(`Opening ${url} failed: ${e.message}`);
  }
}

/** Query string from an object, skipping empty values; arrays repeat the key. */
export function qs(params) {
  const u = new URLSearchParams();
  for (const [k, v] of Object.entries(params || {})) {
    if (v === undefined || v === null || v === "") continue;
    if (Array.isArray(v)) v.forEach((x) => u.append(k, x)); else u.append(k, v);
  }
  const s = u.toString();
  return s ? "?" + s : "";
}

/**
 * GET an API path (JSON). Sends X-Scope-OrgID when a tenant is set and the token when there is
 * one (asking for it on a 401). Throws ApiError with the server's message: `{"error": …}`,
 * Prometheus' `{"status":"error","error":…}`, or plain text (a 403 says which tenant or role).
 */
export async function api(path, params, { signal, accept = "application/json" } = {}) {
  const url = path + qs(params);
  let resp;
  try {
    resp = await authFetch(url, { headers: { Accept: accept }, signal });
  } catch (e) {
    if (e.name === "AbortError") throw e;
    throw new ApiError(`cannot reach skein (${e.message})`, 0, path);
  }
  const text = await resp.text();
  let body = null;
  try { body = text ? JSON.parse(text) : null; } catch { body = null; }
  if (!resp.ok || (body && body.status === "error")) {
    let msg = (body && (body.error || body.message)) || text.trim() || resp.statusText;
    if (resp.status === 404 && !body && /^(Not Found)?$/i.test(text.trim())) {
      msg = `${path} is not available on this skein (404)`;
    }
    throw new ApiError(String(msg), resp.status, path);
  }
  if (body === null && text) throw new ApiError(`${path}: the response is not JSON`, resp.status, path);
  return body;
}

/** A box with an API error (or any error) for the user. */
export function errorBox(err, what) {
  const status = err && err.status ? ` (HTTP ${err.status})` : "";
  return h("div", { class: "notice error", role: "alert" },
    h("strong", {}, what ? `${what} failed${status}: ` : `Error${status}: `),
    h("span", { class: "msg" }, err && err.message ? err.message : String(err)));
}

export function emptyBox(...content) {
  return h("div", { class: "notice empty" }, ...content);
}

export function loading(what = "Loading") {
  return h("div", { class: "loading muted" }, h("span", { class: "spinner" }), ` ${what}…`);
}

/** Nanoseconds as a short human duration. */
export function fmtDur(ns) {
  if (ns === undefined || ns === null || Number.isNaN(ns)) return "–";
  const a = Math.abs(ns);
  if (a >= 60e9) {
    const m = Math.floor(a / 60e9);
    return `${ns < 0 ? "-" : ""}${m}m ${((a - m * 60e9) / 1e9).toFixed(0)}s`;
  }
  if (a >= 1e9) return `${trim(ns / 1e9)} s`;
  if (a >= 1e6) return `${trim(ns / 1e6)} ms`;
  if (a >= 1e3) return `${trim(ns / 1e3)} µs`;
  return `${Math.round(ns)} ns`;
}
function trim(x) {
  const a = Math.abs(x);
  return a >= 100 ? x.toFixed(0) : a >= 10 ? x.toFixed(1) : x.toFixed(2);
}

/** Nanoseconds as a duration TraceQL and the native APIs parse: integer with a unit. */
export function durParam(ns) {
  ns = Math.max(1, Math.round(ns));
  if (ns >= 1e6) return `${Math.max(1, Math.floor(ns / 1e6))}ms`;
  if (ns >= 1e3) return `${Math.floor(ns / 1e3)}us`;
  return `${ns}ns`;
}

const UNIT_NS = { ns: 1, us: 1e3, "µs": 1e3, ms: 1e6, s: 1e9, m: 60e9, h: 3600e9 };
/** "250ms", "1.5s", "2m" → nanoseconds; null when it does not parse. */
export function parseDur(s) {
  const m = /^\s*(\d+(?:\.\d+)?)\s*(ns|us|µs|ms|s|m|h)\s*$/.exec(s || "");
  return m ? Number(m[1]) * UNIT_NS[m[2]] : null;
}

export function fmtRate(perSec) {
  if (perSec === undefined || perSec === null || Number.isNaN(perSec)) return "–";
  if (perSec === 0) return "0/s";
  if (perSec >= 100) return `${perSec.toFixed(0)}/s`;
  if (perSec >= 1) return `${perSec.toFixed(1)}/s`;
  if (perSec >= 1 / 60) return `${(perSec * 60).toFixed(1)}/min`;
  return `${(perSec * 3600).toFixed(1)}/h`;
}

export function fmtPct(x, digits = 1) {
  if (x === undefined || x === null || Number.isNaN(x)) return "–";
  const p = x * 100;
  if (p > 0 && p < 0.1) return "<0.1%";
  return `${p.toFixed(p >= 10 || p === 0 ? 0 : digits)}%`;
}

export function fmtTime(ms) {
  const d = new Date(ms);
  const today = new Date();
  const time = d.toLocaleTimeString(undefined, { hour12: false });
  return d.toDateString() === today.toDateString() ? time : `${d.toLocaleDateString()} ${time}`;
}

export function fmtAgo(ms) {
  const s = (Date.now() - ms) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))}s ago`;
  if (s < 3600) return `${Math.round(s / 60)}m ago`;
  if (s < 86400) return `${Math.round(s / 3600)}h ago`;
  return `${Math.round(s / 86400)}d ago`;
}

/** A stable colour per service (or any name); no reds, which mark errors. */
const PALETTE = ["#3b6fd4", "#2a9d8f", "#8e5cc9", "#e08a1e", "#4aa35a", "#c2579a", "#1f8fbf",
  "#b8900f", "#5c6b80", "#a0522d", "#6f9a1d", "#7f6fe0"];
const colorCache = new Map();
export function colorFor(name) {
  let c = colorCache.get(name);
  if (c) return c;
  let x = 2166136261;
  for (let i = 0; i < name.length; i++) x = Math.imul(x ^ name.charCodeAt(i), 16777619);
  c = PALETTE[(x >>> 0) % PALETTE.length];
  colorCache.set(name, c);
  return c;
}

// ---- time ranges ---------------------------------------------------------------------------

export const RANGES = [["15m", 900], ["1h", 3600], ["6h", 21600], ["24h", 86400]];

/** [start, end] unix seconds of the URL's range: start/end, else range=15m|1h|…, else `dflt`. */
export function resolveRange(params, dflt = "1h") {
  const start = Number(params.get("start"));
  const end = Number(params.get("end"));
  if (params.get("range") === "custom" || (!params.get("range") && start > 0)) {
    const e = end > 0 ? end : Math.floor(Date.now() / 1000);
    return [start > 0 ? start : e - 3600, e];
  }
  const key = params.get("range") || dflt;
  const secs = (RANGES.find(([k]) => k === key) || RANGES.find(([k]) => k === dflt))[1];
  const now = Math.floor(Date.now() / 1000);
  return [now - secs, now + 1];
}

function toLocalInput(secs) {
  const d = new Date(secs * 1000);
  const p = (n) => String(n).padStart(2, "0");
  return `${d.getFullYear()}-${p(d.getMonth() + 1)}-${p(d.getDate())}T${p(d.getHours())}:${p(d.getMinutes())}`;
}

/**
 * Time range controls: a select (last 15m/1h/6h/24h/custom) and, for custom, two local
 * date-time inputs. `read()` gives the URL parameters ({range} or {range:"custom",start,end}).
 */
export function rangeControl(params, dflt = "1h") {
  const cur = params.get("range") || (params.get("start") ? "custom" : dflt);
  const [s, e] = resolveRange(params, dflt);
  const sel = h("select", { name: "range", "aria-label": "time range" },
    RANGES.map(([k]) => h("option", { value: k, selected: k === cur }, `last ${k}`)),
    h("option", { value: "custom", selected: cur === "custom" }, "custom…"));
  const from = h("input", { type: "datetime-local", name: "from", value: toLocalInput(s), "aria-label": "from" });
  const to = h("input", { type: "datetime-local", name: "to", value: toLocalInput(e), "aria-label": "to" });
  const custom = h("span", { class: "custom-range", hidden: cur !== "custom" }, from, " – ", to);
  sel.addEventListener("change", () => { custom.hidden = sel.value !== "custom"; });
  const el = h("span", { class: "range" }, sel, custom);
  return {
    el,
    read() {
      if (sel.value !== "custom") return { range: sel.value === dflt ? "" : sel.value };
      const a = Math.floor(new Date(from.value).getTime() / 1000);
      const b = Math.floor(new Date(to.value).getTime() / 1000);
      return { range: "custom", start: Number.isFinite(a) ? a : "", end: Number.isFinite(b) ? b : "" };
    },
  };
}

// ---- navigation ----------------------------------------------------------------------------

/** Goes to an in-app URL (pushState + render), or replaces the current entry. */
export function navigate(url, { replace = false } = {}) {
  const here = location.pathname + location.search;
  if (url === here && !replace) return;
  if (replace) history.replaceState(null, "", url); else history.pushState(null, "", url);
  window.dispatchEvent(new Event("skein:navigate"));
}

/** Updates the URL without re-rendering (for state a page already shows). */
export function setUrl(url, { push = false } = {}) {
  if (url === location.pathname + location.search) return;
  if (push) history.pushState(null, "", url); else history.replaceState(null, "", url);
}

/** A select of tag values (e.g. services), filled asynchronously; keeps `selected`. */
export function tagSelect(name, tag, { selected = "", any = "any", q, label, onchange } = {}) {
  const sel = h("select", { name, "aria-label": label || name, onchange },
    h("option", { value: "" }, any));
  if (selected) sel.append(h("option", { value: selected, selected: true }, selected));
  sel.ready = fillTagSelect(sel, tag, q, selected);
  return sel;
}

export async function fillTagSelect(sel, tag, q, selected = sel.value) {
  try {
    const r = await api(`/api/v2/search/tag/${encodeURIComponent(tag)}/values`, { q });
    const values = [...new Set((r.tagValues || []).map((v) => v.value))].sort();
    // A choice made while the values were loading wins.
    if (sel.value && sel.value !== selected && values.includes(sel.value)) selected = sel.value;
    sel.replaceChildren(sel.options[0] || h("option", { value: "" }, "any"));
    for (const v of values) sel.append(h("option", { value: v, selected: v === selected }, v));
    if (selected && !values.includes(selected)) {
      sel.append(h("option", { value: selected, selected: true }, selected));
    }
    sel.title = "";
  } catch (e) {
    sel.title = `cannot load values: ${e.message}`;
    sel.classList.add("invalid");
  }
}

/** TraceQL string literal. */
export function tqlString(s) {
  return `"${String(s).replace(/\\/g, "\\\\").replace(/"/g, '\\"')}"`;
}

/** TraceQL filter narrowing tag values to one service. */
export function serviceFilter(service) {
  return service ? `{ resource.service.name = ${tqlString(service)} }` : undefined;
}

/** Two share bars (slow over normal) with percentages. */
export function shareBars(slow, normal) {
  const bar = (cls, v, label) => h("div", { class: `share ${cls}`, title: `${label}: ${fmtPct(v)}` },
    h("span", { class: "fill", style: { width: `${Math.max(0, Math.min(1, v || 0)) * 100}%` } }),
    h("span", { class: "val" }, fmtPct(v)));
  return h("div", { class: "shares" }, bar("slow", slow, "slow calls"), bar("normal", normal, "normal calls"));
}

export function kv(rows) {
  return h("table", { class: "kv" }, h("tbody", {}, rows.map(([k, v]) =>
    h("tr", {}, h("th", { scope: "row" }, k), h("td", {}, v)))));
}

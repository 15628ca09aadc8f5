// The skein web UI shell: client-side routing (History API), the tenant setting and global
// keyboard shortcuts. Each page module exports `render(main, params, path) → cleanup?`.

import { getTenant, setTenant, getToken, setToken, navigate, h } from "./util.js";
import * as search from "./search.js";
import * as trace from "./trace.js";
import * as flame from "./flame.js";
import * as compare from "./compare.js";
import * as services from "./services.js";

const ROUTES = [
  [/^\/$/, search, "search", "Search"],
  [/^\/trace\/([^/]+)$/, trace, "", "Trace"],
  [/^\/flamegraph$/, flame, "flamegraph", "Flamegraph"],
  [/^\/compare$/, compare, "compare", "Slow vs normal"],
  [/^\/services$/, services, "services", "Services"],
];

const main = document.getElementById("main");
let cleanup = null;
let lastPath = null;

function route() {
  const path = location.pathname;
  const params = new URLSearchParams(location.search);
  const hit = ROUTES.map(([re, mod, nav, title]) => [re.exec(path), mod, nav, title]).find(([m]) => m);
  document.querySelectorAll("nav a[data-nav]").forEach((a) => {
    a.classList.toggle("active", !!hit && a.dataset.nav === hit[2]);
  });
  if (!hit) {
    runCleanup();
    main.replaceChildren(h("div", { class: "pad" }, h("h1", {}, "Not found"),
      h("p", {}, "No page at ", h("code", {}, path), ". ", h("a", { href: "/" }, "Search traces"), ".")));
    return;
  }
  const [m, mod, , title] = hit;
  // A page may handle query-string changes itself (e.g. the trace view selecting a span).
  if (path === lastPath && cleanup && cleanup.update && cleanup.update(params)) return;
  runCleanup();
  lastPath = path;
  document.title = `${title} · skein`;
  main.replaceChildren();
  main.scrollTop = 0;
  try {
    cleanup = mod.render(main, params, ...m.slice(1).map(decodeURIComponent)) || null;
  } catch (e) {
    console.error(e);
    main.replaceChildren(h("div", { class: "notice error pad" }, `This page failed to render: ${e.message}`));
  }
}

function runCleanup() {
  if (cleanup) {
    try { (typeof cleanup === "function" ? cleanup : cleanup.destroy || (() => {}))(); } catch { /* ignore */ }
  }
  cleanup = null;
}

// In-app links navigate without reloading.
document.addEventListener("click", (ev) => {
  if (ev.defaultPrevented || ev.button !== 0 || ev.metaKey || ev.ctrlKey || ev.shiftKey || ev.altKey) return;
  const a = ev.target.closest("a[href]");
  if (!a || a.target || a.hasAttribute("download")) return;
  const url = new URL(a.href, location.href);
  if (url.origin !== location.origin || url.pathname.startsWith("/api/") || url.pathname.startsWith("/skein/")
    || url.pathname.startsWith("/prometheus/") || url.pathname.startsWith("/ui/")) return;
  ev.preventDefault();
  navigate(url.pathname + url.search);
});

window.addEventListener("popstate", route);
window.addEventListener("skein:navigate", route);

// "/" focuses the page's main search field.
document.addEventListener("keydown", (ev) => {
  if (ev.key !== "/" || ev.ctrlKey || ev.metaKey || ev.altKey) return;
  const t = ev.target;
  if (t.closest && t.closest("input, textarea, select, [contenteditable]")) return;
  const f = document.querySelector("[data-focus-key]");
  if (f) {
    ev.preventDefault();
    f.focus();
    if (f.select) f.select();
  }
});

// Tenant setting.
const tenantButton = document.getElementById("tenant-button");
const dialog = document.getElementById("settings");
const tenantInput = document.getElementById("tenant-input");
function showTenant() {
  const t = getTenant();
  tenantButton.textContent = `tenant: ${t || "default"}`;
}
tenantButton.addEventListener("click", () => {
  tenantInput.value = getTenant();
  dialog.showModal();
  tenantInput.focus();
});
tenantInput.addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") {
    ev.preventDefault();
    dialog.close("save");
  }
});
dialog.addEventListener("close", () => {
  if (dialog.returnValue !== "save") return;
  setTenant(tenantInput.value.trim());
  showTenant();
  lastPath = null;
  route();
});
// Sign out: forget the token; the next refused request asks again.
const signoutButton = document.getElementById("signout-button");
function showSignedIn() {
  signoutButton.hidden = !getToken();
}
signoutButton.addEventListener("click", () => {
  setToken("");
  lastPath = null;
  route();
});
window.addEventListener("skein:token", () => {
  showSignedIn();
});
document.getElementById("token-input").addEventListener("keydown", (ev) => {
  if (ev.key === "Enter") {
    ev.preventDefault();
    document.getElementById("signin").close("save");
  }
});
showSignedIn();
// A link may name its tenant (alert annotations of tenants other than the default do): it
// becomes the tenant setting. The server still decides what requests as that tenant may see.
const linkedTenant = new URLSearchParams(location.search).get("tenant");
if (linkedTenant !== null) setTenant(linkedTenant.trim());
showTenant();
route();

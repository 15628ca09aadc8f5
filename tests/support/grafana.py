"""What Grafana does with skein's bundled dashboards and provisioning, in Python, for the tests:

- load `dashboards/*.json` and `grafana/provisioning/**` (datasources, dashboard provider, alert rules);
- Grafana's template-variable substitution (`$var`, `${var}`, `${var:format}`, `[[var]]`) with each
  datasource's own escaping of variable values (Prometheus regex escaping of multi/All variables,
  Tempo and Pyroscope as-is) and the built-ins `$__interval`, `$__rate_interval`, `$__range`
  (computed the way the Prometheus backend computes them), `$__from`/`$__to`, `${__url_time_range}`
  and data-link `${__data.fields.x}`;
- the HTTP requests each built-in datasource sends for a panel target (grafana/
  REQUESTS.md): Prometheus POST-form `query_range`/`query`/`query_exemplars` with start and
  end aligned down to the step; Tempo `/api/search` with q/limit/spss/start/end, `/api/metrics/
  query_range` and the serviceMap's Prometheus queries; Pyroscope Connect `SelectMergeStacktraces`
  / `SelectSeries` in binary protobuf.

Datasource URLs come from the provisioning file, with their host replaced by where the test runs
skein (or the self-monitoring Prometheus), so a wrong path in the provisioning fails the tests.
"""

from __future__ import annotations

import json
import math
import pathlib
import re
import time
import urllib.parse
from dataclasses import dataclass, field

import requests
import yaml

from .collector import Skein, free_port

REPO = pathlib.Path(__file__).resolve().parents[2]
DASHBOARDS = REPO / "dashboards"
PROVISIONING = REPO / "grafana" / "provisioning"
CONNECT_HEADERS = {
    "Content-Type": "application/proto",
    "Connect-Protocol-Version": "1",
    "Accept-Encoding": "gzip",
    "User-Agent": "connect-go/1.18.1 (go1.24.4)",
}
# Grafana's built-in variables (and the data-link / panel scoped ones) that need no definition.
BUILTIN_VARS = {
    "__interval", "__interval_ms", "__rate_interval", "__rate_interval_ms", "__range", "__range_s",
    "__range_ms", "__from", "__to", "__url_time_range", "__data", "__value", "__series", "__field",
    "__all", "__dashboard", "__org", "__user", "__timezone", "__tags", "__span", "__trace", "__name",
}
# templateSrv's variable regex: $var, [[var]] / [[var:fmt]], ${var}, ${var.path}, ${var:fmt}
VARIABLE_RE = re.compile(r"\$(\w+)|\[\[(\w+?)(?::(\w+))?\]\]|\$\{(\w+)(?:\.([^:^\}]+))?(?::([^\}]+))?\}")


# ---- files --------------------------------------------------------------------------------
def dashboard_files() -> list[pathlib.Path]:
    return sorted(DASHBOARDS.glob("*.json"))


def load_dashboards() -> dict[str, dict]:
    """uid -> dashboard JSON."""
    out = {}
    for f in dashboard_files():
        d = json.loads(f.read_text())
        d["__file"] = f.name
        out[d["uid"]] = d
    return out


def load_yaml(path: pathlib.Path):
    return yaml.safe_load(path.read_text())


def provisioned_datasources() -> dict[str, dict]:
    """uid -> datasource entry of every grafana/provisioning/datasources/*.yaml."""
    out = {}
    for f in sorted((PROVISIONING / "datasources").glob("*.y*ml")):
        for ds in load_yaml(f).get("datasources", []):
            out[ds["uid"]] = ds
    return out


def alert_rule_files() -> list[pathlib.Path]:
    return sorted((PROVISIONING / "alerting").glob("*.y*ml"))


def panels(dashboard: dict):
    """Every panel, including those nested in collapsed rows."""
    for p in dashboard.get("panels", []):
        yield p
        yield from p.get("panels", []) or []


def variables_used(text: str) -> set[str]:
    out = set()
    for m in VARIABLE_RE.finditer(text):
        name = m.group(1) or m.group(2) or m.group(4)
        out.add(name)
    return out


def strings_in(obj):
    if isinstance(obj, str):
        yield obj
    elif isinstance(obj, dict):
        for k, v in obj.items():
            if k == "__file":
                continue
            yield from strings_in(v)
    elif isinstance(obj, list):
        for v in obj:
            yield from strings_in(v)


# ---- time and intervals (grafana-plugin-sdk-go gtime / promlib) ---------------------------------
_ROUND = [  # (upper bound ms, rounded ms) — gtime roundInterval
    (10, 1), (15, 10), (35, 20), (75, 50), (150, 100), (350, 200), (750, 500), (1500, 1000),
    (3500, 2000), (7500, 5000), (12500, 10000), (17500, 15000), (25000, 20000), (45000, 30000),
    (90000, 60000), (210000, 120000), (450000, 300000), (750000, 600000), (1050000, 900000),
    (1500000, 1200000), (2700000, 1800000), (5400000, 3600000), (9000000, 7200000),
    (16200000, 10800000), (32400000, 21600000), (86400000, 43200000), (172800000, 86400000),
    (604800000, 86400000), (1814400000, 604800000), (3628800000, 2592000000),
]


def round_interval_ms(ms: float) -> int:
    for bound, out in _ROUND:
        if ms <= bound:
            return out
    return 31536000000


def parse_duration_ms(s: str) -> int:
    """Grafana interval strings: 15s, 1m, 2h, 1d, 500ms (and Go compound forms like 1m0s)."""
    units = {"ms": 1, "s": 1000, "m": 60000, "h": 3600000, "d": 86400000, "w": 604800000, "y": 31536000000}
    total, pos = 0.0, 0
    for m in re.finditer(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)", s):
        assert m.start() == pos, f"bad duration {s!r}"
        total += float(m.group(1)) * units[m.group(2)]
        pos = m.end()
    assert pos == len(s) and s, f"bad duration {s!r}"
    return int(total)


def format_interval(ms: int) -> str:
    """gtime.FormatInterval: the largest whole unit (what `$__interval` becomes)."""
    for unit, size in (("y", 31536000000), ("d", 86400000), ("h", 3600000), ("m", 60000), ("s", 1000)):
        if ms >= size:
            return f"{ms // size}{unit}"
    return f"{max(ms, 1)}ms"


def go_duration(ms: int) -> str:
    """Go time.Duration.String() for whole milliseconds (what `$__rate_interval` becomes): 1m0s, 2h0m0s."""
    if ms == 0:
        return "0s"
    if ms < 1000:
        return f"{ms}ms"
    h, rem = divmod(ms, 3600000)
    m, rem = divmod(rem, 60000)
    s = rem / 1000
    s_txt = f"{s:.3f}".rstrip("0").rstrip(".")
    if h:
        return f"{h}h{m}m{s_txt}s"
    if m:
        return f"{m}m{s_txt}s"
    return f"{s_txt}s"


def relative_range(spec: dict, now_ms: int | None = None) -> tuple[int, int]:
    """A dashboard `time` ({from: now-15m, to: now}) -> (from ms, to ms)."""
    now_ms = now_ms if now_ms is not None else int(time.time() * 1000)

    def one(s: str) -> int:
        if s == "now":
            return now_ms
        m = re.fullmatch(r"now-(\d+[smhdwy])", s)
        assert m, f"unsupported time {s!r}"
        return now_ms - parse_duration_ms(m.group(1))

    return one(spec["from"]), one(spec["to"])


def go_float(x: float) -> str:
    """strconv.FormatFloat(x, 'f', -1, 64)."""
    if x == int(x):
        return str(int(x))
    return repr(x)


# ---- variable substitution ------------------------------------------------------------------------
def prometheus_regular_escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace("'", "\\\\'")


def prometheus_regex_escape(value: str) -> str:
    value = value.replace("\\", "\\\\\\\\")
    return re.sub(r"[$^*{}\[\]'+?.()|]", lambda m: "\\\\" + m.group(0), value)


def prometheus_interpolate(value, var: dict) -> str:
    """PDS datasource.ts interpolateQueryExpr."""
    if not var.get("multi") and not var.get("includeAll"):
        return prometheus_regular_escape(value if isinstance(value, str) else value[0])
    if isinstance(value, str):
        return prometheus_regex_escape(value)
    escaped = [prometheus_regex_escape(v) for v in value]
    return escaped[0] if len(escaped) == 1 else "(" + "|".join(escaped) + ")"


def plain_interpolate(value, var: dict) -> str:
    """Tempo's and Pyroscope's interpolation of single values (as-is); multi values as a regex group."""
    if isinstance(value, str):
        return value
    if len(value) == 1:
        return value[0]
    return "(" + "|".join(re.escape(v) for v in value) + ")"


@dataclass
class Context:
    """The dashboard state Grafana substitutes from: variable values, time range, panel width."""

    dashboard: dict
    values: dict[str, object]  # name -> str or list[str] (ALL = the variable's allValue)
    from_ms: int
    to_ms: int
    scoped: dict[str, object] = field(default_factory=dict)

    def var(self, name: str) -> dict | None:
        for v in self.dashboard["templating"]["list"]:
            if v["name"] == name:
                return v
        return None

    def value(self, name: str):
        v = self.values[name]
        var = self.var(name)
        if v == "$__all" or v == ["$__all"]:
            assert var and var.get("includeAll"), name
            return ("ALL", var.get("allValue"))
        return v


def interpolate(text: str, ctx: Context, fmt_value=plain_interpolate, builtins: dict | None = None) -> str:
    """templateSrv.replace: user variables through `fmt_value` (the datasource's interpolation),
    explicit formats (`:percentencode`, `:raw`, `:regex`, `:date:seconds`), and the given built-ins
    (left in place when absent, as the frontend leaves `$__rate_interval` etc. to the backend)."""
    builtins = builtins or {}

    def repl(m: re.Match) -> str:
        name = m.group(1) or m.group(2) or m.group(4)
        path = m.group(5)
        fmt = m.group(3) or m.group(6)
        if name == "__data":
            assert path and path.startswith("fields."), m.group(0)
            raw = str(ctx.scoped["__data.fields"][path[len("fields."):]])
            return _format(raw, fmt)
        if name in ("__from", "__to"):
            ms = ctx.from_ms if name == "__from" else ctx.to_ms
            if fmt == "date:seconds":
                return str(ms // 1000)
            assert fmt is None, f"unsupported format {fmt!r} for {name}"
            return str(ms)
        if name == "__url_time_range":
            return f"from={ctx.from_ms}&to={ctx.to_ms}"
        if name in builtins:
            return builtins[name]
        if name.startswith("__"):
            return m.group(0)
        var = ctx.var(name)
        if var is None:
            return m.group(0)  # Grafana leaves unknown variables alone
        value = ctx.value(name)
        if isinstance(value, tuple) and value[0] == "ALL":
            all_value = value[1]
            if all_value is not None:
                return all_value if fmt in (None, "regex", "raw") else _format(all_value, fmt)
            value = [o for o in ctx.scoped.get(f"options:{name}", [])]
        if fmt:
            return _format(value if isinstance(value, str) else ",".join(value), fmt)
        return fmt_value(value, var)

    return VARIABLE_RE.sub(repl, text)


def _format(value: str, fmt: str | None) -> str:
    if fmt in (None, "raw", "text"):
        return value
    if fmt == "percentencode":
        return urllib.parse.quote(value, safe="-_.!~*'()")
    if fmt == "regex":
        return re.escape(value)
    raise AssertionError(f"format {fmt!r} not handled by the test helper")


# ---- datasources ----------------------------------------------------------------------------------
@dataclass
class Endpoints:
    """Where the provisioned datasource URLs' hosts are reached in this test run."""

    hosts: dict[str, str]  # "https://skein:3200" -> "http://127.0.0.1:41234"

    def url(self, ds: dict) -> str:
        u = urllib.parse.urlparse(ds["url"])
        base = f"{u.scheme}://{u.netloc}"
        assert base in self.hosts, f"datasource {ds['uid']} points at {base}, which the test does not run"
        return self.hosts[base] + u.path.rstrip("/")

    @staticmethod
    def headers(ds: dict) -> dict:
        h = {}
        jd, sec = ds.get("jsonData") or {}, ds.get("secureJsonData") or {}
        i = 1
        while f"httpHeaderName{i}" in jd:
            h[jd[f"httpHeaderName{i}"]] = sec.get(f"httpHeaderValue{i}", "")
            i += 1
        return h


def resolve_ds(ref: dict, ctx: Context, datasources: dict[str, dict]) -> dict:
    """A panel/target datasource ref -> the provisioned datasource (uids starting with `$` are
    interpolated like DatasourceSrv.getInstanceSettings does)."""
    uid = ref["uid"]
    if uid.startswith("$"):
        uid = interpolate(uid, ctx)
    assert uid in datasources, f"datasource uid {uid!r} (from {ref['uid']!r}) is not provisioned"
    ds = datasources[uid]
    assert ds["type"] == ref["type"], f"{uid}: panel says type {ref['type']}, provisioned {ds['type']}"
    return ds


# ---- Prometheus datasource ------------------------------------------------------------------------
@dataclass
class PromQuery:
    expr: str
    step_ms: int
    start: float
    end: float
    form: dict


def prom_build(expr: str, ctx: Context, ds: dict, *, instant: bool, max_data_points: int) -> PromQuery:
    """Frontend interpolation of user variables, then the promlib backend's step, `$__interval`,
    `$__rate_interval`, `$__range` and start/end alignment (grafana/REQUESTS.md, "Prometheus datasource")."""
    scrape = (ds.get("jsonData") or {}).get("timeInterval") or "15s"
    scrape_ms = parse_duration_ms(scrape)
    range_ms = ctx.to_ms - ctx.from_ms
    # Frontend: intervalMs = round(range / maxDataPoints), at least the datasource's timeInterval.
    interval_ms = max(round_interval_ms(range_ms / max_data_points), scrape_ms)
    # Backend: calculatedStep = max(round(range / maxDataPoints) >= minInterval, safe interval).
    step_ms = max(round_interval_ms(range_ms / max_data_points), scrape_ms)
    step_ms = max(step_ms, round_interval_ms(range_ms / 11000))
    rate_ms = max(interval_ms + scrape_ms, 4 * scrape_ms)
    expr = interpolate(expr, ctx, prometheus_interpolate)
    expr = expr.replace("$__interval_ms", str(step_ms)).replace("${__interval_ms}", str(step_ms))
    expr = expr.replace("$__interval", format_interval(step_ms)).replace("${__interval}", format_interval(step_ms))
    range_s = round(range_ms / 1000)
    for k, v in (("__range_ms", str(range_ms)), ("__range_s", str(range_s)), ("__range", f"{range_s}s"),
                 ("__rate_interval_ms", str(rate_ms)), ("__rate_interval", go_duration(rate_ms))):
        expr = expr.replace("$" + k, v).replace("${" + k + "}", v)
    assert "$" not in expr, f"unsubstituted variable left in {expr!r}"
    step_s = step_ms / 1000
    start = math.floor(ctx.from_ms / step_ms) * step_s
    end = math.floor(ctx.to_ms / step_ms) * step_s
    if instant:
        form = {"query": expr, "time": go_float(ctx.to_ms / 1000)}
    else:
        form = {"query": expr, "start": go_float(start), "end": go_float(end), "step": go_float(step_s)}
    return PromQuery(expr, step_ms, start, end, form)


def prom_call(base: str, path: str, form: dict, ds: dict, headers: dict | None = None) -> dict:
    """As promlib sends it: POST form on the path (httpMethod POST) or GET with a query string."""
    method = (ds.get("jsonData") or {}).get("httpMethod") or "POST"
    h = {**(headers or {})}
    if method == "POST":
        r = requests.post(base + path, data=form, headers=h, timeout=30)
    else:
        r = requests.get(base + path, params=form, headers=h, timeout=30)
    assert r.status_code == 200, f"{path} {form}: HTTP {r.status_code} {r.text[:500]}"
    body = r.json()
    assert body.get("status") == "success", body
    return body["data"]


def assert_prom_result(data: dict, *, instant: bool, what: str) -> list:
    """Correct shape (matrix for range, vector for instant; string values that parse as floats) and
    at least one series with at least one non-NaN value."""
    want = "vector" if instant else "matrix"
    assert data.get("resultType") == want, f"{what}: resultType {data.get('resultType')!r}, want {want}"
    result = data["result"]
    assert result, f"{what}: empty result"
    finite = 0
    for s in result:
        assert isinstance(s["metric"], dict), s
        points = [s["value"]] if instant else s["values"]
        if not instant:
            assert points, f"{what}: series without samples {s['metric']}"
        for t, v in points:
            assert isinstance(t, (int, float)) and isinstance(v, str), (t, v)
            if not math.isnan(float(v)):
                finite += 1
    assert finite, f"{what}: only NaN values in {result[:3]}"
    return result


# ---- the demo under test --------------------------------------------------------------------------
class DemoSkein(Skein):
    """`skein demo`: the collector plus the shop's services with generated traffic."""

    def __init__(self, data_dir, log_dir, extra_args=(), rps: int = 10):
        super().__init__(data_dir, log_dir, extra_args)
        self.gateway_port = free_port()
        self.rps = rps

    def argv(self) -> list[str]:
        return [
            str(self.bin), "demo", "--insecure",
            "--data-dir", str(self.data_dir),
            "--otlp-grpc-addr", self.grpc_addr,
            "--otlp-http-addr", f"127.0.0.1:{self.otlp_http_port}",
            "--http-addr", f"127.0.0.1:{self.http_port}",
            "--gateway-addr", f"127.0.0.1:{self.gateway_port}",
            "--rps", str(self.rps),
            *self.extra_args,
        ]

"""Authentication and TLS, against the real clients: the OpenTelemetry Python SDK exporting with
`OTEL_EXPORTER_OTLP_HEADERS` and `OTEL_EXPORTER_OTLP_CERTIFICATE` over TLS (gRPC and HTTP),
Grafana-style basic auth, raw gRPC calls for the status codes, mutual TLS, and SIGHUP reloads.

Certificates come from `skein certs` (a development CA, server and client certificates)."""

from __future__ import annotations

import os
import pathlib
import shutil
import signal
import subprocess

import grpc
import pytest
import requests
from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter as GrpcSpanExporter
from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter as HttpSpanExporter
from opentelemetry.sdk.resources import Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor, SpanExportResult

from support import client, otlp
from support.collector import skein_bin
from support.poll import wait_until

WRITER = "acme-writer-token-0001"
READER = "acme-reader-token-0001"
OTHER_READER = "beta-reader-token-0001"
ADMIN = "any-tenant-admin-token-01"
AUTH = f"""
[[token]]
token = "{WRITER}"
tenants = ["acme"]
role = "write"
[[token]]
token = "{READER}"
tenants = ["acme"]
role = "read"
[[token]]
token = "{OTHER_READER}"
tenants = ["beta"]
role = "read"
[[token]]
token = "{ADMIN}"
tenants = ["*"]
role = "admin"
"""


def make_certs(directory: pathlib.Path) -> pathlib.Path:
    subprocess.run([str(skein_bin()), "certs", str(directory)], check=True, capture_output=True)
    return directory


def tls_args(certs: pathlib.Path, auth: pathlib.Path | None) -> list[str]:
    args = ["--tls-cert", str(certs / "server.pem"), "--tls-key", str(certs / "server-key.pem")]
    if auth:
        args += ["--auth-file", str(auth)]
    return args


@pytest.fixture(scope="module")
def pki(tmp_path_factory) -> pathlib.Path:
    return make_certs(tmp_path_factory.mktemp("pki"))


@pytest.fixture(scope="module")
def secured(skein_module_factory, pki, tmp_path_factory):
    auth = tmp_path_factory.mktemp("auth") / "auth.toml"
    auth.write_text(AUTH)
    return skein_module_factory(*tls_args(pki, auth), tls_ca=pki / "ca.pem", token=READER)


def sdk_export(exporter, service: str) -> tuple[list[SpanExportResult], str]:
    """One span through a real SDK pipeline; the export results and the trace id."""
    results = []

    class Recording(SimpleSpanProcessor):
        def on_end(self, span):
            results.append(self.span_exporter.export((span,)))

    provider = TracerProvider(resource=Resource.create({"service.name": service}))
    provider.add_span_processor(Recording(exporter))
    with provider.get_tracer("auth-test").start_as_current_span("checkout") as span:
        tid = format(span.get_span_context().trace_id, "032x")
    provider.shutdown()
    return results, tid


def sdk_exporter(kind: str, sk):
    """Built with no arguments: endpoint, headers and CA all come from the OTEL_* environment."""
    return GrpcSpanExporter() if kind == "grpc" else HttpSpanExporter()


def export_env(monkeypatch, kind: str, sk, ca: pathlib.Path, token: str | None):
    for k in list(os.environ):
        if k.startswith("OTEL_EXPORTER_OTLP"):
            monkeypatch.delenv(k)
    if kind == "grpc":
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"https://{sk.grpc_addr}")
    else:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", f"{sk.otlp_http_url}/v1/traces")
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_CERTIFICATE", str(ca))
    # requests (inside the SDK's HTTP exporter) lets these beat its session's CA file.
    monkeypatch.delenv("REQUESTS_CA_BUNDLE", raising=False)
    monkeypatch.delenv("CURL_CA_BUNDLE", raising=False)
    if token:
        monkeypatch.setenv("OTEL_EXPORTER_OTLP_HEADERS", f"authorization=Bearer%20{token}")


@pytest.mark.parametrize("kind", ["grpc", "http"])
def test_the_python_sdk_exports_over_tls_with_a_token_from_otel_exporter_otlp_headers(
        secured, pki, monkeypatch, kind):
    assert secured.otlp_http_url.startswith("https://")
    export_env(monkeypatch, kind, secured, pki / "ca.pem", WRITER)
    results, tid = sdk_export(sdk_exporter(kind, secured), f"sdk-{kind}")
    assert results == [SpanExportResult.SUCCESS]
    # The writer's token has one tenant, so no X-Scope-OrgID is needed: the spans are acme's.
    rss = client.wait_trace(secured, tid)
    assert otlp.all_spans(rss)[0].name == "checkout"
    other = requests.get(f"{secured.http_url}/api/v2/traces/{tid}", verify=str(pki / "ca.pem"),
                         headers={"Authorization": f"Bearer {OTHER_READER}"}, timeout=10)
    assert other.status_code == 404, "another tenant's reader must not see acme's trace"


@pytest.mark.parametrize("kind", ["grpc", "http"])
@pytest.mark.parametrize("token", [None, "not-a-known-token-at-all", READER], ids=["none", "unknown", "reader"])
def test_the_python_sdk_is_refused_without_a_write_token(secured, pki, monkeypatch, kind, token):
    export_env(monkeypatch, kind, secured, pki / "ca.pem", token)
    monkeypatch.setenv("OTEL_EXPORTER_OTLP_TIMEOUT", "5")
    results, tid = sdk_export(sdk_exporter(kind, secured), f"refused-{kind}")
    assert results == [SpanExportResult.FAILURE]
    assert client.trace_v2_json(secured, tid).status_code == 404


def tls_channel(sk, ca: pathlib.Path, client_cert=None) -> grpc.Channel:
    key = cert = None
    if client_cert:
        cert, key = (pathlib.Path(p).read_bytes() for p in client_cert)
    creds = grpc.ssl_channel_credentials(root_certificates=ca.read_bytes(), private_key=key,
                                         certificate_chain=cert)
    return grpc.secure_channel(sk.grpc_addr, creds)


@pytest.mark.parametrize("metadata,code", [
    ([], grpc.StatusCode.UNAUTHENTICATED),
    ([("authorization", "Bearer wrong-token-value-123")], grpc.StatusCode.UNAUTHENTICATED),
    ([("authorization", f"Bearer {READER}")], grpc.StatusCode.PERMISSION_DENIED),
    ([("authorization", f"Bearer {WRITER}"), ("x-scope-orgid", "beta")], grpc.StatusCode.PERMISSION_DENIED),
    ([("authorization", f"Bearer {WRITER}")], grpc.StatusCode.OK),
    ([("authorization", f"Bearer {ADMIN}"), ("x-scope-orgid", "gamma")], grpc.StatusCode.OK),
], ids=["no-token", "unknown", "wrong-role", "wrong-tenant", "writer", "admin-any-tenant"])
def test_otlp_grpc_answers_unauthenticated_and_permission_denied(secured, pki, metadata, code):
    req, tid, _ = otlp.simple_request("grpc-status", 1)
    ch = tls_channel(secured, pki / "ca.pem")
    call = ch.unary_unary(client.EXPORT_METHOD, request_serializer=lambda b: bytes(b),
                          response_deserializer=lambda b: b)
    try:
        call(req.SerializeToString(), metadata=metadata, timeout=10)
        got, details = grpc.StatusCode.OK, ""
    except grpc.RpcError as e:
        got, details = e.code(), e.details() or ""
    finally:
        ch.close()
    assert got == code, details
    assert "wrong-token-value" not in details and WRITER not in details


CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
# (name, method, path, body, content type, role the call needs)
SURFACES = [
    ("tempo", "GET", "/api/search?q=%7B%7D", None, None, "read"),
    ("tempo-trace", "GET", "/api/v2/traces/0123456789abcdef0123456789abcdef", None, None, "read"),
    ("prometheus", "GET", "/prometheus/api/v1/query?query=1", None, None, "read"),
    ("span-metrics-exposition", "GET", "/prometheus/metrics", None, None, "read"),
    ("pyroscope-querier", "POST", "/pyroscope/querier.v1.QuerierService/ProfileTypes", b"{}", "application/json", "read"),
    ("native", "GET", "/skein/api/services", None, None, "read"),
    ("sql", "POST", "/skein/api/sql", b'{"query": "SELECT 1"}', "application/json", "read"),
    ("pyroscope-ingest", "POST", "/ingest?name=app.cpu&from=1&until=2", b"a;b 1\n", None, "write"),
    ("pyroscope-push", "POST", "/push.v1.PusherService/Push", b"{}", "application/json", "write"),
    ("metrics", "GET", "/metrics", None, None, "admin"),
]


def call_surface(sk, ca, surface, auth=None, headers=None):
    _, method, path, body, ctype, _ = surface
    h = dict(headers or {})
    if ctype:
        h["Content-Type"] = ctype
    return requests.request(method, sk.http_url + path, data=body, headers=h, auth=auth,
                            verify=str(ca), timeout=15)


@pytest.mark.parametrize("surface", SURFACES, ids=[s[0] for s in SURFACES])
def test_every_surface_refuses_missing_unknown_and_wrong_role_tokens(secured, pki, surface):
    ca = pki / "ca.pem"
    r = call_surface(secured, ca, surface)
    assert r.status_code == 401, r.text
    assert "Bearer" in r.headers.get("WWW-Authenticate", ""), r.headers
    assert "token" in r.text.lower(), "a 401 says what is missing"
    r = call_surface(secured, ca, surface, headers={"Authorization": "Bearer secret-guess-000111"})
    assert r.status_code == 401 and "secret-guess" not in r.text, r.text
    r = call_surface(secured, ca, surface, headers={"Authorization": "Bearer"})
    assert r.status_code == 401, r.text
    wrong_role = {"read": WRITER, "write": READER, "admin": READER}[surface[5]]
    r = call_surface(secured, ca, surface, headers={"Authorization": f"Bearer {wrong_role}"})
    assert r.status_code == 403, r.text
    assert wrong_role not in r.text
    right = {"read": READER, "write": WRITER, "admin": ADMIN}[surface[5]]
    r = call_surface(secured, ca, surface, headers={"Authorization": f"Bearer {right}", "X-Scope-OrgID": "beta"})
    assert r.status_code == (200 if surface[5] == "admin" else 403), r.text
    r = call_surface(secured, ca, surface, headers={"Authorization": f"Bearer {right}"})
    assert r.status_code not in (401, 403), f"{surface[0]} with the right token: {r.status_code} {r.text}"


def test_otlp_http_refuses_before_reading_the_body(secured, pki):
    ca = str(pki / "ca.pem")
    r = requests.post(f"{secured.otlp_http_url}/v1/traces", data=b"\xff" * 100,
                      headers={"Content-Type": "application/x-protobuf"}, verify=ca, timeout=10)
    assert r.status_code == 401, "credentials are checked before the (malformed) body"
    r = requests.post(f"{secured.otlp_http_url}/v1/traces", data=b"\xff" * 100,
                      headers={"Content-Type": "application/x-protobuf", "Authorization": f"Bearer {READER}"},
                      verify=ca, timeout=10)
    assert r.status_code == 403


def test_health_stays_open_and_the_ui_page_loads_without_a_token(secured, pki):
    for path in ("/healthz", "/ready", "/"):
        r = requests.get(secured.http_url + path, verify=str(pki / "ca.pem"), timeout=10)
        assert r.status_code == 200, path


def test_grafana_style_basic_auth_with_the_token_as_password(secured, pki):
    req, tid, _ = otlp.simple_request("basic-auth-svc", 2)
    r = requests.post(f"{secured.otlp_http_url}/v1/traces", data=req.SerializeToString(),
                      headers={"Content-Type": "application/x-protobuf"}, auth=("grafana", WRITER),
                      verify=str(pki / "ca.pem"), timeout=10)
    assert r.status_code == 200, r.text
    session = requests.Session()
    session.trust_env = False  # else REQUESTS_CA_BUNDLE beats `verify`
    session.verify = str(pki / "ca.pem")
    session.auth = ("grafana", READER)
    session.headers["X-Scope-OrgID"] = "acme"
    wait_until(lambda: session.get(f"{secured.http_url}/api/v2/traces/{tid.hex()}", timeout=10).status_code == 200,
               timeout=15, what="trace by basic auth")
    r = session.get(f"{secured.http_url}/prometheus/api/v1/query", params={"query": "vector(1)"}, timeout=10)
    assert r.status_code == 200 and r.json()["status"] == "success"
    r = session.post(f"{secured.http_url}/pyroscope/querier.v1.QuerierService/ProfileTypes", data=b"{}",
                     headers={"Content-Type": "application/json"}, timeout=10)
    assert r.status_code == 200, r.text
    r = requests.get(f"{secured.http_url}/api/search", auth=("grafana", "wrong-password-12345"),
                     verify=str(pki / "ca.pem"), timeout=10)
    assert r.status_code == 401


def test_plain_http_to_a_tls_listener_gets_no_answer(secured):
    with pytest.raises(requests.RequestException):
        requests.get(secured.http_url.replace("https://", "http://") + "/ready", timeout=5)


def test_mutual_tls_refuses_a_client_without_a_certificate(skein_factory, pki, tmp_path):
    client_pair = (pki / "client.pem", pki / "client-key.pem")
    sk = skein_factory(*tls_args(pki, None), "--tls-client-ca", str(pki / "ca.pem"),
                       tls_ca=pki / "ca.pem", client_cert=client_pair)
    ca = str(pki / "ca.pem")
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(sk.http_url + "/ready", verify=ca, timeout=5)
    # A certificate from another CA is refused too.
    other = make_certs(tmp_path / "other")
    with pytest.raises((requests.exceptions.SSLError, requests.exceptions.ConnectionError)):
        requests.get(sk.http_url + "/ready", verify=ca, cert=(str(other / "client.pem"), str(other / "client-key.pem")),
                     timeout=5)
    assert requests.get(sk.http_url + "/ready", verify=ca, cert=tuple(map(str, client_pair)), timeout=5).status_code == 200
    # gRPC: the handshake fails without a certificate, the export works with one.
    req, _, _ = otlp.simple_request("mtls", 1)
    for pair, ok in ((None, False), (client_pair, True)):
        ch = tls_channel(sk, pki / "ca.pem", pair)
        call = ch.unary_unary(client.EXPORT_METHOD, request_serializer=lambda b: bytes(b),
                              response_deserializer=lambda b: b)
        try:
            call(req.SerializeToString(), timeout=5)
            got = True
        except grpc.RpcError as e:
            got = False
            assert e.code() == grpc.StatusCode.UNAVAILABLE, e
        finally:
            ch.close()
        assert got == ok


def test_sighup_reloads_the_auth_file_and_the_certificate(skein_factory, tmp_path):
    certs = make_certs(tmp_path / "certs")
    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH)
    sk = skein_factory(*tls_args(certs, auth), tls_ca=certs / "ca.pem", token=READER)
    ca = certs / "ca.pem"

    def status(token):
        return requests.get(sk.http_url + "/api/search", headers={"Authorization": f"Bearer {token}"},
                            verify=str(ca), timeout=5).status_code

    assert status(READER) == 200
    new_reader = "rotated-reader-token-0002"
    auth.write_text(AUTH.replace(READER, new_reader))
    os.kill(sk.pid, signal.SIGHUP)
    wait_until(lambda: status(new_reader) == 200, timeout=10, what="the new token after SIGHUP")
    assert status(READER) == 401, "the removed token no longer works"

    # A broken file keeps the tokens in force.
    auth.write_text("[[token]]\nthis is not toml")
    os.kill(sk.pid, signal.SIGHUP)
    wait_until(lambda: "auth file not reloaded" in sk.log_text(), timeout=10, what="reload error logged")
    assert status(new_reader) == 200

    # New certificate files (a new CA) are served after SIGHUP.
    fresh = make_certs(tmp_path / "fresh")
    for name in ("server.pem", "server-key.pem"):
        shutil.copy(fresh / name, certs / name)
    os.kill(sk.pid, signal.SIGHUP)

    def served_by_fresh_ca():
        try:
            return requests.get(sk.http_url + "/ready", verify=str(fresh / "ca.pem"), timeout=5).status_code == 200
        except requests.exceptions.SSLError:
            return False

    wait_until(served_by_fresh_ca, timeout=10, what="the new certificate after SIGHUP")
    with pytest.raises(requests.exceptions.SSLError):
        requests.get(sk.http_url + "/ready", verify=str(ca), timeout=5)


def test_the_provisioned_grafana_datasources_reach_a_secured_skein(skein_factory, tmp_path):
    """grafana/provisioning's skein datasources, used the way Grafana does (https, basic auth
    with the $__file{} read token, the $__file{} CA), against skein run as the deploys run it:
    `skein certs` files standing in for /etc/skein/tls."""
    import re

    from support import grafana as gf

    certs = make_certs(tmp_path / "tls")
    sk = skein_factory(*tls_args(certs, certs / "auth.toml"), tls_ca=certs / "ca.pem")

    def file_ref(value: str) -> pathlib.Path:
        m = re.fullmatch(r"\$__file\{/etc/skein/tls/([^}]+)\}", value)
        assert m, f"{value!r} is not a $__file{{}} reference into /etc/skein/tls"
        return certs / m.group(1)

    probes = {
        "skein-tempo": ("GET", "/api/echo", None),
        "skein-prometheus": ("GET", "/api/v1/query?query=vector(1)", None),
        "skein-pyroscope": ("POST", "/querier.v1.QuerierService/ProfileTypes", b"{}"),
    }
    datasources = gf.provisioned_datasources()
    for uid, (method, path, body) in probes.items():
        ds = datasources[uid]
        assert ds["url"].startswith("https://skein:3200"), ds["url"]
        url = ds["url"].replace("https://skein:3200", sk.http_url) + path
        secure = ds["secureJsonData"]
        assert ds["jsonData"]["tlsAuthWithCACert"] is True
        session = requests.Session()
        session.trust_env = False
        session.verify = str(file_ref(secure["tlsCACert"]))
        headers = {"Content-Type": "application/json"} if body else {}
        r = session.request(method, url, data=body, headers=headers, timeout=10)
        assert r.status_code == 401, f"{uid} without its credentials: {r.status_code}"
        assert ds["basicAuth"] is True
        session.auth = (ds["basicAuthUser"], file_ref(secure["basicAuthPassword"]).read_text())
        r = session.request(method, url, data=body, headers=headers, timeout=10)
        assert r.status_code == 200, f"{uid}: {r.status_code} {r.text[:300]}"


def test_a_non_loopback_listener_without_auth_is_warned_about(tmp_path):
    from support.collector import Skein

    class Exposed(Skein):
        def argv(self):
            argv = super().argv()
            argv[argv.index("--http-addr") + 1] = f"0.0.0.0:{self.http_port}"
            return argv

    auth = tmp_path / "auth.toml"
    auth.write_text(AUTH)
    for extra, warned in (((), True), (("--auth-file", str(auth)), False)):
        sk = Exposed(tmp_path / f"data-{warned}", tmp_path / f"logs-{warned}", extra)
        try:
            sk.start()
            log = sk.log_text()
        finally:
            sk.terminate_quietly()
        assert ("non-loopback address without authentication" in log) == warned, log[-2000:]
        if warned:
            assert "listener=\"http\"" in log and "listener=\"otlp" not in log, "only the exposed listener"

"""deploy/: the Dockerfile, docker-compose.yml and k8s/ parse and agree with each other, with the
repository (paths they copy or mount exist, the binary they build is the one the tests run) and
with the real `skein` binary (every flag they pass exists). No docker build here.
"""

from __future__ import annotations

import json
import re
import shlex
import subprocess
import tomllib
from functools import lru_cache

import pytest
import yaml

from support import grafana as gf
from support.collector import skein_bin

REPO = gf.REPO
DEPLOY = REPO / "deploy"
RULES_FILE = DEPLOY / "rules" / "skein-latency.rules.yml"  # written with skein's alerting (deploy/rules/)
PORTS = {4317, 4318, 3200}
# Where the compose certs volume and the k8s skein-tls Secret are mounted.
TLS_DIR = "/etc/skein/tls"


# ---- helpers ----------------------------------------------------------------------------------------
def dockerfile_instructions(path=DEPLOY / "Dockerfile") -> list[tuple[str, str]]:
    out, buf = [], ""
    for line in path.read_text().splitlines():
        s = line.strip()
        if not buf and (not s or s.startswith("#")):
            continue
        if s.startswith("#"):
            continue
        buf += " " + s.rstrip("\\").strip() if buf else s.rstrip("\\").strip()
        if not s.endswith("\\"):
            op, _, rest = buf.partition(" ")
            out.append((op.upper(), rest.strip()))
            buf = ""
    return out


@lru_cache
def flags_of(*subcommand: str) -> set[str]:
    """The long flags `skein <subcommand> --help` lists (the real binary under test)."""
    r = subprocess.run([str(skein_bin()), *subcommand, "--help"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return set(re.findall(r"--([a-z][a-z0-9-]+)", r.stdout))


def flags_in(argv: list[str]) -> list[str]:
    return [a[2:].split("=")[0] for a in argv if a.startswith("--")]


def compose() -> dict:
    return yaml.safe_load((DEPLOY / "docker-compose.yml").read_text())


def k8s_docs() -> list[dict]:
    docs = []
    for f in sorted((DEPLOY / "k8s").glob("*.yaml")):
        if f.name == "kustomization.yaml":
            continue
        docs += [d for d in yaml.safe_load_all(f.read_text()) if d]
    return docs


def kind(docs, k, name):
    (d,) = [d for d in docs if d["kind"] == k and d["metadata"]["name"] == name]
    return d


def require_rules_file():
    if not RULES_FILE.exists():
        pytest.skip(f"{RULES_FILE.relative_to(REPO)} is not in this checkout yet (skein alerting work)")


def provider_path() -> str:
    (p,) = gf.load_yaml(gf.PROVISIONING / "dashboards" / "skein.yaml")["providers"]
    return p["options"]["path"]


def catalogue_skus() -> set[str]:
    src = (REPO / "demo" / "src" / "catalog.rs").read_text()
    consts = dict(re.findall(r'pub const (\w+): &str = "([^"]+)"', src))
    skus = set(re.findall(r'product\(\s*"([^"]+)"', src))
    skus |= {consts[c] for c in re.findall(r"product\(\s*(\w+),", src) if c in consts}
    assert len(skus) >= 5, skus
    return skus


# ---- Dockerfile ---------------------------------------------------------------------------------------
def test_dockerfile_builds_the_skein_binary_the_tests_run():
    ins = dockerfile_instructions()
    froms = [rest for op, rest in ins if op == "FROM"]
    assert froms[0] == "rust:1.95-bookworm AS build" and froms[-1] == "debian:bookworm-slim", froms
    workspace = tomllib.loads((REPO / "Cargo.toml").read_text())
    assert froms[0].split(":")[1].split("-")[0] == workspace["workspace"]["package"]["rust-version"]
    run = " ".join(rest for op, rest in ins if op == "RUN" and "cargo" in rest)
    assert re.search(r"cargo build --release\b.*-p skein-collector --bin skein\b", run), run
    collector = tomllib.loads((REPO / "collector" / "Cargo.toml").read_text())
    assert collector["package"]["name"] == "skein-collector"
    assert [b["name"] for b in collector["bin"]] == ["skein"]
    # scripts/test builds the binary the e2e tests run with the same `--bin skein`.
    assert re.search(r"cargo build .*--bin skein\b", (REPO / "scripts" / "test").read_text())
    # The runtime stage copies what the build stage installed.
    m = re.search(r"install -Dm755 target/release/skein (\S+)", run)
    assert m, run
    assert any(op == "COPY" and rest.startswith(f"--from=build {m.group(1)} ") for op, rest in ins), ins


def test_dockerfile_copy_sources_exist_and_are_not_ignored():
    ignored = [l.strip() for l in (DEPLOY / "Dockerfile.dockerignore").read_text().splitlines()
               if l.strip() and not l.startswith("#")]
    copies = [rest for op, rest in dockerfile_instructions() if op == "COPY" and not rest.startswith("--from")]
    assert copies
    members = tomllib.loads((REPO / "Cargo.toml").read_text())["workspace"]["members"]
    copied = set()
    for rest in copies:
        *srcs, _dest = shlex.split(rest)
        for s in srcs:
            assert (REPO / s).exists(), f"COPY source {s} does not exist (context: the repository root)"
            assert not any(s == i or s.startswith(i.rstrip("/") + "/") for i in ignored), f"{s} is dockerignored"
            copied.add(s)
    assert {"Cargo.toml", "Cargo.lock", *members} <= copied, f"workspace not fully copied: {copied}"
    assert "target" in ignored and ".git" in ignored


def test_dockerfile_runtime_stage():
    ins = dockerfile_instructions()
    runtime = ins[max(i for i, (op, _) in enumerate(ins) if op == "FROM"):]
    user = [rest for op, rest in runtime if op == "USER"]
    assert user and user[-1].split(":")[0] not in ("0", "root"), user
    assert {int(p) for op, rest in runtime if op == "EXPOSE" for p in rest.split()} == PORTS
    assert [rest for op, rest in runtime if op == "VOLUME"] == ["/var/lib/skein"]
    (entry,) = [json.loads(rest) for op, rest in runtime if op == "ENTRYPOINT"]
    assert entry[:2] == ["/usr/local/bin/skein", "serve"]
    args = dict(zip(entry[2::2], entry[3::2]))
    assert args["--data-dir"] == "/var/lib/skein"
    assert {args["--otlp-grpc-addr"], args["--otlp-http-addr"], args["--http-addr"]} == {f"0.0.0.0:{p}" for p in PORTS}
    assert set(flags_in(entry)) <= flags_of("serve")


# ---- docker-compose.yml ---------------------------------------------------------------------------------
def test_compose_services_images_and_ports():
    c = compose()
    svcs = c["services"]
    assert {"skein", "grafana", "prometheus", "inventory", "payment", "orders", "gateway", "traffic"} <= set(svcs)
    for name, s in svcs.items():
        image = s["image"]
        assert re.fullmatch(r"[a-z0-9./-]+:[A-Za-z0-9._-]+", image) and not image.endswith(":latest"), (name, image)
    sk = svcs["skein"]
    assert sk["build"] == {"context": "..", "dockerfile": "deploy/Dockerfile"}
    assert (DEPLOY / sk["build"]["context"] / sk["build"]["dockerfile"]).resolve() == (DEPLOY / "Dockerfile").resolve()
    assert {int(p.split(":")[1]) for p in sk["ports"]} == PORTS
    assert "skein-data:/var/lib/skein" in sk["volumes"] and "skein-data" in c["volumes"]
    assert set(flags_in(sk["command"])) <= flags_of("serve")
    assert svcs["grafana"]["image"].startswith("grafana/grafana:11.")
    env = svcs["grafana"]["environment"]
    assert env["GF_AUTH_ANONYMOUS_ENABLED"] == "true" and env["GF_AUTH_ANONYMOUS_ORG_ROLE"] == "Admin"


def test_compose_mounts_exist_and_match_grafana_provisioning():
    c = compose()
    for name, s in c["services"].items():
        for v in s.get("volumes", []):
            src, dst, *_ = v.split(":")
            if src.startswith((".", "/")):
                if src == "./rules" and not (DEPLOY / "rules").exists():
                    continue  # checked by test_compose_rules_flag_points_at_the_rules_file
                assert (DEPLOY / src).exists(), f"{name}: bind mount source {src} does not exist"
            else:
                assert src in c["volumes"], f"{name}: volume {src} not declared"
    mounts = {v.split(":")[1]: v.split(":")[0] for v in c["services"]["grafana"]["volumes"]}
    for kind_ in ("datasources", "dashboards", "alerting"):
        src = mounts[f"/etc/grafana/provisioning/{kind_}"]
        assert (DEPLOY / src).resolve() == (gf.PROVISIONING / kind_).resolve(), src
    assert (DEPLOY / mounts[provider_path()]).resolve() == gf.DASHBOARDS.resolve(), "dashboards not at the provider path"
    # Datasource URLs name compose services and the ports they listen on.
    ds = gf.provisioned_datasources()
    for d in ds.values():
        host, port = re.match(r"https?://([^:/]+):(\d+)", d["url"]).groups()
        assert host in c["services"], f"{d['uid']}: no compose service {host}"
    prom = yaml.safe_load((DEPLOY / "prometheus.yml").read_text())
    (job,) = prom["scrape_configs"]
    assert job["static_configs"][0]["targets"] == ["skein:3200"] and job.get("metrics_path", "/metrics") == "/metrics"
    assert "./prometheus.yml:/etc/prometheus/prometheus.yml:ro" in c["services"]["prometheus"]["volumes"]
    # skein's /metrics is scraped over TLS with the admin token from the certs volume.
    assert job["scheme"] == "https" and job["tls_config"]["ca_file"] == f"{TLS_DIR}/ca.pem"
    assert job["authorization"]["credentials_file"] == f"{TLS_DIR}/admin.token"
    assert f"skein-tls:{TLS_DIR}:ro" in c["services"]["prometheus"]["volumes"]
    assert f"skein-tls:{TLS_DIR}:ro" in c["services"]["grafana"]["volumes"]


def test_compose_runs_skein_with_tls_and_tokens_from_the_certs_service():
    c = compose()
    svcs = c["services"]
    certs, sk = svcs["certs"], svcs["skein"]
    assert certs["image"] == sk["image"] and "skein-tls" in c["volumes"]
    script = certs["command"][0]
    assert f"/usr/local/bin/skein certs {TLS_DIR} --host skein" in script
    assert f"skein-tls:{TLS_DIR}" in certs["volumes"]
    assert sk["depends_on"]["certs"]["condition"] == "service_completed_successfully"
    cmd = sk["command"]
    for flag, file in (("--tls-cert", "server.pem"), ("--tls-key", "server-key.pem"), ("--auth-file", "auth.toml")):
        assert cmd[cmd.index(flag) + 1] == f"{TLS_DIR}/{file}", flag
    assert f"skein-tls:{TLS_DIR}:ro" in sk["volumes"]


def test_compose_rules_flag_points_at_the_rules_file():
    sk = compose()["services"]["skein"]
    rules = sk["command"][sk["command"].index("--rules") + 1]
    assert "./rules:/etc/skein/rules:ro" in sk["volumes"]
    assert rules.startswith("/etc/skein/rules/")
    require_rules_file()
    assert (DEPLOY / "rules" / rules[len("/etc/skein/rules/"):]).exists(), rules


def test_compose_shop_is_wired_like_skein_demo():
    svcs = compose()["services"]
    shop_flags = flags_of("shop")
    listen = {}
    for name in ("inventory", "payment", "orders", "gateway"):
        s = svcs[name]
        argv = s["entrypoint"]
        assert argv[:3] == ["/usr/local/bin/skein", "shop", name], argv
        assert set(flags_in(argv)) <= shop_flags, argv
        assert "--ignore-stdin" in argv, "without stdin a shop service exits at once"
        listen[name] = argv[argv.index("--listen") + 1].rsplit(":", 1)[1]
        env = s["environment"]
        assert env["OTEL_SERVICE_NAME"] == name
        assert env["OTEL_EXPORTER_OTLP_ENDPOINT"] == "https://skein:4317" and env["OTEL_EXPORTER_OTLP_PROTOCOL"] == "grpc"
        assert env["OTEL_EXPORTER_OTLP_CERTIFICATE"] == f"{TLS_DIR}/ca.pem"
        assert argv[argv.index("--otlp-token-file") + 1] == f"{TLS_DIR}/write.token"
        assert f"skein-tls:{TLS_DIR}:ro" in s["volumes"]
        assert env["SKEIN_PROFILING"] == "true" and env["SKEIN_PROFILING_ENDPOINT"] == "https://skein:3200"
    for name, flag in (("orders", "--inventory"), ("orders", "--payment"), ("gateway", "--orders")):
        argv = svcs[name]["entrypoint"]
        target = flag[2:]
        assert argv[argv.index(flag) + 1] == f"http://{target}:{listen[target]}", (name, flag)
        assert target in svcs[name]["depends_on"]
    script = svcs["traffic"]["command"][0]
    assert f"http://gateway:{listen['gateway']}/checkout" in script
    skus = set(re.search(r'skus="([^"]+)"', script).group(1).split())
    assert skus <= catalogue_skus(), f"unknown products {skus - catalogue_skus()}"
    n = len(skus)
    assert f"% {n} + 1" in script, "the loop's modulus must match the number of SKUs"


# ---- Kubernetes ---------------------------------------------------------------------------------------
def test_k8s_manifests_parse_and_kustomization_references_exist():
    k = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    assert k["kind"] == "Kustomization"
    for r in k["resources"]:
        assert (DEPLOY / "k8s" / r).exists(), r
    for g in k["configMapGenerator"]:
        for f in g["files"]:
            p = (DEPLOY / "k8s" / f).resolve()
            if p == RULES_FILE.resolve() and not p.exists():
                continue
            assert p.exists(), f"configMapGenerator {g['name']}: {f} does not exist"
    # Dashboards are generated from dashboards/ (the only copy), all of them.
    (dash,) = [g for g in k["configMapGenerator"] if g["name"] == "grafana-dashboards"]
    assert {(DEPLOY / "k8s" / f).resolve() for f in dash["files"]} == {p.resolve() for p in gf.dashboard_files()}
    for d in k8s_docs():
        assert d["apiVersion"] and d["kind"] and d["metadata"]["name"], d


def test_k8s_statefulset_service_and_config():
    docs = k8s_docs()
    k = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    generated = {g["name"]: g for g in k["configMapGenerator"]}
    sts = kind(docs, "StatefulSet", "skein")
    spec = sts["spec"]
    assert spec["volumeClaimTemplates"], "no volume claim template"
    assert spec["selector"]["matchLabels"].items() <= spec["template"]["metadata"]["labels"].items()
    assert kind(docs, "Service", spec["serviceName"])["spec"]["clusterIP"] == "None"
    pod = spec["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] in {i["name"] for i in k["images"]}
    port_names = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert set(port_names.values()) == PORTS
    volumes = {v["name"]: v for v in pod["volumes"]} | {t["metadata"]["name"]: t for t in spec["volumeClaimTemplates"]}
    mounts = {m["mountPath"]: m for m in c["volumeMounts"]}
    for m in c["volumeMounts"]:
        assert m["name"] in volumes, m
    for v in pod["volumes"]:
        if "configMap" in v:
            assert v["configMap"]["name"] in generated, v
    assert mounts["/var/lib/skein"]["name"] in {t["metadata"]["name"] for t in spec["volumeClaimTemplates"]}
    # skein flags and config keys exist; the files they name are mounted.
    assert set(flags_in(c["args"])) <= flags_of("serve")
    config = c["args"][c["args"].index("--config") + 1]
    assert config in mounts and mounts[config]["subPath"] in [f.split("/")[-1] for f in generated["skein-config"]["files"]]
    toml = tomllib.loads((DEPLOY / "k8s" / mounts[config]["subPath"]).read_text())
    assert set(toml) <= flags_of("serve"), f"unknown config keys {set(toml) - flags_of('serve')}"
    assert toml["rules"] in mounts and volumes[mounts[toml["rules"]]["name"]]["configMap"]["name"] == "skein-rules"
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["port"] in port_names and c[probe]["httpGet"]["path"] in ("/ready", "/healthz")
    svc = kind(docs, "Service", "skein")
    assert svc["spec"]["selector"].items() <= spec["template"]["metadata"]["labels"].items()
    assert {p["port"] for p in svc["spec"]["ports"]} == PORTS
    assert all(p["targetPort"] in port_names for p in svc["spec"]["ports"])
    # The provisioned datasources reach skein as https://skein:3200 — this Service.
    assert gf.provisioned_datasources()["skein-tempo"]["url"] == f"https://{svc['metadata']['name']}:3200"
    # TLS and tokens from the skein-tls Secret, mounted where skein.toml names them.
    tls = mounts[TLS_DIR]
    assert volumes[tls["name"]]["secret"]["secretName"] == "skein-tls" and tls.get("readOnly")
    for key, file in (("tls-cert", "server.pem"), ("tls-key", "server-key.pem"), ("auth-file", "auth.toml")):
        assert toml[key] == f"{TLS_DIR}/{file}", key
    for probe in ("readinessProbe", "livenessProbe"):
        assert c[probe]["httpGet"]["scheme"] == "HTTPS"


def test_k8s_grafana_mounts_provisioning_and_dashboards():
    docs = k8s_docs()
    dep = kind(docs, "Deployment", "grafana")
    pod = dep["spec"]["template"]["spec"]
    (c,) = pod["containers"]
    assert c["image"] == compose()["services"]["grafana"]["image"], "compose and k8s run different Grafanas"
    volumes = {v["name"]: v for v in pod["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in c["volumeMounts"]}
    k = yaml.safe_load((DEPLOY / "k8s" / "kustomization.yaml").read_text())
    generated = {g["name"]: [(DEPLOY / "k8s" / f).resolve() for f in g["files"]] for g in k["configMapGenerator"]}
    for kind_ in ("datasources", "dashboards", "alerting"):
        cm = mounts[f"/etc/grafana/provisioning/{kind_}"]["configMap"]["name"]
        assert all(p.parent == (gf.PROVISIONING / kind_).resolve() for p in generated[cm]), (kind_, cm)
    cm = mounts[provider_path()]["configMap"]["name"]
    assert all(p.parent == gf.DASHBOARDS.resolve() for p in generated[cm])
    svc = kind(docs, "Service", "grafana")
    assert svc["spec"]["ports"][0]["targetPort"] in {p["name"] for p in c["ports"]}
    # The datasources' $__file{} references resolve inside the Grafana pod.
    secret = mounts[TLS_DIR]["secret"]
    assert secret["secretName"] == "skein-tls"
    assert {i["path"] for i in secret["items"]} == {"ca.pem", "read.token"}


def test_deploy_readme_covers_the_guide():
    text = (DEPLOY / "README.md").read_text()
    for needle in ("docker compose up", "loadbalancing", "routing_key: traceID", "s3://", "kubectl", "X-Scope-OrgID"):
        assert needle in text, needle
    assert "deploy/" in (REPO / "README.md").read_text(), "the top-level README points at deploy/"


def test_k8s_replicas_share_one_bucket_with_peers_behind_a_loadbalancing_collector():
    docs = k8s_docs()
    sts = kind(docs, "StatefulSet", "skein")
    n = sts["spec"]["replicas"]
    assert n >= 2, "scale-out: several replicas"
    (c,) = [c for c in sts["spec"]["template"]["spec"]["containers"] if c["name"] == "skein"]
    env = {e["name"]: e for e in c.get("env", [])}
    assert env["SKEIN_NODE_ID"]["valueFrom"]["fieldRef"]["fieldPath"] == "metadata.name"
    peers = env["SKEIN_PEERS"]["value"].split(",")
    assert peers == [f"https://skein-{i}.skein-headless:3200" for i in range(n)], peers
    toml_text = (DEPLOY / "k8s" / "skein.toml").read_text()
    assert re.search(r'^storage\s*=\s*"s3://', toml_text, re.M), "one shared s3:// storage root"
    otel = yaml.safe_load((DEPLOY / "k8s" / "otelcol-config.yml").read_text())
    (lb,) = [v for k, v in otel["exporters"].items() if k.startswith("loadbalancing")]
    assert lb["routing_key"] == "traceID"
    assert any(p["exporters"] == [k for k in otel["exporters"] if k.startswith("loadbalancing")]
               for p in otel["service"]["pipelines"].values())

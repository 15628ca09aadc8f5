"""grafana/provisioning/** parse and follow Grafana's provisioning format
(grafana/REQUESTS.md, "Provisioning"): datasources wired together as that page recommends,
a file dashboard provider, Grafana-managed alert rules whose steps reference each other and whose
datasource and dashboard links exist. Offline; the rules' queries run in test_dashboards.py.
"""

from __future__ import annotations

import re

import pytest

from support import grafana as gf

CPU = "process_cpu:cpu:nanoseconds:cpu:nanoseconds"
DS_KEYS = {"name", "type", "uid", "access", "url", "isDefault", "jsonData", "secureJsonData", "version",
           "editable", "orgId", "basicAuth", "basicAuthUser", "withCredentials", "database", "user"}
RULE_KEYS = {"uid", "title", "condition", "data", "for", "noDataState", "execErrState", "isPaused",
             "annotations", "labels", "dashboardUid", "panelId", "notification_settings", "keepFiringFor",
             "missingSeriesEvalsToResolve", "record"}
GROUP_KEYS = {"orgId", "name", "folder", "interval", "rules"}
QUERY_KEYS = {"refId", "datasourceUid", "relativeTimeRange", "queryType", "model"}
EXPR_TYPES = {"reduce", "threshold", "math", "classic_conditions", "resample"}
# Grafana expands $VAR and ${VAR} from the environment in provisioning values; a literal $ is $$.
# A `$` Grafana would expand from the environment; `$__file{…}` (and `$__env{…}`) are meant.
ENV_REF = re.compile(r"(?<!\$)\$(?!\$)(?!__(?:file|env)\{)(\{?\w+)")


def datasource_files():
    return sorted((gf.PROVISIONING / "datasources").glob("*.y*ml"))


def test_provisioning_tree_has_the_three_kinds():
    assert datasource_files(), "no datasource provisioning"
    assert sorted((gf.PROVISIONING / "dashboards").glob("*.y*ml")), "no dashboard provider"
    assert gf.alert_rule_files(), "no alert rules"


@pytest.mark.parametrize("path", datasource_files(), ids=lambda p: p.name)
def test_datasource_file_format(path):
    doc = gf.load_yaml(path)
    assert doc["apiVersion"] == 1
    assert set(doc) <= {"apiVersion", "datasources", "deleteDatasources", "prune"}
    uids = [ds["uid"] for ds in doc["datasources"]]
    assert len(uids) == len(set(uids))
    assert sum(bool(ds.get("isDefault")) for ds in doc["datasources"]) <= 1, "more than one default datasource"
    for ds in doc["datasources"]:
        assert set(ds) <= DS_KEYS, f"{ds['uid']}: unknown keys {set(ds) - DS_KEYS}"
        assert {"name", "type", "uid", "url"} <= set(ds), ds
        assert ds["access"] == "proxy", ds["uid"]
        assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", ds["uid"]), ds["uid"]
    for s in gf.strings_in(doc):
        assert not ENV_REF.search(s), f"{s!r}: Grafana would expand ${ENV_REF.search(s).group(1)} from the environment; write $$"


def test_datasources_are_wired_together():
    ds = gf.provisioned_datasources()
    by_type = {}
    for d in ds.values():
        by_type.setdefault(d["type"], []).append(d)
    tempo, prom, pyro = ds["skein-tempo"], ds["skein-prometheus"], ds["skein-pyroscope"]
    assert (tempo["type"], prom["type"], pyro["type"]) == ("tempo", "prometheus", "grafana-pyroscope-datasource")
    assert tempo["url"] == "https://skein:3200"
    assert prom["url"] == "https://skein:3200/prometheus"
    assert pyro["url"] == "https://skein:3200/pyroscope"
    for d in (tempo, prom, pyro):
        # TLS with the deploy's CA and the read token as the basic-auth password.
        assert d["basicAuth"] is True and d["basicAuthUser"], d["uid"]
        assert d["jsonData"]["tlsAuthWithCACert"] is True, d["uid"]
        assert d["secureJsonData"] == {"basicAuthPassword": "$__file{/etc/skein/tls/read.token}",
                                       "tlsCACert": "$__file{/etc/skein/tls/ca.pem}"}, d["uid"]
    tj = tempo["jsonData"]
    assert tj["streamingEnabled"] == {"search": False, "metrics": False}, "streaming would need Tempo's gRPC API"
    assert tj["serviceMap"]["datasourceUid"] == "skein-prometheus"
    assert tj["nodeGraph"]["enabled"] is True
    t2m = tj["tracesToMetrics"]
    assert t2m["datasourceUid"] == "skein-prometheus"
    assert {"key": "service.name", "value": "service"} in t2m["tags"]
    for q in t2m["queries"]:
        # After provisioning's $$ -> $, Grafana replaces $__tags with service="<svc>".
        assert "{$$__tags" in q["query"] and "traces_spanmetrics_" in q["query"], q
    t2p = tj["tracesToProfiles"]
    assert t2p["datasourceUid"] == "skein-pyroscope" and ds[t2p["datasourceUid"]]["type"] == "grafana-pyroscope-datasource"
    assert t2p["profileTypeId"] == CPU
    assert {"key": "service.name", "value": "service_name"} in t2p["tags"]
    assert t2p.get("customQuery") is False
    pj = prom["jsonData"]
    assert pj["httpMethod"] == "POST"
    assert pj["exemplarTraceIdDestinations"] == [{"name": "trace_id", "datasourceUid": "skein-tempo"}]
    gf.parse_duration_ms(pj["timeInterval"])
    gf.parse_duration_ms(pyro["jsonData"]["minStep"])
    assert "features" not in pj
    # The self-monitoring Prometheus is a separate datasource (skein's /prometheus has span metrics only).
    assert ds["skein-self"]["type"] == "prometheus" and not ds["skein-self"]["url"].endswith("/prometheus")


def test_dashboard_provider_format():
    files = sorted((gf.PROVISIONING / "dashboards").glob("*.y*ml"))
    for f in files:
        doc = gf.load_yaml(f)
        assert doc["apiVersion"] == 1 and set(doc) == {"apiVersion", "providers"}
        for p in doc["providers"]:
            assert set(p) <= {"name", "orgId", "folder", "folderUid", "type", "disableDeletion",
                              "updateIntervalSeconds", "allowUiUpdates", "options"}, set(p)
            assert p["type"] == "file" and p["name"]
            assert set(p["options"]) <= {"path", "foldersFromFilesStructure"}
            assert p["options"]["path"].startswith("/"), "a path inside the Grafana container"


def rules():
    for f in gf.alert_rule_files():
        doc = gf.load_yaml(f)
        for g in doc.get("groups", []):
            for r in g["rules"]:
                yield f, g, r


@pytest.mark.parametrize("path", gf.alert_rule_files(), ids=lambda p: p.name)
def test_alert_file_format(path):
    doc = gf.load_yaml(path)
    assert doc["apiVersion"] == 1
    assert set(doc) <= {"apiVersion", "groups", "deleteRules", "contactPoints", "policies", "templates",
                        "muteTimes", "deleteContactPoints", "resetPolicies", "deleteTemplates", "deleteMuteTimes"}
    for g in doc["groups"]:
        assert set(g) == GROUP_KEYS, set(g) ^ GROUP_KEYS
        assert isinstance(g["orgId"], int) and g["name"] and g["folder"]
        assert re.fullmatch(r"\d+[smh]", g["interval"]), g["interval"]
        assert g["rules"]


@pytest.mark.parametrize("rule", [r for _, _, r in rules()], ids=lambda r: r["uid"])
def test_alert_rule_is_well_formed(rule):
    assert set(rule) <= RULE_KEYS, set(rule) - RULE_KEYS
    assert re.fullmatch(r"[a-zA-Z0-9_-]{1,40}", rule["uid"])
    assert rule["title"] and re.fullmatch(r"\d+[smh]", rule["for"])
    assert rule["noDataState"] in {"OK", "NoData", "Alerting", "KeepLast"}
    assert rule["execErrState"] in {"OK", "Error", "Alerting", "KeepLast"}
    datasources = gf.provisioned_datasources()
    seen = []
    for q in rule["data"]:
        assert set(q) <= QUERY_KEYS, set(q) - QUERY_KEYS
        assert q["model"]["refId"] == q["refId"]
        assert set(q["relativeTimeRange"]) == {"from", "to"} and q["relativeTimeRange"]["from"] > q["relativeTimeRange"]["to"] >= 0
        if q["datasourceUid"] == "__expr__":
            m = q["model"]
            assert m["type"] in EXPR_TYPES, m
            assert m["expression"] in seen, f"{q['refId']} refers to {m['expression']}, not an earlier step"
            if m["type"] == "threshold":
                (cond,) = m["conditions"]
                assert cond["evaluator"]["type"] in {"gt", "lt", "within_range", "outside_range"}
                assert all(isinstance(x, (int, float)) for x in cond["evaluator"]["params"])
            if m["type"] == "reduce":
                assert m["reducer"] in {"last", "mean", "max", "min", "sum", "count"}
        else:
            ds = datasources[q["datasourceUid"]]
            assert ds["type"] == "prometheus" and q["datasourceUid"] == "skein-prometheus"
            assert q["model"]["expr"] and q["model"].get("instant") is True
        seen.append(q["refId"])
    assert rule["condition"] == seen[-1], "the condition is the last (threshold) step"
    # Labels are env-expanded by Grafana (annotations are not): no bare $ there.
    for v in rule.get("labels", {}).values():
        assert not ENV_REF.search(v), v
    dash = gf.load_dashboards()[rule["dashboardUid"]]
    assert any(p["id"] == rule["panelId"] for p in gf.panels(dash)), "panelId not in the dashboard"


def test_env_reference_check_catches_a_bare_dollar_but_not_file_references():
    assert not ENV_REF.search("$__file{/etc/skein/tls/read.token}")
    assert ENV_REF.search('histogram_quantile(0.9, sum(rate(x{$__tags}[5m])) by (le))')
    assert not ENV_REF.search('histogram_quantile(0.9, sum(rate(x{$$__tags}[5m])) by (le))')

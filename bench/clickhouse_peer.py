#!/usr/bin/env python3
"""ClickHouse (embedded, via chdb) as the query peer of `skein-bench query`.

The table is Jaeger v2's ClickHouse span table: one row per span, typed key/value arrays per
attribute type at span, resource and scope level, MergeTree partitioned by day and ordered by
(service_name, name, toDateTime(start_time)), a bloom filter index on trace_id, minmax indexes
on start_time and duration, bloom filters on string attribute keys and values; plus its
trace_id_timestamps table (per trace min/max start, filled by a materialised view) that
search answers take start and end from.

Commands (JSON on stdout, progress on stderr):
  load --db DIR --rows DIR   create the tables, insert every rows/*.parquet, merge the parts
  run  --db DIR              stdin: {"queries": [{"name", "sql", "n", "params": [...]}]};
                             each query is run 2 times to warm up, then n times; "params" (if
                             given) are substituted for {} in turn, one per timed run
"""

import argparse
import glob
import json
import os
import sys
import time

from chdb import session

SCHEMA = [
    """
    CREATE TABLE IF NOT EXISTS spans (
        id String,
        trace_id String,
        trace_state String,
        parent_span_id String,
        name String,
        kind String,
        start_time DateTime64(9),
        status_code String,
        status_message String,
        duration Int64,
        bool_attributes Nested(key String, value Bool),
        double_attributes Nested(key String, value Float64),
        int_attributes Nested(key String, value Int64),
        str_attributes Nested(key String, value String),
        complex_attributes Nested(key String, value String),
        events Nested(name String, timestamp DateTime64(9)),
        links Nested(trace_id String, span_id String, trace_state String),
        service_name String,
        resource_bool_attributes Nested(key String, value Bool),
        resource_double_attributes Nested(key String, value Float64),
        resource_int_attributes Nested(key String, value Int64),
        resource_str_attributes Nested(key String, value String),
        resource_complex_attributes Nested(key String, value String),
        scope_name String,
        scope_version String,
        INDEX idx_trace_id trace_id TYPE bloom_filter GRANULARITY 1,
        INDEX idx_start_time start_time TYPE minmax GRANULARITY 1,
        INDEX idx_duration duration TYPE minmax GRANULARITY 1,
        INDEX idx_attributes_keys str_attributes.key TYPE bloom_filter GRANULARITY 1,
        INDEX idx_attributes_values str_attributes.value TYPE bloom_filter GRANULARITY 1,
        INDEX idx_resource_attributes_keys resource_str_attributes.key TYPE bloom_filter GRANULARITY 1,
        INDEX idx_resource_attributes_values resource_str_attributes.value TYPE bloom_filter GRANULARITY 1
    ) ENGINE = MergeTree
    PARTITION BY toDate(start_time)
    ORDER BY (service_name, name, toDateTime(start_time))
    """,
    """
    CREATE TABLE IF NOT EXISTS trace_id_timestamps (
        trace_id String,
        start SimpleAggregateFunction(min, DateTime64(9)),
        end SimpleAggregateFunction(max, DateTime64(9))
    ) ENGINE = AggregatingMergeTree() ORDER BY (trace_id)
    """,
    """
    CREATE MATERIALIZED VIEW IF NOT EXISTS trace_id_timestamps_mv TO trace_id_timestamps AS
    SELECT trace_id, min(start_time) AS start, max(start_time) AS end
    FROM spans GROUP BY trace_id
    """,
]

INSERT = """
INSERT INTO spans (id, trace_id, parent_span_id, name, kind, start_time, status_code,
    status_message, duration, int_attributes.key, int_attributes.value, str_attributes.key,
    str_attributes.value, service_name, resource_str_attributes.key,
    resource_str_attributes.value, scope_name, scope_version)
SELECT id, trace_id, parent_span_id, name, kind, fromUnixTimestamp64Nano(start_ns),
    status_code, status_message, duration, int_keys, int_values, str_keys, str_values,
    service_name, res_keys, res_values, scope_name, scope_version
FROM file('{path}', Parquet)
"""


def log(msg):
    print(f"clickhouse: {msg}", file=sys.stderr, flush=True)


def disk(s):
    out = {}
    for table in ("spans", "trace_id_timestamps"):
        r = s.query(
            "SELECT sum(bytes_on_disk), sum(rows), count() FROM system.parts "
            f"WHERE active AND database = currentDatabase() AND table = '{table}'",
            "JSONCompact",
        )
        row = json.loads(r.bytes())["data"][0]
        out[table] = {"bytes": int(row[0] or 0), "rows": int(row[1] or 0), "parts": int(row[2])}
    return out


def load(args):
    s = session.Session(args.db)
    for ddl in SCHEMA:
        s.query(ddl)
    files = sorted(glob.glob(os.path.join(args.rows, "*.parquet")))
    if not files:
        sys.exit(f"clickhouse: no Parquet files in {args.rows}")
    started = time.perf_counter()
    for k, path in enumerate(files):
        s.query(INSERT.format(path=os.path.abspath(path).replace("'", "\\'")))
        log(f"inserted {k + 1}/{len(files)} files")
    inserted = time.perf_counter() - started
    # Fully merged parts: the best case for ClickHouse's indexes and compression.
    s.query("OPTIMIZE TABLE spans FINAL")
    s.query("OPTIMIZE TABLE trace_id_timestamps FINAL")
    merged = time.perf_counter() - started
    out = {"insert_seconds": inserted, "merged_seconds": merged, "disk": disk(s)}
    out["version"] = json.loads(s.query("SELECT version()", "JSONCompact").bytes())["data"][0][0]
    json.dump(out, sys.stdout)


def run(args):
    spec = json.load(sys.stdin)
    s = session.Session(args.db)
    results = []
    for q in spec["queries"]:
        n = int(q.get("n", 20))
        params = q.get("params") or []
        sql = q["sql"]

        def text(i):
            return sql.replace("{}", params[i % len(params)]) if params else sql

        first = None
        error = None
        samples = []
        try:
            for i in range(2):
                r = s.query(text(i), "JSONCompact")
                if first is None:
                    first = json.loads(r.bytes())["data"]
            for i in range(n):
                t = time.perf_counter_ns()
                s.query(text(i), q.get("format", "JSONCompact"))
                samples.append(time.perf_counter_ns() - t)
        except Exception as e:  # reported, not fatal: the other queries still run
            error = str(e)[:500]
        results.append({"name": q["name"], "samples_ns": samples, "first": first, "error": error})
        log(f"{q['name']}: {len(samples)} runs")
    json.dump({"results": results, "disk": disk(s)}, sys.stdout)


def main():
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawTextHelpFormatter)
    sub = p.add_subparsers(dest="cmd", required=True)
    lp = sub.add_parser("load")
    lp.add_argument("--db", required=True)
    lp.add_argument("--rows", required=True)
    rp = sub.add_parser("run")
    rp.add_argument("--db", required=True)
    args = p.parse_args()
    {"load": load, "run": run}[args.cmd](args)


if __name__ == "__main__":
    main()

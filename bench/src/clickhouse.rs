//! ClickHouse as the peer of `skein-bench query`: the data set's rows in Jaeger v2's ClickHouse
//! span schema (written here as Parquet, loaded by `bench/clickhouse_peer.py` into an embedded
//! ClickHouse via chdb), the search mix as TraceQL for skein and SQL for ClickHouse, and the
//! per-query thresholds surveyed from the generated data so both get the same questions.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;

use arrow::array::{ArrayRef, Int64Builder, ListBuilder, RecordBatch, StringBuilder};
use arrow::datatypes::{DataType, Field, Schema, SchemaRef};
use opentelemetry_proto::tonic::common::v1::{KeyValue, any_value};
use parquet::arrow::ArrowWriter;
use parquet::basic::{Compression, ZstdLevel};
use parquet::file::properties::WriterProperties;
use serde::{Deserialize, Serialize};
use serde_json::{Value, json};

use super::BenchError;
use super::dataset::Generated;

/// Spans per Parquet file handed to ClickHouse.
const FILE_SPANS: usize = 1_000_000;
pub const SERVICE: &str = "svc-3";
pub const ROOT_SERVICE: &str = "svc-1";
pub const USER: &str = "user-4242";
/// An operation of `SERVICE` (the generator's first operation of service 3).
pub const OPERATION: &str = "Update payments";

/// Thresholds of the mix, surveyed from the generated data.
#[derive(Debug, Clone, Copy, Default, Serialize, Deserialize, PartialEq)]
pub struct MixParams {
    /// Median duration (ms) of `SERVICE`'s spans in the burst: ~5 % of the burst's spans match.
    pub burst_ms: u64,
    /// Below the 6th longest `SERVICE` span of the window (ms): a handful of traces match.
    pub rare_ms: u64,
    /// 99th percentile (ms) of `ROOT_SERVICE`'s root spans in the window.
    pub root_ms: u64,
}

/// Collects what [`MixParams`] needs while the data set is generated.
#[derive(Default)]
pub struct Survey {
    burst: Vec<u64>,
    window: Vec<u64>,
    roots: Vec<u64>,
}

impl Survey {
    pub fn add(&mut self, g: &Generated, burst_from: u64, window_from: u64) {
        for rs in &g.req.resource_spans {
            let svc = service(rs.resource.as_ref().map(|r| r.attributes.as_slice()));
            let (ours, root_svc) = (svc == SERVICE, svc == ROOT_SERVICE);
            if !ours && !root_svc {
                continue;
            }
            for s in rs.scope_spans.iter().flat_map(|s| &s.spans) {
                let d = s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano);
                if ours && s.start_time_unix_nano >= window_from {
                    self.window.push(d);
                    if s.start_time_unix_nano >= burst_from {
                        self.burst.push(d);
                    }
                }
                if root_svc && s.parent_span_id.is_empty() && s.start_time_unix_nano >= window_from
                {
                    self.roots.push(d);
                }
            }
        }
    }

    pub fn finish(mut self) -> MixParams {
        self.burst.sort_unstable();
        self.window.sort_unstable_by(|a, b| b.cmp(a));
        self.roots.sort_unstable();
        let ms = |ns: Option<&u64>| ns.map(|v| v / 1_000_000).unwrap_or(0);
        fn q(v: &[u64], p: f64) -> Option<&u64> {
            v.get(((v.len() as f64 * p) as usize).min(v.len().max(1) - 1))
        }
        MixParams {
            burst_ms: ms(q(&self.burst, 0.5)),
            rare_ms: ms(self.window.get(5)),
            root_ms: ms(q(&self.roots, 0.99)),
        }
    }
}

fn service(attrs: Option<&[KeyValue]>) -> &str {
    attrs
        .unwrap_or_default()
        .iter()
        .find(|kv| kv.key == "service.name")
        .and_then(|kv| kv.value.as_ref()?.value.as_ref())
        .and_then(|v| match v {
            any_value::Value::StringValue(s) => Some(s.as_str()),
            _ => None,
        })
        .unwrap_or("")
}

/// One question of the mix, in both languages, over a window of unix seconds.
#[derive(Debug, Clone)]
pub struct MixQuery {
    pub name: String,
    pub traceql: String,
    pub window: (u64, u64),
    pub sql: String,
}

/// `start_time` within the window as skein reads it (end second inclusive).
fn window_sql(w: (u64, u64)) -> String {
    format!(
        "start_time BETWEEN fromUnixTimestamp64Nano(toInt64({})) AND fromUnixTimestamp64Nano(toInt64({}))",
        w.0 * 1_000_000_000,
        w.1 * 1_000_000_000 + 999_999_999
    )
}

/// The 20 most recent traces with a span matching `filter` (`GROUP BY trace_id LIMIT 20`),
/// with their start and end from `trace_id_timestamps`, as a Jaeger search answers.
fn one_spanset(filter: &str, w: (u64, u64)) -> String {
    format!(
        "WITH l AS (SELECT trace_id, max(start_time) AS last FROM spans WHERE {} AND ({filter}) \
         GROUP BY trace_id ORDER BY last DESC LIMIT 20) \
         SELECT trace_id, min(start), max(end) FROM trace_id_timestamps \
         WHERE trace_id IN (SELECT trace_id FROM l) GROUP BY trace_id",
        window_sql(w)
    )
}

/// Traces with a span matching each of two filters.
fn two_spansets(a: &str, b: &str, w: (u64, u64)) -> String {
    format!(
        "WITH l AS (SELECT trace_id, max(start_time) AS last FROM spans WHERE {} AND (({a}) OR ({b})) \
         GROUP BY trace_id HAVING countIf({a}) > 0 AND countIf({b}) > 0 \
         ORDER BY last DESC LIMIT 20) \
         SELECT trace_id, min(start), max(end) FROM trace_id_timestamps \
         WHERE trace_id IN (SELECT trace_id FROM l) GROUP BY trace_id",
        window_sql(w)
    )
}

/// The search mix. `burst` and `hour` are windows of unix seconds.
pub fn mix(p: &MixParams, burst: (u64, u64), hour: (u64, u64)) -> Vec<MixQuery> {
    let q = |name: &str, traceql: String, window, sql| MixQuery {
        name: name.to_string(),
        traceql,
        window,
        sql,
    };
    let svc = format!("service_name = '{SERVICE}'");
    vec![
        q(
            "(a) service + duration, 5 % of a burst",
            format!(r#"{{ resource.service.name = "{SERVICE}" && duration > {}ms }}"#, p.burst_ms),
            burst,
            one_spanset(&format!("{svc} AND duration > {}", p.burst_ms * 1_000_000), burst),
        ),
        q(
            "(b) service + duration, a few traces in 1 h",
            format!(r#"{{ resource.service.name = "{SERVICE}" && duration > {}ms }}"#, p.rare_ms),
            hour,
            one_spanset(&format!("{svc} AND duration > {}", p.rare_ms * 1_000_000), hour),
        ),
        q(
            "span attribute = (enduser.id, 100k values)",
            format!(r#"{{ span.enduser.id = "{USER}" }}"#),
            hour,
            one_spanset(
                &format!(
                    "arrayExists((k, v) -> k = 'enduser.id' AND v = '{USER}', str_attributes.key, str_attributes.value)"
                ),
                hour,
            ),
        ),
        q(
            "status = error",
            "{ status = error }".into(),
            hour,
            one_spanset("status_code = 'Error'", hour),
        ),
        q(
            "name = …",
            format!(r#"{{ name = "{OPERATION}" }}"#),
            hour,
            one_spanset(&format!("name = '{OPERATION}'"), hour),
        ),
        q(
            "rootServiceName + traceDuration",
            format!(
                r#"{{ rootServiceName = "{ROOT_SERVICE}" && traceDuration > {}ms }}"#,
                p.root_ms
            ),
            hour,
            // The generator's children end within their parents: a root's duration is its
            // trace's.
            one_spanset(
                &format!(
                    "parent_span_id = '' AND service_name = '{ROOT_SERVICE}' AND duration > {}",
                    p.root_ms * 1_000_000
                ),
                hour,
            ),
        ),
        q(
            "two spansets &&",
            format!(
                r#"{{ resource.service.name = "{SERVICE}" && status = error }} && {{ resource.service.name = "svc-5" && duration > 100ms }}"#
            ),
            hour,
            two_spansets(
                &format!("{svc} AND status_code = 'Error'"),
                "service_name = 'svc-5' AND duration > 100000000",
                hour,
            ),
        ),
    ]
}

/// Trace by id as Jaeger's ClickHouse reader asks it: every column, no time range.
pub const TRACE_BY_ID_SQL: &str = "SELECT * FROM spans WHERE trace_id = '{}'";

fn rows_schema() -> SchemaRef {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    let list = |n: &str, t: DataType| {
        Field::new(n, DataType::List(Arc::new(Field::new("item", t, true))), false)
    };
    Arc::new(Schema::new(vec![
        s("id"),
        s("trace_id"),
        s("parent_span_id"),
        s("name"),
        s("kind"),
        Field::new("start_ns", DataType::Int64, false),
        s("status_code"),
        s("status_message"),
        Field::new("duration", DataType::Int64, false),
        list("int_keys", DataType::Utf8),
        list("int_values", DataType::Int64),
        list("str_keys", DataType::Utf8),
        list("str_values", DataType::Utf8),
        s("service_name"),
        list("res_keys", DataType::Utf8),
        list("res_values", DataType::Utf8),
        s("scope_name"),
        s("scope_version"),
    ]))
}

/// Builds Jaeger-schema rows from generated requests and writes them as Parquet files.
pub struct RowsWriter {
    dir: PathBuf,
    files: usize,
    rows: Builders,
}

#[derive(Default)]
struct Builders {
    n: usize,
    strs: [StringBuilder; 7],
    start: Int64Builder,
    duration: Int64Builder,
    int_keys: ListBuilder<StringBuilder>,
    int_values: ListBuilder<Int64Builder>,
    str_keys: ListBuilder<StringBuilder>,
    str_values: ListBuilder<StringBuilder>,
    service: StringBuilder,
    res_keys: ListBuilder<StringBuilder>,
    res_values: ListBuilder<StringBuilder>,
    scope: [StringBuilder; 2],
}

fn kind_name(k: i32) -> &'static str {
    match k {
        1 => "Internal",
        2 => "Server",
        3 => "Client",
        4 => "Producer",
        5 => "Consumer",
        _ => "Unspecified",
    }
}

impl RowsWriter {
    pub fn new(dir: &Path) -> Result<Self, BenchError> {
        std::fs::create_dir_all(dir)
            .map_err(|e| BenchError::Failed(format!("{}: {e}", dir.display())))?;
        Ok(RowsWriter { dir: dir.to_path_buf(), files: 0, rows: Builders::default() })
    }

    pub fn add(&mut self, g: &Generated) -> Result<(), BenchError> {
        let b = &mut self.rows;
        for rs in &g.req.resource_spans {
            let attrs = rs.resource.as_ref().map(|r| r.attributes.as_slice());
            let svc = service(attrs);
            let res: Vec<(&str, String)> = attrs
                .unwrap_or_default()
                .iter()
                .filter(|kv| kv.key != "service.name")
                .filter_map(|kv| match kv.value.as_ref()?.value.as_ref()? {
                    any_value::Value::StringValue(s) => Some((kv.key.as_str(), s.clone())),
                    _ => None,
                })
                .collect();
            for ss in &rs.scope_spans {
                let (scope_name, scope_version) = ss
                    .scope
                    .as_ref()
                    .map(|s| (s.name.as_str(), s.version.as_str()))
                    .unwrap_or(("", ""));
                for s in &ss.spans {
                    let status = s.status.as_ref();
                    let code = match status.map(|s| s.code).unwrap_or(0) {
                        1 => "Ok",
                        2 => "Error",
                        _ => "Unset",
                    };
                    let parent = if s.parent_span_id.is_empty() {
                        String::new()
                    } else {
                        hex::encode(&s.parent_span_id)
                    };
                    let vals = [
                        hex::encode(&s.span_id),
                        hex::encode(&s.trace_id),
                        parent,
                        s.name.clone(),
                        kind_name(s.kind).to_string(),
                        code.to_string(),
                        status.map(|s| s.message.clone()).unwrap_or_default(),
                    ];
                    for (builder, v) in b.strs.iter_mut().zip(vals) {
                        builder.append_value(v);
                    }
                    b.start.append_value(s.start_time_unix_nano as i64);
                    b.duration.append_value(
                        s.end_time_unix_nano.saturating_sub(s.start_time_unix_nano) as i64,
                    );
                    for kv in &s.attributes {
                        match kv.value.as_ref().and_then(|v| v.value.as_ref()) {
                            Some(any_value::Value::IntValue(i)) => {
                                b.int_keys.values().append_value(&kv.key);
                                b.int_values.values().append_value(*i);
                            }
                            Some(any_value::Value::StringValue(v)) => {
                                b.str_keys.values().append_value(&kv.key);
                                b.str_values.values().append_value(v);
                            }
                            _ => {}
                        }
                    }
                    for l in [&mut b.int_keys, &mut b.str_keys, &mut b.str_values] {
                        l.append(true);
                    }
                    b.int_values.append(true);
                    b.service.append_value(svc);
                    for (k, v) in &res {
                        b.res_keys.values().append_value(k);
                        b.res_values.values().append_value(v);
                    }
                    b.res_keys.append(true);
                    b.res_values.append(true);
                    b.scope[0].append_value(scope_name);
                    b.scope[1].append_value(scope_version);
                    b.n += 1;
                }
            }
        }
        if self.rows.n >= FILE_SPANS {
            self.flush()?;
        }
        Ok(())
    }

    fn flush(&mut self) -> Result<(), BenchError> {
        let mut b = std::mem::take(&mut self.rows);
        if b.n == 0 {
            return Ok(());
        }
        let [id, trace, parent, name, kind, code, message] = &mut b.strs;
        let [scope_name, scope_version] = &mut b.scope;
        let cols: Vec<ArrayRef> = vec![
            Arc::new(id.finish()),
            Arc::new(trace.finish()),
            Arc::new(parent.finish()),
            Arc::new(name.finish()),
            Arc::new(kind.finish()),
            Arc::new(b.start.finish()),
            Arc::new(code.finish()),
            Arc::new(message.finish()),
            Arc::new(b.duration.finish()),
            Arc::new(b.int_keys.finish()),
            Arc::new(b.int_values.finish()),
            Arc::new(b.str_keys.finish()),
            Arc::new(b.str_values.finish()),
            Arc::new(b.service.finish()),
            Arc::new(b.res_keys.finish()),
            Arc::new(b.res_values.finish()),
            Arc::new(scope_name.finish()),
            Arc::new(scope_version.finish()),
        ];
        let fail = |e: &dyn std::fmt::Display| BenchError::Failed(format!("ClickHouse rows: {e}"));
        // The builders' list fields are nullable items; the schema says so too.
        let batch = RecordBatch::try_new(rows_schema(), cols).map_err(|e| fail(&e))?;
        let path = self.dir.join(format!("part-{:04}.parquet", self.files));
        let file = std::fs::File::create(&path).map_err(|e| fail(&e))?;
        let props = WriterProperties::builder()
            .set_compression(Compression::ZSTD(ZstdLevel::try_new(1).map_err(|e| fail(&e))?))
            .build();
        let mut w =
            ArrowWriter::try_new(file, batch.schema(), Some(props)).map_err(|e| fail(&e))?;
        w.write(&batch).map_err(|e| fail(&e))?;
        w.close().map_err(|e| fail(&e))?;
        self.files += 1;
        Ok(())
    }

    pub fn finish(mut self) -> Result<(), BenchError> {
        self.flush()
    }
}

/// Python with chdb: the flag, else `.venv-bench/bin/python` in or above the current
/// directory or this executable.
pub fn find_python(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().map(Path::to_path_buf));
    }
    roots.into_iter().map(|r| r.join(".venv-bench/bin/python")).find(|p| p.is_file())
}

/// `bench/clickhouse_peer.py`, beside this crate's sources.
fn script() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("clickhouse_peer.py")
}

/// Runs the peer script with `args` and `input` on stdin; its JSON output.
pub async fn peer(python: &Path, args: &[&str], input: Value) -> Result<Value, BenchError> {
    use tokio::io::AsyncWriteExt;
    let mut child = tokio::process::Command::new(python)
        .arg(script())
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::inherit())
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start {}: {e}", python.display())))?;
    if let Some(mut stdin) = child.stdin.take() {
        let body = serde_json::to_vec(&input).map_err(|e| BenchError::Failed(e.to_string()))?;
        stdin.write_all(&body).await.map_err(|e| BenchError::Failed(e.to_string()))?;
    }
    let out = child.wait_with_output().await.map_err(|e| BenchError::Failed(e.to_string()))?;
    if !out.status.success() {
        return Err(BenchError::Failed(format!("clickhouse peer {args:?} failed: {}", out.status)));
    }
    serde_json::from_slice(&out.stdout)
        .map_err(|e| BenchError::Failed(format!("clickhouse peer {args:?}: bad output: {e}")))
}

/// The query list the peer's `run` takes.
pub fn run_spec(mix: &[MixQuery], n: usize, trace_ids: &[String], trace_n: usize) -> Value {
    let mut queries: Vec<Value> = vec![json!({
        "name": "trace by id",
        "sql": TRACE_BY_ID_SQL,
        "n": trace_n,
        "params": trace_ids,
        "format": "Arrow",
    })];
    queries.extend(mix.iter().map(|q| json!({ "name": q.name, "sql": q.sql, "n": n })));
    json!({ "queries": queries })
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;
    use crate::dataset::{DataSpec, Rng, TraceGenerator};

    #[test]
    fn survey_thresholds_split_the_service_spans_as_intended() {
        let g = TraceGenerator::new(DataSpec::new(10, 11));
        let mut rng = Rng::new(7);
        let mut survey = Survey::default();
        let mut burst = Vec::new();
        for _ in 0..50 {
            let out = g.request(&mut rng, 100, 1_000_000_000, 2_000_000_000);
            survey.add(&out, 1_500_000_000, 0);
            for rs in &out.req.resource_spans {
                if service(rs.resource.as_ref().map(|r| r.attributes.as_slice())) == SERVICE {
                    burst.extend(
                        rs.scope_spans
                            .iter()
                            .flat_map(|s| &s.spans)
                            .filter(|s| s.start_time_unix_nano >= 1_500_000_000)
                            .map(|s| s.end_time_unix_nano - s.start_time_unix_nano),
                    );
                }
            }
        }
        let p = survey.finish();
        let above = burst.iter().filter(|d| **d > p.burst_ms * 1_000_000).count();
        let share = above as f64 / burst.len() as f64;
        assert!((0.4..=0.6).contains(&share), "{share}");
        assert!(p.rare_ms > p.burst_ms && p.root_ms > 0, "{p:?}");
    }

    #[test]
    fn the_operation_queried_is_one_the_generator_makes_for_the_service() {
        let g = TraceGenerator::new(DataSpec::new(10, 11));
        let mut rng = Rng::new(3);
        let out = g.request(&mut rng, 200, 0, 1_000_000);
        let found = out.req.resource_spans.iter().any(|rs| {
            service(rs.resource.as_ref().map(|r| r.attributes.as_slice())) == SERVICE
                && rs.scope_spans.iter().flat_map(|s| &s.spans).any(|s| s.name == OPERATION)
        });
        assert!(found);
    }

    #[test]
    fn rows_are_written_as_parquet_files_of_the_jaeger_columns() {
        let dir = std::env::temp_dir().join(format!("skein-ch-rows-{}", std::process::id()));
        let g = TraceGenerator::new(DataSpec::new(10, 11));
        let mut rng = Rng::new(1);
        let mut w = RowsWriter::new(&dir).unwrap();
        w.add(&g.request(&mut rng, 10, 0, 1_000_000)).unwrap();
        w.finish().unwrap();
        let f = std::fs::File::open(dir.join("part-0000.parquet")).unwrap();
        let r = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(f).unwrap();
        assert_eq!(r.metadata().file_metadata().num_rows(), 100);
        assert_eq!(r.schema().fields().len(), rows_schema().fields().len());
        std::fs::remove_dir_all(dir).unwrap();
    }
}

//! `skein-bench scale`: TraceQL search over one data set (the `query` benchmark's shape) with
//! 1, 2 and 3 replicas sharing one storage root and the work of each search.
//!
//! The data set is loaded once into replica `r0` (its blocks in `nodes/r0/` of the shared
//! root) and settled; then, for each replica count, that many `skein serve` share the root
//! (`--node-id rK`, the others as `--peers`) and the same searches are sent to `r0`, which
//! deals the blocks out to itself and the peers and merges their parts. On one machine the
//! replicas share the CPUs, so what is reported is the work: CPU seconds each replica spent per
//! search (read from /proc), their sum against one replica's (the cost of splitting and
//! merging: HTTP, JSON, planning each share, phase 2 and the merge on `r0`), the shares handed
//! out, and latency as measured; and every replica count must give the one-replica answer.

use std::path::Path;
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use super::ingest::fetch_metrics;
use super::procs::{self, ScratchDir, SkeinPorts, Spawned};
use super::query::{MANIFEST, Manifest, QueryArgs, load, load_manifest, search_path, settle};
use super::report::{Report, Row, Samples, Summary, fmt_count, fmt_ms, machine_line};
use super::{BenchError, parse_duration};

#[derive(Debug, Clone, clap::Args)]
pub struct ScaleArgs {
    #[command(flatten)]
    pub data: QueryArgs,
    /// Measure 1, 2, … up to this many replicas.
    #[arg(long, default_value_t = 3)]
    pub replicas: usize,
    /// `--peer-timeout` of the replicas.
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    pub peer_timeout: Duration,
}

/// The searches measured (the query benchmark's, plus a span attribute and a status).
const SEARCHES: [(&str, &str); 4] = [
    ("service + duration > 500ms", r#"{ resource.service.name = "svc-3" && duration > 500ms }"#),
    ("service", r#"{ resource.service.name = "svc-3" }"#),
    ("span attribute", r#"{ span.http.status_code = 500 }"#),
    ("status = error", r#"{ status = error }"#),
];

const SHARE_ENDPOINT: &str = "search-part";
/// The header of an answer that lacks a peer's part.
const PARTIAL_HEADER: &str = "x-skein-partial";

/// One replica count's figures for one search.
struct Measured {
    latency: Option<Summary>,
    /// CPU seconds per search, per replica (r0 first).
    cpu_per_search: Vec<f64>,
    /// Shares r0 handed to peers per search.
    shares_per_search: f64,
    /// Mean time a peer took for one share (seconds), over all peers.
    share_seconds: Option<f64>,
    /// Trace ids of the first answer, in order.
    answer: Vec<String>,
    failures: usize,
    first_failure: Option<String>,
}

struct Replica {
    proc: Spawned,
    base: String,
}

fn storage_url(root: &Path) -> String {
    format!("file://{}", root.display())
}

fn node_id(i: usize) -> String {
    format!("r{i}")
}

/// Starts `n` replicas over `shared`, each naming the others as peers.
async fn start_replicas(
    args: &ScaleArgs,
    data: &Path,
    shared: &Path,
    n: usize,
) -> Result<Vec<Replica>, BenchError> {
    let ports: Vec<SkeinPorts> = (0..n).map(|_| SkeinPorts::free()).collect::<Result<_, _>>()?;
    let mut out = Vec::with_capacity(n);
    for (i, p) in ports.iter().enumerate() {
        let peers: Vec<String> = ports
            .iter()
            .enumerate()
            .filter(|(j, _)| *j != i)
            .map(|(_, q)| format!("http://{}", q.http))
            .collect();
        let mut extra = vec![
            format!("--storage={}", storage_url(shared)),
            format!("--node-id={}", node_id(i)),
            format!("--peer-timeout={}", humantime::format_duration(args.peer_timeout)),
            "--peer-poll-interval=1s".to_string(),
        ];
        if !peers.is_empty() {
            extra.push(format!("--peers={}", peers.join(",")));
        }
        extra.extend(args.data.serve_args.iter().cloned());
        let dir = data.join(node_id(i));
        std::fs::create_dir_all(&dir)
            .map_err(|e| BenchError::Failed(format!("{}: {e}", dir.display())))?;
        let proc = procs::spawn_skein_on(*p, &dir, &args.data.fsync, &extra).await?;
        out.push(Replica { proc, base: format!("http://{}", p.http) });
    }
    Ok(out)
}

async fn stop_all(replicas: Vec<Replica>) {
    for r in replicas {
        r.proc.stop().await;
    }
}

/// Sum of `name{…}` samples whose labels contain `labels` (e.g. `endpoint="search-part"`).
fn labelled_sum(text: &str, name: &str, labels: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.strip_prefix(name)?.strip_prefix('{'))
        .filter(|rest| rest.split('}').next().is_some_and(|ls| ls.contains(labels)))
        .filter_map(|rest| rest.rsplit(' ').next()?.parse::<f64>().ok())
        .sum()
}

async fn metrics_of(http: &reqwest::Client, r: &Replica) -> String {
    match r.proc.http {
        Some(a) => fetch_metrics(http, a).await.unwrap_or_default(),
        None => String::new(),
    }
}

/// Waits until every replica sees `blocks` blocks of `r0`'s namespace (peers list it on
/// start and every poll interval).
async fn wait_listed(
    http: &reqwest::Client,
    replicas: &mut [Replica],
    blocks: f64,
) -> Result<(), BenchError> {
    let deadline = Instant::now() + Duration::from_secs(120);
    for r in replicas.iter_mut().skip(1) {
        loop {
            r.proc.check_alive()?;
            let text = metrics_of(http, r).await;
            let seen = labelled_sum(&text, "skein_peer_namespace_blocks", "namespace=\"r0\"");
            if seen >= blocks {
                break;
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "{} lists {seen} of r0's {blocks} blocks after 120 s",
                    r.base
                )));
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
    Ok(())
}

fn trace_ids(body: &[u8]) -> Vec<String> {
    let v: Value = serde_json::from_slice(body).unwrap_or_default();
    v["traces"]
        .as_array()
        .map(|a| {
            a.iter().filter_map(|t| t["traceID"].as_str()).map(|s| format!("{s:0>32}")).collect()
        })
        .unwrap_or_default()
}

async fn get(http: &reqwest::Client, base: &str, path: &str) -> Result<Vec<u8>, String> {
    let r = http
        .get(format!("{base}{path}"))
        .header("accept", "application/json")
        .send()
        .await
        .map_err(|e| e.to_string())?;
    let status = r.status();
    // An answer that lacks a peer's part is not the whole answer.
    let partial =
        r.headers().get(PARTIAL_HEADER).map(|v| String::from_utf8_lossy(v.as_bytes()).into_owned());
    let body = r.bytes().await.map_err(|e| e.to_string())?;
    if !status.is_success() {
        return Err(format!(
            "HTTP {status}: {}",
            String::from_utf8_lossy(&body[..body.len().min(300)])
        ));
    }
    if let Some(p) = partial {
        return Err(format!("partial answer: {p}"));
    }
    Ok(body.to_vec())
}

async fn measure(http: &reqwest::Client, replicas: &[Replica], path: &str, n: usize) -> Measured {
    let asked = &replicas[0];
    let mut answer = Vec::new();
    let (mut failures, mut first_failure) = (0, None);
    // Warm-up: caches of file metadata and listings, the peers' connections.
    for k in 0..3 {
        match get(http, &asked.base, path).await {
            Ok(body) if k == 0 => answer = trace_ids(&body),
            Ok(_) => {}
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let cpu = |rs: &[Replica]| -> Vec<f64> {
        rs.iter().map(|r| procs::cpu_seconds(&r.proc.pid.to_string()).unwrap_or(f64::NAN)).collect()
    };
    let before_metrics = futures_all(http, replicas).await;
    let cpu_before = cpu(replicas);
    let mut samples = Samples::default();
    for _ in 0..n {
        let started = Instant::now();
        match get(http, &asked.base, path).await {
            Ok(_) => samples.push(started.elapsed()),
            Err(e) => {
                failures += 1;
                first_failure.get_or_insert(e);
            }
        }
    }
    let cpu_after = cpu(replicas);
    let after_metrics = futures_all(http, replicas).await;
    let runs = n.max(1) as f64;
    let cpu_per_search = cpu_before.iter().zip(&cpu_after).map(|(a, b)| (b - a) / runs).collect();
    let count = |text: &str, name: &str, labels: &str| labelled_sum(text, name, labels);
    let shares = count(
        &after_metrics[0],
        "skein_peer_request_duration_seconds_count",
        &format!("endpoint=\"{SHARE_ENDPOINT}\""),
    ) - count(
        &before_metrics[0],
        "skein_peer_request_duration_seconds_count",
        &format!("endpoint=\"{SHARE_ENDPOINT}\""),
    );
    let (mut part_secs, mut parts) = (0.0, 0.0);
    for (b, a) in before_metrics.iter().zip(&after_metrics).skip(1) {
        let q = "endpoint=\"search_part\"";
        part_secs += count(a, "skein_query_duration_seconds_sum", q)
            - count(b, "skein_query_duration_seconds_sum", q);
        parts += count(a, "skein_query_duration_seconds_count", q)
            - count(b, "skein_query_duration_seconds_count", q);
    }
    Measured {
        latency: samples.summary(),
        cpu_per_search,
        shares_per_search: shares / runs,
        share_seconds: (parts > 0.0).then(|| part_secs / parts),
        answer,
        failures,
        first_failure,
    }
}

async fn futures_all(http: &reqwest::Client, replicas: &[Replica]) -> Vec<String> {
    let mut out = Vec::with_capacity(replicas.len());
    for r in replicas {
        out.push(metrics_of(http, r).await);
    }
    out
}

/// Loads the data set into `r0` alone (unless `data` holds it from an earlier run) and waits
/// until it is all in blocks and compaction has settled; returns it and `r0`'s block count.
async fn prepare(
    args: &ScaleArgs,
    data: &Path,
    shared: &Path,
    http: &reqwest::Client,
) -> Result<(Manifest, f64, bool), BenchError> {
    let reused = load_manifest(data, &args.data);
    let was_reused = reused.is_some();
    let mut extra = vec![
        format!("--head-max-age={}", args.data.head_max_age),
        format!("--storage={}", storage_url(shared)),
        format!("--node-id={}", node_id(0)),
    ];
    extra.extend(args.data.serve_args.iter().cloned());
    let dir = data.join(node_id(0));
    std::fs::create_dir_all(&dir)
        .map_err(|e| BenchError::Failed(format!("{}: {e}", dir.display())))?;
    let mut serve = procs::spawn_skein(&dir, &args.data.fsync, &extra).await?;
    let manifest = match reused {
        Some(m) => {
            eprintln!(
                "reusing the data set in {} ({} spans)",
                data.display(),
                fmt_count(m.spans as f64)
            );
            m
        }
        None => match load(&args.data, &serve, &data.join(MANIFEST)).await {
            Ok(m) => m,
            Err(e) => {
                serve.stop().await;
                return Err(e);
            }
        },
    };
    let settled = settle(&args.data, &mut serve, http).await;
    serve.stop().await;
    let (blocks, _) = settled?;
    Ok((manifest, blocks, was_reused))
}

pub async fn run(args: ScaleArgs) -> Result<(), BenchError> {
    if args.replicas == 0 || args.data.search_queries == 0 {
        return Err(BenchError::Usage("--replicas and --search-queries must be > 0".into()));
    }
    if args.data.window > args.data.spread {
        return Err(BenchError::Usage("--window must not exceed --spread".into()));
    }
    let scratch = ScratchDir::new(args.data.scratch_dir.as_deref(), "skein-bench-scale")?;
    let data = match &args.data.data_dir {
        Some(d) => std::path::absolute(d).map_err(|e| BenchError::Failed(e.to_string()))?,
        None => scratch.path.join("data"),
    };
    let shared = data.join("shared");
    std::fs::create_dir_all(&shared)
        .map_err(|e| BenchError::Failed(format!("{}: {e}", shared.display())))?;
    let http = reqwest::Client::new();
    let (manifest, blocks, was_reused) = prepare(&args, &data, &shared, &http).await?;
    let end_s = manifest.to_ns / 1_000_000_000;
    let start_s = end_s.saturating_sub(args.data.window.as_secs());

    // results[count - 1][search]
    let mut results: Vec<Vec<Measured>> = Vec::new();
    for n in 1..=args.replicas {
        eprintln!("{n} replica(s) over {} blocks", blocks);
        let mut replicas = start_replicas(&args, &data, &shared, n).await?;
        if let Err(e) = wait_listed(&http, &mut replicas, blocks).await {
            stop_all(replicas).await;
            return Err(e);
        }
        let mut row = Vec::new();
        for (label, q) in SEARCHES {
            eprintln!("  search {label}");
            let path = search_path(q, start_s, end_s);
            row.push(measure(&http, &replicas, &path, args.data.search_queries).await);
        }
        let mut alive = Ok(());
        for r in replicas.iter_mut() {
            alive = alive.and(r.proc.check_alive());
        }
        stop_all(replicas).await;
        alive?;
        results.push(row);
    }
    if args.data.data_dir.is_none() {
        drop(scratch);
    }
    report(&args, &manifest, blocks, was_reused, &results, start_s, end_s)
}

fn report(
    args: &ScaleArgs,
    manifest: &Manifest,
    blocks: f64,
    was_reused: bool,
    results: &[Vec<Measured>],
    start_s: u64,
    end_s: u64,
) -> Result<(), BenchError> {
    let ms = |s: f64| format!("{:.1} ms", s * 1e3);
    let mut rows = vec![Row::new("data set spans", fmt_count(manifest.spans as f64))];
    let mut notes = Vec::new();
    let mut data = Vec::new();
    for (si, (label, q)) in SEARCHES.iter().enumerate() {
        let Some(one) = results.first().and_then(|r| r.get(si)) else { continue };
        let one_cpu: f64 = one.cpu_per_search.iter().sum();
        for (ni, per) in results.iter().enumerate() {
            let Some(m) = per.get(si) else { continue };
            let n = ni + 1;
            let total: f64 = m.cpu_per_search.iter().sum();
            let lat = match m.latency {
                Some(l) => format!("{} / {}", fmt_ms(l.p50), fmt_ms(l.p99)),
                None => "—".into(),
            };
            let per_replica: Vec<String> = m.cpu_per_search.iter().map(|c| ms(*c)).collect();
            rows.push(Row::new(&format!("{label}: {n} replica(s), p50 / p99 at r0"), lat));
            rows.push(
                Row::new(
                    &format!("{label}: {n} replica(s), CPU per search (r0, r1, …)"),
                    per_replica.join(", "),
                )
                .peer(
                    format!("1 replica: {}", ms(one_cpu)),
                    (one_cpu > 0.0).then(|| total / one_cpu),
                ),
            );
            let same = m.answer == one.answer;
            if !same {
                notes.push(format!(
                    "{label}, {n} replicas: the answer differs from one replica's ({} vs {} traces)",
                    m.answer.len(),
                    one.answer.len()
                ));
            }
            if m.failures > 0 {
                notes.push(format!(
                    "{label}, {n} replicas: {} failed requests; first: {}",
                    m.failures,
                    m.first_failure.as_deref().unwrap_or("?")
                ));
            }
            if n > 1 {
                notes.push(format!(
                    "{label}, {n} replicas: {:.1} shares handed to peers per search, a peer's share took {} on average",
                    m.shares_per_search,
                    m.share_seconds.map(ms).unwrap_or_else(|| "—".into())
                ));
            }
            data.push(json!({
                "search": label,
                "query": q,
                "replicas": n,
                "latency": m.latency.map(|l| l.json()),
                "cpu_seconds_per_search": m.cpu_per_search,
                "cpu_total_vs_one_replica": (one_cpu > 0.0).then(|| total / one_cpu),
                "shares_per_search": m.shares_per_search,
                "peer_share_seconds_mean": m.share_seconds,
                "traces_in_answer": m.answer.len(),
                "same_answer_as_one_replica": same,
                "failures": m.failures,
            }));
        }
    }
    notes.push(format!(
        "search window [{start_s}, {end_s}] (unix s), the newest {} of a {} spread, limit 20; {} sequential searches each, sent to r0; {} blocks in r0's namespace{}",
        humantime::format_duration(args.data.window),
        humantime::format_duration(args.data.spread),
        args.data.search_queries,
        blocks,
        if was_reused { " (data set reused)" } else { "" }
    ));
    notes.push(
        "CPU per search is each replica's user+system CPU over the measured searches (/proc), divided by their number; \
         the ratio column is the replicas' sum against one replica's: what splitting costs in all (shares' HTTP and JSON, \
         planning each share, phase 2 and the merge on r0). All replicas share this machine's cores, so latency is not a speed-up figure."
            .to_string(),
    );
    let report = Report {
        title: "skein-bench scale".into(),
        against: format!(
            "1 to {} `skein serve` replicas sharing one storage root (file://), {} spans loaded into r0 ({} spans/trace, {} attributes/span); {}",
            args.replicas,
            fmt_count(manifest.spans as f64),
            manifest.spans_per_trace,
            manifest.attributes,
            machine_line()
        ),
        rows,
        notes,
        data: json!({ "blocks": blocks, "spans": manifest.spans, "runs": data }),
    };
    report.finish(args.data.json.as_deref())
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn labelled_sums_keep_only_matching_label_sets() {
        let text = "# HELP x y\n\
            skein_peer_request_duration_seconds_count{endpoint=\"search-part\"} 4\n\
            skein_peer_request_duration_seconds_count{endpoint=\"spans\"} 9\n\
            skein_peer_request_duration_seconds_count{endpoint=\"search-part\",x=\"1\"} 2\n\
            skein_peer_request_duration_seconds_countless{endpoint=\"search-part\"} 100\n";
        let n = labelled_sum(
            text,
            "skein_peer_request_duration_seconds_count",
            "endpoint=\"search-part\"",
        );
        assert_eq!(n, 6.0);
        assert_eq!(labelled_sum(text, "absent", "a=\"b\""), 0.0);
    }

    #[test]
    fn answers_are_compared_by_padded_trace_ids_in_order() {
        let body =
            br#"{"traces":[{"traceID":"abc"},{"traceID":"00000000000000000000000000000def"}]}"#;
        assert_eq!(
            trace_ids(body),
            vec![format!("{:0>32}", "abc"), "00000000000000000000000000000def".to_string()]
        );
        assert!(trace_ids(b"not json").is_empty());
    }
}

//! Results: percentiles, the printed table and the JSON file.

use std::path::Path;
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};

use super::BenchError;

/// Latency samples, in nanoseconds.
#[derive(Debug, Default, Clone)]
pub struct Samples(pub Vec<u64>);

impl Samples {
    pub fn push(&mut self, d: Duration) {
        self.0.push(d.as_nanos().min(u128::from(u64::MAX)) as u64);
    }

    pub fn extend(&mut self, other: Samples) {
        self.0.extend(other.0);
    }

    pub fn summary(&self) -> Option<Summary> {
        let mut v = self.0.clone();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        let mean = v.iter().map(|x| *x as f64).sum::<f64>() / v.len() as f64;
        Some(Summary {
            count: v.len(),
            p50: percentile(&v, 50.0)?,
            p90: percentile(&v, 90.0)?,
            p99: percentile(&v, 99.0)?,
            max: *v.last()?,
            mean: mean as u64,
        })
    }
}

/// Nearest-rank percentile of sorted `v`: the smallest value with at least `p`% of the
/// samples at or below it.
pub fn percentile(sorted: &[u64], p: f64) -> Option<u64> {
    if sorted.is_empty() {
        return None;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    Some(sorted[rank.clamp(1, sorted.len()) - 1])
}

#[derive(Debug, Clone, Copy, Serialize)]
pub struct Summary {
    pub count: usize,
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub max: u64,
    pub mean: u64,
}

impl Summary {
    pub fn json(&self) -> Value {
        json!({
            "count": self.count,
            "p50_ms": ms(self.p50),
            "p90_ms": ms(self.p90),
            "p99_ms": ms(self.p99),
            "max_ms": ms(self.max),
            "mean_ms": ms(self.mean),
        })
    }
}

pub fn ms(nanos: u64) -> f64 {
    (nanos as f64 / 1e4).round() / 100.0
}

pub fn fmt_ms(nanos: u64) -> String {
    let m = nanos as f64 / 1e6;
    if m >= 100.0 {
        format!("{m:.0} ms")
    } else if m >= 10.0 {
        format!("{m:.1} ms")
    } else {
        format!("{m:.2} ms")
    }
}

pub fn fmt_mib(bytes: u64) -> String {
    format!("{:.0} MiB", bytes as f64 / (1024.0 * 1024.0))
}

/// `12345.6` → `12,346`.
pub fn fmt_count(v: f64) -> String {
    let n = v.round() as i128;
    let s = n.abs().to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    if n < 0 { format!("-{out}") } else { out }
}

/// Whether a figure meets its goal (BENCHMARKS.md lists them).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Met,
    Missed,
    #[serde(rename = "n/a")]
    NotApplicable,
}

#[derive(Debug, Clone, Serialize)]
pub struct Row {
    pub metric: String,
    pub skein: String,
    pub peer: String,
    pub ratio: String,
    pub goal: String,
    pub verdict: Verdict,
}

impl Row {
    pub fn new(metric: &str, skein: String) -> Self {
        Row {
            metric: metric.into(),
            skein,
            peer: "—".into(),
            ratio: "—".into(),
            goal: "—".into(),
            verdict: Verdict::NotApplicable,
        }
    }

    pub fn peer(mut self, peer: String, ratio: Option<f64>) -> Self {
        self.peer = peer;
        self.ratio = ratio.map(|r| format!("{r:.2}×")).unwrap_or_else(|| "—".into());
        self
    }

    /// `met` is `None` when the goal could not be checked (e.g. no peer).
    pub fn goal(mut self, goal: &str, met: Option<bool>) -> Self {
        self.goal = goal.into();
        self.verdict = match met {
            Some(true) => Verdict::Met,
            Some(false) => Verdict::Missed,
            None => Verdict::NotApplicable,
        };
        self
    }
}

/// A finished benchmark: what was measured, against what, and the figures.
pub struct Report {
    pub title: String,
    pub against: String,
    pub rows: Vec<Row>,
    pub notes: Vec<String>,
    pub data: Value,
}

impl Report {
    pub fn render(&self) -> String {
        let headers = ["metric", "skein", "peer", "ratio", "goal", ""];
        let cells: Vec<[String; 6]> = self
            .rows
            .iter()
            .map(|r| {
                let v = match r.verdict {
                    Verdict::Met => "met",
                    Verdict::Missed => "MISSED",
                    Verdict::NotApplicable => "",
                };
                [
                    r.metric.clone(),
                    r.skein.clone(),
                    r.peer.clone(),
                    r.ratio.clone(),
                    r.goal.clone(),
                    v.into(),
                ]
            })
            .collect();
        let mut width = headers.map(|h| h.chars().count());
        for row in &cells {
            for (w, c) in width.iter_mut().zip(row) {
                *w = (*w).max(c.chars().count());
            }
        }
        let line = |cols: &[String]| -> String {
            let parts: Vec<String> = cols
                .iter()
                .zip(width)
                .map(|(c, w)| format!("{c}{}", " ".repeat(w - c.chars().count())))
                .collect();
            format!("| {} |", parts.join(" | "))
        };
        let mut out = format!("\n{}\n{}\n\n", self.title, self.against);
        out.push_str(&line(&headers.map(String::from)));
        out.push('\n');
        let sep: Vec<String> = width.iter().map(|w| "-".repeat(*w)).collect();
        out.push_str(&format!("|-{}-|\n", sep.join("-|-")));
        for row in &cells {
            out.push_str(&line(row));
            out.push('\n');
        }
        for n in &self.notes {
            out.push_str(&format!("\n* {n}"));
        }
        out.push('\n');
        out
    }

    pub fn json(&self) -> Value {
        json!({
            "benchmark": self.title,
            "against": self.against,
            "date": humantime::format_rfc3339_seconds(std::time::SystemTime::now()).to_string(),
            "machine": machine(),
            "table": self.rows,
            "notes": self.notes,
            "results": self.data,
        })
    }

    pub fn finish(&self, json_path: Option<&Path>) -> Result<(), BenchError> {
        println!("{}", self.render());
        if let Some(p) = json_path {
            let text = serde_json::to_string_pretty(&self.json())
                .map_err(|e| BenchError::Failed(e.to_string()))?;
            std::fs::write(p, text + "\n")
                .map_err(|e| BenchError::Failed(format!("cannot write {}: {e}", p.display())))?;
            println!("results written to {}", p.display());
        }
        Ok(())
    }
}

/// Cores, CPU model, memory and kernel of this machine.
pub fn machine() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    let mem_kb: u64 = std::fs::read_to_string("/proc/meminfo")
        .unwrap_or_default()
        .lines()
        .find(|l| l.starts_with("MemTotal:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    json!({
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(0),
        "cpu": model,
        "memory_gib": (mem_kb as f64 / 1048576.0 * 10.0).round() / 10.0,
        "kernel": kernel.trim(),
    })
}

pub fn machine_line() -> String {
    let m = machine();
    format!(
        "{} cores ({}), {} GiB RAM, Linux {}",
        m["cores"],
        m["cpu"].as_str().unwrap_or("?"),
        m["memory_gib"],
        m["kernel"].as_str().unwrap_or("?")
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let v: Vec<u64> = (1..=100).collect();
        assert_eq!(percentile(&v, 50.0), Some(50));
        assert_eq!(percentile(&v, 99.0), Some(99));
        assert_eq!(percentile(&v, 100.0), Some(100));
        assert_eq!(percentile(&v, 0.0), Some(1));
        assert_eq!(percentile(&[7], 99.0), Some(7));
        assert_eq!(percentile(&[1, 2], 50.0), Some(1));
        assert_eq!(percentile(&[1, 2], 51.0), Some(2));
        assert_eq!(percentile(&[], 50.0), None);
    }

    #[test]
    fn summary_sorts_unsorted_samples() {
        let mut s = Samples::default();
        for ms in [30u64, 10, 20, 50, 40] {
            s.push(Duration::from_millis(ms));
        }
        let sum = s.summary().unwrap();
        assert_eq!(sum.count, 5);
        assert_eq!(sum.p50, 30_000_000);
        assert_eq!(sum.p99, 50_000_000);
        assert_eq!(sum.max, 50_000_000);
        assert_eq!(sum.mean, 30_000_000);
        assert!(Samples::default().summary().is_none());
    }

    #[test]
    fn table_aligns_columns_and_marks_missed_goals() {
        let r = Report {
            title: "t".into(),
            against: "a".into(),
            rows: vec![
                Row::new("spans/s", "100".into())
                    .peer("200".into(), Some(0.5))
                    .goal("≥ 1.0× peer", Some(false)),
                Row::new("x", "1".into()),
            ],
            notes: vec!["n".into()],
            data: Value::Null,
        };
        let text = r.render();
        let lines: Vec<&str> = text.lines().filter(|l| l.starts_with('|')).collect();
        assert_eq!(lines.len(), 4);
        let widths: Vec<usize> = lines.iter().map(|l| l.chars().count()).collect();
        assert!(widths.iter().all(|w| *w == widths[0]), "{text}");
        assert!(text.contains("0.50×") && text.contains("MISSED"));
    }

    #[test]
    fn counts_get_thousands_separators() {
        assert_eq!(fmt_count(1234567.4), "1,234,567");
        assert_eq!(fmt_count(999.0), "999");
        assert_eq!(fmt_count(1000.0), "1,000");
    }
}

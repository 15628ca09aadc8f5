//! Processes under test: a spawned `skein serve` or `rotel-agent`, their ports, data dirs and
//! memory/CPU as seen in /proc.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use tokio::process::{Child, Command};

use super::BenchError;

/// A port that was free a moment ago on 127.0.0.1.
pub fn free_port() -> Result<u16, BenchError> {
    let l = std::net::TcpListener::bind("127.0.0.1:0")
        .map_err(|e| BenchError::Failed(format!("cannot find a free port: {e}")))?;
    let port = l.local_addr().map_err(|e| BenchError::Failed(e.to_string()))?.port();
    Ok(port)
}

/// A scratch directory removed on drop (unless `keep`).
pub struct ScratchDir {
    pub path: PathBuf,
    pub keep: bool,
}

impl ScratchDir {
    pub fn new(parent: Option<&Path>, prefix: &str) -> Result<Self, BenchError> {
        let parent = parent.map(Path::to_path_buf).unwrap_or_else(std::env::temp_dir);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let path = parent.join(format!("{prefix}-{}-{nanos}", std::process::id()));
        std::fs::create_dir_all(&path)
            .map_err(|e| BenchError::Failed(format!("cannot create {}: {e}", path.display())))?;
        Ok(ScratchDir { path, keep: false })
    }
}

impl Drop for ScratchDir {
    fn drop(&mut self) {
        if !self.keep {
            let _ = std::fs::remove_dir_all(&self.path);
        }
    }
}

/// A collector process started by the benchmark; killed on drop.
pub struct Spawned {
    pub name: String,
    pub child: Child,
    pub pid: u32,
    pub grpc: SocketAddr,
    pub http: Option<SocketAddr>,
    pub log: PathBuf,
}

impl Spawned {
    pub async fn stop(mut self) {
        let _ = self.child.kill().await;
    }

    /// Last lines of the process log, for error messages.
    pub fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(&self.log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(15)..].join("\n")
    }

    /// Fails if the process has exited.
    pub fn check_alive(&mut self) -> Result<(), BenchError> {
        match self.child.try_wait() {
            Ok(Some(status)) => Err(BenchError::Failed(format!(
                "{} exited ({status}); log {}:\n{}",
                self.name,
                self.log.display(),
                self.log_tail()
            ))),
            _ => Ok(()),
        }
    }

    /// Waits until the gRPC port (and the HTTP `/ready`, if any) answer.
    pub async fn wait_ready(&mut self, timeout: Duration) -> Result<(), BenchError> {
        let deadline = Instant::now() + timeout;
        loop {
            self.check_alive()?;
            let grpc_ok = tokio::net::TcpStream::connect(self.grpc).await.is_ok();
            let http_ok = match self.http {
                None => true,
                Some(a) => http_ready(a).await,
            };
            if grpc_ok && http_ok {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BenchError::Failed(format!(
                    "{} did not become ready in {timeout:?}; log {}:\n{}",
                    self.name,
                    self.log.display(),
                    self.log_tail()
                )));
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

async fn http_ready(addr: SocketAddr) -> bool {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let Ok(mut s) = tokio::net::TcpStream::connect(addr).await else { return false };
    let req = format!("GET /ready HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
    if s.write_all(req.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(2), s.read_to_end(&mut buf)).await;
    buf.starts_with(b"HTTP/1.1 200")
}

/// The `skein` under test: `SKEIN_BIN`, else the `skein` built beside this executable (cargo
/// puts both in `target/<profile>/`).
pub fn skein_exe() -> Result<PathBuf, BenchError> {
    if let Some(p) = std::env::var_os("SKEIN_BIN") {
        return Ok(PathBuf::from(p));
    }
    let me = std::env::current_exe()
        .map_err(|e| BenchError::Failed(format!("cannot find the skein executable: {e}")))?;
    let exe = me.with_file_name("skein");
    if !exe.is_file() {
        return Err(BenchError::Failed(format!(
            "no skein executable at {}: build it first (cargo build --release --bin skein) or \
             set SKEIN_BIN",
            exe.display()
        )));
    }
    Ok(exe)
}

/// The listeners of one `skein serve`, on 127.0.0.1.
#[derive(Debug, Clone, Copy)]
pub struct SkeinPorts {
    pub grpc: SocketAddr,
    pub otlp_http: SocketAddr,
    pub http: SocketAddr,
}

impl SkeinPorts {
    /// Ports that were free a moment ago.
    pub fn free() -> Result<Self, BenchError> {
        let at = |p: u16| -> SocketAddr { ([127, 0, 0, 1], p).into() };
        Ok(SkeinPorts {
            grpc: at(free_port()?),
            otlp_http: at(free_port()?),
            http: at(free_port()?),
        })
    }
}

/// Starts `skein serve` ([`skein_exe`]) on free ports with its data under `data_dir`.
pub async fn spawn_skein(
    data_dir: &Path,
    fsync: &str,
    extra: &[String],
) -> Result<Spawned, BenchError> {
    spawn_skein_on(SkeinPorts::free()?, data_dir, fsync, extra).await
}

/// Starts `skein serve` on `ports` (chosen beforehand, e.g. to name replicas as each other's
/// peers) with its data under `data_dir`.
pub async fn spawn_skein_on(
    ports: SkeinPorts,
    data_dir: &Path,
    fsync: &str,
    extra: &[String],
) -> Result<Spawned, BenchError> {
    let exe = skein_exe()?;
    let SkeinPorts { grpc, otlp_http, http } = ports;
    let log = data_dir.with_extension("log");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| BenchError::Failed(format!("cannot create {}: {e}", log.display())))?;
    let mut cmd = Command::new(&exe);
    cmd.arg("serve")
        .arg("--data-dir")
        .arg(data_dir)
        .arg("--otlp-grpc-addr")
        .arg(grpc.to_string())
        .arg("--otlp-http-addr")
        .arg(otlp_http.to_string())
        .arg("--http-addr")
        .arg(http.to_string())
        .arg("--fsync")
        .arg(fsync)
        .args(extra)
        // Only flags decide the configuration, never the caller's environment.
        .env_remove("SKEIN_CONFIG")
        .env("SKEIN_LOG", std::env::var("SKEIN_BENCH_SERVE_LOG").unwrap_or_else(|_| "info".into()))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true);
    for (k, _) in std::env::vars() {
        if k.starts_with("SKEIN_") && k != "SKEIN_LOG" {
            cmd.env_remove(k);
        }
    }
    let child = cmd
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id().unwrap_or(0);
    let mut s = Spawned { name: "skein".into(), child, pid, grpc, http: Some(http), log };
    s.wait_ready(Duration::from_secs(60)).await?;
    Ok(s)
}

/// `rotel-agent`: the flag, then PATH, then a `.venv` in or above the current directory.
pub fn find_rotel(explicit: Option<&Path>) -> Option<PathBuf> {
    if let Some(p) = explicit {
        return Some(p.to_path_buf());
    }
    if let Some(path) = std::env::var_os("PATH") {
        for dir in std::env::split_paths(&path) {
            let c = dir.join("rotel-agent");
            if c.is_file() {
                return Some(c);
            }
        }
    }
    let mut roots: Vec<PathBuf> = Vec::new();
    if let Ok(cwd) = std::env::current_dir() {
        roots.extend(cwd.ancestors().map(Path::to_path_buf));
    }
    if let Ok(exe) = std::env::current_exe() {
        roots.extend(exe.ancestors().map(Path::to_path_buf));
    }
    for root in roots {
        let lib = root.join(".venv").join("lib");
        let Ok(entries) = std::fs::read_dir(&lib) else { continue };
        for e in entries.flatten() {
            let c = e.path().join("site-packages").join("rotel").join("rotel-agent");
            if e.file_name().to_string_lossy().starts_with("python3") && c.is_file() {
                return Some(c);
            }
        }
    }
    None
}

/// Starts `rotel-agent` with the blackhole exporter on free ports.
pub async fn spawn_rotel(exe: &Path, dir: &Path) -> Result<Spawned, BenchError> {
    let grpc: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let http: SocketAddr = ([127, 0, 0, 1], free_port()?).into();
    let log = dir.join("rotel.out");
    let log_file = std::fs::File::create(&log)
        .map_err(|e| BenchError::Failed(format!("cannot create {}: {e}", log.display())))?;
    let child = Command::new(exe)
        .arg("start")
        .arg("--otlp-grpc-endpoint")
        .arg(grpc.to_string())
        .arg("--otlp-http-endpoint")
        .arg(http.to_string())
        .arg("--exporter")
        .arg("blackhole")
        .arg("--pid-file")
        .arg(dir.join("rotel.pid"))
        .arg("--log-file")
        .arg(dir.join("rotel.log"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::from(log_file))
        .kill_on_drop(true)
        .spawn()
        .map_err(|e| BenchError::Failed(format!("cannot start {}: {e}", exe.display())))?;
    let pid = child.id().unwrap_or(0);
    let mut s = Spawned { name: "rotel".into(), child, pid, grpc, http: None, log };
    s.wait_ready(Duration::from_secs(30)).await?;
    Ok(s)
}

/// `rotel-agent --version`, plus the PyPI wheel version when it came from one.
pub fn rotel_version(exe: &Path) -> String {
    let agent = std::process::Command::new(exe)
        .arg("--version")
        .output()
        .ok()
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "rotel (version unknown)".into());
    let wheel = exe.parent().and_then(Path::parent).and_then(|site| {
        std::fs::read_dir(site).ok()?.flatten().find_map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            let v = name.strip_prefix("rotel-")?.strip_suffix(".dist-info")?;
            Some(v.to_string())
        })
    });
    match wheel {
        Some(v) => format!("{agent} (PyPI rotel=={v})"),
        None => agent,
    }
}

/// Memory of a process from /proc/<pid>/status, in bytes: (VmRSS, VmHWM).
pub fn memory(pid: u32) -> Option<(u64, u64)> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    let field = |name: &str| -> Option<u64> {
        let line = text.lines().find(|l| l.starts_with(name))?;
        let kb: u64 = line[name.len()..].trim().trim_end_matches("kB").trim().parse().ok()?;
        Some(kb * 1024)
    };
    Some((field("VmRSS:")?, field("VmHWM:")?))
}

/// CPU seconds (user + system) used by a process so far; "self" for this process.
pub fn cpu_seconds(pid: &str) -> Option<f64> {
    let text = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    // Fields after the parenthesised command name; utime and stime are fields 14 and 15.
    let rest = &text[text.rfind(')')? + 2..];
    let f: Vec<&str> = rest.split_whitespace().collect();
    let utime: f64 = f.get(11)?.parse().ok()?;
    let stime: f64 = f.get(12)?.parse().ok()?;
    // USER_HZ is 100 on every Linux configuration this runs on.
    Some((utime + stime) / 100.0)
}

/// Busy CPU seconds of the whole machine so far (all cores; idle and iowait excluded).
pub fn machine_busy_seconds() -> Option<f64> {
    let text = std::fs::read_to_string("/proc/stat").ok()?;
    let line = text.lines().next()?.strip_prefix("cpu ")?;
    let v: Vec<f64> = line.split_whitespace().filter_map(|x| x.parse().ok()).collect();
    // user nice system idle iowait irq softirq steal [guest guest_nice: already in user/nice]
    let total: f64 = v.iter().take(8).sum();
    let idle = v.get(3)? + v.get(4).copied().unwrap_or(0.0);
    Some((total - idle) / 100.0)
}

/// Samples a process's RSS in the background.
#[derive(Clone, Default)]
pub struct RssSampler {
    samples: Arc<Mutex<Vec<(Duration, u64)>>>,
}

impl RssSampler {
    pub fn start(pid: u32, every: Duration) -> (RssSampler, tokio::task::JoinHandle<()>) {
        let s = RssSampler::default();
        let samples = s.samples.clone();
        let started = Instant::now();
        let task = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                match memory(pid) {
                    Some((rss, _)) => samples.lock().push((started.elapsed(), rss)),
                    None => return,
                }
            }
        });
        (s, task)
    }

    pub fn peak(&self) -> u64 {
        self.samples.lock().iter().map(|s| s.1).max().unwrap_or(0)
    }

    /// Median RSS of samples taken at or after `from` (since the sampler started).
    pub fn median_since(&self, from: Duration) -> Option<u64> {
        let mut v: Vec<u64> =
            self.samples.lock().iter().filter(|s| s.0 >= from).map(|s| s.1).collect();
        if v.is_empty() {
            return None;
        }
        v.sort_unstable();
        Some(v[v.len() / 2])
    }

    /// RSS in MiB once per `step` (the last sample of each step), for plotting.
    pub fn timeline_mib(&self, step: Duration) -> Vec<(f64, u64)> {
        let mut out: Vec<(f64, u64)> = Vec::new();
        let step = step.as_secs_f64().max(1e-3);
        for (t, rss) in self.samples.lock().iter() {
            let slot = (t.as_secs_f64() / step).floor() * step;
            let mib = rss >> 20;
            match out.last_mut() {
                Some(last) if last.0 == slot => last.1 = mib,
                _ => out.push((slot, mib)),
            }
        }
        out
    }

    pub fn max_since(&self, from: Duration) -> Option<u64> {
        self.samples.lock().iter().filter(|s| s.0 >= from).map(|s| s.1).max()
    }
}

/// Bytes of files under `dir` whose name ends with `suffix` (all files when empty).
pub fn dir_bytes(dir: &Path, suffix: &str) -> u64 {
    let mut total = 0;
    let Ok(entries) = std::fs::read_dir(dir) else { return 0 };
    for e in entries.flatten() {
        let p = e.path();
        match e.metadata() {
            Ok(m) if m.is_dir() => total += dir_bytes(&p, suffix),
            Ok(m) if p.to_string_lossy().ends_with(suffix) => total += m.len(),
            _ => {}
        }
    }
    total
}

/// Compressed bytes per column path over every Parquet file under `dir` named `file_name`,
/// largest first (from the files' footers).
pub fn parquet_column_bytes(dir: &Path, file_name: &str) -> Vec<(String, u64)> {
    use parquet::file::reader::{FileReader, SerializedFileReader};
    let mut sums: std::collections::BTreeMap<String, u64> = std::collections::BTreeMap::new();
    let mut stack = vec![dir.to_path_buf()];
    while let Some(d) = stack.pop() {
        let Ok(entries) = std::fs::read_dir(&d) else { continue };
        for e in entries.flatten() {
            let p = e.path();
            if p.is_dir() {
                stack.push(p);
                continue;
            }
            if p.file_name().is_none_or(|n| n != file_name) {
                continue;
            }
            let Ok(f) = std::fs::File::open(&p) else { continue };
            let Ok(reader) = SerializedFileReader::new(f) else { continue };
            for rg in reader.metadata().row_groups() {
                for c in rg.columns() {
                    *sums.entry(c.column_path().string()).or_default() +=
                        c.compressed_size().max(0) as u64;
                }
            }
        }
    }
    let mut out: Vec<(String, u64)> = sums.into_iter().collect();
    out.sort_by_key(|b| std::cmp::Reverse(b.1));
    out
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use super::*;

    #[test]
    fn own_process_memory_and_cpu_are_readable() {
        let (rss, hwm) = memory(std::process::id()).unwrap();
        assert!(rss > 0 && hwm >= rss);
        assert!(cpu_seconds("self").is_some());
        assert!(machine_busy_seconds().is_some_and(|s| s > 0.0));
    }

    #[test]
    fn rss_timeline_keeps_the_last_sample_per_step() {
        let s = RssSampler::default();
        {
            let mut v = s.samples.lock();
            for (ms, mib) in [(100u64, 10u64), (900, 12), (1200, 20), (2500, 30)] {
                v.push((Duration::from_millis(ms), mib << 20));
            }
        }
        assert_eq!(s.timeline_mib(Duration::from_secs(1)), vec![(0.0, 12), (1.0, 20), (2.0, 30)]);
        assert_eq!(s.peak(), 30 << 20);
        assert_eq!(s.median_since(Duration::from_secs(1)), Some(30 << 20));
        assert_eq!(s.max_since(Duration::from_secs(2)), Some(30 << 20));
    }

    #[test]
    fn dir_bytes_sums_matching_files_recursively() {
        let d = ScratchDir::new(None, "skein-bench-test").unwrap();
        std::fs::create_dir_all(d.path.join("a/b")).unwrap();
        std::fs::write(d.path.join("a/b/x.parquet"), [0u8; 10]).unwrap();
        std::fs::write(d.path.join("a/y.parquet"), [0u8; 5]).unwrap();
        std::fs::write(d.path.join("a/z.bin"), [0u8; 7]).unwrap();
        assert_eq!(dir_bytes(&d.path, ".parquet"), 15);
        assert_eq!(dir_bytes(&d.path, ""), 22);
        let p = d.path.clone();
        drop(d);
        assert!(!p.exists());
    }
}

//! Write-ahead log: every accepted export is appended here and made durable
//! before it is applied to the in-memory head and acknowledged.
//!
//! Format, fsync guarantees, replay and truncation rules are described in
//! `DESIGN.md` next to this file.

mod format;
pub mod ranges;
#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used, clippy::panic)]
mod tests;

use std::collections::VecDeque;
use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use format::{DecodeError, SEGMENT_HEADER_LEN};
pub use format::{MAX_PAYLOAD_LEN, MAX_TENANT_LEN};
pub use ranges::SeqRanges;

/// Default segment size before rolling to a new file.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 << 20;

const SEGMENT_SUFFIX: &str = ".seg";
const SEGMENT_NAME_DIGITS: usize = 20;
const LOCK_FILE: &str = "wal.lock";
/// How long `open` waits for a lock that is taken before reporting `Locked`. The lock is
/// on the open file, so a child process holds it too between its fork and exec (the
/// descriptor is close-on-exec, but the fork copied it): a process that spawns anything while
/// it closes and reopens its WAL sees the lock taken for a moment.
const LOCK_WAIT: Duration = Duration::from_millis(200);
/// The append buffer is kept across batches; an unusually large batch should
/// not pin that much memory for the rest of the process lifetime.
const RETAINED_BUF_BYTES: usize = 16 << 20;

/// When `append_batch` calls fsync.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// fsync before every `append_batch` returns (one fsync per batch).
    /// Acknowledged data survives kill -9 and power loss.
    Always,
    /// fsync on an append when the previous fsync is older than this.
    /// Acknowledged data survives kill -9 (it is in the page cache); up to
    /// roughly one interval of data may be lost on power loss.
    Interval(Duration),
    /// Never fsync appended data (segment rolls still sync). Survives kill -9,
    /// not power loss.
    Never,
}

#[derive(Clone, Debug)]
pub struct WalConfig {
    pub dir: PathBuf,
    pub fsync: FsyncPolicy,
    /// Roll to a new segment once appending a batch would grow the active
    /// segment beyond this size. A single batch is never split, so a segment
    /// can exceed this by up to one batch.
    pub segment_bytes: u64,
}

impl WalConfig {
    /// `FsyncPolicy::Always` and [`DEFAULT_SEGMENT_BYTES`].
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        WalConfig {
            dir: dir.into(),
            fsync: FsyncPolicy::Always,
            segment_bytes: DEFAULT_SEGMENT_BYTES,
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("wal: {op} {}: {source}", path.display())]
    Io {
        op: &'static str,
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("wal: corruption in {} at offset {offset}: {reason}", path.display())]
    Corrupt { path: PathBuf, offset: u64, reason: String },
    #[error("wal: tenant name is {len} bytes, limit is {MAX_TENANT_LEN}")]
    TenantTooLong { len: usize },
    #[error("wal: payload is {len} bytes, limit is {MAX_PAYLOAD_LEN}")]
    PayloadTooLarge { len: usize },
    #[error("wal: directory {} is in use by another process", path.display())]
    Locked { path: PathBuf },
    /// Seqs are u64: only a damaged or forged segment name can bring the log near the end of
    /// them, and a wrapped seq would name a segment replay ignores (seq 0).
    #[error("wal: seq {next} cannot hold {records} more record(s)")]
    SeqExhausted { next: u64, records: usize },
    /// A failed fsync (or a write that could not be rolled back) leaves the
    /// file in an unknown state; appending more could bury acknowledged data
    /// behind garbage, so the WAL refuses further writes until reopened.
    #[error("wal: disabled after an earlier I/O failure; reopen to recover")]
    Poisoned,
}

impl WalError {
    /// The filesystem is full (or over quota): the write failed, nothing is damaged, and a
    /// later write succeeds once space returns.
    pub fn is_disk_full(&self) -> bool {
        match self {
            WalError::Io { source, .. } => {
                matches!(source.kind(), io::ErrorKind::StorageFull | io::ErrorKind::QuotaExceeded)
            }
            _ => false,
        }
    }
}

impl crate::error::Coded for WalError {
    fn code(&self) -> crate::error::ErrorCode {
        use crate::error::ErrorCode;
        match self {
            WalError::Io { .. } | WalError::Locked { .. } | WalError::Poisoned => {
                ErrorCode::Unavailable
            }
            WalError::Corrupt { .. } | WalError::SeqExhausted { .. } => ErrorCode::Internal,
            WalError::TenantTooLong { .. } => ErrorCode::InvalidArgument,
            WalError::PayloadTooLarge { .. } => ErrorCode::TooLarge,
        }
    }
}

/// The bytes of a segment file holding `records` (seq, tenant, payload), framed exactly as
/// appends frame them: for tests and fuzz harnesses that need records with valid checksums
/// (seqs are taken as given, so impossible sequences can be built too).
pub fn encode_segment(first_seq: u64, records: &[(u64, &str, &[u8])]) -> Result<Vec<u8>, WalError> {
    let mut out = format::segment_header(first_seq).to_vec();
    for (seq, tenant, payload) in records {
        if tenant.len() > MAX_TENANT_LEN {
            return Err(WalError::TenantTooLong { len: tenant.len() });
        }
        if payload.len() > MAX_PAYLOAD_LEN {
            return Err(WalError::PayloadTooLarge { len: payload.len() });
        }
        format::encode_record(&mut out, *seq, tenant.as_bytes(), payload);
    }
    Ok(out)
}

fn io_err(op: &'static str, path: &Path) -> impl FnOnce(io::Error) -> WalError {
    let path = path.to_path_buf();
    move |source| WalError::Io { op, path, source }
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct WalRecord {
    pub seq: u64,
    pub tenant: String,
    pub payload: Vec<u8>,
}

#[derive(Clone, Debug, Default)]
pub struct WalStats {
    /// Total bytes of all segment files on disk.
    pub bytes: u64,
    pub segments: u64,
    /// Number of data fsyncs (appends, explicit `sync`, segment rolls).
    pub fsyncs: u64,
    pub last_fsync_seconds: f64,
    pub fsync_seconds_sum: f64,
    /// Appends whose `write` failed (rolled back unless the WAL is poisoned).
    pub write_failures: u64,
    /// Failed data fsyncs; each one poisons the WAL.
    pub fsync_failures: u64,
    /// Segments that could not be created (rolled back; the WAL kept its previous segment).
    pub create_failures: u64,
    /// Segments truncation could not delete (or whose deletion could not be made durable).
    pub remove_failures: u64,
}

/// Counters shared with [`WalStatsHandle`]s; written only by the owner of the
/// `Wal`, so relaxed atomics are enough.
#[derive(Debug, Default)]
struct SharedStats {
    bytes: AtomicU64,
    segments: AtomicU64,
    fsyncs: AtomicU64,
    last_fsync_nanos: AtomicU64,
    fsync_nanos_sum: AtomicU64,
    write_failures: AtomicU64,
    fsync_failures: AtomicU64,
    create_failures: AtomicU64,
    remove_failures: AtomicU64,
}

impl SharedStats {
    fn snapshot(&self) -> WalStats {
        WalStats {
            bytes: self.bytes.load(Ordering::Relaxed),
            segments: self.segments.load(Ordering::Relaxed),
            fsyncs: self.fsyncs.load(Ordering::Relaxed),
            last_fsync_seconds: nanos_to_secs(self.last_fsync_nanos.load(Ordering::Relaxed)),
            fsync_seconds_sum: nanos_to_secs(self.fsync_nanos_sum.load(Ordering::Relaxed)),
            write_failures: self.write_failures.load(Ordering::Relaxed),
            fsync_failures: self.fsync_failures.load(Ordering::Relaxed),
            create_failures: self.create_failures.load(Ordering::Relaxed),
            remove_failures: self.remove_failures.load(Ordering::Relaxed),
        }
    }

    fn add_segment(&self, bytes: u64) {
        self.segments.fetch_add(1, Ordering::Relaxed);
        self.bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    fn remove_segment(&self, bytes: u64) {
        self.segments.fetch_sub(1, Ordering::Relaxed);
        self.bytes.fetch_sub(bytes, Ordering::Relaxed);
    }

    fn record_fsync(&self, took: Duration) {
        let nanos = u64::try_from(took.as_nanos()).unwrap_or(u64::MAX);
        self.fsyncs.fetch_add(1, Ordering::Relaxed);
        self.last_fsync_nanos.store(nanos, Ordering::Relaxed);
        self.fsync_nanos_sum.fetch_add(nanos, Ordering::Relaxed);
    }
}

fn count(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

fn nanos_to_secs(n: u64) -> f64 {
    n as f64 / 1e9
}

/// Cloneable, thread-safe view of a WAL's stats, for metrics exporters that
/// cannot borrow the `Wal` owned by the writer thread.
#[derive(Clone, Debug)]
pub struct WalStatsHandle(Arc<SharedStats>);

impl WalStatsHandle {
    pub fn snapshot(&self) -> WalStats {
        self.0.snapshot()
    }
}

#[derive(Debug)]
struct Segment {
    first_seq: u64,
    path: PathBuf,
    bytes: u64,
}

/// The segment appends go to, and its open file.
struct Active {
    seg: Segment,
    file: File,
}

pub struct Wal {
    dir: PathBuf,
    fsync: FsyncPolicy,
    segment_bytes: u64,
    /// Older segments, oldest first. Each ends exactly where the next begins.
    sealed: VecDeque<Segment>,
    /// `None` when no segment could be created (a full disk at open): the next append
    /// creates it.
    active: Option<Active>,
    next_seq: u64,
    buf: Vec<u8>,
    last_sync: Instant,
    /// Bytes written to the active segment since its last fsync.
    dirty: bool,
    poisoned: bool,
    stats: Arc<SharedStats>,
    /// Makes the next data fsync fail, as a failing device would.
    #[cfg(test)]
    fail_next_fsync: bool,
    /// Held for the lifetime of the `Wal`; the OS lock drops with the handle.
    _lock: File,
}

impl std::fmt::Debug for Wal {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Wal")
            .field("dir", &self.dir)
            .field("fsync", &self.fsync)
            .field("next_seq", &self.next_seq)
            .field("segments", &(self.sealed.len() + usize::from(self.active.is_some())))
            .field("poisoned", &self.poisoned)
            .finish_non_exhaustive()
    }
}

impl Wal {
    /// Opens (creating dir if needed) and replays: returns every intact
    /// record in seq order. A torn/partial or CRC-bad record at the tail of
    /// the last segment is truncated away; corruption anywhere else is an
    /// error naming the file and offset. New appends go to a fresh segment
    /// starting at `last_seq() + 1`.
    pub fn open(cfg: WalConfig) -> Result<(Wal, Vec<WalRecord>), WalError> {
        Self::open_filtered(cfg, |_, _| true)
    }

    /// Like [`Wal::open`], but only records for which `keep(seq, tenant)`
    /// returns true are materialised, so records already covered by a flushed
    /// block's watermark never cost memory. Every record is still verified.
    pub fn open_filtered(
        cfg: WalConfig,
        mut keep: impl FnMut(u64, &str) -> bool,
    ) -> Result<(Wal, Vec<WalRecord>), WalError> {
        let dir = cfg.dir.clone();
        create_dir_durable(&dir)?;
        let lock = lock_dir(&dir)?;
        let found = list_segments(&dir)?;

        let stats = Arc::new(SharedStats::default());
        let mut records = Vec::new();
        let mut sealed = VecDeque::new();
        let mut next_seq = 1u64;
        let mut reuse_last: Option<Segment> = None;

        for (i, (first_seq, path)) in found.iter().enumerate() {
            let (first_seq, is_last) = (*first_seq, i + 1 == found.len());
            if i > 0 && first_seq != next_seq {
                return Err(WalError::Corrupt {
                    path: path.clone(),
                    offset: 0,
                    reason: format!(
                        "segment starts at seq {first_seq} but the previous one ends at seq {}; \
                         segments are missing or misnamed",
                        next_seq.saturating_sub(1)
                    ),
                });
            }
            let data = fs::read(path).map_err(io_err("read", path))?;
            let scan = scan_segment(path, &data, first_seq, is_last, &mut keep, &mut records)?;
            next_seq = scan.next_seq;
            let seg = Segment { first_seq, path: path.clone(), bytes: data.len() as u64 };
            if !is_last {
                stats.add_segment(seg.bytes);
                sealed.push_back(seg);
                continue;
            }
            // Newest segment: make its intact prefix durable and exact, so it
            // can safely become a non-last segment (where damage is fatal).
            let seg = match repair_last_segment(seg, &data, &scan) {
                Ok(seg) => seg,
                // An interrupted creation after older segments, whose header cannot be
                // rewritten (a full disk): the older segments record the next seq as well, so
                // the file can go and a new one is created like after any other open.
                Err(e) if scan.bad_header && i > 0 => {
                    tracing::warn!(path = %path.display(), error = %e,
                        "wal: removing an interrupted segment creation");
                    fs::remove_file(path).map_err(io_err("remove", path))?;
                    sync_dir(&dir)?;
                    continue;
                }
                Err(e) => return Err(e),
            };
            if scan.next_seq == first_seq {
                reuse_last = Some(seg); // holds no records: append to it directly
            } else {
                stats.add_segment(seg.bytes);
                sealed.push_back(seg);
            }
        }

        let mut poisoned = false;
        let active = match reuse_last {
            Some(seg) => {
                let file = OpenOptions::new()
                    .append(true)
                    .open(&seg.path)
                    .map_err(io_err("open", &seg.path))?;
                Some(Active { seg, file })
            }
            // Replay must not depend on free space: without a new segment the WAL opens
            // anyway (queries can be served) and the first append tries again.
            None => match create_segment(&dir, next_seq) {
                Ok((seg, file)) => Some(Active { seg, file }),
                Err(failed) => {
                    count(&stats.create_failures);
                    poisoned = failed.stranded;
                    tracing::warn!(error = %failed.error, next_seq,
                        "wal: cannot create a segment; appends are refused until one can be");
                    None
                }
            },
        };
        if let Some(a) = &active {
            stats.add_segment(a.seg.bytes);
        }

        tracing::info!(
            dir = %dir.display(),
            segments = stats.segments.load(Ordering::Relaxed),
            replayed = records.len(),
            last_seq = next_seq - 1,
            "wal opened"
        );

        let wal = Wal {
            dir,
            fsync: cfg.fsync,
            segment_bytes: cfg.segment_bytes,
            sealed,
            active,
            next_seq,
            buf: Vec::new(),
            last_sync: Instant::now(),
            dirty: false,
            poisoned,
            stats,
            #[cfg(test)]
            fail_next_fsync: false,
            _lock: lock,
        };
        Ok((wal, records))
    }

    /// Appends records (tenant, payload) with consecutive seqs in a single
    /// write, fsyncs per policy, and returns the seq of the first record.
    /// An empty batch writes nothing and returns the seq the next record
    /// will get. On error no record of the batch is acknowledged.
    pub fn append_batch(&mut self, records: &[(&str, &[u8])]) -> Result<u64, WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        let first = self.next_seq;
        if records.is_empty() {
            return Ok(first);
        }
        // Validate everything first so a bad record never leaves half a batch.
        let Some(next_seq) = u64::try_from(records.len()).ok().and_then(|n| first.checked_add(n))
        else {
            return Err(WalError::SeqExhausted { next: first, records: records.len() });
        };
        let mut batch_len = 0usize;
        for (tenant, payload) in records {
            if tenant.len() > MAX_TENANT_LEN {
                return Err(WalError::TenantTooLong { len: tenant.len() });
            }
            if payload.len() > MAX_PAYLOAD_LEN {
                return Err(WalError::PayloadTooLarge { len: payload.len() });
            }
            batch_len += format::encoded_len(tenant.as_bytes(), payload);
        }

        match &self.active {
            None => self.roll()?,
            Some(a)
                if a.seg.first_seq < self.next_seq
                    && a.seg.bytes + batch_len as u64 > self.segment_bytes =>
            {
                // An oversized segment is harmless; refusing the batch is not. The next
                // append tries to roll again.
                if let Err(e) = self.roll() {
                    if self.poisoned {
                        return Err(e);
                    }
                    tracing::warn!(error = %e,
                        "wal: cannot start a new segment; appending to the current one");
                }
            }
            Some(_) => {}
        }
        let Some(active) = self.active.as_mut() else {
            // `roll` either installed a segment or returned its error above.
            return Err(WalError::Poisoned);
        };

        self.buf.clear();
        self.buf.reserve(batch_len);
        // A bounded range: `first..` would overflow stepping past a batch ending at u64::MAX.
        for (seq, (tenant, payload)) in (first..next_seq).zip(records) {
            format::encode_record(&mut self.buf, seq, tenant.as_bytes(), payload);
        }

        if let Err(e) = active.file.write_all(&self.buf) {
            count(&self.stats.write_failures);
            // A partial batch must not stay in front of future appends: later
            // records would sit behind damage and replay would reject them.
            // Shrinking a file needs no free space, so this works on a full disk.
            self.dirty = true;
            if let Err(undo) = active.file.set_len(active.seg.bytes) {
                tracing::error!(path = %active.seg.path.display(), error = %undo,
                    "wal: cannot roll back partial write; disabling wal");
                self.poisoned = true;
            }
            return Err(WalError::Io { op: "write", path: active.seg.path.clone(), source: e });
        }
        active.seg.bytes += batch_len as u64;
        self.stats.bytes.fetch_add(batch_len as u64, Ordering::Relaxed);
        self.next_seq = next_seq;
        self.dirty = true;

        let sync_now = match self.fsync {
            FsyncPolicy::Always => true,
            FsyncPolicy::Interval(every) => self.last_sync.elapsed() >= every,
            FsyncPolicy::Never => false,
        };
        if sync_now {
            self.sync_active()?;
        }
        if self.buf.capacity() > RETAINED_BUF_BYTES {
            self.buf = Vec::new();
        }
        Ok(first)
    }

    /// Forces an fsync of anything appended but not yet synced. Under
    /// `Interval` the writer thread should call this when idle so the last
    /// appends before a quiet period do not stay unsynced indefinitely.
    pub fn sync(&mut self) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        if self.dirty { self.sync_active() } else { Ok(()) }
    }

    /// Deletes every segment all of whose records have seq <= `seq`, oldest
    /// first. The active segment is only removed when it is fully covered
    /// too, after rolling to a fresh (empty) one, which keeps the next seq
    /// recorded on disk in its file name. Sealed segments go first, which frees
    /// space for that roll on a full disk; a failed roll only keeps the active
    /// segment until a later call.
    pub fn truncate_through(&mut self, seq: u64) -> Result<(), WalError> {
        if self.poisoned {
            return Err(WalError::Poisoned);
        }
        self.delete_sealed_through(seq)?;
        let newest_has_records = match &self.active {
            Some(a) => a.seg.first_seq < self.next_seq,
            None => !self.sealed.is_empty(),
        };
        if newest_has_records && self.next_seq - 1 <= seq {
            match self.roll() {
                Ok(()) => self.delete_sealed_through(seq)?,
                Err(e) if self.poisoned => return Err(e),
                Err(e) => tracing::warn!(error = %e,
                    "wal: cannot start a new segment; the covered active one stays for now"),
            }
        }
        Ok(())
    }

    /// Deletes sealed segments whose records all have seq <= `seq`, oldest first, with a
    /// directory fsync after each, so a crash only ever leaves a suffix of segments (never a
    /// gap). The newest file on disk always stays: its name records the next seq.
    fn delete_sealed_through(&mut self, seq: u64) -> Result<(), WalError> {
        while let Some(oldest) = self.sealed.front() {
            let next_first = match (self.sealed.get(1), &self.active) {
                (Some(next), _) => next.first_seq,
                (None, Some(a)) => a.seg.first_seq,
                (None, None) => break,
            };
            if next_first - 1 > seq {
                break;
            }
            let removed = match fs::remove_file(&oldest.path) {
                Ok(()) => Ok(()),
                Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
                Err(e) => Err(io_err("remove", &oldest.path)(e)),
            };
            if let Err(e) = removed.and_then(|()| sync_dir(&self.dir)) {
                // Still listed, so the next call retries (a missing file is fine then).
                count(&self.stats.remove_failures);
                return Err(e);
            }
            self.stats.remove_segment(oldest.bytes);
            tracing::debug!(path = %oldest.path.display(), "wal segment deleted");
            self.sealed.pop_front();
        }
        Ok(())
    }

    /// Seq of the newest record ever appended (0 when nothing was ever
    /// written); survives truncation and reopen.
    pub fn last_seq(&self) -> u64 {
        self.next_seq - 1
    }

    pub fn stats(&self) -> WalStats {
        self.stats.snapshot()
    }

    /// Whether writes are refused until the WAL is reopened (after an fsync failure).
    pub fn is_poisoned(&self) -> bool {
        self.poisoned
    }

    /// A handle other threads can use to read stats without the `Wal`.
    pub fn stats_handle(&self) -> WalStatsHandle {
        WalStatsHandle(Arc::clone(&self.stats))
    }

    fn sync_active(&mut self) -> Result<(), WalError> {
        let Some(active) = &self.active else {
            self.dirty = false;
            return Ok(());
        };
        let started = Instant::now();
        #[cfg(test)]
        let synced = if std::mem::take(&mut self.fail_next_fsync) {
            Err(io::Error::from_raw_os_error(5)) // EIO
        } else {
            active.file.sync_data()
        };
        #[cfg(not(test))]
        let synced = active.file.sync_data();
        if let Err(e) = synced {
            // After a failed fsync the kernel may have dropped the dirty pages
            // and a retry can falsely succeed; the only safe state is to stop.
            count(&self.stats.fsync_failures);
            self.poisoned = true;
            return Err(io_err("fsync", &active.seg.path)(e));
        }
        self.stats.record_fsync(started.elapsed());
        self.last_sync = Instant::now();
        self.dirty = false;
        Ok(())
    }

    /// Seals the active segment (durably, whatever the policy, so that only
    /// the newest segment can ever have a torn tail) and starts a new one at
    /// `next_seq`; with no active segment, just creates one. A failed creation
    /// leaves the WAL as it was (poisoned only if the half-created file could
    /// not be removed).
    fn roll(&mut self) -> Result<(), WalError> {
        if self.dirty {
            self.sync_active()?;
        }
        let (seg, file) = create_segment(&self.dir, self.next_seq).map_err(|failed| {
            count(&self.stats.create_failures);
            if failed.stranded {
                // Appending to the old segment and later creating another would
                // strand this file in the middle of the log.
                self.poisoned = true;
            }
            failed.error
        })?;
        self.stats.add_segment(seg.bytes);
        if let Some(old) = self.active.replace(Active { seg, file }) {
            self.sealed.push_back(old.seg);
        }
        Ok(())
    }
}

impl Drop for Wal {
    fn drop(&mut self) {
        // Best effort: a clean shutdown under Interval/Never should not leave
        // acknowledged data only in the page cache.
        if self.dirty
            && !self.poisoned
            && let Err(e) = self.sync_active()
        {
            tracing::warn!(error = %e, "wal: fsync on close failed");
        }
    }
}

struct Scan {
    /// Length of the intact prefix (header + whole records).
    valid_len: usize,
    /// Seq following the last intact record.
    next_seq: u64,
    /// The header itself was unreadable (only tolerated in the last segment).
    bad_header: bool,
}

/// Verifies one segment and collects its records. Damage is tolerated only
/// in the last segment, where it is reported via `Scan::valid_len`.
fn scan_segment(
    path: &Path,
    data: &[u8],
    first_seq: u64,
    is_last: bool,
    keep: &mut impl FnMut(u64, &str) -> bool,
    out: &mut Vec<WalRecord>,
) -> Result<Scan, WalError> {
    let corrupt = |offset: usize, reason: String| WalError::Corrupt {
        path: path.to_path_buf(),
        offset: offset as u64,
        reason,
    };
    match format::parse_segment_header(data) {
        Ok(s) if s == first_seq => {}
        Ok(s) => {
            return Err(corrupt(
                0,
                format!("header says first seq {s}, file name says {first_seq}"),
            ));
        }
        // A segment is created (header written and synced) before any record
        // goes in, so a bad header with nothing after it is an interrupted
        // creation. The name alone still records the first seq.
        Err(_) if is_last && data.len() <= SEGMENT_HEADER_LEN => {
            return Ok(Scan { valid_len: 0, next_seq: first_seq, bad_header: true });
        }
        Err(reason) => return Err(corrupt(0, reason)),
    }

    let mut off = SEGMENT_HEADER_LEN;
    let mut expect = first_seq;
    loop {
        match format::decode_record(data, off) {
            Ok(None) => break,
            Ok(Some(r)) => {
                if r.seq != expect {
                    return Err(corrupt(
                        off,
                        format!("record has seq {}, expected {expect}", r.seq),
                    ));
                }
                if keep(r.seq, r.tenant) {
                    out.push(WalRecord {
                        seq: r.seq,
                        tenant: r.tenant.to_owned(),
                        payload: r.payload.to_vec(),
                    });
                }
                // Appends could never follow a record at u64::MAX (`WalError::SeqExhausted`), so
                // only damage puts one there; wrapping would make the next segment seq 0.
                expect = expect.checked_add(1).ok_or_else(|| {
                    corrupt(off, format!("record seq {} leaves no seq for the next record", r.seq))
                })?;
                off += r.len;
            }
            Err(DecodeError::Invalid(reason)) => return Err(corrupt(off, reason)),
            Err(DecodeError::Torn(reason)) if is_last => {
                // An interrupted final write: that batch was never
                // acknowledged. An intact record further on would mean damage
                // to data that may have been acknowledged; still cut there
                // (everything after a hole is unreachable) but say so loudly.
                if let Some((at, seq)) = format::find_intact_record_after(data, off) {
                    tracing::error!(path = %path.display(), offset = off, %reason,
                        intact_record_offset = at, intact_record_seq = seq,
                        "wal: damaged record in newest segment is followed by intact data; \
                         discarding everything from the damage on");
                } else {
                    tracing::warn!(path = %path.display(), offset = off, %reason,
                        dropped_bytes = data.len() - off,
                        "wal: discarding torn tail of newest segment");
                }
                break;
            }
            Err(DecodeError::Torn(reason)) => return Err(corrupt(off, reason)),
        }
    }
    Ok(Scan { valid_len: off, next_seq: expect, bad_header: false })
}

/// Cuts the newest segment back to its intact prefix (rewriting a torn
/// header) and syncs it, so nothing acknowledged-looking is left only in the
/// page cache and no damage remains once a newer segment exists.
fn repair_last_segment(mut seg: Segment, data: &[u8], scan: &Scan) -> Result<Segment, WalError> {
    let file = OpenOptions::new().write(true).open(&seg.path).map_err(io_err("open", &seg.path))?;
    if scan.bad_header {
        file.set_len(0).map_err(io_err("truncate", &seg.path))?;
        (&file)
            .write_all(&format::segment_header(seg.first_seq))
            .map_err(io_err("write", &seg.path))?;
        seg.bytes = SEGMENT_HEADER_LEN as u64;
    } else if scan.valid_len < data.len() {
        file.set_len(scan.valid_len as u64).map_err(io_err("truncate", &seg.path))?;
        seg.bytes = scan.valid_len as u64;
    }
    file.sync_all().map_err(io_err("fsync", &seg.path))?;
    Ok(seg)
}

/// The file name of the segment whose first record is `first_seq`.
pub fn segment_file_name(first_seq: u64) -> String {
    format!("{first_seq:0width$}{SEGMENT_SUFFIX}", width = SEGMENT_NAME_DIGITS)
}

fn segment_path(dir: &Path, first_seq: u64) -> PathBuf {
    dir.join(segment_file_name(first_seq))
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    if digits.len() != SEGMENT_NAME_DIGITS || !digits.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    digits.parse().ok().filter(|&s| s > 0)
}

/// Segment files sorted by first seq; anything else in the directory is
/// ignored.
fn list_segments(dir: &Path) -> Result<Vec<(u64, PathBuf)>, WalError> {
    let mut out = Vec::new();
    for entry in fs::read_dir(dir).map_err(io_err("list", dir))? {
        let entry = entry.map_err(io_err("list", dir))?;
        let name = entry.file_name();
        match name.to_str().and_then(parse_segment_name) {
            Some(first) => out.push((first, entry.path())),
            None if name != LOCK_FILE => {
                tracing::debug!(file = ?name, "wal: ignoring unrecognised file");
            }
            None => {}
        }
    }
    out.sort_unstable_by_key(|(first, _)| *first);
    Ok(out)
}

/// A segment creation that failed.
struct CreateFailed {
    error: WalError,
    /// A file by the new segment's name may remain: it could not be removed (or its
    /// removal made durable), or it already existed.
    stranded: bool,
}

/// Creates, writes the header of and syncs a new segment, then syncs the
/// directory so the file (and with it the next seq) survives power loss. On
/// failure the half-created file is removed again, so the log is as before.
fn create_segment(dir: &Path, first_seq: u64) -> Result<(Segment, File), CreateFailed> {
    let path = segment_path(dir, first_seq);
    let mut file = match OpenOptions::new().append(true).create_new(true).open(&path) {
        Ok(f) => f,
        Err(e) => {
            // Not ours to remove; a file there would sit in the middle of the log.
            let stranded = e.kind() == io::ErrorKind::AlreadyExists;
            return Err(CreateFailed { error: io_err("create", &path)(e), stranded });
        }
    };
    let written = file
        .write_all(&format::segment_header(first_seq))
        .map_err(io_err("write", &path))
        .and_then(|()| file.sync_all().map_err(io_err("fsync", &path)))
        .and_then(|()| sync_dir(dir));
    if let Err(error) = written {
        drop(file);
        let removed = match fs::remove_file(&path) {
            Ok(()) => sync_dir(dir),
            Err(e) if e.kind() == io::ErrorKind::NotFound => Ok(()),
            Err(e) => Err(io_err("remove", &path)(e)),
        };
        if let Err(undo) = &removed {
            tracing::error!(path = %path.display(), error = %undo,
                "wal: cannot remove a half-created segment");
        }
        return Err(CreateFailed { error, stranded: removed.is_err() });
    }
    tracing::debug!(path = %path.display(), "wal segment created");
    let seg = Segment { first_seq, path, bytes: SEGMENT_HEADER_LEN as u64 };
    Ok((seg, file))
}

fn sync_dir(dir: &Path) -> Result<(), WalError> {
    File::open(dir).and_then(|d| d.sync_all()).map_err(io_err("fsync dir", dir))
}

fn create_dir_durable(dir: &Path) -> Result<(), WalError> {
    if dir.is_dir() {
        return Ok(());
    }
    fs::create_dir_all(dir).map_err(io_err("create dir", dir))?;
    // The new directory entry lives in the parent.
    match dir.parent() {
        Some(p) if !p.as_os_str().is_empty() => sync_dir(p),
        _ => sync_dir(Path::new(".")),
    }
}

/// Two writers on one WAL directory would interleave seqs and corrupt it.
fn lock_dir(dir: &Path) -> Result<File, WalError> {
    let path = dir.join(LOCK_FILE);
    let file = OpenOptions::new()
        .read(true)
        .write(true)
        .create(true)
        .truncate(false)
        .open(&path)
        .map_err(io_err("open", &path))?;
    let deadline = Instant::now() + LOCK_WAIT;
    loop {
        match file.try_lock() {
            Ok(()) => return Ok(file),
            Err(fs::TryLockError::WouldBlock) if Instant::now() < deadline => {
                std::thread::sleep(Duration::from_millis(5));
            }
            Err(fs::TryLockError::WouldBlock) => {
                return Err(WalError::Locked { path: dir.to_path_buf() });
            }
            Err(fs::TryLockError::Error(e)) => return Err(io_err("lock", &path)(e)),
        }
    }
}

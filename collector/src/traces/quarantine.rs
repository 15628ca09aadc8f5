//! The quarantine directory (`<data-dir>/quarantine`): acknowledged data the write path could
//! not store normally is moved here instead of being dropped or retried forever.
//! - `wal-<seq>-<tenant>.pb`: a WAL record replay could not apply (the export's protobuf as it
//!   was written), with `.reason` beside it;
//! - `part-<tenant>-<first seq>-<last seq>-<n>.arrow`: rows of a frozen head part that could not
//!   be written as a block (Arrow IPC file, the span table's schema), with `.reason`.
//!
//! Files are written to a temporary name, fsynced, renamed and the directory fsynced, so a file
//! that exists is whole; only then is the data released from the WAL or the head.

use std::fs::{self, File};
use std::io::Write;
use std::path::{Path, PathBuf};

use arrow::array::RecordBatch;

pub struct Quarantine {
    dir: PathBuf,
}

/// A tenant name safe in a file name: tenant ids are validated at ingest, but the file name must
/// not depend on that.
fn file_safe(tenant: &str) -> String {
    tenant
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() || c == '-' || c == '_' { c } else { '_' })
        .take(64)
        .collect()
}

impl Quarantine {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Quarantine { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Keeps a WAL record replay could not apply.
    pub fn record(
        &self,
        seq: u64,
        tenant: &str,
        payload: &[u8],
        reason: &str,
    ) -> std::io::Result<PathBuf> {
        let name = format!("wal-{seq}-{}.pb", file_safe(tenant));
        self.write(&name, reason, |f| f.write_all(payload))
    }

    /// Keeps rows of a frozen head part that could not be written as a block; `n` tells the
    /// pieces of one part apart.
    pub fn part(
        &self,
        tenant: &str,
        seqs: (u64, u64),
        n: usize,
        batch: &RecordBatch,
        reason: &str,
    ) -> std::io::Result<PathBuf> {
        let name = format!("part-{}-{}-{}-{n}.arrow", file_safe(tenant), seqs.0, seqs.1);
        self.write(&name, reason, |f| {
            let mut w = arrow::ipc::writer::FileWriter::try_new(f, &batch.schema())
                .map_err(std::io::Error::other)?;
            w.write(batch).map_err(std::io::Error::other)?;
            w.finish().map_err(std::io::Error::other)
        })
    }

    fn write(
        &self,
        name: &str,
        reason: &str,
        body: impl FnOnce(&mut File) -> std::io::Result<()>,
    ) -> std::io::Result<PathBuf> {
        fs::create_dir_all(&self.dir)?;
        let path = self.dir.join(name);
        let tmp = self.dir.join(format!("{name}.tmp"));
        let mut f = File::create(&tmp)?;
        body(&mut f)?;
        f.sync_all()?;
        drop(f);
        fs::rename(&tmp, &path)?;
        let reason_path = self.dir.join(format!("{name}.reason"));
        let mut r = File::create(&reason_path)?;
        r.write_all(reason.as_bytes())?;
        r.sync_all()?;
        File::open(&self.dir)?.sync_all()?;
        Ok(path)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_quarantined_record_is_kept_whole_with_its_reason() {
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path().join("quarantine"));
        let p = q.record(42, "team/a", b"payload", "cannot apply").unwrap();
        assert_eq!(p.file_name().unwrap(), "wal-42-team_a.pb");
        assert_eq!(fs::read(&p).unwrap(), b"payload");
        let reason = fs::read_to_string(p.with_extension("pb.reason")).unwrap();
        assert_eq!(reason, "cannot apply");
    }

    #[test]
    fn a_quarantined_part_reads_back_as_arrow() {
        use arrow::array::Int64Array;
        let dir = tempfile::tempdir().unwrap();
        let q = Quarantine::new(dir.path());
        let batch = RecordBatch::try_from_iter([(
            "x",
            std::sync::Arc::new(Int64Array::from(vec![1, 2])) as arrow::array::ArrayRef,
        )])
        .unwrap();
        let p = q.part("t", (3, 9), 0, &batch, "bad").unwrap();
        let r = arrow::ipc::reader::FileReader::try_new(File::open(p).unwrap(), None).unwrap();
        let back: Vec<RecordBatch> = r.collect::<Result<_, _>>().unwrap();
        assert_eq!(back, vec![batch]);
    }
}

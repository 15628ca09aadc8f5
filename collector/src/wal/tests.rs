use super::*;
use std::fs;

fn cfg(dir: &Path, segment_bytes: u64) -> WalConfig {
    WalConfig { dir: dir.to_path_buf(), fsync: FsyncPolicy::Always, segment_bytes }
}

fn payload(seq: u64) -> Vec<u8> {
    format!("payload-{seq}-{}", "x".repeat((seq % 7) as usize)).into_bytes()
}

fn tenant(seq: u64) -> String {
    format!("tenant-{}", seq % 3)
}

/// Appends `batches` batches of `per_batch` records with deterministic
/// content derived from the seq, returning the expected records.
fn fill(wal: &mut Wal, batches: usize, per_batch: usize) -> Vec<WalRecord> {
    let mut expected = Vec::new();
    for _ in 0..batches {
        let first = wal.last_seq() + 1;
        let owned: Vec<(String, Vec<u8>)> =
            (first..first + per_batch as u64).map(|s| (tenant(s), payload(s))).collect();
        let batch: Vec<(&str, &[u8])> =
            owned.iter().map(|(t, p)| (t.as_str(), p.as_slice())).collect();
        assert_eq!(wal.append_batch(&batch).unwrap(), first);
        for (i, (t, p)) in owned.into_iter().enumerate() {
            expected.push(WalRecord { seq: first + i as u64, tenant: t, payload: p });
        }
    }
    expected
}

fn segment_files(dir: &Path) -> Vec<PathBuf> {
    let mut v: Vec<PathBuf> = fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .collect();
    v.sort();
    v
}

fn first_seq_of(path: &Path) -> u64 {
    parse_segment_name(path.file_name().unwrap().to_str().unwrap()).unwrap()
}

#[test]
fn records_round_trip_across_segment_rolls_and_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    let (mut wal, replayed) = Wal::open(cfg(&dir, 300)).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(wal.last_seq(), 0);
    let mut expected = fill(&mut wal, 20, 3);
    assert!(wal.stats().segments >= 4, "expected rolls: {:?}", wal.stats());
    drop(wal);

    let (mut wal, replayed) = Wal::open(cfg(&dir, 300)).unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(wal.last_seq(), 60);
    expected.extend(fill(&mut wal, 5, 2));
    drop(wal);

    let (wal, replayed) = Wal::open(cfg(&dir, 300)).unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(wal.last_seq(), 70);
    let seqs: Vec<u64> = replayed.iter().map(|r| r.seq).collect();
    assert_eq!(seqs, (1..=70).collect::<Vec<_>>());
}

#[test]
fn segments_are_named_by_first_seq_and_respect_size_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 300)).unwrap();
    fill(&mut wal, 20, 3);
    drop(wal);
    let files = segment_files(tmp.path());
    assert_eq!(files[0].file_name().unwrap().to_str().unwrap(), "00000000000000000001.seg");
    for f in &files {
        let data = fs::read(f).unwrap();
        assert_eq!(format::parse_segment_header(&data).unwrap(), first_seq_of(f));
        // Each batch here is < 300 bytes, so no segment may exceed the limit.
        assert!(data.len() <= 300, "{} is {} bytes", f.display(), data.len());
    }
}

/// The file holds a valid header and whole records, nothing after them.
fn assert_intact(path: &Path) {
    let data = fs::read(path).unwrap();
    assert_eq!(format::parse_segment_header(&data).unwrap(), first_seq_of(path));
    let mut off = SEGMENT_HEADER_LEN;
    while let Some(r) = format::decode_record(&data, off).unwrap() {
        off += r.len;
    }
    assert_eq!(off, data.len());
}

fn torn_tail_case(damage: impl FnOnce(&Path)) {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 400)).unwrap();
    let mut expected = fill(&mut wal, 10, 3);
    drop(wal);
    let files = segment_files(tmp.path());
    // The reopen-created empty segment is not there yet: the last file holds
    // the newest records.
    let last = files.last().unwrap();
    damage(last);
    let lost = expected.pop().unwrap();

    let (mut wal, replayed) = Wal::open(cfg(tmp.path(), 400)).unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(wal.last_seq(), lost.seq - 1);
    // The damaged segment was cut back to its intact prefix.
    assert_intact(last);
    let more = fill(&mut wal, 2, 2);
    assert_eq!(more[0].seq, lost.seq, "seq must continue after the last intact record");
    expected.extend(more);
    drop(wal);

    // The repaired segment is now a non-last segment; it must read cleanly.
    let (wal, replayed) = Wal::open(cfg(tmp.path(), 400)).unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(wal.last_seq(), lost.seq + 3);
}

#[test]
fn torn_tail_truncated_mid_record_is_dropped_and_appends_continue() {
    torn_tail_case(|last| {
        let len = fs::metadata(last).unwrap().len();
        let f = OpenOptions::new().write(true).open(last).unwrap();
        f.set_len(len - 5).unwrap();
    });
}

#[test]
fn flipped_byte_in_last_record_is_dropped_and_appends_continue() {
    torn_tail_case(|last| {
        let mut data = fs::read(last).unwrap();
        let n = data.len();
        data[n - 2] ^= 0x40;
        fs::write(last, data).unwrap();
    });
}

#[test]
fn garbage_after_last_record_is_dropped() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    let expected = fill(&mut wal, 3, 3);
    drop(wal);
    let last = segment_files(tmp.path()).pop().unwrap();
    let mut f = OpenOptions::new().append(true).open(&last).unwrap();
    f.write_all(&[0u8; 100]).unwrap(); // e.g. zero-filled blocks after a crash
    drop(f);
    let (wal, replayed) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(wal.last_seq(), 9);
}

#[test]
fn torn_header_of_newest_segment_is_repaired_and_keeps_its_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    let expected = fill(&mut wal, 2, 2);
    drop(wal);
    // Simulate a crash while creating segment 5: file exists, header partial.
    fs::write(segment_path(tmp.path(), 5), b"SKN").unwrap();
    let (mut wal, replayed) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert_eq!(replayed, expected);
    assert_eq!(wal.append_batch(&[("t", b"p")]).unwrap(), 5);
    drop(wal);
    let (_, replayed) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert_eq!(replayed.len(), 5);
}

#[test]
fn corruption_in_non_last_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 300)).unwrap();
    fill(&mut wal, 10, 3);
    drop(wal);
    let files = segment_files(tmp.path());
    assert!(files.len() >= 3);
    let victim = &files[0];
    let mut data = fs::read(victim).unwrap();
    // Flip a payload byte of the second record.
    let first_len = format::decode_record(&data, SEGMENT_HEADER_LEN).unwrap().unwrap().len;
    let second = SEGMENT_HEADER_LEN + first_len;
    data[second + 25] ^= 0x01;
    fs::write(victim, data).unwrap();

    match Wal::open(cfg(tmp.path(), 300)) {
        Err(WalError::Corrupt { path, offset, .. }) => {
            assert_eq!(&path, victim);
            assert_eq!(offset, second as u64);
        }
        other => panic!("expected corruption error, got {other:?}"),
    }
}

#[test]
fn truncated_non_last_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 300)).unwrap();
    fill(&mut wal, 10, 3);
    drop(wal);
    let files = segment_files(tmp.path());
    let len = fs::metadata(&files[1]).unwrap().len();
    OpenOptions::new().write(true).open(&files[1]).unwrap().set_len(len - 3).unwrap();
    let err = Wal::open(cfg(tmp.path(), 300)).unwrap_err();
    assert!(matches!(&err, WalError::Corrupt { path, .. } if path == &files[1]), "{err:?}");
}

#[test]
fn missing_middle_segment_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 300)).unwrap();
    fill(&mut wal, 10, 3);
    drop(wal);
    let files = segment_files(tmp.path());
    fs::remove_file(&files[1]).unwrap();
    let err = Wal::open(cfg(tmp.path(), 300)).unwrap_err();
    assert!(matches!(&err, WalError::Corrupt { path, .. } if path == &files[2]), "{err:?}");
}

#[test]
fn truncate_through_removes_only_fully_covered_segments() {
    let tmp = tempfile::tempdir().unwrap();
    // One 3-record batch per segment: segments start at 1, 4, 7, ...
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1)).unwrap();
    let expected = fill(&mut wal, 6, 3);
    let firsts: Vec<u64> = segment_files(tmp.path()).iter().map(|p| first_seq_of(p)).collect();
    assert_eq!(firsts, vec![1, 4, 7, 10, 13, 16]);

    // Seq 8 sits in the middle of segment 7..=9: only 1..=3 and 4..=6 go.
    wal.truncate_through(8).unwrap();
    let firsts: Vec<u64> = segment_files(tmp.path()).iter().map(|p| first_seq_of(p)).collect();
    assert_eq!(firsts, vec![7, 10, 13, 16]);
    assert_eq!(wal.stats().segments, 4);
    // Exactly at a segment's last seq: that segment goes too.
    wal.truncate_through(9).unwrap();
    let firsts: Vec<u64> = segment_files(tmp.path()).iter().map(|p| first_seq_of(p)).collect();
    assert_eq!(firsts, vec![10, 13, 16]);
    let on_disk: u64 =
        segment_files(tmp.path()).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(wal.stats().bytes, on_disk);
    drop(wal);

    let (wal, replayed) = Wal::open(cfg(tmp.path(), 1)).unwrap();
    assert_eq!(replayed, expected[9..].to_vec());
    assert_eq!(replayed[0].seq, 10);
    assert_eq!(wal.last_seq(), 18);
}

#[test]
fn truncate_through_keeps_partially_covered_active_segment() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    let expected = fill(&mut wal, 2, 3);
    wal.truncate_through(5).unwrap();
    assert_eq!(segment_files(tmp.path()).len(), 1);
    drop(wal);
    let (_, replayed) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert_eq!(replayed, expected);
}

#[test]
fn seq_continues_after_truncating_everything_and_reopening() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 200)).unwrap();
    fill(&mut wal, 5, 3);
    assert_eq!(wal.last_seq(), 15);
    wal.truncate_through(15).unwrap();
    let files = segment_files(tmp.path());
    assert_eq!(files.len(), 1, "only the fresh active segment remains");
    assert_eq!(first_seq_of(&files[0]), 16);
    drop(wal);

    let (mut wal, replayed) = Wal::open(cfg(tmp.path(), 200)).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(wal.last_seq(), 15);
    assert_eq!(wal.append_batch(&[("t", b"a")]).unwrap(), 16);
    wal.truncate_through(16).unwrap();
    drop(wal);

    // Reopen twice with nothing appended in between: still no reset.
    let (wal, _) = Wal::open(cfg(tmp.path(), 200)).unwrap();
    drop(wal);
    let (mut wal, replayed) = Wal::open(cfg(tmp.path(), 200)).unwrap();
    assert!(replayed.is_empty());
    assert_eq!(wal.append_batch(&[("t", b"b")]).unwrap(), 17);
}

#[test]
fn oversize_tenant_and_payload_are_rejected_without_writing() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    let long_tenant = "t".repeat(MAX_TENANT_LEN + 1);
    let ok_tenant = "t".repeat(MAX_TENANT_LEN);
    let before = wal.stats().bytes;
    let err = wal.append_batch(&[("ok", b"first"), (&long_tenant, b"p")]).unwrap_err();
    assert!(matches!(err, WalError::TenantTooLong { len } if len == MAX_TENANT_LEN + 1));

    let big = vec![0u8; MAX_PAYLOAD_LEN + 1];
    let err = wal.append_batch(&[("t", &big)]).unwrap_err();
    assert!(matches!(err, WalError::PayloadTooLarge { len } if len == MAX_PAYLOAD_LEN + 1));
    assert_eq!(wal.last_seq(), 0);
    assert_eq!(wal.stats().bytes, before, "rejected batches write nothing");

    assert_eq!(wal.append_batch(&[(&ok_tenant, b"p")]).unwrap(), 1);
    drop(wal);
    let (_, replayed) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].tenant, ok_tenant);
}

#[test]
fn fsync_policy_always_syncs_once_per_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    fill(&mut wal, 4, 10);
    let s = wal.stats();
    assert_eq!(s.fsyncs, 4);
    assert!(s.fsync_seconds_sum >= s.last_fsync_seconds);
    assert!(s.last_fsync_seconds > 0.0);
}

#[test]
fn fsync_policy_never_and_long_interval_do_not_sync_appends() {
    for policy in [FsyncPolicy::Never, FsyncPolicy::Interval(Duration::from_secs(3600))] {
        let tmp = tempfile::tempdir().unwrap();
        let mut c = cfg(tmp.path(), 1 << 20);
        c.fsync = policy;
        let (mut wal, _) = Wal::open(c.clone()).unwrap();
        let expected = fill(&mut wal, 4, 10);
        assert_eq!(wal.stats().fsyncs, 0, "{policy:?}");
        wal.sync().unwrap();
        assert_eq!(wal.stats().fsyncs, 1, "{policy:?}");
        drop(wal);
        let (_, replayed) = Wal::open(c).unwrap();
        assert_eq!(replayed, expected);
    }
}

#[test]
fn fsync_policy_zero_interval_syncs_every_batch() {
    let tmp = tempfile::tempdir().unwrap();
    let mut c = cfg(tmp.path(), 1 << 20);
    c.fsync = FsyncPolicy::Interval(Duration::ZERO);
    let (mut wal, _) = Wal::open(c).unwrap();
    fill(&mut wal, 3, 2);
    assert_eq!(wal.stats().fsyncs, 3);
}

#[test]
fn empty_batch_writes_nothing_and_returns_next_seq() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    fill(&mut wal, 1, 2);
    let before = wal.stats();
    assert_eq!(wal.append_batch(&[]).unwrap(), 3);
    assert_eq!(wal.last_seq(), 2);
    assert_eq!(wal.stats().bytes, before.bytes);
    assert_eq!(wal.stats().fsyncs, before.fsyncs);
}

#[test]
fn stats_track_bytes_and_segments_on_disk() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 250)).unwrap();
    let handle = wal.stats_handle();
    fill(&mut wal, 12, 2);
    let files = segment_files(tmp.path());
    let on_disk: u64 = files.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    let s = handle.snapshot();
    assert_eq!(s.bytes, on_disk);
    assert_eq!(s.segments, files.len() as u64);
    drop(wal);
    let (wal, _) = Wal::open(cfg(tmp.path(), 250)).unwrap();
    let files = segment_files(tmp.path());
    let on_disk: u64 = files.iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(wal.stats().bytes, on_disk);
    assert_eq!(wal.stats().segments, files.len() as u64);
}

#[test]
fn open_filtered_skips_records_but_still_verifies_them() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 300)).unwrap();
    let expected = fill(&mut wal, 5, 4);
    drop(wal);
    let (wal, replayed) =
        Wal::open_filtered(cfg(tmp.path(), 300), |seq, t| t == "tenant-1" && seq > 10).unwrap();
    let want: Vec<WalRecord> =
        expected.into_iter().filter(|r| r.tenant == "tenant-1" && r.seq > 10).collect();
    assert!(!want.is_empty());
    assert_eq!(replayed, want);
    assert_eq!(wal.last_seq(), 20);
}

#[test]
fn second_open_of_same_dir_is_refused() {
    let tmp = tempfile::tempdir().unwrap();
    let (wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert!(matches!(Wal::open(cfg(tmp.path(), 1 << 20)), Err(WalError::Locked { .. })));
    drop(wal);
    assert!(Wal::open(cfg(tmp.path(), 1 << 20)).is_ok());
}

#[test]
fn large_batch_round_trips() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 4 << 20)).unwrap();
    let payloads: Vec<Vec<u8>> =
        (0..64u32).map(|i| (0..100_000u32).map(|j| (i ^ j) as u8).collect()).collect();
    let batch: Vec<(&str, &[u8])> = payloads.iter().map(|p| ("big", p.as_slice())).collect();
    assert_eq!(wal.append_batch(&batch).unwrap(), 1);
    assert_eq!(wal.append_batch(&batch).unwrap(), 65);
    drop(wal);
    let (_, replayed) = Wal::open(cfg(tmp.path(), 4 << 20)).unwrap();
    assert_eq!(replayed.len(), 128);
    for (i, r) in replayed.iter().enumerate() {
        assert_eq!(r.payload, payloads[i % 64]);
    }
}

/// A tmpfs of `size` bytes mounted for one test, so "no space left on device" comes from a real
/// filesystem. Mounting needs root; elsewhere the test is skipped with the reason printed.
struct TinyFs {
    dir: tempfile::TempDir,
}

impl TinyFs {
    fn mount(size: u64) -> Option<TinyFs> {
        let dir = tempfile::tempdir().unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(dir.path())
            .output();
        match out {
            Ok(o) if o.status.success() => Some(TinyFs { dir }),
            Ok(o) => {
                eprintln!(
                    "skipped: cannot mount a tmpfs (needs root): {}",
                    String::from_utf8_lossy(&o.stderr).trim()
                );
                None
            }
            Err(e) => {
                eprintln!("skipped: cannot run mount: {e}");
                None
            }
        }
    }

    fn path(&self) -> &Path {
        self.dir.path()
    }

    /// Takes all free space with a filler file; deleting it gives the space back.
    fn fill(&self) -> PathBuf {
        let path = self.path().join("filler");
        let mut f = File::create(&path).unwrap();
        let chunk = [0u8; 4096];
        loop {
            match f.write_all(&chunk) {
                Ok(()) => {}
                Err(e) => {
                    assert_eq!(e.kind(), io::ErrorKind::StorageFull, "{e}");
                    return path;
                }
            }
        }
    }

    fn resize(&self, size: u64) {
        let ok = std::process::Command::new("mount")
            .args(["-o", &format!("remount,size={size}")])
            .arg(self.path())
            .status()
            .unwrap()
            .success();
        assert!(ok, "remount failed");
    }
}

impl Drop for TinyFs {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount").arg("-l").arg(self.dir.path()).status();
    }
}

/// A record larger than a page, so it always needs a newly allocated page of the filesystem.
const BIG: usize = 10_000;

fn big(seq: u64) -> Vec<u8> {
    vec![seq as u8; BIG]
}

fn append_big(wal: &mut Wal, seq: u64) -> Result<u64, WalError> {
    let p = big(seq);
    wal.append_batch(&[("t", p.as_slice())])
}

fn replayed_seqs(dir: &Path, segment_bytes: u64) -> Vec<u64> {
    let (_, replayed) = Wal::open(cfg(dir, segment_bytes)).unwrap();
    for r in &replayed {
        assert_eq!(r.payload, big(r.seq), "payload of seq {}", r.seq);
    }
    replayed.iter().map(|r| r.seq).collect()
}

#[test]
fn append_on_a_full_disk_fails_without_poisoning_and_succeeds_once_space_is_freed() {
    let Some(fs) = TinyFs::mount(256 << 10) else { return };
    let dir = fs.path().join("wal");
    let (mut wal, _) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    assert_eq!(append_big(&mut wal, 1).unwrap(), 1);
    let filler = fs.fill();

    let err = append_big(&mut wal, 2).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(!wal.is_poisoned());
    let err = append_big(&mut wal, 2).unwrap_err();
    assert!(err.is_disk_full(), "a retry fails the same way: {err}");
    assert_eq!(wal.stats().write_failures, 2);
    assert_eq!(wal.stats().fsync_failures, 0);
    // The failed writes were cut off again: the file holds exactly what was acknowledged.
    let on_disk: u64 = segment_files(&dir).iter().map(|p| fs::metadata(p).unwrap().len()).sum();
    assert_eq!(wal.stats().bytes, on_disk);

    fs::remove_file(filler).unwrap();
    // A child process forked by a concurrent test may hold the filler open until it execs;
    // its space comes back then, so poll for it.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let seq = loop {
        match append_big(&mut wal, 2) {
            Ok(seq) => break seq,
            Err(e) if e.is_disk_full() && std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            Err(e) => panic!("append after freeing space: {e}"),
        }
    };
    assert_eq!(seq, 2, "the refused seq is reused");
    assert_eq!(append_big(&mut wal, 3).unwrap(), 3);
    drop(wal);
    assert_eq!(replayed_seqs(&dir, 1 << 20), vec![1, 2, 3]);
}

#[test]
fn a_segment_that_cannot_be_created_is_removed_and_the_wal_keeps_its_current_one() {
    let Some(fs) = TinyFs::mount(256 << 10) else { return };
    let dir = fs.path().join("wal");
    // Every batch rolls to a new segment.
    let (mut wal, _) = Wal::open(cfg(&dir, 1)).unwrap();
    append_big(&mut wal, 1).unwrap();
    append_big(&mut wal, 2).unwrap();
    let files_before = segment_files(&dir);
    let filler = fs.fill();

    let err = append_big(&mut wal, 3).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    assert!(!wal.is_poisoned());
    let s = wal.stats();
    assert!(s.create_failures >= 1 && s.write_failures == 1, "{s:?}");
    assert_eq!(segment_files(&dir), files_before, "no half-created segment is left behind");

    // Some space: the roll (a header) fits again, and so does the record.
    fs::remove_file(filler).unwrap();
    assert_eq!(append_big(&mut wal, 3).unwrap(), 3);
    assert_eq!(segment_files(&dir).len(), files_before.len() + 1);
    drop(wal);
    assert_eq!(replayed_seqs(&dir, 1), vec![1, 2, 3]);
}

#[test]
fn a_failed_roll_appends_to_the_current_segment_when_the_record_still_fits() {
    let Some(fs) = TinyFs::mount(256 << 10) else { return };
    let dir = fs.path().join("wal");
    let (mut wal, _) = Wal::open(cfg(&dir, 1)).unwrap();
    wal.append_batch(&[("t", b"first")]).unwrap();
    let files_before = segment_files(&dir);
    let filler = fs.fill();
    // A new segment needs a page the filesystem no longer has; the current segment's last
    // page still has room for a small record.
    assert_eq!(wal.append_batch(&[("t", b"second")]).unwrap(), 2);
    assert_eq!(wal.stats().create_failures, 1);
    assert_eq!(segment_files(&dir), files_before);
    fs::remove_file(filler).unwrap();
    assert_eq!(wal.append_batch(&[("t", b"third")]).unwrap(), 3);
    assert_eq!(segment_files(&dir).len(), files_before.len() + 1, "rolled once space returned");
    drop(wal);
    let (_, replayed) = Wal::open(cfg(&dir, 1)).unwrap();
    let payloads: Vec<&[u8]> = replayed.iter().map(|r| r.payload.as_slice()).collect();
    assert_eq!(payloads, vec![&b"first"[..], b"second", b"third"]);
}

#[test]
fn a_file_in_the_way_of_a_new_segment_poisons_the_wal() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1)).unwrap();
    append_big(&mut wal, 1).unwrap();
    // Something else took the name of the next segment: creating it fails.
    let squatter = segment_path(tmp.path(), 2);
    fs::write(&squatter, b"").unwrap();
    let err = append_big(&mut wal, 2).unwrap_err();
    assert!(matches!(err, WalError::Io { op: "create", .. }), "{err}");
    // A file by that name would sit in the middle of the log once the current segment grew.
    assert!(wal.is_poisoned(), "a file in the way of the log poisons");
    assert_eq!(wal.stats().create_failures, 1);
    drop(wal);
    fs::remove_file(squatter).unwrap();
    assert_eq!(replayed_seqs(tmp.path(), 1), vec![1]);
}

#[test]
fn truncation_on_a_full_disk_deletes_sealed_segments_first_and_frees_space_for_appends() {
    let Some(fs) = TinyFs::mount(256 << 10) else { return };
    let dir = fs.path().join("wal");
    let (mut wal, _) = Wal::open(cfg(&dir, 1)).unwrap();
    for seq in 1..=4 {
        append_big(&mut wal, seq).unwrap();
    }
    let filler = fs.fill();
    assert!(append_big(&mut wal, 5).unwrap_err().is_disk_full());

    // Everything is covered: the sealed segments go, the active one rolls into the freed space.
    wal.truncate_through(4).unwrap();
    assert!(!wal.is_poisoned());
    let firsts: Vec<u64> = segment_files(&dir).iter().map(|p| first_seq_of(p)).collect();
    assert_eq!(firsts, vec![5], "only the fresh active segment remains");
    assert_eq!(append_big(&mut wal, 5).unwrap(), 5, "appends resume without a reopen");
    drop(wal);
    fs::remove_file(filler).unwrap();
    assert_eq!(replayed_seqs(&dir, 1), vec![5]);
}

#[test]
fn truncation_whose_roll_fails_keeps_the_active_segment_and_finishes_later() {
    let Some(fs) = TinyFs::mount(256 << 10) else { return };
    let dir = fs.path().join("wal");
    let (mut wal, _) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    append_big(&mut wal, 1).unwrap();
    append_big(&mut wal, 2).unwrap();
    let filler = fs.fill();

    // The only segment is covered, but no new one fits: not an error, nothing deleted.
    wal.truncate_through(2).unwrap();
    assert!(!wal.is_poisoned());
    assert_eq!(wal.stats().create_failures, 1);
    assert_eq!(segment_files(&dir).len(), 1);

    fs::remove_file(filler).unwrap();
    wal.truncate_through(2).unwrap();
    let firsts: Vec<u64> = segment_files(&dir).iter().map(|p| first_seq_of(p)).collect();
    assert_eq!(firsts, vec![3]);
    assert_eq!(append_big(&mut wal, 3).unwrap(), 3);
    drop(wal);
    assert_eq!(replayed_seqs(&dir, 1 << 20), vec![3]);
}

#[test]
fn open_on_a_full_disk_replays_and_creates_the_segment_on_the_first_append_with_space() {
    let Some(fs) = TinyFs::mount(256 << 10) else { return };
    let dir = fs.path().join("wal");
    let (mut wal, _) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    append_big(&mut wal, 1).unwrap();
    append_big(&mut wal, 2).unwrap();
    drop(wal);
    let filler = fs.fill();

    let (mut wal, replayed) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    assert_eq!(replayed.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![1, 2]);
    assert!(!wal.is_poisoned());
    assert_eq!(wal.stats().create_failures, 1);
    assert_eq!(wal.last_seq(), 2);
    let err = append_big(&mut wal, 3).unwrap_err();
    assert!(err.is_disk_full(), "{err}");
    wal.sync().unwrap();
    // Truncating everything keeps the newest file: its name is the only record of the seq.
    wal.truncate_through(2).unwrap();
    assert!(!wal.is_poisoned());
    assert_eq!(segment_files(&dir).len(), 1);

    // Growing the filesystem is enough; the filler stays.
    fs.resize(512 << 10);
    assert_eq!(append_big(&mut wal, 3).unwrap(), 3);
    drop(wal);
    assert!(filler.exists());
    assert_eq!(replayed_seqs(&dir, 1 << 20), vec![1, 2, 3]);
}

#[test]
fn a_failed_fsync_poisons_the_wal_until_reopen() {
    let tmp = tempfile::tempdir().unwrap();
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    append_big(&mut wal, 1).unwrap();
    wal.fail_next_fsync = true;
    let err = append_big(&mut wal, 2).unwrap_err();
    assert!(matches!(err, WalError::Io { op: "fsync", .. }), "{err}");
    assert!(!err.is_disk_full());
    assert!(wal.is_poisoned());
    assert_eq!(wal.stats().fsync_failures, 1);
    assert!(matches!(append_big(&mut wal, 2), Err(WalError::Poisoned)));
    assert!(matches!(wal.sync(), Err(WalError::Poisoned)));
    assert!(matches!(wal.truncate_through(1), Err(WalError::Poisoned)));
    drop(wal);
    // The refused record reached the file and may come back: at-least-once, never a gap.
    let seqs = replayed_seqs(tmp.path(), 1 << 20);
    assert!(seqs == vec![1] || seqs == vec![1, 2], "{seqs:?}");
    let (mut wal, _) = Wal::open(cfg(tmp.path(), 1 << 20)).unwrap();
    assert!(!wal.is_poisoned());
    append_big(&mut wal, seqs.len() as u64 + 1).unwrap();
}

/// A record at seq u64::MAX (reachable from damaged segment names; the `wal_record` fuzz
/// target builds such segments) made replay overflow: a panic in debug builds; in release the
/// next segment was seq 0, which replay ignores, so records appended after it were lost on the
/// next start.
#[test]
fn a_record_at_the_last_seq_is_corruption_not_a_wrapped_log() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    fs::create_dir_all(&dir).unwrap();
    let seg = encode_segment(u64::MAX, &[(u64::MAX, "t", b"x")]).unwrap();
    fs::write(dir.join(segment_file_name(u64::MAX)), seg).unwrap();
    match Wal::open(cfg(&dir, 1 << 20)) {
        Err(WalError::Corrupt { reason, .. }) => assert!(reason.contains("no seq"), "{reason}"),
        other => panic!("expected corruption, got {other:?}"),
    }
}

#[test]
fn appends_are_refused_once_the_seq_space_is_used_up() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    fs::create_dir_all(&dir).unwrap();
    let last = u64::MAX - 1;
    let seg = encode_segment(last, &[(last, "t", b"x")]).unwrap();
    fs::write(dir.join(segment_file_name(last)), seg).unwrap();
    let (mut wal, replayed) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    assert_eq!(replayed.len(), 1);
    assert_eq!(wal.last_seq(), last);
    assert!(matches!(wal.append_batch(&[("t", b"y")]), Err(WalError::SeqExhausted { .. })));
    assert_eq!(wal.append_batch(&[]).unwrap(), u64::MAX, "an empty batch writes nothing");
    drop(wal);
    let (_, replayed) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    assert_eq!(replayed.len(), 1, "the refused record was not written");
}

/// Found by the `wal_record` fuzz target (`fuzz/corpus/wal_record/regression-append-at-seq-end`):
/// appending the record whose next seq is u64::MAX overflowed the seq iterator.
#[test]
fn the_last_storable_seq_can_be_appended_and_replayed() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("wal");
    fs::create_dir_all(&dir).unwrap();
    let first = u64::MAX - 2;
    let seg = encode_segment(first, &[(first, "t", b"x")]).unwrap();
    fs::write(dir.join(segment_file_name(first)), seg).unwrap();
    let (mut wal, _) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    assert_eq!(wal.append_batch(&[("t", b"y")]).unwrap(), u64::MAX - 1);
    drop(wal);
    let (wal, replayed) = Wal::open(cfg(&dir, 1 << 20)).unwrap();
    assert_eq!(replayed.iter().map(|r| r.seq).collect::<Vec<_>>(), vec![first, u64::MAX - 1]);
    assert_eq!(wal.last_seq(), u64::MAX - 1);
}

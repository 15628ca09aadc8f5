//! The export queue: bounded, fed by the per-thread span buffers (one lock per handed-over
//! buffer), drained by the export thread, which it wakes on a full batch, a flush request or
//! shutdown. What does not fit is dropped and counted: the request path never waits.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::span::Record;

const MAX_SPARE: usize = 1024;
/// Buffers with at least this many spans are handed over whole; fewer are copied.
const HANDOVER_MIN: usize = 16;
const TAIL_BATCH: usize = 256;
const MAX_SPARE_CAPACITY: usize = 4096;

/// Per-thread buffers are handed over whole (no per-span copy) and come back empty from the
/// export thread for reuse, so steady state allocates nothing.
#[derive(Default)]
struct QueueState {
    batches: Vec<Vec<Record>>,
    /// Spans in `batches`.
    queued: usize,
    /// Emptied buffers, handed back to threads that flush.
    spare: Vec<Vec<Record>>,
    shutdown: bool,
    flush_requested: u64,
    flush_done: u64,
}

/// What the export thread takes from the queue in one go.
pub(crate) struct Work {
    pub batches: Vec<Vec<Record>>,
    /// Flush requests these spans answer.
    pub flush_upto: u64,
    /// Shutdown was requested: export these, then stop.
    pub stop: bool,
}

pub(crate) struct Queue {
    capacity: usize,
    batch: usize,
    state: Mutex<QueueState>,
    /// Wakes the export thread (batch ready, flush, shutdown).
    wake: Condvar,
    /// Wakes callers of [`Queue::flush`].
    flushed: Condvar,
    dropped_full: AtomicU64,
}

impl Queue {
    /// At most `capacity` spans; the export thread wakes at `batch` queued spans.
    pub fn new(capacity: usize, batch: usize) -> Queue {
        let capacity = capacity.max(1);
        Queue {
            capacity,
            batch: batch.clamp(1, capacity),
            state: Mutex::new(QueueState::default()),
            wake: Condvar::new(),
            flushed: Condvar::new(),
            dropped_full: AtomicU64::new(0),
        }
    }

    /// Most spans per export request.
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Spans dropped because the queue was full.
    pub fn dropped_full(&self) -> u64 {
        self.dropped_full.load(Ordering::Relaxed)
    }

    fn lock(&self) -> MutexGuard<'_, QueueState> {
        // A panic while holding this lock cannot leave the queue inconsistent (pushes and
        // takes are single Vec operations), so a poisoned lock is still usable.
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Moves `buf` into the queue, dropping (and counting) what does not fit.
    pub fn push(&self, buf: &mut Vec<Record>) {
        if buf.is_empty() {
            return;
        }
        let mut dropped = buf.len();
        {
            let mut q = self.lock();
            if !q.shutdown {
                let before = q.queued;
                let room = self.capacity.saturating_sub(before);
                let take = room.min(buf.len());
                if take == buf.len() && take >= HANDOVER_MIN {
                    let spare = q.spare.pop().unwrap_or_else(|| Vec::with_capacity(buf.capacity()));
                    q.batches.push(std::mem::replace(buf, spare));
                } else if take > 0 {
                    // A few spans (a lone root span): copying them beats a buffer per flush.
                    let fits = q.batches.last().is_some_and(|b| b.capacity() - b.len() >= take);
                    if !fits {
                        let fresh = q.spare.pop().unwrap_or_else(|| Vec::with_capacity(TAIL_BATCH));
                        q.batches.push(fresh);
                    }
                    if let Some(tail) = q.batches.last_mut() {
                        tail.extend(buf.drain(..take));
                    }
                }
                q.queued += take;
                dropped -= take;
                // Wake only on crossing the threshold: notify is a syscall.
                if before < self.batch && q.queued >= self.batch {
                    self.wake.notify_one();
                }
            }
        }
        if dropped > 0 {
            self.dropped_full.fetch_add(dropped as u64, Ordering::Relaxed);
        }
        // Freed outside the lock.
        buf.clear();
    }

    /// Asks the export thread to export everything queued and waits until it has tried, or
    /// `timeout` passed, or the queue shut down.
    pub fn flush(&self, timeout: Duration) {
        let mut q = self.lock();
        q.flush_requested += 1;
        let want = q.flush_requested;
        self.wake.notify_one();
        let deadline = Instant::now() + timeout;
        while q.flush_done < want && !q.shutdown {
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                break;
            }
            q = self
                .flushed
                .wait_timeout(q, left)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
    }

    /// Refuses further spans and wakes the export thread for its last round; false if the
    /// queue was closed already.
    pub fn close(&self) -> bool {
        let mut q = self.lock();
        if q.shutdown {
            return false;
        }
        q.shutdown = true;
        self.wake.notify_one();
        true
    }

    /// Waits until there is work (a full batch, a flush request, shutdown) or `next` (the
    /// scheduled export) comes, and takes everything queued.
    pub fn take(&self, next: Instant) -> Work {
        let mut q = self.lock();
        loop {
            let now = Instant::now();
            if q.shutdown
                || q.flush_requested > q.flush_done
                || q.queued >= self.batch
                || now >= next
            {
                break;
            }
            q = self
                .wake
                .wait_timeout(q, next - now)
                .map(|r| r.0)
                .unwrap_or_else(|e| e.into_inner().0);
        }
        q.queued = 0;
        Work {
            batches: std::mem::take(&mut q.batches),
            flush_upto: q.flush_requested,
            stop: q.shutdown,
        }
    }

    /// Keeps emptied buffers for reuse by the threads that hand spans over.
    pub fn recycle(&self, batches: Vec<Vec<Record>>) {
        let mut q = self.lock();
        for mut b in batches {
            // Bounded: enough buffers for the threads that flush, none oversized.
            if q.spare.len() < MAX_SPARE && b.capacity() <= MAX_SPARE_CAPACITY {
                b.clear();
                q.spare.push(b);
            }
        }
    }

    /// Flush requests up to `upto` are answered: wakes their callers.
    pub fn flushed(&self, upto: u64) {
        let mut q = self.lock();
        q.flush_done = q.flush_done.max(upto);
        self.flushed.notify_all();
    }
}

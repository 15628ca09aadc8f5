//! The drain thread's work: take samples out of the ring, unwind their copied stacks with
//! framehop (DWARF CFI from `.eh_frame`), and aggregate identical (stack, span) pairs until the
//! push interval hands the aggregate to the push thread.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime};

use framehop::{CacheNative, MayAllocateDuringUnwind, Module, Unwinder, UnwinderNative};

use super::modules::{self, ModuleInfo};
use super::sampler::{Regs, SampleMeta, Snapshot};
use super::{COUNTERS, bump};

/// Frames kept per sample; deeper stacks are cut (and marked truncated).
const MAX_DEPTH: usize = 256;
/// Distinct (stack, span) pairs kept per push interval; further ones are dropped and counted.
/// Each span-labelled sample of a new request is its own pair, so this bounds memory at
/// roughly samples-per-interval in the worst case (~20k at 999 Hz on two cores over 10 s).
pub(super) const MAX_STACKS: usize = 100_000;
/// Re-reading the module list at most this often (when samples hit unknown code).
const MODULE_REFRESH: Duration = Duration::from_secs(10);

/// The span labels of a sample, shared by all samples with the same snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct SpanLabels {
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub span_name: Arc<str>,
    pub scope_id: [u8; 8],
    pub scope_name: Arc<str>,
    /// Span ids of the innermost scope on the sampled thread's stack, innermost first.
    pub chain: Box<[[u8; 8]]>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct StackKey {
    /// Lookup addresses, leaf first (return addresses minus one, so they fall in the call).
    pub frames: Box<[u64]>,
    /// The stack was not unwound to its root (copy cut, no stack bounds, depth limit).
    pub truncated: bool,
    pub span: Option<Arc<SpanLabels>>,
}

/// What one push interval collected.
pub(super) struct Batch {
    pub from: SystemTime,
    pub until: SystemTime,
    pub samples: HashMap<StackKey, u64>,
    pub modules: Arc<Vec<ModuleInfo>>,
    /// Process CPU time used during the interval: what the samples should add up to (they
    /// add up to less when the kernel cannot deliver the configured rate, see DESIGN.md).
    pub cpu_time: Duration,
    /// The final batch (shutdown): the push thread exits after it.
    pub last: bool,
}

pub(super) struct Collector {
    unwinder: UnwinderNative<Vec<u8>, MayAllocateDuringUnwind>,
    cache: CacheNative<MayAllocateDuringUnwind>,
    modules: Arc<Vec<ModuleInfo>>,
    refreshed: Instant,
    saw_unknown: bool,
    labels: HashMap<Snapshot, Arc<SpanLabels>>,
    names: HashMap<Box<[u8]>, Arc<str>>,
    samples: HashMap<StackKey, u64>,
    from: SystemTime,
    frames: Vec<u64>,
}

impl Collector {
    pub fn new() -> Collector {
        let mut c = Collector {
            unwinder: UnwinderNative::new(),
            cache: CacheNative::new(),
            modules: Arc::new(Vec::new()),
            refreshed: Instant::now(),
            saw_unknown: false,
            labels: HashMap::new(),
            names: HashMap::new(),
            samples: HashMap::new(),
            from: SystemTime::now(),
            frames: Vec::with_capacity(MAX_DEPTH),
        };
        c.refresh_modules();
        c
    }

    /// Adds modules loaded since the last look and removes unloaded ones.
    fn refresh_modules(&mut self) {
        let now = modules::loaded_modules();
        let same = |a: &ModuleInfo, b: &ModuleInfo| a.text == b.text && a.name == b.name;
        for gone in self.modules.iter().filter(|m| !now.iter().any(|n| same(m, n))) {
            self.unwinder.remove_module(gone.text.start);
        }
        for new in now.iter().filter(|n| !self.modules.iter().any(|m| same(m, n))) {
            if let Some(sections) = modules::unwind_sections(new) {
                self.unwinder.add_module(Module::new(
                    new.name.clone(),
                    new.text.clone(),
                    new.bias,
                    sections,
                ));
            }
        }
        self.modules = Arc::new(now);
        self.refreshed = Instant::now();
        self.saw_unknown = false;
    }

    /// Unwinds and aggregates one sample.
    pub fn add(&mut self, meta: &SampleMeta, stack: &[u8]) {
        let t = Instant::now();
        let mut frames = std::mem::take(&mut self.frames);
        let complete = self.unwind(meta.regs, stack, &mut frames);
        bump(&COUNTERS.unwind_nanos, t.elapsed().as_nanos() as u64);
        bump(&COUNTERS.unwound, 1);
        if frames.first().is_some_and(|&ip| modules::find(&self.modules, ip).is_none()) {
            self.saw_unknown = true;
        }
        let truncated = !meta.whole_stack || !complete;
        if truncated {
            bump(&COUNTERS.truncated, 1);
        }
        let span = meta.snap.active.then(|| self.labels_for(&meta.snap));
        let key = StackKey { frames: frames.as_slice().into(), truncated, span };
        frames.clear();
        self.frames = frames;
        if let Some(n) = self.samples.get_mut(&key) {
            *n += 1;
        } else if self.samples.len() < MAX_STACKS {
            self.samples.insert(key, 1);
        } else {
            bump(&COUNTERS.dropped_too_many_stacks, 1);
        }
    }

    /// Walks the copied stack. Returns false when unwinding stopped early for a reason other
    /// than reaching the end of the copy (the depth limit).
    fn unwind(&mut self, regs: Regs, stack: &[u8], out: &mut Vec<u64>) -> bool {
        let sp = regs.sp;
        // Only the copied bytes can be read: any other address is an error, which ends the
        // walk there (framehop never touches process memory itself).
        let mut read = |addr: u64| -> Result<u64, ()> {
            let off = usize::try_from(addr.checked_sub(sp).ok_or(())?).map_err(|_| ())?;
            let word = stack.get(off..off.checked_add(8).ok_or(())?).ok_or(())?;
            Ok(u64::from_ne_bytes(word.try_into().map_err(|_| ())?))
        };
        #[cfg(target_arch = "x86_64")]
        let start = framehop::x86_64::UnwindRegsX86_64::new(regs.ip, regs.sp, regs.fp);
        #[cfg(target_arch = "aarch64")]
        let start = framehop::aarch64::UnwindRegsAarch64::new_with_ptr_auth_mask(
            framehop::aarch64::PtrAuthMask::from_max_known_address(
                self.unwinder.max_known_code_address(),
            ),
            regs.lr,
            regs.sp,
            regs.fp,
        );
        let mut it = self.unwinder.iter_frames(regs.ip, start, &mut self.cache, &mut read);
        loop {
            match it.next() {
                Ok(Some(frame)) => {
                    if out.len() >= MAX_DEPTH {
                        return false;
                    }
                    out.push(frame.address_for_lookup());
                }
                // Reached the root, or could not read further: with the whole stack copied
                // that is its end (thread entry points often have no CFI end marker).
                Ok(None) | Err(_) => return true,
            }
        }
    }

    fn name(&mut self, bytes: &[u8]) -> Arc<str> {
        if let Some(n) = self.names.get(bytes) {
            return n.clone();
        }
        let n: Arc<str> = Arc::from(String::from_utf8_lossy(bytes).as_ref());
        self.names.insert(bytes.into(), n.clone());
        n
    }

    fn labels_for(&mut self, snap: &Snapshot) -> Arc<SpanLabels> {
        if let Some(l) = self.labels.get(snap) {
            return l.clone();
        }
        let l = Arc::new(SpanLabels {
            trace_id: snap.trace_id,
            span_id: snap.span_id,
            span_name: self.name(snap.span_name()),
            scope_id: snap.scope_id,
            scope_name: self.name(snap.scope_name()),
            chain: snap.chain().into(),
        });
        self.labels.insert(*snap, l.clone());
        l
    }

    /// Hands over what was collected since the last batch.
    pub fn take_batch(&mut self, cpu_time: Duration, last: bool) -> Batch {
        if self.saw_unknown && self.refreshed.elapsed() >= MODULE_REFRESH {
            self.refresh_modules();
        }
        let until = SystemTime::now();
        self.labels.clear();
        self.names.clear();
        Batch {
            from: std::mem::replace(&mut self.from, until),
            until,
            samples: std::mem::take(&mut self.samples),
            modules: self.modules.clone(),
            cpu_time,
            last,
        }
    }
}

/// The drain thread: empties the ring when the handler finds it half full, and every
/// `interval` hands a batch to the push thread (dropping it, counted, when the push thread is
/// still busy with two). Waking only then, rather than on a short timer, is what keeps its
/// cost down: a wake-up costs more than unwinding the few samples a short period finds.
pub(super) fn run(
    stop: &std::sync::atomic::AtomicBool,
    ring: &super::sampler::Ring,
    interval: Duration,
    tx: std::sync::mpsc::SyncSender<Batch>,
) {
    use std::sync::atomic::Ordering;
    // Its own samples (the profiler's cost) get full stacks too.
    super::sampler::register_current_thread();
    let mut c = Collector::new();
    let mut cpu = super::sampler::process_cpu_time();
    let mut next = Instant::now() + interval;
    loop {
        let stopping = stop.load(Ordering::Acquire);
        ring.drain(|meta, stack| c.add(meta, stack));
        let mut cpu_since = || {
            let now = super::sampler::process_cpu_time();
            now.saturating_sub(std::mem::replace(&mut cpu, now))
        };
        if stopping {
            // Blocks until the push thread takes it: it is the last one, and shutdown waits
            // for the push thread with a timeout anyway.
            let _ = tx.send(c.take_batch(cpu_since(), true));
            return;
        }
        if Instant::now() >= next {
            next = Instant::now() + interval;
            match tx.try_send(c.take_batch(cpu_since(), false)) {
                Ok(()) => {}
                Err(std::sync::mpsc::TrySendError::Full(_)) => bump(&COUNTERS.profiles_dropped, 1),
                Err(std::sync::mpsc::TrySendError::Disconnected(_)) => return,
            }
        }
        ring.wait(next.saturating_duration_since(Instant::now()));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Unwinding from a known frame: capture this thread's registers and stack the way the
    /// handler would (without a signal) and check the caller chain comes back.
    #[inline(never)]
    fn capture_here(ring: &super::super::sampler::Ring) {
        std::hint::black_box(ring);
        super::super::sampler::tests_support::record_current(ring);
    }

    #[inline(never)]
    fn outer_caller(ring: &super::super::sampler::Ring) {
        capture_here(ring);
        std::hint::black_box(());
    }

    #[test]
    fn unwinds_a_copied_stack_through_its_callers() {
        let ring = super::super::sampler::Ring::new(2);
        super::super::sampler::register_current_thread();
        outer_caller(&ring);
        let mut c = Collector::new();
        let mut got = None;
        ring.drain(|meta, stack| {
            let mut frames = Vec::new();
            let complete = c.unwind(meta.regs, stack, &mut frames);
            got = Some((frames, complete, meta.whole_stack));
        });
        let (frames, complete, whole) = got.expect("a sample");
        assert!(complete && whole);
        let mut sym = super::super::symbols::Symbolizer::new();
        let names: Vec<String> = frames
            .iter()
            .flat_map(|&a| {
                sym.resolve(&c.modules, a).iter().map(|f| f.function.clone()).collect::<Vec<_>>()
            })
            .collect();
        let pos = |n: &str| names.iter().position(|f| f.ends_with(n));
        let (inner, outer, test) = (
            pos("collect::tests::capture_here"),
            pos("collect::tests::outer_caller"),
            pos("collect::tests::unwinds_a_copied_stack_through_its_callers"),
        );
        assert!(inner.is_some() && inner < outer && outer < test, "{names:#?}");
    }
}

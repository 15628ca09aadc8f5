//! The signal side of the profiler: the per-thread span record the hooks publish, the
//! per-thread stack bounds, the SIGPROF handler and timer, and the ring of sample slots the
//! handler fills. Everything the handler touches is preallocated and lock-free; the argument
//! for why each access is sound is in `DESIGN.md` beside this file ("What a sample records, and
//! why it is never torn", "The handler") and in the `SAFETY` comments below.
#![allow(unsafe_code)]
#![deny(clippy::undocumented_unsafe_blocks)]

use std::cell::{Cell, UnsafeCell};
use std::ffi::c_void;
use std::mem::MaybeUninit;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicBool, AtomicU8, AtomicU64, AtomicUsize, Ordering, compiler_fence};

use super::ProfilingError;

/// Bytes of a span name kept per sample (longer names are cut at a character boundary).
pub(super) const NAME_CAP: usize = 64;
/// Spans of the innermost scope remembered per sample, for "slower than" relabelling.
pub(super) const CHAIN_CAP: usize = 8;
/// Bytes of stack copied per sample, from the interrupted stack pointer upwards. Debug builds
/// of tokio services use 20–40 KiB between a worker's entry point and a handler's poll; a
/// deeper stack is cut (the sample keeps its innermost frames and is marked truncated).
pub(super) const STACK_BYTES: usize = 64 * 1024;
/// Ring slots. The handler wakes the drain thread when half of them hold samples, so the other
/// half absorbs the samples taken until it runs. The stack area is allocated zeroed (calloc),
/// so pages are only committed once a sample uses them.
pub(super) const SLOTS: usize = 64;
/// Free slots the handler tries before it drops a sample.
const PROBES: usize = 4;

/// What a sample records about the span active on its thread.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(super) struct Snapshot {
    /// A recording span is active (otherwise the rest is meaningless).
    pub active: bool,
    pub span_name_len: u8,
    pub scope_name_len: u8,
    pub chain_len: u8,
    pub trace_id: [u8; 16],
    pub span_id: [u8; 8],
    pub scope_id: [u8; 8],
    /// Span ids on this thread's stack that share the innermost span's scope, innermost first.
    pub chain: [[u8; 8]; CHAIN_CAP],
    pub span_name: [u8; NAME_CAP],
    pub scope_name: [u8; NAME_CAP],
}

impl Snapshot {
    pub const EMPTY: Snapshot = Snapshot {
        active: false,
        span_name_len: 0,
        scope_name_len: 0,
        chain_len: 0,
        trace_id: [0; 16],
        span_id: [0; 8],
        scope_id: [0; 8],
        chain: [[0; 8]; CHAIN_CAP],
        span_name: [0; NAME_CAP],
        scope_name: [0; NAME_CAP],
    };

    pub fn span_name(&self) -> &[u8] {
        &self.span_name[..usize::from(self.span_name_len).min(NAME_CAP)]
    }

    pub fn scope_name(&self) -> &[u8] {
        &self.scope_name[..usize::from(self.scope_name_len).min(NAME_CAP)]
    }

    pub fn chain(&self) -> &[[u8; 8]] {
        &self.chain[..usize::from(self.chain_len).min(CHAIN_CAP)]
    }

    pub fn set_span_name(&mut self, name: &str) {
        self.span_name_len = copy_name(&mut self.span_name, name);
    }

    pub fn set_scope_name(&mut self, name: &str) {
        self.scope_name_len = copy_name(&mut self.scope_name, name);
    }
}

/// Copies `name` cut to the buffer at a character boundary (so the copy stays UTF-8).
fn copy_name(dst: &mut [u8; NAME_CAP], name: &str) -> u8 {
    let mut n = name.len().min(NAME_CAP);
    while !name.is_char_boundary(n) {
        n -= 1;
    }
    dst[..n].copy_from_slice(&name.as_bytes()[..n]);
    n as u8
}

/// Identifies what a snapshot describes, so re-publishing the same span (every poll of an
/// instrumented future enters and leaves it) only flips an index instead of copying names.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) struct Key {
    pub span: u64,
    pub name_ptr: usize,
    pub name_len: usize,
    pub depth: usize,
}

impl Key {
    pub const NONE: Key = Key { span: 0, name_ptr: 0, name_len: 0, depth: 0 };
}

/// Per-thread state shared between normal code (the hooks) and the signal handler, which runs
/// on the same thread and interrupts it at any instruction.
///
/// The span record is double-buffered: the writer only ever writes the buffer that is *not*
/// published and then flips `published` with one store, so the handler — which reads the
/// published buffer — can never see a record being written, whatever instruction it
/// interrupts. No retry loop is needed (a seqlock reader inside a handler could not wait for
/// the writer it interrupted anyway).
struct ThreadState {
    /// Generation counter; buffer `published & 1` is the one the handler reads.
    published: AtomicUsize,
    bufs: [UnsafeCell<Snapshot>; 2],
    /// Writer-only: what each buffer currently holds.
    keys: [Cell<Key>; 2],
    /// The thread's stack, `[lo, hi)`; `hi == 0` while unknown.
    stack_lo: AtomicUsize,
    stack_hi: AtomicUsize,
    bounds_tried: Cell<bool>,
}

impl ThreadState {
    const fn new() -> ThreadState {
        ThreadState {
            published: AtomicUsize::new(0),
            bufs: [UnsafeCell::new(Snapshot::EMPTY), UnsafeCell::new(Snapshot::EMPTY)],
            keys: [Cell::new(Key::NONE), Cell::new(Key::NONE)],
            stack_lo: AtomicUsize::new(0),
            stack_hi: AtomicUsize::new(0),
            bounds_tried: Cell::new(false),
        }
    }
}

thread_local! {
    // Const-initialised and without a destructor: accessing it is a plain TLS address
    // computation (no lazy initialisation, no registration), which is what makes reading it
    // from the signal handler possible.
    static THREAD: ThreadState = const { ThreadState::new() };
}

/// Publishes the active span of this thread. `fill` writes the snapshot for `key`; it is only
/// called when the spare buffer does not already hold that key.
pub(super) fn publish(key: Key, fill: impl FnOnce(&mut Snapshot)) {
    let _ = THREAD.try_with(|t| {
        if !t.bounds_tried.get() {
            record_bounds(t);
        }
        let g = t.published.load(Ordering::Relaxed);
        if t.keys[g & 1].get() == key {
            return;
        }
        let next = g.wrapping_add(1);
        let spare = next & 1;
        // Keeps the writes below after the previous flip: until this point the spare buffer
        // may have been the published one.
        compiler_fence(Ordering::SeqCst);
        if t.keys[spare].get() != key {
            // SAFETY: the spare buffer is not published (`published & 1 != spare`), so the
            // signal handler — the only other code touching it, on this same thread — never
            // reads it while this reference lives; no other thread can reach a thread-local.
            let snap = unsafe { &mut *t.bufs[spare].get() };
            fill(snap);
            t.keys[spare].set(key);
        }
        // The snapshot is complete before the handler can see it as published.
        compiler_fence(Ordering::SeqCst);
        t.published.store(next, Ordering::Relaxed);
    });
}

/// The snapshot this thread currently publishes (what a sample taken now would record).
#[cfg(test)]
pub(super) fn published_snapshot() -> Snapshot {
    THREAD
        .try_with(|t| {
            let g = t.published.load(Ordering::Relaxed);
            // SAFETY: the published buffer is only written after a flip away from it, which
            // cannot happen while this function (on the same thread) runs.
            unsafe { *t.bufs[g & 1].get() }
        })
        .unwrap_or(Snapshot::EMPTY)
}

/// Records this thread's stack bounds so samples taken on it can copy its stack (see the
/// module docs); done once per thread, outside the handler (pthread_getattr_np may allocate).
pub(super) fn register_current_thread() {
    let _ = THREAD.try_with(|t| {
        if !t.bounds_tried.get() {
            record_bounds(t);
        }
    });
}

fn record_bounds(t: &ThreadState) {
    t.bounds_tried.set(true);
    if let Some((lo, hi)) = current_stack_bounds() {
        t.stack_lo.store(lo, Ordering::Relaxed);
        compiler_fence(Ordering::SeqCst);
        t.stack_hi.store(hi, Ordering::Relaxed);
    }
}

#[cfg(target_os = "linux")]
fn current_stack_bounds() -> Option<(usize, usize)> {
    let mut attr = MaybeUninit::<libc::pthread_attr_t>::uninit();
    // SAFETY: `attr` is writable storage for one attribute object; on success
    // pthread_getattr_np initialises it (for the main thread it reads /proc/self/maps, which
    // is fine here: this is normal code, never the signal handler).
    if unsafe { libc::pthread_getattr_np(libc::pthread_self(), attr.as_mut_ptr()) } != 0 {
        return None;
    }
    let mut addr: *mut c_void = std::ptr::null_mut();
    let mut size: libc::size_t = 0;
    // SAFETY: `attr` was initialised above; the out-pointers are valid locals.
    let rc = unsafe { libc::pthread_attr_getstack(attr.as_ptr(), &mut addr, &mut size) };
    // SAFETY: destroys the attribute object initialised above, exactly once.
    unsafe { libc::pthread_attr_destroy(attr.as_mut_ptr()) };
    let lo = addr as usize;
    (rc == 0 && lo != 0 && size > 0).then(|| (lo, lo.saturating_add(size)))
}

#[cfg(not(target_os = "linux"))]
fn current_stack_bounds() -> Option<(usize, usize)> {
    None
}

/// Registers of the interrupted code that unwinding starts from.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub(super) struct Regs {
    pub ip: u64,
    pub sp: u64,
    /// Frame pointer (rbp / x29).
    pub fp: u64,
    /// Link register (aarch64 x30; 0 on x86_64).
    pub lr: u64,
}

/// One sample as the handler leaves it in a slot (the copied stack is stored separately).
#[derive(Clone, Copy, Debug)]
pub(super) struct SampleMeta {
    pub regs: Regs,
    /// Bytes of stack copied, starting at `regs.sp`.
    pub stack_len: usize,
    /// The copy reaches the top of the thread's stack (so unwinding can reach the root).
    pub whole_stack: bool,
    pub snap: Snapshot,
}

const FREE: u8 = 0;
const WRITING: u8 = 1;
const READY: u8 = 2;

struct Slot {
    /// FREE → WRITING (handler claims) → READY (handler publishes) → FREE (drain thread).
    state: AtomicU8,
    meta: UnsafeCell<SampleMeta>,
}

/// Preallocated, fixed-size sample slots shared by every thread's handler and one reader.
pub(super) struct Ring {
    slots: Box<[Slot]>,
    /// `slots.len() * STACK_BYTES` bytes: slot `i`'s stack copy lives at `i * STACK_BYTES`.
    stacks: Box<[UnsafeCell<u8>]>,
    next: AtomicUsize,
    /// Samples recorded and not yet drained.
    pending: AtomicUsize,
    /// eventfd the handler writes when `pending` reaches half the ring (-1: none, the drain
    /// thread then polls).
    wake_fd: i32,
}

// SAFETY: the UnsafeCells are accessed only under the slot state protocol: a slot's meta and
// stack bytes are written only by the one handler that won the FREE → WRITING exchange and
// read only by the drain thread after it observed READY (Release/Acquire pair), and the slot
// goes back to FREE only after the reader is done with it (Release store; the next writer's
// Acquire exchange orders its writes after that read).
unsafe impl Sync for Ring {}

impl Ring {
    pub fn new(slots: usize) -> Ring {
        let slots = slots.max(1);
        let empty = SampleMeta {
            regs: Regs::default(),
            stack_len: 0,
            whole_stack: false,
            snap: Snapshot::EMPTY,
        };
        let raw = Box::into_raw(vec![0u8; slots * STACK_BYTES].into_boxed_slice());
        // SAFETY: `UnsafeCell<u8>` is `repr(transparent)` over `u8`, so the boxed slice has
        // the same layout and length; ownership moves from the first box to the second.
        let stacks = unsafe { Box::from_raw(raw as *mut [UnsafeCell<u8>]) };
        Ring {
            slots: (0..slots)
                .map(|_| Slot { state: AtomicU8::new(FREE), meta: UnsafeCell::new(empty) })
                .collect(),
            stacks,
            next: AtomicUsize::new(0),
            pending: AtomicUsize::new(0),
            wake_fd: new_eventfd(),
        }
    }

    /// Wakes the drain thread (from the handler, or from `stop`). Async-signal-safe: one
    /// `write(2)` (on POSIX's list of async-signal-safe functions) to an eventfd, with `errno`
    /// saved and restored so the interrupted code never sees it change.
    pub fn wake(&self) {
        #[cfg(target_os = "linux")]
        if self.wake_fd >= 0 {
            let one: u64 = 1;
            // SAFETY: `__errno_location` returns this thread's errno slot (a TLS address,
            // valid for the thread's lifetime); `one` is a live 8-byte value, the length
            // eventfd requires; a failed write (counter saturated: a wake-up is pending
            // anyway) changes nothing but errno, which is restored.
            unsafe {
                let errno = libc::__errno_location();
                let saved = *errno;
                libc::write(self.wake_fd, (&raw const one).cast::<c_void>(), 8);
                *errno = saved;
            }
        }
    }

    /// Blocks the drain thread until the handler asks for a drain, [`Ring::wake`] is called,
    /// or `timeout` passes.
    pub fn wait(&self, timeout: std::time::Duration) {
        #[cfg(target_os = "linux")]
        if self.wake_fd >= 0 {
            let mut fds = libc::pollfd { fd: self.wake_fd, events: libc::POLLIN, revents: 0 };
            // Rounded up: a sub-millisecond rest must not become a busy poll(0) loop.
            let ms = libc::c_int::try_from(timeout.as_micros().div_ceil(1000))
                .unwrap_or(libc::c_int::MAX);
            let mut counter = 0u64;
            // SAFETY: `fds` is one valid pollfd; `counter` is 8 writable bytes, what an
            // eventfd read needs (non-blocking: it resets the counter or fails with EAGAIN).
            unsafe {
                if libc::poll(&mut fds, 1, ms) > 0 {
                    libc::read(self.wake_fd, (&raw mut counter).cast::<c_void>(), 8);
                }
            }
            return;
        }
        std::thread::sleep(timeout.min(std::time::Duration::from_millis(10)));
    }

    /// Claims a free slot (handler side): atomics only, bounded number of attempts.
    fn claim(&self) -> Option<usize> {
        let n = self.slots.len();
        let start = self.next.fetch_add(1, Ordering::Relaxed);
        (0..PROBES.min(n)).map(|k| start.wrapping_add(k) % n).find(|&i| {
            self.slots.get(i).is_some_and(|s| {
                s.state
                    .compare_exchange(FREE, WRITING, Ordering::Acquire, Ordering::Relaxed)
                    .is_ok()
            })
        })
    }

    fn stack_ptr(&self, i: usize) -> *mut u8 {
        self.stacks.get(i * STACK_BYTES).map_or(std::ptr::null_mut(), UnsafeCell::get)
    }

    /// Fills a claimed slot from the interrupted context and publishes it. Called by the
    /// handler; also by tests, with a fake context.
    fn record(&self, regs: Regs) -> bool {
        let Some(i) = self.claim() else { return false };
        let Some(slot) = self.slots.get(i) else { return false };
        // Counted before READY is published, so the drain thread (which subtracts what it
        // took after seeing READY) never takes the count below zero.
        let pending = self.pending.fetch_add(1, Ordering::Relaxed) + 1;
        // SAFETY: this call won slot `i`'s FREE → WRITING exchange, so nothing else reads or
        // writes its meta until the READY store below (see `unsafe impl Sync for Ring`).
        let meta = unsafe { &mut *slot.meta.get() };
        meta.regs = regs;
        meta.stack_len = 0;
        meta.whole_stack = false;
        meta.snap = Snapshot::EMPTY;
        let dst = self.stack_ptr(i);
        let _ = THREAD.try_with(|t| {
            let g = t.published.load(Ordering::Relaxed);
            // Reads the buffer after reading which one is published (same-thread ordering).
            compiler_fence(Ordering::SeqCst);
            // SAFETY: buffer `g & 1` is the published one. Its only writer is `publish` on this
            // same thread, which never writes the published buffer, and which cannot run
            // while this code (a signal handler interrupting that thread, or that thread
            // itself) does. Snapshot is plain data, so a bitwise copy is a valid value.
            meta.snap = unsafe { std::ptr::read(t.bufs[g & 1].get()) };
            let lo = t.stack_lo.load(Ordering::Relaxed);
            let hi = t.stack_hi.load(Ordering::Relaxed);
            let sp = regs.sp as usize;
            if lo < hi && lo <= sp && sp < hi && !dst.is_null() {
                let len = (hi - sp).min(STACK_BYTES);
                // SAFETY: source: `[sp, sp + len)` lies within `[lo, hi)`, this thread's own
                // stack as pthread reported it, and at or above the interrupted stack pointer,
                // i.e. in frames that exist (stack pages above sp are mapped — the stack only
                // grows downwards — and the guard page lies below `lo`). An sp outside the
                // bounds (an alternate signal stack, a coroutine stack) copies nothing.
                // Destination: slot `i`'s `STACK_BYTES` area, which this call owns (see
                // above); `len <= STACK_BYTES`. The ranges cannot overlap (heap vs stack).
                // The bytes are treated as opaque machine words: the unwinder validates every
                // address it derives from them.
                unsafe { std::ptr::copy_nonoverlapping(sp as *const u8, dst, len) };
                meta.stack_len = len;
                meta.whole_stack = hi - sp <= STACK_BYTES;
            }
        });
        slot.state.store(READY, Ordering::Release);
        if pending == (self.slots.len() / 2).max(1) {
            self.wake();
        }
        true
    }

    /// Hands every ready sample to `f` (drain thread side) and frees its slot. Returns how
    /// many were handed over.
    pub fn drain(&self, mut f: impl FnMut(&SampleMeta, &[u8])) -> usize {
        let mut n = 0;
        for (i, slot) in self.slots.iter().enumerate() {
            if slot.state.load(Ordering::Acquire) != READY {
                continue;
            }
            // SAFETY: READY was published with Release by the handler after it finished
            // writing; until this thread stores FREE, no handler claims the slot (claims
            // require FREE), so shared references to its data are sound.
            let meta = unsafe { &*slot.meta.get() };
            let len = meta.stack_len.min(STACK_BYTES);
            let start = i * STACK_BYTES;
            let stack: &[u8] = match self.stacks.get(start..start + len) {
                // SAFETY: as above (the slot's stack area is covered by the same protocol);
                // `UnsafeCell<u8>` has the layout of `u8`.
                Some(cells) => unsafe {
                    std::slice::from_raw_parts(cells.as_ptr() as *const u8, cells.len())
                },
                None => &[],
            };
            f(meta, stack);
            slot.state.store(FREE, Ordering::Release);
            n += 1;
        }
        self.pending.fetch_sub(n, Ordering::Relaxed);
        n
    }
}

impl Drop for Ring {
    fn drop(&mut self) {
        #[cfg(target_os = "linux")]
        if self.wake_fd >= 0 {
            // SAFETY: the descriptor was opened by `new_eventfd` for this ring only.
            unsafe { libc::close(self.wake_fd) };
        }
    }
}

/// A non-blocking, close-on-exec eventfd, or -1.
fn new_eventfd() -> i32 {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: plain system call with constant flags; returns a new descriptor or -1.
        unsafe { libc::eventfd(0, libc::EFD_CLOEXEC | libc::EFD_NONBLOCK) }
    }
    #[cfg(not(target_os = "linux"))]
    {
        -1
    }
}

/// Process-wide counters the handler updates (lock-free atomics only).
pub(super) struct Counters {
    pub samples: AtomicU64,
    pub dropped_ring_full: AtomicU64,
}

pub(super) static COUNTERS: Counters =
    Counters { samples: AtomicU64::new(0), dropped_ring_full: AtomicU64::new(0) };

static RING: OnceLock<Ring> = OnceLock::new();
/// The handler records samples only while this is set (it stays installed after shutdown:
/// restoring the default disposition could turn a still-pending SIGPROF into process death).
static SAMPLING: AtomicBool = AtomicBool::new(false);

pub(super) fn ring() -> Option<&'static Ring> {
    RING.get()
}

/// The process's ring, created on first use (before the drain thread starts).
pub(super) fn ring_or_init() -> &'static Ring {
    RING.get_or_init(|| Ring::new(SLOTS))
}

/// SIGPROF handler. Async-signal-safe: it reads a const thread-local, uses atomics, and
/// copies memory (`memcpy`, async-signal-safe per POSIX.1-2016); it allocates nothing, takes
/// no lock and cannot panic (no indexing without `get`, no unwrap). Its one system call, when
/// the ring becomes half full, is `write(2)` to an eventfd, with `errno` saved and restored.
#[cfg(target_os = "linux")]
extern "C" fn on_sigprof(_sig: libc::c_int, _info: *mut libc::siginfo_t, uctx: *mut c_void) {
    if !SAMPLING.load(Ordering::Relaxed) {
        return;
    }
    let (Some(ring), Some(regs)) = (RING.get(), regs_of(uctx)) else { return };
    if ring.record(regs) {
        COUNTERS.samples.fetch_add(1, Ordering::Relaxed);
    } else {
        COUNTERS.dropped_ring_full.fetch_add(1, Ordering::Relaxed);
    }
}

#[cfg(all(target_os = "linux", target_arch = "x86_64"))]
fn regs_of(uctx: *mut c_void) -> Option<Regs> {
    let uc = uctx as *const libc::ucontext_t;
    if uc.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a pointer to the interrupted
    // context, valid for the duration of the handler; we only read it.
    let g = unsafe { &(*uc).uc_mcontext.gregs };
    let reg = |r: libc::c_int| usize::try_from(r).ok().and_then(|i| g.get(i)).map(|v| *v as u64);
    Some(Regs { ip: reg(libc::REG_RIP)?, sp: reg(libc::REG_RSP)?, fp: reg(libc::REG_RBP)?, lr: 0 })
}

#[cfg(all(target_os = "linux", target_arch = "aarch64"))]
fn regs_of(uctx: *mut c_void) -> Option<Regs> {
    let uc = uctx as *const libc::ucontext_t;
    if uc.is_null() {
        return None;
    }
    // SAFETY: for an SA_SIGINFO handler the kernel passes a pointer to the interrupted
    // context, valid for the duration of the handler; we only read it.
    let m = unsafe { &(*uc).uc_mcontext };
    Some(Regs { ip: m.pc, sp: m.sp, fp: *m.regs.get(29)?, lr: *m.regs.get(30)? })
}

/// Whether this platform is supported (Linux on x86_64 or aarch64).
pub(super) const SUPPORTED: bool =
    cfg!(all(target_os = "linux", any(target_arch = "x86_64", target_arch = "aarch64")));

/// What SIGPROF currently does in this process.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SigprofDisposition {
    /// The default action (terminate): no handler installed.
    Default,
    Ignored,
    /// skein-instrument's sampler.
    Skein,
    /// Someone else's handler (another profiler).
    Other,
}

/// Queries SIGPROF's disposition with `sigaction` (without changing it).
pub fn sigprof_disposition() -> SigprofDisposition {
    #[cfg(target_os = "linux")]
    {
        let mut old = MaybeUninit::<libc::sigaction>::zeroed();
        // SAFETY: a null new action only queries; `old` is valid storage for the result.
        let rc = unsafe { libc::sigaction(libc::SIGPROF, std::ptr::null(), old.as_mut_ptr()) };
        if rc != 0 {
            return SigprofDisposition::Other;
        }
        // SAFETY: sigaction succeeded and filled `old` (it was zeroed before, too).
        let old = unsafe { old.assume_init() };
        let ours = on_sigprof as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void)
            as *const () as libc::sighandler_t;
        match old.sa_sigaction {
            libc::SIG_DFL => SigprofDisposition::Default,
            libc::SIG_IGN => SigprofDisposition::Ignored,
            h if h == ours => SigprofDisposition::Skein,
            _ => SigprofDisposition::Other,
        }
    }
    #[cfg(not(target_os = "linux"))]
    SigprofDisposition::Default
}

/// Whether the profiling timer (ITIMER_PROF) is armed in this process.
#[cfg(any(test, feature = "test-support"))]
pub fn profiling_timer_armed() -> bool {
    #[cfg(target_os = "linux")]
    {
        let mut cur = MaybeUninit::<libc::itimerval>::zeroed();
        // SAFETY: `cur` is valid storage for the result.
        if unsafe { libc::getitimer(libc::ITIMER_PROF, cur.as_mut_ptr()) } != 0 {
            return false;
        }
        // SAFETY: getitimer succeeded and filled `cur`.
        let cur = unsafe { cur.assume_init() };
        cur.it_value.tv_sec != 0
            || cur.it_value.tv_usec != 0
            || cur.it_interval.tv_sec != 0
            || cur.it_interval.tv_usec != 0
    }
    #[cfg(not(target_os = "linux"))]
    false
}

/// Allocates the ring, installs the handler and arms the process CPU-time timer at `hz`.
pub(super) fn start(hz: u32) -> Result<(), ProfilingError> {
    if !SUPPORTED {
        return Err(ProfilingError::Unsupported);
    }
    match sigprof_disposition() {
        SigprofDisposition::Default | SigprofDisposition::Ignored | SigprofDisposition::Skein => {}
        SigprofDisposition::Other => return Err(ProfilingError::SignalInUse),
    }
    ring_or_init();
    install_handler()?;
    SAMPLING.store(true, Ordering::Relaxed);
    if let Err(e) = set_timer(hz) {
        SAMPLING.store(false, Ordering::Relaxed);
        return Err(e);
    }
    Ok(())
}

/// Disarms the timer and stops recording (the handler stays installed, as a no-op).
pub(super) fn stop() {
    let _ = set_timer(0);
    SAMPLING.store(false, Ordering::Relaxed);
}

#[cfg(target_os = "linux")]
fn install_handler() -> Result<(), ProfilingError> {
    // SAFETY: an all-zero sigaction is a valid value (empty mask, no flags, SIG_DFL).
    let mut sa: libc::sigaction = unsafe { std::mem::zeroed() };
    sa.sa_sigaction = on_sigprof as extern "C" fn(libc::c_int, *mut libc::siginfo_t, *mut c_void)
        as *const () as libc::sighandler_t;
    // SA_RESTART: system calls the signal interrupts are restarted instead of failing with
    // EINTR in application code that does not expect it.
    sa.sa_flags = libc::SA_SIGINFO | libc::SA_RESTART;
    // SAFETY: `sa.sa_mask` is a valid sigset_t to initialise.
    unsafe { libc::sigemptyset(&mut sa.sa_mask) };
    // SAFETY: `sa` is fully initialised and its handler has the SA_SIGINFO signature.
    if unsafe { libc::sigaction(libc::SIGPROF, &sa, std::ptr::null_mut()) } != 0 {
        return Err(ProfilingError::Sys { what: "sigaction(SIGPROF)", source: last_os_error() });
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn install_handler() -> Result<(), ProfilingError> {
    Err(ProfilingError::Unsupported)
}

/// Arms (hz > 0) or disarms (hz == 0) ITIMER_PROF: SIGPROF every 1/hz s of process CPU time,
/// delivered to the thread that was running when the interval expired.
#[cfg(target_os = "linux")]
fn set_timer(hz: u32) -> Result<(), ProfilingError> {
    let usec = if hz == 0 { 0 } else { (1_000_000 / u64::from(hz)).max(1) };
    let tv = libc::timeval {
        tv_sec: (usec / 1_000_000) as libc::time_t,
        tv_usec: (usec % 1_000_000) as libc::suseconds_t,
    };
    let it = libc::itimerval { it_interval: tv, it_value: tv };
    // SAFETY: `it` is a valid itimerval; the old value is not requested.
    if unsafe { libc::setitimer(libc::ITIMER_PROF, &it, std::ptr::null_mut()) } != 0 {
        return Err(ProfilingError::Sys {
            what: "setitimer(ITIMER_PROF)",
            source: last_os_error(),
        });
    }
    Ok(())
}

#[cfg(not(target_os = "linux"))]
fn set_timer(_hz: u32) -> Result<(), ProfilingError> {
    Err(ProfilingError::Unsupported)
}

/// CPU time this process has used so far (all threads).
pub(super) fn process_cpu_time() -> std::time::Duration {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is valid storage for the result; on failure it stays zero.
    unsafe { libc::clock_gettime(libc::CLOCK_PROCESS_CPUTIME_ID, &mut ts) };
    std::time::Duration::new(ts.tv_sec.max(0) as u64, ts.tv_nsec.clamp(0, 999_999_999) as u32)
}

fn last_os_error() -> std::io::Error {
    std::io::Error::last_os_error()
}

/// Test helper: records a sample of the calling code without a signal (registers read with
/// inline assembly), exercising the same copy path as the handler.
#[cfg(test)]
pub(super) mod tests_support {
    use super::{Regs, Ring};

    #[inline(never)]
    pub fn record_current(ring: &Ring) -> bool {
        let (ip, sp, fp, lr): (u64, u64, u64, u64);
        #[cfg(target_arch = "x86_64")]
        // SAFETY: reads rip/rsp/rbp into registers; touches no memory and no flags.
        unsafe {
            std::arch::asm!(
                "lea {ip}, [rip]", "mov {sp}, rsp", "mov {fp}, rbp",
                ip = out(reg) ip, sp = out(reg) sp, fp = out(reg) fp,
                options(nomem, nostack, preserves_flags)
            );
            lr = 0;
        }
        #[cfg(target_arch = "aarch64")]
        // SAFETY: reads pc/sp/x29/x30 into registers; touches no memory and no flags.
        unsafe {
            std::arch::asm!(
                "adr {ip}, .", "mov {sp}, sp", "mov {fp}, x29", "mov {lr}, x30",
                ip = out(reg) ip, sp = out(reg) sp, fp = out(reg) fp, lr = out(reg) lr,
                options(nomem, nostack, preserves_flags)
            );
        }
        ring.record(Regs { ip, sp, fp, lr })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn snap(id: u8, name: &str) -> impl FnOnce(&mut Snapshot) + '_ {
        move |s: &mut Snapshot| {
            *s = Snapshot::EMPTY;
            s.active = true;
            s.span_id = [id; 8];
            s.set_span_name(name);
        }
    }

    fn key(id: u8) -> Key {
        Key { span: u64::from(id), name_ptr: 1, name_len: 1, depth: 1 }
    }

    #[test]
    fn publishing_flips_between_two_buffers_and_reuses_them() {
        publish(key(1), snap(1, "one"));
        assert_eq!(published_snapshot().span_id, [1; 8]);
        publish(Key::NONE, |s| *s = Snapshot::EMPTY);
        assert!(!published_snapshot().active);
        // The spare buffer still holds span 1: it is re-published without calling `fill`.
        publish(key(1), |_| panic!("must not rewrite an up-to-date buffer"));
        assert_eq!(published_snapshot().span_name(), b"one");
        // Publishing what is already published changes nothing.
        publish(key(1), |_| panic!("already published"));
        publish(key(2), snap(2, "two"));
        assert_eq!(published_snapshot().span_name(), b"two");
    }

    #[test]
    fn names_are_cut_at_a_character_boundary() {
        let mut s = Snapshot::EMPTY;
        let long = "é".repeat(40); // 80 bytes
        s.set_span_name(&long);
        assert_eq!(s.span_name().len(), 64);
        assert!(std::str::from_utf8(s.span_name()).is_ok());
        let odd = format!("a{}", "é".repeat(40)); // a boundary falls at 63
        s.set_scope_name(&odd);
        assert_eq!(s.scope_name().len(), 63);
    }

    #[test]
    fn the_drain_thread_is_woken_when_half_the_ring_holds_samples() {
        use std::time::{Duration, Instant};
        let ring = Ring::new(4);
        assert!(ring.wake_fd >= 0);
        let waited = |ring: &Ring| {
            let t = Instant::now();
            ring.wait(Duration::from_millis(300));
            t.elapsed()
        };
        assert!(tests_support::record_current(&ring));
        assert!(waited(&ring) >= Duration::from_millis(250), "one sample of four: no wake-up");
        assert!(tests_support::record_current(&ring));
        assert!(waited(&ring) < Duration::from_millis(250), "two of four: woken");
        // The wake-up was consumed; draining resets the count, and it fires again at two.
        assert!(waited(&ring) >= Duration::from_millis(250));
        assert_eq!(ring.drain(|_, _| {}), 2);
        assert!(tests_support::record_current(&ring));
        assert!(tests_support::record_current(&ring));
        assert!(waited(&ring) < Duration::from_millis(250));
        // `wake` from normal code (shutdown) wakes it too, and leaves errno alone.
        // SAFETY: this thread's errno slot.
        unsafe { *libc::__errno_location() = libc::EINTR };
        ring.wake();
        // SAFETY: as above.
        assert_eq!(unsafe { *libc::__errno_location() }, libc::EINTR);
        assert!(waited(&ring) < Duration::from_millis(250));
    }

    #[test]
    fn ring_slots_cycle_and_drop_when_full() {
        let ring = Ring::new(4);
        register_current_thread();
        publish(key(7), snap(7, "seven"));
        // A stack pointer inside this thread's stack: the local's address.
        let local = 0u64;
        let sp = std::ptr::addr_of!(local) as u64;
        for _ in 0..4 {
            assert!(ring.record(Regs { ip: 1, sp, fp: 0, lr: 0 }));
        }
        assert!(!ring.record(Regs { ip: 1, sp, fp: 0, lr: 0 }), "all slots are taken");
        let mut seen = 0;
        let n = ring.drain(|meta, stack| {
            seen += 1;
            assert_eq!(meta.snap.span_name(), b"seven");
            assert!(meta.stack_len > 0 && stack.len() == meta.stack_len);
            // The copy starts at sp: its first word is `local`.
            assert_eq!(stack[..8], 0u64.to_ne_bytes());
        });
        assert_eq!((n, seen), (4, 4));
        // An sp outside the thread's stack copies nothing.
        assert!(ring.record(Regs { ip: 1, sp: 8, fp: 0, lr: 0 }));
        ring.drain(|meta, stack| assert!(meta.stack_len == 0 && stack.is_empty()));
        publish(Key::NONE, |s| *s = Snapshot::EMPTY);
    }
}

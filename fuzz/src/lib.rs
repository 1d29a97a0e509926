//! Helpers shared by the fuzz targets in `fuzz_targets/`.
//!
//! - [`split`] cuts a byte stream into chunks at points chosen by one seed byte, so every target
//!   can check that a streaming decoder gives the same answer however its input arrives.
//! - [`ChunkedReader`] is an `AsyncRead` that hands out those chunks one read at a time.
//! - [`measure_peak`] runs a closure and reports the most heap it held at once (this crate
//!   installs a counting global allocator), so targets can assert that hostile input never makes
//!   a decoder allocate far beyond its limit.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use tokio::io::{AsyncRead, ReadBuf};

/// A deadline no fuzz input can reach: [`ChunkedReader`] never makes a read wait.
pub const NO_DEADLINE: Duration = Duration::from_secs(3600);

/// Cuts `data` into non-empty chunks. Seed 0 gives the whole input as one chunk; other seeds give
/// pseudo-random chunk sizes up to a maximum the seed also picks (1 byte up to 4 KiB).
pub fn split(seed: u8, data: &[u8]) -> Vec<&[u8]> {
    if seed == 0 || data.is_empty() {
        return vec![data];
    }
    const MAX_CHUNK: [usize; 8] = [1, 2, 3, 5, 16, 64, 512, 4096];
    let max = MAX_CHUNK[usize::from(seed & 7)];
    let mut state = u64::from(seed) | 0x9e37_79b9_0000_0100;
    let mut chunks = Vec::new();
    let mut rest = data;
    while !rest.is_empty() {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        // In 1..=max; max is small, so the cast cannot truncate a meaningful value.
        let size = (1 + state % max as u64) as usize;
        let (chunk, tail) = rest.split_at(size.min(rest.len()));
        chunks.push(chunk);
        rest = tail;
    }
    chunks
}

/// An `AsyncRead` that returns at most one chunk per read and never waits: end of input is
/// end of stream.
pub struct ChunkedReader {
    chunks: VecDeque<Vec<u8>>,
}

impl ChunkedReader {
    /// A reader over `chunks`, in order; empty chunks are dropped (an empty read means EOF).
    pub fn new(chunks: &[&[u8]]) -> Self {
        ChunkedReader {
            chunks: chunks
                .iter()
                .filter(|c| !c.is_empty())
                .map(|c| c.to_vec())
                .collect(),
        }
    }

    /// The bytes nobody has read yet.
    pub fn remaining(&self) -> Vec<u8> {
        self.chunks.iter().flatten().copied().collect()
    }
}

impl AsyncRead for ChunkedReader {
    fn poll_read(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        if let Some(mut chunk) = self.chunks.pop_front() {
            let n = chunk.len().min(buf.remaining());
            buf.put_slice(&chunk[..n]);
            if n < chunk.len() {
                chunk.drain(..n);
                self.chunks.push_front(chunk);
            }
        }
        Poll::Ready(Ok(()))
    }
}

/// A current-thread tokio runtime with timers, built once per process.
pub fn runtime() -> &'static tokio::runtime::Runtime {
    static RUNTIME: OnceLock<tokio::runtime::Runtime> = OnceLock::new();
    RUNTIME.get_or_init(|| {
        tokio::runtime::Builder::new_current_thread()
            .enable_time()
            .build()
            .expect("a current-thread runtime builds")
    })
}

static LIVE: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

/// The system allocator, counting live bytes and their high-water mark.
struct CountingAlloc;

// SAFETY: every call is forwarded unchanged to `System`; the counters only observe sizes.
unsafe impl GlobalAlloc for CountingAlloc {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            grow(layout.size());
        }
        ptr
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            grow(layout.size());
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: same contract as the caller's.
        unsafe { System.dealloc(ptr, layout) };
        LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        // SAFETY: same contract as the caller's.
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            // Both blocks may be live while the bytes are copied.
            grow(new_size);
            LIVE.fetch_sub(layout.size(), Ordering::Relaxed);
        }
        new
    }
}

fn grow(size: usize) {
    let live = LIVE.fetch_add(size, Ordering::Relaxed) + size;
    PEAK.fetch_max(live, Ordering::Relaxed);
}

#[global_allocator]
static ALLOCATOR: CountingAlloc = CountingAlloc;

/// Runs `f` and returns its result with the most heap, in bytes, that was live at once during
/// the call beyond what was live when it started. Fuzz targets run on one thread, so the count
/// is `f`'s own.
pub fn measure_peak<R>(f: impl FnOnce() -> R) -> (R, usize) {
    let start = LIVE.load(Ordering::Relaxed);
    PEAK.store(start, Ordering::Relaxed);
    let result = f();
    let peak = PEAK.load(Ordering::Relaxed).saturating_sub(start);
    (result, peak)
}

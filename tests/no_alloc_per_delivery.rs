//! Proves the fanout path allocates per message, never per delivery: once the
//! queues are warm, delivering N frames to 1,000 subscribers (queue push plus
//! gathered write) makes at most N allocations (the per-worker `Rc` of each
//! frame), not N x 1,000.

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;
use std::io::{self, IoSlice, Write};
use std::rc::Rc;
use std::sync::atomic::{AtomicU64, Ordering};

use bytes::Bytes;
use tickwire::channel::ChannelId;
use tickwire::conflate::{Frame, OutQueue};

struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

thread_local! {
    // Only the measuring thread counts: the test harness's own threads may
    // allocate at any time (seen on a loaded machine). A const Cell needs no
    // lazy initialisation, so reading it never allocates.
    static COUNTING: Cell<bool> = const { Cell::new(false) };
}

fn count() {
    if COUNTING.with(Cell::get) {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
    }
}

// SAFETY: forwards every call unchanged to the system allocator; the counter
// is the only addition and touches no allocated memory.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        count();
        // SAFETY: same layout contract as our caller's.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `System.alloc` with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        count();
        // SAFETY: `ptr` came from `System` with `layout`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

struct Sink;
impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        Ok(buf.len())
    }
    fn write_vectored(&mut self, bufs: &[IoSlice<'_>]) -> io::Result<usize> {
        Ok(bufs.iter().map(|b| b.len()).sum())
    }
    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

#[test]
fn delivering_to_a_thousand_subscribers_allocates_once_per_frame() {
    let frame = tickwire::frame::update(b"AAPL", 1, br#"{"ch":"AAPL","bid":1.5}"#);
    let mut queues: Vec<OutQueue> = (0..1000).map(|_| OutQueue::default()).collect();
    let mut deliveries = 0u64;
    let mut round = |queues: &mut Vec<OutQueue>, frames: u64, seq0: u64| {
        for k in 0..frames {
            let f = Frame::update(Bytes::clone(&frame), ChannelId(0), seq0 + k, 0);
            for q in queues.iter_mut() {
                q.push_update(Rc::clone(&f), 256 * 1024);
            }
        }
        for q in queues.iter_mut() {
            q.flush(&mut Sink, |_| deliveries += 1).unwrap();
        }
    };
    // Warm-up: queues reach their working capacity.
    round(&mut queues, 8, 1);
    let before = ALLOCATIONS.load(Ordering::Relaxed);
    COUNTING.with(|c| c.set(true));
    for r in 0..100 {
        round(&mut queues, 8, 100 + r * 8);
    }
    COUNTING.with(|c| c.set(false));
    let allocations = ALLOCATIONS.load(Ordering::Relaxed) - before;
    assert_eq!(deliveries, 1000 * 8 * 101);
    assert!(
        allocations <= 800,
        "{allocations} allocations for 800 frames and 800,000 deliveries"
    );
}

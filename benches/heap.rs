//! A global allocator that counts the bytes in use, for the benches that measure memory per
//! entry (`cargo bench -p keygate-benches --bench limiter_memory`, `--bench store_memory`).
//!
//! Install it in a bench binary with `#[global_allocator] static HEAP: Counting = Counting;`,
//! then read [`in_use`] before and after building a structure: the difference is the heap it
//! holds (what it asked for, without the allocator's own rounding and bookkeeping).
//!
//! ```
//! use keygate_benches::heap;
//!
//! // Without the allocator installed nothing is counted.
//! let before = heap::in_use();
//! let v = vec![0u8; 1024];
//! assert_eq!(heap::in_use() - before, 0);
//! drop(v);
//! ```

use std::alloc::{GlobalAlloc, Layout, System};
use std::sync::atomic::{AtomicIsize, Ordering};

static IN_USE: AtomicIsize = AtomicIsize::new(0);

/// Forwards to the system allocator, counting the bytes handed out and not yet given back.
pub struct Counting;

// SAFETY: every call is forwarded to the system allocator unchanged; the counter is a plain
// atomic, which allocates nothing.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc(layout) };
        if !ptr.is_null() {
            IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        unsafe { System.dealloc(ptr, layout) };
        IN_USE.fetch_sub(layout.size() as isize, Ordering::Relaxed);
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        let ptr = unsafe { System.alloc_zeroed(layout) };
        if !ptr.is_null() {
            IN_USE.fetch_add(layout.size() as isize, Ordering::Relaxed);
        }
        ptr
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let new = unsafe { System.realloc(ptr, layout, new_size) };
        if !new.is_null() {
            IN_USE.fetch_add(
                new_size as isize - layout.size() as isize,
                Ordering::Relaxed,
            );
        }
        new
    }
}

/// The bytes the process holds through [`Counting`], over all threads (0 when it is not the
/// global allocator).
pub fn in_use() -> isize {
    IN_USE.load(Ordering::Relaxed)
}

/// The bytes `build` leaves on the heap in what it returns, per entry: the heap in use after it
/// less before, divided by `entries`. The value is returned too, to be measured further (or
/// dropped outside the measurement).
pub fn per_entry<T>(entries: usize, build: impl FnOnce() -> T) -> (f64, T) {
    let before = in_use();
    let value = build();
    let held = in_use() - before;
    (held as f64 / entries.max(1) as f64, value)
}

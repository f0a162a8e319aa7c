//! The process's allocator: mimalloc (built with `no_thp`, see Cargo.toml), and in a bench
//! build (`--features alloc-count`) wrapped in a counter of live bytes, so memory per open
//! stream is measured by what is allocated rather than by RSS, which mostly shows what the
//! allocator keeps for reuse.

// The request path allocates many small, short-lived buffers; mimalloc serves them far cheaper
// than glibc's malloc (which showed as ~12% of the gateway's CPU under load).
#[cfg(not(feature = "alloc-count"))]
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[cfg(feature = "alloc-count")]
#[global_allocator]
static GLOBAL: counting::Counting = counting::Counting;

#[cfg(feature = "alloc-count")]
pub use counting::report_from_env;

#[cfg(feature = "alloc-count")]
mod counting {
    use std::alloc::{GlobalAlloc, Layout};
    use std::sync::atomic::{AtomicI64, AtomicU64, Ordering::Relaxed};
    use std::time::Duration;

    static LIVE_BYTES: AtomicI64 = AtomicI64::new(0);
    static LIVE_BLOCKS: AtomicI64 = AtomicI64::new(0);
    static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);

    /// mimalloc with every allocation and free counted (bytes as requested, not as rounded up
    /// by the allocator).
    pub struct Counting;

    // SAFETY: every call is passed on to mimalloc unchanged; the counters are only arithmetic.
    unsafe impl GlobalAlloc for Counting {
        unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { mimalloc::MiMalloc.alloc(layout) };
            if !p.is_null() {
                added(layout.size());
            }
            p
        }

        unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { mimalloc::MiMalloc.alloc_zeroed(layout) };
            if !p.is_null() {
                added(layout.size());
            }
            p
        }

        unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
            // SAFETY: the caller's contract, passed on.
            unsafe { mimalloc::MiMalloc.dealloc(ptr, layout) };
            LIVE_BYTES.fetch_sub(layout.size() as i64, Relaxed);
            LIVE_BLOCKS.fetch_sub(1, Relaxed);
        }

        unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
            // SAFETY: the caller's contract, passed on.
            let p = unsafe { mimalloc::MiMalloc.realloc(ptr, layout, new_size) };
            if !p.is_null() {
                LIVE_BYTES.fetch_add(new_size as i64 - layout.size() as i64, Relaxed);
                ALLOCATIONS.fetch_add(1, Relaxed);
            }
            p
        }
    }

    fn added(size: usize) {
        LIVE_BYTES.fetch_add(size as i64, Relaxed);
        LIVE_BLOCKS.fetch_add(1, Relaxed);
        ALLOCATIONS.fetch_add(1, Relaxed);
    }

    /// With `DASHGATE_ALLOC_REPORT=PATH`, a thread rewrites PATH every 100 ms with one line:
    /// `live_bytes live_blocks allocations` (a bench reads it while streams are open).
    pub fn report_from_env() {
        let Some(path) = std::env::var_os("DASHGATE_ALLOC_REPORT") else {
            return;
        };
        let tmp = {
            let mut p = path.clone();
            p.push(".tmp");
            p
        };
        let spawned = std::thread::Builder::new()
            .name("alloc-report".into())
            .spawn(move || {
                loop {
                    let line = format!(
                        "{} {} {}\n",
                        LIVE_BYTES.load(Relaxed),
                        LIVE_BLOCKS.load(Relaxed),
                        ALLOCATIONS.load(Relaxed)
                    );
                    // Written aside and renamed, so a reader never sees half a line.
                    if std::fs::write(&tmp, line).is_ok() {
                        let _ = std::fs::rename(&tmp, &path);
                    }
                    std::thread::sleep(Duration::from_millis(100));
                }
            });
        if let Err(e) = spawned {
            eprintln!("dashgate: alloc report thread: {e}");
        }
    }
}

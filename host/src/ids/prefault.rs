//! Touching a table's reserved memory ahead of the legs that will fill it.
//!
//! A cold resync of a million legs writes ~250 MB of fresh table memory
//! (the leg table's slots, the id indexes, the ledger index's and the
//! links' dense vectors). The first write to each
//! 4 KiB page is a page fault, ~2 us on the virtual machines this runs on:
//! over 100 ms on the thread that adopts the legs, which is the resync's
//! critical path. Asking the kernel to populate a large block from another
//! thread as soon as it is reserved moves that cost off the critical path
//! while the snapshot streams in.

/// Populates the pages of `memory` (a vector's reserved, unwritten capacity,
/// or a table freshly allocated zeroed) on a short-lived thread, without
/// changing what they hold. Best effort: on kernels without
/// `MADV_POPULATE_WRITE` (Linux < 5.14) or on other systems nothing happens
/// and the pages fault in as they are written, as before.
///
/// Only whole pages are populated, and only if there are enough of them to
/// be worth a thread.
pub fn populate_in_background<T>(memory: &[T]) {
    let (address, len) = (memory.as_ptr() as usize, std::mem::size_of_val(memory));
    const PAGE: usize = 4096;
    /// Below this, the thread costs more than the faults it spares.
    const WORTH_IT: usize = 4 << 20;
    let start = address.next_multiple_of(PAGE);
    let end = (address + len) / PAGE * PAGE;
    if end < start + WORTH_IT {
        return;
    }
    #[cfg(target_os = "linux")]
    {
        const MADV_POPULATE_WRITE: libc::c_int = 23;
        let spawned = std::thread::Builder::new()
            .name("legsync-prefault".into())
            .spawn(move || {
                // SAFETY: populating never changes memory contents; it only
                // maps the pages as a write would. If the range was freed
                // meanwhile the call fails harmlessly (ENOMEM), and if it
                // was mapped again it only pre-maps pages of that mapping.
                unsafe {
                    libc::madvise(start as *mut libc::c_void, end - start, MADV_POPULATE_WRITE);
                }
            });
        if let Err(e) = spawned {
            tracing::debug!(error = %e, "no prefault thread; pages fault in as written");
        }
    }
    #[cfg(not(target_os = "linux"))]
    let _ = (start, end);
}

//! Export arguments in a bump arena, reset after every call.
//!
//! The host hands a batch of legs to the plugin by calling `cabi_realloc`
//! once per string and once for the list, and the bindings free each of them
//! after the call: with the C allocator that is six `malloc`/`free` pairs per
//! leg, a third of a plugin's time. Here `cabi_realloc` carves those blocks out
//! of one arena instead, freeing them is a range check, and the whole arena is
//! reset when the export returns.
//!
//! Safety rests on three facts:
//! - Only the arguments of exports land in the arena: it is armed between
//!   export calls (when the host lowers the next call's arguments) and
//!   disarmed while an export runs, so results of imports the plugin calls
//!   (WASI calls made by `std`, freed by libc's `free`) never do. It is first
//!   armed after `init`, so nothing run by the first call's constructors can
//!   reach it either.
//! - Arguments never outlive their call: the SDK hands them to a [`Policy`]
//!   by reference only, so a plugin must copy what it keeps.
//! - A plugin instance runs on one thread and exports are not re-entered.
//!
//! The arena grows (to the largest call seen) only when a new call starts
//! lowering, when no block of the previous call can still be alive. Blocks
//! that do not fit fall back to the system allocator and are freed normally.
//!
//! [`Policy`]: crate::Policy

use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::UnsafeCell;

/// The global allocator of every SDK plugin: the system allocator, except
/// that blocks inside the arena are freed with it, not one by one.
pub struct ArenaAwareAllocator;

/// The largest arena kept between calls; bigger calls use the system
/// allocator for what does not fit.
const MAX_ARENA: usize = 16 << 20;
const FIRST_ARENA: usize = 64 << 10;

struct Arena {
    base: *mut u8,
    capacity: usize,
    used: usize,
    /// Bytes the current call asked for, fitting or not: the next size.
    demand: usize,
    /// Set between calls: the next block starts a new call's arguments.
    fresh: bool,
    armed: bool,
}

struct Shared(UnsafeCell<Arena>);

// A plugin instance is single-threaded (wasm32 without threads).
unsafe impl Sync for Shared {}

static ARENA: Shared = Shared(UnsafeCell::new(Arena {
    base: std::ptr::null_mut(),
    capacity: 0,
    used: 0,
    demand: 0,
    fresh: false,
    armed: false,
}));

/// # Safety
/// Single-threaded, and no caller keeps the reference across another call.
unsafe fn arena() -> &'static mut Arena {
    unsafe { &mut *ARENA.0.get() }
}

impl Arena {
    fn contains(&self, ptr: *mut u8) -> bool {
        let (start, addr) = (self.base as usize, ptr as usize);
        addr >= start && addr < start + self.capacity
    }

    /// A block for the call being lowered, if the arena has room.
    fn bump(&mut self, layout: Layout) -> Option<*mut u8> {
        if self.fresh {
            self.fresh = false;
            self.fit_to_demand();
        }
        self.demand += layout.size() + layout.align() - 1;
        let start = self.used.checked_next_multiple_of(layout.align())?;
        let end = start.checked_add(layout.size())?;
        if end > self.capacity {
            return None;
        }
        self.used = end;
        // SAFETY: `start..end` lies within the arena's allocation.
        Some(unsafe { self.base.add(start) })
    }

    /// Grows the arena to the last call's demand. Only called before the
    /// first block of a call, when no block of an earlier call is alive.
    fn fit_to_demand(&mut self) {
        let wanted = self
            .demand
            .max(FIRST_ARENA)
            .next_power_of_two()
            .min(MAX_ARENA);
        self.demand = 0;
        if wanted <= self.capacity {
            return;
        }
        // SAFETY: the old block came from `System.alloc` with this layout.
        unsafe {
            if !self.base.is_null() {
                System.dealloc(
                    self.base,
                    Layout::from_size_align_unchecked(self.capacity, 16),
                );
            }
            self.base = System.alloc(Layout::from_size_align_unchecked(wanted, 16));
        }
        self.capacity = if self.base.is_null() { 0 } else { wanted };
    }
}

/// Called by the export glue when an export starts running: its arguments
/// are lowered, anything allocated from here on is the plugin's own.
pub fn begin_export() {
    // SAFETY: single-threaded, reference not kept.
    unsafe { arena().armed = false }
}

/// Called by the export glue when an export is done with its arguments:
/// reuse the arena for the next call's arguments.
pub fn end_export() {
    // SAFETY: single-threaded, reference not kept.
    let arena = unsafe { arena() };
    arena.used = 0;
    arena.fresh = true;
    arena.armed = true;
}

unsafe impl GlobalAlloc for ArenaAwareAllocator {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc(layout) }
    }

    unsafe fn alloc_zeroed(&self, layout: Layout) -> *mut u8 {
        unsafe { System.alloc_zeroed(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // Arena blocks are freed together when the arena is reused.
        if !unsafe { arena() }.contains(ptr) {
            unsafe { System.dealloc(ptr, layout) }
        }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        if !unsafe { arena() }.contains(ptr) {
            return unsafe { System.realloc(ptr, layout, new_size) };
        }
        // Move an arena block out to the system allocator.
        unsafe {
            let moved = System.alloc(Layout::from_size_align_unchecked(new_size, layout.align()));
            if !moved.is_null() {
                std::ptr::copy_nonoverlapping(ptr, moved, layout.size().min(new_size));
            }
            moved
        }
    }
}

/// The canonical ABI's allocator, used by the host to pass arguments (and
/// the results of imports) into the plugin. It replaces the C library's weak
/// default with the same semantics.
///
/// # Safety
/// Called by the host per the canonical ABI: `old_ptr` is null or a block of
/// `old_len` bytes aligned to `align`, a power of two.
#[unsafe(no_mangle)]
pub unsafe extern "C" fn cabi_realloc(
    old_ptr: *mut u8,
    old_len: usize,
    align: usize,
    new_len: usize,
) -> *mut u8 {
    let ptr = unsafe {
        if old_len == 0 {
            if new_len == 0 {
                return align as *mut u8;
            }
            let layout = Layout::from_size_align_unchecked(new_len, align);
            let arena = arena();
            match arena.armed.then(|| arena.bump(layout)).flatten() {
                Some(block) => block,
                None => System.alloc(layout),
            }
        } else {
            let layout = Layout::from_size_align_unchecked(old_len, align);
            ArenaAwareAllocator.realloc(old_ptr, layout, new_len)
        }
    };
    if ptr.is_null() {
        // Out of memory (or over the host's memory cap): trap.
        std::process::abort();
    }
    ptr
}

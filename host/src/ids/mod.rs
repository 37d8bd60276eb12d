//! The host's tables of engine ids (legs, links), millions of them: an
//! index from id to position ([`IdIndex`]), a map whose values live in one
//! dense vector ([`DenseMap`]), and the background population of their
//! memory ([`prefault`]).

pub mod dense;
pub mod index;
pub mod prefault;

pub use dense::DenseMap;
pub use index::IdIndex;

/// Starts loading the cache line of `value`: a hint, for a caller about to
/// read many values scattered over memory no cache holds (their misses then
/// overlap instead of following one another).
#[inline]
pub fn prefetch<T>(value: &T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: a prefetch never faults and changes nothing; this address is
    // a live reference besides.
    unsafe {
        use std::arch::x86_64::{_MM_HINT_T0, _mm_prefetch};
        _mm_prefetch::<_MM_HINT_T0>((value as *const T).cast());
    }
    #[cfg(not(target_arch = "x86_64"))]
    let _ = value;
}

#[cfg(test)]
pub(crate) mod tests {
    /// A seeded, replayable stream of pseudo-random numbers (xorshift64) for
    /// the tables' randomized tests.
    pub fn xorshift(mut seed: u64) -> impl FnMut() -> u64 {
        move || {
            seed ^= seed << 13;
            seed ^= seed >> 7;
            seed ^= seed << 17;
            seed
        }
    }
}

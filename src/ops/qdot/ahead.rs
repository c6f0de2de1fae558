//! `Ahead`: the cache lines a single-stream decode kernel asks for while it works (the
//! weight rows of its caller's next call), spread over the kernel's blocks.
//!
//! Decode reads every weight once per token, from DRAM when the model is larger than the
//! last-level cache. Asked for all at once before a call (one burst of ~80-120
//! `prefetcht2` for eight Q5_0/Q8_0 rows), the requests fill the core's miss buffers, the
//! burst stalls the front end, and the kernel's arithmetic then runs with the memory
//! pipeline idle. A few lines per block keep both busy (bench/NOTES.md §28). Only a hint:
//! results never depend on it.

use std::marker::PhantomData;

/// A region to prefetch, `per_block` cache lines per kernel block (`block(b)` asks for
/// lines `b · per_block ..`). Borrows the region, so it cannot outlive the weights.
#[derive(Clone, Copy)]
pub struct Ahead<'a> {
    start: *const u8,
    bytes: usize,
    per_block: usize,
    region: PhantomData<&'a [u8]>,
}

const LINE: usize = 64;

impl<'a> Ahead<'a> {
    /// Nothing to prefetch.
    pub const NONE: Ahead<'static> = Ahead {
        start: std::ptr::null(),
        bytes: 0,
        per_block: 0,
        region: PhantomData,
    };

    /// `region`'s lines, spread evenly over a kernel's `blocks` block steps.
    pub fn new<T>(region: &'a [T], blocks: usize) -> Self {
        Self::spread(
            region.as_ptr() as *const u8,
            std::mem::size_of_val(region),
            blocks,
        )
    }

    fn spread(start: *const u8, bytes: usize, blocks: usize) -> Self {
        Ahead {
            start,
            bytes,
            per_block: bytes.div_ceil(LINE).div_ceil(blocks.max(1)),
            region: PhantomData,
        }
    }

    /// The first and second halves of the region (split at a line), each spread over the
    /// same `blocks` steps: for a kernel run as two calls over half the rows each.
    pub fn halves(self, blocks: usize) -> (Self, Self) {
        let first = (self.bytes / 2).next_multiple_of(LINE).min(self.bytes);
        (
            Self::spread(self.start, first, blocks),
            // `wrapping_add`: nothing is dereferenced here; `first ≤ bytes` keeps it inside.
            Self::spread(self.start.wrapping_add(first), self.bytes - first, blocks),
        )
    }

    /// Asks for block step `b`'s share of the lines into the outer caches (x86
    /// `prefetcht2`: it does not hold L1's few miss buffers the way `prefetcht0` does,
    /// bench/NOTES.md §23); a no-op elsewhere.
    #[inline(always)]
    pub fn block(&self, b: usize) {
        for offset in self.offsets(b) {
            #[cfg(target_arch = "x86_64")]
            // SAFETY: `offset < bytes` keeps the address inside the borrowed region, and a
            // prefetch never faults.
            unsafe {
                use std::arch::x86_64::{_mm_prefetch, _MM_HINT_T2};
                _mm_prefetch::<_MM_HINT_T2>(self.start.add(offset) as *const i8);
            }
            #[cfg(not(target_arch = "x86_64"))]
            let _ = offset;
        }
    }

    /// Byte offsets of the lines block step `b` asks for.
    #[inline(always)]
    fn offsets(&self, b: usize) -> std::iter::StepBy<std::ops::Range<usize>> {
        let first = b * self.per_block * LINE;
        let end = (first + self.per_block * LINE).min(self.bytes);
        (first..end).step_by(LINE)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_line_of_the_region_is_asked_for_once_within_the_blocks() {
        for (bytes, blocks) in [(8 * 616, 28), (8 * 952, 28), (64, 28), (10_000, 1), (0, 5)] {
            let region = vec![0u8; bytes];
            let ahead = Ahead::new(&region, blocks);
            let lines_asked = |a: Ahead| (0..blocks).map(|b| a.offsets(b).count()).sum::<usize>();
            assert_eq!(
                lines_asked(ahead),
                bytes.div_ceil(LINE),
                "{bytes} / {blocks}"
            );
            let (a, b) = ahead.halves(blocks);
            assert_eq!(
                lines_asked(a) + lines_asked(b),
                bytes.div_ceil(LINE),
                "halves of {bytes} / {blocks}"
            );
        }
        assert_eq!(Ahead::NONE.offsets(0).count(), 0);
    }
}

//! Which bytes of a segment file have not had their batches checked (CRC32C, lengths)
//! since this broker opened it. Bytes a clean restart loaded are unchecked (Kafka does not
//! scan them either); bytes appended since were checked before they were written. A
//! recovered segment's CRCs were checked, but not its batches' leader epochs against the
//! log's leader-epoch cache (the epoch is outside the CRC): it stays unchecked too. A read that touches unchecked bytes checks what it
//! serves once; the scrub checks the rest.
//!
//! Invariant: the ranges are sorted, disjoint, non-empty and not adjacent; their bounds are
//! batch starts (or the file's end at load), as every range removed is whole batches.

use std::ops::Range;

#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct UncheckedBytes {
    ranges: Vec<Range<u64>>,
}

impl UncheckedBytes {
    /// `[0, size)` unchecked.
    pub fn whole(size: u64) -> Self {
        let mut u = UncheckedBytes::default();
        if size > 0 {
            u.ranges.push(0..size);
        }
        u
    }

    pub fn ranges(&self) -> &[Range<u64>] {
        &self.ranges
    }

    /// Whether any byte of `range` is unchecked.
    pub fn overlaps(&self, range: Range<u64>) -> bool {
        range.start < range.end
            && self
                .ranges
                .iter()
                .any(|r| r.start < range.end && range.start < r.end)
    }

    /// `range` has been checked.
    pub fn remove(&mut self, range: Range<u64>) {
        if range.start >= range.end {
            return;
        }
        let mut kept = Vec::with_capacity(self.ranges.len() + 1);
        for r in self.ranges.drain(..) {
            if r.end <= range.start || range.end <= r.start {
                kept.push(r);
                continue;
            }
            if r.start < range.start {
                kept.push(r.start..range.start);
            }
            if range.end < r.end {
                kept.push(range.end..r.end);
            }
        }
        self.ranges = kept;
    }

    /// The file was cut at `size`.
    pub fn truncate(&mut self, size: u64) {
        self.remove(size..u64::MAX);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn removing_checked_ranges_splits_and_trims() {
        let mut u = UncheckedBytes::whole(100);
        assert!(u.overlaps(99..120));
        u.remove(10..20);
        assert_eq!(u.ranges(), &[0..10, 20..100]);
        assert!(!u.overlaps(10..20));
        assert!(u.overlaps(15..21));
        u.remove(0..10);
        u.truncate(60);
        assert_eq!(u.ranges().len(), 1);
        assert_eq!(u.ranges()[0], 20..60);
        u.remove(0..200);
        assert!(u.ranges().is_empty());
        assert!(UncheckedBytes::whole(0).ranges().is_empty());
        assert!(!UncheckedBytes::whole(5).overlaps(3..3));
    }
}

//! Bounded building blocks: a ring buffer and a rolling window with O(1)
//! median and O(log window) MAD (insertion O(window) memmove).

use std::collections::VecDeque;

/// A fixed-capacity ring of the most recent values.
#[derive(Debug, Clone)]
pub struct Ring {
    buf: VecDeque<f64>,
    cap: usize,
}

impl Ring {
    /// An empty ring holding at most `cap` values (allocated up front).
    pub fn new(cap: usize) -> Ring {
        Ring {
            buf: VecDeque::with_capacity(cap),
            cap: cap.max(1),
        }
    }
    /// Appends a value; returns the evicted one when full.
    pub fn push(&mut self, v: f64) -> Option<f64> {
        let old = if self.buf.len() == self.cap {
            self.buf.pop_front()
        } else {
            None
        };
        self.buf.push_back(v);
        old
    }
    /// Number of values held.
    pub fn len(&self) -> usize {
        self.buf.len()
    }
    /// Whether the ring is empty.
    pub fn is_empty(&self) -> bool {
        self.buf.is_empty()
    }
    /// Capacity.
    pub fn cap(&self) -> usize {
        self.cap
    }
    /// The value `k` steps back (`back(0)` is the newest).
    pub fn back(&self, k: usize) -> Option<f64> {
        let n = self.buf.len();
        (k < n).then(|| self.buf[n - 1 - k])
    }
    /// Iterates oldest to newest.
    pub fn iter(&self) -> impl Iterator<Item = f64> + '_ {
        self.buf.iter().copied()
    }
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.buf.capacity() * std::mem::size_of::<f64>()
    }
}

/// A rolling window of the last `cap` values, kept sorted as well, giving
/// the median in O(1) and the MAD in O(window) per sample.
#[derive(Debug, Clone)]
pub struct RollingWindow {
    ring: Ring,
    sorted: Vec<f64>,
}

impl RollingWindow {
    /// An empty window of `cap` values.
    pub fn new(cap: usize) -> RollingWindow {
        RollingWindow {
            ring: Ring::new(cap),
            sorted: Vec::with_capacity(cap.max(1)),
        }
    }
    /// Adds a (finite) value, evicting the oldest when full.
    pub fn push(&mut self, v: f64) {
        let s = &mut self.sorted;
        match self.ring.push(v) {
            // The same value as the evicted one (a flat stretch, a regular
            // sampling interval): the sorted values do not change.
            Some(old) if old.total_cmp(&v).is_eq() => {}
            // Replace the evicted value by `v` in one move of the values
            // between the two positions (instead of a remove and an insert,
            // each moving half the window on average).
            Some(old) => {
                let j = s.partition_point(|x| x.total_cmp(&v).is_lt());
                let i = s.partition_point(|x| x.total_cmp(&old).is_lt());
                if j > i {
                    s.copy_within(i + 1..j, i);
                    s[j - 1] = v;
                } else {
                    s.copy_within(j..i, j + 1);
                    s[j] = v;
                }
            }
            None => {
                let j = s.partition_point(|x| x.total_cmp(&v).is_lt());
                s.insert(j, v)
            }
        }
    }
    /// Number of values held.
    pub fn len(&self) -> usize {
        self.sorted.len()
    }
    /// Whether empty.
    pub fn is_empty(&self) -> bool {
        self.sorted.is_empty()
    }
    /// The `q`-quantile (nearest rank), `q` in `[0, 1]`.
    pub fn quantile(&self, q: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        let i = ((n - 1) as f64 * q.clamp(0.0, 1.0)).round() as usize;
        self.sorted[i]
    }
    /// The median (mean of the two middle values for even counts).
    pub fn median(&self) -> f64 {
        let n = self.sorted.len();
        match n {
            0 => 0.0,
            _ if n % 2 == 1 => self.sorted[n / 2],
            _ => 0.5 * (self.sorted[n / 2 - 1] + self.sorted[n / 2]),
        }
    }
    /// The median absolute deviation around `m` (normally the median), in
    /// O(log window): the distances below `m` (`m − s[split−1−i]`) and
    /// above it (`s[split+j] − m`) are two sorted sequences, and the
    /// `n/2`-th smallest of their union is found by a binary search on how
    /// many come from the lower side (the classic k-th of two sorted
    /// arrays). The result is the same value as merging them.
    pub fn mad(&self, m: f64) -> f64 {
        let s = &self.sorted;
        let n = s.len();
        if n == 0 {
            return 0.0;
        }
        // Values below `m`: the lower half when `m` is the median of
        // distinct middle values (the usual case), else searched.
        let h = n / 2;
        let split = if h > 0 && s[h - 1] < m && m <= s[h] {
            h
        } else {
            s.partition_point(|&x| x < m)
        };
        let below = |i: usize| m - s[split - 1 - i];
        let above = |j: usize| s[split + j] - m;
        let (na, nb) = (split, n - split);
        let take = n / 2 + 1; // distances up to and including the median one
                              // i from below and take − i from above, i in [lo, hi]; too few
                              // from below while the next one below is smaller than the last one
                              // above. Written with selects (no data-dependent branch).
        let mut lo = take.saturating_sub(nb);
        let mut size = take.min(na) - lo;
        while size > 0 {
            let half = size / 2;
            let i = lo + half;
            let right = below(i) < above(take - i - 1);
            lo = if right { i + 1 } else { lo };
            size = if right { size - half - 1 } else { half };
        }
        let (i, j) = (lo, take - lo);
        let a = if i > 0 {
            below(i - 1)
        } else {
            f64::NEG_INFINITY
        };
        let b = if j > 0 {
            above(j - 1)
        } else {
            f64::NEG_INFINITY
        };
        a.max(b)
    }
    /// The mean absolute deviation around `m`, O(values ≠ m): the values
    /// equal to `m` add exactly 0 and are skipped (this is used when most
    /// of the window equals the median), the others are summed in sorted
    /// order as before, so the result is the same to the bit.
    pub fn mean_abs_dev(&self, m: f64) -> f64 {
        let s = &self.sorted;
        let n = s.len();
        if n == 0 {
            return 0.0;
        }
        let lo = s.partition_point(|&x| x < m);
        let hi = lo + s[lo..].partition_point(|&x| x <= m);
        let sum = s[..lo]
            .iter()
            .chain(&s[hi..])
            .map(|x| (x - m).abs())
            .sum::<f64>();
        // A sum of nothing but zeros is +0 whatever the fold starts with.
        if sum == 0.0 {
            0.0
        } else {
            sum / n as f64
        }
    }
    /// The ring of values in arrival order.
    pub fn ring(&self) -> &Ring {
        &self.ring
    }
    /// Heap bytes held.
    pub fn heap_bytes(&self) -> usize {
        self.ring.heap_bytes() + self.sorted.capacity() * std::mem::size_of::<f64>()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn median_and_mad_match_brute_force() {
        for cap in [1, 2, 3, 4, 7, 8, 31, 288] {
            for range in [2u64, 5, 50, 1 << 20] {
                check_against_brute_force(cap, range);
            }
        }
    }

    fn check_against_brute_force(cap: usize, range: u64) {
        let mut w = RollingWindow::new(cap);
        let mut all = Vec::new();
        let mut x = 17u64;
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((x >> 33) % range) as f64 * 0.37;
            w.push(v);
            all.push(v);
            let last: Vec<f64> = all.iter().rev().take(cap).copied().collect();
            let mut s = last.clone();
            s.sort_by(f64::total_cmp);
            let n = s.len();
            let med = if n % 2 == 1 {
                s[n / 2]
            } else {
                0.5 * (s[n / 2 - 1] + s[n / 2])
            };
            assert_eq!(w.median(), med);
            assert_eq!(w.sorted, s);
            // Around the median, and around other centres.
            for m in [med, s[0], s[n - 1], med + 0.1, s[0] - 1.0] {
                let mut d: Vec<f64> = s.iter().map(|v| (v - m).abs()).collect();
                d.sort_by(f64::total_cmp);
                assert_eq!(w.mad(m), d[n / 2], "cap {cap} range {range} m {m}");
                let mean_abs = s.iter().map(|x| (x - m).abs()).sum::<f64>() / n as f64;
                assert_eq!(w.mean_abs_dev(m).to_bits(), mean_abs.to_bits());
            }
        }
    }
}

//! Bounded building blocks: a ring buffer and a rolling window with O(window)
//! median and MAD.

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
        if let Some(old) = self.ring.push(v) {
            let i = self.sorted.partition_point(|x| x.total_cmp(&old).is_lt());
            self.sorted.remove(i);
        }
        let i = self.sorted.partition_point(|x| x.total_cmp(&v).is_lt());
        self.sorted.insert(i, v);
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
    /// The median absolute deviation around `m` (normally the median):
    /// merges the distances on both sides of `m` up to the middle one.
    pub fn mad(&self, m: f64) -> f64 {
        let s = &self.sorted;
        let n = s.len();
        if n == 0 {
            return 0.0;
        }
        let split = s.partition_point(|&x| x < m);
        let (mut l, mut r) = (split, split); // l: next to the left is l-1; r: next to the right
        let k = n / 2; // 0-based rank of the median distance
        let mut d = 0.0;
        for _ in 0..=k {
            let dl = if l > 0 { m - s[l - 1] } else { f64::INFINITY };
            let dr = if r < n { s[r] - m } else { f64::INFINITY };
            if dl <= dr {
                d = dl;
                l -= 1;
            } else {
                d = dr;
                r += 1;
            }
        }
        d
    }
    /// The mean absolute deviation around `m`, O(window).
    pub fn mean_abs_dev(&self, m: f64) -> f64 {
        let n = self.sorted.len();
        if n == 0 {
            return 0.0;
        }
        self.sorted.iter().map(|x| (x - m).abs()).sum::<f64>() / n as f64
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
        let mut w = RollingWindow::new(7);
        let mut all = Vec::new();
        let mut x = 17u64;
        for _ in 0..200 {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            let v = ((x >> 33) % 50) as f64;
            w.push(v);
            all.push(v);
            let last: Vec<f64> = all.iter().rev().take(7).copied().collect();
            let mut s = last.clone();
            s.sort_by(f64::total_cmp);
            let n = s.len();
            let med = if n % 2 == 1 {
                s[n / 2]
            } else {
                0.5 * (s[n / 2 - 1] + s[n / 2])
            };
            assert_eq!(w.median(), med);
            let mut d: Vec<f64> = s.iter().map(|v| (v - med).abs()).collect();
            d.sort_by(f64::total_cmp);
            assert_eq!(w.mad(med), d[n / 2]);
        }
    }
}

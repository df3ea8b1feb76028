//! Progress of a long operation (`backup now`, `verify`, `restore`), for the
//! caller to show: the library counts, the command line draws (a progress bar
//! on a terminal, plain lines otherwise).
//!
//! [`Progress`] is a cheap handle (an `Arc`) to shared counters; a clone given
//! in the settings of an operation is updated as it runs, and read with
//! [`Progress::snapshot`] from another task or thread.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

/// Shared counters of one operation (see the module docs).
#[derive(Clone, Default, Debug)]
pub struct Progress(Arc<Inner>);

#[derive(Default, Debug)]
struct Inner {
    phase: Mutex<&'static str>,
    done_bytes: AtomicU64,
    total_bytes: AtomicU64,
    chunks: AtomicU64,
    uploaded_bytes: AtomicU64,
}

/// The counters at one moment.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ProgressSnapshot {
    /// What the operation is doing now ("" before it starts).
    pub phase: &'static str,
    /// Bytes of the snapshot stream read, checked or loaded so far.
    pub done_bytes: u64,
    /// The stream's size when known (a restore or verify reads it from the
    /// manifest; a backup learns it only at the end).
    pub total_bytes: Option<u64>,
    /// Chunks handled so far.
    pub chunks: u64,
    /// Bytes written to destinations so far (a backup).
    pub uploaded_bytes: u64,
}

impl Progress {
    pub fn set_phase(&self, phase: &'static str) {
        *self.0.phase.lock().unwrap_or_else(|p| p.into_inner()) = phase;
    }

    pub fn set_total_bytes(&self, bytes: u64) {
        self.0.total_bytes.store(bytes, Ordering::Relaxed);
    }

    /// One chunk of `bytes` of the stream done.
    pub fn chunk_done(&self, bytes: u64) {
        self.0.done_bytes.fetch_add(bytes, Ordering::Relaxed);
        self.0.chunks.fetch_add(1, Ordering::Relaxed);
    }

    /// `bytes` more of the stream done, outside any chunk (an etcd snapshot's
    /// conversion and load).
    pub fn bytes_done(&self, bytes: u64) {
        self.0.done_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn uploaded(&self, bytes: u64) {
        self.0.uploaded_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    pub fn snapshot(&self) -> ProgressSnapshot {
        let total = self.0.total_bytes.load(Ordering::Relaxed);
        ProgressSnapshot {
            phase: *self.0.phase.lock().unwrap_or_else(|p| p.into_inner()),
            done_bytes: self.0.done_bytes.load(Ordering::Relaxed),
            total_bytes: (total > 0).then_some(total),
            chunks: self.0.chunks.load(Ordering::Relaxed),
            uploaded_bytes: self.0.uploaded_bytes.load(Ordering::Relaxed),
        }
    }
}

impl ProgressSnapshot {
    /// One plain line: `phase: 312.0 MiB of 450.0 MiB (69 %), 1204 chunks, 45.0 MiB uploaded`.
    pub fn line(&self) -> String {
        let mut s = format!("{}: {}", self.phase, mib(self.done_bytes));
        if let Some(t) = self.total_bytes {
            let pct = (self.done_bytes as f64 * 100.0 / t.max(1) as f64).min(100.0);
            s.push_str(&format!(" of {} ({pct:.0} %)", mib(t)));
        }
        if self.chunks > 0 {
            s.push_str(&format!(", {} chunks", self.chunks));
        }
        if self.uploaded_bytes > 0 {
            s.push_str(&format!(", {} uploaded", mib(self.uploaded_bytes)));
        }
        s
    }
}

fn mib(bytes: u64) -> String {
    format!("{:.1} MiB", bytes as f64 / (1024.0 * 1024.0))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counters_are_shared_by_clones_and_read_as_one_line() {
        let p = Progress::default();
        assert_eq!(p.snapshot(), ProgressSnapshot::default());
        let q = p.clone();
        q.set_phase("restore: fetching and loading");
        q.set_total_bytes(4 * 1024 * 1024);
        q.chunk_done(1024 * 1024);
        q.chunk_done(1024 * 1024);
        let s = p.snapshot();
        assert_eq!((s.done_bytes, s.chunks), (2 * 1024 * 1024, 2));
        assert_eq!(
            s.line(),
            "restore: fetching and loading: 2.0 MiB of 4.0 MiB (50 %), 2 chunks"
        );
        q.uploaded(512 * 1024);
        assert!(p.snapshot().line().ends_with(", 0.5 MiB uploaded"));
        // Bytes outside chunks: no chunk count.
        let r = Progress::default();
        r.set_phase("restore: loading");
        r.bytes_done(1024 * 1024);
        assert_eq!(r.snapshot().line(), "restore: loading: 1.0 MiB");
    }
}

//! A rate limit for openraft's repeated warnings and errors.
//!
//! openraft 0.9 logs every failed RPC to a peer: while one member is down its
//! leader writes an ERROR and three WARN lines per retry (about 3 ERROR and
//! 9 WARN lines a second), a quarter of a million lines a day for one stopped
//! follower, burying everything else and paging whoever alerts on ERROR
//! lines. [`RepeatLimiter`] passes each openraft WARN or ERROR call site at
//! most once per [`OPENRAFT_LOG_REPEAT_INTERVAL_MS`]; the first occurrence is
//! always logged, so a new kind of failure is never hidden. Whether a member
//! is down is the alerting rules' business (`PhalanxMemberDown`), from the
//! metrics, not from log volume.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use tracing::callsite::Identifier;
use tracing::subscriber::Interest;
use tracing::{Level, Metadata};
use tracing_subscriber::layer::{Context, Filter};

/// Smallest interval between two lines from one openraft WARN or ERROR call
/// site, milliseconds.
pub const OPENRAFT_LOG_REPEAT_INTERVAL_MS: u64 = 10_000;

/// Log events whose target starts with this are limited.
const LIMITED_TARGET_PREFIX: &str = "openraft";

/// A `tracing_subscriber` per-layer filter: see the module docs.
pub struct RepeatLimiter {
    interval: Duration,
    last: Mutex<HashMap<Identifier, Instant>>,
}

impl RepeatLimiter {
    /// At most one event per call site per `interval`.
    pub fn new(interval: Duration) -> Self {
        RepeatLimiter {
            interval,
            last: Mutex::new(HashMap::new()),
        }
    }

    fn limited(meta: &Metadata<'_>) -> bool {
        // In tracing, more severe levels compare lower: WARN and ERROR.
        meta.is_event()
            && *meta.level() <= Level::WARN
            && meta.target().starts_with(LIMITED_TARGET_PREFIX)
    }
}

impl Default for RepeatLimiter {
    fn default() -> Self {
        Self::new(Duration::from_millis(OPENRAFT_LOG_REPEAT_INTERVAL_MS))
    }
}

impl<S> Filter<S> for RepeatLimiter {
    fn enabled(&self, meta: &Metadata<'_>, _cx: &Context<'_, S>) -> bool {
        if !Self::limited(meta) {
            return true;
        }
        let now = Instant::now();
        let mut last = self.last.lock().unwrap_or_else(|p| p.into_inner());
        match last.get(&meta.callsite()) {
            Some(t) if now.duration_since(*t) < self.interval => false,
            _ => {
                last.insert(meta.callsite(), now);
                true
            }
        }
    }

    fn callsite_enabled(&self, meta: &'static Metadata<'static>) -> Interest {
        if Self::limited(meta) {
            // Asked again for every event: the answer depends on the time.
            Interest::sometimes()
        } else {
            Interest::always()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::Layer;

    /// Lines written by a subscriber whose only layer is filtered by `limiter`,
    /// while `emit` runs.
    fn lines_written(limiter: RepeatLimiter, emit: impl FnOnce()) -> Vec<String> {
        let out = Arc::new(Mutex::new(Vec::<u8>::new()));
        let w = out.clone();
        let layer = tracing_subscriber::fmt::layer()
            .with_ansi(false)
            .with_writer(move || Writer(w.clone()))
            .with_filter(limiter);
        let subscriber = tracing_subscriber::registry().with(layer);
        tracing::subscriber::with_default(subscriber, emit);
        let text = String::from_utf8(out.lock().unwrap().clone()).unwrap();
        text.lines().map(str::to_string).collect()
    }

    struct Writer(Arc<Mutex<Vec<u8>>>);
    impl std::io::Write for Writer {
        fn write(&mut self, b: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(b);
            Ok(b.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    fn burst() {
        for i in 0..100 {
            tracing::error!(target: "openraft::replication", "RPCError {i}");
            tracing::warn!(target: "openraft::replication", "backoff {i}");
            tracing::info!(target: "openraft::replication", "progress {i}");
            tracing::error!(target: "consensus::network", "ours {i}");
        }
    }

    #[test]
    fn repeated_openraft_warnings_and_errors_pass_once_per_interval() {
        let lines = lines_written(RepeatLimiter::new(Duration::from_secs(3600)), burst);
        let count = |what: &str| lines.iter().filter(|l| l.contains(what)).count();
        // The first of each openraft WARN / ERROR call site, none after it.
        assert_eq!(count("RPCError"), 1, "{lines:#?}");
        assert!(lines.iter().any(|l| l.ends_with("RPCError 0")));
        assert_eq!(count("backoff"), 1);
        // Other levels and other targets are not limited.
        assert_eq!(count("progress"), 100);
        assert_eq!(count("ours"), 100);
    }

    #[test]
    fn once_the_interval_has_passed_the_call_site_logs_again() {
        let lines = lines_written(RepeatLimiter::new(Duration::ZERO), burst);
        assert_eq!(lines.iter().filter(|l| l.contains("RPCError")).count(), 100);
    }
}

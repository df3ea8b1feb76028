//! Priority-aware load shedding: request criticality, the priority-ordered
//! wait queue behind a pool's concurrency limit, and the process CPU meter.
//!
//! Every request carries a [`Priority`]: the route's `priority`, or, on a
//! route with `trust_priority_header = true`, the value of the header named
//! by `load_shedding.priority_header` (default `x-phalanx-priority`:
//! `critical`, `default` or `sheddable`; an absent or unknown value leaves
//! the route's priority). Untrusted routes ignore the header, so a client
//! cannot promote itself.
//!
//! Overload is one of three things, each of which refuses the lowest
//! priorities first, with a fast `503` + `Retry-After: load_shedding.retry_after_s`,
//! counted in `gateway_shed_requests_total{pool,priority,reason}`:
//!
//! ```text
//! arrive(p) ── CPU ≥ cpu threshold of p ──────────────────────────────▶ Refused(cpu)
//!    │           (sheddable: cpu_shed_sheddable_percent, default:
//!    │            cpu_shed_default_percent; critical: never; 0 = off)
//!    ▼
//! in_flight < max_concurrent_requests and nobody of priority ≥ p waits ─▶ Admitted
//!    │ no
//!    ▼
//! may p wait? (sheddable: only with sheddable_max_wait_ms > 0)  ──no──▶ Refused(concurrency)
//!    │ yes
//!    ▼
//! pending < max_pending_requests ? ──yes──────────────────────────────▶ Waiting(p)
//!    │ no: a waiter of lower priority than p exists?
//!    ├── yes: the newest such waiter ──▶ Refused(displaced); newcomer ─▶ Waiting(p)
//!    └── no ──────────────────────────────────────────────────────────▶ Refused(concurrency)
//!
//! Waiting(p) ── a slot is released: handed to the oldest waiter of the
//!               highest priority waiting (critical, then default, then
//!               sheddable) ──────────────────────────────────────────▶ Admitted
//!            ── its wait ends (pending_timeout_ms; sheddable: also
//!               sheddable_max_wait_ms) ────────────────────────────────▶ Refused(pending_timeout)
//!            ── displaced by a higher-priority arrival ─────────────────▶ Refused(displaced)
//! ```
//!
//! So when the pool is saturated a critical request never waits behind a
//! default or sheddable one, takes the queue place of the newest
//! lower-priority waiter when the queue is full, and sheddable requests
//! (which by default do not wait at all) are refused first.
//!
//! The queue ([`PriorityQueue`]) and the CPU meter ([`CpuMeter`]) are
//! sans-I/O: they are told the time and the readings, so every transition
//! is unit-tested without sleeping. [`crate::layers::admission`] wraps the
//! queue with the waiting itself; [`process_cpu_percent`] samples the
//! process's CPU time.
//!
//! **How CPU is measured.** At most once per `cpu_sample_interval_ms` (on
//! the request path of a request whose priority has a CPU threshold; no
//! thread is started) the process's user + system CPU time is read from
//! `/proc/self/stat` (`utime` + `stime`, all threads, in clock ticks of
//! 1/100 s: Linux's `USER_HZ`). The utilization is the CPU time used over
//! the last `cpu_window_ms` of samples divided by that wall time × the CPUs
//! available to the process (`std::thread::available_parallelism`, which
//! honours CPU affinity and cgroup quotas): 100 % means every CPU the
//! process may use was busy for the whole window. Where `/proc` is missing
//! (not Linux) the CPU trigger is inactive.

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};

use serde::{Deserialize, Serialize};

/// Criticality of a request. The order is the shedding order: sheddable
/// requests are refused first, critical ones last.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum Priority {
    /// Served first; never refused for CPU; takes queue places from lower priorities.
    Critical,
    /// Ordinary traffic.
    #[default]
    Default,
    /// Refused first: by default never waits for a concurrency slot.
    Sheddable,
}

impl Priority {
    /// All priorities, highest first.
    pub const ALL: [Priority; 3] = [Priority::Critical, Priority::Default, Priority::Sheddable];

    /// Parse a header value (`critical`, `default`, `sheddable`; ASCII case-insensitive).
    pub fn parse(s: &str) -> Option<Priority> {
        let s = s.trim();
        Priority::ALL
            .into_iter()
            .find(|p| p.as_str().eq_ignore_ascii_case(s))
    }

    /// The configuration and metric spelling.
    pub fn as_str(self) -> &'static str {
        match self {
            Priority::Critical => "critical",
            Priority::Default => "default",
            Priority::Sheddable => "sheddable",
        }
    }

    /// Queue index: 0 = highest.
    fn rank(self) -> usize {
        self as usize
    }
}

/// The priority of a request: `route_priority`, unless the route trusts
/// the header and `header_value` names a priority.
pub fn request_priority(
    route_priority: Priority,
    trust_header: bool,
    header_value: Option<&[u8]>,
) -> Priority {
    if !trust_header {
        return route_priority;
    }
    header_value
        .and_then(|v| std::str::from_utf8(v).ok())
        .and_then(Priority::parse)
        .unwrap_or(route_priority)
}

/// The CPU utilization (percent) at or above which a request of `p` is
/// refused; `None`: never (critical, or the threshold is 0 = off).
pub fn cpu_threshold_percent(
    p: Priority,
    sheddable_percent: u32,
    default_percent: u32,
) -> Option<u32> {
    let t = match p {
        Priority::Critical => 0,
        Priority::Default => default_percent,
        Priority::Sheddable => sheddable_percent,
    };
    (t > 0).then_some(t)
}

/// Outcome of [`PriorityQueue::enqueue`].
#[derive(Debug)]
pub enum Enqueued<W> {
    /// Waiting under this id; `displaced` (if any) lost its place and must be refused.
    Waiting {
        /// Id for [`PriorityQueue::cancel`].
        id: u64,
        /// The lower-priority waiter pushed out to make room.
        displaced: Option<W>,
    },
    /// No room, and nobody of lower priority to displace: the waiter is given back.
    Full(W),
}

/// The concurrency slots of a pool and the requests waiting for one,
/// ordered by priority then arrival. `W` is whatever wakes a waiter (a
/// channel in production, a number in tests). A released slot is handed
/// directly to the waiter chosen, so a newcomer can never take it first.
#[derive(Debug)]
pub struct PriorityQueue<W> {
    in_flight: usize,
    /// The limit given with the last arrival; a release above it (the limit
    /// was lowered live) frees the slot instead of handing it on.
    max_concurrent: usize,
    waiting: [VecDeque<(u64, W)>; 3],
    next_id: u64,
}

impl<W> Default for PriorityQueue<W> {
    fn default() -> Self {
        PriorityQueue {
            in_flight: 0,
            max_concurrent: usize::MAX,
            waiting: Default::default(),
            next_id: 0,
        }
    }
}

impl<W> PriorityQueue<W> {
    /// Requests holding a slot.
    pub fn in_flight(&self) -> usize {
        self.in_flight
    }

    /// Requests waiting.
    pub fn pending(&self) -> usize {
        self.waiting.iter().map(VecDeque::len).sum()
    }

    /// Requests of `p` waiting.
    pub fn pending_of(&self, p: Priority) -> usize {
        self.waiting[p.rank()].len()
    }

    /// Change the limit without an arrival (the adaptive limit moved); the
    /// slots it frees are handed on by [`PriorityQueue::fill_free_slots`].
    pub fn set_max_concurrent(&mut self, max_concurrent: usize) {
        self.max_concurrent = max_concurrent;
    }

    /// Take a slot at once if one is free and nobody of priority ≥ `p`
    /// waits (a newcomer never overtakes an equal or higher waiter).
    pub fn try_admit(&mut self, p: Priority, max_concurrent: usize) -> bool {
        self.max_concurrent = max_concurrent;
        let ahead = self.waiting[..=p.rank()].iter().any(|q| !q.is_empty());
        if self.in_flight < max_concurrent && !ahead {
            self.in_flight += 1;
            true
        } else {
            false
        }
    }

    /// Wait for a slot with priority `p`, in a queue of at most
    /// `max_pending` waiters; when it is full, the newest waiter of the
    /// lowest priority below `p` is displaced.
    pub fn enqueue(&mut self, p: Priority, max_pending: usize, w: W) -> Enqueued<W> {
        let mut displaced = None;
        if self.pending() >= max_pending {
            let lower = (p.rank() + 1..3)
                .rev()
                .find(|r| !self.waiting[*r].is_empty());
            match lower {
                Some(r) if max_pending > 0 => {
                    displaced = self.waiting[r].pop_back().map(|(_, w)| w);
                }
                _ => return Enqueued::Full(w),
            }
        }
        let id = self.next_id;
        self.next_id += 1;
        self.waiting[p.rank()].push_back((id, w));
        Enqueued::Waiting { id, displaced }
    }

    /// Slots free while requests wait (the limit was raised live): hand
    /// each such slot to the best waiter. Returns the waiters admitted.
    pub fn fill_free_slots(&mut self) -> Vec<W> {
        let mut out = Vec::new();
        while self.in_flight < self.max_concurrent {
            match self.pop_best() {
                Some(w) => {
                    self.in_flight += 1;
                    out.push(w);
                }
                None => break,
            }
        }
        out
    }

    /// A slot is released: returns the waiter it is handed to (the slot
    /// stays taken), or frees it when nobody waits or the limit was lowered.
    pub fn release(&mut self) -> Option<W> {
        if self.in_flight <= self.max_concurrent {
            if let Some(w) = self.pop_best() {
                return Some(w);
            }
        }
        self.in_flight = self.in_flight.saturating_sub(1);
        None
    }

    /// A waiter gives up (its wait ended or its request went away).
    /// `None`: it is no longer waiting — it was handed a slot or displaced
    /// just before, and the answer is already on its way to it.
    pub fn cancel(&mut self, id: u64) -> Option<W> {
        for q in &mut self.waiting {
            if let Some(i) = q.iter().position(|(x, _)| *x == id) {
                return q.remove(i).map(|(_, w)| w);
            }
        }
        None
    }

    fn pop_best(&mut self) -> Option<W> {
        self.waiting
            .iter_mut()
            .find_map(|q| q.pop_front().map(|(_, w)| w))
    }
}

/// Process CPU utilization from cumulative CPU-time readings, sans-I/O.
#[derive(Debug, Default)]
pub struct CpuMeter {
    /// `(wall ms, cumulative CPU µs)`, oldest first.
    samples: VecDeque<(u64, u64)>,
}

/// Samples kept at most (bounds memory whatever the window and interval).
const CPU_MAX_SAMPLES: usize = 1024;

impl CpuMeter {
    /// Record a reading: `cpu_us` of CPU time used by the process so far, at
    /// `now_ms`. Samples older than `window_ms` before `now_ms` are dropped,
    /// except the newest of them (the start of the window).
    pub fn record(&mut self, now_ms: u64, cpu_us: u64, window_ms: u64) {
        if let Some(&(t, _)) = self.samples.back() {
            if now_ms <= t {
                return;
            }
        }
        self.samples.push_back((now_ms, cpu_us));
        while self.samples.len() > 2
            && (self.samples.len() > CPU_MAX_SAMPLES || self.samples[1].0 + window_ms <= now_ms)
        {
            self.samples.pop_front();
        }
    }

    /// Utilization in percent (0 – 100) over the samples kept, for `cpus`
    /// CPUs: CPU time used ÷ (wall time × cpus). 0 with fewer than two samples.
    pub fn utilization_percent(&self, cpus: usize) -> u32 {
        let (Some(&(t0, c0)), Some(&(t1, c1))) = (self.samples.front(), self.samples.back()) else {
            return 0;
        };
        if t1 <= t0 {
            return 0;
        }
        let wall_us = (t1 - t0) as f64 * 1000.0 * cpus.max(1) as f64;
        let used = c1.saturating_sub(c0) as f64;
        (used / wall_us * 100.0).round().clamp(0.0, 100.0) as u32
    }
}

/// CPU time (user + system, all threads) of this process, in µs, from
/// `/proc/self/stat`; `None` where it cannot be read.
pub fn process_cpu_time_us() -> Option<u64> {
    let s = std::fs::read_to_string("/proc/self/stat").ok()?;
    parse_proc_stat_cpu_us(&s)
}

/// Linux's `USER_HZ`: `/proc` reports CPU time in ticks of 1/100 s.
const USER_HZ: u64 = 100;

/// `utime + stime` of a `/proc/<pid>/stat` line, in µs. The command name
/// (field 2) may contain spaces and parentheses, so fields are counted
/// after its last `)`: state is the first, utime the 12th, stime the 13th.
pub fn parse_proc_stat_cpu_us(line: &str) -> Option<u64> {
    let rest = &line[line.rfind(')')? + 1..];
    let mut f = rest.split_whitespace().skip(11);
    let utime: u64 = f.next()?.parse().ok()?;
    let stime: u64 = f.next()?.parse().ok()?;
    Some((utime + stime) * (1_000_000 / USER_HZ))
}

/// The process-wide meter (CPU time is a property of the process, shared
/// by every gateway in it).
struct ProcessCpu {
    meter: Mutex<CpuMeter>,
    /// When the next sample is due (ms of `endpoint::now_ms`).
    next_sample_ms: AtomicU64,
    /// Last computed utilization, read without locking.
    percent: AtomicU32,
}

fn process_cpu() -> &'static ProcessCpu {
    static P: OnceLock<ProcessCpu> = OnceLock::new();
    P.get_or_init(|| ProcessCpu {
        meter: Mutex::new(CpuMeter::default()),
        next_sample_ms: AtomicU64::new(0),
        percent: AtomicU32::new(0),
    })
}

fn available_cpus() -> usize {
    static N: OnceLock<usize> = OnceLock::new();
    *N.get_or_init(|| std::thread::available_parallelism().map_or(1, |n| n.get()))
}

/// The process's CPU utilization in percent over about the last
/// `window_ms`, sampling `/proc/self/stat` if the last sample is at least
/// `interval_ms` old. Cheap when no sample is due (two atomic loads).
pub fn process_cpu_percent(now_ms: u64, interval_ms: u64, window_ms: u64) -> u32 {
    let p = process_cpu();
    let due = p.next_sample_ms.load(Ordering::Acquire);
    if now_ms >= due
        && p.next_sample_ms
            .compare_exchange(
                due,
                now_ms + interval_ms,
                Ordering::AcqRel,
                Ordering::Acquire,
            )
            .is_ok()
    {
        if let Some(cpu) = process_cpu_time_us() {
            let mut m = p.meter.lock().unwrap();
            m.record(now_ms, cpu, window_ms);
            p.percent
                .store(m.utilization_percent(available_cpus()), Ordering::Release);
        }
    }
    p.percent.load(Ordering::Acquire)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn header_is_used_only_on_trusting_routes() {
        let h = Some(&b"Critical"[..]);
        assert_eq!(
            request_priority(Priority::Sheddable, false, h),
            Priority::Sheddable
        );
        assert_eq!(
            request_priority(Priority::Sheddable, true, h),
            Priority::Critical
        );
        assert_eq!(
            request_priority(Priority::Default, true, Some(b"bogus")),
            Priority::Default
        );
        assert_eq!(
            request_priority(Priority::Critical, true, None),
            Priority::Critical
        );
        assert_eq!(
            request_priority(Priority::Default, true, Some(b" sheddable ")),
            Priority::Sheddable
        );
    }

    #[test]
    fn cpu_thresholds_never_apply_to_critical() {
        assert_eq!(cpu_threshold_percent(Priority::Critical, 80, 95), None);
        assert_eq!(cpu_threshold_percent(Priority::Default, 80, 95), Some(95));
        assert_eq!(cpu_threshold_percent(Priority::Default, 80, 0), None);
        assert_eq!(cpu_threshold_percent(Priority::Sheddable, 80, 0), Some(80));
    }

    #[test]
    fn free_slot_is_taken_at_once_then_arrivals_wait() {
        let mut q = PriorityQueue::<u32>::default();
        assert!(q.try_admit(Priority::Sheddable, 2));
        assert!(q.try_admit(Priority::Default, 2));
        assert!(!q.try_admit(Priority::Critical, 2));
        assert_eq!(q.in_flight(), 2);
        assert!(matches!(
            q.enqueue(Priority::Default, 10, 1),
            Enqueued::Waiting {
                displaced: None,
                ..
            }
        ));
        assert_eq!(q.pending(), 1);
    }

    #[test]
    fn released_slot_goes_to_highest_priority_then_oldest() {
        let mut q = PriorityQueue::<u32>::default();
        assert!(q.try_admit(Priority::Default, 1));
        for (p, w) in [
            (Priority::Sheddable, 1),
            (Priority::Default, 2),
            (Priority::Critical, 3),
            (Priority::Default, 4),
            (Priority::Critical, 5),
        ] {
            assert!(matches!(q.enqueue(p, 10, w), Enqueued::Waiting { .. }));
        }
        let order: Vec<u32> = (0..5).map(|_| q.release().unwrap()).collect();
        assert_eq!(order, vec![3, 5, 2, 4, 1]);
        // The slot stayed taken through every hand-off; now it is freed.
        assert_eq!(q.in_flight(), 1);
        assert_eq!(q.release(), None);
        assert_eq!(q.in_flight(), 0);
    }

    #[test]
    fn newcomer_never_overtakes_an_equal_or_higher_waiter() {
        let mut q = PriorityQueue::<u32>::default();
        assert!(q.try_admit(Priority::Default, 1));
        q.enqueue(Priority::Default, 10, 1);
        // The limit is raised live: a slot is free but a default waiter is first.
        assert!(!q.try_admit(Priority::Default, 2));
        assert!(!q.try_admit(Priority::Sheddable, 2));
        assert_eq!(q.fill_free_slots(), vec![1]);
        assert_eq!(q.in_flight(), 2);
        assert!(!q.try_admit(Priority::Critical, 2));
    }

    #[test]
    fn full_queue_displaces_newest_lowest_waiter_for_higher_priority_only() {
        let mut q = PriorityQueue::<u32>::default();
        assert!(q.try_admit(Priority::Critical, 1));
        q.enqueue(Priority::Sheddable, 3, 1);
        q.enqueue(Priority::Sheddable, 3, 2);
        q.enqueue(Priority::Default, 3, 3);
        // Full: a sheddable arrival has nobody below it.
        assert!(matches!(
            q.enqueue(Priority::Sheddable, 3, 4),
            Enqueued::Full(4)
        ));
        // A default arrival displaces the newest sheddable waiter.
        match q.enqueue(Priority::Default, 3, 5) {
            Enqueued::Waiting { displaced, .. } => assert_eq!(displaced, Some(2)),
            e => panic!("{e:?}"),
        }
        // A critical arrival displaces the last sheddable, then defaults (newest first).
        match q.enqueue(Priority::Critical, 3, 6) {
            Enqueued::Waiting { displaced, .. } => assert_eq!(displaced, Some(1)),
            e => panic!("{e:?}"),
        }
        match q.enqueue(Priority::Critical, 3, 7) {
            Enqueued::Waiting { displaced, .. } => assert_eq!(displaced, Some(5)),
            e => panic!("{e:?}"),
        }
        assert_eq!(q.pending_of(Priority::Critical), 2);
        assert_eq!(q.pending_of(Priority::Default), 1);
        assert_eq!(q.pending_of(Priority::Sheddable), 0);
        // Only criticals and nothing lower: a critical arrival is refused too.
        match q.enqueue(Priority::Critical, 3, 8) {
            Enqueued::Waiting { displaced, .. } => assert_eq!(displaced, Some(3)),
            e => panic!("{e:?}"),
        }
        assert!(matches!(
            q.enqueue(Priority::Critical, 3, 9),
            Enqueued::Full(9)
        ));
        // No queue at all: nothing can wait or be displaced.
        let mut z = PriorityQueue::<u32>::default();
        assert!(matches!(
            z.enqueue(Priority::Critical, 0, 1),
            Enqueued::Full(1)
        ));
    }

    #[test]
    fn cancel_removes_a_waiter_but_not_one_already_served() {
        let mut q = PriorityQueue::<u32>::default();
        assert!(q.try_admit(Priority::Default, 1));
        let Enqueued::Waiting { id: a, .. } = q.enqueue(Priority::Default, 10, 1) else {
            panic!()
        };
        let Enqueued::Waiting { id: b, .. } = q.enqueue(Priority::Default, 10, 2) else {
            panic!()
        };
        assert_eq!(q.cancel(b), Some(2));
        assert_eq!(q.release(), Some(1));
        assert_eq!(q.cancel(a), None, "already handed the slot");
        assert_eq!(q.in_flight(), 1);
    }

    #[test]
    fn lowered_limit_frees_slots_instead_of_handing_them_on() {
        let mut q = PriorityQueue::<u32>::default();
        for _ in 0..3 {
            assert!(q.try_admit(Priority::Default, 3));
        }
        q.enqueue(Priority::Critical, 10, 1);
        assert!(!q.try_admit(Priority::Critical, 1)); // limit lowered to 1
        assert_eq!(q.release(), None);
        assert_eq!(q.release(), None);
        assert_eq!(q.in_flight(), 1);
        assert_eq!(q.release(), Some(1));
        assert_eq!(q.in_flight(), 1);
    }

    #[test]
    fn cpu_meter_over_a_window_with_synthetic_readings() {
        let mut m = CpuMeter::default();
        assert_eq!(m.utilization_percent(2), 0);
        // 2 CPUs; 1 s of wall time per sample step of 100 ms.
        m.record(1_000, 0, 1_000);
        assert_eq!(m.utilization_percent(2), 0);
        // 100 ms wall, 100 ms CPU on 2 CPUs = 50 %.
        m.record(1_100, 100_000, 1_000);
        assert_eq!(m.utilization_percent(2), 50);
        // Fully busy for 900 ms more: (100 + 1800) ms over 1000 ms × 2 = 95 %.
        m.record(2_000, 1_900_000, 1_000);
        assert_eq!(m.utilization_percent(2), 95);
        // Idle afterwards: old samples leave the window, the figure drops.
        m.record(2_500, 1_900_000, 1_000);
        m.record(3_100, 1_900_000, 1_000);
        assert_eq!(m.utilization_percent(2), 0);
        // Time never runs backwards in the meter.
        m.record(3_000, 9_000_000, 1_000);
        assert_eq!(m.utilization_percent(2), 0);
        // Clamped at 100 %.
        m.record(3_200, 9_000_000, 1_000);
        assert_eq!(m.utilization_percent(1), 100);
    }

    #[test]
    fn cpu_meter_memory_is_bounded() {
        let mut m = CpuMeter::default();
        for i in 1..10_000u64 {
            m.record(i, i * 500, u64::MAX / 2);
        }
        assert!(m.samples.len() <= CPU_MAX_SAMPLES);
        assert_eq!(m.utilization_percent(1), 50);
    }

    #[test]
    fn proc_stat_parsing() {
        let line = "1234 (my (odd) proc) S 1 2 3 4 5 6 7 8 9 10 250 130 0 0 20 0 4 0";
        assert_eq!(parse_proc_stat_cpu_us(line), Some((250 + 130) * 10_000));
        assert_eq!(parse_proc_stat_cpu_us("garbage"), None);
        assert_eq!(parse_proc_stat_cpu_us("1 (x) S 1 2"), None);
        if std::path::Path::new("/proc/self/stat").exists() {
            assert!(process_cpu_time_us().is_some());
        }
    }
}

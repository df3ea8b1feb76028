//! Client connection lifecycle and fair admission (per listener).
//!
//! Every accepted HTTP/HTTPS connection is a [`Conn`] driven by this state
//! machine (the phase changes on bytes read, on request start and on the end
//! of the last in-flight response):
//!
//! ```text
//!          first byte (HTTP/1, TLS)               request head parsed
//!   New ───────────────────────────▶ Head ─────────────────────────────▶ Active
//!    │                                  ▲                                  │
//!    │ first bytes = h2c preface         │ next byte (HTTP/1)               │ last in-flight response
//!    │ (or TLS ALPN h2)                  │                                  │ fully sent
//!    └──────────────────────────────▶ Idle ◀─────────────────────────────────┘
//!                                      │ new request (HTTP/1 head, h2 stream) ─▶ Active
//!
//!   New  ──client_first_byte_timeout_ms──▶ closed
//!   Head ──header_read_timeout_ms─────────▶ closed   (slowloris; TLS handshake included)
//!   Idle ──client_keepalive_idle_timeout_ms▶ closed   (h2: bytes such as PING do not extend it)
//!   Active: no connection timer (route deadlines apply to requests)
//!   New / Idle ──evicted (fair admission, below)──▶ closed at once
//! ```
//!
//! Fair admission ([`ConnTable::admit`]): a connection from an IP that already
//! has `max_connections_per_client_ip` open connections is refused (`503`,
//! closed). When the listener holds `max_connections`, the new connection is
//! admitted by evicting the oldest connection still in `New` (it never sent a
//! byte), or, when there is none, the connection idle the longest in `Idle`.
//! Only when every connection is in `Head` or `Active` (doing work) is the
//! new connection refused with `503 too many connections`. So a flood of
//! silent or idle connections cannot starve clients that send requests: each
//! working client displaces one idler. TCP (L4) listeners register their
//! connections as `Active`: they count against both limits but are never
//! evicted or timed out (the gateway cannot tell when an opaque stream is idle,
//! and server-speaks-first protocols never send a first byte).
//!
//! Evictable connections are kept in two FIFO queues (accept order for `New`,
//! idle order for `Idle`) with lazy deletion: an entry is checked against the
//! connection's current phase when popped, and queues are compacted when they
//! grow past twice the open connections, so admission is amortised O(1).

use std::collections::{HashMap, VecDeque};
use std::io;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU8, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::sync::Notify;
use tokio::time::Instant;

use crate::pool::{BoxError, ProxyBody};

/// Phase of a client connection (see the module documentation).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub(crate) enum Phase {
    New = 0,
    Head = 1,
    Active = 2,
    Idle = 3,
    /// Evicted or timed out: the serving task is closing it.
    Closing = 4,
}

/// Why the gateway closed a client connection on its own initiative.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum CloseReason {
    FirstByteTimeout,
    HeaderTimeout,
    KeepaliveIdleTimeout,
    Evicted,
}

impl CloseReason {
    /// Metric label.
    pub fn label(self) -> &'static str {
        match self {
            CloseReason::FirstByteTimeout => "first_byte_timeout",
            CloseReason::HeaderTimeout => "header_timeout",
            CloseReason::KeepaliveIdleTimeout => "keepalive_idle_timeout",
            CloseReason::Evicted => "evicted",
        }
    }
}

/// Why a new connection was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Refusal {
    /// `max_connections` reached and nothing evictable.
    Total,
    /// `max_connections_per_client_ip` reached for this IP.
    PerIp,
}

/// Connection timers, read from the listener configuration at accept time.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Timeouts {
    pub first_byte: Duration,
    pub header_read: Duration,
    pub keepalive_idle: Duration,
}

struct St {
    phase: Phase,
    /// When the current phase was entered.
    since: Instant,
    in_flight: u32,
    /// Incremented on every entry into `Idle`; identifies idle-queue entries.
    idle_epoch: u64,
    /// Upgraded (101): the socket now belongs to a tunnel; never idle again.
    upgraded: bool,
    /// The watchdog's timers (set when it starts).
    timeouts: Option<Timeouts>,
    /// When the watchdog's sleep ends (None: not sleeping yet).
    armed: Option<Instant>,
}

impl St {
    /// When the current phase's timer expires (None: `Active`, `Closing`).
    fn deadline(&self, t: &Timeouts) -> Option<Instant> {
        let limit = match self.phase {
            Phase::New => t.first_byte,
            Phase::Head => t.header_read,
            Phase::Idle => t.keepalive_idle,
            Phase::Active | Phase::Closing => return None,
        };
        Some(self.since + limit)
    }
}

/// One client connection registered in a [`ConnTable`].
pub(crate) struct Conn {
    ip: IpAddr,
    /// Plaintext HTTP listener: detect the h2c preface on the first read.
    detect_h2c: bool,
    h2: AtomicBool,
    /// Mirror of `st.phase`, so reads in `Head`/`Active` skip the lock.
    phase_hint: AtomicU8,
    st: Mutex<St>,
    changed: Notify,
    /// Set once the connection no longer counts against the limits.
    released: AtomicBool,
    table: Arc<ConnTable>,
}

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

impl Conn {
    /// Enter phase `p`. The watchdog is woken only when it must act
    /// earlier than it planned to (eviction, or a deadline before its
    /// armed sleep ends): a keep-alive request's three phase changes cost
    /// no wake-up and no timer re-registration (see [`Conn::watchdog`]).
    fn set_phase(&self, st: &mut St, p: Phase) {
        st.phase = p;
        st.since = Instant::now();
        self.phase_hint.store(p as u8, Ordering::Release);
        let wake = match (p, st.armed, st.timeouts) {
            (Phase::Closing, ..) => true,
            (_, Some(armed), Some(t)) => st.deadline(&t).is_some_and(|d| d < armed),
            // Not sleeping yet: it reads the phase before it sleeps.
            _ => false,
        };
        if wake {
            self.changed.notify_one();
        }
    }

    /// Enter `Idle`; returns the epoch to queue (the caller pushes it after
    /// dropping the connection lock: lock order is table → connection).
    fn enter_idle(&self, st: &mut St) -> u64 {
        st.idle_epoch += 1;
        self.set_phase(st, Phase::Idle);
        st.idle_epoch
    }

    /// Bytes were read from the client.
    pub(crate) fn on_read(self: &Arc<Self>, data: &[u8]) {
        let hint = self.phase_hint.load(Ordering::Acquire);
        if hint != Phase::New as u8 && hint != Phase::Idle as u8 {
            return;
        }
        let mut idle = None;
        {
            let mut st = self.st.lock().unwrap();
            match st.phase {
                Phase::New => {
                    let n = data.len().min(H2_PREFACE.len());
                    if self.detect_h2c && n > 0 && data[..n] == H2_PREFACE[..n] {
                        // h2c: the request comes as a stream; until then the
                        // connection is idle (h2 frames carry no partial heads
                        // worth a slowloris timer; h2 limits header size).
                        self.h2.store(true, Ordering::Release);
                        idle = Some(self.enter_idle(&mut st));
                    } else {
                        self.set_phase(&mut st, Phase::Head);
                    }
                }
                Phase::Idle if !self.h2.load(Ordering::Acquire) => {
                    self.set_phase(&mut st, Phase::Head)
                }
                _ => {}
            }
        }
        if let Some(e) = idle {
            self.table.push_idle(self, e);
        }
    }

    /// TLS handshake done: ALPN chose `h2` or not.
    pub fn tls_established(self: &Arc<Self>, h2: bool) {
        if !h2 {
            return;
        }
        self.h2.store(true, Ordering::Release);
        let mut idle = None;
        {
            let mut st = self.st.lock().unwrap();
            if st.phase == Phase::Head && st.in_flight == 0 {
                idle = Some(self.enter_idle(&mut st));
            }
        }
        if let Some(e) = idle {
            self.table.push_idle(self, e);
        }
    }

    /// A request was parsed and handed to the proxy; the guard ends it.
    pub fn request_started(self: &Arc<Self>) -> RequestGuard {
        let mut st = self.st.lock().unwrap();
        st.in_flight += 1;
        if matches!(st.phase, Phase::New | Phase::Head | Phase::Idle) {
            self.set_phase(&mut st, Phase::Active);
        }
        RequestGuard { conn: self.clone() }
    }

    fn request_finished(self: &Arc<Self>) {
        let mut idle = None;
        {
            let mut st = self.st.lock().unwrap();
            st.in_flight = st.in_flight.saturating_sub(1);
            if st.in_flight == 0 && st.phase == Phase::Active && !st.upgraded {
                idle = Some(self.enter_idle(&mut st));
            }
        }
        if let Some(e) = idle {
            self.table.push_idle(self, e);
        }
    }

    fn mark_upgraded(&self) {
        let mut st = self.st.lock().unwrap();
        st.upgraded = true;
        if st.phase != Phase::Closing {
            self.set_phase(&mut st, Phase::Active);
        }
    }

    /// Under the table lock: close this connection if it is still evictable
    /// in the given phase (and idle epoch).
    fn try_evict(&self, phase: Phase, epoch: Option<u64>) -> bool {
        let mut st = self.st.lock().unwrap();
        if st.phase != phase || epoch.is_some_and(|e| e != st.idle_epoch) {
            return false;
        }
        self.set_phase(&mut st, Phase::Closing);
        true
    }

    fn is_in(&self, phase: Phase, epoch: Option<u64>) -> bool {
        let st = self.st.lock().unwrap();
        st.phase == phase && epoch.is_none_or(|e| e == st.idle_epoch)
    }

    /// Resolves when the connection must be closed: its phase timer expired
    /// or it was evicted. Never resolves while requests are active.
    ///
    /// It sleeps until the earliest moment a deadline can fall: the current
    /// phase's, or, for a phase entered later, `min(header_read,
    /// keepalive_idle)` from now (a phase entered at `t` ends no earlier
    /// than `t` plus its limit; `New` is never entered again). Phase changes
    /// therefore need not wake it (`set_phase` does only for an earlier
    /// deadline or an eviction); each wake re-reads the phase and sleeps
    /// again, so deadlines are exact and a busy connection's watchdog wakes
    /// about once per that minimum.
    pub async fn watchdog(&self, t: Timeouts) -> CloseReason {
        let horizon = t.header_read.min(t.keepalive_idle);
        loop {
            let armed = {
                let mut st = self.st.lock().unwrap();
                st.timeouts = Some(t);
                let now = Instant::now();
                let deadline = st.deadline(&t);
                if st.phase == Phase::Closing {
                    return CloseReason::Evicted;
                }
                if deadline.is_some_and(|d| d <= now) {
                    let reason = match st.phase {
                        Phase::New => CloseReason::FirstByteTimeout,
                        Phase::Head => CloseReason::HeaderTimeout,
                        _ => CloseReason::KeepaliveIdleTimeout,
                    };
                    self.set_phase(&mut st, Phase::Closing);
                    return reason;
                }
                let armed = deadline.map_or(now + horizon, |d| d.min(now + horizon));
                st.armed = Some(armed);
                armed
            };
            tokio::select! {
                // `notify_one` stores a permit, so a change between setting
                // `armed` and waiting here is not lost.
                _ = self.changed.notified() => {}
                _ = tokio::time::sleep_until(armed) => {}
            }
        }
    }

    /// Current phase (tests and diagnostics).
    #[allow(dead_code)]
    pub fn phase(&self) -> Phase {
        self.st.lock().unwrap().phase
    }
}

impl Drop for Conn {
    fn drop(&mut self) {
        if !self.released.swap(true, Ordering::AcqRel) {
            let mut t = self.table.inner.lock().unwrap();
            t.release(self.ip);
        }
    }
}

/// Held while a request is in flight on a connection.
pub(crate) struct RequestGuard {
    conn: Arc<Conn>,
}

impl RequestGuard {
    /// The response switched protocols: the connection becomes a tunnel.
    pub fn upgraded(&self) {
        self.conn.mark_upgraded();
    }
}

impl Drop for RequestGuard {
    fn drop(&mut self) {
        self.conn.request_finished();
    }
}

/// Response body that ends its request (for the connection state machine)
/// when the last frame has been produced or the body is dropped.
pub(crate) struct EndOnDrop {
    pub inner: ProxyBody,
    pub guard: Option<RequestGuard>,
}

impl Body for EndOnDrop {
    type Data = Bytes;
    type Error = BoxError;
    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        let r = Pin::new(&mut this.inner).poll_frame(cx);
        if let Poll::Ready(None) = r {
            this.guard = None;
        }
        r
    }
    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }
    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// Socket wrapper that reports reads to the connection state machine.
pub(crate) struct TrackedIo<I> {
    io: I,
    conn: Arc<Conn>,
}

impl<I> TrackedIo<I> {
    pub fn new(io: I, conn: Arc<Conn>) -> Self {
        TrackedIo { io, conn }
    }
}

impl<I: AsyncRead + Unpin> AsyncRead for TrackedIo<I> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        let before = buf.filled().len();
        let r = Pin::new(&mut this.io).poll_read(cx, buf);
        if let Poll::Ready(Ok(())) = r {
            if buf.filled().len() > before {
                this.conn.on_read(&buf.filled()[before..]);
            }
        }
        r
    }
}

/// `AsyncWrite` for a wrapper that only changes reads: every write goes
/// straight to its `io` field (`TrackedIo` here, `server_h1::Rewind`).
macro_rules! write_through_to_io {
    (impl[$($generics:tt)*] for $wrapper:ty) => {
        impl<$($generics)*> tokio::io::AsyncWrite for $wrapper {
            fn poll_write(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                buf: &[u8],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write(cx, buf)
            }
            fn poll_flush(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_flush(cx)
            }
            fn poll_shutdown(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
            ) -> std::task::Poll<std::io::Result<()>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_shutdown(cx)
            }
            fn poll_write_vectored(
                self: std::pin::Pin<&mut Self>,
                cx: &mut std::task::Context<'_>,
                bufs: &[std::io::IoSlice<'_>],
            ) -> std::task::Poll<std::io::Result<usize>> {
                std::pin::Pin::new(&mut self.get_mut().io).poll_write_vectored(cx, bufs)
            }
            fn is_write_vectored(&self) -> bool {
                self.io.is_write_vectored()
            }
        }
    };
}
pub(crate) use write_through_to_io;

write_through_to_io!(impl[I: AsyncWrite + Unpin] for TrackedIo<I>);

#[derive(Default)]
struct TableInner {
    open: usize,
    per_ip: HashMap<IpAddr, usize>,
    new_q: VecDeque<Weak<Conn>>,
    idle_q: VecDeque<(Weak<Conn>, u64)>,
}

impl TableInner {
    fn release(&mut self, ip: IpAddr) {
        self.open = self.open.saturating_sub(1);
        if let Some(n) = self.per_ip.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.per_ip.remove(&ip);
            }
        }
    }

    /// Queues may only hold entries of open connections plus stale ones;
    /// drop the stale ones once they outnumber the live ones.
    fn compact_limit(&self) -> usize {
        2 * self.open + 64
    }
}

/// Open connections of one listener: counts (total and per client IP) and
/// the eviction queues.
#[derive(Default)]
pub(crate) struct ConnTable {
    inner: Mutex<TableInner>,
}

/// What to register for an accepted socket.
pub(crate) struct AdmitRequest {
    pub ip: IpAddr,
    pub max_connections: usize,
    /// 0 = no per-IP limit.
    pub max_per_ip: usize,
    /// HTTP(S): the connection starts `New` and may be evicted/timed out.
    /// TCP: it starts `Active` and is neither.
    pub http: bool,
    /// Plaintext HTTP: detect the h2c preface.
    pub detect_h2c: bool,
}

impl ConnTable {
    /// Fair admission (see the module documentation).
    pub fn admit(self: &Arc<Self>, r: AdmitRequest) -> Result<Arc<Conn>, Refusal> {
        // Arcs upgraded under the lock are dropped after it: dropping the
        // last reference to a Conn takes the table lock (see `Drop for Conn`).
        let mut graveyard: Vec<Arc<Conn>> = Vec::new();
        let result = {
            let mut t = self.inner.lock().unwrap();
            let from_ip = t.per_ip.get(&r.ip).copied().unwrap_or(0);
            if r.max_per_ip > 0 && from_ip >= r.max_per_ip {
                Err(Refusal::PerIp)
            } else {
                while t.open >= r.max_connections {
                    let Some(victim) = Self::pop_evictable(&mut t, &mut graveyard) else {
                        break;
                    };
                    victim.released.store(true, Ordering::Release);
                    t.release(victim.ip);
                    graveyard.push(victim);
                }
                if t.open >= r.max_connections {
                    Err(Refusal::Total)
                } else {
                    let phase = if r.http { Phase::New } else { Phase::Active };
                    let conn = Arc::new(Conn {
                        ip: r.ip,
                        detect_h2c: r.detect_h2c,
                        h2: AtomicBool::new(false),
                        phase_hint: AtomicU8::new(phase as u8),
                        st: Mutex::new(St {
                            phase,
                            since: Instant::now(),
                            in_flight: 0,
                            idle_epoch: 0,
                            upgraded: false,
                            timeouts: None,
                            armed: None,
                        }),
                        changed: Notify::new(),
                        released: AtomicBool::new(false),
                        table: self.clone(),
                    });
                    t.open += 1;
                    *t.per_ip.entry(r.ip).or_insert(0) += 1;
                    if r.http {
                        t.new_q.push_back(Arc::downgrade(&conn));
                        if t.new_q.len() > t.compact_limit() {
                            t.new_q.retain(|w| match w.upgrade() {
                                Some(c) => {
                                    let keep = c.is_in(Phase::New, None);
                                    graveyard.push(c);
                                    keep
                                }
                                None => false,
                            });
                        }
                    }
                    Ok(conn)
                }
            }
        };
        drop(graveyard);
        result
    }

    /// Oldest `New` connection, else the longest `Idle` one; marked Closing.
    fn pop_evictable(t: &mut TableInner, graveyard: &mut Vec<Arc<Conn>>) -> Option<Arc<Conn>> {
        while let Some(w) = t.new_q.pop_front() {
            if let Some(c) = w.upgrade() {
                if !c.released.load(Ordering::Acquire) && c.try_evict(Phase::New, None) {
                    return Some(c);
                }
                graveyard.push(c);
            }
        }
        while let Some((w, epoch)) = t.idle_q.pop_front() {
            if let Some(c) = w.upgrade() {
                if !c.released.load(Ordering::Acquire) && c.try_evict(Phase::Idle, Some(epoch)) {
                    return Some(c);
                }
                graveyard.push(c);
            }
        }
        None
    }

    fn push_idle(&self, conn: &Arc<Conn>, epoch: u64) {
        let mut graveyard: Vec<Arc<Conn>> = Vec::new();
        {
            let mut t = self.inner.lock().unwrap();
            t.idle_q.push_back((Arc::downgrade(conn), epoch));
            if t.idle_q.len() > t.compact_limit() {
                t.idle_q.retain(|(w, e)| match w.upgrade() {
                    Some(c) => {
                        let keep = c.is_in(Phase::Idle, Some(*e));
                        graveyard.push(c);
                        keep
                    }
                    None => false,
                });
            }
        }
        drop(graveyard);
    }

    /// Connections counted against the limits.
    #[allow(dead_code)]
    pub fn open(&self) -> usize {
        self.inner.lock().unwrap().open
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(ip: [u8; 4], max: usize, per_ip: usize) -> AdmitRequest {
        AdmitRequest {
            ip: IpAddr::from(ip),
            max_connections: max,
            max_per_ip: per_ip,
            http: true,
            detect_h2c: true,
        }
    }

    #[tokio::test]
    async fn evicts_oldest_silent_then_longest_idle_and_refuses_when_all_work() {
        let t = Arc::new(ConnTable::default());
        let a = t.admit(req([10, 0, 0, 1], 3, 0)).ok().unwrap();
        let b = t.admit(req([10, 0, 0, 2], 3, 0)).ok().unwrap();
        let c = t.admit(req([10, 0, 0, 3], 3, 0)).ok().unwrap();
        // a: served one request, now idle; b: silent; c: working.
        drop(a.request_started());
        let _g = c.request_started();
        let d = t.admit(req([10, 0, 0, 4], 3, 0)).ok().unwrap();
        assert_eq!(b.phase(), Phase::Closing, "the silent one goes first");
        assert_eq!(a.phase(), Phase::Idle);
        let _gd = d.request_started();
        let e = t.admit(req([10, 0, 0, 5], 3, 0)).ok().unwrap();
        assert_eq!(a.phase(), Phase::Closing, "then the idle one");
        let _ge = e.request_started();
        assert_eq!(
            t.admit(req([10, 0, 0, 6], 3, 0)).err(),
            Some(Refusal::Total)
        );
        assert_eq!(t.open(), 3);
    }

    #[tokio::test]
    async fn per_ip_limit_and_release_on_drop() {
        let t = Arc::new(ConnTable::default());
        let a = t.admit(req([10, 0, 0, 1], 100, 2)).ok().unwrap();
        let _b = t.admit(req([10, 0, 0, 1], 100, 2)).ok().unwrap();
        assert_eq!(
            t.admit(req([10, 0, 0, 1], 100, 2)).err(),
            Some(Refusal::PerIp)
        );
        assert!(t.admit(req([10, 0, 0, 2], 100, 2)).is_ok());
        drop(a);
        assert!(t.admit(req([10, 0, 0, 1], 100, 2)).is_ok());
    }

    /// Real timers (tokio's paused clock needs the `test-util` feature); the
    /// bounds allow for scheduling delay on a loaded machine.
    #[tokio::test]
    async fn watchdog_timers_follow_the_phase() {
        let t = Arc::new(ConnTable::default());
        let to = Timeouts {
            first_byte: Duration::from_millis(100),
            header_read: Duration::from_millis(200),
            keepalive_idle: Duration::from_millis(300),
        };
        let within = |el: Duration, ms: u64| {
            assert!(
                el >= Duration::from_millis(ms) && el < Duration::from_millis(ms + 1000),
                "{el:?} vs {ms} ms"
            )
        };
        let c = t.admit(req([10, 0, 0, 1], 10, 0)).ok().unwrap();
        let t0 = Instant::now();
        assert_eq!(c.watchdog(to).await, CloseReason::FirstByteTimeout);
        within(t0.elapsed(), 100);

        let c = t.admit(req([10, 0, 0, 1], 10, 0)).ok().unwrap();
        let t0 = Instant::now();
        c.on_read(b"GET / HTTP/1.1\r\n");
        assert_eq!(c.watchdog(to).await, CloseReason::HeaderTimeout);
        within(t0.elapsed(), 200);

        let c = t.admit(req([10, 0, 0, 1], 10, 0)).ok().unwrap();
        let t0 = Instant::now();
        c.on_read(&H2_PREFACE[..10]);
        // h2 frames while idle do not extend the idle timer.
        c.on_read(b"ping");
        assert_eq!(c.watchdog(to).await, CloseReason::KeepaliveIdleTimeout);
        within(t0.elapsed(), 300);
    }

    /// Phase changes made while the watchdog sleeps do not wake it unless
    /// it must act earlier; the deadlines stay exact, and an eviction ends
    /// it at once.
    #[tokio::test]
    async fn watchdog_follows_phase_changes_made_while_it_sleeps() {
        let t = Arc::new(ConnTable::default());
        let to = Timeouts {
            first_byte: Duration::from_secs(10),
            header_read: Duration::from_millis(400),
            keepalive_idle: Duration::from_millis(200),
        };
        let within = |el: Duration, ms: u64| {
            assert!(
                el >= Duration::from_millis(ms) && el < Duration::from_millis(ms + 1000),
                "{el:?} vs {ms} ms"
            )
        };
        let c = t.admit(req([10, 0, 0, 1], 1, 0)).ok().unwrap();
        c.on_read(b"GET / HTTP/1.1\r\n\r\n");
        let g = c.request_started();
        let wd = tokio::spawn({
            let c = c.clone();
            async move { c.watchdog(to).await }
        });
        // A request that takes longer than both timers: no timeout while active.
        tokio::time::sleep(Duration::from_millis(500)).await;
        assert!(!wd.is_finished(), "an active request is never timed out");
        drop(g);
        let t1 = Instant::now();
        assert_eq!(wd.await.unwrap(), CloseReason::KeepaliveIdleTimeout);
        within(t1.elapsed(), 200);

        // Idle with a long timer: an eviction (a new connection over the
        // limit of 1) ends the watchdog at once.
        let slow = Timeouts {
            keepalive_idle: Duration::from_secs(30),
            ..to
        };
        let t = Arc::new(ConnTable::default());
        let c = t.admit(req([10, 0, 0, 1], 1, 0)).ok().unwrap();
        c.on_read(b"GET / HTTP/1.1\r\n\r\n");
        drop(c.request_started());
        let wd = tokio::spawn({
            let c = c.clone();
            async move { c.watchdog(slow).await }
        });
        // Poll until the watchdog sleeps (it arms its timer first).
        let deadline = Instant::now() + Duration::from_secs(5);
        while c.st.lock().unwrap().armed.is_none() {
            assert!(Instant::now() < deadline, "watchdog never armed");
            tokio::task::yield_now().await;
        }
        let t2 = Instant::now();
        let _d = t.admit(req([10, 0, 0, 2], 1, 0)).ok().unwrap();
        assert_eq!(wd.await.unwrap(), CloseReason::Evicted);
        assert!(t2.elapsed() < Duration::from_secs(5), "{:?}", t2.elapsed());
    }
}

//! Listeners: accept loops for `http` (HTTP/1.1 + h2c), `https` (TLS with
//! ALPN h2/http1.1) and `tcp` (L4 proxy), plus connection tracking used for
//! graceful draining.
//!
//! ```text
//! Accepting ──stop (shutdown or listener removed)──▶ Draining: no accept;
//!     each HTTP connection finishes its in-flight requests (h1: closes after the
//!     current response; h2: GOAWAY) ──all closed or drain timeout──▶ Stopped
//! ```

use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use hyper::service::service_fn;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use tokio::io::{AsyncRead, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, Notify};

use http_body_util::BodyExt;

use crate::config::{ListenerConfig, ListenerProtocol};
use crate::conn::{
    AdmitRequest, CloseReason, Conn, ConnTable, EndOnDrop, Refusal, Timeouts, TrackedIo,
};
use crate::endpoint::now_ms;
use crate::layers::outlier::{self, TryOutcome};
use crate::metrics::{ListenerLabels, ListenerReasonLabels};
use crate::proxy::{handle, ConnCtx, Shared};

/// Resolves once the watch value is `true` (or the sender is gone).
pub(crate) async fn stopped(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|s| *s).await;
}

/// Counts open connections; `wait_idle` resolves when none is left.
#[derive(Default)]
pub(crate) struct Tracker {
    n: AtomicUsize,
    idle: Notify,
}

pub(crate) struct TrackGuard(Arc<Tracker>);

impl Tracker {
    pub fn track(self: &Arc<Self>) -> TrackGuard {
        self.n.fetch_add(1, Ordering::AcqRel);
        TrackGuard(self.clone())
    }
    pub fn count(&self) -> usize {
        self.n.load(Ordering::Acquire)
    }
    pub async fn wait_idle(&self) {
        loop {
            let n = self.idle.notified();
            tokio::pin!(n);
            n.as_mut().enable();
            if self.count() == 0 {
                return;
            }
            n.await;
        }
    }
}

impl Drop for TrackGuard {
    fn drop(&mut self) {
        if self.0.n.fetch_sub(1, Ordering::AcqRel) == 1 {
            self.0.idle.notify_waiters();
        }
    }
}

/// A running listener.
pub(crate) struct ListenerHandle {
    pub cfg: Arc<RwLock<ListenerConfig>>,
    pub local_addr: SocketAddr,
    pub stop: watch::Sender<bool>,
}

/// Context handed to each accept loop.
#[derive(Clone)]
pub(crate) struct ServeCtx {
    pub shared: Arc<Shared>,
    pub tracker: Arc<Tracker>,
    pub hard_stop: watch::Receiver<bool>,
}

/// Bind a listener socket (synchronously, so errors surface before any change).
pub(crate) fn bind(cfg: &ListenerConfig) -> std::io::Result<std::net::TcpListener> {
    bind_with_backlog(cfg.address, cfg.listen_backlog)
}

/// A non-blocking listening socket on `addr` with `SO_REUSEADDR` (as std's
/// `TcpListener::bind`) and an accept queue of `backlog` (std's is 128).
pub(crate) fn bind_with_backlog(
    addr: SocketAddr,
    backlog: u32,
) -> std::io::Result<std::net::TcpListener> {
    use rustix::net::{AddressFamily, SocketFlags, SocketType};
    let family = if addr.is_ipv4() {
        AddressFamily::INET
    } else {
        AddressFamily::INET6
    };
    let fd = rustix::net::socket_with(
        family,
        SocketType::STREAM,
        SocketFlags::CLOEXEC | SocketFlags::NONBLOCK,
        None,
    )?;
    rustix::net::sockopt::set_socket_reuseaddr(&fd, true)?;
    rustix::net::bind(&fd, &addr)?;
    rustix::net::listen(&fd, backlog.min(i32::MAX as u32) as i32)?;
    Ok(std::net::TcpListener::from(fd))
}

/// Start the accept loop of a bound listener.
pub(crate) fn start(
    cfg: ListenerConfig,
    std_l: std::net::TcpListener,
    sc: ServeCtx,
) -> std::io::Result<ListenerHandle> {
    let l = TcpListener::from_std(std_l)?;
    let local_addr = l.local_addr()?;
    let (stop_tx, stop_rx) = watch::channel(false);
    let tls = match cfg.protocol {
        ListenerProtocol::Https => {
            let (c, _) = crate::tls::reloading_server_config(
                cfg.tls_cert_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
                cfg.tls_key_path
                    .as_deref()
                    .unwrap_or(std::path::Path::new("")),
                cfg.tls_reload_check_interval_ms,
            )
            .map_err(std::io::Error::other)?;
            Some(tokio_rustls::TlsAcceptor::from(c))
        }
        _ => None,
    };
    let shared_cfg = Arc::new(RwLock::new(cfg));
    let handle = ListenerHandle {
        cfg: shared_cfg.clone(),
        local_addr,
        stop: stop_tx,
    };
    tokio::spawn(accept_loop(l, shared_cfg, tls, sc, stop_rx));
    Ok(handle)
}

async fn accept_loop(
    l: TcpListener,
    cfg: Arc<RwLock<ListenerConfig>>,
    tls: Option<tokio_rustls::TlsAcceptor>,
    sc: ServeCtx,
    mut stop: watch::Receiver<bool>,
) {
    let name = cfg.read().unwrap().name.clone();
    let labels = ListenerLabels {
        listener: name.clone(),
    };
    let open_g = sc
        .shared
        .metrics
        .listener_connections
        .get_or_create(&labels)
        .clone();
    let accepted = sc
        .shared
        .metrics
        .listener_accepted
        .get_or_create(&labels)
        .clone();
    // Per-listener connection table: limits, fair admission, eviction.
    let table = Arc::new(ConnTable::default());
    loop {
        let (stream, peer) = tokio::select! {
            _ = crate::listener::stopped(&mut stop) => break,
            r = l.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    tracing::warn!(listener = %name, error = %e, "accept failed");
                    // EMFILE and friends: back off briefly.
                    tokio::time::sleep(Duration::from_millis(10)).await;
                    continue;
                }
            },
        };
        let _ = stream.set_nodelay(true);
        accepted.inc();
        let lcfg = cfg.read().unwrap().clone();
        let http = lcfg.protocol != ListenerProtocol::Tcp;
        let admitted = table.admit(AdmitRequest {
            ip: peer.ip(),
            max_connections: lcfg.max_connections,
            max_per_ip: lcfg.max_connections_per_client_ip,
            http,
            detect_h2c: lcfg.protocol == ListenerProtocol::Http,
        });
        let conn = match admitted {
            // An evicted connection is counted by its own task (watchdog reason).
            Ok(c) => c,
            Err(refusal) => {
                let (class, body) = match refusal {
                    Refusal::Total => ("connections", "too many connections, try again\n"),
                    Refusal::PerIp => (
                        "connections_per_ip",
                        "too many connections from your address, try again\n",
                    ),
                };
                let msg = format!(
                    "HTTP/1.1 503 Service Unavailable\r\nRetry-After: 1\r\nContent-Type: text/plain\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
                    body.len()
                );
                sc.shared
                    .metrics
                    .overload_rejections
                    .get_or_create(&crate::metrics::PoolClassLabels {
                        pool: String::new(),
                        class: class.into(),
                    })
                    .inc();
                if lcfg.protocol == ListenerProtocol::Http {
                    tokio::spawn(async move {
                        let mut s = stream;
                        let _ = tokio::time::timeout(
                            Duration::from_secs(1),
                            s.write_all(msg.as_bytes()),
                        )
                        .await;
                        let _ = s.shutdown().await;
                    });
                }
                continue;
            }
        };
        open_g.inc();
        let guard = sc.tracker.track();
        let sc2 = sc.clone();
        let stop2 = stop.clone();
        let open_g2 = open_g.clone();
        let tls2 = tls.clone();
        let name2 = name.clone();
        tokio::spawn(async move {
            let _guard = guard;
            let mut hard = sc2.hard_stop.clone();
            let timeouts = Timeouts {
                first_byte: Duration::from_millis(lcfg.client_first_byte_timeout_ms),
                header_read: Duration::from_millis(lcfg.header_read_timeout_ms),
                keepalive_idle: Duration::from_millis(lcfg.client_keepalive_idle_timeout_ms),
            };
            let work = async {
                match lcfg.protocol {
                    // Plaintext: the HTTP/1.1 fast path, which hands h2c,
                    // Upgrade and CONNECT connections to hyper's server.
                    ListenerProtocol::Http => {
                        crate::server_h1::serve(
                            stream,
                            &lcfg,
                            ConnCtx { peer, tls: false },
                            &conn,
                            &sc2,
                            stop2,
                        )
                        .await
                    }
                    ListenerProtocol::Https => {
                        let acc = tls2.expect("tls acceptor");
                        // The handshake is bounded by the connection watchdog
                        // (first byte, then header_read_timeout_ms).
                        let io = TrackedIo::new(stream, conn.clone());
                        if let Ok(s) = acc.accept(io).await {
                            conn.tls_established(s.get_ref().1.alpn_protocol() == Some(b"h2"));
                            serve_http(s, &lcfg, ConnCtx { peer, tls: true }, &conn, &sc2, stop2)
                                .await
                        }
                    }
                    ListenerProtocol::Tcp => serve_tcp(stream, peer, &lcfg, &sc2).await,
                }
            };
            tokio::select! {
                _ = work => {}
                reason = conn.watchdog(timeouts), if http => {
                    tracing::debug!(%peer, reason = reason.label(), "closing client connection");
                    closes(&sc2, &name2, reason).inc();
                }
                _ = crate::listener::stopped(&mut hard) => {}
            }
            open_g2.dec();
        });
    }
}

fn closes(
    sc: &ServeCtx,
    listener: &str,
    reason: CloseReason,
) -> prometheus_client::metrics::counter::Counter {
    sc.shared
        .metrics
        .listener_closes
        .get_or_create(&ListenerReasonLabels {
            listener: listener.to_string(),
            reason: reason.label().to_string(),
        })
        .clone()
}

pub(crate) async fn serve_http<I>(
    io: I,
    lcfg: &ListenerConfig,
    ctx: ConnCtx,
    conn: &Arc<Conn>,
    sc: &ServeCtx,
    mut stop: watch::Receiver<bool>,
) where
    I: AsyncRead + AsyncWrite + Unpin + Send + 'static,
{
    let mut b = auto::Builder::new(TokioExecutor::new());
    // hyper's own header timer is off: it would also run while a keep-alive
    // connection waits for its next request, cutting idle connections at
    // header_read_timeout_ms. The connection watchdog (crate::conn) times the
    // head from its first byte and the idle wait separately.
    b.http1()
        .timer(TokioTimer::new())
        .header_read_timeout(None)
        .max_buf_size(lcfg.max_header_bytes.max(8192))
        .keep_alive(true);
    b.http2()
        .timer(TokioTimer::new())
        .max_concurrent_streams(lcfg.http2_max_concurrent_streams);
    let shared = sc.shared.clone();
    let conn = conn.clone();
    let svc = service_fn(move |req| {
        let guard = conn.request_started();
        let shared = shared.clone();
        async move {
            let resp = handle(shared, ctx, req).await?;
            if resp.status() == http::StatusCode::SWITCHING_PROTOCOLS {
                guard.upgraded();
            }
            Ok::<_, std::convert::Infallible>(resp.map(|b| {
                EndOnDrop {
                    inner: b,
                    guard: Some(guard),
                }
                .boxed_unsync()
            }))
        }
    });
    let conn = b.serve_connection_with_upgrades(TokioIo::new(io), svc);
    tokio::pin!(conn);
    tokio::select! {
        r = conn.as_mut() => {
            if let Err(e) = r {
                tracing::debug!(peer = %ctx.peer, error = %e, "client connection error");
            }
        }
        _ = crate::listener::stopped(&mut stop) => {
            conn.as_mut().graceful_shutdown();
            let _ = conn.await;
        }
    }
}

async fn serve_tcp(mut client: TcpStream, peer: SocketAddr, lcfg: &ListenerConfig, sc: &ServeCtx) {
    let rt = sc.shared.runtime();
    let Some(pool) = lcfg.pool.as_deref() else {
        return;
    };
    let Some(tiers) = rt.tiers_for(pool) else {
        return;
    };
    let key = crate::balance::hash64(peer.ip().to_string().as_bytes(), 0);
    let mut tried = Vec::new();
    let max_tries = 1 + tiers[0].cfg().endpoints.len().min(3);
    for _ in 0..max_tries {
        let Some(sel) = crate::pool::select(&tiers, key, &tried) else {
            return;
        };
        let ep = sel.endpoint.clone();
        tried.push(ep.clone());
        let pcfg = sel.pool.cfg();
        let t = Duration::from_millis(lcfg.tcp_connect_timeout_ms.min(pcfg.connect_timeout_ms));
        let peers = sel.pool.members();
        let has_hc = pcfg.health_check.is_some();
        match tokio::time::timeout(t, TcpStream::connect(ep.addr)).await {
            Ok(Ok(mut up)) => {
                let _ = up.set_nodelay(true);
                outlier::record(
                    &pcfg.outlier_detection,
                    has_hc,
                    &ep,
                    &peers,
                    TryOutcome::Success,
                );
                let _inflight = ep.start_request();
                ep.record_outcome("2xx");
                let _ = tokio::io::copy_bidirectional(&mut client, &mut up).await;
                return;
            }
            _ => {
                ep.record_outcome("connect_error");
                outlier::record(
                    &pcfg.outlier_detection,
                    has_hc,
                    &ep,
                    &peers,
                    TryOutcome::ConnectFailure,
                );
                let _ = now_ms();
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The accept queue holds `listen_backlog` connections, not std's 128: a
    /// burst of connects nobody has accepted yet all complete their
    /// handshake into it (with 128, the rest would wait for SYN-ACK
    /// retransmits, one second and more).
    #[test]
    fn the_accept_queue_holds_the_configured_backlog() {
        const BURST: usize = 300;
        let l = bind_with_backlog(SocketAddr::from(([127, 0, 0, 1], 0)), 1_024).unwrap();
        let addr = l.local_addr().unwrap();
        // Bounded: with a short queue, connects stall on SYN retransmits.
        let clients: Vec<std::net::TcpStream> = (0..BURST)
            .map(|i| {
                std::net::TcpStream::connect_timeout(&addr, Duration::from_secs(2))
                    .unwrap_or_else(|e| panic!("connect {i} of {BURST}: {e}"))
            })
            .collect();
        // Blocking accepts on a thread of their own; each is counted as it
        // comes, and the test waits for all of them up to a deadline.
        l.set_nonblocking(false).unwrap();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            while let Ok((s, _)) = l.accept() {
                if tx.send(s).is_err() {
                    break;
                }
            }
        });
        let deadline = std::time::Instant::now() + Duration::from_millis(500);
        let mut accepted = Vec::new();
        while accepted.len() < BURST {
            let left = deadline.saturating_duration_since(std::time::Instant::now());
            match rx.recv_timeout(left) {
                Ok(s) => accepted.push(s),
                Err(_) => break,
            }
        }
        assert_eq!(
            accepted.len(),
            BURST,
            "connections queued for accept within 500 ms"
        );
        drop(clients);
    }
}

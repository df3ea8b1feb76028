//! Connections: [`TlsOrPlain`] (one type for TCP and TLS over TCP, both
//! sides), [`incoming`] (a listener's accepted connections, handshaken) and
//! [`Connector`] (tonic's client side).

use std::io;
use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::Stream;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};

use crate::{ClientTls, ServerTls};

/// An accepted or dialled connection: plain TCP, TLS over TCP, or an
/// in-memory pipe inside the process ([`local_pair`]).
pub enum TlsOrPlain {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::TlsStream<TcpStream>>),
    /// The server end of a member-internal connection: no socket, so no
    /// other process can open one ([`ConnInfo::member_internal`]).
    Local(tokio::io::DuplexStream),
}

/// Bytes buffered in each direction of a [`local_pair`] pipe.
pub const LOCAL_PIPE_BUFFER_BYTES: usize = 256 * 1024;

/// A member-internal connection: an in-memory pipe whose server end is a
/// [`TlsOrPlain::Local`] (its [`ConnInfo::member_internal`] is set) and
/// whose client end a tonic connector hands to its channel. Only code in
/// this process can create one, which is what makes it an identity.
pub fn local_pair() -> (tokio::io::DuplexStream, TlsOrPlain) {
    let (client, server) = tokio::io::duplex(LOCAL_PIPE_BUFFER_BYTES);
    (client, TlsOrPlain::Local(server))
}

/// What a server may want to know about a connection (tonic's
/// `ConnectInfo`, in request extensions).
#[derive(Debug, Clone, Default)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Whether the connection is TLS.
    pub tls: bool,
    /// Subject CN of the client's verified certificate (with client
    /// certificate authentication), e.g. for etcd's CN-as-user auth.
    pub peer_cn: Option<String>,
    /// DNS subject alternative names of that certificate (for binding a
    /// peer's member name to its certificate, `--peer-cert-identity`).
    pub peer_dns_names: Vec<String>,
    /// Negotiated ALPN protocol.
    pub alpn: Option<Vec<u8>>,
    /// An in-process connection from the member's own services
    /// ([`local_pair`]); never true for a network connection.
    pub member_internal: bool,
}

impl ConnInfo {
    /// Whether the peer's certificate names `name`: as its subject CN or
    /// one of its DNS subject alternative names (exact, case-insensitive as
    /// DNS names are; no wildcards — a member name is one name). Only
    /// meaningful when the listener verified the certificate
    /// (client-certificate authentication): otherwise there is none.
    pub fn certificate_names(&self, name: &str) -> bool {
        !name.is_empty()
            && self
                .peer_cn
                .iter()
                .chain(self.peer_dns_names.iter())
                .any(|n| n.eq_ignore_ascii_case(name))
    }
}

impl TlsOrPlain {
    /// The TCP connection underneath (none for an in-process pipe).
    pub fn tcp(&self) -> Option<&TcpStream> {
        match self {
            TlsOrPlain::Plain(s) => Some(s),
            TlsOrPlain::Tls(t) => Some(t.get_ref().0),
            TlsOrPlain::Local(_) => None,
        }
    }

    pub fn info(&self) -> ConnInfo {
        let remote_addr = self.tcp().and_then(|t| t.peer_addr().ok());
        match self {
            TlsOrPlain::Local(_) => ConnInfo {
                member_internal: true,
                ..Default::default()
            },
            TlsOrPlain::Plain(_) => ConnInfo {
                remote_addr,
                ..Default::default()
            },
            TlsOrPlain::Tls(t) => {
                let conn = t.get_ref().1;
                let cert = conn
                    .peer_certificates()
                    .and_then(|c| c.first())
                    .and_then(|c| crate::certinfo::parse(c).ok());
                let (peer_cn, peer_dns_names) = match cert {
                    Some(i) => (i.subject_cn, i.dns_names),
                    None => (None, Vec::new()),
                };
                ConnInfo {
                    remote_addr,
                    tls: true,
                    peer_cn,
                    peer_dns_names,
                    alpn: conn.alpn_protocol().map(|p| p.to_vec()),
                    member_internal: false,
                }
            }
        }
    }
}

impl AsyncRead for TlsOrPlain {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsOrPlain::Plain(s) => Pin::new(s).poll_read(cx, buf),
            TlsOrPlain::Tls(s) => Pin::new(&mut **s).poll_read(cx, buf),
            TlsOrPlain::Local(s) => Pin::new(s).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for TlsOrPlain {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsOrPlain::Plain(s) => Pin::new(s).poll_write(cx, buf),
            TlsOrPlain::Tls(s) => Pin::new(&mut **s).poll_write(cx, buf),
            TlsOrPlain::Local(s) => Pin::new(s).poll_write(cx, buf),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        match self.get_mut() {
            TlsOrPlain::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            TlsOrPlain::Tls(s) => Pin::new(&mut **s).poll_write_vectored(cx, bufs),
            TlsOrPlain::Local(s) => Pin::new(s).poll_write_vectored(cx, bufs),
        }
    }
    fn is_write_vectored(&self) -> bool {
        match self {
            TlsOrPlain::Plain(s) => s.is_write_vectored(),
            TlsOrPlain::Tls(s) => s.is_write_vectored(),
            TlsOrPlain::Local(s) => s.is_write_vectored(),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsOrPlain::Plain(s) => Pin::new(s).poll_flush(cx),
            TlsOrPlain::Tls(s) => Pin::new(&mut **s).poll_flush(cx),
            TlsOrPlain::Local(s) => Pin::new(s).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        match self.get_mut() {
            TlsOrPlain::Plain(s) => Pin::new(s).poll_shutdown(cx),
            TlsOrPlain::Tls(s) => Pin::new(&mut **s).poll_shutdown(cx),
            TlsOrPlain::Local(s) => Pin::new(s).poll_shutdown(cx),
        }
    }
}

impl tonic::transport::server::Connected for TlsOrPlain {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        self.info()
    }
}

/// Pause after an accept error not tied to one connection (EMFILE ...).
const ACCEPT_ERROR_BACKOFF_MS: u64 = 100;
/// Handshaken connections waiting for the server to take them.
const ACCEPTED_QUEUE_CONNECTIONS: usize = 64;

/// Accepted connections of `listener` (TCP_NODELAY set), TLS-handshaken
/// when `tls` is given. Handshakes run concurrently, each bounded by
/// `tls.handshake_timeout_ms`; a failed one is counted
/// (`phalanx_tls_handshake_failures_total{listener}`), logged (at most once
/// per [`crate::HANDSHAKE_FAILURE_LOG_INTERVAL_MS`]) and never yielded, so
/// the stream never ends on a client's error. It ends when dropped.
pub fn incoming(
    listener: TcpListener,
    tls: Option<ServerTls>,
) -> impl Stream<Item = io::Result<TlsOrPlain>> + Send + 'static {
    let (tx, rx) = tokio::sync::mpsc::channel::<TlsOrPlain>(ACCEPTED_QUEUE_CONNECTIONS);
    tokio::spawn(async move {
        let acceptor = tls
            .as_ref()
            .map(|t| tokio_rustls::TlsAcceptor::from(t.config.clone()));
        let last_log: Arc<Mutex<Option<Instant>>> = Arc::new(Mutex::new(None));
        loop {
            let accepted = tokio::select! {
                _ = tx.closed() => return,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    if !matches!(
                        e.kind(),
                        io::ErrorKind::ConnectionAborted
                            | io::ErrorKind::ConnectionReset
                            | io::ErrorKind::Interrupted
                            | io::ErrorKind::WouldBlock
                    ) {
                        tracing::warn!(error = %e, "accept failed; backing off");
                        tokio::time::sleep(Duration::from_millis(ACCEPT_ERROR_BACKOFF_MS)).await;
                    }
                    continue;
                }
            };
            let _ = stream.set_nodelay(true);
            let (Some(acceptor), Some(tls)) = (&acceptor, &tls) else {
                if tx.send(TlsOrPlain::Plain(stream)).await.is_err() {
                    return;
                }
                continue;
            };
            let (acceptor, tx, last_log) = (acceptor.clone(), tx.clone(), last_log.clone());
            let listener_name = tls.listener.clone();
            let timeout = Duration::from_millis(tls.handshake_timeout_ms);
            tokio::spawn(async move {
                let why = match tokio::time::timeout(timeout, acceptor.accept(stream)).await {
                    Ok(Ok(s)) => {
                        let _ = tx
                            .send(TlsOrPlain::Tls(Box::new(tokio_rustls::TlsStream::Server(
                                s,
                            ))))
                            .await;
                        return;
                    }
                    Ok(Err(e)) => explain_server_error(&e),
                    Err(_) => format!(
                        "no TLS handshake within {} ms (handshake_timeout_ms)",
                        timeout.as_millis()
                    ),
                };
                let n = crate::count_handshake_failure(&listener_name);
                let mut last = last_log.lock().expect("log clock poisoned");
                let due = last.is_none_or(|t| {
                    t.elapsed() >= Duration::from_millis(crate::HANDSHAKE_FAILURE_LOG_INTERVAL_MS)
                });
                if due {
                    *last = Some(Instant::now());
                    tracing::warn!(
                        "{listener_name} listener: refused a connection from {peer}: {why} ({n} failed handshakes so far)"
                    );
                }
            });
        }
    });
    futures::stream::unfold(
        rx,
        |mut rx| async move { rx.recv().await.map(|c| (Ok(c), rx)) },
    )
}

fn explain_server_error(e: &io::Error) -> String {
    let s = e.to_string();
    if s.contains("InvalidContentType") || s.contains("corrupt message") || s.contains("HTTP") {
        format!("{s}: not TLS (plain HTTP on a TLS listener? use https:// and the CA)")
    } else if s.contains("certificate") || s.contains("Certificate") {
        format!("{s}: the client's certificate is missing or not signed by the trusted CA")
    } else {
        s
    }
}

/// A tonic `Channel` connector: TCP, and TLS when built with a
/// [`ClientTls`]. Its URI's scheme is ignored (give tonic `http://`).
#[derive(Clone)]
pub struct Connector {
    tls: Option<ClientTls>,
    /// For messages: the URL as configured.
    url: String,
    last_log: Arc<Mutex<Option<Instant>>>,
}

impl Connector {
    pub fn new(url: &str, tls: Option<ClientTls>) -> Connector {
        Connector {
            tls,
            url: url.to_string(),
            last_log: Arc::new(Mutex::new(None)),
        }
    }

    async fn connect(self, uri: http::Uri) -> io::Result<hyper_util::rt::TokioIo<TlsOrPlain>> {
        let host = uri
            .host()
            .ok_or_else(|| io::Error::other(format!("{}: no host", self.url)))?
            .trim_start_matches('[')
            .trim_end_matches(']')
            .to_string();
        let port = uri.port_u16().unwrap_or(80);
        let tcp = TcpStream::connect((host.as_str(), port)).await?;
        let _ = tcp.set_nodelay(true);
        let Some(tls) = &self.tls else {
            return Ok(hyper_util::rt::TokioIo::new(TlsOrPlain::Plain(tcp)));
        };
        let name = rustls::pki_types::ServerName::try_from(host.clone())
            .map_err(|e| io::Error::other(format!("{}: {e}", self.url)))?;
        let connector = tokio_rustls::TlsConnector::from(tls.config.clone());
        match connector.connect(name, tcp).await {
            Ok(s) => Ok(hyper_util::rt::TokioIo::new(TlsOrPlain::Tls(Box::new(
                tokio_rustls::TlsStream::Client(s),
            )))),
            Err(e) => {
                let msg = explain_client_error(&self.url, tls, &e);
                let mut last = self.last_log.lock().expect("log clock poisoned");
                if last.is_none_or(|t| {
                    t.elapsed() >= Duration::from_millis(crate::HANDSHAKE_FAILURE_LOG_INTERVAL_MS)
                }) {
                    *last = Some(Instant::now());
                    tracing::warn!("{msg}");
                }
                Err(io::Error::new(e.kind(), msg))
            }
        }
    }
}

/// A client-side handshake failure, explained.
pub fn explain_client_error(url: &str, tls: &ClientTls, e: &io::Error) -> String {
    let s = e.to_string();
    let hint = if s.contains("UnknownIssuer") || s.contains("BadSignature") {
        format!(
            "the peer's certificate is not signed by a CA this member trusts ({})",
            tls.describe_ca
        )
    } else if s.contains("NotValidForName") {
        "the peer's certificate does not name the host of its URL (add it as a subject alternative name)".into()
    } else if s.contains("Expired") {
        "the peer's certificate has expired".into()
    } else if s.contains("alert") {
        format!(
            "the peer refused this member's certificate ({}): check it is signed by the CA the peer trusts and carries an allowed CN",
            tls.describe_cert
        )
    } else {
        "is the peer serving TLS on this URL?".into()
    };
    format!("TLS handshake with {url} failed: {s}: {hint}")
}

impl tonic::codegen::Service<http::Uri> for Connector {
    type Response = hyper_util::rt::TokioIo<TlsOrPlain>;
    type Error = io::Error;
    type Future = Pin<Box<dyn std::future::Future<Output = io::Result<Self::Response>> + Send>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, uri: http::Uri) -> Self::Future {
        Box::pin(self.clone().connect(uri))
    }
}

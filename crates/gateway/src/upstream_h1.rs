//! The upstream HTTP/1.1 fast path: a purpose-built client for plain
//! (cleartext) `http1` pools that runs inside the client connection's task.
//!
//! hyper's pooled client hands every request over a channel to a task per
//! upstream connection and streams the response body back over another
//! channel: two cross-task wake-ups per request plus the body's want/ready
//! signalling. Here the try's own future writes the request and parses the
//! response head, and the response body ([`FastBody`]) reads the upstream
//! socket directly when the client side polls it; no task, no channel.
//!
//! One try ([`send`]):
//!
//! ```text
//!  Checkout ─idle connection of the endpoint (LIFO; expired or readable ones closed)─▶ Write
//!     └─none─▶ Connect (connect_timeout_ms) ─fail─▶ error: connect failure (503 / retried)
//!  Write head + body (one writev) ─▶ ReadHead (httparse on the connection's buffer)
//!  ReadHead ─complete─▶ Respond: head → Response, body = FastBody over the connection
//!  Write/ReadHead fail with nothing received, on a REUSED connection ─▶ Connect (once):
//!     the endpoint closed an idle keep-alive connection as it was taken; the
//!     request (whole in memory) is sent again on a new connection
//!  FastBody: Length(n) / Chunked (h1::ChunkedDecoder) / UntilClose ─end─▶ Checkin
//!     (only when reusable: HTTP/1.1, no `Connection: close`, nothing after the body)
//! ```
//!
//! Which tries take it ([`eligible`]): pool `protocol = "http1"` without
//! `tls`, not an Upgrade request, and a request body that is empty or of
//! known size ≤ [`MAX_INLINE_BODY_BYTES`] (sent whole with the head, so it
//! can be replayed on a fresh connection). Other tries (h2c, TLS, Upgrade,
//! larger or streamed bodies) use hyper's client, and health checks always
//! do. Every layer (retries, breakers, outlier detection, metrics, timeouts)
//! sees both paths the same way: [`FastError`] maps onto the same outcomes
//! and `upstream_error` reasons as hyper's errors.
//!
//! Pooled connections: per endpoint, at most `max_idle_connections_per_endpoint`
//! idle ones, each closed when taken after more than
//! `idle_connection_timeout_ms` idle (checked lazily at checkout: an idle
//! connection costs one socket and its read buffer), all closed when the
//! endpoint is removed.

use std::collections::VecDeque;
use std::io;
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::{Duration, Instant};

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, Response};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, Incoming, SizeHint};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use crate::config::{PoolConfig, UpstreamProtocol};
use crate::endpoint::Endpoint;
use crate::h1::{self, Framing, HeadError, RequestFraming};
use crate::upstream::{BoxError, ProxyBody};

/// Largest request body sent on the fast path (it is held in memory, sent
/// with the head in one write and replayable on a fresh connection); larger
/// or streamed bodies go through hyper's client.
pub(crate) const MAX_INLINE_BODY_BYTES: u64 = 64 * 1024;
/// Read size while waiting for a response head.
const HEAD_READ_BYTES: usize = 8 * 1024;
/// Largest single read of a response body (bounds the buffer per
/// connection; each read is handed on without a copy).
const BODY_READ_BYTES: usize = 64 * 1024;

/// A connection to an endpoint with its reused buffers.
pub(crate) struct UpConn {
    stream: TcpStream,
    /// Bytes read and not yet consumed (head, then body).
    rbuf: BytesMut,
    /// The request head being written.
    wbuf: Vec<u8>,
}

/// Idle keep-alive connections of one endpoint (most recent at the back).
#[derive(Default)]
pub(crate) struct IdleConns {
    conns: Mutex<VecDeque<(Box<UpConn>, Instant)>>,
}

impl IdleConns {
    /// Close every idle connection (the endpoint was removed).
    pub fn clear(&self) {
        self.conns.lock().unwrap().clear();
    }

    /// Idle connections held (tests and diagnostics).
    #[allow(dead_code)]
    pub fn len(&self) -> usize {
        self.conns.lock().unwrap().len()
    }

    fn checkout(&self, max_idle: Duration) -> Option<Box<UpConn>> {
        let mut q = self.conns.lock().unwrap();
        while q.front().is_some_and(|(_, t)| t.elapsed() >= max_idle) {
            q.pop_front();
        }
        while let Some((c, _)) = q.pop_back() {
            // A closed (EOF) or chatty idle connection is useless: a
            // non-blocking read must find nothing. (tokio only asks the
            // socket once the reactor has seen it readable.)
            let mut probe = [0u8; 1];
            if let Err(e) = c.stream.try_read(&mut probe) {
                if e.kind() == io::ErrorKind::WouldBlock {
                    return Some(c);
                }
            }
        }
        None
    }

    fn checkin(&self, c: Box<UpConn>, max: usize) {
        let mut q = self.conns.lock().unwrap();
        if q.len() < max {
            q.push_back((c, Instant::now()));
        }
    }
}

/// Why a fast-path try produced no response.
#[derive(Debug)]
pub(crate) enum FastError {
    /// TCP connect failed or timed out.
    Connect(io::Error),
    /// The connection failed after connect (reading, writing, or reading
    /// the request body from the client).
    Io(io::Error),
    /// The endpoint closed the connection before a complete response head.
    ClosedBeforeResponse,
    /// The response head was refused.
    Head(HeadError),
    /// A 101 answer to a request that asked for no upgrade.
    UnexpectedUpgrade,
}

impl FastError {
    /// The try never reached the endpoint (retried like hyper's connect errors).
    pub fn is_connect(&self) -> bool {
        matches!(self, FastError::Connect(_))
    }

    /// Access-log `upstream_error` reason (the same strings as for hyper's errors).
    pub fn reason(&self) -> &'static str {
        match self {
            FastError::Connect(_) => "connect failure",
            FastError::Io(e) if e.kind() == io::ErrorKind::ConnectionReset => "connection reset",
            FastError::Io(_) => "connection closed",
            FastError::ClosedBeforeResponse => "connection closed before response",
            FastError::Head(h) => h.reason(),
            FastError::UnexpectedUpgrade => "protocol error",
        }
    }
}

impl std::fmt::Display for FastError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            FastError::Connect(e) | FastError::Io(e) => write!(f, "{}: {e}", self.reason()),
            _ => f.write_str(self.reason()),
        }
    }
}

/// Whether a try takes the fast path (see the module documentation).
pub(crate) fn eligible(pcfg: &PoolConfig, req: &Request<ProxyBody>) -> bool {
    pool_eligible(pcfg)
        && request_eligible(req.method(), req.headers())
        && (req.body().is_end_stream()
            || req
                .body()
                .size_hint()
                .exact()
                .is_some_and(|n| n <= MAX_INLINE_BODY_BYTES))
}

/// The pool side of [`eligible`]: plain (no TLS) HTTP/1.1.
pub(crate) fn pool_eligible(pcfg: &PoolConfig) -> bool {
    pcfg.protocol == UpstreamProtocol::Http1 && pcfg.tls.is_none()
}

/// The request side of [`eligible`], apart from the body: neither an
/// Upgrade request (it keeps its `Upgrade` header upstream; the header is
/// stripped from every other request as hop-by-hop) nor CONNECT.
pub(crate) fn request_eligible(method: &http::Method, headers: &http::HeaderMap) -> bool {
    !headers.contains_key(http::header::UPGRADE) && method != http::Method::CONNECT
}

/// One fast-path request, borrowed from what every try of a client request
/// shares: nothing is copied per try (no header map clone, no URI built and
/// parsed again); the head is encoded straight from these parts.
pub(crate) struct FastRequest<'a> {
    pub method: &'a http::Method,
    /// Request target pieces, written one after the other (the pool's
    /// `upstream_path_prefix`, then the client's path and query).
    pub target: [&'a str; 2],
    /// Headers already prepared for upstream (hop-by-hop stripped).
    pub headers: &'a http::HeaderMap,
    /// Host sent in place of the headers' own (a fallback provider's
    /// `host_header`).
    pub host: Option<&'a str>,
    /// The whole body (≤ [`MAX_INLINE_BODY_BYTES`]; empty: none), sent
    /// with the head.
    pub body: Bytes,
}

/// The whole body of an [`eligible`] request (hedged tries own a built
/// [`Request`]).
pub(crate) async fn collect_body(body: ProxyBody) -> Result<Bytes, FastError> {
    if body.is_end_stream() {
        return Ok(Bytes::new());
    }
    // A known size ≤ MAX_INLINE_BODY_BYTES (eligible): usually one frame (a
    // buffered body), taken without a copy.
    Ok(body
        .collect()
        .await
        .map_err(|e| FastError::Io(io::Error::other(e)))?
        .to_bytes())
}

/// One try on the fast path (the caller checked [`eligible`]).
pub(crate) async fn send(
    ep: &Arc<Endpoint>,
    pcfg: &PoolConfig,
    req: FastRequest<'_>,
) -> Result<Response<FastBody>, FastError> {
    let data = req.body;
    let framing = if data.is_empty() {
        RequestFraming::None
    } else {
        RequestFraming::Length(data.len() as u64)
    };
    let head_request = req.method == http::Method::HEAD;
    let idle_timeout = Duration::from_millis(pcfg.idle_connection_timeout_ms);
    let idempotent = crate::layers::retry::is_idempotent(req.method);
    let mut force_fresh = false;
    loop {
        let pooled = if force_fresh {
            None
        } else {
            ep.idle.checkout(idle_timeout)
        };
        let (mut conn, reused) = match pooled {
            Some(c) => (c, true),
            None => (connect(ep, pcfg).await?, false),
        };
        h1::encode_request_head(
            &mut conn.wbuf,
            req.method,
            &req.target,
            req.headers,
            req.host,
            ep.authority.as_str(),
            framing,
        );
        // Whether the request may have reached the endpoint's application.
        let mut written = false;
        let r = match write_request(&mut conn, &data).await {
            Ok(()) => {
                written = true;
                read_head(&mut conn, head_request).await
            }
            Err(e) => Err(closed_or_io(e)),
        };
        let nothing_received = conn.rbuf.is_empty();
        match r {
            Ok(head) => {
                if head.status == http::StatusCode::SWITCHING_PROTOCOLS {
                    return Err(FastError::UnexpectedUpgrade);
                }
                conn.rbuf.advance(head.len);
                let mut resp = Response::new(FastBody::new(
                    conn,
                    head.framing,
                    head.keep_alive,
                    ep.clone(),
                    pcfg.max_idle_connections_per_endpoint,
                ));
                *resp.status_mut() = head.status;
                *resp.version_mut() = head.version;
                *resp.headers_mut() = head.headers;
                return Ok(resp);
            }
            // The endpoint closed a pooled connection as it was taken:
            // nothing was answered, so the request goes again, once, on a
            // new connection (hyper's pool does the same for this race).
            // Only when it cannot have been processed: the write failed, or
            // the method is idempotent.
            Err(FastError::Io(_) | FastError::ClosedBeforeResponse)
                if reused && nothing_received && (!written || idempotent) =>
            {
                force_fresh = true;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn connect(ep: &Endpoint, pcfg: &PoolConfig) -> Result<Box<UpConn>, FastError> {
    let t = Duration::from_millis(pcfg.connect_timeout_ms);
    let stream = match tokio::time::timeout(t, TcpStream::connect(ep.addr)).await {
        Ok(Ok(s)) => s,
        Ok(Err(e)) => return Err(FastError::Connect(e)),
        Err(_) => {
            return Err(FastError::Connect(io::Error::new(
                io::ErrorKind::TimedOut,
                "connect timeout",
            )))
        }
    };
    let _ = stream.set_nodelay(true);
    Ok(Box::new(UpConn {
        stream,
        rbuf: BytesMut::new(),
        wbuf: Vec::with_capacity(512),
    }))
}

/// Head and body with vectored writes (one `writev` in the common case).
async fn write_request(conn: &mut UpConn, body: &[u8]) -> io::Result<()> {
    let (mut h, mut b) = (0usize, 0usize);
    while h < conn.wbuf.len() || b < body.len() {
        let bufs = [
            io::IoSlice::new(&conn.wbuf[h..]),
            io::IoSlice::new(&body[b..]),
        ];
        let n = conn.stream.write_vectored(&bufs).await?;
        if n == 0 {
            return Err(io::ErrorKind::WriteZero.into());
        }
        let from_head = n.min(conn.wbuf.len() - h);
        h += from_head;
        b += n - from_head;
    }
    Ok(())
}

/// A reset or broken pipe before the response head means the endpoint
/// closed the connection before answering (as hyper reports it).
fn closed_or_io(e: io::Error) -> FastError {
    match e.kind() {
        io::ErrorKind::ConnectionReset
        | io::ErrorKind::BrokenPipe
        | io::ErrorKind::UnexpectedEof => FastError::ClosedBeforeResponse,
        _ => FastError::Io(e),
    }
}

async fn read_head(conn: &mut UpConn, head_request: bool) -> Result<h1::ResponseHead, FastError> {
    loop {
        if !conn.rbuf.is_empty() {
            if let Some(head) =
                h1::parse_response_head(&conn.rbuf, head_request).map_err(FastError::Head)?
            {
                return Ok(head);
            }
        }
        conn.rbuf.reserve(HEAD_READ_BYTES);
        let n = conn
            .stream
            .read_buf(&mut conn.rbuf)
            .await
            .map_err(closed_or_io)?;
        if n == 0 {
            return Err(FastError::ClosedBeforeResponse);
        }
    }
}

enum BodyState {
    Length(u64),
    Chunked(h1::ChunkedDecoder),
    UntilClose,
    Done,
}

/// A response body read straight from the upstream connection; the
/// connection goes back to the endpoint's idle pool when the body ends
/// (if reusable), and is closed if the body is dropped before its end.
pub(crate) struct FastBody {
    conn: Option<Box<UpConn>>,
    state: BodyState,
    keep_alive: bool,
    ep: Arc<Endpoint>,
    max_idle: usize,
}

impl FastBody {
    fn new(
        conn: Box<UpConn>,
        framing: Framing,
        keep_alive: bool,
        ep: Arc<Endpoint>,
        max_idle: usize,
    ) -> FastBody {
        let state = match framing {
            Framing::Empty => BodyState::Done,
            Framing::Length(n) => BodyState::Length(n),
            Framing::Chunked => BodyState::Chunked(h1::ChunkedDecoder::default()),
            Framing::UntilClose => BodyState::UntilClose,
        };
        let mut b = FastBody {
            conn: Some(conn),
            state,
            keep_alive,
            ep,
            max_idle,
        };
        if matches!(b.state, BodyState::Done) {
            b.finish();
        }
        b
    }

    /// The body ended: hand the connection back if it can carry another
    /// request (bytes after the body would be a protocol error).
    fn finish(&mut self) {
        self.state = BodyState::Done;
        if let Some(c) = self.conn.take() {
            if self.keep_alive && c.rbuf.is_empty() && !self.ep.is_removed() {
                self.ep.idle.checkin(c, self.max_idle);
            }
        }
    }

    fn fail(&mut self, msg: &'static str) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        self.conn = None;
        self.state = BodyState::Done;
        Poll::Ready(Some(Err(msg.into())))
    }
}

impl Body for FastBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = self.get_mut();
        loop {
            let Some(conn) = this.conn.as_mut() else {
                return Poll::Ready(None);
            };
            let want = match &mut this.state {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !conn.rbuf.is_empty() {
                        let n = (*left).min(conn.rbuf.len() as u64);
                        let data = conn.rbuf.split_to(n as usize).freeze();
                        *left -= n;
                        if *left == 0 {
                            this.finish();
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    (*left).min(BODY_READ_BYTES as u64) as usize
                }
                BodyState::Chunked(d) => match d.decode(&mut conn.rbuf) {
                    Ok(h1::Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(h1::Decoded::Done) => {
                        this.finish();
                        return Poll::Ready(None);
                    }
                    Ok(h1::Decoded::NeedMore) => BODY_READ_BYTES,
                    Err(e) => return this.fail(e.0),
                },
                BodyState::UntilClose => {
                    if !conn.rbuf.is_empty() {
                        let data = conn.rbuf.split().freeze();
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                    BODY_READ_BYTES
                }
            };
            if let Err(e) = ready!(conn.stream.poll_read_ready(cx)) {
                this.conn = None;
                this.state = BodyState::Done;
                return Poll::Ready(Some(Err(e.into())));
            }
            conn.rbuf.reserve(want);
            match crate::server_h1::read_buf_draining(&conn.stream, &mut conn.rbuf) {
                Ok(0) => {
                    if matches!(this.state, BodyState::UntilClose) {
                        this.conn = None;
                        this.state = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    return this.fail("upstream closed the connection before the end of the body");
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => {
                    this.conn = None;
                    this.state = BodyState::Done;
                    return Poll::Ready(Some(Err(e.into())));
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.state, BodyState::Done)
    }

    fn size_hint(&self) -> SizeHint {
        match &self.state {
            BodyState::Done => SizeHint::with_exact(0),
            BodyState::Length(left) => SizeHint::with_exact(*left),
            _ => SizeHint::default(),
        }
    }
}

/// The body of an upstream response, from either client.
pub(crate) enum UpstreamBody {
    /// hyper's client.
    Hyper(Incoming),
    /// The fast path.
    Fast(FastBody),
}

impl Body for UpstreamBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        match self.get_mut() {
            UpstreamBody::Hyper(b) => Pin::new(b).poll_frame(cx).map_err(Into::into),
            UpstreamBody::Fast(b) => Pin::new(b).poll_frame(cx),
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            UpstreamBody::Hyper(b) => b.is_end_stream(),
            UpstreamBody::Fast(b) => b.is_end_stream(),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            UpstreamBody::Hyper(b) => b.size_hint(),
            UpstreamBody::Fast(b) => b.size_hint(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::full;

    fn req(method: http::Method, headers: &[(&str, &str)], body: ProxyBody) -> Request<ProxyBody> {
        let mut r = Request::new(body);
        *r.method_mut() = method;
        for (k, v) in headers {
            r.headers_mut().insert(
                http::header::HeaderName::from_bytes(k.as_bytes()).unwrap(),
                http::HeaderValue::from_str(v).unwrap(),
            );
        }
        r
    }

    /// The documented choice between the fast path and hyper's client.
    #[test]
    fn which_tries_take_the_fast_path() {
        let plain = PoolConfig::default();
        let get = || req(http::Method::GET, &[], full(""));
        assert!(eligible(&plain, &get()));
        let small = req(http::Method::POST, &[], full(vec![b'a'; 1000]));
        assert!(eligible(&plain, &small));
        let limit = req(
            http::Method::POST,
            &[],
            full(vec![b'a'; MAX_INLINE_BODY_BYTES as usize]),
        );
        assert!(eligible(&plain, &limit));
        let big = req(
            http::Method::POST,
            &[],
            full(vec![b'a'; MAX_INLINE_BODY_BYTES as usize + 1]),
        );
        assert!(!eligible(&plain, &big), "large bodies stream through hyper");
        let streamed = req(http::Method::POST, &[], Unsized(true).boxed_unsync());
        assert!(
            !eligible(&plain, &streamed),
            "bodies of unknown size: hyper"
        );
        let ws = req(
            http::Method::GET,
            &[("connection", "upgrade"), ("upgrade", "websocket")],
            full(""),
        );
        assert!(!eligible(&plain, &ws), "upgrades: hyper");
        assert!(!eligible(
            &plain,
            &req(http::Method::CONNECT, &[], full(""))
        ));
        let h2c = PoolConfig {
            protocol: UpstreamProtocol::H2c,
            ..PoolConfig::default()
        };
        assert!(!eligible(&h2c, &get()), "h2c pools: hyper");
        let tls = PoolConfig {
            tls: Some(Default::default()),
            ..PoolConfig::default()
        };
        assert!(!eligible(&tls, &get()), "TLS pools: hyper");
    }

    /// A body of unknown length (one frame).
    struct Unsized(bool);

    impl Body for Unsized {
        type Data = Bytes;
        type Error = BoxError;
        fn poll_frame(
            self: Pin<&mut Self>,
            _: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
            let more = std::mem::replace(&mut self.get_mut().0, false);
            Poll::Ready(more.then(|| Ok(Frame::data(Bytes::from_static(b"x")))))
        }
    }
}

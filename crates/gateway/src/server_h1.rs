//! The client-side HTTP/1.1 fast path: the connection loop of plaintext
//! `http` listeners, in place of hyper's server.
//!
//! Each connection is one task running this loop; the request head is
//! parsed with `httparse` from the connection's read buffer
//! ([`h1::parse_request_head`], which also refuses every ambiguous framing:
//! see its documentation for the request smuggling defences), the request
//! goes through the same proxy layers as on hyper's path
//! ([`crate::proxy::handle`]), and the response head and body are written
//! with vectored writes (head and first body bytes in one `writev`).
//!
//! ```text
//!  ReadHead ─bytes─▶ parse ─incomplete─▶ ReadHead
//!     │                │ h2c preface (first request), Upgrade, CONNECT ─▶ HandOff: hyper's
//!     │                │     server serves the rest of the connection (bytes read so far replayed)
//!     │                │ refused ─▶ 400 / 431 / 501 + Connection: close ─▶ Close
//!     │                ▼
//!     │            Dispatch (request body read on demand from the socket; Expect:
//!     │                │  100-continue answered when the proxy first reads it)
//!     │                ▼
//!     │            WriteResponse (Content-Length, or chunked for an unknown length;
//!     │                │  close-delimited for HTTP/1.0)
//!     │                ├─ keep-alive, request body fully read, not draining ─▶ ReadHead
//!     │                └─ otherwise ─▶ Close (write side shut, input drained briefly)
//!     └─ drain (SIGTERM, listener removed) while waiting ─▶ Close
//! ```
//!
//! Connection timers (first byte, slowloris head timer, keep-alive idle)
//! and fair admission are the listener's connection state machine
//! (`crate::conn`): this loop reports every read to it and brackets each
//! request with `request_started`, as hyper's path does.

use std::io::{self, IoSlice};
use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use http::{Request, StatusCode, Version};
use http_body_util::BodyExt;
use hyper::body::{Body, Frame, SizeHint};
use tokio::io::{AsyncRead, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::watch;

use crate::config::ListenerConfig;
use crate::conn::{Conn, TrackedIo};
use crate::h1::{self, RequestBodyFraming, RequestError, ResponseFraming};
use crate::listener::ServeCtx;
use crate::proxy::{handle, ConnCtx};
use crate::upstream::{BoxError, ProxyBody};

/// Read size while waiting for a request head (the buffer grows up to
/// `max_header_bytes`).
const HEAD_READ_BYTES: usize = 4 * 1024;
/// Largest single read of a request body.
const BODY_READ_BYTES: usize = 64 * 1024;
/// Closing a connection after a refusal or with request bytes unread: how
/// long and how much of the client's remaining input is read and dropped
/// after the write side is shut, so the response is not destroyed by a
/// reset (a close with unread input sends RST). An uploading client on a
/// fast link sends 256 KiB in about a millisecond, too short for a busy
/// client to read the response first; 4 MiB leaves it tens of
/// milliseconds, for a few milliseconds of this member's CPU at most.
const LINGER_TIMEOUT_MS: u64 = 1000;
const LINGER_MAX_BYTES: usize = 4 * 1024 * 1024;

const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Serve one plaintext HTTP connection.
pub(crate) async fn serve(
    stream: TcpStream,
    lcfg: &ListenerConfig,
    ctx: ConnCtx,
    conn: &Arc<Conn>,
    sc: &ServeCtx,
    mut stop: watch::Receiver<bool>,
) {
    let stream = Arc::new(stream);
    let max_head = lcfg.max_header_bytes.max(8192);
    let mut rbuf = BytesMut::new();
    let mut wbuf: Vec<u8> = Vec::new();
    let mut first = true;
    loop {
        // ReadHead. A head can only complete with a line feed: bytes without
        // one are not parsed again (a client dribbling a large head byte by
        // byte costs one scan per line, not one per read).
        let mut parse_needed = true;
        let head = loop {
            if rbuf.len() > max_head {
                return refuse(stream, RequestError::TooLarge).await;
            }
            if !rbuf.is_empty() && parse_needed {
                if first && H2_PREFACE.starts_with(&rbuf[..rbuf.len().min(H2_PREFACE.len())]) {
                    if rbuf.len() >= H2_PREFACE.len() {
                        return hand_off(stream, rbuf, lcfg, ctx, conn, sc, stop).await;
                    }
                } else {
                    match h1::parse_request_head(&rbuf, max_head) {
                        Ok(Some(h)) => break h,
                        Ok(None) => {}
                        Err(e) => return refuse(stream, e).await,
                    }
                }
            }
            tokio::select! {
                r = stream.readable() => if r.is_err() { return },
                _ = crate::listener::stopped(&mut stop) => return,
            }
            rbuf.reserve(HEAD_READ_BYTES);
            let before = rbuf.len();
            match read_buf_draining(&stream, &mut rbuf) {
                Ok(0) => return,
                Ok(_) => {
                    let new = &rbuf[before..];
                    conn.on_read(new);
                    parse_needed = first || new.contains(&b'\n');
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => parse_needed = false,
                Err(_) => return,
            }
        };
        first = false;
        if head.upgrade_or_connect {
            return hand_off(stream, rbuf, lcfg, ctx, conn, sc, stop).await;
        }

        // Dispatch. (Not after a `yield_now` that lets every other ready
        // connection read first, as HAProxy's loop does: measured, that gave
        // c32 +5 % requests/s but its p99 went from 1.07x to 1.28x
        // HAProxy's, and tail latency is what callers of an HA gateway feel.)
        rbuf.advance(head.len);
        let guard = conn.request_started();
        let head_request = head.method == http::Method::HEAD;
        let (body, shared) = match head.framing {
            RequestBodyFraming::Empty => (ClientBody::Empty, None),
            framing => {
                let st = Arc::new(Mutex::new(ReadState {
                    buf: std::mem::take(&mut rbuf),
                    body: match framing {
                        RequestBodyFraming::Length(n) => BodyState::Length(n),
                        _ => BodyState::Chunked(h1::ChunkedDecoder::default()),
                    },
                    continue_sent: !head.expect_continue,
                }));
                let body = ClientBody::Socket {
                    stream: stream.clone(),
                    st: st.clone(),
                    exact: match framing {
                        RequestBodyFraming::Length(n) => Some(n),
                        _ => None,
                    },
                };
                (body, Some(st))
            }
        };
        let mut req = Request::new(body);
        *req.method_mut() = head.method;
        *req.uri_mut() = head.uri;
        *req.version_mut() = head.version;
        *req.headers_mut() = head.headers;
        let Ok(resp) = handle(sc.shared.clone(), ctx, req).await;

        // WriteResponse. A request body not read to its end (a refusal
        // before the body, e.g. 413) leaves unread bytes: close after.
        let body_done = shared
            .as_ref()
            .is_none_or(|s| matches!(s.lock().unwrap().body, BodyState::Done));
        let mut close = !head.keep_alive || !body_done || *stop.borrow();
        let written = write_response(
            &stream,
            &mut wbuf,
            resp,
            head_request,
            head.version == Version::HTTP_10,
            &mut close,
        )
        .await;
        drop(guard);
        if !written {
            return;
        }
        if close {
            return linger_close(stream).await;
        }
        if let Some(st) = shared {
            // Bytes after the body (a pipelined request) stay.
            let taken = {
                let mut st = st.lock().unwrap();
                matches!(st.body, BodyState::Done).then(|| std::mem::take(&mut st.buf))
            };
            match taken {
                Some(b) => rbuf = b,
                None => return linger_close(stream).await,
            }
        }
    }
}

/// Answer a refused head and close.
async fn refuse(stream: Arc<TcpStream>, e: RequestError) {
    let (status, msg) = match e {
        RequestError::TooLarge => (
            StatusCode::REQUEST_HEADER_FIELDS_TOO_LARGE,
            "request header fields too large",
        ),
        RequestError::Bad(why) => (StatusCode::BAD_REQUEST, why),
        RequestError::NotImplemented(why) => (StatusCode::NOT_IMPLEMENTED, why),
    };
    tracing::debug!(
        status = status.as_u16(),
        reason = msg,
        "refused request head"
    );
    let body = format!("{msg}\n");
    let head = format!(
        "HTTP/1.1 {} {}\r\ncontent-type: text/plain; charset=utf-8\r\nx-phalanx-error: 1\r\ncontent-length: {}\r\nconnection: close\r\n\r\n",
        status.as_str(),
        status.canonical_reason().unwrap_or(""),
        body.len()
    );
    if write_all(
        &stream,
        &mut [IoSlice::new(head.as_bytes()), IoSlice::new(body.as_bytes())],
    )
    .await
    .is_ok()
    {
        linger_close(stream).await;
    }
}

/// Shut the write side, then read and drop the client's remaining input
/// for a bounded time and amount, so the response reaches the client.
///
/// A request body may still hold the socket (an upstream request still
/// sending it, or not yet dropped): the close lingers all the same. Closing
/// with unread input would answer the client's next bytes with a reset,
/// which can destroy the response before the client reads it (a 413 sent
/// while the client is still uploading).
async fn linger_close(stream: Arc<TcpStream>) {
    let _ = rustix::net::shutdown(&*stream, rustix::net::Shutdown::Write);
    let drain = async {
        let mut buf = vec![0u8; 16 * 1024];
        let mut total = 0;
        while total < LINGER_MAX_BYTES {
            if stream.readable().await.is_err() {
                break;
            }
            match stream.try_read(&mut buf) {
                Ok(0) => break,
                Ok(n) => total += n,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => continue,
                Err(_) => break,
            }
        }
    };
    let _ = tokio::time::timeout(Duration::from_millis(LINGER_TIMEOUT_MS), drain).await;
}

/// Hand the connection to hyper's server (h2c, Upgrade, CONNECT), replaying
/// the bytes read so far.
async fn hand_off(
    stream: Arc<TcpStream>,
    read: BytesMut,
    lcfg: &ListenerConfig,
    ctx: ConnCtx,
    conn: &Arc<Conn>,
    sc: &ServeCtx,
    stop: watch::Receiver<bool>,
) {
    let Ok(stream) = Arc::try_unwrap(stream) else {
        // An earlier request's body still holds the socket (hyper's client
        // has not dropped a streamed body yet): the socket cannot be handed
        // over, so the connection closes (rare; the client reconnects).
        tracing::debug!(peer = %ctx.peer, "cannot hand the connection to hyper; closing");
        return;
    };
    let io = TrackedIo::new(
        Rewind {
            pre: read.freeze(),
            io: stream,
        },
        conn.clone(),
    );
    crate::listener::serve_http(io, lcfg, ctx, conn, sc, stop).await;
}

/// Write the response; false when the connection must be dropped at once
/// (write error, body error, or a body that does not match its length).
async fn write_response(
    stream: &TcpStream,
    wbuf: &mut Vec<u8>,
    resp: http::Response<ProxyBody>,
    head_request: bool,
    http10: bool,
    close: &mut bool,
) -> bool {
    let (parts, mut body) = resp.into_parts();
    let status = parts.status;
    let no_body = head_request
        || status.is_informational()
        || status == StatusCode::NO_CONTENT
        || status == StatusCode::NOT_MODIFIED;
    let framing = if no_body {
        ResponseFraming::AsIs
    } else if let Some(n) = body.size_hint().exact() {
        ResponseFraming::Length(n)
    } else if http10 {
        *close = true;
        ResponseFraming::UntilClose
    } else {
        ResponseFraming::Chunked
    };
    let mut headers = parts.headers;
    if !headers.contains_key(http::header::DATE) {
        // As hyper's server did: every response carries a Date (RFC 9110 §6.6.1).
        headers.insert(http::header::DATE, http_date_now());
    }
    h1::encode_response_head(wbuf, status, &headers, framing, *close);
    h1::recycle_header_map(headers);
    if no_body {
        return write_all(stream, &mut [IoSlice::new(wbuf)]).await.is_ok();
    }
    let mut head_pending = true;
    let mut sent: u64 = 0;
    loop {
        let data = match body.frame().await {
            None => break,
            Some(Err(e)) => {
                tracing::debug!(error = %e, "response body failed; closing the client connection");
                return false;
            }
            Some(Ok(f)) => match f.into_data() {
                Ok(d) if !d.is_empty() => d,
                _ => continue,
            },
        };
        sent += data.len() as u64;
        let head: &[u8] = if head_pending { wbuf } else { &[] };
        let r = match framing {
            ResponseFraming::Chunked => {
                let size = format!("{:x}\r\n", data.len());
                write_all(
                    stream,
                    &mut [
                        IoSlice::new(head),
                        IoSlice::new(size.as_bytes()),
                        IoSlice::new(&data),
                        IoSlice::new(b"\r\n"),
                    ],
                )
                .await
            }
            ResponseFraming::Length(n) if sent > n => return false,
            _ => write_all(stream, &mut [IoSlice::new(head), IoSlice::new(&data)]).await,
        };
        if r.is_err() {
            return false;
        }
        head_pending = false;
    }
    let tail: &[u8] = match framing {
        ResponseFraming::Chunked => b"0\r\n\r\n",
        ResponseFraming::Length(n) if sent != n => return false,
        _ => b"",
    };
    let head: &[u8] = if head_pending { wbuf } else { &[] };
    if head.is_empty() && tail.is_empty() {
        return true;
    }
    write_all(stream, &mut [IoSlice::new(head), IoSlice::new(tail)])
        .await
        .is_ok()
}

/// The current time as an HTTP-date, formatted once per second per thread.
fn http_date_now() -> http::HeaderValue {
    use std::cell::RefCell;
    use std::time::{SystemTime, UNIX_EPOCH};
    thread_local! {
        static CACHED: RefCell<(u64, Option<http::HeaderValue>)> = const { RefCell::new((0, None)) };
    }
    let now = SystemTime::now();
    let secs = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
    CACHED.with(|c| {
        let mut c = c.borrow_mut();
        if c.0 != secs || c.1.is_none() {
            let v = http::HeaderValue::from_str(&httpdate::fmt_http_date(now))
                .expect("an HTTP-date is a valid header value");
            *c = (secs, Some(v));
        }
        c.1.clone().expect("set above")
    })
}

/// `try_read_buf` that, as tokio's own `poll_read` does, marks the socket
/// not readable after a short read (the receive queue was drained): the
/// next wait for bytes then goes to epoll at once instead of costing a
/// read that fails with EAGAIN (one syscall per keep-alive request saved).
/// Only the readable bit is cleared (a seen end of stream stays), and only
/// if no newer readiness event arrived since the readiness was read
/// *before* the read (tokio's readiness ticks; the read runs inside
/// `try_io`, which clears with the tick it saw first): on a multi-threaded
/// runtime the I/O driver may record new bytes between the read and the
/// clearing, and that event must not be lost.
pub(crate) fn read_buf_draining(stream: &TcpStream, buf: &mut BytesMut) -> io::Result<usize> {
    let spare = buf.capacity() - buf.len();
    let mut short = None;
    let r = stream.try_io(tokio::io::Interest::READABLE, || {
        let n = stream.try_read_buf(buf)?;
        if n > 0 && n < spare {
            // Reported as WouldBlock so that try_io clears the readiness
            // it saw before the read; the bytes are returned below.
            short = Some(n);
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match (r, short) {
        (Err(_), Some(n)) => Ok(n),
        (r, _) => r,
    }
}

/// Write every slice (`writev`; partial writes continue where they stopped).
async fn write_all(stream: &TcpStream, mut bufs: &mut [IoSlice<'_>]) -> io::Result<()> {
    IoSlice::advance_slices(&mut bufs, 0);
    while !bufs.is_empty() {
        stream.writable().await?;
        match stream.try_write_vectored(bufs) {
            Ok(0) => return Err(io::ErrorKind::WriteZero.into()),
            Ok(n) => IoSlice::advance_slices(&mut bufs, n),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

enum BodyState {
    Length(u64),
    Chunked(h1::ChunkedDecoder),
    Done,
}

/// The request body's reading state, shared by the body and the loop (which
/// takes the buffer back, with any pipelined bytes, after the response).
struct ReadState {
    buf: BytesMut,
    body: BodyState,
    /// `100 Continue` written, or not asked for.
    continue_sent: bool,
}

/// A request body read from the client socket on demand.
enum ClientBody {
    Empty,
    Socket {
        stream: Arc<TcpStream>,
        st: Arc<Mutex<ReadState>>,
        /// The declared length (the size hint while unread).
        exact: Option<u64>,
    },
}

impl Body for ClientBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let ClientBody::Socket { stream, st, .. } = self.get_mut() else {
            return Poll::Ready(None);
        };
        let mut st = st.lock().unwrap();
        let st = &mut *st;
        if !st.continue_sent {
            // Expect: 100-continue: the proxy wants the body now.
            const CONTINUE: &[u8] = b"HTTP/1.1 100 Continue\r\n\r\n";
            loop {
                ready!(stream.poll_write_ready(cx))?;
                match stream.try_write(CONTINUE) {
                    Ok(n) if n == CONTINUE.len() => break,
                    // A partial write of 25 bytes to an idle socket does not
                    // happen in practice; the client would see a broken answer.
                    Ok(_) => return Poll::Ready(Some(Err("short write of 100 Continue".into()))),
                    Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                    Err(e) => return Poll::Ready(Some(Err(e.into()))),
                }
            }
            st.continue_sent = true;
        }
        loop {
            match &mut st.body {
                BodyState::Done => return Poll::Ready(None),
                BodyState::Length(left) => {
                    if !st.buf.is_empty() {
                        let n = (*left).min(st.buf.len() as u64);
                        let data = st.buf.split_to(n as usize).freeze();
                        *left -= n;
                        if *left == 0 {
                            st.body = BodyState::Done;
                        }
                        return Poll::Ready(Some(Ok(Frame::data(data))));
                    }
                }
                BodyState::Chunked(d) => match d.decode(&mut st.buf) {
                    Ok(h1::Decoded::Data(data)) => return Poll::Ready(Some(Ok(Frame::data(data)))),
                    Ok(h1::Decoded::Done) => {
                        st.body = BodyState::Done;
                        return Poll::Ready(None);
                    }
                    Ok(h1::Decoded::NeedMore) => {}
                    Err(e) => return Poll::Ready(Some(Err(e.0.into()))),
                },
            }
            ready!(stream.poll_read_ready(cx))?;
            st.buf.reserve(BODY_READ_BYTES);
            match read_buf_draining(stream, &mut st.buf) {
                Ok(0) => {
                    return Poll::Ready(Some(Err(
                        "client closed the connection before the end of the request body".into(),
                    )))
                }
                Ok(_) => {}
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => {}
                Err(e) => return Poll::Ready(Some(Err(e.into()))),
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        match self {
            ClientBody::Empty => true,
            ClientBody::Socket { st, .. } => matches!(st.lock().unwrap().body, BodyState::Done),
        }
    }

    fn size_hint(&self) -> SizeHint {
        match self {
            ClientBody::Empty => SizeHint::with_exact(0),
            ClientBody::Socket { st, exact, .. } => match st.lock().unwrap().body {
                BodyState::Length(left) => SizeHint::with_exact(left),
                BodyState::Done => SizeHint::with_exact(0),
                BodyState::Chunked(_) => exact.map_or_else(SizeHint::default, SizeHint::with_exact),
            },
        }
    }
}

/// A socket whose first bytes were already read: they are replayed first.
struct Rewind {
    pre: Bytes,
    io: TcpStream,
}

impl AsyncRead for Rewind {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if !this.pre.is_empty() {
            let n = this.pre.len().min(buf.remaining());
            buf.put_slice(&this.pre.split_to(n));
            return Poll::Ready(Ok(()));
        }
        Pin::new(&mut this.io).poll_read(cx, buf)
    }
}

crate::conn::write_through_to_io!(impl[] for Rewind);

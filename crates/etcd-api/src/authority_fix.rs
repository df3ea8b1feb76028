//! Accept URL-shaped `:authority` pseudo-headers from grpc-go clients.
//!
//! # Why this exists
//!
//! `etcdctl` 3.4 (grpc-go) dials per-endpoint commands (`endpoint status`,
//! `snapshot save`, `alarm list`, `endpoint hashkv`, ...) with the target
//! `passthrough:///http://127.0.0.1:2379`, and grpc-go then sends the HTTP/2
//! pseudo-header `:authority: http://127.0.0.1:2379`: a full URL rather than
//! `host[:port]`. Real etcd (a grpc-go server) accepts that. h2's server does
//! not: it fails to parse the value as a `uri::Authority` and resets the stream
//! with `PROTOCOL_ERROR`, so etcdctl prints "stream terminated by RST_STREAM
//! with error code: PROTOCOL_ERROR".
//!
//! [`AuthorityFix`] sits between the accepted socket and the HTTP/2 server and
//! rewrites such values to their `host[:port]` part (`127.0.0.1:2379`) before
//! h2 sees them. Writes (server to client) pass through untouched.
//!
//! # How
//!
//! The client-to-server byte stream is parsed as HTTP/2 frames with this state
//! machine:
//!
//! ```text
//! Preface ──(24 bytes match)──▶ FrameHeader ──▶ PassPayload{remaining} ──▶ FrameHeader ...
//!    │                              │
//!    │                              └─(HEADERS / CONTINUATION)─▶ HeaderPayload{remaining} ─▶ FrameHeader
//!    └─(mismatch or EOF)──▶ PassThrough (raw copy for the connection's lifetime)
//! any error ──▶ Failed (every later read returns the error; nothing more is passed on)
//! ```
//!
//! Every frame other than HEADERS and CONTINUATION is forwarded unchanged;
//! payloads are copied in bulk and streamed as they arrive (a large DATA frame
//! is never buffered whole). HEADERS and their CONTINUATION frames are
//! accumulated (padding and the priority field stripped) until END_HEADERS,
//! decoded with an HPACK decoder that lives as long as the connection (its
//! dynamic table tracks the client's encoder), `:authority` is rewritten when
//! it contains `://`, and the header list is re-encoded and re-framed.
//!
//! **Only connections that need it pay for it.** The first header block of a
//! connection decides: a grpc-go channel sends the same `:authority` on every
//! stream, so if the first block's `:authority` needs no rewrite, that block is forwarded
//! as the client encoded it (padding and priority dropped) and the rest of the
//! connection is copied unchanged (`PassThrough`); the server's decoder then
//! follows the client's encoder itself. Decoding every block cost about a
//! third of a member's CPU on serializable reads (a Huffman table is built per
//! decoded string). A client that switched to URL-shaped authorities later
//! in a connection would get h2's reset, as without this module.
//!
//! On a connection that needs rewriting, every header block is re-encoded,
//! whether or not anything changed: the client's block may refer to the
//! client's dynamic table, and the server's decoder only sees what we emit. Our encoding uses only "literal header field
//! without indexing, new name" with raw (non-Huffman) strings (RFC 7541
//! §6.2.2, §5.1, §5.2), so the server's dynamic table stays empty and no size
//! updates or table references are ever sent. (Fields the client sent as
//! "never indexed" are re-encoded without indexing too; that distinction only
//! matters to intermediaries forwarding further, and the server here is the
//! endpoint.)
//!
//! The re-encoding is bounded: a header block larger than
//! [`MAX_HEADER_BLOCK_BYTES`], a decoded header list larger than
//! [`MAX_HEADER_LIST_BYTES`], an HPACK decoding error or a malformed
//! HEADERS/CONTINUATION sequence ends the connection with an I/O error.
//!
//! Assumption: the server keeps h2's defaults for SETTINGS_MAX_FRAME_SIZE
//! ([`SERVER_MAX_FRAME_SIZE`]) and SETTINGS_HEADER_TABLE_SIZE
//! ([`MAX_DYNAMIC_TABLE_BYTES`]); tonic does not change either unless told to.

use std::io;
use std::pin::Pin;
use std::task::{ready, Context, Poll};
use std::time::Duration;

use futures::Stream;
use loona_hpack::Decoder;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tonic::transport::server::Connected;

/// The HTTP/2 client connection preface (RFC 9113 §3.4).
pub const CLIENT_PREFACE: &[u8; 24] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Largest frame payload we emit: the default SETTINGS_MAX_FRAME_SIZE, which
/// the server advertises (tonic/hyper leave it at h2's default).
pub const SERVER_MAX_FRAME_SIZE: usize = 16_384;

/// Largest accumulated header block (HEADERS + CONTINUATION payloads) accepted
/// from a client; beyond it the connection is closed.
pub const MAX_HEADER_BLOCK_BYTES: usize = 1024 * 1024;

/// Largest decoded header list (RFC 9113 §6.5.2 accounting: name + value + 32
/// per field) accepted from a client. Bounds the memory an HPACK block full of
/// references to large dynamic-table entries can expand to.
pub const MAX_HEADER_LIST_BYTES: usize = 1024 * 1024;

/// Largest dynamic table size the client's encoder may switch to: the server's
/// SETTINGS_HEADER_TABLE_SIZE, h2's default 4096. Size updates are consumed
/// here (never forwarded), so this is where they are validated.
pub const MAX_DYNAMIC_TABLE_BYTES: usize = 4096;

const FRAME_HEADER_LEN: usize = 9;
/// Bytes read from the client at a time while parsing frame structure.
const READ_CHUNK_BYTES: usize = 16 * 1024;
/// Capacity kept by the output buffer once drained.
const RETAINED_OUT_BYTES: usize = 64 * 1024;

const FRAME_HEADERS: u8 = 0x1;
const FRAME_CONTINUATION: u8 = 0x9;

const FLAG_END_STREAM: u8 = 0x1;
const FLAG_END_HEADERS: u8 = 0x4;
const FLAG_PADDED: u8 = 0x8;
const FLAG_PRIORITY: u8 = 0x20;

const PRIORITY_FIELD_LEN: usize = 5;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    /// Matching the 24-byte client preface.
    Preface,
    /// Waiting for a 9-byte frame header.
    FrameHeader,
    /// Forwarding `remaining` payload bytes of a frame unchanged.
    PassPayload { remaining: usize },
    /// Accumulating `remaining` payload bytes of a HEADERS or CONTINUATION frame.
    HeaderPayload { remaining: usize },
    /// Not HTTP/2 with prior knowledge: copy everything unchanged.
    PassThrough,
    /// A fatal error happened; every read returns it.
    Failed,
}

/// The header block being accumulated across HEADERS and CONTINUATION frames.
struct OpenBlock {
    stream_id: u32,
    end_stream: bool,
    fragment: Vec<u8>,
}

/// The HEADERS or CONTINUATION frame whose payload is being read.
struct HeaderFrame {
    frame_type: u8,
    flags: u8,
    stream_id: u32,
    payload: Vec<u8>,
}

/// A connection whose client-to-server HTTP/2 stream has URL-shaped
/// `:authority` values rewritten to `host[:port]`. See the module docs.
pub struct AuthorityFix<S> {
    inner: S,
    state: State,
    /// Read-ahead from `inner`, valid in `in_start..in_end`.
    in_buf: Box<[u8]>,
    in_start: usize,
    in_end: usize,
    /// Bytes ready for the reader, from `out_pos`.
    out: Vec<u8>,
    out_pos: usize,
    frame: HeaderFrame,
    block: Option<OpenBlock>,
    /// Scratch for re-encoding a header block.
    encoded: Vec<u8>,
    decoder: Decoder<'static>,
    /// Set once the first header block needed a rewrite: every block of the
    /// connection is then re-encoded (see the module docs).
    rewriting: bool,
    failure: Option<(io::ErrorKind, String)>,
}

impl<S> AuthorityFix<S> {
    /// Wraps a freshly accepted connection (nothing read from it yet).
    pub fn new(inner: S) -> Self {
        let mut decoder = Decoder::new();
        decoder.set_max_allowed_table_size(MAX_DYNAMIC_TABLE_BYTES);
        AuthorityFix {
            inner,
            state: State::Preface,
            in_buf: vec![0; READ_CHUNK_BYTES].into_boxed_slice(),
            in_start: 0,
            in_end: 0,
            out: Vec::new(),
            out_pos: 0,
            frame: HeaderFrame {
                frame_type: 0,
                flags: 0,
                stream_id: 0,
                payload: Vec::new(),
            },
            block: None,
            encoded: Vec::new(),
            decoder,
            rewriting: false,
            failure: None,
        }
    }

    /// The wrapped connection.
    pub fn get_ref(&self) -> &S {
        &self.inner
    }

    fn buffered(&self) -> &[u8] {
        &self.in_buf[self.in_start..self.in_end]
    }

    fn consume(&mut self, n: usize) {
        self.in_start += n;
        if self.in_start == self.in_end {
            self.in_start = 0;
            self.in_end = 0;
        }
    }

    /// Moves buffered input bytes into `buf`, at most `limit` of them.
    fn copy_buffered(&mut self, buf: &mut ReadBuf<'_>, limit: usize) -> usize {
        let n = limit.min(self.in_end - self.in_start).min(buf.remaining());
        buf.put_slice(&self.in_buf[self.in_start..self.in_start + n]);
        self.consume(n);
        n
    }

    fn fail(&mut self, kind: io::ErrorKind, msg: String) -> io::Error {
        tracing::debug!(error = %msg, "authority_fix: closing connection");
        self.state = State::Failed;
        self.out.clear();
        self.out_pos = 0;
        self.block = None;
        self.in_start = 0;
        self.in_end = 0;
        self.failure = Some((kind, msg.clone()));
        io::Error::new(kind, msg)
    }

    /// Advances the parser over buffered input. Returns `Ok(false)` when more
    /// input is needed, `Ok(true)` after making progress.
    fn step(&mut self) -> Result<bool, (io::ErrorKind, String)> {
        match self.state {
            State::Preface => {
                let avail = self.buffered();
                let n = avail.len().min(CLIENT_PREFACE.len());
                if avail[..n] != CLIENT_PREFACE[..n] {
                    self.state = State::PassThrough;
                    return Ok(true);
                }
                if n < CLIENT_PREFACE.len() {
                    return Ok(false);
                }
                self.consume(n);
                self.out.extend_from_slice(CLIENT_PREFACE);
                self.state = State::FrameHeader;
                Ok(true)
            }
            State::FrameHeader => {
                let avail = self.buffered();
                if avail.len() < FRAME_HEADER_LEN {
                    return Ok(false);
                }
                let mut header = [0u8; FRAME_HEADER_LEN];
                header.copy_from_slice(&avail[..FRAME_HEADER_LEN]);
                self.consume(FRAME_HEADER_LEN);
                let len = usize::from(header[0]) << 16
                    | usize::from(header[1]) << 8
                    | usize::from(header[2]);
                let frame_type = header[3];
                let flags = header[4];
                let stream_id =
                    u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;

                let accumulated = match &self.block {
                    Some(block) => {
                        if frame_type != FRAME_CONTINUATION || stream_id != block.stream_id {
                            return Err((
                                io::ErrorKind::InvalidData,
                                format!(
                                    "expected CONTINUATION on stream {}, got frame type {frame_type:#x} on stream {stream_id}",
                                    block.stream_id
                                ),
                            ));
                        }
                        Some(block.fragment.len())
                    }
                    None if frame_type == FRAME_HEADERS => Some(0),
                    // A CONTINUATION without an open block is the server's to reject.
                    None => None,
                };
                match accumulated {
                    Some(accumulated) => {
                        if accumulated + len > MAX_HEADER_BLOCK_BYTES {
                            return Err((
                                io::ErrorKind::InvalidData,
                                format!("header block on stream {stream_id} exceeds {MAX_HEADER_BLOCK_BYTES} bytes"),
                            ));
                        }
                        self.frame.frame_type = frame_type;
                        self.frame.flags = flags;
                        self.frame.stream_id = stream_id;
                        self.frame.payload.clear();
                        self.frame.payload.reserve(len);
                        self.state = State::HeaderPayload { remaining: len };
                    }
                    None => {
                        self.out.extend_from_slice(&header);
                        self.state = if len == 0 {
                            State::FrameHeader
                        } else {
                            State::PassPayload { remaining: len }
                        };
                    }
                }
                Ok(true)
            }
            State::HeaderPayload { remaining } => {
                if remaining > 0 {
                    let avail = &self.in_buf[self.in_start..self.in_end];
                    if avail.is_empty() {
                        return Ok(false);
                    }
                    let n = remaining.min(avail.len());
                    self.frame.payload.extend_from_slice(&avail[..n]);
                    self.consume(n);
                    if n < remaining {
                        self.state = State::HeaderPayload {
                            remaining: remaining - n,
                        };
                        return Ok(true);
                    }
                }
                self.state = State::FrameHeader;
                self.finish_header_frame()?;
                Ok(true)
            }
            // Handled by `poll_read` directly.
            State::PassPayload { .. } | State::PassThrough | State::Failed => Ok(true),
        }
    }

    /// Adds a complete HEADERS/CONTINUATION payload to the open block and, at
    /// END_HEADERS, re-encodes the block into `out`.
    fn finish_header_frame(&mut self) -> Result<(), (io::ErrorKind, String)> {
        let frame = &self.frame;
        let payload = &frame.payload[..];
        let fragment = if frame.frame_type == FRAME_HEADERS {
            let mut start = 0;
            let mut end = payload.len();
            if frame.flags & FLAG_PADDED != 0 {
                let Some(&pad) = payload.first() else {
                    return Err(malformed(
                        frame.stream_id,
                        "PADDED HEADERS without pad length",
                    ));
                };
                start = 1;
                let pad = usize::from(pad);
                if pad > end - start {
                    return Err(malformed(
                        frame.stream_id,
                        "HEADERS padding exceeds payload",
                    ));
                }
                end -= pad;
            }
            if frame.flags & FLAG_PRIORITY != 0 {
                if end - start < PRIORITY_FIELD_LEN {
                    return Err(malformed(
                        frame.stream_id,
                        "HEADERS too short for priority field",
                    ));
                }
                start += PRIORITY_FIELD_LEN;
            }
            &payload[start..end]
        } else {
            payload
        };
        let block = self.block.get_or_insert_with(|| OpenBlock {
            stream_id: frame.stream_id,
            end_stream: frame.flags & FLAG_END_STREAM != 0,
            fragment: Vec::new(),
        });
        block.fragment.extend_from_slice(fragment);
        if frame.flags & FLAG_END_HEADERS == 0 {
            return Ok(());
        }
        match self.block.take() {
            Some(block) => self.emit_block(&block),
            None => Ok(()),
        }
    }

    /// Decodes `block`, rewrites `:authority`, and writes the re-encoded block
    /// as HEADERS + CONTINUATION frames to `out`.
    fn emit_block(&mut self, block: &OpenBlock) -> Result<(), (io::ErrorKind, String)> {
        let encoded = &mut self.encoded;
        encoded.clear();
        let mut list_bytes = 0usize;
        let mut too_large = false;
        let mut needs_rewrite = false;
        self.decoder
            .decode_with_cb(&block.fragment, |name, value| {
                if too_large {
                    return;
                }
                list_bytes += name.len() + value.len() + 32;
                if list_bytes > MAX_HEADER_LIST_BYTES {
                    too_large = true;
                    return;
                }
                if &name[..] == b":authority" {
                    let rewritten = rewrite_authority(&value);
                    needs_rewrite |= rewritten.is_some();
                    match rewritten {
                        Some([]) => {
                            // Nothing usable (e.g. "unix:///path"): omit it, as
                            // :authority is optional.
                        }
                        Some(host_port) => encode_literal(encoded, &name, host_port),
                        None => encode_literal(encoded, &name, &value),
                    }
                } else {
                    encode_literal(encoded, &name, &value);
                }
            })
            .map_err(|e| {
                (
                    io::ErrorKind::InvalidData,
                    format!("HPACK decoding error on stream {}: {e}", block.stream_id),
                )
            })?;
        if too_large {
            return Err((
                io::ErrorKind::InvalidData,
                format!(
                    "decoded header list on stream {} exceeds {MAX_HEADER_LIST_BYTES} bytes",
                    block.stream_id
                ),
            ));
        }

        self.rewriting |= needs_rewrite;
        // The first block decides (module docs): nothing to rewrite, so the
        // server's decoder gets the client's own encoding, and from here on
        // the connection is copied unchanged.
        let payload = if self.rewriting {
            &self.encoded[..]
        } else {
            self.state = State::PassThrough;
            &block.fragment[..]
        };
        let frames = payload.len().div_ceil(SERVER_MAX_FRAME_SIZE).max(1);
        self.out.reserve(payload.len() + frames * FRAME_HEADER_LEN);
        for i in 0..frames {
            let start = i * SERVER_MAX_FRAME_SIZE;
            let end = (start + SERVER_MAX_FRAME_SIZE).min(payload.len());
            let chunk = &payload[start..end];
            let (frame_type, mut flags) = if i == 0 {
                (
                    FRAME_HEADERS,
                    if block.end_stream { FLAG_END_STREAM } else { 0 },
                )
            } else {
                (FRAME_CONTINUATION, 0)
            };
            if i + 1 == frames {
                flags |= FLAG_END_HEADERS;
            }
            let len = chunk.len() as u32;
            self.out.extend_from_slice(&len.to_be_bytes()[1..]);
            self.out.push(frame_type);
            self.out.push(flags);
            self.out.extend_from_slice(&block.stream_id.to_be_bytes());
            self.out.extend_from_slice(chunk);
        }
        if self.encoded.capacity() > RETAINED_OUT_BYTES {
            self.encoded = Vec::new();
        }
        Ok(())
    }
}

fn malformed(stream_id: u32, what: &str) -> (io::ErrorKind, String) {
    (
        io::ErrorKind::InvalidData,
        format!("malformed frame on stream {stream_id}: {what}"),
    )
}

/// For an `:authority` value containing `://`, its host[:port] part: scheme,
/// userinfo, path, query and fragment removed. `None` if there is no `://`.
fn rewrite_authority(value: &[u8]) -> Option<&[u8]> {
    let sep = value.windows(3).position(|w| w == b"://")?;
    let rest = &value[sep + 3..];
    let end = rest
        .iter()
        .position(|&b| matches!(b, b'/' | b'?' | b'#'))
        .unwrap_or(rest.len());
    let authority = &rest[..end];
    let host_port = match authority.iter().rposition(|&b| b == b'@') {
        Some(at) => &authority[at + 1..],
        None => authority,
    };
    Some(host_port)
}

/// HPACK integer with an `prefix_bits`-bit prefix (RFC 7541 §5.1); `first`
/// holds the representation's pattern bits above the prefix.
fn encode_integer(out: &mut Vec<u8>, mut value: usize, prefix_bits: u8, first: u8) {
    let max_prefix = (1usize << prefix_bits) - 1;
    if value < max_prefix {
        out.push(first | value as u8);
        return;
    }
    out.push(first | max_prefix as u8);
    value -= max_prefix;
    while value >= 0x80 {
        out.push((value & 0x7f) as u8 | 0x80);
        value >>= 7;
    }
    out.push(value as u8);
}

/// HPACK string literal without Huffman coding (RFC 7541 §5.2).
fn encode_string(out: &mut Vec<u8>, s: &[u8]) {
    encode_integer(out, s.len(), 7, 0x00);
    out.extend_from_slice(s);
}

/// "Literal Header Field without Indexing — New Name" (RFC 7541 §6.2.2):
/// touches neither the decoder's dynamic table nor any index.
fn encode_literal(out: &mut Vec<u8>, name: &[u8], value: &[u8]) {
    out.push(0x00);
    encode_string(out, name);
    encode_string(out, value);
}

impl<S: AsyncRead + Unpin> AsyncRead for AuthorityFix<S> {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        let this = self.get_mut();
        if buf.remaining() == 0 {
            return Poll::Ready(Ok(()));
        }
        loop {
            if this.out_pos < this.out.len() {
                let n = buf.remaining().min(this.out.len() - this.out_pos);
                buf.put_slice(&this.out[this.out_pos..this.out_pos + n]);
                this.out_pos += n;
                if this.out_pos == this.out.len() {
                    this.out.clear();
                    this.out_pos = 0;
                    this.out.shrink_to(RETAINED_OUT_BYTES);
                }
                return Poll::Ready(Ok(()));
            }
            match this.state {
                State::Failed => {
                    let (kind, msg) = this
                        .failure
                        .clone()
                        .unwrap_or((io::ErrorKind::Other, String::new()));
                    return Poll::Ready(Err(io::Error::new(kind, msg)));
                }
                State::PassThrough => {
                    if this.in_start < this.in_end {
                        this.copy_buffered(buf, usize::MAX);
                        return Poll::Ready(Ok(()));
                    }
                    return Pin::new(&mut this.inner).poll_read(cx, buf);
                }
                State::PassPayload { remaining } => {
                    let n = if this.in_start < this.in_end {
                        this.copy_buffered(buf, remaining)
                    } else {
                        // Read straight into the caller's buffer, at most to
                        // the end of this frame.
                        let limit = remaining.min(buf.remaining());
                        let mut dst = ReadBuf::new(buf.initialize_unfilled_to(limit));
                        ready!(Pin::new(&mut this.inner).poll_read(cx, &mut dst))?;
                        let n = dst.filled().len();
                        buf.advance(n);
                        if n == 0 {
                            // EOF in the middle of a frame: the server sees EOF.
                            return Poll::Ready(Ok(()));
                        }
                        n
                    };
                    this.state = if n == remaining {
                        State::FrameHeader
                    } else {
                        State::PassPayload {
                            remaining: remaining - n,
                        }
                    };
                    return Poll::Ready(Ok(()));
                }
                State::Preface | State::FrameHeader | State::HeaderPayload { .. } => {
                    match this.step() {
                        Ok(true) => continue,
                        Err((kind, msg)) => return Poll::Ready(Err(this.fail(kind, msg))),
                        Ok(false) => {
                            // Need more input. At most a frame header or the
                            // preface is kept here; payloads are moved out.
                            if this.in_start > 0 {
                                this.in_buf.copy_within(this.in_start..this.in_end, 0);
                                this.in_end -= this.in_start;
                                this.in_start = 0;
                            }
                            let mut dst = ReadBuf::new(&mut this.in_buf[this.in_end..]);
                            ready!(Pin::new(&mut this.inner).poll_read(cx, &mut dst))?;
                            let n = dst.filled().len();
                            if n == 0 {
                                if this.state == State::Preface && this.in_end > 0 {
                                    // A short non-HTTP/2 (or truncated) exchange:
                                    // hand over what arrived.
                                    this.state = State::PassThrough;
                                    continue;
                                }
                                return Poll::Ready(Ok(()));
                            }
                            this.in_end += n;
                        }
                    }
                }
            }
        }
    }
}

impl<S: AsyncWrite + Unpin> AsyncWrite for AuthorityFix<S> {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write(cx, buf)
    }

    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_flush(cx)
    }

    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.get_mut().inner).poll_shutdown(cx)
    }

    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        Pin::new(&mut self.get_mut().inner).poll_write_vectored(cx, bufs)
    }

    fn is_write_vectored(&self) -> bool {
        self.inner.is_write_vectored()
    }
}

impl<S: Connected> Connected for AuthorityFix<S> {
    type ConnectInfo = S::ConnectInfo;

    fn connect_info(&self) -> Self::ConnectInfo {
        self.inner.connect_info()
    }
}

/// Pause after an accept error that is not about one connection (e.g. EMFILE),
/// so a listener out of file descriptors does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(100);

/// Accepted connections from `listener`, with TCP_NODELAY set and wrapped in
/// [`AuthorityFix`], for `tonic::transport::Server::serve_with_incoming`.
///
/// Accept errors never end the stream (and are never yielded): they are
/// logged, and errors not tied to one connection (EMFILE, ENFILE, ENOBUFS, ...)
/// are followed by a short backoff. The `io::Result` item type is what
/// `serve_with_incoming` expects.
pub fn wrap_incoming(
    listener: TcpListener,
) -> impl Stream<Item = io::Result<AuthorityFix<TcpStream>>> + Send + 'static {
    futures::stream::unfold(listener, |listener| async move {
        loop {
            match listener.accept().await {
                Ok((stream, peer)) => {
                    if let Err(e) = stream.set_nodelay(true) {
                        tracing::debug!(%peer, error = %e, "failed to set TCP_NODELAY");
                    }
                    return Some((Ok(AuthorityFix::new(stream)), listener));
                }
                Err(e) if is_connection_error(&e) => {
                    tracing::debug!(error = %e, "accept failed for one connection");
                }
                Err(e) => {
                    tracing::warn!(error = %e, "accept failed; backing off");
                    tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                }
            }
        }
    })
}

/// Accept errors that concern only the connection being accepted.
fn is_connection_error(e: &io::Error) -> bool {
    matches!(
        e.kind(),
        io::ErrorKind::ConnectionRefused
            | io::ErrorKind::ConnectionAborted
            | io::ErrorKind::ConnectionReset
            | io::ErrorKind::Interrupted
            | io::ErrorKind::WouldBlock
    )
}

#[cfg(test)]
mod tests {
    use super::*;
    use loona_hpack::Decoder;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    const TIMEOUT: Duration = Duration::from_secs(10);

    fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
        let mut v = Vec::with_capacity(FRAME_HEADER_LEN + payload.len());
        v.extend_from_slice(&(payload.len() as u32).to_be_bytes()[1..]);
        v.push(frame_type);
        v.push(flags);
        v.extend_from_slice(&stream_id.to_be_bytes());
        v.extend_from_slice(payload);
        v
    }

    fn settings() -> Vec<u8> {
        frame(0x4, 0, 0, &[0x00, 0x03, 0x00, 0x00, 0x00, 0x64]) // MAX_CONCURRENT_STREAMS=100
    }

    /// Feeds `input` through an `AuthorityFix` and returns everything it reads.
    async fn run(input: Vec<u8>) -> io::Result<Vec<u8>> {
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            // The adapter may stop reading on error; ignore write failures then.
            let _ = client.write_all(&input).await;
            let _ = client.shutdown().await;
        });
        let mut fix = AuthorityFix::new(server);
        let mut out = Vec::new();
        let res = tokio::time::timeout(TIMEOUT, fix.read_to_end(&mut out))
            .await
            .expect("timed out");
        drop(fix);
        writer.await.unwrap();
        res.map(|_| out)
    }

    #[derive(Debug, PartialEq)]
    struct Frame {
        frame_type: u8,
        flags: u8,
        stream_id: u32,
        payload: Vec<u8>,
    }

    /// Parses the adapter's output: preface then well-formed frames.
    fn parse(out: &[u8]) -> Vec<Frame> {
        assert_eq!(&out[..24], CLIENT_PREFACE);
        let mut rest = &out[24..];
        let mut frames = Vec::new();
        while !rest.is_empty() {
            assert!(rest.len() >= 9, "truncated frame header");
            let len = usize::from(rest[0]) << 16 | usize::from(rest[1]) << 8 | usize::from(rest[2]);
            assert!(rest.len() >= 9 + len, "truncated frame payload");
            frames.push(Frame {
                frame_type: rest[3],
                flags: rest[4],
                stream_id: u32::from_be_bytes([rest[5], rest[6], rest[7], rest[8]]),
                payload: rest[9..9 + len].to_vec(),
            });
            rest = &rest[9 + len..];
        }
        frames
    }

    /// Header blocks in `frames`, checking HEADERS/CONTINUATION framing rules
    /// and that our encoding never touches the dynamic table.
    fn header_blocks(frames: &[Frame]) -> Vec<(u32, bool, Vec<u8>)> {
        let mut blocks = Vec::new();
        let mut open: Option<(u32, bool, Vec<u8>)> = None;
        for f in frames {
            match f.frame_type {
                FRAME_HEADERS => {
                    assert!(open.is_none());
                    assert_eq!(f.flags & (FLAG_PADDED | FLAG_PRIORITY), 0);
                    assert!(f.payload.len() <= SERVER_MAX_FRAME_SIZE);
                    open = Some((
                        f.stream_id,
                        f.flags & FLAG_END_STREAM != 0,
                        f.payload.clone(),
                    ));
                }
                FRAME_CONTINUATION => {
                    let (sid, _, block) = open.as_mut().expect("CONTINUATION without HEADERS");
                    assert_eq!(*sid, f.stream_id);
                    assert_eq!(f.flags & !FLAG_END_HEADERS, 0);
                    assert!(f.payload.len() <= SERVER_MAX_FRAME_SIZE);
                    block.extend_from_slice(&f.payload);
                }
                _ => {
                    assert!(open.is_none(), "frame interleaved in a header block");
                    continue;
                }
            }
            if f.flags & FLAG_END_HEADERS != 0 {
                blocks.push(open.take().unwrap());
            }
        }
        assert!(open.is_none());
        blocks
    }

    /// Decodes a block emitted by the adapter with a fresh decoder (the
    /// adapter must never rely on dynamic-table state).
    fn decode_fresh(block: &[u8]) -> Vec<(String, String)> {
        Decoder::new()
            .decode(block)
            .unwrap()
            .into_iter()
            .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
            .collect()
    }

    fn pairs(list: &[(&str, &str)]) -> Vec<(String, String)> {
        list.iter()
            .map(|(n, v)| (n.to_string(), v.to_string()))
            .collect()
    }

    /// Huffman codes (RFC 7541 Appendix B) for the characters the tests use.
    fn huffman_code(c: u8) -> (u32, u8) {
        match c {
            b'0' => (0b00000, 5),
            b'1' => (0b00001, 5),
            b'2' => (0b00010, 5),
            b'3' => (0b011001, 6),
            b'7' => (0b011101, 6),
            b'9' => (0b011111, 6),
            b'.' => (0b010111, 6),
            b'/' => (0b011000, 6),
            b':' => (0b1011100, 7),
            b'h' => (0b100111, 6),
            b'p' => (0b101011, 6),
            b't' => (0b01001, 5),
            _ => panic!("no test Huffman code for {:?}", c as char),
        }
    }

    fn huffman(s: &str) -> Vec<u8> {
        let mut out = Vec::new();
        let (mut acc, mut bits) = (0u64, 0u32);
        for &c in s.as_bytes() {
            let (code, len) = huffman_code(c);
            acc = acc << len | u64::from(code);
            bits += u32::from(len);
            while bits >= 8 {
                bits -= 8;
                out.push((acc >> bits) as u8);
            }
        }
        if bits > 0 {
            // Pad with the most significant bits of EOS (all ones).
            out.push(((acc << (8 - bits)) as u8) | (0xff >> bits));
        }
        out
    }

    /// Huffman-coded HPACK string literal.
    fn huffman_string(s: &str) -> Vec<u8> {
        let h = huffman(s);
        let mut v = Vec::new();
        encode_integer(&mut v, h.len(), 7, 0x80);
        v.extend_from_slice(&h);
        v
    }

    #[test]
    fn test_huffman_helper_matches_decoder() {
        let mut block = vec![0x41];
        block.extend_from_slice(&huffman_string("http://127.0.0.1:2379"));
        let decoded = Decoder::new().decode(&block).unwrap();
        assert_eq!(
            decoded,
            vec![(b":authority".to_vec(), b"http://127.0.0.1:2379".to_vec())]
        );
    }

    #[test]
    fn test_rewrite_authority() {
        assert_eq!(rewrite_authority(b"127.0.0.1:2379"), None);
        assert_eq!(
            rewrite_authority(b"http://127.0.0.1:2379"),
            Some(&b"127.0.0.1:2379"[..])
        );
        assert_eq!(
            rewrite_authority(b"https://u:p@[::1]:2379/a/b?q#f"),
            Some(&b"[::1]:2379"[..])
        );
        assert_eq!(
            rewrite_authority(b"http://example.com"),
            Some(&b"example.com"[..])
        );
        assert_eq!(rewrite_authority(b"unix:///tmp/sock"), Some(&b""[..]));
    }

    #[test]
    fn test_encode_integer_rfc_examples() {
        // RFC 7541 C.1.1–C.1.3.
        let mut v = Vec::new();
        encode_integer(&mut v, 10, 5, 0);
        assert_eq!(v, [0x0a]);
        v.clear();
        encode_integer(&mut v, 1337, 5, 0);
        assert_eq!(v, [0x1f, 0x9a, 0x0a]);
        v.clear();
        encode_integer(&mut v, 42, 8, 0);
        assert_eq!(v, [0x2a]);
    }

    /// Two requests as grpc-go sends them: the first adds `:authority` (URL
    /// shaped, Huffman coded) and a custom header to the dynamic table, the
    /// second refers to both entries by index.
    /// The first block decides: a host:port authority sends the connection
    /// through unchanged, a later URL-shaped one included (the server judges
    /// it, as it would without this module).
    #[tokio::test]
    async fn test_first_block_without_url_authority_passes_the_connection_through() {
        let mut first = vec![0x83, 0x86, 0x84]; // POST, http, /
        first.push(0x41); // :authority, literal with incremental indexing
        encode_string(&mut first, b"127.0.0.1:2379");
        let mut second = vec![0x83, 0x86, 0x84, 0x01]; // :authority, literal without indexing
        encode_string(&mut second, b"http://127.0.0.1:2379");
        let mut input = CLIENT_PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(frame(0x0, 0x1, 1, b"grpc body bytes"));
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 3, &second));
        assert_eq!(run(input.clone()).await.unwrap(), input);
    }

    #[tokio::test]
    async fn test_rewrites_authority_across_dynamic_table_references() {
        let mut first = vec![0x83, 0x86]; // :method POST, :scheme http
        first.push(0x44); // :path, literal with incremental indexing (name index 4)
        first.extend_from_slice(&huffman_string("/"));
        first.push(0x41); // :authority, literal with incremental indexing
        first.extend_from_slice(&huffman_string("http://127.0.0.1:2379"));
        first.push(0x40); // new name, literal with incremental indexing
        encode_string(&mut first, b"x-custom");
        encode_string(&mut first, b"value");
        // Dynamic table now: 62 = x-custom, 63 = :authority, 64 = :path /.
        let second = vec![0x83, 0x86, 0xc0, 0xbf, 0xbe];

        let data = frame(0x0, 0x1, 1, b"grpc body bytes");
        let mut input = CLIENT_PREFACE.to_vec();
        input.extend(settings());
        input.extend(frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &first));
        input.extend(&data);
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_END_HEADERS | FLAG_END_STREAM,
            3,
            &second,
        ));

        let out = run(input).await.unwrap();
        let frames = parse(&out);
        assert_eq!(frames.len(), 4);
        assert_eq!(
            frames[0],
            parse(&[&CLIENT_PREFACE[..], &settings()].concat())[0]
        );
        let mut data_round_trip = CLIENT_PREFACE.to_vec();
        data_round_trip.extend(&data);
        assert_eq!(
            frames[2],
            parse(&data_round_trip)[0],
            "DATA must pass through unchanged"
        );

        let blocks = header_blocks(&frames);
        let expected = pairs(&[
            (":method", "POST"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "127.0.0.1:2379"),
            ("x-custom", "value"),
        ]);
        assert_eq!(blocks.len(), 2);
        assert_eq!((blocks[0].0, blocks[0].1), (1, false));
        assert_eq!(decode_fresh(&blocks[0].2), expected);
        assert_eq!((blocks[1].0, blocks[1].1), (3, true));
        assert_eq!(decode_fresh(&blocks[1].2), expected);
    }

    /// RFC 7541 C.4: requests with Huffman coding and a dynamic table; nothing
    /// to rewrite, yet the table references must be resolved.
    #[tokio::test]
    async fn test_rfc7541_c4_requests_are_resolved() {
        let c41: &[u8] = &[
            0x82, 0x86, 0x84, 0x41, 0x8c, 0xf1, 0xe3, 0xc2, 0xe5, 0xf2, 0x3a, 0x6b, 0xa0, 0xab,
            0x90, 0xf4, 0xff,
        ];
        let c42: &[u8] = &[
            0x82, 0x86, 0x84, 0xbe, 0x58, 0x86, 0xa8, 0xeb, 0x10, 0x64, 0x9c, 0xbf,
        ];
        let c43: &[u8] = &[
            0x82, 0x87, 0x85, 0xbf, 0x40, 0x88, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xa9, 0x7d, 0x7f,
            0x89, 0x25, 0xa8, 0x49, 0xe9, 0x5b, 0xb8, 0xe8, 0xb4, 0xbf,
        ];
        let mut input = CLIENT_PREFACE.to_vec();
        for (i, block) in [c41, c42, c43].into_iter().enumerate() {
            input.extend(frame(
                FRAME_HEADERS,
                FLAG_END_HEADERS | FLAG_END_STREAM,
                1 + 2 * i as u32,
                block,
            ));
        }
        let output = run(input.clone()).await.unwrap();
        // No authority to rewrite: the connection passes through unchanged,
        // dynamic-table references and all, for the server's decoder to follow.
        assert_eq!(output, input);
        let blocks = header_blocks(&parse(&output));
        let mut server = Decoder::new();
        let mut decode = |block: &[u8]| -> Vec<(String, String)> {
            server
                .decode(block)
                .unwrap()
                .into_iter()
                .map(|(n, v)| (String::from_utf8(n).unwrap(), String::from_utf8(v).unwrap()))
                .collect()
        };
        let base = [
            (":method", "GET"),
            (":scheme", "http"),
            (":path", "/"),
            (":authority", "www.example.com"),
        ];
        assert_eq!(decode(&blocks[0].2), pairs(&base));
        assert_eq!(
            decode(&blocks[1].2),
            pairs(&[&base[..], &[("cache-control", "no-cache")]].concat())
        );
        assert_eq!(
            decode(&blocks[2].2),
            pairs(&[
                (":method", "GET"),
                (":scheme", "https"),
                (":path", "/index.html"),
                (":authority", "www.example.com"),
                ("custom-key", "custom-value"),
            ])
        );
    }

    /// A padded, prioritized HEADERS split over CONTINUATION frames on input,
    /// and a >16 KiB block on output.
    #[tokio::test]
    async fn test_large_block_is_split_into_continuations() {
        let big = "v".repeat(40_000);
        let mut block = vec![0x82, 0x86, 0x84, 0x41];
        block.extend_from_slice(&huffman_string("http://127.0.0.1:2379"));
        block.push(0x00);
        encode_string(&mut block, b"x-big");
        encode_string(&mut block, big.as_bytes());

        // Input: HEADERS (padded + priority) with the first 100 bytes, then
        // two CONTINUATIONs.
        let mut headers_payload = vec![3u8]; // pad length
        headers_payload.extend_from_slice(&[0, 0, 0, 0, 15]); // priority
        headers_payload.extend_from_slice(&block[..100]);
        headers_payload.extend_from_slice(&[0, 0, 0]);
        let mut input = CLIENT_PREFACE.to_vec();
        input.extend(frame(
            FRAME_HEADERS,
            FLAG_PADDED | FLAG_PRIORITY | FLAG_END_STREAM,
            5,
            &headers_payload,
        ));
        input.extend(frame(FRAME_CONTINUATION, 0, 5, &block[100..20_000]));
        input.extend(frame(
            FRAME_CONTINUATION,
            FLAG_END_HEADERS,
            5,
            &block[20_000..],
        ));
        input.extend(frame(0x6, 0, 0, &[1, 2, 3, 4, 5, 6, 7, 8])); // PING

        let frames = parse(&run(input).await.unwrap());
        let kinds: Vec<(u8, u8)> = frames.iter().map(|f| (f.frame_type, f.flags)).collect();
        assert_eq!(
            kinds,
            [
                (FRAME_HEADERS, FLAG_END_STREAM),
                (FRAME_CONTINUATION, 0),
                (FRAME_CONTINUATION, FLAG_END_HEADERS),
                (0x6, 0)
            ]
        );
        assert_eq!(frames[0].payload.len(), SERVER_MAX_FRAME_SIZE);
        assert_eq!(frames[1].payload.len(), SERVER_MAX_FRAME_SIZE);
        let blocks = header_blocks(&frames);
        assert_eq!((blocks[0].0, blocks[0].1), (5, true));
        assert_eq!(
            decode_fresh(&blocks[0].2),
            pairs(&[
                (":method", "GET"),
                (":scheme", "http"),
                (":path", "/"),
                (":authority", "127.0.0.1:2379"),
                ("x-big", &big),
            ])
        );
        assert_eq!(frames[3].payload, [1, 2, 3, 4, 5, 6, 7, 8]);
    }

    #[tokio::test]
    async fn test_large_data_frame_streams_byte_identical() {
        let payload: Vec<u8> = (0..200_000u32).map(|i| (i * 7 % 251) as u8).collect();
        let data = frame(0x0, 0x1, 1, &payload[..]);
        // The frame length field is 24 bits; 200,000 fits.
        let (mut client, server) = tokio::io::duplex(64 * 1024);
        let mut fix = AuthorityFix::new(server);
        tokio::time::timeout(TIMEOUT, async {
            client.write_all(CLIENT_PREFACE).await.unwrap();
            client.write_all(&data[..9 + 1000]).await.unwrap();
            // The first 1000 payload bytes come out before the rest of the
            // frame exists.
            let mut got = Vec::new();
            let mut chunk = vec![0u8; 64 * 1024];
            while got.len() < 24 + 9 + 1000 {
                let n = fix.read(&mut chunk).await.unwrap();
                assert_ne!(n, 0);
                got.extend_from_slice(&chunk[..n]);
            }
            assert_eq!(got.len(), 24 + 9 + 1000);
            let rest = data[9 + 1000..].to_vec();
            let writer = tokio::spawn(async move {
                client.write_all(&rest).await.unwrap();
                client.shutdown().await.unwrap();
            });
            fix.read_to_end(&mut got).await.unwrap();
            writer.await.unwrap();
            let mut expected = CLIENT_PREFACE.to_vec();
            expected.extend(&data);
            assert!(
                got == expected,
                "DATA frame must pass through byte-identical"
            );
        })
        .await
        .expect("timed out");
    }

    #[tokio::test]
    async fn test_non_h2_passes_through() {
        let http1 = b"GET / HTTP/1.1\r\nHost: http://x\r\n\r\n".repeat(1000);
        assert_eq!(run(http1.clone()).await.unwrap(), http1);
        // Shorter than the preface, and a preface prefix cut short.
        assert_eq!(run(b"PRI *".to_vec()).await.unwrap(), b"PRI *");
        assert_eq!(run(b"hello".to_vec()).await.unwrap(), b"hello");
        assert_eq!(run(Vec::new()).await.unwrap(), b"");
    }

    #[tokio::test]
    async fn test_bad_input_is_an_error_not_a_panic() {
        let mut too_big = CLIENT_PREFACE.to_vec();
        too_big.extend(frame(FRAME_HEADERS, 0, 1, &vec![0u8; 10_000]));
        for _ in 0..(MAX_HEADER_BLOCK_BYTES / 10_000) {
            too_big.extend(frame(FRAME_CONTINUATION, 0, 1, &vec![0u8; 10_000]));
        }
        let cases: Vec<(&str, Vec<u8>)> = vec![
            ("oversized header block", too_big),
            (
                "index out of range",
                [
                    &CLIENT_PREFACE[..],
                    &frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0xff, 0x7f]),
                ]
                .concat(),
            ),
            (
                "size update above limit",
                [
                    &CLIENT_PREFACE[..],
                    &frame(
                        FRAME_HEADERS,
                        FLAG_END_HEADERS,
                        1,
                        &[0x3f, 0xe1, 0xff, 0x03, 0x82],
                    ),
                ]
                .concat(),
            ),
            (
                "padding longer than payload",
                [
                    &CLIENT_PREFACE[..],
                    &frame(FRAME_HEADERS, FLAG_END_HEADERS | FLAG_PADDED, 1, &[9, 0x82]),
                ]
                .concat(),
            ),
            (
                "interleaved frame",
                [
                    &CLIENT_PREFACE[..],
                    &frame(FRAME_HEADERS, 0, 1, &[0x82]),
                    &frame(0x0, 0, 1, b"x"),
                ]
                .concat(),
            ),
            (
                "bad huffman",
                [
                    &CLIENT_PREFACE[..],
                    &frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &[0x41, 0x81, 0x00]),
                ]
                .concat(),
            ),
        ];
        for (name, input) in cases {
            let err = run(input).await.expect_err(name);
            assert_eq!(err.kind(), io::ErrorKind::InvalidData, "{name}: {err}");
        }
    }

    /// A header block referencing a large dynamic-table entry many times must
    /// not expand without bound.
    #[tokio::test]
    async fn test_decoded_header_list_is_bounded() {
        let mut block = vec![0x40];
        encode_string(&mut block, b"x-a");
        encode_string(&mut block, "a".repeat(4000).as_bytes());
        block.extend(std::iter::repeat_n(0xbe, 1000)); // ~4 MB decoded
        let input = [
            &CLIENT_PREFACE[..],
            &frame(FRAME_HEADERS, FLAG_END_HEADERS, 1, &block),
        ]
        .concat();
        let err = run(input).await.unwrap_err();
        assert!(err.to_string().contains("decoded header list"), "{err}");
    }
}

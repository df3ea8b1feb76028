//! HTTP/1.1 codec of the upstream fast path (sans-I/O): the request head
//! written to an endpoint, the response head read back (parsed with
//! `httparse` straight from the connection's read buffer), the response
//! body's framing (RFC 9112 §6.3) and the chunked decoder.
//!
//! Response framing, decided once per response head:
//!
//! ```text
//!   HEAD request, 1xx, 204, 304 ─────────────▶ Empty        (no body, whatever the headers say)
//!   Transfer-Encoding, final coding chunked ─▶ Chunked      (Content-Length ignored; not reused)
//!   Transfer-Encoding, other final coding ───▶ UntilClose   (not reused)
//!   Content-Length (all values equal) ───────▶ Length(n)
//!   Content-Length differing / not a number ─▶ error: invalid response head (502)
//!   nothing ─────────────────────────────────▶ UntilClose   (not reused)
//! ```
//!
//! A 1xx other than 101 is an interim response: it is skipped and the next
//! head is read. A connection is reused only for HTTP/1.1 without
//! `Connection: close`, with a body framed by length or chunks.
//!
//! Chunked decoder (`ChunkedDecoder`), one state per position in the
//! chunk grammar; every line is bounded by `MAX_CHUNK_LINE_BYTES`:
//!
//! ```text
//!   Size ─hex digits─▶ Size ─';'─▶ Ext ─LF─▶ (size 0 ? Trailer : Data(n))
//!   Data(n) ─n bytes─▶ DataEnd ─CRLF─▶ Size
//!   Trailer ─LF (empty line)─▶ Done ; Trailer ─field line─▶ TrailerLine ─LF─▶ Trailer
//! ```

use bytes::{Bytes, BytesMut};
use http::header::{HeaderMap, HeaderName, HeaderValue};
use http::{Method, StatusCode, Version};

/// Largest response head accepted from an endpoint; beyond → `502 bad
/// upstream response: response head too large`.
pub(crate) const MAX_RESPONSE_HEAD_BYTES: usize = 64 * 1024;
/// Most header fields in one response head.
pub(crate) const MAX_RESPONSE_HEADERS: usize = 128;
/// Longest chunk-size line (with extensions) or trailer line.
pub(crate) const MAX_CHUNK_LINE_BYTES: usize = 4096;

/// How the body of a response is delimited.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Framing {
    /// No body.
    Empty,
    /// Exactly this many bytes.
    Length(u64),
    /// Chunked transfer coding.
    Chunked,
    /// Until the endpoint closes the connection.
    UntilClose,
}

/// A parsed response head.
#[derive(Debug)]
pub(crate) struct ResponseHead {
    pub status: StatusCode,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: Framing,
    /// The connection may carry another request after this response.
    pub keep_alive: bool,
    /// Bytes of `buf` the head (with skipped interim responses) took.
    pub len: usize,
}

/// Why a response head was refused.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum HeadError {
    /// Larger than [`MAX_RESPONSE_HEAD_BYTES`] or too many fields.
    TooLarge,
    /// Not an HTTP/1.x status line.
    StatusLine,
    /// A malformed field, or framing that cannot be trusted.
    Invalid,
}

impl HeadError {
    /// Access-log `upstream_error` reason.
    pub fn reason(self) -> &'static str {
        match self {
            HeadError::TooLarge => "response head too large",
            HeadError::StatusLine => "invalid status line",
            HeadError::Invalid => "invalid response head",
        }
    }
}

/// Request fields the proxy adds before sending upstream
/// (`X-Forwarded-For`, `X-Forwarded-Proto`, `Via`): the parsed header map
/// is sized for them.
const PROXY_ADDED_FIELDS: usize = 3;

/// Parse the response head at the start of `buf`. `Ok(None)`: incomplete,
/// read more. `head_request`: the request was HEAD (no body follows).
pub(crate) fn parse_response_head(
    buf: &[u8],
    head_request: bool,
) -> Result<Option<ResponseHead>, HeadError> {
    let mut off = 0;
    loop {
        let rest = &buf[off..];
        let mut fields = [httparse::EMPTY_HEADER; MAX_RESPONSE_HEADERS];
        let mut r = httparse::Response::new(&mut fields);
        let n = match r.parse(rest) {
            Ok(httparse::Status::Complete(n)) => n,
            Ok(httparse::Status::Partial) => {
                return if buf.len() > MAX_RESPONSE_HEAD_BYTES {
                    Err(HeadError::TooLarge)
                } else {
                    Ok(None)
                };
            }
            Err(httparse::Error::TooManyHeaders) => return Err(HeadError::TooLarge),
            Err(httparse::Error::Version | httparse::Error::Status) => {
                return Err(HeadError::StatusLine)
            }
            Err(_) => return Err(HeadError::Invalid),
        };
        if off + n > MAX_RESPONSE_HEAD_BYTES {
            return Err(HeadError::TooLarge);
        }
        let code = r.code.ok_or(HeadError::StatusLine)?;
        let status = StatusCode::from_u16(code).map_err(|_| HeadError::StatusLine)?;
        if status.is_informational() && status != StatusCode::SWITCHING_PROTOCOLS {
            // Interim response (100 Continue, 103 Early Hints): skipped.
            off += n;
            continue;
        }
        let version = match r.version {
            Some(1) => Version::HTTP_11,
            _ => Version::HTTP_10,
        };
        let mut headers = response_header_map(r.headers.len());
        let mut content_length: Option<u64> = None;
        let mut te_final_chunked: Option<bool> = None;
        let mut close = version != Version::HTTP_11;
        // The field values are slices of one copy of the head's field
        // lines: one allocation per response instead of one per value.
        let fields_start = r
            .headers
            .first()
            .map(|f| offset_in(rest, f.name.as_bytes()))
            .filter(|&at| at < n)
            .unwrap_or(n);
        let fields = copy_fields(&rest[fields_start..n]);
        for f in r.headers.iter() {
            let name = HeaderName::from_bytes(f.name.as_bytes()).map_err(|_| HeadError::Invalid)?;
            let value = match offset_in(rest, f.value).checked_sub(fields_start) {
                Some(at)
                    if !f.value.is_empty()
                        && at
                            .checked_add(f.value.len())
                            .is_some_and(|end| end <= fields.len()) =>
                {
                    HeaderValue::from_maybe_shared(fields.slice(at..at + f.value.len()))
                }
                _ => HeaderValue::from_bytes(f.value),
            }
            .map_err(|_| HeadError::Invalid)?;
            if name == http::header::CONTENT_LENGTH {
                for part in value.to_str().map_err(|_| HeadError::Invalid)?.split(',') {
                    let v = parse_content_length(part.trim()).ok_or(HeadError::Invalid)?;
                    if content_length.is_some_and(|c| c != v) {
                        return Err(HeadError::Invalid);
                    }
                    content_length = Some(v);
                }
            } else if name == http::header::TRANSFER_ENCODING {
                let last = value
                    .to_str()
                    .map_err(|_| HeadError::Invalid)?
                    .rsplit(',')
                    .map(str::trim)
                    .find(|c| !c.is_empty());
                te_final_chunked = Some(last.is_some_and(|c| c.eq_ignore_ascii_case("chunked")));
            } else if name == http::header::CONNECTION {
                let v = value.to_str().unwrap_or("");
                if v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")) {
                    close = true;
                }
            }
            headers.append(name, value);
        }
        let no_body = head_request
            || status.is_informational()
            || status == StatusCode::NO_CONTENT
            || status == StatusCode::NOT_MODIFIED;
        let framing = if no_body {
            Framing::Empty
        } else {
            match (te_final_chunked, content_length) {
                (Some(true), cl) => {
                    // Both: Transfer-Encoding wins and the connection is
                    // not trusted for another message (RFC 9112 §6.3).
                    if cl.is_some() {
                        close = true;
                    }
                    Framing::Chunked
                }
                (Some(false), _) | (None, None) => Framing::UntilClose,
                (None, Some(0)) => Framing::Empty,
                (None, Some(n)) => Framing::Length(n),
            }
        };
        let keep_alive =
            !close && status != StatusCode::SWITCHING_PROTOCOLS && framing != Framing::UntilClose;
        return Ok(Some(ResponseHead {
            status,
            version,
            headers,
            framing,
            keep_alive,
            len: off + n,
        }));
    }
}

/// Recycled response header maps kept per thread (each keeps its room).
const RECYCLED_HEADER_MAPS: usize = 64;
/// A map with room for more fields than this is not recycled (bounds the
/// memory kept per thread).
const RECYCLED_MAP_MAX_FIELDS: usize = 64;
/// Field lines of a response head up to this size are copied into one
/// allocation together with their reference count; longer ones take two.
const INLINE_FIELDS_BYTES: usize = 512;

thread_local! {
    static HEADER_MAPS: std::cell::RefCell<Vec<HeaderMap>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// An empty header map with room for `fields`: a recycled one (its two
/// allocations reused) when the thread has one.
fn response_header_map(fields: usize) -> HeaderMap {
    let recycled = HEADER_MAPS
        .try_with(|m| m.borrow_mut().pop())
        .ok()
        .flatten();
    match recycled {
        Some(mut h) => {
            h.reserve(fields);
            h
        }
        None => HeaderMap::with_capacity(fields),
    }
}

/// Give a response's header map back once its head is written: the next
/// parsed response head reuses its allocations.
pub(crate) fn recycle_header_map(mut h: HeaderMap) {
    if h.capacity() > RECYCLED_MAP_MAX_FIELDS {
        return;
    }
    h.clear();
    let _ = HEADER_MAPS.try_with(|m| {
        let mut m = m.borrow_mut();
        if m.len() < RECYCLED_HEADER_MAPS {
            m.push(h);
        }
    });
}

/// Up to [`INLINE_FIELDS_BYTES`] of field lines, owned inline.
struct InlineFields {
    len: usize,
    buf: [u8; INLINE_FIELDS_BYTES],
}

impl AsRef<[u8]> for InlineFields {
    fn as_ref(&self) -> &[u8] {
        &self.buf[..self.len]
    }
}

/// A shareable copy of a head's field lines (the values are slices of it).
fn copy_fields(src: &[u8]) -> Bytes {
    if src.len() > INLINE_FIELDS_BYTES {
        // A Vec's bytes: its slices share them after one more allocation.
        return Bytes::copy_from_slice(src);
    }
    let mut f = InlineFields {
        len: src.len(),
        buf: [0; INLINE_FIELDS_BYTES],
    };
    f.buf[..src.len()].copy_from_slice(src);
    Bytes::from_owner(f)
}

/// Where `part` (a slice httparse returned) starts within `buf`.
/// (Callers check the result against the length: an empty slice need not
/// point into `buf`.)
fn offset_in(buf: &[u8], part: &[u8]) -> usize {
    (part.as_ptr() as usize).wrapping_sub(buf.as_ptr() as usize)
}

/// `1*DIGIT` as a u64 (no sign, no spaces, no overflow).
pub(crate) fn parse_content_length(s: &str) -> Option<u64> {
    if s.is_empty() || s.len() > 19 || !s.bytes().all(|b| b.is_ascii_digit()) {
        return None;
    }
    s.parse().ok()
}

/// How the request body is sent to the endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestFraming {
    /// No body; a `Content-Length` of the client is kept as it was.
    None,
    /// `Content-Length: n` (the client's, if any, is replaced).
    Length(u64),
}

/// Write the request head into `out` (cleared first): request line with
/// `target` (origin form), the headers as given except framing fields,
/// which follow `framing`; Host is `host_override` when given (in place of
/// the headers' own), else the headers' Host, else `host_fallback`.
pub(crate) fn encode_request_head(
    out: &mut Vec<u8>,
    method: &Method,
    target: &[&str],
    headers: &HeaderMap,
    host_override: Option<&str>,
    host_fallback: &str,
    framing: RequestFraming,
) {
    out.clear();
    out.extend_from_slice(method.as_str().as_bytes());
    out.push(b' ');
    for t in target {
        out.extend_from_slice(t.as_bytes());
    }
    out.extend_from_slice(b" HTTP/1.1\r\n");
    let host =
        host_override.or((!headers.contains_key(http::header::HOST)).then_some(host_fallback));
    if let Some(host) = host {
        out.extend_from_slice(b"host: ");
        out.extend_from_slice(host.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    for (name, value) in headers {
        if name == http::header::TRANSFER_ENCODING
            || (name == http::header::CONTENT_LENGTH && framing != RequestFraming::None)
            || (name == http::header::HOST && host_override.is_some())
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        RequestFraming::None => {}
        RequestFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
    }
    out.extend_from_slice(b"\r\n");
}

/// What one step of the chunked decoder produced.
#[derive(Debug, PartialEq, Eq)]
pub(crate) enum Decoded {
    /// Body bytes (split off the read buffer, no copy).
    Data(Bytes),
    /// The buffer holds no complete next element: read more.
    NeedMore,
    /// The last chunk and the trailer section have been consumed.
    Done,
}

/// A malformed chunked body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ChunkError(pub &'static str);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the chunk size; `digits` so far.
    Size {
        size: u64,
        digits: u8,
    },
    /// After the size: extensions or CR, until LF.
    Ext {
        size: u64,
    },
    Data {
        left: u64,
    },
    /// After the data: CR LF.
    DataEnd {
        cr: bool,
    },
    /// At the start of a trailer line (or the final empty line).
    Trailer,
    TrailerLine,
    Done,
}

/// Incremental decoder of a chunked body (see the module documentation).
#[derive(Debug)]
pub(crate) struct ChunkedDecoder {
    state: ChunkState,
    /// Bytes of the current size/extension or trailer line.
    line: usize,
}

impl Default for ChunkedDecoder {
    fn default() -> Self {
        ChunkedDecoder {
            state: ChunkState::Size { size: 0, digits: 0 },
            line: 0,
        }
    }
}

impl ChunkedDecoder {
    /// Consume from `buf` up to the next body bytes or the end.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Decoded, ChunkError> {
        let mut i = 0;
        let result = loop {
            if let ChunkState::Data { left } = self.state {
                let _ = buf.split_to(i);
                i = 0;
                if buf.is_empty() {
                    break Ok(Decoded::NeedMore);
                }
                let n = (left as usize).min(buf.len());
                let data = buf.split_to(n).freeze();
                self.state = if left == n as u64 {
                    ChunkState::DataEnd { cr: false }
                } else {
                    ChunkState::Data {
                        left: left - n as u64,
                    }
                };
                return Ok(Decoded::Data(data));
            }
            if self.state == ChunkState::Done {
                break Ok(Decoded::Done);
            }
            let Some(&b) = buf.get(i) else {
                break Ok(Decoded::NeedMore);
            };
            i += 1;
            self.line += 1;
            if self.line > MAX_CHUNK_LINE_BYTES {
                break Err(ChunkError("chunk line too long"));
            }
            self.state = match self.state {
                ChunkState::Size { size, digits } => match (b as char).to_digit(16) {
                    Some(d) if digits < 16 => ChunkState::Size {
                        size: size << 4 | u64::from(d),
                        digits: digits + 1,
                    },
                    Some(_) => break Err(ChunkError("chunk size too large")),
                    None if digits == 0 => break Err(ChunkError("chunk size missing")),
                    None if b == b';' || b == b'\r' || b == b' ' || b == b'\t' => {
                        ChunkState::Ext { size }
                    }
                    None if b == b'\n' => self.end_size_line(size),
                    None => break Err(ChunkError("invalid chunk size")),
                },
                ChunkState::Ext { size } => {
                    if b == b'\n' {
                        self.end_size_line(size)
                    } else {
                        ChunkState::Ext { size }
                    }
                }
                ChunkState::DataEnd { cr } => match b {
                    b'\r' if !cr => ChunkState::DataEnd { cr: true },
                    b'\n' => {
                        self.line = 0;
                        ChunkState::Size { size: 0, digits: 0 }
                    }
                    _ => break Err(ChunkError("missing CRLF after chunk data")),
                },
                ChunkState::Trailer => match b {
                    b'\r' => ChunkState::Trailer,
                    b'\n' => ChunkState::Done,
                    _ => ChunkState::TrailerLine,
                },
                ChunkState::TrailerLine => {
                    if b == b'\n' {
                        self.line = 0;
                        ChunkState::Trailer
                    } else {
                        ChunkState::TrailerLine
                    }
                }
                ChunkState::Data { .. } | ChunkState::Done => unreachable!("handled above"),
            };
        };
        let _ = buf.split_to(i.min(buf.len()));
        result
    }

    fn end_size_line(&mut self, size: u64) -> ChunkState {
        self.line = 0;
        if size == 0 {
            ChunkState::Trailer
        } else {
            ChunkState::Data { left: size }
        }
    }
}

/// Most header fields in one request head; more → `431`.
pub(crate) const MAX_REQUEST_HEADERS: usize = 128;

/// How the body of a request is delimited (RFC 9112 §6.3: a request
/// without `Content-Length` or `Transfer-Encoding` has no body).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestBodyFraming {
    /// No body.
    Empty,
    /// `Content-Length: n` (n > 0).
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
}

/// A parsed and validated request head.
#[derive(Debug)]
pub(crate) struct RequestHead {
    pub method: Method,
    pub uri: http::Uri,
    pub version: Version,
    pub headers: HeaderMap,
    pub framing: RequestBodyFraming,
    /// The client may send another request on the connection.
    pub keep_alive: bool,
    /// `Expect: 100-continue`.
    pub expect_continue: bool,
    /// `Upgrade` (HTTP/1.1) or CONNECT: served by hyper's server instead.
    pub upgrade_or_connect: bool,
    /// Bytes of the buffer the head took.
    pub len: usize,
}

/// Why a request head was refused; every refusal closes the connection.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum RequestError {
    /// `431`: the head is larger than `max_header_bytes` or has too many fields.
    TooLarge,
    /// `400`: malformed, or framing that could be read two ways.
    Bad(&'static str),
    /// `501`: a transfer coding other than chunked.
    NotImplemented(&'static str),
}

/// Parse and validate the request head at the start of `buf` (at most
/// `max_head_bytes`). `Ok(None)`: incomplete, read more.
///
/// Request smuggling defences (RFC 9112 §6.1, §6.3), each a `400` that
/// closes the connection, so an ambiguous request is never forwarded:
/// `Transfer-Encoding` together with `Content-Length`; more than one
/// `Content-Length` (also equal values, also as a list); a `Content-Length`
/// that is not a plain decimal number; `Transfer-Encoding` in HTTP/1.0;
/// `chunked` not the final coding, or applied twice (a coding other than
/// chunked alone is `501`); obs-fold (a field line starting with
/// whitespace) and invalid field names or values (httparse refuses them);
/// no `Host` in HTTP/1.1, or more than one `Host`.
pub(crate) fn parse_request_head(
    buf: &[u8],
    max_head_bytes: usize,
) -> Result<Option<RequestHead>, RequestError> {
    let mut fields = [httparse::EMPTY_HEADER; MAX_REQUEST_HEADERS];
    let mut r = httparse::Request::new(&mut fields);
    let n = match r.parse(buf) {
        Ok(httparse::Status::Complete(n)) => n,
        Ok(httparse::Status::Partial) => {
            return if buf.len() > max_head_bytes {
                Err(RequestError::TooLarge)
            } else {
                Ok(None)
            };
        }
        Err(httparse::Error::TooManyHeaders) => return Err(RequestError::TooLarge),
        Err(httparse::Error::HeaderName) => return Err(RequestError::Bad("invalid header name")),
        Err(httparse::Error::HeaderValue) => return Err(RequestError::Bad("invalid header value")),
        Err(httparse::Error::Version) => return Err(RequestError::Bad("invalid HTTP version")),
        Err(_) => return Err(RequestError::Bad("invalid request line")),
    };
    if n > max_head_bytes {
        return Err(RequestError::TooLarge);
    }
    let version = match r.version {
        Some(1) => Version::HTTP_11,
        _ => Version::HTTP_10,
    };
    let method = Method::from_bytes(r.method.unwrap_or("").as_bytes())
        .map_err(|_| RequestError::Bad("invalid method"))?;
    let target = r.path.unwrap_or("");
    let uri: http::Uri = target
        .parse()
        .map_err(|_| RequestError::Bad("invalid request target"))?;
    // Room for the fields the proxy adds (X-Forwarded-For, -Proto, Via):
    // the map is not grown again on the way upstream.
    let mut headers = HeaderMap::with_capacity(r.headers.len() + PROXY_ADDED_FIELDS);
    let mut content_length: Option<u64> = None;
    let mut te: Option<RequestBodyFraming> = None;
    let mut hosts = 0;
    let mut close = false;
    let mut keep_alive_10 = false;
    let mut expect_continue = false;
    let mut upgrade = false;
    for f in r.headers.iter() {
        let name = HeaderName::from_bytes(f.name.as_bytes())
            .map_err(|_| RequestError::Bad("invalid header name"))?;
        let value = HeaderValue::from_bytes(f.value)
            .map_err(|_| RequestError::Bad("invalid header value"))?;
        if name == http::header::CONTENT_LENGTH {
            let v = value
                .to_str()
                .ok()
                .and_then(|v| parse_content_length(v.trim()))
                .ok_or(RequestError::Bad("invalid Content-Length"))?;
            if content_length.replace(v).is_some() {
                return Err(RequestError::Bad("more than one Content-Length"));
            }
        } else if name == http::header::TRANSFER_ENCODING {
            if version != Version::HTTP_11 {
                return Err(RequestError::Bad("Transfer-Encoding in HTTP/1.0"));
            }
            let v = value
                .to_str()
                .map_err(|_| RequestError::Bad("invalid Transfer-Encoding"))?;
            for coding in v.split(',').map(str::trim) {
                if te.is_some() {
                    // Anything after chunked (another coding, or chunked twice).
                    return Err(RequestError::Bad(
                        "chunked is not the final transfer coding",
                    ));
                }
                if coding.eq_ignore_ascii_case("chunked") {
                    te = Some(RequestBodyFraming::Chunked);
                } else if coding.is_empty() {
                    return Err(RequestError::Bad("invalid Transfer-Encoding"));
                } else {
                    return Err(RequestError::NotImplemented(
                        "transfer codings other than chunked are not supported",
                    ));
                }
            }
        } else if name == http::header::HOST {
            hosts += 1;
        } else if name == http::header::CONNECTION {
            let v = value.to_str().unwrap_or("");
            for t in v.split(',').map(str::trim) {
                if t.eq_ignore_ascii_case("close") {
                    close = true;
                } else if t.eq_ignore_ascii_case("keep-alive") {
                    keep_alive_10 = true;
                }
            }
        } else if name == http::header::EXPECT {
            expect_continue = value.as_bytes().eq_ignore_ascii_case(b"100-continue");
        } else if name == http::header::UPGRADE {
            upgrade = version == Version::HTTP_11;
        }
        headers.append(name, value);
    }
    let framing = match (te, content_length) {
        (Some(_), Some(_)) => {
            return Err(RequestError::Bad(
                "Transfer-Encoding together with Content-Length",
            ))
        }
        (Some(f), None) => f,
        (None, Some(0)) | (None, None) => RequestBodyFraming::Empty,
        (None, Some(n)) => RequestBodyFraming::Length(n),
    };
    if hosts > 1 {
        return Err(RequestError::Bad("more than one Host"));
    }
    if hosts == 0 && version == Version::HTTP_11 {
        return Err(RequestError::Bad("missing Host"));
    }
    let keep_alive = if version == Version::HTTP_11 {
        !close
    } else {
        keep_alive_10 && !close
    };
    Ok(Some(RequestHead {
        upgrade_or_connect: upgrade || method == Method::CONNECT,
        method,
        uri,
        version,
        headers,
        framing,
        keep_alive,
        expect_continue,
        len: n,
    }))
}

/// Write a response head into `out` (cleared first): status line, the
/// headers except framing and connection fields, then `framing`'s field and
/// `Connection: close` when `close`.
pub(crate) fn encode_response_head(
    out: &mut Vec<u8>,
    status: StatusCode,
    headers: &HeaderMap,
    framing: ResponseFraming,
    close: bool,
) {
    out.clear();
    out.extend_from_slice(b"HTTP/1.1 ");
    out.extend_from_slice(status.as_str().as_bytes());
    out.push(b' ');
    out.extend_from_slice(status.canonical_reason().unwrap_or("Unknown").as_bytes());
    out.extend_from_slice(b"\r\n");
    for (name, value) in headers {
        if name == http::header::TRANSFER_ENCODING
            || name == http::header::CONNECTION
            || (name == http::header::CONTENT_LENGTH && framing != ResponseFraming::AsIs)
        {
            continue;
        }
        out.extend_from_slice(name.as_str().as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value.as_bytes());
        out.extend_from_slice(b"\r\n");
    }
    match framing {
        ResponseFraming::AsIs | ResponseFraming::UntilClose => {}
        ResponseFraming::Length(n) => {
            out.extend_from_slice(b"content-length: ");
            push_decimal(out, n);
            out.extend_from_slice(b"\r\n");
        }
        ResponseFraming::Chunked => out.extend_from_slice(b"transfer-encoding: chunked\r\n"),
    }
    if close {
        out.extend_from_slice(b"connection: close\r\n");
    }
    out.extend_from_slice(b"\r\n");
}

/// Append `n` in decimal, formatted straight into `out` (no temporary
/// string: this runs for every response).
fn push_decimal(out: &mut Vec<u8>, n: u64) {
    use std::io::Write;
    write!(out, "{n}").expect("writing to a Vec cannot fail");
}

/// How a response body is delimited towards the client.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ResponseFraming {
    /// No body is sent (HEAD, 1xx, 204, 304): the headers stay as they are.
    AsIs,
    /// `Content-Length: n`.
    Length(u64),
    /// `Transfer-Encoding: chunked`.
    Chunked,
    /// Until the connection closes (HTTP/1.0 client, unknown length).
    UntilClose,
}

/// Fuzzing entry point (`crates/fuzz/tests/gateway_http1_head.rs`): parse
/// `input` as a request head (limit `max_head_bytes`), then decode what
/// follows as the body it declares. Panics when an invariant breaks: an
/// accepted head never carries both `Transfer-Encoding` and
/// `Content-Length`, more than one `Content-Length` or (HTTP/1.1) other than
/// one `Host`; its length is within the input and the limit; a chunked body
/// decodes the same whether it arrives at once or byte by byte.
pub fn fuzz_request_head(input: &[u8], max_head_bytes: usize) {
    let Ok(Some(h)) = parse_request_head(input, max_head_bytes) else {
        return;
    };
    assert!(h.len <= input.len() && h.len <= max_head_bytes);
    let count = |n: &http::header::HeaderName| h.headers.get_all(n).iter().count();
    let (cl, te) = (
        count(&http::header::CONTENT_LENGTH),
        count(&http::header::TRANSFER_ENCODING),
    );
    assert!(cl <= 1, "accepted {cl} Content-Length fields");
    assert!(
        !(cl > 0 && te > 0),
        "accepted Transfer-Encoding with Content-Length"
    );
    if h.version == Version::HTTP_11 {
        assert_eq!(
            count(&http::header::HOST),
            1,
            "HTTP/1.1 without exactly one Host"
        );
    }
    match h.framing {
        RequestBodyFraming::Length(n) => {
            let v = h.headers[http::header::CONTENT_LENGTH].to_str().unwrap();
            assert_eq!(v.trim().parse::<u64>().ok(), Some(n));
        }
        RequestBodyFraming::Chunked => {
            assert!(te > 0);
            check_chunked_split_invariance(&input[h.len..]);
        }
        RequestBodyFraming::Empty => assert!(te == 0),
    }
}

/// Fuzzing entry point: parse `input` as a response head (to a GET and to a
/// HEAD), then decode a chunked body as in [`fuzz_request_head`]. Panics when
/// an invariant breaks (length within the input and the limit, framing
/// consistent with the fields).
pub fn fuzz_response_head(input: &[u8]) {
    for head_request in [false, true] {
        let Ok(Some(h)) = parse_response_head(input, head_request) else {
            continue;
        };
        assert!(h.len <= input.len() && h.len <= MAX_RESPONSE_HEAD_BYTES);
        match h.framing {
            Framing::Length(n) => {
                assert!(n > 0 && !head_request);
                for v in h.headers.get_all(http::header::CONTENT_LENGTH) {
                    for part in v.to_str().unwrap().split(',') {
                        assert_eq!(part.trim().parse::<u64>().ok(), Some(n));
                    }
                }
            }
            Framing::Chunked => check_chunked_split_invariance(&input[h.len..]),
            Framing::UntilClose => assert!(!h.keep_alive),
            Framing::Empty => {}
        }
    }
}

/// Decode `body` at once and byte by byte: the same data, the same end.
fn check_chunked_split_invariance(body: &[u8]) {
    let run = |step: usize| -> (Vec<u8>, Result<usize, ChunkError>) {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for piece in body.chunks(step) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                match d.decode(&mut buf) {
                    Ok(Decoded::Data(b)) => {
                        assert!(!b.is_empty(), "empty data frame");
                        out.extend_from_slice(&b);
                    }
                    Ok(Decoded::NeedMore) => break,
                    Ok(Decoded::Done) => return (out, Ok(buf.len() + body.len() - fed)),
                    Err(e) => return (out, Err(e)),
                }
            }
        }
        (out, Err(ChunkError("incomplete")))
    };
    if body.is_empty() {
        return;
    }
    let whole = run(body.len());
    let bytewise = run(1);
    match (&whole.1, &bytewise.1) {
        // An error may be found earlier byte by byte only in data already
        // produced; both must agree on failure or success and the data.
        (Ok(_), Ok(_)) => assert_eq!(whole, bytewise),
        (Err(_), Err(_)) => {
            assert!(whole.0.starts_with(&bytewise.0) || bytewise.0.starts_with(&whole.0))
        }
        _ => panic!("split changed the verdict: {whole:?} vs {bytewise:?}"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn head(s: &str) -> Result<Option<ResponseHead>, HeadError> {
        parse_response_head(s.as_bytes(), false)
    }

    #[test]
    fn framing_follows_rfc_9112() {
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.framing, h.keep_alive, h.len),
            (Framing::Length(5), true, 38)
        );
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip, chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, true));
        // TE and CL: chunked wins, connection not reused.
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 3\r\nTransfer-Encoding: chunked\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Chunked, false));
        let h = head("HTTP/1.1 200 OK\r\nTransfer-Encoding: gzip\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 200 OK\r\n\r\n").unwrap().unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::UntilClose, false));
        let h = head("HTTP/1.1 304 Not Modified\r\nContent-Length: 9\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Empty, true));
        let h = parse_response_head(b"HTTP/1.1 200 OK\r\nContent-Length: 9\r\n\r\n", true)
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, Framing::Empty);
        let h = head("HTTP/1.1 200 OK\r\nContent-Length: 4, 4\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!((h.framing, h.keep_alive), (Framing::Length(4), false));
        let h = head("HTTP/1.0 200 OK\r\nContent-Length: 4\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(!h.keep_alive, "HTTP/1.0 connections are not reused");
    }

    #[test]
    fn ambiguous_or_malformed_heads_are_refused() {
        for (raw, want) in [
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
                HeadError::Invalid,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: 4, 5\r\n\r\n",
                HeadError::Invalid,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: +4\r\n\r\n",
                HeadError::Invalid,
            ),
            (
                "HTTP/1.1 200 OK\r\nContent-Length: \r\n\r\n",
                HeadError::Invalid,
            ),
            ("HTTP/1.1 200 OK\r\nBad Name: x\r\n\r\n", HeadError::Invalid),
            ("HTTP/1.1 200 OK\r\nX: a\r\n b\r\n\r\n", HeadError::Invalid),
            ("garbage\r\n\r\n", HeadError::StatusLine),
            ("HTTP/1.1 2000 OK\r\n\r\n", HeadError::StatusLine),
        ] {
            assert_eq!(head(raw).err(), Some(want), "{raw:?}");
        }
        assert!(head("HTTP/1.1 200 OK\r\nContent-Le").unwrap().is_none());
        let big = format!(
            "HTTP/1.1 200 OK\r\nX: {}",
            "a".repeat(MAX_RESPONSE_HEAD_BYTES)
        );
        assert_eq!(head(&big).err(), Some(HeadError::TooLarge));
    }

    #[test]
    fn interim_responses_are_skipped() {
        let raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 103 Early Hints\r\nLink: </a>\r\n\r\nHTTP/1.1 201 Created\r\nContent-Length: 0\r\n\r\n";
        let h = head(raw).unwrap().unwrap();
        assert_eq!(h.status, StatusCode::CREATED);
        assert_eq!(h.len, raw.len());
        assert!(head("HTTP/1.1 100 Continue\r\n\r\nHTTP/1.1 2")
            .unwrap()
            .is_none());
    }

    #[test]
    fn request_head_replaces_framing_fields() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("99"));
        h.insert("transfer-encoding", HeaderValue::from_static("chunked"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        encode_request_head(
            &mut out,
            &Method::POST,
            &["/p", "/x?q=1"],
            &h,
            None,
            "10.0.0.1:80",
            RequestFraming::Length(3),
        );
        assert_eq!(
            String::from_utf8(out).unwrap(),
            "POST /p/x?q=1 HTTP/1.1\r\nhost: 10.0.0.1:80\r\nx-a: 1\r\ncontent-length: 3\r\n\r\n"
        );
    }

    /// A fallback provider's `host_header` replaces the client's Host; the
    /// client's Host is kept otherwise (the endpoint address is only the
    /// fallback for a request without one).
    #[test]
    fn request_head_host_override_and_fallback() {
        let mut h = HeaderMap::new();
        h.insert("host", HeaderValue::from_static("client.example"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        let enc = |out: &mut Vec<u8>, host: Option<&str>| {
            encode_request_head(
                out,
                &Method::GET,
                &["", "/"],
                &h,
                host,
                "10.0.0.1:80",
                RequestFraming::None,
            );
            String::from_utf8(out.clone()).unwrap()
        };
        assert_eq!(
            enc(&mut out, Some("provider.example")),
            "GET / HTTP/1.1\r\nhost: provider.example\r\nx-a: 1\r\n\r\n"
        );
        assert_eq!(
            enc(&mut out, None),
            "GET / HTTP/1.1\r\nhost: client.example\r\nx-a: 1\r\n\r\n"
        );
    }

    fn decode_all(input: &[u8], step: usize) -> Result<(Vec<u8>, usize), ChunkError> {
        let mut d = ChunkedDecoder::default();
        let mut buf = BytesMut::new();
        let mut out = Vec::new();
        let mut fed = 0;
        for piece in input.chunks(step.max(1)) {
            buf.extend_from_slice(piece);
            fed += piece.len();
            loop {
                match d.decode(&mut buf)? {
                    Decoded::Data(b) => out.extend_from_slice(&b),
                    Decoded::NeedMore => break,
                    // What follows the body: left in the buffer or not fed yet.
                    Decoded::Done => return Ok((out, buf.len() + input.len() - fed)),
                }
            }
        }
        Err(ChunkError("incomplete"))
    }

    #[test]
    fn chunked_bodies_decode_in_any_split() {
        let body = b"5;ext=1\r\nhello\r\n6\r\n world\r\n0\r\nX-T: 1\r\n\r\nNEXT";
        for step in 1..body.len() {
            let (out, left) = decode_all(body, step).unwrap();
            assert_eq!(out, b"hello world");
            assert_eq!(left, 4, "bytes after the body stay in the buffer");
        }
        assert_eq!(decode_all(b"0\n\n", 1).unwrap().0, b"");
        for bad in [
            &b"x\r\n"[..],
            b"\r\n",
            b"5\r\nhelloXX",
            b"11111111111111111\r\n",
        ] {
            assert!(decode_all(bad, 3).is_err(), "{bad:?}");
        }
        let long = format!("1;{}\r\n", "e".repeat(MAX_CHUNK_LINE_BYTES));
        assert_eq!(
            decode_all(long.as_bytes(), 100).err(),
            Some(ChunkError("chunk line too long"))
        );
    }

    fn req(s: &str) -> Result<Option<RequestHead>, RequestError> {
        parse_request_head(s.as_bytes(), 8192)
    }

    #[test]
    fn request_framing_and_connection_handling() {
        let h = req("POST /a?b=1 HTTP/1.1\r\nHost: x\r\nContent-Length: 5\r\n\r\nhello")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, RequestBodyFraming::Length(5));
        assert_eq!((h.uri.path(), h.uri.query()), ("/a", Some("b=1")));
        assert!(h.keep_alive && !h.expect_continue && !h.upgrade_or_connect);
        let h = req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: Chunked\r\nExpect: 100-continue\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(h.framing, RequestBodyFraming::Chunked);
        assert!(h.expect_continue);
        let h = req("GET / HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
            .unwrap()
            .unwrap();
        assert_eq!(
            (h.framing, h.keep_alive),
            (RequestBodyFraming::Empty, false)
        );
        let h = req("GET / HTTP/1.0\r\n\r\n").unwrap().unwrap();
        assert!(
            !h.keep_alive,
            "HTTP/1.0 closes unless it asks for keep-alive"
        );
        let h = req("GET / HTTP/1.0\r\nConnection: keep-alive\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.keep_alive);
        let h =
            req("GET /ws HTTP/1.1\r\nHost: x\r\nConnection: Upgrade\r\nUpgrade: websocket\r\n\r\n")
                .unwrap()
                .unwrap();
        assert!(h.upgrade_or_connect);
        let h = req("CONNECT db:5432 HTTP/1.1\r\nHost: db:5432\r\n\r\n")
            .unwrap()
            .unwrap();
        assert!(h.upgrade_or_connect);
        assert!(req("GET / HTTP/1.1\r\nHost: x\r\n").unwrap().is_none());
    }

    /// Request smuggling defences (RFC 9112 §6.1, §6.3, §5.2, §3.2): each
    /// ambiguous head is refused, never forwarded.
    #[test]
    fn ambiguous_request_framing_is_refused() {
        let bad = |s: &str, why: &'static str| {
            assert_eq!(req(s).err(), Some(RequestError::Bad(why)), "{s:?}");
        };
        // TE.CL / CL.TE.
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding together with Content-Length",
        );
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nContent-Length: 4\r\n\r\n",
            "Transfer-Encoding together with Content-Length",
        );
        // Duplicate Content-Length, equal or not, as fields or as a list.
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 5\r\n\r\n",
            "more than one Content-Length",
        );
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4\r\nContent-Length: 4\r\n\r\n",
            "more than one Content-Length",
        );
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nContent-Length: 4, 4\r\n\r\n",
            "invalid Content-Length",
        );
        for v in ["+4", "-1", "0x4", "4 4", "", "99999999999999999999"] {
            bad(
                &format!("POST / HTTP/1.1\r\nHost: x\r\nContent-Length: {v}\r\n\r\n"),
                "invalid Content-Length",
            );
        }
        // chunked must be the final coding, once.
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked, gzip\r\n\r\n",
            "chunked is not the final transfer coding",
        );
        bad(
            "POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\nTransfer-Encoding: chunked\r\n\r\n",
            "chunked is not the final transfer coding",
        );
        bad(
            "POST / HTTP/1.0\r\nTransfer-Encoding: chunked\r\n\r\n",
            "Transfer-Encoding in HTTP/1.0",
        );
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip\r\n\r\n"),
            Err(RequestError::NotImplemented(_))
        ));
        assert!(matches!(
            req("POST / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: gzip, chunked\r\n\r\n"),
            Err(RequestError::NotImplemented(_))
        ));
        // obs-fold and invalid field names / values.
        bad(
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: 1\r\n  folded\r\n\r\n",
            "invalid header name",
        );
        bad(
            "GET / HTTP/1.1\r\nHost: x\r\nTransfer-Encoding : chunked\r\n\r\n",
            "invalid header name",
        );
        bad(
            "GET / HTTP/1.1\r\nHost: x\r\nX(A): 1\r\n\r\n",
            "invalid header name",
        );
        bad(
            "GET / HTTP/1.1\r\nHost: x\r\nX-A: a\x01b\r\n\r\n",
            "invalid header value",
        );
        // Host: exactly one in HTTP/1.1.
        bad("GET / HTTP/1.1\r\n\r\n", "missing Host");
        bad(
            "GET / HTTP/1.1\r\nHost: a\r\nHost: b\r\n\r\n",
            "more than one Host",
        );
        // Request line.
        bad("THIS IS NOT HTTP\r\n\r\n", "invalid HTTP version");
        bad("GET / HTTP/2.0\r\n\r\n", "invalid HTTP version");
        assert!(req("GET  / HTTP/1.1\r\nHost: x\r\n\r\n").is_err());
        // Size: a head over the limit (complete or not) is 431.
        let big = format!(
            "GET / HTTP/1.1\r\nHost: x\r\nX: {}\r\n\r\n",
            "a".repeat(9000)
        );
        assert_eq!(req(&big).err(), Some(RequestError::TooLarge));
        assert_eq!(req(&big[..8500]).err(), Some(RequestError::TooLarge));
        let many: String = (0..=MAX_REQUEST_HEADERS)
            .map(|i| format!("X{i}: 1\r\n"))
            .collect();
        assert_eq!(
            req(&format!("GET / HTTP/1.1\r\nHost: x\r\n{many}\r\n")).err(),
            Some(RequestError::TooLarge)
        );
    }

    #[test]
    fn response_head_framing_fields_follow_the_body() {
        let mut h = HeaderMap::new();
        h.insert("content-length", HeaderValue::from_static("7"));
        h.insert("connection", HeaderValue::from_static("keep-alive"));
        h.insert("x-a", HeaderValue::from_static("1"));
        let mut out = Vec::new();
        encode_response_head(&mut out, StatusCode::OK, &h, ResponseFraming::Chunked, true);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\nx-a: 1\r\ntransfer-encoding: chunked\r\nconnection: close\r\n\r\n"
        );
        encode_response_head(&mut out, StatusCode::OK, &h, ResponseFraming::AsIs, false);
        assert_eq!(
            String::from_utf8(out.clone()).unwrap(),
            "HTTP/1.1 200 OK\r\ncontent-length: 7\r\nx-a: 1\r\n\r\n"
        );
        // The Content-Length written is the body's, in plain decimal.
        for (n, text) in [
            (0, "0"),
            (7, "7"),
            (10, "10"),
            (u64::MAX, "18446744073709551615"),
        ] {
            encode_response_head(
                &mut out,
                StatusCode::OK,
                &h,
                ResponseFraming::Length(n),
                false,
            );
            let want = format!("HTTP/1.1 200 OK\r\nx-a: 1\r\ncontent-length: {text}\r\n\r\n");
            assert_eq!(String::from_utf8(out.clone()).unwrap(), want);
        }
    }

    /// Response field values (slices of one copy of the head) come through
    /// byte for byte: empty values, repeated names, obs-text, values after
    /// a skipped interim response, and the head's buffer reused afterwards.
    #[test]
    fn response_field_values_are_kept_exactly() {
        let mut buf = b"HTTP/1.1 103 Early Hints\r\nlink: </a>\r\n\r\n\
HTTP/1.1 200 OK\r\nx-empty:\r\nset-cookie: a=1\r\nx-obs: caf\xe9 \t x\r\n\
set-cookie: b=2\r\ncontent-length: 3\r\n\r\nabc"
            .to_vec();
        let h = parse_response_head(&buf, false).unwrap().unwrap();
        assert_eq!(&buf[h.len..], b"abc");
        buf.fill(b'#');
        let cookies: Vec<_> = h.headers.get_all("set-cookie").iter().collect();
        assert_eq!(cookies, ["a=1", "b=2"]);
        assert_eq!(h.headers["x-empty"], "");
        assert_eq!(h.headers["x-obs"].as_bytes(), b"caf\xe9 \t x");
        assert_eq!(h.headers["content-length"], "3");
        assert!(
            !h.headers.contains_key("link"),
            "interim fields are not kept"
        );
        assert_eq!(h.framing, Framing::Length(3));

        // A recycled map comes back empty; field lines longer than the
        // inline copy take the other path, with the same result.
        recycle_header_map(h.headers);
        let long = "v".repeat(INLINE_FIELDS_BYTES + 100);
        let buf = format!("HTTP/1.1 204 No Content\r\nx-long: {long}\r\nx-b: 2\r\n\r\n");
        let h = parse_response_head(buf.as_bytes(), false).unwrap().unwrap();
        let names: Vec<_> = h.headers.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["x-long", "x-b"]);
        assert_eq!(h.headers["x-long"], long.as_str());
        assert_eq!(h.headers["x-b"], "2");
    }
}

//! `AuthorityFix` in front of a real hyper/h2 HTTP/2 server: a URL-shaped
//! `:authority` (what grpc-go sends for `passthrough:///http://host:port`)
//! is reset by h2 without the adapter and served with it.

use std::convert::Infallible;
use std::time::Duration;

use bytes::Bytes;
use etcd_api::authority_fix::{wrap_incoming, CLIENT_PREFACE};
use futures::StreamExt;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use loona_hpack::{Decoder, Encoder};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const TIMEOUT: Duration = Duration::from_secs(20);
const PROTOCOL_ERROR: u32 = 0x1;

/// Responds 200 with "<authority> <request body length>".
async fn handle(req: Request<Incoming>) -> Result<Response<Full<Bytes>>, Infallible> {
    let authority = req
        .uri()
        .authority()
        .map(|a| a.to_string())
        .unwrap_or_default();
    let body_len = req
        .into_body()
        .collect()
        .await
        .map(|b| b.to_bytes().len())
        .unwrap_or(0);
    Ok(Response::new(Full::new(Bytes::from(format!(
        "{authority} {body_len}"
    )))))
}

async fn serve_conn<IO: AsyncRead + AsyncWrite + Unpin + Send + 'static>(io: IO) {
    let _ = hyper::server::conn::http2::Builder::new(TokioExecutor::new())
        .serve_connection(TokioIo::new(io), service_fn(handle))
        .await;
}

/// Starts an HTTP/2-only server, optionally behind `wrap_incoming`; returns its port.
async fn start_server(with_fix: bool) -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    if with_fix {
        tokio::spawn(async move {
            let incoming = wrap_incoming(listener);
            let mut incoming = std::pin::pin!(incoming);
            while let Some(io) = incoming.next().await {
                tokio::spawn(serve_conn(io.unwrap()));
            }
        });
    } else {
        tokio::spawn(async move {
            loop {
                let (stream, _) = listener.accept().await.unwrap();
                tokio::spawn(serve_conn(stream));
            }
        });
    }
    port
}

#[derive(Debug, PartialEq)]
enum Outcome {
    Response { status: String, body: String },
    Reset(u32),
}

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(frame_type);
    v.push(flags);
    v.extend_from_slice(&stream_id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

/// A hand-rolled HTTP/2 client (h2's client derives `:authority` from the
/// URI, so it cannot send a URL there). Sends one GET per entry of
/// `authorities` on one connection, encoded like grpc-go does (literals with
/// incremental indexing, so repeats are dynamic-table references), and
/// returns each stream's outcome.
async fn raw_requests(port: u16, authorities: &[&str]) -> Vec<Outcome> {
    let mut tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
    let mut encoder = Encoder::new();
    let mut out = CLIENT_PREFACE.to_vec();
    out.extend(frame(0x4, 0, 0, &[]));
    for (i, authority) in authorities.iter().enumerate() {
        let headers: [(&[u8], &[u8]); 5] = [
            (b":method", b"GET"),
            (b":scheme", b"http"),
            (b":path", b"/x"),
            (b":authority", authority.as_bytes()),
            (b"user-agent", b"grpc-go/1.26.0"),
        ];
        let block = encoder.encode(headers);
        out.extend(frame(0x1, 0x1 | 0x4, 1 + 2 * i as u32, &block));
    }
    tcp.write_all(&out).await.unwrap();

    let mut decoder = Decoder::new();
    let mut outcomes: Vec<Option<Outcome>> = authorities.iter().map(|_| None).collect();
    let mut statuses = vec![String::new(); authorities.len()];
    let mut bodies = vec![Vec::new(); authorities.len()];
    while outcomes.iter().any(Option::is_none) {
        let mut header = [0u8; 9];
        tcp.read_exact(&mut header)
            .await
            .expect("server closed the connection");
        let len =
            usize::from(header[0]) << 16 | usize::from(header[1]) << 8 | usize::from(header[2]);
        let (frame_type, flags) = (header[3], header[4]);
        let stream_id =
            u32::from_be_bytes([header[5], header[6], header[7], header[8]]) & 0x7fff_ffff;
        let mut payload = vec![0u8; len];
        tcp.read_exact(&mut payload).await.unwrap();
        let idx = (stream_id as usize).wrapping_sub(1) / 2;
        match frame_type {
            0x4 if flags & 0x1 == 0 => tcp.write_all(&frame(0x4, 0x1, 0, &[])).await.unwrap(),
            0x1 => {
                assert_ne!(flags & 0x4, 0, "test client does not handle CONTINUATION");
                for (name, value) in decoder.decode(&payload).unwrap() {
                    if name == b":status" {
                        statuses[idx] = String::from_utf8(value).unwrap();
                    }
                }
            }
            0x0 => bodies[idx].extend_from_slice(&payload),
            0x3 => {
                outcomes[idx] = Some(Outcome::Reset(u32::from_be_bytes(
                    payload[..4].try_into().unwrap(),
                )))
            }
            0x7 => panic!("GOAWAY: {payload:?}"),
            _ => {}
        }
        if matches!(frame_type, 0x0 | 0x1) && flags & 0x1 != 0 {
            outcomes[idx] = Some(Outcome::Response {
                status: statuses[idx].clone(),
                body: String::from_utf8(bodies[idx].clone()).unwrap(),
            });
        }
    }
    outcomes.into_iter().map(Option::unwrap).collect()
}

#[tokio::test]
async fn test_url_authority_is_reset_without_the_adapter() {
    let port = start_server(false).await;
    let url = format!("http://127.0.0.1:{port}");
    let outcomes = tokio::time::timeout(TIMEOUT, raw_requests(port, &[&url]))
        .await
        .expect("timed out");
    assert_eq!(outcomes, [Outcome::Reset(PROTOCOL_ERROR)]);
}

#[tokio::test]
async fn test_url_authority_is_served_with_the_adapter() {
    let port = start_server(true).await;
    let url = format!("http://127.0.0.1:{port}");
    let plain = format!("127.0.0.1:{port}");
    // The second and third requests refer to dynamic-table entries the first
    // one created; the fourth is an ordinary authority.
    let outcomes = tokio::time::timeout(TIMEOUT, raw_requests(port, &[&url, &url, &url, &plain]))
        .await
        .expect("timed out");
    let ok = || Outcome::Response {
        status: "200".into(),
        body: format!("127.0.0.1:{port} 0"),
    };
    assert_eq!(outcomes, [ok(), ok(), ok(), ok()]);
}

/// An ordinary HTTP/2 client (h2: Huffman coding, dynamic table, flow
/// control) through the adapter: many requests on one connection, request
/// bodies much larger than a frame.
#[tokio::test]
async fn test_h2_client_through_the_adapter() {
    let port = start_server(true).await;
    tokio::time::timeout(TIMEOUT, async {
        let tcp = TcpStream::connect(("127.0.0.1", port)).await.unwrap();
        let (mut client, conn) = h2::client::handshake(tcp).await.unwrap();
        tokio::spawn(async move {
            let _ = conn.await;
        });
        for i in 0..20usize {
            let body_len = 100 * 1024 + i;
            client = client.ready().await.unwrap();
            let req = Request::builder()
                .method("POST")
                .uri(format!("http://127.0.0.1:{port}/etcdserverpb.KV/Range"))
                .header("content-type", "application/grpc")
                .header("x-same", "repeated value")
                .header("x-changing", format!("value {i}"))
                .body(())
                .unwrap();
            let (resp, mut send) = client.send_request(req, false).unwrap();
            send.send_data(Bytes::from(vec![b'a'; body_len]), true)
                .unwrap();
            let resp = resp.await.unwrap();
            assert_eq!(resp.status(), 200);
            let mut body = resp.into_body();
            let mut got = Vec::new();
            while let Some(chunk) = body.data().await {
                let chunk = chunk.unwrap();
                body.flow_control().release_capacity(chunk.len()).unwrap();
                got.extend_from_slice(&chunk);
            }
            assert_eq!(
                String::from_utf8(got).unwrap(),
                format!("127.0.0.1:{port} {body_len}")
            );
        }
    })
    .await
    .expect("timed out");
}

/// The real thing: tonic's `serve_with_incoming` over `wrap_incoming`. With
/// no services registered tonic answers every call with gRPC `Unimplemented`,
/// which is an HTTP 200 trailers-only response: the request got through h2.
#[tokio::test]
async fn test_tonic_serves_url_authority_over_wrap_incoming() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(
        tonic::transport::Server::builder()
            .add_routes(tonic::service::Routes::default())
            .serve_with_incoming(wrap_incoming(listener)),
    );
    let url = format!("http://127.0.0.1:{port}");
    let outcomes = tokio::time::timeout(TIMEOUT, raw_requests(port, &[&url, &url]))
        .await
        .expect("timed out");
    let ok = || Outcome::Response {
        status: "200".into(),
        body: String::new(),
    };
    assert_eq!(outcomes, [ok(), ok()]);
}

/// tonic's `remote_addr()` keeps working: connect info is the TCP stream's.
#[tokio::test]
async fn test_connect_info_is_the_tcp_streams() {
    use tonic::transport::server::Connected;
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let mut incoming = std::pin::pin!(wrap_incoming(listener));
    let client = TcpStream::connect(addr).await.unwrap();
    let accepted = tokio::time::timeout(TIMEOUT, incoming.next())
        .await
        .expect("timed out")
        .unwrap()
        .unwrap();
    let info = accepted.connect_info();
    assert_eq!(info.remote_addr(), Some(client.local_addr().unwrap()));
    assert_eq!(info.local_addr(), Some(addr));
    assert!(accepted.get_ref().nodelay().unwrap());
}

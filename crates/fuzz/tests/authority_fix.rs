//! Fuzz target: `etcd_api::authority_fix`, the HTTP/2 frame rewriter that
//! every client connection to a member's etcd port passes through before
//! any other parser. Inputs are client byte streams (preface, SETTINGS,
//! HEADERS and CONTINUATION frames with HPACK blocks, then mutations).
//! Property: the stream ends with the bytes passed on or an I/O error; no
//! panic; the output stays within a bounded factor of the input (a
//! rewritten header block never grows without limit).

use std::io::Cursor;

use etcd_api::authority_fix::{AuthorityFix, CLIENT_PREFACE};
use loona_hpack::Encoder;
use tokio::io::AsyncReadExt;

fn frame(frame_type: u8, flags: u8, stream_id: u32, payload: &[u8]) -> Vec<u8> {
    let mut v = (payload.len() as u32).to_be_bytes()[1..].to_vec();
    v.push(frame_type);
    v.push(flags);
    v.extend_from_slice(&stream_id.to_be_bytes());
    v.extend_from_slice(payload);
    v
}

fn seeds() -> Vec<Vec<u8>> {
    let mut encoder = Encoder::new();
    let mut whole = CLIENT_PREFACE.to_vec();
    whole.extend(frame(0x4, 0, 0, &[]));
    let mut split = whole.clone();
    for (i, authority) in [
        "http://127.0.0.1:2379",
        "127.0.0.1:2379",
        "http://127.0.0.1:2379",
    ]
    .iter()
    .enumerate()
    {
        let headers: [(&[u8], &[u8]); 5] = [
            (b":method", b"POST"),
            (b":scheme", b"http"),
            (b":path", b"/etcdserverpb.KV/Range"),
            (b":authority", authority.as_bytes()),
            (b"user-agent", b"grpc-go/1.26.0"),
        ];
        let block = encoder.encode(headers);
        let stream = 1 + 2 * i as u32;
        whole.extend(frame(0x1, 0x4, stream, &block));
        whole.extend(frame(0x0, 0x1, stream, b"\0\0\0\0\x02\x0a\x00"));
        // The same block split over HEADERS + CONTINUATION.
        let (a, b) = block.split_at(block.len() / 2);
        split.extend(frame(0x1, 0x0, stream, a));
        split.extend(frame(0x9, 0x4, stream, b));
    }
    vec![whole, split, CLIENT_PREFACE.to_vec()]
}

#[test]
fn fuzz_authority_fix() {
    let rt = tokio::runtime::Builder::new_current_thread()
        .build()
        .unwrap();
    let report = fuzz::fuzz("authority_fix", &seeds(), |input| {
        let mut fix = AuthorityFix::new(Cursor::new(input.to_vec()));
        let mut out = Vec::new();
        let _ = rt.block_on(fix.read_to_end(&mut out));
        assert!(
            out.len() <= input.len() * 4 + 4096,
            "{} output bytes from {} input bytes",
            out.len(),
            input.len()
        );
    });
    assert!(report.executions > 0);
}

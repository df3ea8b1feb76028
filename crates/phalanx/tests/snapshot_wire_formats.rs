//! The Maintenance.Snapshot formats a member serves: an etcd snapshot (bbolt +
//! SHA-256 trailer) by default, for etcdctl; and for Phalanx backups, asked for by
//! gRPC metadata, the mvcc snapshot stream with etcd's trailer (`mvcc-v1`, older
//! backup clients) or bare (`mvcc-v2`, what backups ask for now). Each is read back
//! with the backup side's own checks, which must also refuse a stream read as the
//! other version.

mod support;

use std::io::Read;

use etcd_client::proto::{PbSnapshotRequest, PbSnapshotResponse};
use support::*;

/// The whole Snapshot stream of `url`, asked for in `format` (metadata value).
async fn snapshot(url: &str, format: Option<&str>) -> Vec<u8> {
    let ch = tonic::transport::Endpoint::from_shared(url.to_string())
        .unwrap()
        .connect()
        .await
        .unwrap();
    let mut grpc = tonic::client::Grpc::new(ch);
    grpc.ready().await.unwrap();
    let mut req = tonic::Request::new(PbSnapshotRequest {});
    if let Some(f) = format {
        req.metadata_mut()
            .insert(etcd_snapshot::MVCC_FORMAT_METADATA_KEY, f.parse().unwrap());
    }
    let codec = tonic_prost::ProstCodec::<PbSnapshotRequest, PbSnapshotResponse>::default();
    let path = http::uri::PathAndQuery::from_static("/etcdserverpb.Maintenance/Snapshot");
    let mut stream = grpc
        .server_streaming(req, path, codec)
        .await
        .unwrap()
        .into_inner();
    let mut bytes = Vec::new();
    while let Some(m) = stream.message().await.unwrap() {
        bytes.extend_from_slice(&m.blob);
    }
    bytes
}

/// Read `bytes` through the backup side's checks, expecting an mvcc stream with
/// (`trailer`) or without etcd's trailer; the normalized stream's record count.
fn read_back(bytes: &[u8], trailer: bool) -> std::io::Result<u64> {
    let (src, etcd_trailer) =
        backup::snapstream::open_snapshot(Box::new(std::io::Cursor::new(bytes.to_vec())), trailer)?;
    let (mut norm, info) = backup::snapstream::Normalizer::new(src, etcd_trailer);
    std::io::copy(&mut norm, &mut std::io::sink())?;
    let records = info.lock().unwrap().records_out;
    Ok(records)
}

#[test]
fn a_member_serves_each_snapshot_format_and_each_is_checked() {
    let c = Cluster::start(1, &[]);
    for i in 0..50 {
        c.ctl(&["put", &format!("k{i}"), &format!("v{i}")]);
    }
    let url = c.members[0].client_url();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let v1 = rt.block_on(snapshot(
        &url,
        Some(etcd_snapshot::MVCC_FORMAT_METADATA_VALUE),
    ));
    let v2 = rt.block_on(snapshot(
        &url,
        Some(etcd_snapshot::MVCC_FORMAT_V2_METADATA_VALUE),
    ));
    let etcd = rt.block_on(snapshot(&url, None));

    // Version 2 is version 1 without the trailer (padding, length, SHA-256).
    let magic = backup::snapstream::MAGIC;
    assert!(v1.starts_with(magic) && v2.starts_with(magic));
    assert!(v1.len() > v2.len() + 40 && v1.len() - v2.len() <= 512 + 8 + 32);
    assert_eq!(
        v1[..v2.len()],
        v2[..],
        "v2 should be v1's stream without its trailer"
    );
    let records = read_back(&v2, false).expect("a v2 stream passes the checks");
    // 50 keys: at least their history, index and key-revision records.
    assert!(records >= 150, "{records} records");
    assert_eq!(
        read_back(&v1, true).expect("a v1 stream passes the checks"),
        records
    );
    // Each version read as the other is refused, naming what is wrong.
    let e = read_back(&v1, false).unwrap_err().to_string();
    assert!(e.contains("trailing bytes"), "{e}");
    let e = read_back(&v2, true).unwrap_err().to_string();
    assert!(e.contains("trailer"), "{e}");
    // A v2 stream cut short, or with one byte flipped, is refused.
    let e = read_back(&v2[..v2.len() - 3], false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("truncated"), "{e}");
    let mut flipped = v2.clone();
    let mid = flipped.len() / 2;
    flipped[mid] ^= 0x40;
    assert!(read_back(&flipped, false).is_err());

    // Without the metadata: an etcd snapshot (bbolt), as etcdctl expects.
    assert!(etcd_snapshot::looks_like_bbolt(&etcd[..20]));
    let mut converted = Vec::new();
    let (mut src, etcd_trailer) =
        backup::snapstream::open_snapshot(Box::new(std::io::Cursor::new(etcd)), false).unwrap();
    assert!(!etcd_trailer);
    src.read_to_end(&mut converted).unwrap();
    assert!(converted.starts_with(magic));
}

//! Fuzz target: mvcc's encodings that come off the disk or the network —
//! Raft log payloads (`Command`, postcard), replicated apply results
//! (`ApplyResponse`), and store snapshots (the record codec that a member
//! installs from its leader). Snapshot inputs are re-sealed with a valid
//! trailing CRC after mutation so they reach the record decoder instead of
//! stopping at the checksum. Property: an input is refused with an error or
//! accepted into a store that then serves reads; no panic.

use mvcc::{ApplyResponse, Command, PbPutRequest, PbRangeRequest, Store};
use std::path::Path;

fn populated_snapshot() -> Vec<u8> {
    let s = Store::open_backend(redb::backends::InMemoryBackend::new(), Path::new("seed")).unwrap();
    let mut cmds = vec![Command::LeaseGrant {
        id: 7,
        ttl_seconds: 30,
    }];
    for i in 0..6 {
        cmds.push(Command::put(&PbPutRequest {
            key: format!("k{i}").into_bytes(),
            value: vec![b'v'; i * 3],
            lease: if i % 2 == 0 { 7 } else { 0 },
            ..Default::default()
        }));
    }
    cmds.push(Command::put(&PbPutRequest {
        key: b"k1".to_vec(),
        value: b"again".to_vec(),
        ..Default::default()
    }));
    cmds.push(Command::Compact { revision: 3 });
    for c in cmds {
        s.apply_batch(&[Some(c)], b"meta", false).unwrap();
    }
    let mut out = Vec::new();
    s.write_snapshot(&mut out).unwrap();
    out
}

/// Input layout: byte 0 picks the decoder; the rest is its input.
fn seeds() -> Vec<Vec<u8>> {
    let snap = populated_snapshot();
    let body = &snap[..snap.len() - 4];
    let put = Command::put(&PbPutRequest {
        key: b"a".to_vec(),
        value: b"b".to_vec(),
        ..Default::default()
    });
    let batch = Command::Batch(vec![put.clone(), Command::LeaseRevoke { id: 3 }]);
    vec![
        [&[0u8][..], body].concat(),
        [&[1u8][..], &put.to_bytes()].concat(),
        [&[1u8][..], &batch.to_bytes()].concat(),
        [&[2u8][..], &ApplyResponse::Put(Default::default()).encode()].concat(),
        [
            &[2u8][..],
            &ApplyResponse::Error(mvcc::EtcdError::Compacted).encode(),
        ]
        .concat(),
    ]
}

#[test]
fn fuzz_mvcc_codec() {
    let report = fuzz::fuzz("mvcc_codec", &seeds(), |input| {
        let Some((&which, body)) = input.split_first() else {
            return;
        };
        match which % 3 {
            0 => {
                let mut sealed = body.to_vec();
                sealed.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
                let s =
                    Store::open_backend(redb::backends::InMemoryBackend::new(), Path::new("fuzz"))
                        .unwrap();
                if s.install_snapshot(&mut sealed.as_slice()).is_ok() {
                    // An accepted snapshot must serve reads (or refuse them
                    // with an etcd error), never panic.
                    let _ = s.range(&PbRangeRequest {
                        key: vec![0],
                        range_end: vec![0],
                        ..Default::default()
                    });
                    let _ = s.hash_kv(0);
                }
            }
            1 => {
                if let Ok(c) = Command::from_bytes(body) {
                    // Whatever decodes re-encodes to something that decodes
                    // to the same command.
                    assert_eq!(Command::from_bytes(&c.to_bytes()).unwrap(), c);
                }
            }
            _ => {
                if let Ok(r) = ApplyResponse::decode(body) {
                    assert_eq!(ApplyResponse::decode(&r.encode()).unwrap(), r);
                }
            }
        }
    });
    assert!(report.executions > 0);
}

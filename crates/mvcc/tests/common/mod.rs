#![allow(dead_code)]
use mvcc::*;
use tempfile::TempDir;

pub fn store() -> (TempDir, Store) {
    let dir = tempfile::tempdir().unwrap();
    let s = Store::open(&dir.path().join("mvcc.redb")).unwrap();
    (dir, s)
}

pub fn apply(s: &Store, cmd: Command) -> Applied {
    s.apply_batch(&[Some(cmd)], b"meta", false)
        .unwrap()
        .pop()
        .unwrap()
        .unwrap()
}

pub fn put_req(k: &str, v: &str) -> PbPutRequest {
    PbPutRequest {
        key: k.into(),
        value: v.into(),
        ..Default::default()
    }
}

pub fn put(s: &Store, k: &str, v: &str) -> Applied {
    let a = apply(s, Command::put(&put_req(k, v)));
    assert!(
        matches!(a.response, ApplyResponse::Put(_)),
        "{:?}",
        a.response
    );
    a
}

pub fn put_lease(s: &Store, k: &str, v: &str, lease: i64) -> Applied {
    apply(
        s,
        Command::put(&PbPutRequest {
            key: k.into(),
            value: v.into(),
            lease,
            ..Default::default()
        }),
    )
}

pub fn del(s: &Store, k: &str, end: &str) -> Applied {
    apply(
        s,
        Command::delete_range(&PbDeleteRequest {
            key: k.into(),
            range_end: end.into(),
            prev_kv: true,
        }),
    )
}

pub fn range_req(k: &str, end: &str) -> PbRangeRequest {
    PbRangeRequest {
        key: k.into(),
        range_end: end.into(),
        ..Default::default()
    }
}

pub fn get(s: &Store, k: &str) -> Option<PbKeyValue> {
    let r = s.range(&range_req(k, "")).unwrap();
    assert!(r.kvs.len() <= 1);
    r.kvs.into_iter().next()
}

pub fn get_at(s: &Store, k: &str, rev: i64) -> Result<Option<PbKeyValue>, EtcdError> {
    let r = s.range(&PbRangeRequest {
        key: k.into(),
        revision: rev,
        ..Default::default()
    })?;
    Ok(r.kvs.into_iter().next())
}

pub fn keys(r: &PbRangeResponse) -> Vec<String> {
    r.kvs
        .iter()
        .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
        .collect()
}

pub fn prefix_end(p: &str) -> String {
    let mut b = p.as_bytes().to_vec();
    *b.last_mut().unwrap() += 1;
    String::from_utf8(b).unwrap()
}

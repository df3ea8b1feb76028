mod common;
use common::*;
use mvcc::consts::*;
use mvcc::*;

#[test]
fn revision_and_version_arithmetic() {
    let (_d, s) = store();
    assert_eq!(s.current_revision(), 1);
    assert_eq!(s.compact_revision(), -1);
    let a = put(&s, "a", "1");
    assert_eq!(a.revision, 2);
    assert_eq!(a.response.header_revision(), Some(2));
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (2, 2, 1));
    put(&s, "a", "2");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version, kv.value.as_slice()), (2, 3, 2, &b"2"[..]));
    // delete resets version; re-put starts a new generation
    let d = del(&s, "a", "");
    assert_eq!(d.revision, 4);
    let ApplyResponse::DeleteRange(dr) = &d.response else { panic!() };
    assert_eq!(dr.deleted, 1);
    assert_eq!(dr.prev_kvs[0].value, b"2");
    assert_eq!(d.events.len(), 1);
    assert_eq!(d.events[0].r#type, EVENT_DELETE);
    assert_eq!(d.events[0].kv.as_ref().unwrap().mod_revision, 4);
    assert_eq!(d.events[0].prev_kv.as_ref().unwrap().mod_revision, 3);
    assert!(get(&s, "a").is_none());
    put(&s, "a", "3");
    let kv = get(&s, "a").unwrap();
    assert_eq!((kv.create_revision, kv.mod_revision, kv.version), (5, 5, 1));
    // delete of nothing does not bump
    let d = del(&s, "zzz", "");
    assert_eq!(d.revision, 5);
    assert_eq!(d.response.header_revision(), Some(5));
    assert!(d.events.is_empty());
    // history
    assert_eq!(get_at(&s, "a", 2).unwrap().unwrap().value, b"1");
    assert_eq!(get_at(&s, "a", 3).unwrap().unwrap().value, b"2");
    assert!(get_at(&s, "a", 4).unwrap().is_none());
    assert!(get_at(&s, "a", 1).unwrap().is_none());
    assert_eq!(get_at(&s, "a", 6), Err(EtcdError::FutureRevision));
}

#[test]
fn put_events_carry_prev_kv() {
    let (_d, s) = store();
    let a = put(&s, "k", "v1");
    assert_eq!(a.events.len(), 1);
    assert!(a.events[0].prev_kv.is_none());
    let b = apply(&s, Command::put(&PbPutRequest { key: "k".into(), value: "v2".into(), prev_kv: true, ..Default::default() }));
    assert_eq!(b.events[0].prev_kv.as_ref().unwrap().value, b"v1");
    let ApplyResponse::Put(p) = &b.response else { panic!() };
    assert_eq!(p.prev_kv.as_ref().unwrap().value, b"v1");
}

#[test]
fn applied_meta_roundtrip_and_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = Store::open(&path).unwrap();
        assert_eq!(s.applied_meta().unwrap(), None);
        let out = s
            .apply_batch(&[Some(Command::put(&put_req("a", "1"))), None, Some(Command::put(&put_req("b", "2")))], b"m1", true)
            .unwrap();
        assert!(out[1].is_none());
        assert_eq!(out[2].as_ref().unwrap().revision, 3);
        assert_eq!(s.applied_meta().unwrap().unwrap(), b"m1");
        s.apply_batch(&[None], b"m2", true).unwrap();
    }
    let s = Store::open(&path).unwrap();
    assert_eq!(s.applied_meta().unwrap().unwrap(), b"m2");
    assert_eq!(s.current_revision(), 3);
    assert_eq!(get(&s, "b").unwrap().value, b"2");
}

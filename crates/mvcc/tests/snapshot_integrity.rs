mod common;
use common::*;
use mvcc::*;
use redb::{ReadableTable, TableDefinition};

fn populate(s: &Store) {
    let mut cmds = vec![Some(Command::LeaseGrant {
        id: 9,
        ttl_seconds: 100,
    })];
    for i in 0..50 {
        cmds.push(Some(Command::put(&put_req(
            &format!("key/{:02}", i % 17),
            &format!("value-{i}"),
        ))));
    }
    cmds.push(Some(Command::put(&PbPutRequest {
        key: "leased".into(),
        value: "l".into(),
        lease: 9,
        ..Default::default()
    })));
    cmds.push(Some(Command::delete_range(&PbDeleteRequest {
        key: "key/03".into(),
        range_end: "key/05".into(),
        prev_kv: false,
    })));
    cmds.push(Some(Command::Compact { revision: 30 }));
    cmds.push(Some(Command::put(&put_req("after", "compaction"))));
    s.apply_batch(&cmds, b"raft-meta-1", true).unwrap();
}

type FullState = (
    PbRangeResponse,
    Vec<LeaseInfo>,
    (u32, i64, i64),
    i64,
    i64,
    Option<Vec<u8>>,
);

fn full_state(s: &Store) -> FullState {
    let mut r = s.range(&range_req("\0", "\0")).unwrap();
    r.header = None;
    (
        r,
        s.leases(),
        s.hash_kv(0).unwrap(),
        s.current_revision(),
        s.compact_revision(),
        s.applied_meta().unwrap(),
    )
}

#[test]
fn snapshot_roundtrip() {
    let (_d1, s1) = store();
    populate(&s1);
    let mut snap = Vec::new();
    s1.write_snapshot(&mut snap).unwrap();
    assert!(snap.starts_with(b"PHXMVCC\0"));

    let (_d2, s2) = store();
    put(&s2, "junk", "to be replaced");
    s2.install_snapshot(&mut snap.as_slice()).unwrap();
    assert_eq!(full_state(&s1), full_state(&s2));
    assert!(get(&s2, "junk").is_none());
    assert_eq!(s2.hash_kv(40).unwrap(), s1.hash_kv(40).unwrap());
    let mut q = range_req("key/", "key0");
    q.revision = 35;
    assert_eq!(s1.range(&q).unwrap(), s2.range(&q).unwrap());
    assert_eq!(
        s1.events(b"\0", b"\0", 30, 100, true, 1000).unwrap(),
        s2.events(b"\0", b"\0", 30, 100, true, 1000).unwrap()
    );
    // both continue identically
    for s in [&s1, &s2] {
        apply(s, Command::LeaseRevoke { id: 9 });
        put(s, "key/01", "more");
    }
    assert_eq!(full_state(&s1).0, full_state(&s2).0);
    assert_eq!(s1.hash_kv(0).unwrap(), s2.hash_kv(0).unwrap());
    // snapshot survives reopen
    let path = s2.path().to_path_buf();
    let before = full_state(&s2);
    drop(s2);
    let s2 = Store::open(&path).unwrap();
    assert_eq!(full_state(&s2), before);
}

#[test]
fn corrupted_snapshot_rejected_state_unchanged() {
    let (_d1, s1) = store();
    populate(&s1);
    let mut snap = Vec::new();
    s1.write_snapshot(&mut snap).unwrap();

    let (_d2, s2) = store();
    put(&s2, "mine", "1");
    s2.apply_batch(&[None], b"local", true).unwrap();
    let before = full_state(&s2);
    for pos in [3, 20, snap.len() / 2, snap.len() - 2] {
        let mut bad = snap.clone();
        bad[pos] ^= 0x40;
        let err = s2.install_snapshot(&mut bad.as_slice()).unwrap_err();
        assert!(matches!(err, MvccError::Snapshot(_)), "{err}");
        assert_eq!(full_state(&s2), before);
    }
    let truncated = &snap[..snap.len() - 10];
    assert!(matches!(
        s2.install_snapshot(&mut &truncated[..]),
        Err(MvccError::Snapshot(_))
    ));
    assert!(matches!(
        s2.install_snapshot(&mut &b""[..]),
        Err(MvccError::Snapshot(_))
    ));
    assert_eq!(full_state(&s2), before);
    // still writable afterwards
    put(&s2, "mine", "2");
}

#[test]
fn reopen_keeps_everything() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    let before = {
        let s = Store::open(&path).unwrap();
        populate(&s);
        full_state(&s)
    };
    let s = Store::open(&path).unwrap();
    assert_eq!(full_state(&s), before);
    assert_eq!(s.compact_revision(), 30);
    assert!(s.db_size_bytes() > 0);
    put(&s, "x", "y");
    assert_eq!(s.current_revision(), before.3 + 1);
}

const REV: TableDefinition<(i64, i64), &[u8]> = TableDefinition::new("rev");
const KEY_INDEX: TableDefinition<&[u8], &[u8]> = TableDefinition::new("key_index");

#[test]
fn corrupted_value_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = Store::open(&path).unwrap();
        put(&s, "a", "hello"); // rev 2
        put(&s, "b", "world"); // rev 3
    }
    {
        // flip a byte inside the stored value of revision 2 (checksum no longer matches)
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(REV).unwrap();
            let mut v = t.get((2, 0)).unwrap().unwrap().value().to_vec();
            let n = v.len();
            v[n - 1] ^= 0x01;
            t.insert((2, 0), v.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert_open_refuses(&path);
    let s = open_unverified(&path);
    let told = std::sync::Arc::new(std::sync::Mutex::new(Vec::<String>::new()));
    let t = told.clone();
    s.on_corruption(Box::new(move |what| t.lock().unwrap().push(what)));
    assert_eq!(s.range(&range_req("a", "")), Err(EtcdError::Corrupt));
    {
        // The member stops on this (once), naming the file.
        let told = told.lock().unwrap();
        assert_eq!(told.len(), 1, "{told:?}");
        assert!(told[0].contains(&path.display().to_string()), "{told:?}");
    }
    assert_eq!(get(&s, "b").unwrap().value, b"world");
    match s.events(b"\0", b"\0", 1, 10, false, 10) {
        Err(MvccError::Corrupted { table, key }) => {
            assert_eq!(table, "rev");
            assert!(key.contains('2'), "{key}");
        }
        other => panic!("{other:?}"),
    }
    // writes touching the corrupted record fail fatally and commit nothing
    let err = s
        .apply_batch(&[Some(Command::put(&put_req("a", "x")))], b"m", true)
        .unwrap_err();
    assert!(
        matches!(err, MvccError::Corrupted { table: "rev", .. }),
        "{err}"
    );
    assert_eq!(s.current_revision(), 3);
    assert!(s.hash_kv(0).is_err());
    let mut snap = Vec::new();
    assert!(matches!(
        s.write_snapshot(&mut snap),
        Err(MvccError::Corrupted { .. })
    ));
}

#[test]
fn corrupted_index_detected() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("db");
    {
        let s = Store::open(&path).unwrap();
        put(&s, "a", "hello");
    }
    {
        let db = redb::Database::create(&path).unwrap();
        let tx = db.begin_write().unwrap();
        {
            let mut t = tx.open_table(KEY_INDEX).unwrap();
            let mut v = t.get(&b"a"[..]).unwrap().unwrap().value().to_vec();
            v[4] ^= 0x80;
            t.insert(&b"a"[..], v.as_slice()).unwrap();
        }
        tx.commit().unwrap();
    }
    assert_open_refuses(&path);
    let s = open_unverified(&path);
    assert_eq!(s.range(&range_req("a", "")), Err(EtcdError::Corrupt));
    let err = s
        .apply_batch(&[Some(Command::put(&put_req("a", "x")))], b"m", true)
        .unwrap_err();
    assert!(
        err.to_string().contains("key_index") && err.to_string().contains("\"a\""),
        "{err}"
    );
}

#[test]
fn refuses_foreign_files() {
    let dir = tempfile::tempdir().unwrap();
    // some other redb database
    let other = dir.path().join("other.redb");
    {
        let db = redb::Database::create(&other).unwrap();
        let tx = db.begin_write().unwrap();
        tx.open_table(TableDefinition::<&str, u64>::new("stuff"))
            .unwrap()
            .insert("x", 1)
            .unwrap();
        tx.commit().unwrap();
    }
    let err = Store::open(&other).err().unwrap();
    assert!(matches!(err, MvccError::NotOurs { .. }), "{err}");
    assert!(err.to_string().contains("other.redb"));
    // not a redb file at all
    let garbage = dir.path().join("garbage");
    std::fs::write(&garbage, vec![0x5au8; 8192]).unwrap();
    let err = Store::open(&garbage).err().unwrap();
    assert!(matches!(err, MvccError::Open { .. }), "{err}");
    assert!(err.to_string().contains("garbage"));
}

/// `Store::open` verifies every record: a damaged file is refused by name,
/// saying what to do.
fn assert_open_refuses(path: &std::path::Path) {
    match Store::open(path) {
        Err(e @ MvccError::CorruptFile { .. }) => {
            let msg = e.to_string();
            assert!(msg.contains(&path.display().to_string()), "{msg}");
            assert!(msg.contains("etcdctl member remove"), "{msg}");
        }
        Err(other) => panic!("{other}"),
        Ok(_) => panic!("a damaged store was opened"),
    }
}

/// Open without the start-up verification (as if the damage happened after
/// the member started), to see how reads and writes meet it.
fn open_unverified(path: &std::path::Path) -> Store {
    let file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(path)
        .unwrap();
    Store::open_backend(redb::backends::FileBackend::new(file).unwrap(), path).unwrap()
}

/// A reader that yields `data` and then fails, as a backup source does when a check
/// after the last byte fails (e.g. the whole backup's SHA-256).
struct FailsAtEnd<'a>(&'a [u8]);

impl std::io::Read for FailsAtEnd<'_> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        if self.0.is_empty() {
            return Err(std::io::Error::other(
                "the source failed after its last byte",
            ));
        }
        let n = buf.len().min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

#[test]
fn streamed_load_equals_install_and_commits_only_a_whole_checked_stream() {
    let (_d1, s1) = store();
    populate(&s1);
    let mut snap = Vec::new();
    s1.write_snapshot(&mut snap).unwrap();

    for durability in [LoadDurability::Durable, LoadDurability::Scratch] {
        let (_d2, s2) = store();
        put(&s2, "junk", "to be replaced");
        s2.load_snapshot(&mut snap.as_slice(), durability).unwrap();
        assert_eq!(full_state(&s1), full_state(&s2));
        assert!(get(&s2, "junk").is_none());
        let mut q = range_req("key/", "key0");
        q.revision = 35;
        assert_eq!(s1.range(&q).unwrap(), s2.range(&q).unwrap());
        put(&s2, "after", "load"); // still writable
    }
    // Durable: survives a reopen.
    let (d3, s3) = store();
    s3.load_snapshot(&mut snap.as_slice(), LoadDurability::Durable)
        .unwrap();
    let before = full_state(&s3);
    let path = s3.path().to_path_buf();
    drop(s3);
    assert_eq!(full_state(&Store::open(&path).unwrap()), before);
    drop(d3);

    let (_d4, s4) = store();
    put(&s4, "mine", "1");
    s4.apply_batch(&[None], b"local", true).unwrap();
    let before = full_state(&s4);
    // Any damaged byte (records are written before the CRC is known), a truncation, an
    // empty stream, trailing bytes, and a source failing after the last byte: refused,
    // state unchanged.
    for pos in [3, 20, snap.len() / 3, snap.len() / 2, snap.len() - 2] {
        let mut bad = snap.clone();
        bad[pos] ^= 0x40;
        assert!(s4
            .load_snapshot(&mut bad.as_slice(), LoadDurability::Durable)
            .is_err());
        assert_eq!(full_state(&s4), before, "damaged byte at {pos}");
    }
    for cut in [0, 10, snap.len() / 2, snap.len() - 1] {
        assert!(s4
            .load_snapshot(&mut &snap[..cut], LoadDurability::Durable)
            .is_err());
        assert_eq!(full_state(&s4), before, "truncated at {cut}");
    }
    let mut longer = snap.clone();
    longer.push(0);
    assert!(matches!(
        s4.load_snapshot(&mut longer.as_slice(), LoadDurability::Durable),
        Err(MvccError::Snapshot(_))
    ));
    let err = s4
        .load_snapshot(&mut FailsAtEnd(&snap), LoadDurability::Durable)
        .unwrap_err();
    assert!(err.to_string().contains("after its last byte"), "{err}");
    assert_eq!(full_state(&s4), before);
    // A length field far beyond any record is refused without allocating it.
    let mut huge = snap[..12].to_vec();
    huge.push(2); // a rev record
    huge.extend_from_slice(&u32::MAX.to_le_bytes());
    assert!(s4
        .load_snapshot(&mut huge.as_slice(), LoadDurability::Durable)
        .is_err());
    assert_eq!(full_state(&s4), before);
    put(&s4, "mine", "2");
}

/// A stream of several of the loader's batches (it parses on one thread and writes on
/// another, handing over about a megabyte at a time): loaded whole, and refused with the
/// store unchanged when a record late in it (after batches were written) is damaged.
#[test]
fn a_stream_of_many_load_batches_loads_whole_or_not_at_all() {
    let (_d1, s1) = store();
    let value = "v".repeat(1000);
    for round in 0..4 {
        let cmds: Vec<_> = (0..1000)
            .map(|i| {
                Some(Command::put(&put_req(
                    &format!("key/{i:05}"),
                    &format!("{round}{value}"),
                )))
            })
            .collect();
        s1.apply_batch(&cmds, b"m", false).unwrap();
    }
    let mut snap = Vec::new();
    s1.write_snapshot(&mut snap).unwrap();
    assert!(snap.len() > 4 << 20, "{} bytes", snap.len());

    let (_d2, s2) = store();
    s2.load_snapshot(&mut snap.as_slice(), LoadDurability::Scratch)
        .unwrap();
    assert_eq!(full_state(&s1), full_state(&s2));
    let mut again = Vec::new();
    s2.write_snapshot(&mut again).unwrap();
    assert!(again == snap, "a loaded store streams the same snapshot");

    let (_d3, s3) = store();
    put(&s3, "mine", "1");
    let before = full_state(&s3);
    // A damaged payload byte near the end: every record parses, the CRC refuses it.
    let mut bad = snap.clone();
    let at = snap.len() - 200;
    bad[at] ^= 0x01;
    assert!(s3
        .load_snapshot(&mut bad.as_slice(), LoadDurability::Durable)
        .is_err());
    assert_eq!(full_state(&s3), before);
    // An unknown record tag after the history: the parser's error, not a hang.
    // (The stream without its end marker, count and CRC, then the odd record.)
    let mut late = snap[..snap.len() - 13].to_vec();
    late.push(9);
    late.extend_from_slice(&1u32.to_le_bytes());
    late.push(b'x');
    late.extend_from_slice(&1u32.to_le_bytes());
    late.push(b'y');
    let err = s3
        .load_snapshot(&mut late.as_slice(), LoadDurability::Durable)
        .unwrap_err();
    assert!(err.to_string().contains("unknown record tag 9"), "{err}");
    assert_eq!(full_state(&s3), before);
    put(&s3, "mine", "2");
}

//! The bbolt writer and reader against each other, and the reader against damaged files:
//! every damaged file gives an error naming what is wrong, never a panic.

use std::path::Path;

use etcd_snapshot::bbolt::{BucketRoot, Db, Entry};
use etcd_snapshot::writer::DbWriter;
use etcd_snapshot::SnapshotError;
use rand::{Rng, SeedableRng};

/// A database with a big bucket (several branch levels, overflow values), a small inline
/// bucket, an empty bucket and a bucket holding a nested bucket.
fn build(path: &Path, n: usize) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut w = DbWriter::create(path).unwrap();
    let mut big = Vec::new();
    for i in 0..n {
        let k = format!("key/{i:08}").into_bytes();
        let v = if i % 997 == 0 {
            vec![(i % 251) as u8; 10_000]
        } else {
            format!("value {i}").into_bytes()
        };
        big.push((k, v));
    }
    let big_b = {
        let mut b = w.bucket("big");
        for (k, v) in &big {
            b.put(k, v).unwrap();
        }
        b.finish().unwrap()
    };
    let small = {
        let mut b = w.bucket("small");
        b.put(b"a", b"1").unwrap();
        b.put(b"b", b"2").unwrap();
        b.finish().unwrap()
    };
    assert_eq!(
        u64::from_le_bytes(small.0[..8].try_into().unwrap()),
        0,
        "inline"
    );
    let empty = w.bucket("empty").finish().unwrap();
    let inner = {
        let mut b = w.bucket("inner");
        b.put(b"x", b"y").unwrap();
        b.finish().unwrap()
    };
    let outer = {
        let mut b = w.bucket("outer");
        b.put_bucket(b"inner", inner).unwrap();
        b.put(b"plain", b"v").unwrap();
        b.finish().unwrap()
    };
    let mut root = w.bucket("");
    root.put_bucket(b"big", big_b).unwrap();
    root.put_bucket(b"empty", empty).unwrap();
    root.put_bucket(b"outer", outer).unwrap();
    root.put_bucket(b"small", small).unwrap();
    let root = root.finish_root().unwrap();
    let bytes = w.finish(root).unwrap();
    assert_eq!(std::fs::metadata(path).unwrap().len(), bytes);
    big
}

fn all(db: &Db, b: &BucketRoot) -> Result<Vec<Entry>, SnapshotError> {
    db.iter(b).collect()
}

#[test]
fn writer_output_reads_back_exactly() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    let big = build(&p, 30_000);
    let db = Db::open(&p, None).unwrap();
    assert_eq!(db.meta().page_size, 4096);
    assert_eq!(db.meta().txid, 3, "the newer meta page");
    let names: Vec<Vec<u8>> = all(&db, &db.root())
        .unwrap()
        .into_iter()
        .map(|e| {
            assert!(e.is_bucket);
            e.key
        })
        .collect();
    assert_eq!(
        names,
        vec![
            b"big".to_vec(),
            b"empty".to_vec(),
            b"outer".to_vec(),
            b"small".to_vec()
        ]
    );
    let got: Vec<(Vec<u8>, Vec<u8>)> = all(&db, &db.bucket(b"big").unwrap().unwrap())
        .unwrap()
        .into_iter()
        .map(|e| (e.key, e.value))
        .collect();
    assert_eq!(got.len(), big.len());
    assert!(got == big, "big bucket differs");
    let small = all(&db, &db.bucket(b"small").unwrap().unwrap()).unwrap();
    assert_eq!(small.len(), 2);
    assert_eq!(
        (small[1].key.as_slice(), small[1].value.as_slice()),
        (&b"b"[..], &b"2"[..])
    );
    assert!(all(&db, &db.bucket(b"empty").unwrap().unwrap())
        .unwrap()
        .is_empty());
    let outer = db.bucket(b"outer").unwrap().unwrap();
    let inner = db.sub_bucket(&outer, b"inner").unwrap().unwrap();
    assert_eq!(all(&db, &inner).unwrap()[0].value, b"y");
    assert!(db.bucket(b"missing").unwrap().is_none());
    assert!(matches!(
        db.sub_bucket(&outer, b"plain"),
        Err(SnapshotError::Bucket { .. })
    ));
}

#[test]
fn a_damaged_meta_page_falls_back_to_the_other() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("db");
    build(&p, 100);
    let mut b = std::fs::read(&p).unwrap();
    b[4096 + 16 + 20] ^= 0xff; // meta page 1 (the newer): checksum no longer matches
    std::fs::write(&p, &b).unwrap();
    let db = Db::open(&p, None).unwrap();
    assert_eq!(db.meta().txid, 2, "fell back to meta page 0");
    assert_eq!(
        all(&db, &db.bucket(b"big").unwrap().unwrap())
            .unwrap()
            .len(),
        100
    );
    b[16 + 20] ^= 0xff;
    std::fs::write(&p, &b).unwrap();
    let e = Db::open(&p, None).err().expect("both metas bad");
    assert!(e.to_string().contains("checksum"), "{e}");
}

/// Open and walk everything; any error is fine, a panic is not.
fn walk(p: &Path) -> Result<usize, SnapshotError> {
    let db = Db::open(p, None)?;
    let mut n = 0;
    for e in all(&db, &db.root())? {
        if e.is_bucket {
            let b = db.parse_bucket_value(&e.key, &e.value)?;
            n += all(&db, &b)?.len();
        }
    }
    Ok(n)
}

#[test]
fn damaged_files_give_errors_not_panics() {
    let dir = tempfile::tempdir().unwrap();
    let good = dir.path().join("good");
    build(&good, 3_000);
    let orig = std::fs::read(&good).unwrap();
    let p = dir.path().join("bad");

    // Random bytes.
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    for len in [0usize, 10, 4096, 3 * 4096, 64 * 1024] {
        let junk: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
        std::fs::write(&p, &junk).unwrap();
        assert!(walk(&p).is_err(), "{len} random bytes accepted");
    }
    // Truncated: the metas promise more pages than the file has.
    std::fs::write(&p, &orig[..orig.len() - 4096]).unwrap();
    let e = walk(&p).unwrap_err().to_string();
    assert!(e.contains("truncated"), "{e}");
    // A page pointing at itself: cycle detected, named.
    let mut b = orig.clone();
    let db = Db::open(&good, None).unwrap();
    let root = db.meta().root;
    let big = match db.bucket(b"big").unwrap().unwrap() {
        BucketRoot::Page(id) => id,
        _ => unreachable!(),
    };
    let at = (big * 4096) as usize;
    assert_eq!(
        u16::from_le_bytes([b[at + 8], b[at + 9]]),
        0x01,
        "big's root is a branch"
    );
    b[at + 16 + 8..at + 16 + 16].copy_from_slice(&big.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = walk(&p).unwrap_err().to_string();
    assert!(
        e.contains(&format!("page {big}")) && e.contains("twice"),
        "{e}"
    );
    // A child id past the end of the file.
    b[at + 16 + 8..at + 16 + 16].copy_from_slice(&1_000_000u64.to_le_bytes());
    std::fs::write(&p, &b).unwrap();
    let e = walk(&p).unwrap_err().to_string();
    assert!(
        e.contains("page 1000000") && e.contains("out of range"),
        "{e}"
    );
    // Bit flips and byte smears all over (metas re-checksummed half the time so the
    // damage reaches the tree): errors or a successful walk, never a panic.
    for i in 0..2_000 {
        let mut b = orig.clone();
        let pos = if i % 4 == 0 {
            (root * 4096) as usize + rng.gen_range(0..4096)
        } else {
            rng.gen_range(0..b.len())
        };
        let len = rng.gen_range(1..64).min(b.len() - pos);
        for x in &mut b[pos..pos + len] {
            *x = if i % 2 == 0 {
                rng.gen()
            } else {
                *x ^ (1 << rng.gen_range(0..8))
            };
        }
        std::fs::write(&p, &b).unwrap();
        let _ = walk(&p);
    }
}

#[test]
fn keys_out_of_order_are_refused_by_the_writer() {
    let dir = tempfile::tempdir().unwrap();
    let mut w = DbWriter::create(&dir.path().join("db")).unwrap();
    let mut b = w.bucket("k");
    b.put(b"b", b"1").unwrap();
    let e = b.put(b"a", b"2").unwrap_err();
    assert!(matches!(e, SnapshotError::Unsorted { .. }), "{e}");
    // Also across a page boundary (the previous key is on a page already written).
    let mut b = w.bucket("big");
    for i in 0..1_000u32 {
        b.put(&i.to_be_bytes(), &[0u8; 100]).unwrap();
    }
    let e = b.put(&5u32.to_be_bytes(), b"x").unwrap_err();
    assert!(e.to_string().contains("ascending"), "{e}");
    let e = b.put(&999u32.to_be_bytes(), b"x").unwrap_err();
    assert!(matches!(e, SnapshotError::Unsorted { .. }), "{e}");
}

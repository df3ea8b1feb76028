//! `Store::reduce_to_state_at`, the in-place restore step, against the reference it
//! replaces: a fresh store loaded from `Store::write_state_at`. For every revision of a
//! history with overwrites, deletes, a lease revoked after its key was written, a record
//! stored in pieces and a compaction, both stores must stream byte-identical snapshots.

mod common;
use common::*;
use mvcc::*;

/// A history touching every path of the reduction; returns its revisions in order.
fn populate(s: &Store) -> Vec<i64> {
    let mut revs = Vec::new();
    apply(
        s,
        Command::LeaseGrant {
            id: 7,
            ttl_seconds: 100,
        },
    );
    apply(
        s,
        Command::LeaseGrant {
            id: 8,
            ttl_seconds: 100,
        },
    );
    for i in 0..40 {
        revs.push(put(s, &format!("k/{:02}", i % 9), &format!("v{i}")).revision);
    }
    revs.push(put_lease(s, "leased/kept", "a", 8).revision);
    revs.push(put_lease(s, "leased/revoked", "b", 7).revision);
    // A record far larger than one piece, then overwritten by a small one.
    let big = "x".repeat(20_000);
    revs.push(put(s, "big", &big).revision);
    revs.push(del(s, "k/03", "k/05").revision);
    revs.push(apply(s, Command::Compact { revision: revs[5] }).revision);
    revs.push(put(s, "big", "small now").revision);
    revs.push(apply(s, Command::LeaseRevoke { id: 7 }).revision);
    revs.push(put(s, "k/04", "back").revision);
    revs.push(
        apply(
            s,
            Command::Alarm {
                action: 1,
                member_id: 1,
                alarm: 1,
            },
        )
        .revision,
    );
    revs
}

fn snapshot(s: &Store) -> Vec<u8> {
    let mut out = Vec::new();
    s.write_snapshot(&mut out).unwrap();
    out
}

#[test]
fn reduce_in_place_equals_a_fresh_store_loaded_with_the_state_at_each_revision() {
    let (_d, src) = store();
    let revs = populate(&src);
    let full = snapshot(&src);
    let compact = src.compact_revision();
    let mut ats: Vec<i64> = revs.into_iter().filter(|r| *r >= compact).collect();
    ats.dedup();
    let mut detached_seen = false;
    for at in ats {
        let new_rev = at + 1_000;
        let (_d1, want) = store();
        let mut w = Vec::new();
        let expected = src.write_state_at(at, new_rev, &mut w).unwrap();
        want.load_snapshot(&mut w.as_slice(), LoadDurability::Scratch)
            .unwrap();

        let (_d2, got) = store();
        got.load_snapshot(&mut full.as_slice(), LoadDurability::Scratch)
            .unwrap();
        let st = got
            .reduce_to_state_at(at, new_rev, LoadDurability::Durable, || Ok(()))
            .unwrap();
        assert_eq!(st, expected, "at {at}");
        detached_seen |= st.detached > 0;
        assert_eq!(snapshot(&got), snapshot(&want), "at {at}");
        assert_eq!(got.current_revision(), new_rev);
        assert_eq!(got.compact_revision(), new_rev);
        assert_eq!(got.hash_kv(0).unwrap(), want.hash_kv(0).unwrap());
        // The reduced store takes writes like any other.
        let a = put(&got, "after", "restore");
        assert_eq!(a.revision, new_rev + 1);
    }
    assert!(
        detached_seen,
        "the history has a key whose lease was revoked"
    );
}

#[test]
fn reduce_works_across_batches_of_keys() {
    let (_d, src) = store();
    let n = REDUCE_BATCH_KEYS * 2 + 17;
    let cmds: Vec<Option<Command>> = (0..n)
        .map(|i| Some(Command::put(&put_req(&format!("b/{i:06}"), "v"))))
        .collect();
    src.apply_batch(&cmds, b"meta", false).unwrap();
    del(&src, "b/000100", "b/000200");
    let at = src.current_revision();
    let (_d1, want) = store();
    let mut w = Vec::new();
    src.write_state_at(at, at, &mut w).unwrap();
    want.load_snapshot(&mut w.as_slice(), LoadDurability::Scratch)
        .unwrap();
    let (_d2, got) = store();
    got.load_snapshot(&mut snapshot(&src).as_slice(), LoadDurability::Scratch)
        .unwrap();
    let st = got
        .reduce_to_state_at(at, at, LoadDurability::Scratch, || Ok(()))
        .unwrap();
    assert_eq!(st.keys, n as u64 - 100);
    assert_eq!(snapshot(&got), snapshot(&want));
    // Committed without fsync, then made durable: a reopened store holds the same.
    got.make_durable().unwrap();
    let path = got.path().to_path_buf();
    drop(got);
    let reopened = Store::open(&path).unwrap();
    assert_eq!(snapshot(&reopened), snapshot(&want));
}

#[test]
fn a_failing_check_before_the_commit_leaves_the_store_unchanged() {
    let (_d, src) = store();
    populate(&src);
    let before = snapshot(&src);
    let at = src.current_revision();
    let e = src
        .reduce_to_state_at(at, at + 5, LoadDurability::Durable, || {
            Err("the reference reader failed".into())
        })
        .unwrap_err();
    assert!(e.to_string().contains("the reference reader failed"), "{e}");
    assert_eq!(snapshot(&src), before);
    assert_eq!(src.current_revision(), at);
}

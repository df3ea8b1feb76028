mod common;
use common::*;
use mvcc::consts::*;
use mvcc::*;

fn setup() -> (tempfile::TempDir, Store) {
    let (d, s) = store();
    // rev 2..=6
    put(&s, "foo", "c"); // 2
    put(&s, "foo/a", "e"); // 3
    put(&s, "foo/b", "a"); // 4
    put(&s, "foo/c", "d"); // 5
    put(&s, "zoo", "b"); // 6
    put(&s, "foo/a", "f"); // 7: foo/a version 2
    (d, s)
}

#[test]
fn single_prefix_and_from_key() {
    let (_d, s) = setup();
    let r = s.range(&range_req("foo", "")).unwrap();
    assert_eq!(keys(&r), ["foo"]);
    assert_eq!(r.count, 1);
    assert_eq!(r.header.unwrap().revision, 7);
    let r = s.range(&range_req("foo/", &prefix_end("foo/"))).unwrap();
    assert_eq!(keys(&r), ["foo/a", "foo/b", "foo/c"]);
    // "\0" = all keys >= key
    let r = s.range(&range_req("foo/b", "\0")).unwrap();
    assert_eq!(keys(&r), ["foo/b", "foo/c", "zoo"]);
    // key "\0" + range_end "\0" = everything
    let r = s.range(&range_req("\0", "\0")).unwrap();
    assert_eq!(r.count, 5);
    // range_end < key: nothing
    let r = s.range(&range_req("zoo", "a")).unwrap();
    assert_eq!(r.count, 0);
    assert!(r.kvs.is_empty());
    // missing key
    assert!(s.range(&range_req("nope", "")).unwrap().kvs.is_empty());
    // empty key rejected
    assert_eq!(s.range(&range_req("", "")), Err(EtcdError::EmptyKey));
}

#[test]
fn limit_more_count() {
    let (_d, s) = setup();
    let mut q = range_req("a", "\0");
    q.limit = 2;
    let r = s.range(&q).unwrap();
    assert_eq!(keys(&r), ["foo", "foo/a"]);
    assert!(r.more);
    assert_eq!(r.count, 5);
    q.limit = 5;
    let r = s.range(&q).unwrap();
    assert!(!r.more);
    assert_eq!(r.kvs.len(), 5);
    q.limit = 0;
    q.count_only = true;
    let r = s.range(&q).unwrap();
    assert!(r.kvs.is_empty());
    assert_eq!(r.count, 5);
    assert!(!r.more);
}

#[test]
fn keys_only() {
    let (_d, s) = setup();
    let mut q = range_req("foo", "");
    q.keys_only = true;
    let r = s.range(&q).unwrap();
    assert_eq!(r.kvs[0].key, b"foo");
    assert!(r.kvs[0].value.is_empty());
    assert_eq!(r.kvs[0].mod_revision, 2);
}

#[test]
fn sorting() {
    let (_d, s) = setup();
    let sorted = |order: i32, target: i32, limit: i64| {
        let mut q = range_req("a", "\0");
        q.sort_order = order;
        q.sort_target = target;
        q.limit = limit;
        s.range(&q).unwrap()
    };
    assert_eq!(
        keys(&sorted(SORT_DESCEND, SORT_TARGET_KEY, 0)),
        ["zoo", "foo/c", "foo/b", "foo/a", "foo"]
    );
    assert_eq!(
        keys(&sorted(SORT_ASCEND, SORT_TARGET_KEY, 0)),
        ["foo", "foo/a", "foo/b", "foo/c", "zoo"]
    );
    assert_eq!(
        keys(&sorted(SORT_ASCEND, SORT_TARGET_VALUE, 0)),
        ["foo/b", "zoo", "foo", "foo/c", "foo/a"]
    );
    assert_eq!(
        keys(&sorted(SORT_DESCEND, SORT_TARGET_VALUE, 0)),
        ["foo/a", "foo/c", "foo", "zoo", "foo/b"]
    );
    // target != KEY with order NONE defaults to ascending
    assert_eq!(
        keys(&sorted(SORT_NONE, SORT_TARGET_MOD, 0)),
        ["foo", "foo/b", "foo/c", "zoo", "foo/a"]
    );
    assert_eq!(
        keys(&sorted(SORT_DESCEND, SORT_TARGET_MOD, 0)),
        ["foo/a", "zoo", "foo/c", "foo/b", "foo"]
    );
    assert_eq!(
        keys(&sorted(SORT_DESCEND, SORT_TARGET_CREATE, 0)),
        ["zoo", "foo/c", "foo/b", "foo/a", "foo"]
    );
    // version: foo/a has version 2, everything else 1 (stable among ties)
    assert_eq!(
        keys(&sorted(SORT_DESCEND, SORT_TARGET_VERSION, 0))[0],
        "foo/a"
    );
    assert_eq!(
        keys(&sorted(SORT_ASCEND, SORT_TARGET_VERSION, 0))[4],
        "foo/a"
    );
    // sort happens before limit
    let r = sorted(SORT_DESCEND, SORT_TARGET_MOD, 2);
    assert_eq!(keys(&r), ["foo/a", "zoo"]);
    assert!(r.more);
    assert_eq!(r.count, 5);
    // invalid sort option
    let mut q = range_req("a", "\0");
    q.sort_order = 7;
    assert_eq!(s.range(&q), Err(EtcdError::InvalidSortOption));
}

#[test]
fn revision_filters() {
    let (_d, s) = setup();
    let q = |f: &dyn Fn(&mut PbRangeRequest)| {
        let mut q = range_req("a", "\0");
        f(&mut q);
        s.range(&q).unwrap()
    };
    assert_eq!(
        keys(&q(&|q| q.min_mod_revision = 5)),
        ["foo/a", "foo/c", "zoo"]
    );
    assert_eq!(keys(&q(&|q| q.max_mod_revision = 4)), ["foo", "foo/b"]);
    assert_eq!(
        keys(&q(&|q| q.min_create_revision = 4)),
        ["foo/b", "foo/c", "zoo"]
    );
    assert_eq!(keys(&q(&|q| q.max_create_revision = 3)), ["foo", "foo/a"]);
    let r = q(&|q| {
        q.min_mod_revision = 3;
        q.max_mod_revision = 6;
        q.limit = 1;
    });
    assert_eq!(keys(&r), ["foo/b"]);
    assert!(r.more);
    // etcd: count is the range count before the filters
    assert_eq!(r.count, 5);
}

#[test]
fn past_revisions() {
    let (_d, s) = setup();
    del(&s, "foo/b", ""); // 8
    let at = |rev: i64| {
        let mut q = range_req("foo/", &prefix_end("foo/"));
        q.revision = rev;
        s.range(&q)
    };
    assert_eq!(keys(&at(3).unwrap()), ["foo/a"]);
    assert_eq!(keys(&at(7).unwrap()), ["foo/a", "foo/b", "foo/c"]);
    assert_eq!(keys(&at(8).unwrap()), ["foo/a", "foo/c"]);
    assert_eq!(keys(&at(0).unwrap()), ["foo/a", "foo/c"]);
    assert_eq!(keys(&at(-5).unwrap()), ["foo/a", "foo/c"]);
    let r = at(6).unwrap();
    assert_eq!(r.kvs[0].value, b"e");
    assert_eq!(r.kvs[0].version, 1);
    // header revision is the current revision, not the requested one
    assert_eq!(r.header.unwrap().revision, 8);
    assert_eq!(at(9), Err(EtcdError::FutureRevision));
    // compaction: rev < compact -> Compacted; == compact is fine
    apply(&s, Command::Compact { revision: 5 });
    assert_eq!(at(4), Err(EtcdError::Compacted));
    assert_eq!(keys(&at(5).unwrap()), ["foo/a", "foo/b", "foo/c"]);
    assert_eq!(keys(&at(7).unwrap()), ["foo/a", "foo/b", "foo/c"]);
    assert_eq!(at(7).unwrap().kvs[0].value, b"f");
}

/// `range_page` returns the same keys as a Range, in pages that stop at the
/// limit, at the current revision and at an older one.
#[test]
fn range_page_pages_through_the_store() {
    let (_d, s) = setup();
    let page = |from: &str, rev: i64| -> Vec<String> {
        s.range_page(from.as_bytes(), b"\0", rev, 2)
            .unwrap()
            .iter()
            .map(|kv| String::from_utf8(kv.key.clone()).unwrap())
            .collect()
    };
    assert_eq!(page("\0", 0), ["foo", "foo/a"]);
    assert_eq!(page("foo/a\0", 0), ["foo/b", "foo/c"]);
    assert_eq!(page("foo/c\0", 0), ["zoo"]);
    // At revision 3 only foo and foo/a existed; foo/a had its first value.
    let old = s.range_page(b"\0", b"\0", 3, 10).unwrap();
    assert_eq!(old.len(), 2);
    assert_eq!(old[1].value, b"e");
    assert_eq!(
        s.range_page(b"\0", b"\0", 99, 1),
        Err(EtcdError::FutureRevision)
    );
}

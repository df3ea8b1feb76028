//! The read path: ranges at a revision, historical lookups through the
//! per-key revision index, txn compares, lease lookups. Every record read is
//! checksum-verified (`codec::unseal`).

use super::history::{ChunkT, History};
#[allow(unused_imports)]
use super::*;

pub(crate) fn get_rev<R: RevT, C: ChunkT>(
    t: &History<'_, R, C>,
    main: i64,
    sub: i64,
) -> Result<Option<RevRecord>, MvccError> {
    t.record(main, sub)
}

pub(crate) fn get_index(t: &impl IndexT, key: &[u8]) -> Result<Option<IndexEntry>, MvccError> {
    match t.get(key).map_err(db("read key_index"))? {
        None => Ok(None),
        Some(g) => Ok(Some(IndexEntry::decode(unseal(
            KEY_INDEX_TABLE,
            &[key],
            g.value(),
        )?)?)),
    }
}

/// The live KeyValue stored at (main, sub) for `key`. Cross-checks that the record exists,
/// is a put, belongs to `key` and carries the right mod_revision — any mismatch means the
/// indexes and the history disagree, which we treat as corruption.
pub(crate) fn kv_at<R: RevT, C: ChunkT>(
    t: &History<'_, R, C>,
    key: &[u8],
    main: i64,
    sub: i64,
) -> Result<PbKeyValue, MvccError> {
    match get_rev(t, main, sub)? {
        Some(RevRecord::Put(kv)) if kv.key == key && kv.mod_revision == main => Ok(kv),
        _ => Err(MvccError::Corrupted {
            table: REV_TABLE,
            key: format!(
                "({main}, {sub}) (expected a put of {} referenced by the key index)",
                render_key(&[key])
            ),
        }),
    }
}

pub(crate) fn decode_key_rev_flag(
    key: &[u8],
    main: i64,
    sub: i64,
    v: &[u8],
) -> Result<bool, MvccError> {
    let p = unseal(KEY_REV_TABLE, &[key, &rev_key_bytes(main, sub)], v)?;
    match p {
        [0] => Ok(false),
        [1] => Ok(true),
        _ => Err(MvccError::Decode {
            what: "key_rev flag",
            detail: format!("{p:?}"),
        }),
    }
}

/// Newest history entry of `key` with main revision <= `at`: (main, sub, is_tombstone).
pub(super) fn key_rev_last_le(
    t: &impl KeyRevT,
    key: &[u8],
    at: i64,
) -> Result<Option<(i64, i64, bool)>, MvccError> {
    let mut it = t
        .range((key, i64::MIN, i64::MIN)..=(key, at, i64::MAX))
        .map_err(db("scan key_rev"))?;
    match it.next_back() {
        None => Ok(None),
        Some(r) => {
            let (k, v) = r.map_err(db("scan key_rev"))?;
            let (_, m, s) = k.value();
            let tomb = decode_key_rev_flag(key, m, s, v.value())?;
            Ok(Some((m, s, tomb)))
        }
    }
}

/// Newest history entry of `key` strictly before (main, sub).
pub(super) fn key_rev_prev(
    t: &impl KeyRevT,
    key: &[u8],
    main: i64,
    sub: i64,
) -> Result<Option<(i64, i64, bool)>, MvccError> {
    let mut it = t
        .range((key, i64::MIN, i64::MIN)..(key, main, sub))
        .map_err(db("scan key_rev"))?;
    match it.next_back() {
        None => Ok(None),
        Some(r) => {
            let (k, v) = r.map_err(db("scan key_rev"))?;
            let (_, m, s) = k.value();
            let tomb = decode_key_rev_flag(key, m, s, v.value())?;
            Ok(Some((m, s, tomb)))
        }
    }
}

/// etcd range_end rules: empty = the single key; "\0" = every key >= key; else [key, end).
pub(crate) fn key_in_range(k: &[u8], key: &[u8], end: &[u8]) -> bool {
    if end.is_empty() {
        k == key
    } else if end == [0] {
        k >= key
    } else {
        k >= key && k < end
    }
}

/// Visit key_index entries for keys in the etcd range, in key order.
pub(super) fn scan_index(
    t: &impl IndexT,
    key: &[u8],
    end: &[u8],
    mut f: impl FnMut(&[u8], IndexEntry) -> Result<(), MvccError>,
) -> Result<(), MvccError> {
    scan_index_while(t, key, end, |k, e| f(k, e).map(|()| true))
}

/// [`scan_index`] that stops as soon as `f` returns `false`.
pub(super) fn scan_index_while(
    t: &impl IndexT,
    key: &[u8],
    end: &[u8],
    mut f: impl FnMut(&[u8], IndexEntry) -> Result<bool, MvccError>,
) -> Result<(), MvccError> {
    if end.is_empty() {
        if let Some(e) = get_index(t, key)? {
            f(key, e)?;
        }
        return Ok(());
    }
    let iter = if end == [0] {
        t.range::<&[u8]>(key..)
    } else {
        if key >= end {
            return Ok(());
        }
        t.range::<&[u8]>(key..end)
    }
    .map_err(db("scan key_index"))?;
    for item in iter {
        let (k, v) = item.map_err(db("scan key_index"))?;
        let k = k.value();
        let e = IndexEntry::decode(unseal(KEY_INDEX_TABLE, &[k], v.value())?)?;
        if !f(k, e)? {
            break;
        }
    }
    Ok(())
}

/// Raw MVCC range (etcd `rangeKeys`): the KeyValues visible at revision `at`.
/// Returns (kvs, count) where count is the number of matching keys regardless of `limit`
/// (0 = unlimited); with `count_only` no values are read.
#[allow(clippy::too_many_arguments)]
pub(super) fn range_keys<R: RevT, C: ChunkT>(
    index: &impl IndexT,
    revt: &History<'_, R, C>,
    key_rev: &impl KeyRevT,
    key: &[u8],
    end: &[u8],
    at: i64,
    limit: usize,
    count_only: bool,
) -> Result<(Vec<PbKeyValue>, i64), MvccError> {
    range_keys_counted(index, revt, key_rev, key, end, at, limit, count_only, true)
}

/// [`range_keys`]; without `need_count` the scan stops at `limit` keys (the
/// count returned is then only the keys read).
#[allow(clippy::too_many_arguments)]
pub(super) fn range_keys_counted<R: RevT, C: ChunkT>(
    index: &impl IndexT,
    revt: &History<'_, R, C>,
    key_rev: &impl KeyRevT,
    key: &[u8],
    end: &[u8],
    at: i64,
    limit: usize,
    count_only: bool,
    need_count: bool,
) -> Result<(Vec<PbKeyValue>, i64), MvccError> {
    let mut kvs = Vec::new();
    let mut count: i64 = 0;
    scan_index_while(index, key, end, |k, e| {
        // Fast path: the latest state is the state at `at`.
        let found = if e.mod_main <= at {
            (!e.tombstone).then_some((e.mod_main, e.mod_sub))
        } else {
            match key_rev_last_le(key_rev, k, at)? {
                Some((m, s, false)) => Some((m, s)),
                _ => None,
            }
        };
        if let Some((m, s)) = found {
            count += 1;
            if !count_only && (limit == 0 || kvs.len() < limit) {
                let kv = kv_at(revt, k, m, s)?;
                debug_assert!(kv.mod_revision <= at && kv.create_revision <= kv.mod_revision);
                debug_assert!(kv.version >= 1);
                kvs.push(kv);
            }
        }
        Ok(need_count || limit == 0 || kvs.len() < limit)
    })?;
    Ok((kvs, count))
}

/// etcd's Range request (applier `Range`) over a view whose current revision is `cur`.
pub(super) fn range_request<R: RevT, C: ChunkT>(
    index: &impl IndexT,
    revt: &History<'_, R, C>,
    key_rev: &impl KeyRevT,
    r: &PbRangeRequest,
    cur: i64,
    compact: i64,
) -> Result<Result<PbRangeResponse, EtcdError>, MvccError> {
    let mut rev = r.revision;
    if rev > cur {
        return Ok(Err(EtcdError::FutureRevision));
    }
    if rev <= 0 {
        rev = cur;
    }
    if rev < compact {
        return Ok(Err(EtcdError::Compacted));
    }
    let filtered = r.min_mod_revision != 0
        || r.max_mod_revision != 0
        || r.min_create_revision != 0
        || r.max_create_revision != 0;
    // Sorting and filtering need everything; otherwise fetch one extra for `more`.
    let mut limit = r.limit;
    if r.sort_order != SORT_NONE || filtered {
        limit = 0;
    }
    if limit > 0 {
        limit += 1;
    }
    let limit = usize::try_from(limit.max(0)).unwrap_or(usize::MAX);
    let (mut kvs, count) = range_keys(
        index,
        revt,
        key_rev,
        &r.key,
        &r.range_end,
        rev,
        limit,
        r.count_only,
    )?;
    if r.max_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision <= r.max_mod_revision);
    }
    if r.min_mod_revision != 0 {
        kvs.retain(|kv| kv.mod_revision >= r.min_mod_revision);
    }
    if r.max_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision <= r.max_create_revision);
    }
    if r.min_create_revision != 0 {
        kvs.retain(|kv| kv.create_revision >= r.min_create_revision);
    }
    let mut order = r.sort_order;
    if r.sort_target != SORT_TARGET_KEY && order == SORT_NONE {
        order = SORT_ASCEND; // etcd: non-key targets default to ascending
    } else if r.sort_target == SORT_TARGET_KEY && order == SORT_ASCEND {
        order = SORT_NONE; // already key-ascending
    }
    if order == SORT_ASCEND || order == SORT_DESCEND {
        let cmp = |a: &PbKeyValue, b: &PbKeyValue| match r.sort_target {
            SORT_TARGET_VERSION => a.version.cmp(&b.version),
            SORT_TARGET_CREATE => a.create_revision.cmp(&b.create_revision),
            SORT_TARGET_MOD => a.mod_revision.cmp(&b.mod_revision),
            SORT_TARGET_VALUE => a.value.cmp(&b.value),
            _ => a.key.cmp(&b.key),
        };
        if order == SORT_ASCEND {
            kvs.sort_by(cmp);
        } else {
            kvs.sort_by(|a, b| cmp(b, a));
        }
    }
    let mut more = false;
    if r.limit > 0 && kvs.len() > r.limit as usize {
        kvs.truncate(r.limit as usize);
        more = true;
    }
    if r.keys_only {
        for kv in &mut kvs {
            kv.value = Vec::new();
        }
    }
    Ok(Ok(PbRangeResponse {
        header: Some(PbResponseHeader {
            revision: cur,
            ..Default::default()
        }),
        kvs,
        more,
        count,
    }))
}

/// etcd `compareKV`.
pub(super) fn compare_kv(c: &PbCompare, kv: &PbKeyValue) -> bool {
    use std::cmp::Ordering as O;
    let result = match c.target {
        TARGET_VALUE => {
            let v: &[u8] = match &c.target_union {
                Some(PbTargetUnion::Value(v)) => v,
                _ => &[],
            };
            kv.value.as_slice().cmp(v)
        }
        TARGET_CREATE => {
            let v = match c.target_union {
                Some(PbTargetUnion::CreateRevision(v)) => v,
                _ => 0,
            };
            kv.create_revision.cmp(&v)
        }
        TARGET_MOD => {
            let v = match c.target_union {
                Some(PbTargetUnion::ModRevision(v)) => v,
                _ => 0,
            };
            kv.mod_revision.cmp(&v)
        }
        TARGET_VERSION => {
            let v = match c.target_union {
                Some(PbTargetUnion::Version(v)) => v,
                _ => 0,
            };
            kv.version.cmp(&v)
        }
        TARGET_LEASE => {
            let v = match c.target_union {
                Some(PbTargetUnion::Lease(v)) => v,
                _ => 0,
            };
            kv.lease.cmp(&v)
        }
        _ => O::Equal,
    };
    match c.result {
        CMP_EQUAL => result == O::Equal,
        CMP_NOT_EQUAL => result != O::Equal,
        CMP_GREATER => result == O::Greater,
        CMP_LESS => result == O::Less,
        _ => true,
    }
}

pub(super) fn header(rev: i64) -> Option<PbResponseHeader> {
    Some(PbResponseHeader {
        revision: rev,
        ..Default::default()
    })
}

pub(crate) fn get_lease_ttl(t: &impl LeaseT, id: i64) -> Result<Option<i64>, MvccError> {
    match t.get(id).map_err(db("read lease"))? {
        None => Ok(None),
        Some(g) => Ok(Some(decode_i64(
            "lease ttl",
            unseal(LEASE_TABLE, &[&id.to_be_bytes()], g.value())?,
        )?)),
    }
}

pub(crate) fn lease_keys(t: &impl LeaseKeyT, id: i64) -> Result<Vec<Vec<u8>>, MvccError> {
    let mut out = Vec::new();
    let empty: &[u8] = &[];
    for item in t.range((id, empty)..).map_err(db("scan lease_key"))? {
        let (k, v) = item.map_err(db("scan lease_key"))?;
        let (lid, key) = k.value();
        if lid != id {
            break;
        }
        unseal(LEASE_KEY_TABLE, &[&id.to_be_bytes(), key], v.value())?;
        out.push(key.to_vec());
    }
    Ok(out)
}

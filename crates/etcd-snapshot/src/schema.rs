//! etcd's backend schema (3.4 and 3.5), as far as a snapshot carries it.
//!
//! | bucket | key | value |
//! |---|---|---|
//! | `key` | revision: main u64 BE, `_`, sub u64 BE (17 bytes), plus `t` for a tombstone | `mvccpb.KeyValue` (a tombstone holds only the key) |
//! | `lease` | lease id, i64 BE | `leasepb.Lease {ID, TTL, RemainingTTL}` |
//! | `meta` | `consistent_index` | u64 BE: the Raft index applied last |
//! | `meta` | `scheduledCompactRev`, `finishedCompactRev` | a revision (17 bytes, as in `key`) |
//! | `meta` | `term` (3.5), `confState` (3.5, JSON) | u64 BE; Raft configuration |
//! | `members` | member id as lower-case hex | JSON `{"id","peerURLs","name","clientURLs","isLearner"}` |
//! | `members_removed` | member id as hex | `removed` |
//! | `cluster` | `clusterVersion` | e.g. `3.4.0` |
//! | `alarm` | `etcdserverpb.AlarmMember` | empty |
//! | `auth` | `authEnabled`, `authRevision` | `[1]`/`[0]`; u64 BE |
//! | `authUsers`, `authRoles` | name | `authpb.User`, `authpb.Role` |
//!
//! etcd's current revision is not stored: on start etcd takes the newest revision in
//! `key`, or the finished compaction revision when that is larger.

use serde::{Deserialize, Serialize};

pub const BUCKET_KEY: &[u8] = b"key";
pub const BUCKET_LEASE: &[u8] = b"lease";
pub const BUCKET_META: &[u8] = b"meta";
pub const BUCKET_MEMBERS: &[u8] = b"members";
pub const BUCKET_MEMBERS_REMOVED: &[u8] = b"members_removed";
pub const BUCKET_CLUSTER: &[u8] = b"cluster";
pub const BUCKET_ALARM: &[u8] = b"alarm";
pub const BUCKET_AUTH: &[u8] = b"auth";
pub const BUCKET_AUTH_USERS: &[u8] = b"authUsers";
pub const BUCKET_AUTH_ROLES: &[u8] = b"authRoles";

pub const META_CONSISTENT_INDEX: &[u8] = b"consistent_index";
pub const META_SCHEDULED_COMPACT: &[u8] = b"scheduledCompactRev";
pub const META_FINISHED_COMPACT: &[u8] = b"finishedCompactRev";
pub const CLUSTER_VERSION_KEY: &[u8] = b"clusterVersion";
pub const AUTH_ENABLED_KEY: &[u8] = b"authEnabled";
pub const AUTH_REVISION_KEY: &[u8] = b"authRevision";

/// Bytes of a revision key without the tombstone mark.
pub const REV_KEY_BYTES: usize = 17;
const TOMBSTONE_MARK: u8 = b't';

/// The `key` bucket's key for revision (main, sub).
pub fn rev_key(main: i64, sub: i64, tombstone: bool) -> Vec<u8> {
    let mut b = Vec::with_capacity(REV_KEY_BYTES + 1);
    b.extend_from_slice(&main.to_be_bytes());
    b.push(b'_');
    b.extend_from_slice(&sub.to_be_bytes());
    if tombstone {
        b.push(TOMBSTONE_MARK);
    }
    b
}

/// (main, sub, tombstone) of a `key` bucket key; `None` when it is not one.
pub fn parse_rev_key(b: &[u8]) -> Option<(i64, i64, bool)> {
    let tombstone = match b.len() {
        REV_KEY_BYTES => false,
        n if n == REV_KEY_BYTES + 1 && b[REV_KEY_BYTES] == TOMBSTONE_MARK => true,
        _ => return None,
    };
    if b[8] != b'_' {
        return None;
    }
    let main = i64::from_be_bytes(b[..8].try_into().ok()?);
    let sub = i64::from_be_bytes(b[9..17].try_into().ok()?);
    if main < 0 || sub < 0 {
        return None;
    }
    Some((main, sub, tombstone))
}

/// etcd's `leasepb.Lease`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct LeasePb {
    #[prost(int64, tag = "1")]
    pub id: i64,
    #[prost(int64, tag = "2")]
    pub ttl: i64,
    /// Remaining TTL, set when lease checkpointing is on (3.4+); 0 otherwise.
    #[prost(int64, tag = "3")]
    pub remaining_ttl: i64,
}

/// A member as etcd stores it in the `members` bucket (JSON).
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct MemberJson {
    pub id: u64,
    #[serde(rename = "peerURLs", default)]
    pub peer_urls: Vec<String>,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub name: String,
    #[serde(rename = "clientURLs", default, skip_serializing_if = "Vec::is_empty")]
    pub client_urls: Vec<String>,
    #[serde(
        rename = "isLearner",
        default,
        skip_serializing_if = "std::ops::Not::not"
    )]
    pub is_learner: bool,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn revision_keys_round_trip_and_sort_like_revisions() {
        let a = rev_key(5, 0, false);
        let b = rev_key(5, 0, true);
        let c = rev_key(5, 1, false);
        let d = rev_key(256, 0, false);
        assert!(a < b && b < c && c < d);
        assert_eq!(parse_rev_key(&a), Some((5, 0, false)));
        assert_eq!(parse_rev_key(&b), Some((5, 0, true)));
        assert_eq!(parse_rev_key(&d[..16]), None);
        let mut bad = a.clone();
        bad[8] = b'-';
        assert_eq!(parse_rev_key(&bad), None);
    }
}

//! The continuous archive: every committed revision of the store, shipped in segments
//! (at least every `archive_interval_ms`) after a full backup, for point-in-time
//! restore between backups.
//!
//! A segment `archive/<upto:020>-<after:020>-<ms:013>.seg` holds the revisions
//! `after+1 ..= upto` (none when `after == upto`: lease or compaction records only),
//! `ms` being when `upto` was seen applied. Stored as `age(zstd(plaintext))` like a
//! chunk; the plaintext is
//!
//! ```text
//! "PHXARCH\0" u32:version  { u8:tag u32:len payload }*  0xFF u64:records u32:crc32
//! tag 1 EVENT   prost etcd mvccpb.Event (the key-value with create/mod revision,
//!               version, lease; a delete carries the key and mod_revision)
//! tag 2 MARK    i64 revision, i64 unix ms: the revision was applied at or before then
//! tag 3 GRANT   i64 lease id, i64 ttl seconds, i64 revision when seen
//! tag 4 REVOKE  i64 lease id, i64 revision when seen
//! tag 5 COMPACT i64 compact revision, i64 revision when seen
//! ```
//!
//! Segments are written with one atomic put each, so a reader sees whole segments; a
//! segment is only ever written after the previous one at that destination, so the
//! chain of a destination is contiguous, and restore checks that it is.

use std::collections::BTreeMap;

use bytes::Bytes;
use etcd_client::proto::PbEvent;
use prost::Message;

use crate::dest::Destination;
use crate::error::BackupError;
use crate::format::*;

const MAGIC: &[u8; 8] = b"PHXARCH\0";
const VERSION: u32 = 1;
const T_EVENT: u8 = 1;
const T_MARK: u8 = 2;
const T_GRANT: u8 = 3;
const T_REVOKE: u8 = 4;
const T_COMPACT: u8 = 5;
const T_END: u8 = 0xFF;
/// Largest plaintext segment accepted on read.
pub const MAX_SEGMENT_PLAIN_BYTES: usize = 1 << 30;

/// A segment's name.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub struct SegmentName {
    pub upto: i64,
    pub after: i64,
    pub last_ms: u64,
}

impl SegmentName {
    pub fn key(&self) -> String {
        format!(
            "{ARCHIVE_PREFIX}/{:020}-{:020}-{:013}.seg",
            self.upto, self.after, self.last_ms
        )
    }
    pub fn parse(key: &str) -> Option<SegmentName> {
        let name = key.rsplit('/').next()?.strip_suffix(".seg")?;
        let mut it = name.split('-');
        let s = SegmentName {
            upto: it.next()?.parse().ok()?,
            after: it.next()?.parse().ok()?,
            last_ms: it.next()?.parse().ok()?,
        };
        (it.next().is_none() && s.after <= s.upto).then_some(s)
    }
}

/// Every segment at `d`, in name order.
pub async fn list_segments(d: &Destination) -> Result<Vec<SegmentName>, BackupError> {
    let mut v: Vec<SegmentName> = d
        .list(ARCHIVE_PREFIX)
        .await?
        .into_iter()
        .filter_map(|(k, _)| SegmentName::parse(&k))
        .collect();
    v.sort();
    Ok(v)
}

/// The contiguous chain of segments continuing from revision `from`: each next
/// segment starts at or before the current end and reaches beyond it (overlaps, e.g.
/// from two members briefly both shipping, are harmless: committed history is the same
/// everywhere). Lease/compaction-only segments at the current end are included.
/// Returns the chain and the revision it reaches.
pub fn chain(segments: &[SegmentName], from: i64) -> (Vec<SegmentName>, i64) {
    let mut out = Vec::new();
    let mut end = from;
    let mut used = vec![false; segments.len()];
    loop {
        let mut best: Option<usize> = None;
        for (i, s) in segments.iter().enumerate() {
            if used[i] || s.after > end || s.upto < end {
                continue;
            }
            if s.upto == end && s.after == end {
                best = Some(i);
                break;
            }
            if s.upto > end && best.is_none_or(|b| segments[b].upto < s.upto) {
                best = Some(i);
            }
        }
        let Some(i) = best else { break };
        used[i] = true;
        end = end.max(segments[i].upto);
        out.push(segments[i].clone());
    }
    (out, end)
}

/// A decoded segment.
#[derive(Debug, Default, Clone, PartialEq)]
pub struct Segment {
    pub events: Vec<PbEvent>,
    pub marks: Vec<(i64, u64)>,
    pub grants: Vec<(i64, i64, i64)>,
    pub revokes: Vec<(i64, i64)>,
    pub compactions: Vec<(i64, i64)>,
}

struct Enc {
    buf: Vec<u8>,
    n: u64,
}

impl Enc {
    fn rec(&mut self, tag: u8, payload: &[u8]) {
        self.buf.push(tag);
        self.buf
            .extend_from_slice(&(payload.len() as u32).to_le_bytes());
        self.buf.extend_from_slice(payload);
        self.n += 1;
    }
}

fn i64s(v: &[i64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

impl Segment {
    pub fn encode(&self) -> Vec<u8> {
        let mut e = Enc {
            buf: Vec::with_capacity(4096),
            n: 0,
        };
        e.buf.extend_from_slice(MAGIC);
        e.buf.extend_from_slice(&VERSION.to_le_bytes());
        for (id, ttl, seen) in &self.grants {
            e.rec(T_GRANT, &i64s(&[*id, *ttl, *seen]));
        }
        for ev in &self.events {
            e.rec(T_EVENT, &ev.encode_to_vec());
        }
        for (r, ms) in &self.marks {
            e.rec(T_MARK, &i64s(&[*r, *ms as i64]));
        }
        for (id, seen) in &self.revokes {
            e.rec(T_REVOKE, &i64s(&[*id, *seen]));
        }
        for (c, seen) in &self.compactions {
            e.rec(T_COMPACT, &i64s(&[*c, *seen]));
        }
        e.buf.push(T_END);
        let n = e.n;
        e.buf.extend_from_slice(&n.to_le_bytes());
        let crc = crc32fast::hash(&e.buf);
        e.buf.extend_from_slice(&crc.to_le_bytes());
        e.buf
    }

    pub fn decode(b: &[u8]) -> Result<Segment, String> {
        if b.len() < 12 + 13 || &b[..8] != MAGIC {
            return Err("not an archive segment (bad magic)".into());
        }
        let (body, crc) = b.split_at(b.len() - 4);
        if crc32fast::hash(body) != u32::from_le_bytes(crc.try_into().expect("4")) {
            return Err("CRC32 mismatch".into());
        }
        let ver = u32::from_le_bytes(body[8..12].try_into().expect("4"));
        if ver != VERSION {
            return Err(format!("unsupported segment version {ver}"));
        }
        let mut s = Segment::default();
        let mut p = 12;
        let mut n = 0u64;
        let rd =
            |x: &[u8], i: usize| i64::from_le_bytes(x[i * 8..i * 8 + 8].try_into().expect("8"));
        loop {
            let tag = *body.get(p).ok_or("truncated")?;
            p += 1;
            if tag == T_END {
                let cnt = u64::from_le_bytes(
                    body.get(p..p + 8)
                        .ok_or("truncated")?
                        .try_into()
                        .expect("8"),
                );
                if cnt != n || p + 8 != body.len() {
                    return Err("record count mismatch".into());
                }
                return Ok(s);
            }
            let len = u32::from_le_bytes(
                body.get(p..p + 4)
                    .ok_or("truncated")?
                    .try_into()
                    .expect("4"),
            ) as usize;
            p += 4;
            let x = body.get(p..p + len).ok_or("truncated")?;
            p += len;
            n += 1;
            let need = |k: usize| {
                if x.len() == k * 8 {
                    Ok(())
                } else {
                    Err(format!("record tag {tag} has {} bytes", x.len()))
                }
            };
            match tag {
                T_EVENT => s
                    .events
                    .push(PbEvent::decode(x).map_err(|e| format!("event: {e}"))?),
                T_MARK => {
                    need(2)?;
                    s.marks.push((rd(x, 0), rd(x, 1) as u64))
                }
                T_GRANT => {
                    need(3)?;
                    s.grants.push((rd(x, 0), rd(x, 1), rd(x, 2)))
                }
                T_REVOKE => {
                    need(2)?;
                    s.revokes.push((rd(x, 0), rd(x, 1)))
                }
                T_COMPACT => {
                    need(2)?;
                    s.compactions.push((rd(x, 0), rd(x, 1)))
                }
                t => return Err(format!("unknown record tag {t}")),
            }
        }
    }
}

/// Read, decrypt and check one segment.
pub async fn read_segment(
    d: &Destination,
    name: &SegmentName,
    identities: &[Box<dyn age::Identity + Send + Sync>],
) -> Result<Segment, BackupError> {
    let key = name.key();
    let obj = d
        .get(&key)
        .await?
        .ok_or_else(|| BackupError::MissingObject {
            url: d.url.clone(),
            object: key.clone(),
            backup: "(archive)".into(),
        })?;
    let plain = match open(&obj, identities, MAX_SEGMENT_PLAIN_BYTES) {
        Ok(p) => p,
        Err(OpenError::NoMatchingKey) => {
            return Err(BackupError::WrongIdentity {
                url: d.url.clone(),
                object: key,
                recipients: vec![],
            })
        }
        Err(OpenError::Damaged(detail)) => {
            return Err(BackupError::CorruptObject {
                url: d.url.clone(),
                object: key,
                detail,
            })
        }
    };
    let seg = Segment::decode(&plain).map_err(|detail| BackupError::CorruptObject {
        url: d.url.clone(),
        object: key.clone(),
        detail,
    })?;
    for ev in &seg.events {
        let r = ev.kv.as_ref().map(|k| k.mod_revision).unwrap_or(0);
        if r <= name.after || r > name.upto {
            return Err(BackupError::CorruptObject {
                url: d.url.clone(),
                object: key,
                detail: format!(
                    "event at revision {r} outside the segment's range {}..={}",
                    name.after + 1,
                    name.upto
                ),
            });
        }
    }
    Ok(seg)
}

/// Per-destination archiver state kept by the member that runs the schedule.
#[derive(Debug, Clone)]
pub struct DestArchive {
    /// Revisions up to here are at the destination.
    pub after: i64,
    /// Leases as last shipped (id → ttl seconds).
    pub leases: BTreeMap<i64, i64>,
    pub compact: i64,
}

/// What one [`ship`] call sent.
#[derive(Debug, Default, Clone)]
pub struct Shipped {
    pub segments: u64,
    pub bytes: u64,
    pub revisions_upto: i64,
}

/// Ship everything the local store holds after `st.after` (at most
/// `max_segment_events` events per segment; a revision is never split) plus lease and
/// compaction changes, as one or more segments. `marks` are (revision, ms) observations.
/// On error `st` is unchanged for what was not written (the next call resumes there).
#[allow(clippy::too_many_arguments)]
pub async fn ship(
    d: &Destination,
    store: &std::sync::Arc<mvcc::Store>,
    st: &mut DestArchive,
    marks: &[(i64, u64)],
    recipients: &[age::x25519::Recipient],
    zstd_level: i32,
    max_segment_events: usize,
) -> Result<Shipped, BackupError> {
    let mut out = Shipped::default();
    loop {
        let cur = store.current_revision();
        let compact = store.compact_revision();
        let leases: BTreeMap<i64, i64> = store
            .try_leases()
            .map_err(|e| BackupError::Archive {
                url: d.url.clone(),
                detail: format!("reading leases: {e}"),
            })?
            .into_iter()
            .map(|l| (l.id, l.ttl_seconds))
            .collect();
        let after = st.after;
        let s2 = store.clone();
        let max = max_segment_events.max(1);
        let events = tokio::task::spawn_blocking(move || {
            s2.events(&[0], &[0], after + 1, cur, false, max)
        })
        .await
        .expect("events task")
        .map_err(|e| BackupError::Archive {
            url: d.url.clone(),
            detail: match e {
                mvcc::MvccError::Etcd(mvcc::EtcdError::Compacted) => format!(
                    "revision {} is compacted on this member: the archive needs a new full backup to continue",
                    after + 1
                ),
                e => format!("reading revisions after {after}: {e}"),
            },
        })?;
        let upto = events
            .last()
            .and_then(|e| e.kv.as_ref())
            .map(|k| k.mod_revision)
            .unwrap_or(after)
            .max(after);
        let complete = upto >= cur;
        let mut seg = Segment {
            events,
            ..Default::default()
        };
        if complete {
            for (id, ttl) in &leases {
                if st.leases.get(id) != Some(ttl) {
                    seg.grants.push((*id, *ttl, cur));
                }
            }
            for id in st.leases.keys() {
                if !leases.contains_key(id) {
                    seg.revokes.push((*id, cur));
                }
            }
            if compact != st.compact {
                seg.compactions.push((compact, cur));
            }
        }
        if seg.events.is_empty()
            && seg.grants.is_empty()
            && seg.revokes.is_empty()
            && seg.compactions.is_empty()
        {
            return Ok(out);
        }
        let (_, now) = now_rfc3339();
        seg.marks = marks
            .iter()
            .filter(|(r, _)| *r > after && *r <= upto)
            .copied()
            .collect();
        let last_ms = if complete {
            seg.marks.push((upto, now));
            now
        } else {
            seg.marks.last().map(|m| m.1).unwrap_or(now)
        };
        let name = SegmentName {
            upto,
            after,
            last_ms,
        };
        let plain = seg.encode();
        let r2 = recipients.to_vec();
        let obj = tokio::task::spawn_blocking(move || seal(&plain, &r2, zstd_level))
            .await
            .expect("seal task")
            .map_err(|e| BackupError::Archive {
                url: d.url.clone(),
                detail: format!("encrypting a segment: {e}"),
            })?;
        let len = obj.len() as u64;
        d.put(&name.key(), Bytes::from(obj)).await?;
        out.segments += 1;
        out.bytes += len;
        out.revisions_upto = upto;
        st.after = upto;
        if complete {
            st.leases = leases;
            st.compact = compact;
            return Ok(out);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn segment_roundtrip_and_names() {
        let s = Segment {
            events: vec![PbEvent {
                r#type: 0,
                kv: Some(etcd_client::proto::PbKeyValue {
                    key: b"a".to_vec(),
                    value: b"1".to_vec(),
                    create_revision: 5,
                    mod_revision: 5,
                    version: 1,
                    lease: 7,
                }),
                prev_kv: None,
            }],
            marks: vec![(5, 1_700_000_000_000)],
            grants: vec![(7, 60, 4)],
            revokes: vec![(8, 5)],
            compactions: vec![(3, 5)],
        };
        let b = s.encode();
        assert_eq!(Segment::decode(&b).unwrap(), s);
        let mut bad = b.clone();
        bad[20] ^= 1;
        assert!(Segment::decode(&bad).is_err());
        let n = SegmentName {
            upto: 9,
            after: 4,
            last_ms: 1_700_000_000_000,
        };
        assert_eq!(SegmentName::parse(&n.key()), Some(n));
    }

    #[test]
    fn chain_follows_contiguous_segments_and_stops_at_a_gap() {
        let s = |after, upto| SegmentName {
            upto,
            after,
            last_ms: upto as u64,
        };
        let segs = vec![
            s(10, 12),
            s(12, 12),
            s(12, 15),
            s(13, 15),
            s(15, 20),
            s(22, 30),
        ];
        let (c, end) = chain(&segs, 10);
        assert_eq!(end, 20);
        assert_eq!(c, vec![s(10, 12), s(12, 12), s(12, 15), s(15, 20)]);
        let (c, end) = chain(&segs, 21);
        assert!(c.is_empty());
        assert_eq!(end, 21);
    }
}

//! # wal — a segmented, append-only, checksummed write-ahead log
//!
//! Holds a sequence of records numbered by consecutive `u64` indexes (the
//! Raft log's entries) in segment files, and makes them durable with one
//! `fdatasync` per [`Wal::sync`] — a group commit of every record appended
//! since the previous one.
//!
//! ## Main types
//! * [`Wal`] — open (with recovery), [`Wal::append`], [`Wal::sync`],
//!   [`Wal::read`], [`Wal::truncate_from`] (drop a conflicting suffix),
//!   [`Wal::purge_upto`] (drop whole segments no longer needed).
//! * [`WalOptions`] — `segment_bytes` (when to start a new segment),
//!   `max_record_bytes`, and a test-only planted bug.
//! * [`Dir`] / [`File`] — the small storage seam the WAL does all its I/O
//!   through: [`FsDir`] is `std::fs`; the simulator brings its in-memory disk.
//! * [`SlotFile`] — a small value (the Raft vote, …) in two alternating
//!   checksummed slots, crash-safe without a rename.
//! * [`WalError`] — every error names the file (and byte offset) and says
//!   what to do.
//!
//! ## On disk
//! A segment is named `<first index, 20 digits>.wal` and starts with a
//! [`SEGMENT_HEADER_BYTES`] header: magic `PHXWAL01`, format version
//! ([`FORMAT_VERSION`]), the first index, and a CRC32 of the header. Records
//! follow back to back: `len u32 ‖ crc u32 ‖ payload` (little-endian), where
//! `payload = index u64 ‖ data`, `len` is the payload's length and `crc` is
//! CRC32 (IEEE) of `len ‖ payload`, so a damaged length is caught too.
//!
//! ## Durability rules
//! * [`Wal::sync`] `fdatasync`s the segments written since the last sync —
//!   normally just the active one: one sync per group commit.
//! * A segment is created as `<name>.tmp`, its header written and synced,
//!   renamed, and the directory synced, before any record goes into it
//!   (one extra sync per `segment_bytes`): a segment file always has a
//!   valid header. The active segment is synced in full before the next one
//!   is created ([`Wal::append`] rolls over once it reaches
//!   `segment_bytes`), so unsynced bytes only ever exist in the last segment.
//! * Removing segments (truncate, purge) syncs the directory before
//!   anything else changes, so a crash never leaves a gap between segments.
//!
//! ## Recovery ([`Wal::open`])
//! Every record of every segment is read and its checksum verified.
//! * A torn write at the tail of the last segment is truncated away, with a
//!   `tracing::warn!` naming the file, the byte offset, the bytes dropped
//!   and the last good index. Those bytes were never synced, so nothing
//!   acknowledged is lost. A bad record counts as torn only when no valid
//!   record follows it anywhere and its bytes look the way a power cut
//!   leaves an unsynced append: the file ends inside it (cut short), or
//!   from a [`SECTOR_BYTES`] boundary to the end of the file everything is
//!   zero (the size reached the disk, the data did not), or its frame
//!   header is all zeros.
//! * Anything else — a bad record followed by valid data, random bytes over
//!   a whole record, an implausible length, a bad record in any segment but
//!   the last, a record with an unexpected index, a damaged segment header,
//!   a gap between segments — is [`WalError::Corrupt`], naming the file and
//!   byte offset: the member must not start from it. (A file system that
//!   persisted a later page of an unsynced write without an earlier one
//!   also ends up here: refused rather than guessed at.)
//! * `<name>.tmp` files (a segment creation cut short) are removed.

pub mod slots;
pub mod storage;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;

pub use slots::SlotFile;
pub use storage::{Dir, File, FsDir};

/// On-disk format version written in every segment header.
pub const FORMAT_VERSION: u32 = 1;
const SEGMENT_MAGIC: &[u8; 8] = b"PHXWAL01";
/// Header bytes at the start of every segment.
pub const SEGMENT_HEADER_BYTES: u64 = 32;
/// Bytes of a record's frame before its payload (`len` and `crc`).
pub const RECORD_FRAME_BYTES: u64 = 8;
/// Bytes of the index at the start of every payload.
const INDEX_BYTES: usize = 8;
/// Default size at which a new segment is started, bytes.
pub const DEFAULT_SEGMENT_BYTES: u64 = 64 * 1024 * 1024;
/// Default upper bound of one record's payload, bytes. Larger lengths read
/// back at recovery are damage, not records (a small bound makes random
/// bytes over a length field read as damage, not as a record cut short).
pub const DEFAULT_MAX_RECORD_BYTES: u32 = 64 * 1024 * 1024;
const SEGMENT_SUFFIX: &str = ".wal";
/// Suffix of a segment being created (removed at open if a crash left one).
const TMP_SUFFIX: &str = ".tmp";

/// How to open a [`Wal`].
#[derive(Debug, Clone, Copy)]
pub struct WalOptions {
    /// Start a new segment once the active one holds this many bytes.
    pub segment_bytes: u64,
    /// Largest accepted record payload, bytes.
    pub max_record_bytes: u32,
    /// Planted bug (`PlantedBug::TornRecordAccepted`, test builds only):
    /// recovery accepts a checksum-failing record at the tail as whole.
    pub unsafe_accept_torn_records: bool,
}

impl Default for WalOptions {
    fn default() -> Self {
        WalOptions {
            segment_bytes: DEFAULT_SEGMENT_BYTES,
            max_record_bytes: DEFAULT_MAX_RECORD_BYTES,
            unsafe_accept_torn_records: false,
        }
    }
}

/// Errors of the WAL, each naming its file.
#[derive(Debug, thiserror::Error)]
pub enum WalError {
    #[error("write-ahead log: {op} {file}: {source}")]
    Io {
        op: &'static str,
        file: String,
        #[source]
        source: std::io::Error,
    },
    #[error("write-ahead log {file} is corrupted at byte offset {offset}: {detail}. This member must not start from it: remove the member with `etcdctl member remove` and re-add it with an empty --data-dir (it then gets a snapshot from the leader), or restore the data dir from a backup")]
    Corrupt {
        file: String,
        offset: u64,
        detail: String,
    },
    #[error("write-ahead log {file}: a value of {bytes} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        file: String,
        bytes: usize,
        limit: usize,
    },
    #[error("write-ahead log {file}: append of index {index}, but the log ends at {last:?}; entries must be appended in order")]
    OutOfOrder {
        file: String,
        index: u64,
        last: Option<u64>,
    },
    #[error("write-ahead log {file}: no record {index} (the log holds {first:?}..={last:?})")]
    Missing {
        file: String,
        index: u64,
        first: Option<u64>,
        last: Option<u64>,
    },
}

/// What recovery truncated from the tail of the last segment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TornTail {
    pub file: String,
    pub offset: u64,
    pub bytes: u64,
    pub last_good_index: Option<u64>,
    /// Why the first dropped record was not whole.
    pub reason: String,
}

/// What [`Wal::open`] found and did.
#[derive(Debug, Clone, Default)]
pub struct Recovery {
    /// A torn write dropped from the tail, if any.
    pub torn: Option<TornTail>,
    /// Segments removed because they held only purged records.
    pub stale_segments_removed: usize,
    /// Planted bug only: torn records accepted as whole.
    pub torn_records_accepted: usize,
}

#[derive(Debug)]
struct Segment {
    first_index: u64,
    name: String,
    file: Arc<dyn File>,
    /// Write position (the file's length as this process sees it).
    len: u64,
}

/// Where one record lives.
#[derive(Debug, Clone, Copy)]
struct Loc {
    /// Key of its segment in `Wal::segments`.
    segment: u64,
    /// Offset of its frame.
    offset: u64,
    /// Payload bytes.
    len: u32,
}

/// The write-ahead log (see the crate docs). Not internally synchronised:
/// the owner serialises calls.
#[derive(Debug)]
pub struct Wal {
    dir: Arc<dyn Dir>,
    options: WalOptions,
    /// By first index.
    segments: BTreeMap<u64, Segment>,
    /// Location of every record, from `first` on.
    locs: VecDeque<Loc>,
    /// Index of `locs[0]`.
    first: u64,
    /// Segments written since the last sync.
    unsynced: Vec<u64>,
    /// A segment was created since the last directory sync.
    dir_dirty: bool,
    /// `fdatasync`s of segment files so far.
    data_syncs: u64,
    /// Directory syncs so far.
    dir_syncs: u64,
}

fn segment_name(first_index: u64) -> String {
    format!("{first_index:020}{SEGMENT_SUFFIX}")
}

fn parse_segment_name(name: &str) -> Option<u64> {
    let digits = name.strip_suffix(SEGMENT_SUFFIX)?;
    (digits.len() == 20 && digits.bytes().all(|b| b.is_ascii_digit()))
        .then(|| digits.parse().ok())
        .flatten()
}

fn encode_header(first_index: u64) -> [u8; SEGMENT_HEADER_BYTES as usize] {
    let mut h = [0u8; SEGMENT_HEADER_BYTES as usize];
    h[0..8].copy_from_slice(SEGMENT_MAGIC);
    h[8..12].copy_from_slice(&FORMAT_VERSION.to_le_bytes());
    h[16..24].copy_from_slice(&first_index.to_le_bytes());
    let crc = crc32fast::hash(&h[0..24]);
    h[24..28].copy_from_slice(&crc.to_le_bytes());
    h
}

/// Frame one record into `out`.
fn encode_record(out: &mut Vec<u8>, index: u64, data: &[u8]) {
    let len = (INDEX_BYTES + data.len()) as u32;
    let mut h = crc32fast::Hasher::new();
    h.update(&len.to_le_bytes());
    h.update(&index.to_le_bytes());
    h.update(data);
    out.extend_from_slice(&len.to_le_bytes());
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(&index.to_le_bytes());
    out.extend_from_slice(data);
}

/// A record frame at the start of `buf`: `Ok((index, payload len))` or why not.
fn check_frame(buf: &[u8], max_record_bytes: u32) -> Result<(u64, u32), String> {
    if buf.len() < RECORD_FRAME_BYTES as usize {
        return Err(format!(
            "only {} bytes left, less than a record header",
            buf.len()
        ));
    }
    let len = u32::from_le_bytes(buf[0..4].try_into().expect("4 bytes"));
    let crc = u32::from_le_bytes(buf[4..8].try_into().expect("4 bytes"));
    if (len as usize) < INDEX_BYTES || len > max_record_bytes {
        return Err(format!("implausible record length {len}"));
    }
    let end = RECORD_FRAME_BYTES as usize + len as usize;
    if buf.len() < end {
        return Err(format!(
            "record of {len} bytes but only {} bytes left in the file",
            buf.len() - RECORD_FRAME_BYTES as usize
        ));
    }
    let payload = &buf[RECORD_FRAME_BYTES as usize..end];
    let mut h = crc32fast::Hasher::new();
    h.update(&buf[0..4]);
    h.update(payload);
    if h.finalize() != crc {
        return Err("checksum mismatch".into());
    }
    let index = u64::from_le_bytes(payload[0..8].try_into().expect("8 bytes"));
    Ok((index, len))
}

/// Offset (relative to `buf`) of the first valid record frame anywhere in
/// `buf`, if any: a valid record after a bad one means the bad one is not a
/// torn tail but damage in the middle.
fn find_valid_frame(buf: &[u8], max_record_bytes: u32) -> Option<usize> {
    (0..buf.len().saturating_sub(RECORD_FRAME_BYTES as usize - 1))
        .find(|&o| check_frame(&buf[o..], max_record_bytes).is_ok())
}

/// How a torn write shows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TornKind {
    /// The file ends inside the record: its length reached the disk only
    /// in part.
    CutShort,
    /// The record is all there by its length, but from a sector boundary
    /// to the end of the file everything is zero: the file's size reached
    /// the disk, its data did not.
    ZeroFilled,
}

/// Sector size assumed for torn writes: a sector is written whole or not at all.
pub const SECTOR_BYTES: u64 = 512;

/// Whether the bad record at the start of `at` (file offset `offset`),
/// followed by no valid record, looks like a torn write rather than damage:
/// cut short by the end of the file, or zero-filled from a sector boundary
/// to the end of the file. Random bytes over a whole record are damage.
fn torn_write(at: &[u8], offset: u64, max_record_bytes: u32) -> Option<TornKind> {
    if at.len() < RECORD_FRAME_BYTES as usize {
        return Some(TornKind::CutShort);
    }
    let len = u32::from_le_bytes(at[0..4].try_into().expect("4 bytes"));
    let header_zero = at[0..RECORD_FRAME_BYTES as usize].iter().all(|&b| b == 0);
    // The first non-zero byte from which only zeros follow to the end.
    let zeros_from = at.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1);
    let zero_fill_at_sector = {
        let first_sector = (offset + zeros_from as u64).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
        first_sector < offset + at.len() as u64
    };
    if header_zero {
        return Some(TornKind::ZeroFilled);
    }
    if (len as usize) < INDEX_BYTES || len > max_record_bytes {
        return None;
    }
    if RECORD_FRAME_BYTES as usize + len as usize > at.len() {
        return Some(TornKind::CutShort);
    }
    zero_fill_at_sector.then_some(TornKind::ZeroFilled)
}

/// One segment as read at recovery.
struct Scanned {
    first_index: u64,
    name: String,
    file: Arc<dyn File>,
    bytes: Vec<u8>,
    /// Header problem, if any.
    bad_header: Option<String>,
}

impl Wal {
    /// Open (creating if empty) the WAL in `dir`, recovering as the crate
    /// docs say. `purged` is the index up to which the owner has purged the
    /// log (durably recorded before segments were removed): segments that
    /// hold only records up to it are leftovers of an interrupted purge and
    /// are removed.
    pub fn open(
        dir: Arc<dyn Dir>,
        options: WalOptions,
        purged: Option<u64>,
    ) -> Result<(Wal, Recovery), WalError> {
        let io = |op: &'static str, name: &str| {
            let file = dir.describe(name);
            move |source| WalError::Io { op, file, source }
        };
        let mut recovery = Recovery::default();
        let listed = dir.list().map_err(io("listing", ""))?;
        for n in &listed {
            if n.ends_with(&format!("{SEGMENT_SUFFIX}{TMP_SUFFIX}")) {
                // A segment whose creation a crash interrupted: never used.
                dir.remove(n).map_err(io("removing", n))?;
            }
        }
        let mut names: Vec<(u64, String)> = listed
            .into_iter()
            .filter_map(|n| parse_segment_name(&n).map(|i| (i, n)))
            .collect();
        names.sort();
        let mut scanned = Vec::with_capacity(names.len());
        for (first_index, name) in names {
            let file = dir.open(&name).map_err(io("opening", &name))?;
            let len = file.len().map_err(io("reading", &name))?;
            let mut bytes = vec![0u8; len as usize];
            file.read_at(0, &mut bytes).map_err(io("reading", &name))?;
            let bad_header = if bytes.len() < SEGMENT_HEADER_BYTES as usize {
                Some(format!("segment header cut short ({} bytes)", bytes.len()))
            } else if bytes[..SEGMENT_HEADER_BYTES as usize] != encode_header(first_index) {
                Some("segment header damaged or not naming the index in the file name (or a newer format version)".to_string())
            } else {
                None
            };
            scanned.push(Scanned {
                first_index,
                name,
                file,
                bytes,
                bad_header,
            });
        }
        // Leftovers of an interrupted purge: every record of segment k is
        // purged when segment k+1 starts at or below purged + 1.
        if let Some(p) = purged {
            let mut keep_from = 0;
            for k in 0..scanned.len().saturating_sub(1) {
                if scanned[k + 1].first_index <= p + 1 {
                    keep_from = k + 1;
                }
            }
            for s in scanned.drain(..keep_from) {
                dir.remove(&s.name).map_err(io("removing", &s.name))?;
                recovery.stale_segments_removed += 1;
            }
            if recovery.stale_segments_removed > 0 {
                dir.sync_dir().map_err(io("syncing the directory of", ""))?;
            }
        }

        let mut wal = Wal {
            dir: dir.clone(),
            options,
            segments: BTreeMap::new(),
            locs: VecDeque::new(),
            first: 0,
            unsynced: Vec::new(),
            dir_dirty: false,
            data_syncs: 0,
            dir_syncs: 0,
        };
        let count = scanned.len();
        for (k, s) in scanned.into_iter().enumerate() {
            let is_last = k + 1 == count;
            let label = dir.describe(&s.name);
            if let Some(problem) = s.bad_header {
                // Segments are created under a temporary name and renamed
                // only once their header is synced: a bad header is damage.
                return Err(WalError::Corrupt {
                    file: label,
                    offset: 0,
                    detail: problem,
                });
            }
            let expected_first = wal.next_index();
            if let Some(e) = expected_first {
                if s.first_index != e {
                    return Err(WalError::Corrupt {
                        file: label,
                        offset: 0,
                        detail: format!(
                            "segment starts at index {} but the previous segment ends at {}: a gap or overlap between segments",
                            s.first_index,
                            e - 1
                        ),
                    });
                }
            }
            if wal.segments.is_empty() {
                wal.first = s.first_index;
            }
            let mut offset = SEGMENT_HEADER_BYTES;
            let mut expected = s.first_index;
            let mut end = s.bytes.len() as u64;
            while offset < end {
                let at = &s.bytes[offset as usize..];
                let checked = match check_frame(at, options.max_record_bytes) {
                    Ok((index, _)) if index != expected => {
                        return Err(WalError::Corrupt {
                            file: label,
                            offset,
                            detail: format!(
                                "record holds index {index} where index {expected} belongs"
                            ),
                        })
                    }
                    other => other,
                };
                match checked {
                    Ok((_, len)) => {
                        wal.locs.push_back(Loc {
                            segment: s.first_index,
                            offset,
                            len,
                        });
                        expected += 1;
                        offset += RECORD_FRAME_BYTES + len as u64;
                    }
                    Err(reason) => {
                        let later = find_valid_frame(&at[1..], options.max_record_bytes)
                            .map(|o| offset + 1 + o as u64);
                        let torn = torn_write(at, offset, options.max_record_bytes);
                        if !is_last || later.is_some() || torn.is_none() {
                            let detail = match (later, torn) {
                                (Some(l), _) => format!("{reason}, yet a valid record follows at byte offset {l}: damage in the middle of the log, not a torn write"),
                                _ if !is_last => format!("{reason}, in a segment that is not the last one"),
                                _ => format!("{reason}, and the bytes are neither cut short nor zero-filled as a torn write leaves them: damaged data"),
                            };
                            return Err(WalError::Corrupt {
                                file: label,
                                offset,
                                detail,
                            });
                        }
                        let len = at
                            .get(0..4)
                            .map_or(0, |b| u32::from_le_bytes(b.try_into().expect("4 bytes")));
                        let whole_by_length = len as usize >= INDEX_BYTES
                            && RECORD_FRAME_BYTES as usize + len as usize <= at.len();
                        if options.unsafe_accept_torn_records
                            && torn == Some(TornKind::ZeroFilled)
                            && whole_by_length
                        {
                            // PLANTED BUG: trust the length, skip the checksum.
                            wal.locs.push_back(Loc {
                                segment: s.first_index,
                                offset,
                                len,
                            });
                            recovery.torn_records_accepted += 1;
                            expected += 1;
                            offset += RECORD_FRAME_BYTES + len as u64;
                            continue;
                        }
                        let last_good_index = (!wal.locs.is_empty()).then(|| expected - 1);
                        let dropped = end - offset;
                        tracing::warn!(
                            "write-ahead log {label}: dropping a torn write at its tail: {dropped} bytes from byte offset {offset} ({reason}); last good index {last_good_index:?}. These bytes were never synced, so nothing acknowledged is lost"
                        );
                        s.file.truncate(offset).map_err(io("truncating", &s.name))?;
                        s.file.sync_data().map_err(io("syncing", &s.name))?;
                        recovery.torn = Some(TornTail {
                            file: label.clone(),
                            offset,
                            bytes: dropped,
                            last_good_index,
                            reason,
                        });
                        end = offset;
                    }
                }
            }
            wal.segments.insert(
                s.first_index,
                Segment {
                    first_index: s.first_index,
                    name: s.name,
                    file: s.file,
                    len: end,
                },
            );
        }
        Ok((wal, recovery))
    }

    /// The WAL's directory.
    pub fn dir(&self) -> &Arc<dyn Dir> {
        &self.dir
    }

    /// First index held, if any record is.
    pub fn first_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then_some(self.first)
    }

    /// Last index held, if any record is.
    pub fn last_index(&self) -> Option<u64> {
        (!self.locs.is_empty()).then(|| self.first + self.locs.len() as u64 - 1)
    }

    /// The index the next append must carry, when the log holds records
    /// (or an empty segment naming its first index).
    fn next_index(&self) -> Option<u64> {
        match self.last_index() {
            Some(l) => Some(l + 1),
            None => self.segments.values().next_back().map(|s| s.first_index),
        }
    }

    /// `fdatasync`s of segment files so far.
    pub fn data_syncs(&self) -> u64 {
        self.data_syncs
    }

    /// `fsync`s of the directory so far.
    pub fn dir_syncs(&self) -> u64 {
        self.dir_syncs
    }

    /// Number of segment files.
    pub fn segment_count(&self) -> usize {
        self.segments.len()
    }

    fn describe_active(&self) -> String {
        match self.segments.values().next_back() {
            Some(s) => self.dir.describe(&s.name),
            None => self.dir.describe(""),
        }
    }

    /// The error for a failed `op` on file `name`; the file is described
    /// only when it failed (this is on the write path).
    fn io_err<'a>(
        &'a self,
        op: &'static str,
        name: &'a str,
    ) -> impl FnOnce(std::io::Error) -> WalError + 'a {
        let dir = &self.dir;
        move |source| WalError::Io {
            op,
            file: dir.describe(name),
            source,
        }
    }

    /// Append records `(index, data)` (consecutive indexes, continuing the
    /// log; the first record of an empty log may carry any index), written
    /// to the file at once but durable only after [`Wal::sync`]. One write
    /// per segment touched.
    pub fn append<'a>(
        &mut self,
        records: impl IntoIterator<Item = (u64, &'a [u8])>,
    ) -> Result<(), WalError> {
        let mut buf = Vec::new();
        let mut buf_locs: Vec<Loc> = Vec::new();
        for (index, data) in records {
            if INDEX_BYTES + data.len() > self.options.max_record_bytes as usize {
                return Err(WalError::TooLarge {
                    file: self.describe_active(),
                    bytes: data.len(),
                    limit: self.options.max_record_bytes as usize - INDEX_BYTES,
                });
            }
            let next = self.next_index().map(|n| n + buf_locs.len() as u64);
            match next {
                Some(n) if n == index => {}
                Some(_) if self.locs.is_empty() && buf_locs.is_empty() => {
                    // An empty segment naming another index (left by a
                    // truncation to the segment's start, or a purge): replace it.
                    let (&key, _) = self.segments.iter().next_back().expect("a segment");
                    let seg = self.segments.remove(&key).expect("present");
                    self.unsynced.retain(|&k| k != key);
                    self.dir
                        .remove(&seg.name)
                        .map_err(self.io_err("removing", &seg.name))?;
                    self.dir_dirty = true;
                    self.create_segment(index)?;
                }
                Some(_) => {
                    return Err(WalError::OutOfOrder {
                        file: self.describe_active(),
                        index,
                        last: next.map(|n| n - 1),
                    })
                }
                None => self.create_segment(index)?,
            }
            if self.locs.is_empty() && buf_locs.is_empty() {
                self.first = index;
            }
            let active_key = *self.segments.keys().next_back().expect("a segment");
            let active = &self.segments[&active_key];
            let holds_records = active.len > SEGMENT_HEADER_BYTES || !buf.is_empty();
            if holds_records && active.len + buf.len() as u64 >= self.options.segment_bytes {
                self.write_buffered(active_key, &mut buf, &mut buf_locs)?;
                self.roll(index)?;
            }
            let active_key = *self.segments.keys().next_back().expect("a segment");
            let offset = self.segments[&active_key].len + buf.len() as u64;
            encode_record(&mut buf, index, data);
            buf_locs.push(Loc {
                segment: active_key,
                offset,
                len: (INDEX_BYTES + data.len()) as u32,
            });
        }
        if let Some(&key) = self.segments.keys().next_back() {
            self.write_buffered(key, &mut buf, &mut buf_locs)?;
        }
        Ok(())
    }

    fn write_buffered(
        &mut self,
        key: u64,
        buf: &mut Vec<u8>,
        locs: &mut Vec<Loc>,
    ) -> Result<(), WalError> {
        if buf.is_empty() {
            return Ok(());
        }
        let seg = self.segments.get_mut(&key).expect("segment");
        let file = self.dir.describe(&seg.name);
        seg.file
            .write_at(seg.len, buf)
            .map_err(|source| WalError::Io {
                op: "writing",
                file,
                source,
            })?;
        seg.len += buf.len() as u64;
        if !self.unsynced.contains(&key) {
            self.unsynced.push(key);
        }
        self.locs.extend(locs.drain(..));
        buf.clear();
        Ok(())
    }

    /// Sync the full active segment, then start a new one at `first_index`.
    fn roll(&mut self, first_index: u64) -> Result<(), WalError> {
        self.sync()?;
        self.create_segment(first_index)
    }

    /// Create the segment starting at `first_index`: written under a
    /// temporary name, its header synced, renamed, the directory synced —
    /// so a segment file always has a valid header (a bad one is damage).
    /// Costs one extra sync per segment (every `segment_bytes`).
    fn create_segment(&mut self, first_index: u64) -> Result<(), WalError> {
        let name = segment_name(first_index);
        let tmp = format!("{name}{TMP_SUFFIX}");
        let file = self
            .dir
            .create(&tmp)
            .map_err(self.io_err("creating", &tmp))?;
        file.write_at(0, &encode_header(first_index))
            .map_err(self.io_err("writing", &tmp))?;
        file.sync_data().map_err(self.io_err("syncing", &tmp))?;
        self.data_syncs += 1;
        self.dir
            .rename(&tmp, &name)
            .map_err(self.io_err("renaming", &tmp))?;
        self.sync_dir()?;
        self.segments.insert(
            first_index,
            Segment {
                first_index,
                name,
                file,
                len: SEGMENT_HEADER_BYTES,
            },
        );
        Ok(())
    }

    /// Make every append so far durable: one `fdatasync` of each segment
    /// written since the last sync (normally one), then the directory if a
    /// segment was created.
    pub fn sync(&mut self) -> Result<(), WalError> {
        for key in std::mem::take(&mut self.unsynced) {
            if let Some(seg) = self.segments.get(&key) {
                seg.file
                    .sync_data()
                    .map_err(self.io_err("syncing", &seg.name))?;
                self.data_syncs += 1;
            }
        }
        if self.dir_dirty {
            self.sync_dir()?;
        }
        Ok(())
    }

    fn sync_dir(&mut self) -> Result<(), WalError> {
        self.dir
            .sync_dir()
            .map_err(self.io_err("syncing the directory of", ""))?;
        self.dir_syncs += 1;
        self.dir_dirty = false;
        Ok(())
    }

    /// The data of record `index`, its checksum verified.
    pub fn read(&self, index: u64) -> Result<Vec<u8>, WalError> {
        let missing = || WalError::Missing {
            file: self.describe_active(),
            index,
            first: self.first_index(),
            last: self.last_index(),
        };
        let pos = index.checked_sub(self.first).ok_or_else(missing)?;
        let loc = *self.locs.get(pos as usize).ok_or_else(missing)?;
        let seg = &self.segments[&loc.segment];
        let mut buf = vec![0u8; RECORD_FRAME_BYTES as usize + loc.len as usize];
        seg.file
            .read_at(loc.offset, &mut buf)
            .map_err(self.io_err("reading", &seg.name))?;
        let corrupt = |detail: String| WalError::Corrupt {
            file: self.dir.describe(&seg.name),
            offset: loc.offset,
            detail,
        };
        match check_frame(&buf, u32::MAX) {
            Ok((i, _)) if i == index => {}
            Ok((i, _)) => return Err(corrupt(format!("record holds index {i}, not {index}"))),
            // The planted bug let a torn record in; reading it must still
            // hand back its bytes (that is the bug).
            Err(_) if self.options.unsafe_accept_torn_records => {}
            Err(reason) => return Err(corrupt(format!("record {index}: {reason}"))),
        }
        Ok(buf[RECORD_FRAME_BYTES as usize + INDEX_BYTES..].to_vec())
    }

    /// Drop records `index..` (a conflicting suffix), durably before returning.
    pub fn truncate_from(&mut self, index: u64) -> Result<(), WalError> {
        let Some(last) = self.last_index() else {
            return Ok(());
        };
        if index > last {
            return Ok(());
        }
        let index = index.max(self.first);
        // Whole segments first, newest first, and the directory synced, so a
        // crash cannot leave a later segment behind a shortened one.
        let doomed: Vec<u64> = self.segments.range(index..).map(|(k, _)| *k).collect();
        for key in doomed.iter().rev() {
            let seg = self.segments.remove(key).expect("present");
            self.dir
                .remove(&seg.name)
                .map_err(self.io_err("removing", &seg.name))?;
            self.unsynced.retain(|k| k != key);
        }
        if !doomed.is_empty() {
            self.sync_dir()?;
        }
        let keep = (index - self.first) as usize;
        if let Some(loc) = self.locs.get(keep).copied() {
            if let Some(seg) = self.segments.get_mut(&loc.segment) {
                let name = seg.name.clone();
                seg.file
                    .truncate(loc.offset)
                    .map_err(self.io_err("truncating", &name))?;
                let seg = self.segments.get_mut(&loc.segment).expect("present");
                seg.len = loc.offset;
                seg.file
                    .sync_data()
                    .map_err(self.io_err("syncing", &name))?;
                self.data_syncs += 1;
            }
        }
        self.locs.truncate(keep);
        Ok(())
    }

    /// Drop every segment all of whose records are `<= index`, durably
    /// before returning. Records `<= index` in a segment that also holds
    /// later ones stay (and stay readable).
    pub fn purge_upto(&mut self, index: u64) -> Result<(), WalError> {
        let last = self.last_index();
        let keys: Vec<u64> = self.segments.keys().copied().collect();
        let mut doomed = Vec::new();
        for (k, key) in keys.iter().enumerate() {
            let whole = match keys.get(k + 1) {
                Some(next) => *next <= index + 1,
                None => last.is_none_or(|l| l <= index),
            };
            if !whole {
                break;
            }
            doomed.push(*key);
        }
        for key in &doomed {
            let seg = self.segments.remove(key).expect("present");
            self.dir
                .remove(&seg.name)
                .map_err(self.io_err("removing", &seg.name))?;
            self.unsynced.retain(|k| k != key);
        }
        if doomed.is_empty() {
            return Ok(());
        }
        self.sync_dir()?;
        match self.segments.keys().next() {
            Some(&first_seg) => {
                let drop = (first_seg - self.first) as usize;
                self.locs.drain(..drop.min(self.locs.len()));
                self.first = first_seg;
            }
            None => {
                self.locs.clear();
                self.first = 0;
            }
        }
        Ok(())
    }
}

//! The member's snapshot stream, read record by record with bounded memory.
//!
//! A member's Maintenance.Snapshot stream is an etcd snapshot (bbolt database + SHA-256);
//! [`open_snapshot`] turns it into an mvcc snapshot stream first (and passes streams in
//! the older format through). The older format, still accepted, is an mvcc snapshot stream (see
//! `crates/mvcc/src/snapshot.rs`: magic, version, tagged records, end marker, record
//! count, CRC32) followed by etcd's trailer (zero padding to a multiple of 512 bytes whose
//! last 8 bytes are the payload length, then SHA-256 of everything before it).
//!
//! [`Normalizer`] checks all of it while it passes through (CRC32, record count, payload
//! length, SHA-256) and yields the *normalized* stream that a backup stores: the same
//! mvcc snapshot format without the Raft bookkeeping record (`applied_meta`) and without
//! etcd's trailer, with a recomputed count and CRC32. So two backups of an unchanged store
//! are byte-identical (dedup), and the stored stream installs directly with
//! `mvcc::Store::install_snapshot`.

use std::io::{self, Read};
use std::sync::{Arc, Mutex};

use sha2::{Digest, Sha256};

// The stream's format belongs to mvcc, which writes it.
pub use mvcc::snapshot_stream::{
    MAGIC, T_END, T_INDEX, T_KEY_REV, T_LEASE, T_LEASE_KEY, T_META, T_REV, VERSION as SNAP_VERSION,
};
/// Largest record key/value accepted while parsing (etcd's limits are far below).
pub const MAX_RECORD_PART_BYTES: usize = 256 * 1024 * 1024;
/// etcd's trailer is at most 512 bytes of padding + 8 + 32.
const MAX_TRAILER_BYTES: usize = 512 + 8 + 32;

/// What the stream said about itself; complete once the stream has been read to its end.
#[derive(Clone, Debug, Default)]
pub struct StreamInfo {
    pub revision: Option<i64>,
    pub compact_revision: Option<i64>,
    pub records_in: u64,
    pub records_out: u64,
    pub bytes_out: u64,
    pub finished: bool,
}

enum State {
    Header,
    Records,
    Done,
}

/// Read adapter: member snapshot stream in, normalized stream out.
pub struct Normalizer<R: Read> {
    inner: R,
    state: State,
    /// Bytes ready to be returned by `read`.
    out: Vec<u8>,
    out_pos: usize,
    crc_in: crc32fast::Hasher,
    crc_out: crc32fast::Hasher,
    /// Only for an input with etcd's trailer, whose SHA-256 it checks.
    sha_in: Option<Sha256>,
    payload_in: u64,
    /// What the stream said so far; published to `info` once the stream ends (one lock
    /// per stream, not per record).
    seen: StreamInfo,
    /// The current record's key and value, reused from record to record.
    key: Vec<u8>,
    val: Vec<u8>,
    info: Arc<Mutex<StreamInfo>>,
    /// Told the snapshot's revision as soon as its counter record is read.
    revision_notice: Option<tokio::sync::oneshot::Sender<i64>>,
    /// Whether the input carries etcd's trailer (a member's Maintenance.Snapshot or an
    /// `etcdctl snapshot save` file) or is already a bare mvcc stream.
    etcd_trailer: bool,
}

/// Read exactly `buf.len()` bytes of the input, feeding its checksums and byte count.
fn take_from(
    inner: &mut impl Read,
    crc: &mut crc32fast::Hasher,
    sha: &mut Option<Sha256>,
    payload_in: &mut u64,
    buf: &mut [u8],
) -> io::Result<()> {
    inner.read_exact(buf).map_err(|e| {
        if e.kind() == io::ErrorKind::UnexpectedEof {
            bad(format!("stream truncated after {payload_in} bytes"))
        } else {
            e
        }
    })?;
    crc.update(buf);
    if let Some(sha) = sha.as_mut() {
        sha.update(&*buf);
    }
    *payload_in += buf.len() as u64;
    Ok(())
}

fn bad(detail: impl Into<String>) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail.into())
}

impl<R: Read> Normalizer<R> {
    pub fn new(inner: R, etcd_trailer: bool) -> (Self, Arc<Mutex<StreamInfo>>) {
        let info = Arc::new(Mutex::new(StreamInfo::default()));
        (
            Normalizer {
                inner,
                state: State::Header,
                out: Vec::with_capacity(1 << 16),
                out_pos: 0,
                crc_in: crc32fast::Hasher::new(),
                crc_out: crc32fast::Hasher::new(),
                sha_in: etcd_trailer.then(Sha256::new),
                payload_in: 0,
                seen: StreamInfo::default(),
                key: Vec::new(),
                val: Vec::new(),
                info: info.clone(),
                revision_notice: None,
                etcd_trailer,
            },
            info,
        )
    }

    /// Send the snapshot's revision to `tx` as soon as it is read (the first records of
    /// a stream are its counters), before the rest of the stream: a backup asks the
    /// member for HashKV at that revision while the snapshot is still arriving.
    pub fn notify_revision(&mut self, tx: tokio::sync::oneshot::Sender<i64>) {
        self.revision_notice = Some(tx);
    }

    /// Read exactly `buf.len()` payload bytes, feeding the input checksums.
    fn take(&mut self, buf: &mut [u8]) -> io::Result<()> {
        take_from(
            &mut self.inner,
            &mut self.crc_in,
            &mut self.sha_in,
            &mut self.payload_in,
            buf,
        )
    }

    /// Read exactly `buf.len()` bytes of a record, not yet fed to the input
    /// checksums: a record is checksummed whole once read ([`Self::record_done`]),
    /// in one update per checksum rather than one per part.
    fn take_raw(&mut self, buf: &mut [u8]) -> io::Result<()> {
        let payload_in = self.payload_in;
        self.inner.read_exact(buf).map_err(|e| {
            if e.kind() == io::ErrorKind::UnexpectedEof {
                bad(format!("stream truncated after {payload_in} bytes"))
            } else {
                e
            }
        })
    }

    /// Read one length-prefixed record part into `key` (or `val`), reusing its buffer.
    fn take_part(&mut self, key: bool) -> io::Result<()> {
        let mut l = [0u8; 4];
        self.take_raw(&mut l)?;
        let len = u32::from_le_bytes(l) as usize;
        if len > MAX_RECORD_PART_BYTES {
            return Err(bad(format!("record part of {len} bytes is too large")));
        }
        let mut buf = std::mem::take(if key { &mut self.key } else { &mut self.val });
        buf.clear();
        buf.resize(len, 0);
        let r = self.take_raw(&mut buf);
        *(if key { &mut self.key } else { &mut self.val }) = buf;
        r
    }

    fn emit(&mut self, b: &[u8]) {
        self.crc_out.update(b);
        self.out.extend_from_slice(b);
    }

    /// The record just read (`tag`, `key`, `val`): fed to the input checksums, and
    /// passed to the output unless `drop` (its bytes are the same in both streams).
    fn record_done(&mut self, tag: u8, drop: bool) {
        let (klen, vlen) = (self.key.len() as u32, self.val.len() as u32);
        let mut dropped = Vec::new();
        let out = if drop { &mut dropped } else { &mut self.out };
        let start = out.len();
        out.push(tag);
        out.extend_from_slice(&klen.to_le_bytes());
        out.extend_from_slice(&self.key);
        out.extend_from_slice(&vlen.to_le_bytes());
        out.extend_from_slice(&self.val);
        let rec = &out[start..];
        self.crc_in.update(rec);
        if let Some(sha) = self.sha_in.as_mut() {
            sha.update(rec);
        }
        self.payload_in += rec.len() as u64;
        if !drop {
            self.crc_out.update(rec);
            self.seen.records_out += 1;
        }
    }

    /// Produce the next piece of output into `self.out`.
    fn step(&mut self) -> io::Result<()> {
        match self.state {
            State::Header => {
                let mut hdr = [0u8; 12];
                self.take(&mut hdr)?;
                if &hdr[..8] != MAGIC {
                    return Err(bad("not a Phalanx snapshot (bad magic): backups take snapshots from Phalanx members"));
                }
                let ver = u32::from_le_bytes(hdr[8..].try_into().expect("4"));
                if ver != SNAP_VERSION {
                    return Err(bad(format!("unsupported snapshot version {ver}")));
                }
                self.emit(&hdr);
                self.state = State::Records;
            }
            State::Records => {
                let mut tag = [0u8; 1];
                self.take_raw(&mut tag)?;
                if tag[0] == T_END {
                    self.crc_in.update(&tag);
                    if let Some(sha) = self.sha_in.as_mut() {
                        sha.update(tag);
                    }
                    self.payload_in += 1;
                    let mut n = [0u8; 8];
                    self.take(&mut n)?;
                    let records_in = self.seen.records_in;
                    if u64::from_le_bytes(n) != records_in {
                        return Err(bad(format!(
                            "record count mismatch: trailer says {}, stream has {records_in}",
                            u64::from_le_bytes(n)
                        )));
                    }
                    let want = self.crc_in.clone().finalize();
                    let mut c = [0u8; 4];
                    self.inner
                        .read_exact(&mut c)
                        .map_err(|_| bad("stream truncated in its CRC"))?;
                    if let Some(sha) = self.sha_in.as_mut() {
                        sha.update(c);
                    }
                    self.payload_in += 4;
                    if u32::from_le_bytes(c) != want {
                        return Err(bad("CRC32 mismatch: the snapshot stream is corrupted"));
                    }
                    if self.etcd_trailer {
                        self.check_etcd_trailer()?;
                    } else {
                        let mut extra = [0u8; 1];
                        if self.inner.read(&mut extra)? != 0 {
                            return Err(bad("trailing bytes after the snapshot"));
                        }
                    }
                    let records_out = self.seen.records_out;
                    self.emit(&[T_END]);
                    self.emit(&records_out.to_le_bytes());
                    let crc = self.crc_out.clone().finalize();
                    self.out.extend_from_slice(&crc.to_le_bytes());
                    self.state = State::Done;
                    return Ok(());
                }
                self.take_part(true)?;
                self.take_part(false)?;
                self.seen.records_in += 1;
                if tag[0] == T_META {
                    match self.key.as_slice() {
                        b"applied_meta" => {
                            self.record_done(tag[0], true);
                            return Ok(());
                        }
                        b"rev" | b"compact_rev" => {
                            let x = i64::from_le_bytes(
                                self.val
                                    .as_slice()
                                    .try_into()
                                    .map_err(|_| bad("bad counter"))?,
                            );
                            if self.key == b"rev" {
                                self.seen.revision = Some(x);
                                if let Some(tx) = self.revision_notice.take() {
                                    let _ = tx.send(x);
                                }
                            } else {
                                self.seen.compact_revision = Some(x)
                            }
                        }
                        _ => {}
                    }
                } else if !(T_REV..=T_LEASE_KEY).contains(&tag[0]) {
                    return Err(bad(format!("unknown record tag {}", tag[0])));
                }
                self.record_done(tag[0], false);
            }
            State::Done => {}
        }
        Ok(())
    }

    fn check_etcd_trailer(&mut self) -> io::Result<()> {
        let mut rest = Vec::new();
        (&mut self.inner)
            .take(MAX_TRAILER_BYTES as u64 + 1)
            .read_to_end(&mut rest)?;
        if rest.len() > MAX_TRAILER_BYTES || rest.len() < 40 {
            return Err(bad(format!(
                "unexpected trailer of {} bytes after the snapshot",
                rest.len()
            )));
        }
        let (body, digest) = rest.split_at(rest.len() - 32);
        let len = u64::from_le_bytes(body[body.len() - 8..].try_into().expect("8"));
        if len != self.payload_in {
            return Err(bad(format!(
                "trailer says {len} payload bytes, stream had {}",
                self.payload_in
            )));
        }
        let mut sha = self
            .sha_in
            .take()
            .expect("kept for a trailer-carrying input");
        sha.update(body);
        if sha.finalize().as_slice() != digest {
            return Err(bad(
                "SHA-256 trailer mismatch: the snapshot stream is corrupted",
            ));
        }
        Ok(())
    }
}

impl<R: Read> Read for Normalizer<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.out_pos >= self.out.len() {
            self.out.clear();
            self.out_pos = 0;
            if matches!(self.state, State::Done) {
                if !self.seen.finished {
                    self.seen.finished = true;
                    *self.info.lock().expect("info") = self.seen.clone();
                }
                return Ok(0);
            }
            self.step()?;
        }
        let n = buf.len().min(self.out.len() - self.out_pos);
        buf[..n].copy_from_slice(&self.out[self.out_pos..self.out_pos + n]);
        self.out_pos += n;
        self.seen.bytes_out += n as u64;
        Ok(n)
    }
}

/// A blocking `Read` over byte buffers sent from async code; an `Err` item ends the
/// stream with that error.
pub struct ChannelReader {
    rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>,
    cur: bytes::Bytes,
}

impl ChannelReader {
    pub fn new(rx: tokio::sync::mpsc::Receiver<io::Result<bytes::Bytes>>) -> Self {
        ChannelReader {
            rx,
            cur: bytes::Bytes::new(),
        }
    }
}

impl Read for ChannelReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        while self.cur.is_empty() {
            match self.rx.blocking_recv() {
                None => return Ok(0),
                Some(Err(e)) => return Err(e),
                Some(Ok(b)) => self.cur = b,
            }
        }
        let n = buf.len().min(self.cur.len());
        buf[..n].copy_from_slice(&self.cur[..n]);
        bytes::Buf::advance(&mut self.cur, n);
        Ok(n)
    }
}

/// A snapshot source as an mvcc snapshot stream, holding whatever scratch files it needs.
pub struct SnapshotReader {
    inner: Box<dyn Read + Send>,
    /// Spooled etcd database and its conversion; removed when the reader is dropped.
    _scratch: Option<tempfile::TempDir>,
}

impl Read for SnapshotReader {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        self.inner.read(buf)
    }
}

/// Bytes at the start of a snapshot that tell its format: the mvcc magic is at 0, a
/// bbolt meta page's magic right after the 16-byte page header.
const SNIFF_BYTES: usize = 20;

/// Accept either snapshot format a source may deliver and return an mvcc snapshot stream
/// for [`Normalizer`], plus whether that stream still carries etcd's trailer:
///
/// * a bare mvcc snapshot stream, what a member sends when asked for version 2 of its
///   mvcc format (`mvcc_trailer` false: the caller asked a member for it);
/// * an etcd snapshot (bbolt database + SHA-256): what a member's Maintenance.Snapshot
///   streams and what `etcdctl snapshot save` stores, from Phalanx or from etcd itself. It
///   is spooled to a scratch file (bbolt is read by page, not in stream order), its
///   SHA-256 verified, and converted with `etcd_snapshot` (history, revisions, leases);
/// * an mvcc snapshot stream with etcd's trailer (`mvcc_trailer`): version 1, and what
///   members streamed before they streamed etcd snapshots (files saved then still back
///   up).
pub fn open_snapshot(
    mut r: Box<dyn Read + Send>,
    mvcc_trailer: bool,
) -> io::Result<(SnapshotReader, bool)> {
    let mut head = Vec::with_capacity(SNIFF_BYTES);
    (&mut r).take(SNIFF_BYTES as u64).read_to_end(&mut head)?;
    if head.starts_with(MAGIC) {
        let inner = Box::new(io::Cursor::new(head).chain(r));
        return Ok((
            SnapshotReader {
                inner,
                _scratch: None,
            },
            mvcc_trailer,
        ));
    }
    if !etcd_snapshot::looks_like_bbolt(&head) {
        return Err(bad(
            "the snapshot is neither an etcd snapshot (bbolt) nor a Phalanx mvcc snapshot stream",
        ));
    }
    let dir = tempfile::tempdir()?;
    let db = dir.path().join("etcd-snapshot.db");
    {
        let mut f = io::BufWriter::new(std::fs::File::create(&db)?);
        std::io::Write::write_all(&mut f, &head)?;
        io::copy(&mut r, &mut f)?;
        std::io::Write::flush(&mut f)?;
    }
    let snap = etcd_snapshot::EtcdSnapshot::open(&db, false).map_err(|e| bad(e.to_string()))?;
    let stream = dir.path().join("mvcc.stream");
    {
        let mut f = io::BufWriter::new(std::fs::File::create(&stream)?);
        snap.write_mvcc_stream(&mut f)
            .map_err(|e| bad(e.to_string()))?;
    }
    drop(snap);
    std::fs::remove_file(&db)?;
    let inner = Box::new(io::BufReader::new(std::fs::File::open(&stream)?));
    Ok((
        SnapshotReader {
            inner,
            _scratch: Some(dir),
        },
        false,
    ))
}

/// Content-defined chunking of a stream with FastCDC 2020 (normalization level 1, the
/// `fastcdc` crate's gear table): the same cut points as `fastcdc::v2020::StreamCDC`
/// with the same sizes (the repository's dedup depends on them), without its copies:
/// StreamCDC moves the rest of its buffer down and zero-fills it again after every
/// chunk and copies each chunk into a new vector; here chunks are slices of one
/// buffer that is moved down once per [`CHUNKER_BUFFER_MAX_CHUNKS`] chunk sizes.
pub struct Chunker<R: Read> {
    inner: R,
    buf: Vec<u8>,
    /// Start of the next chunk in `buf`.
    pos: usize,
    /// End of the bytes read into `buf`.
    len: usize,
    eof: bool,
    min: usize,
    avg: usize,
    max: usize,
    mask_s: u64,
    mask_l: u64,
}

/// The chunker's buffer holds this many maximum-size chunks.
pub const CHUNKER_BUFFER_MAX_CHUNKS: usize = 4;

impl<R: Read> Chunker<R> {
    /// Sizes as `fastcdc::v2020::StreamCDC::new` takes them (and checks them the same way).
    pub fn new(inner: R, min: u32, avg: u32, max: u32) -> Self {
        use fastcdc::v2020::{logarithm2, Normalization, MASKS};
        // StreamCDC's own checks (it panics on sizes out of range too).
        assert!((fastcdc::v2020::MINIMUM_MIN..=fastcdc::v2020::MINIMUM_MAX).contains(&min));
        assert!((fastcdc::v2020::AVERAGE_MIN..=fastcdc::v2020::AVERAGE_MAX).contains(&avg));
        assert!((fastcdc::v2020::MAXIMUM_MIN..=fastcdc::v2020::MAXIMUM_MAX).contains(&max));
        let bits = logarithm2(avg);
        let level = Normalization::Level1.bits();
        Chunker {
            inner,
            buf: vec![0; max as usize * CHUNKER_BUFFER_MAX_CHUNKS],
            pos: 0,
            len: 0,
            eof: false,
            min: min as usize,
            avg: avg as usize,
            max: max as usize,
            mask_s: MASKS[(bits + level) as usize],
            mask_l: MASKS[(bits - level) as usize],
        }
    }

    /// The next chunk (a slice of the chunker's buffer), or `None` at the end.
    pub fn next_chunk(&mut self) -> io::Result<Option<&[u8]>> {
        // A full window (`max` bytes) or everything up to the end, as StreamCDC cuts.
        while !self.eof && self.len - self.pos < self.max {
            if self.len == self.buf.len() {
                self.buf.copy_within(self.pos..self.len, 0);
                self.len -= self.pos;
                self.pos = 0;
            }
            match self.inner.read(&mut self.buf[self.len..]) {
                Ok(0) => self.eof = true,
                Ok(n) => self.len += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        let window = &self.buf[self.pos..self.len.min(self.pos + self.max)];
        if window.is_empty() {
            return Ok(None);
        }
        let (_, n) = fastcdc::v2020::cut(
            window,
            self.min,
            self.avg,
            self.max,
            self.mask_s,
            self.mask_l,
            self.mask_s << 1,
            self.mask_l << 1,
        );
        let start = self.pos;
        self.pos += n;
        Ok(Some(&self.buf[start..start + n]))
    }
}

/// A bounded in-memory pipe between two threads: what one writes (a store's snapshot
/// stream), the other reads (another store's loader), with at most
/// [`pipe::PIPE_PIECES`] pieces of [`pipe::PIPE_PIECE_BYTES`] in flight. The reader
/// sees the end of the stream once the writer is dropped; the writer gets an error once
/// the reader is dropped (so neither side waits for a partner that gave up).
pub mod pipe {
    use std::io::{self, Read, Write};
    use std::sync::mpsc::{sync_channel, Receiver, SyncSender};

    /// Pieces in flight between the two threads.
    pub const PIPE_PIECES: usize = 16;
    /// Size of a piece.
    pub const PIPE_PIECE_BYTES: usize = 256 * 1024;

    pub struct PipeWriter {
        tx: SyncSender<Vec<u8>>,
        buf: Vec<u8>,
    }

    pub struct PipeReader {
        rx: Receiver<Vec<u8>>,
        cur: Vec<u8>,
        pos: usize,
    }

    pub fn pipe() -> (PipeWriter, PipeReader) {
        let (tx, rx) = sync_channel(PIPE_PIECES);
        (
            PipeWriter {
                tx,
                buf: Vec::with_capacity(PIPE_PIECE_BYTES),
            },
            PipeReader {
                rx,
                cur: Vec::new(),
                pos: 0,
            },
        )
    }

    impl PipeWriter {
        fn send(&mut self) -> io::Result<()> {
            if self.buf.is_empty() {
                return Ok(());
            }
            let piece = std::mem::replace(&mut self.buf, Vec::with_capacity(PIPE_PIECE_BYTES));
            self.tx
                .send(piece)
                .map_err(|_| io::Error::new(io::ErrorKind::BrokenPipe, "the reading side stopped"))
        }
    }

    impl Write for PipeWriter {
        fn write(&mut self, b: &[u8]) -> io::Result<usize> {
            let n = b.len().min(PIPE_PIECE_BYTES - self.buf.len());
            self.buf.extend_from_slice(&b[..n]);
            if self.buf.len() == PIPE_PIECE_BYTES {
                self.send()?;
            }
            Ok(n)
        }
        /// Sends what is buffered (call it before dropping the writer: a drop without
        /// a flush loses the buffered bytes, and the reader sees a truncated stream).
        fn flush(&mut self) -> io::Result<()> {
            self.send()
        }
    }

    impl Read for PipeReader {
        fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
            while self.pos >= self.cur.len() {
                match self.rx.recv() {
                    Ok(v) => {
                        self.cur = v;
                        self.pos = 0;
                    }
                    Err(_) => return Ok(0),
                }
            }
            let n = buf.len().min(self.cur.len() - self.pos);
            buf[..n].copy_from_slice(&self.cur[self.pos..self.pos + n]);
            self.pos += n;
            Ok(n)
        }
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn bytes_arrive_in_order_and_a_gone_reader_stops_the_writer() {
            let data: Vec<u8> = (0..3 * PIPE_PIECE_BYTES + 17).map(|i| i as u8).collect();
            let (mut w, mut r) = pipe();
            let d2 = data.clone();
            let t = std::thread::spawn(move || {
                w.write_all(&d2).unwrap();
                w.flush().unwrap();
            });
            let mut got = Vec::new();
            r.read_to_end(&mut got).unwrap();
            t.join().unwrap();
            assert_eq!(got, data);

            let (mut w, r) = pipe();
            drop(r);
            let err = w
                .write_all(&vec![0u8; PIPE_PIECE_BYTES])
                .and_then(|_| w.flush())
                .unwrap_err();
            assert_eq!(err.kind(), io::ErrorKind::BrokenPipe);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Stepped;

    /// Deterministic bytes with runs and noise (so cuts fall at all kinds of places).
    fn data(len: usize, seed: u64) -> Vec<u8> {
        let mut x = seed | 1;
        (0..len)
            .map(|i| {
                x ^= x << 13;
                x ^= x >> 7;
                x ^= x << 17;
                if (i / 5000) % 3 == 0 {
                    (i / 700) as u8
                } else {
                    x as u8
                }
            })
            .collect()
    }

    #[test]
    fn chunker_cuts_where_fastcdc_stream_cdc_cuts() {
        for (len, (min, avg, max), step) in [
            (0usize, (64u32, 256u32, 1024u32), usize::MAX),
            (100, (64, 256, 1024), 7),
            (1024, (64, 256, 1024), 1000),
            (300_000, (64, 256, 1024), 4096),
            (3_000_000, (4096, 16384, 65536), 65536),
            (5_000_000, (65536, 262144, 1048576), 100_000),
            (5_000_000, (65536, 262144, 1048576), usize::MAX),
        ] {
            let d = data(len, len as u64 + 3);
            let want: Vec<Vec<u8>> = fastcdc::v2020::StreamCDC::new(d.as_slice(), min, avg, max)
                .map(|c| c.unwrap().data)
                .collect();
            let mut got = Vec::new();
            let mut c = Chunker::new(Stepped(&d, step), min, avg, max);
            while let Some(x) = c.next_chunk().unwrap() {
                got.push(x.to_vec());
            }
            assert_eq!(got.len(), want.len(), "len {len} sizes {min}/{avg}/{max}");
            assert!(got == want, "len {len} sizes {min}/{avg}/{max}");
        }
    }
}

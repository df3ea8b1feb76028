//! Checks computed on an mvcc snapshot stream while it passes through to a loader, so a
//! restore needs no second store to check the backup against.
//!
//! [`HashKvTap`] computes etcd's HashKV at a revision exactly as `mvcc::Store::hash_kv`
//! computes it over the store the stream is loaded into: CRC32 of `"key"`, then, for
//! every `rev` record with main revision at most the revision, in revision order, the
//! record's 16-byte revision key and its payload. The stream carries `rev` records in
//! the store's order with their payloads whole (`mvcc::Store::write_snapshot`), so the
//! two agree; a stream whose `rev` records are out of order or repeated (a store would
//! sort and deduplicate them, and hash something else) is refused.

use std::io::{self, Read};

use mvcc::snapshot_stream::{MAGIC, T_END, T_REV};

/// Where the parser is in the stream.
#[derive(Clone, Copy, Debug)]
enum Part {
    /// Magic and version: this many bytes left.
    Header(usize),
    Tag,
    /// A length prefix; `key` tells which of the record's two parts it announces.
    Len {
        key: bool,
        got: usize,
    },
    Key(usize),
    Value(usize),
    /// Record count and CRC32 after the end marker: this many bytes left.
    Trailer(usize),
    Done,
}

/// Read adapter computing HashKV at `revision` over the mvcc snapshot stream read
/// through it (see the module docs). [`HashKvTap::finish`] gives the hash once the
/// stream has been read to its end.
pub struct HashKvTap<R: Read> {
    inner: R,
    revision: i64,
    part: Part,
    tag: u8,
    len: [u8; 4],
    /// The revision key of the `rev` record being read (16 bytes), or its first bytes.
    rev_key: Vec<u8>,
    /// Whether the payload being read is hashed.
    hashing: bool,
    last_rev: Option<(i64, i64)>,
    rev_records: u64,
    hash: crc32fast::Hasher,
}

fn bad(detail: String) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, detail)
}

impl<R: Read> HashKvTap<R> {
    pub fn new(inner: R, revision: i64) -> Self {
        let mut hash = crc32fast::Hasher::new();
        hash.update(b"key");
        HashKvTap {
            inner,
            revision,
            part: Part::Header(MAGIC.len() + 4),
            tag: 0,
            len: [0; 4],
            rev_key: Vec::with_capacity(16),
            hashing: false,
            last_rev: None,
            rev_records: 0,
            hash,
        }
    }

    /// HashKV at the revision; an error if the stream did not reach its end.
    pub fn finish(self) -> Result<u32, String> {
        match self.part {
            Part::Done => Ok(self.hash.finalize()),
            p => Err(format!(
                "the snapshot stream ended early (in {p:?}) after {} history records",
                self.rev_records
            )),
        }
    }

    /// Feed `b`, bytes that the loader is also given.
    fn feed(&mut self, mut b: &[u8]) -> io::Result<()> {
        while !b.is_empty() {
            match self.part {
                Part::Header(n) => {
                    let k = n.min(b.len());
                    b = &b[k..];
                    self.part = if k == n {
                        Part::Tag
                    } else {
                        Part::Header(n - k)
                    };
                }
                Part::Tag => {
                    self.tag = b[0];
                    b = &b[1..];
                    self.part = if self.tag == T_END {
                        Part::Trailer(8 + 4)
                    } else {
                        Part::Len { key: true, got: 0 }
                    };
                }
                Part::Len { key, got } => {
                    let k = (4 - got).min(b.len());
                    self.len[got..got + k].copy_from_slice(&b[..k]);
                    b = &b[k..];
                    if got + k < 4 {
                        self.part = Part::Len { key, got: got + k };
                        continue;
                    }
                    let n = u32::from_le_bytes(self.len) as usize;
                    if key {
                        self.rev_key.clear();
                        self.part = Part::Key(n);
                        if n == 0 {
                            self.key_done()?;
                        }
                    } else {
                        self.part = Part::Value(n);
                        if n == 0 {
                            self.part = Part::Tag;
                        }
                    }
                }
                Part::Key(n) => {
                    let k = n.min(b.len());
                    if self.tag == T_REV && self.rev_key.len() < 16 {
                        let take = k.min(16 - self.rev_key.len());
                        self.rev_key.extend_from_slice(&b[..take]);
                    }
                    b = &b[k..];
                    self.part = Part::Key(n - k);
                    if k == n {
                        self.key_done()?;
                    }
                }
                Part::Value(n) => {
                    let k = n.min(b.len());
                    if self.hashing {
                        self.hash.update(&b[..k]);
                    }
                    b = &b[k..];
                    self.part = if k == n {
                        Part::Tag
                    } else {
                        Part::Value(n - k)
                    };
                }
                Part::Trailer(n) => {
                    let k = n.min(b.len());
                    b = &b[k..];
                    self.part = if k == n {
                        Part::Done
                    } else {
                        Part::Trailer(n - k)
                    };
                }
                // What follows the stream is the loader's to refuse.
                Part::Done => return Ok(()),
            }
        }
        Ok(())
    }

    /// A record's key is complete: decide whether its payload is hashed.
    fn key_done(&mut self) -> io::Result<()> {
        self.hashing = false;
        self.part = Part::Len { key: false, got: 0 };
        // A malformed revision key is the loader's to refuse (it names it).
        if self.tag != T_REV || self.rev_key.len() != 16 {
            return Ok(());
        }
        let main = i64::from_be_bytes(self.rev_key[..8].try_into().expect("8 bytes"));
        let sub = i64::from_be_bytes(self.rev_key[8..].try_into().expect("8 bytes"));
        if self.last_rev.is_some_and(|l| l >= (main, sub)) {
            return Err(bad(format!(
                "history record ({main}, {sub}) follows ({}, {}): the snapshot's history is not in revision order",
                self.last_rev.expect("some").0,
                self.last_rev.expect("some").1
            )));
        }
        self.last_rev = Some((main, sub));
        self.rev_records += 1;
        if main <= self.revision {
            self.hashing = true;
            self.hash.update(&self.rev_key);
        }
        Ok(())
    }
}

impl<R: Read> Read for HashKvTap<R> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.feed(&buf[..n])?;
        Ok(n)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_util::Stepped;

    fn history_store() -> (tempfile::TempDir, mvcc::Store) {
        let dir = tempfile::tempdir().unwrap();
        let s = mvcc::Store::open(&dir.path().join("kv.redb")).unwrap();
        let mut cmds = Vec::new();
        for i in 0..300 {
            let v = if i % 50 == 7 {
                vec![b'x'; 9_000] // stored in pieces by the store
            } else {
                format!("value-{i}").into_bytes()
            };
            cmds.push(Some(mvcc::Command::put(&mvcc::PbPutRequest {
                key: format!("k/{}", i % 37).into_bytes(),
                value: v,
                ..Default::default()
            })));
        }
        s.apply_batch(&cmds, b"m", false).unwrap();
        (dir, s)
    }

    #[test]
    fn hash_of_the_stream_equals_the_stores_hash_kv_at_every_revision_in_any_read_sizes() {
        let (_d, s) = history_store();
        let mut snap = Vec::new();
        s.write_snapshot(&mut snap).unwrap();
        for at in [1, 2, 150, 299, s.current_revision()] {
            for step in [1usize, 3, 17, 4096, usize::MAX] {
                let mut r = HashKvTap::new(Stepped(&snap, step), at);
                io::copy(&mut r, &mut io::sink()).unwrap();
                assert_eq!(
                    r.finish().unwrap(),
                    s.hash_kv(at).unwrap().0,
                    "at {at} step {step}"
                );
            }
        }
    }

    #[test]
    fn a_truncated_or_reordered_history_is_refused() {
        let (_d, s) = history_store();
        let mut snap = Vec::new();
        s.write_snapshot(&mut snap).unwrap();
        let mut r = HashKvTap::new(&snap[..snap.len() - 5], 10);
        io::copy(&mut r, &mut io::sink()).unwrap();
        assert!(r.finish().unwrap_err().contains("ended early"));

        // Two history records swapped: (main 1) and (main 2) are the first two.
        let mut swapped = Vec::new();
        let mut w = mvcc::SnapshotStreamWriter::begin(&mut swapped).unwrap();
        let key = |m: i64| {
            let mut k = m.to_be_bytes().to_vec();
            k.extend_from_slice(&0i64.to_be_bytes());
            k
        };
        w.record(T_REV, &[&key(2)], b"\0b").unwrap();
        w.record(T_REV, &[&key(1)], b"\0a").unwrap();
        w.finish().unwrap();
        let mut r = HashKvTap::new(swapped.as_slice(), 10);
        let e = io::copy(&mut r, &mut io::sink()).unwrap_err();
        assert!(e.to_string().contains("not in revision order"), "{e}");
    }
}

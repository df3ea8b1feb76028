//! A bbolt writer: builds a fresh database file bottom-up, in one pass, with memory
//! bounded by one page plus one (first key, page id) pair per page of the tree level
//! being built.
//!
//! Layout of a file it writes (page size [`PAGE_SIZE_BYTES`]):
//!
//! ```text
//! page 0, 1   meta pages (identical but for txid; both valid)
//! page 2      freelist page (empty: a fresh file has no free pages)
//! page 3..    each bucket's leaf pages, then its branch levels, in the order the
//!             buckets were built; the root bucket (the bucket names) last
//! ```
//!
//! Buckets whose leaf would take at most a quarter of a page are stored inline in their
//! parent (as bbolt does for small buckets); the root bucket always has its own page.
//! A leaf or branch whose content exceeds a page spans overflow pages. Pages are filled
//! completely: a fresh database is never written to by this writer again, and bbolt
//! rebalances pages it modifies.

use std::fs::File;
use std::io::{BufWriter, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};

use crate::bbolt::*;
use crate::error::{render, SnapshotError};

/// Page size of the files written: the OS page size on the platforms etcd runs on,
/// and what etcd itself uses.
pub const PAGE_SIZE_BYTES: u32 = 4096;
/// I/O buffer of the writer.
const WRITE_BUFFER_BYTES: usize = 1 << 20;

/// Builds one bbolt file. Build every nested bucket with [`DbWriter::bucket`] (each
/// returns the value its parent stores), then the root bucket, then [`DbWriter::finish`].
pub struct DbWriter {
    out: BufWriter<File>,
    path: PathBuf,
    page_size: usize,
    next_page: u64,
}

/// What a parent bucket stores for a child bucket: the child's bucket header, followed
/// by its leaf page when the child is inline.
#[derive(Clone, Debug)]
pub struct BucketValue(pub Vec<u8>);

impl DbWriter {
    /// Create (truncate) `path`; pages 0–2 are reserved and written by `finish`.
    pub fn create(path: &Path) -> Result<DbWriter, SnapshotError> {
        let f = File::create(path).map_err(SnapshotError::io("create", path))?;
        let mut w = DbWriter {
            out: BufWriter::with_capacity(WRITE_BUFFER_BYTES, f),
            path: path.to_path_buf(),
            page_size: PAGE_SIZE_BYTES as usize,
            next_page: 3,
        };
        let zeros = vec![0u8; 3 * w.page_size];
        w.out
            .write_all(&zeros)
            .map_err(SnapshotError::io("write", path))?;
        Ok(w)
    }

    /// Start a bucket; feed it keys in ascending order.
    pub fn bucket(&mut self, name: &str) -> BucketBuilder<'_> {
        BucketBuilder {
            w: self,
            name: name.to_string(),
            page: Vec::new(),
            page_bytes: PAGE_HEADER_BYTES,
            leaves: Vec::new(),
            last_key: None,
            has_buckets: false,
        }
    }

    /// Append one page run (a leaf or branch) and return its id.
    fn write_node(
        &mut self,
        leaf: bool,
        elems: &[(u32, Vec<u8>, Vec<u8>)],
    ) -> Result<u64, SnapshotError> {
        let id = self.next_page;
        let buf = encode_node(id, leaf, elems);
        let pages = buf.len().div_ceil(self.page_size);
        let mut padded = buf;
        padded.resize(pages * self.page_size, 0);
        let overflow = (pages - 1) as u32;
        padded[12..16].copy_from_slice(&overflow.to_le_bytes());
        self.out
            .write_all(&padded)
            .map_err(SnapshotError::io("write", &self.path))?;
        self.next_page += pages as u64;
        Ok(id)
    }

    /// Write the freelist and both meta pages with `root` as the root bucket, and sync.
    /// Returns the database size in bytes.
    pub fn finish(mut self, root: BucketValue) -> Result<u64, SnapshotError> {
        let root_page = u64::from_le_bytes(root.0[..8].try_into().expect("8 bytes"));
        if root_page == 0 {
            // finish_root never inlines; reaching this is a bug in this crate.
            return Err(SnapshotError::Stream {
                detail: "the root bucket must have its own page".into(),
            });
        }
        let ps = self.page_size;
        let mut head = vec![0u8; 3 * ps];
        let meta = |txid: u64| Meta {
            page_size: ps as u32,
            flags: 0,
            root: root_page,
            root_sequence: 0,
            freelist: 2,
            high_water: self.next_page,
            txid,
        };
        // bbolt writes meta transaction `txid` to page `txid % 2`; both metas point at
        // the same tree, so either one alone opens the whole database.
        for (page, txid) in [(0u64, 2u64), (1, 3)] {
            let at = page as usize * ps;
            head[at..at + 8].copy_from_slice(&page.to_le_bytes());
            head[at + 8..at + 10].copy_from_slice(&FLAG_META.to_le_bytes());
            head[at + PAGE_HEADER_BYTES..at + PAGE_HEADER_BYTES + 64]
                .copy_from_slice(&meta(txid).encode());
        }
        let at = 2 * ps;
        head[at..at + 8].copy_from_slice(&2u64.to_le_bytes());
        head[at + 8..at + 10].copy_from_slice(&FLAG_FREELIST.to_le_bytes());
        let io = |op| SnapshotError::io(op, self.path.clone());
        self.out.flush().map_err(io("write"))?;
        let f = self.out.get_mut();
        f.seek(SeekFrom::Start(0)).map_err(io("seek"))?;
        f.write_all(&head).map_err(io("write meta pages"))?;
        f.sync_all().map_err(io("sync"))?;
        Ok(self.next_page * ps as u64)
    }
}

/// Serialize a leaf (elements: flags, key, value) or branch (elements: _, key, child id
/// as 8 LE bytes) page without padding; the overflow field is set by the caller.
fn encode_node(id: u64, leaf: bool, elems: &[(u32, Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    let data: usize = elems
        .iter()
        .map(|(_, k, v)| k.len() + if leaf { v.len() } else { 0 })
        .sum();
    let mut buf = Vec::with_capacity(PAGE_HEADER_BYTES + elems.len() * ELEMENT_BYTES + data);
    buf.extend_from_slice(&id.to_le_bytes());
    buf.extend_from_slice(&(if leaf { FLAG_LEAF } else { FLAG_BRANCH }).to_le_bytes());
    buf.extend_from_slice(&(elems.len() as u16).to_le_bytes());
    buf.extend_from_slice(&0u32.to_le_bytes());
    let table_end = PAGE_HEADER_BYTES + elems.len() * ELEMENT_BYTES;
    let mut data_at = table_end;
    for (i, (flags, k, v)) in elems.iter().enumerate() {
        let el = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
        let pos = (data_at - el) as u32;
        if leaf {
            buf.extend_from_slice(&flags.to_le_bytes());
            buf.extend_from_slice(&pos.to_le_bytes());
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(&(v.len() as u32).to_le_bytes());
            data_at += k.len() + v.len();
        } else {
            buf.extend_from_slice(&pos.to_le_bytes());
            buf.extend_from_slice(&(k.len() as u32).to_le_bytes());
            buf.extend_from_slice(v);
            data_at += k.len();
        }
    }
    for (_, k, v) in elems {
        buf.extend_from_slice(k);
        if leaf {
            buf.extend_from_slice(v);
        }
    }
    buf
}

/// Builds one bucket's tree from keys in ascending order.
pub struct BucketBuilder<'a> {
    w: &'a mut DbWriter,
    name: String,
    /// Elements of the leaf being filled: (flags, key, value).
    page: Vec<(u32, Vec<u8>, Vec<u8>)>,
    page_bytes: usize,
    /// (first key, page id) of every leaf written so far.
    leaves: Vec<(Vec<u8>, u64)>,
    /// Last key of the leaf written last (ordering check across pages).
    last_key: Option<Vec<u8>>,
    has_buckets: bool,
}

impl BucketBuilder<'_> {
    /// Add a key-value pair; keys must be strictly ascending.
    pub fn put(&mut self, key: &[u8], value: &[u8]) -> Result<(), SnapshotError> {
        self.add(0, key.to_vec(), value.to_vec())
    }

    /// [`BucketBuilder::put`] taking ownership (no copies: the hot path of big buckets).
    pub fn put_owned(&mut self, key: Vec<u8>, value: Vec<u8>) -> Result<(), SnapshotError> {
        self.add(0, key, value)
    }

    /// Add a nested bucket built earlier.
    pub fn put_bucket(&mut self, key: &[u8], child: BucketValue) -> Result<(), SnapshotError> {
        self.has_buckets = true;
        self.add(LEAF_FLAG_BUCKET, key.to_vec(), child.0)
    }

    fn add(&mut self, flags: u32, key: Vec<u8>, value: Vec<u8>) -> Result<(), SnapshotError> {
        // The previous key is the last element of the page being filled, or the last
        // key of the page written before it.
        let last = self
            .page
            .last()
            .map(|e| e.1.as_slice())
            .or(self.last_key.as_deref());
        if let Some(last) = last {
            if key.as_slice() <= last {
                return Err(SnapshotError::Unsorted {
                    path: self.w.path.clone(),
                    bucket: self.name.clone(),
                    key: render(&key),
                });
            }
        }
        let size = ELEMENT_BYTES + key.len() + value.len();
        let full =
            self.page_bytes + size > self.w.page_size || self.page.len() == u16::MAX as usize;
        if !self.page.is_empty() && full {
            self.flush_leaf()?;
        }
        self.page.push((flags, key, value));
        self.page_bytes += size;
        Ok(())
    }

    fn flush_leaf(&mut self) -> Result<(), SnapshotError> {
        let elems = std::mem::take(&mut self.page);
        let first = elems.first().map(|e| e.1.clone()).unwrap_or_default();
        self.last_key = elems.last().map(|e| e.1.clone());
        let id = self.w.write_node(true, &elems)?;
        self.leaves.push((first, id));
        self.page_bytes = PAGE_HEADER_BYTES;
        Ok(())
    }

    /// Finish a nested bucket: inline when small and without nested buckets (as bbolt
    /// stores small buckets), else its pages.
    pub fn finish(self) -> Result<BucketValue, SnapshotError> {
        self.finish_inner(true)
    }

    /// Finish the root bucket, which always has a page of its own.
    pub fn finish_root(self) -> Result<BucketValue, SnapshotError> {
        self.finish_inner(false)
    }

    fn finish_inner(mut self, may_inline: bool) -> Result<BucketValue, SnapshotError> {
        let inline_limit = self.w.page_size / 4;
        if may_inline
            && self.leaves.is_empty()
            && !self.has_buckets
            && BUCKET_HEADER_BYTES + self.page_bytes <= inline_limit
        {
            let mut v = vec![0u8; BUCKET_HEADER_BYTES];
            v.extend_from_slice(&encode_node(0, true, &self.page));
            return Ok(BucketValue(v));
        }
        if !self.page.is_empty() || self.leaves.is_empty() {
            self.flush_leaf()?;
        }
        // Branch levels bottom-up until one page holds them all.
        let mut level = std::mem::take(&mut self.leaves);
        while level.len() > 1 {
            let mut next = Vec::new();
            let mut elems: Vec<(u32, Vec<u8>, Vec<u8>)> = Vec::new();
            let mut bytes = PAGE_HEADER_BYTES;
            for (key, child) in level {
                let size = ELEMENT_BYTES + key.len();
                if !elems.is_empty()
                    && (bytes + size > self.w.page_size || elems.len() == u16::MAX as usize)
                {
                    let first = elems[0].1.clone();
                    let id = self.w.write_node(false, &elems)?;
                    next.push((first, id));
                    elems.clear();
                    bytes = PAGE_HEADER_BYTES;
                }
                elems.push((0, key, child.to_le_bytes().to_vec()));
                bytes += size;
            }
            let first = elems[0].1.clone();
            let id = self.w.write_node(false, &elems)?;
            next.push((first, id));
            level = next;
        }
        let root = level[0].1;
        let mut v = Vec::with_capacity(BUCKET_HEADER_BYTES);
        v.extend_from_slice(&root.to_le_bytes());
        v.extend_from_slice(&0u64.to_le_bytes());
        Ok(BucketValue(v))
    }
}

//! A small read-only reader of bbolt databases (the storage engine of etcd).
//!
//! # The format, as far as this reader needs it
//!
//! A bbolt file is an array of fixed-size pages (the page size is recorded in the meta
//! pages; etcd uses the OS page size, 4096 bytes). Every page starts with a 16-byte
//! header, little-endian like the rest of the file:
//!
//! ```text
//! id u64 | flags u16 (0x01 branch, 0x02 leaf, 0x04 meta, 0x10 freelist) | count u16 | overflow u32
//! ```
//!
//! A page whose content does not fit spans `overflow` further pages right after it.
//!
//! * Pages 0 and 1 are meta pages; after the header: `magic u32 (0xED0CDAED) | version u32
//!   (2) | page_size u32 | flags u32 | root bucket (root pgid u64, sequence u64) |
//!   freelist pgid u64 | high-water pgid u64 | txid u64 | checksum u64`, the checksum
//!   being FNV-1a 64 over the 56 bytes before it. A writer alternates between the two,
//!   so the valid one with the larger txid is the current state.
//! * A leaf page holds `count` 16-byte elements `flags u32 | pos u32 | ksize u32 |
//!   vsize u32`, `pos` counted from the element itself to its key, the value following
//!   the key. Element flag 0x01 marks a nested bucket: its value is a bucket header
//!   (root pgid u64, sequence u64); root 0 means an *inline* bucket whose leaf page
//!   (header and elements) follows the header inside the value.
//! * A branch page holds `count` elements `pos u32 | ksize u32 | pgid u64`, each the
//!   smallest key of its child page.
//! * Keys in a bucket are unique and ascending (byte order).
//!
//! # Safety against damaged files
//!
//! Pages are read with positioned reads, never mapped. Every page id is checked against
//! the high-water mark and the file length, every element against its page, and a walk
//! over a bucket remembers the pages it has visited, so a cycle or a page shared by two
//! parents is an error, as are a tree deeper than [`MAX_TREE_DEPTH_LEVELS`] and keys out of
//! order. Each error names the file and the page and what is wrong with it. Nothing in
//! here panics on any input.

use std::collections::HashSet;
use std::fs::File;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

use crate::error::SnapshotError;

pub const MAGIC: u32 = 0xED0C_DAED;
pub const VERSION: u32 = 2;
pub const PAGE_HEADER_BYTES: usize = 16;
pub const ELEMENT_BYTES: usize = 16;
/// Bucket header inside a bucket value: root pgid u64, sequence u64.
pub const BUCKET_HEADER_BYTES: usize = 16;
pub const FLAG_BRANCH: u16 = 0x01;
pub const FLAG_LEAF: u16 = 0x02;
pub const FLAG_META: u16 = 0x04;
pub const FLAG_FREELIST: u16 = 0x10;
/// Leaf element flag of a nested bucket.
pub const LEAF_FLAG_BUCKET: u32 = 0x01;
/// The freelist pgid of a database that does not persist its freelist.
pub const PGID_NO_FREELIST: u64 = u64::MAX;
/// Bytes of the meta structure covered by its checksum.
pub const META_CHECKSUMMED_BYTES: usize = 56;
/// Smallest page size accepted (bbolt probes from 1 KiB).
pub const MIN_PAGE_SIZE_BYTES: u32 = 1024;
/// Largest page size accepted (bbolt probes up to 16 MiB).
pub const MAX_PAGE_SIZE_BYTES: u32 = 16 * 1024 * 1024;
/// A B+tree of any real database is far shallower; deeper means a damaged file.
pub const MAX_TREE_DEPTH_LEVELS: usize = 64;
/// Offset of page 1 tried when page 0 is unreadable: the page size etcd writes.
const DEFAULT_PAGE_SIZE_BYTES: u32 = 4096;

/// FNV-1a, 64 bits: bbolt's meta page checksum.
pub fn fnv64a(data: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in data {
        h ^= b as u64;
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

fn u16_at(b: &[u8], o: usize) -> u16 {
    u16::from_le_bytes([b[o], b[o + 1]])
}
fn u32_at(b: &[u8], o: usize) -> u32 {
    u32::from_le_bytes(b[o..o + 4].try_into().expect("4 bytes"))
}
fn u64_at(b: &[u8], o: usize) -> u64 {
    u64::from_le_bytes(b[o..o + 8].try_into().expect("8 bytes"))
}

/// One meta page, decoded and validated.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Meta {
    pub page_size: u32,
    pub flags: u32,
    /// Root page of the root bucket (whose keys are the top-level bucket names).
    pub root: u64,
    pub root_sequence: u64,
    pub freelist: u64,
    /// First page id past the end of the database.
    pub high_water: u64,
    pub txid: u64,
}

impl Meta {
    /// Decode the meta structure that follows a page header; `Err` says why it is invalid.
    pub fn decode(b: &[u8]) -> Result<Meta, String> {
        if b.len() < META_CHECKSUMMED_BYTES + 8 {
            return Err(format!("meta page is only {} bytes", b.len()));
        }
        let magic = u32_at(b, 0);
        if magic != MAGIC {
            return Err(format!("bad magic {magic:#010x} (want {MAGIC:#010x})"));
        }
        let version = u32_at(b, 4);
        if version != VERSION {
            return Err(format!(
                "unsupported bbolt version {version} (want {VERSION})"
            ));
        }
        let sum = u64_at(b, META_CHECKSUMMED_BYTES);
        let want = fnv64a(&b[..META_CHECKSUMMED_BYTES]);
        if sum != want {
            return Err(format!(
                "meta checksum mismatch (stored {sum:016x}, computed {want:016x})"
            ));
        }
        Ok(Meta {
            page_size: u32_at(b, 8),
            flags: u32_at(b, 12),
            root: u64_at(b, 16),
            root_sequence: u64_at(b, 24),
            freelist: u64_at(b, 32),
            high_water: u64_at(b, 40),
            txid: u64_at(b, 48),
        })
    }

    /// The 64-byte meta structure, checksum included.
    pub fn encode(&self) -> [u8; META_CHECKSUMMED_BYTES + 8] {
        let mut b = [0u8; META_CHECKSUMMED_BYTES + 8];
        b[0..4].copy_from_slice(&MAGIC.to_le_bytes());
        b[4..8].copy_from_slice(&VERSION.to_le_bytes());
        b[8..12].copy_from_slice(&self.page_size.to_le_bytes());
        b[12..16].copy_from_slice(&self.flags.to_le_bytes());
        b[16..24].copy_from_slice(&self.root.to_le_bytes());
        b[24..32].copy_from_slice(&self.root_sequence.to_le_bytes());
        b[32..40].copy_from_slice(&self.freelist.to_le_bytes());
        b[40..48].copy_from_slice(&self.high_water.to_le_bytes());
        b[48..56].copy_from_slice(&self.txid.to_le_bytes());
        let sum = fnv64a(&b[..META_CHECKSUMMED_BYTES]);
        b[56..64].copy_from_slice(&sum.to_le_bytes());
        b
    }
}

/// A read-only bbolt database: a file (or its first `len` bytes, when a trailer such as
/// etcd's SHA-256 follows the database) and its current meta page.
pub struct Db {
    file: File,
    path: PathBuf,
    len: u64,
    meta: Meta,
}

/// Where a bucket's tree starts.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BucketRoot {
    /// The root page of a bucket with pages of its own.
    Page(u64),
    /// An inline bucket: its whole leaf page (header and elements), stored in the value.
    Inline(Vec<u8>),
}

/// One element of a leaf.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Entry {
    pub key: Vec<u8>,
    pub value: Vec<u8>,
    /// A nested bucket (its value is a bucket header, see [`BucketRoot`]).
    pub is_bucket: bool,
}

impl Db {
    /// Open `path` read-only, treating only its first `len` bytes (all when `None`) as the
    /// database; choose the newest valid meta page.
    pub fn open(path: &Path, len: Option<u64>) -> Result<Db, SnapshotError> {
        let file = File::open(path).map_err(SnapshotError::io("open", path))?;
        let file_len = file
            .metadata()
            .map_err(SnapshotError::io("stat", path))?
            .len();
        let len = len.unwrap_or(file_len).min(file_len);
        let not = |detail: String| SnapshotError::NotBbolt {
            path: path.to_path_buf(),
            detail,
        };
        let read_meta = |offset: u64| -> Result<Meta, String> {
            let want = (PAGE_HEADER_BYTES + META_CHECKSUMMED_BYTES + 8) as u64;
            if offset + want > len {
                return Err(format!(
                    "file too short ({len} bytes) for a meta page at {offset}"
                ));
            }
            let mut b = [0u8; PAGE_HEADER_BYTES + META_CHECKSUMMED_BYTES + 8];
            file.read_exact_at(&mut b, offset)
                .map_err(|e| format!("read at {offset}: {e}"))?;
            if u16_at(&b, 8) & FLAG_META == 0 {
                return Err(format!(
                    "page at {offset} is not a meta page (flags {:#x})",
                    u16_at(&b, 8)
                ));
            }
            Meta::decode(&b[PAGE_HEADER_BYTES..])
        };
        // Page 0 gives the page size; if it is damaged, page 1 at etcd's page size.
        let m0 = read_meta(0);
        let page_size = match &m0 {
            Ok(m) => m.page_size,
            Err(_) => match read_meta(DEFAULT_PAGE_SIZE_BYTES as u64) {
                Ok(m) => m.page_size,
                Err(e1) => {
                    return Err(not(format!(
                        "meta page 0: {}; meta page 1: {e1}",
                        m0.err().unwrap_or_default()
                    )))
                }
            },
        };
        if !(MIN_PAGE_SIZE_BYTES..=MAX_PAGE_SIZE_BYTES).contains(&page_size)
            || !page_size.is_power_of_two()
        {
            return Err(not(format!("unsupported page size {page_size}")));
        }
        let m1 = read_meta(page_size as u64);
        let check = |m: Result<Meta, String>| -> Result<Meta, String> {
            let m = m?;
            if m.page_size != page_size {
                return Err(format!(
                    "page size {} differs from {page_size}",
                    m.page_size
                ));
            }
            if m.high_water < 3 {
                return Err(format!("high-water mark {} is below 3 pages", m.high_water));
            }
            let need = m.high_water.saturating_mul(page_size as u64);
            if need > len {
                return Err(format!(
                    "the database needs {} pages ({need} bytes) but the file holds {len} bytes: truncated",
                    m.high_water
                ));
            }
            if m.freelist != PGID_NO_FREELIST && (m.freelist < 2 || m.freelist >= m.high_water) {
                return Err(format!(
                    "freelist page {} is outside pages 2..{}",
                    m.freelist, m.high_water
                ));
            }
            if m.root < 2 || m.root >= m.high_water {
                return Err(format!(
                    "root page {} is outside pages 2..{}",
                    m.root, m.high_water
                ));
            }
            Ok(m)
        };
        let (c0, c1) = (check(m0), check(m1));
        let meta = match (c0, c1) {
            (Ok(a), Ok(b)) => {
                if b.txid > a.txid {
                    b
                } else {
                    a
                }
            }
            (Ok(a), Err(_)) => a,
            (Err(_), Ok(b)) => b,
            (Err(e0), Err(e1)) => return Err(not(format!("meta page 0: {e0}; meta page 1: {e1}"))),
        };
        Ok(Db {
            file,
            path: path.to_path_buf(),
            len,
            meta,
        })
    }

    pub fn meta(&self) -> &Meta {
        &self.meta
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Bytes of the database: high-water mark × page size.
    pub fn size_bytes(&self) -> u64 {
        self.meta.high_water * self.meta.page_size as u64
    }

    fn corrupt(&self, page: u64, detail: impl Into<String>) -> SnapshotError {
        SnapshotError::CorruptPage {
            path: self.path.clone(),
            page,
            detail: detail.into(),
        }
    }

    /// Read page `id` with its overflow pages; checks the id against the high-water mark
    /// and the page's own header.
    pub fn read_page(&self, id: u64) -> Result<Vec<u8>, SnapshotError> {
        let ps = self.meta.page_size as u64;
        if id < 2 || id >= self.meta.high_water {
            return Err(self.corrupt(
                id,
                format!(
                    "page id out of range (data pages are 2..{})",
                    self.meta.high_water
                ),
            ));
        }
        let mut head = [0u8; PAGE_HEADER_BYTES];
        self.file
            .read_exact_at(&mut head, id * ps)
            .map_err(SnapshotError::io("read page", &self.path))?;
        let own = u64_at(&head, 0);
        if own != id {
            return Err(self.corrupt(id, format!("page header says it is page {own}")));
        }
        let overflow = u32_at(&head, 12) as u64;
        let end = id + overflow + 1;
        if end > self.meta.high_water || end * ps > self.len {
            return Err(self.corrupt(
                id,
                format!(
                    "{overflow} overflow pages run past the end of the database ({} pages)",
                    self.meta.high_water
                ),
            ));
        }
        let mut buf = vec![0u8; ((overflow + 1) * ps) as usize];
        self.file
            .read_exact_at(&mut buf, id * ps)
            .map_err(SnapshotError::io("read page", &self.path))?;
        Ok(buf)
    }

    /// The root bucket (its entries are the top-level buckets).
    pub fn root(&self) -> BucketRoot {
        BucketRoot::Page(self.meta.root)
    }

    /// A top-level bucket by name, `None` when absent.
    pub fn bucket(&self, name: &[u8]) -> Result<Option<BucketRoot>, SnapshotError> {
        self.sub_bucket(&self.root(), name)
    }

    /// A nested bucket of `parent`, `None` when absent; an entry of that name that is not
    /// a bucket is an error.
    pub fn sub_bucket(
        &self,
        parent: &BucketRoot,
        name: &[u8],
    ) -> Result<Option<BucketRoot>, SnapshotError> {
        for e in self.iter(parent) {
            let e = e?;
            if e.key.as_slice() == name {
                if !e.is_bucket {
                    return Err(SnapshotError::Bucket {
                        path: self.path.clone(),
                        bucket: String::from_utf8_lossy(name).into_owned(),
                        detail: "is a key, not a bucket".into(),
                    });
                }
                return self.parse_bucket_value(name, &e.value).map(Some);
            }
            if e.key.as_slice() > name {
                break;
            }
        }
        Ok(None)
    }

    /// Decode a bucket header value into where its tree starts.
    pub fn parse_bucket_value(&self, name: &[u8], v: &[u8]) -> Result<BucketRoot, SnapshotError> {
        let bad = |detail: String| SnapshotError::Bucket {
            path: self.path.clone(),
            bucket: String::from_utf8_lossy(name).into_owned(),
            detail,
        };
        if v.len() < BUCKET_HEADER_BYTES {
            return Err(bad(format!("bucket header is {} bytes, want 16", v.len())));
        }
        let root = u64_at(v, 0);
        if root == 0 {
            if v.len() < BUCKET_HEADER_BYTES + PAGE_HEADER_BYTES {
                return Err(bad("inline bucket without its page".into()));
            }
            Ok(BucketRoot::Inline(v[BUCKET_HEADER_BYTES..].to_vec()))
        } else {
            Ok(BucketRoot::Page(root))
        }
    }

    /// All entries of a bucket in key order (nested buckets appear as entries with
    /// `is_bucket`). Each item is an error or an entry; after an error the walk stops.
    pub fn iter<'a>(&'a self, bucket: &BucketRoot) -> Cursor<'a> {
        let mut c = Cursor {
            db: self,
            stack: Vec::new(),
            visited: HashSet::new(),
            last_key: None,
            pending: None,
            failed: false,
        };
        match bucket {
            BucketRoot::Page(id) => c.push_page(*id, 0),
            BucketRoot::Inline(page) => match parse_node(page) {
                Ok(n) if n.leaf => c.stack.push(Frame {
                    page: 0,
                    buf: page.clone(),
                    node: n,
                    next: 0,
                    depth: 0,
                }),
                Ok(_) => c.fail(self.corrupt(0, "inline bucket page is not a leaf")),
                Err(e) => c.fail(self.corrupt(0, format!("inline bucket page: {e}"))),
            },
        }
        c
    }
}

/// A decoded page header with its elements' bounds checked.
struct Node {
    leaf: bool,
    count: usize,
}

/// Check the header and element table of a leaf or branch page held in `buf`.
fn parse_node(buf: &[u8]) -> Result<Node, String> {
    if buf.len() < PAGE_HEADER_BYTES {
        return Err(format!(
            "page is {} bytes, shorter than its header",
            buf.len()
        ));
    }
    let flags = u16_at(buf, 8);
    let count = u16_at(buf, 10) as usize;
    let leaf = match flags {
        FLAG_LEAF => true,
        FLAG_BRANCH => false,
        f => {
            return Err(format!(
                "expected a branch or leaf page, found flags {f:#x}"
            ))
        }
    };
    if PAGE_HEADER_BYTES + count * ELEMENT_BYTES > buf.len() {
        return Err(format!(
            "{count} elements do not fit in a page of {} bytes",
            buf.len()
        ));
    }
    if !leaf && count == 0 {
        return Err("branch page without elements".into());
    }
    Ok(Node { leaf, count })
}

/// Element `i` of a leaf page: (flags, key, value), bounds-checked.
fn leaf_element(buf: &[u8], i: usize) -> Result<(u32, &[u8], &[u8]), String> {
    let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
    let flags = u32_at(buf, at);
    let pos = u32_at(buf, at + 4) as usize;
    let ksize = u32_at(buf, at + 8) as usize;
    let vsize = u32_at(buf, at + 12) as usize;
    let start = at.checked_add(pos).ok_or("element position overflows")?;
    let kend = start.checked_add(ksize).ok_or("key size overflows")?;
    let vend = kend.checked_add(vsize).ok_or("value size overflows")?;
    if vend > buf.len() {
        return Err(format!(
            "leaf element {i} (key {ksize} bytes, value {vsize} bytes at +{pos}) runs past the page ({} bytes)",
            buf.len()
        ));
    }
    Ok((flags, &buf[start..kend], &buf[kend..vend]))
}

/// Element `i` of a branch page: the child page id.
fn branch_child(buf: &[u8], i: usize) -> Result<u64, String> {
    let at = PAGE_HEADER_BYTES + i * ELEMENT_BYTES;
    let pos = u32_at(buf, at) as usize;
    let ksize = u32_at(buf, at + 4) as usize;
    let end = at
        .checked_add(pos)
        .and_then(|s| s.checked_add(ksize))
        .ok_or("branch key bounds overflow")?;
    if end > buf.len() {
        return Err(format!("branch element {i} key runs past the page"));
    }
    Ok(u64_at(buf, at + 8))
}

struct Frame {
    page: u64,
    buf: Vec<u8>,
    node: Node,
    next: usize,
    depth: usize,
}

/// Depth-first walk over one bucket's tree, yielding its leaf entries in order.
pub struct Cursor<'a> {
    db: &'a Db,
    stack: Vec<Frame>,
    visited: HashSet<u64>,
    last_key: Option<Vec<u8>>,
    /// An error to yield next; after it, the walk is over.
    pending: Option<SnapshotError>,
    failed: bool,
}

impl Cursor<'_> {
    fn fail(&mut self, e: SnapshotError) {
        self.failed = true;
        self.stack.clear();
        self.pending = Some(e);
    }

    fn push_page(&mut self, id: u64, depth: usize) {
        if depth > MAX_TREE_DEPTH_LEVELS {
            let e = self.db.corrupt(
                id,
                format!("tree deeper than {MAX_TREE_DEPTH_LEVELS} levels"),
            );
            return self.fail(e);
        }
        if !self.visited.insert(id) {
            let e = self.db.corrupt(
                id,
                "page reached twice in one bucket (a cycle or a shared page)",
            );
            return self.fail(e);
        }
        let buf = match self.db.read_page(id) {
            Ok(b) => b,
            Err(e) => return self.fail(e),
        };
        match parse_node(&buf) {
            Ok(node) => self.stack.push(Frame {
                page: id,
                buf,
                node,
                next: 0,
                depth,
            }),
            Err(d) => {
                let e = self.db.corrupt(id, d);
                self.fail(e)
            }
        }
    }
}

impl Iterator for Cursor<'_> {
    type Item = Result<Entry, SnapshotError>;

    fn next(&mut self) -> Option<Self::Item> {
        loop {
            if let Some(e) = self.pending.take() {
                return Some(Err(e));
            }
            if self.failed {
                return None;
            }
            let top = self.stack.last_mut()?;
            if top.next >= top.node.count {
                self.stack.pop();
                continue;
            }
            let i = top.next;
            top.next += 1;
            let (page, depth) = (top.page, top.depth);
            if top.node.leaf {
                let item = leaf_element(&top.buf, i)
                    .map(|(flags, k, v)| Entry {
                        key: k.to_vec(),
                        value: v.to_vec(),
                        is_bucket: flags & LEAF_FLAG_BUCKET != 0,
                    })
                    .map_err(|d| self.db.corrupt(page, d));
                match item {
                    Ok(entry) => {
                        if let Some(last) = &self.last_key {
                            if entry.key <= *last {
                                let e = self.db.corrupt(
                                    page,
                                    format!(
                                        "key {} is not greater than the key before it {}",
                                        crate::error::render(&entry.key),
                                        crate::error::render(last)
                                    ),
                                );
                                self.fail(e);
                                continue;
                            }
                        }
                        self.last_key = Some(entry.key.clone());
                        return Some(Ok(entry));
                    }
                    Err(e) => {
                        self.fail(e);
                        continue;
                    }
                }
            } else {
                match branch_child(&top.buf, i) {
                    Ok(child) => self.push_page(child, depth + 1),
                    Err(d) => {
                        let e = self.db.corrupt(page, d);
                        self.fail(e);
                    }
                }
            }
        }
    }
}

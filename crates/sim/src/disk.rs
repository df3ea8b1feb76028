//! The simulated disk: files in memory that know what has been synced.
//!
//! A [`SimFile`] holds two images of one file: what the process sees
//! (every write, at once) and what would survive a power cut (the state as of
//! the last `sync_data`). It is a redb [`StorageBackend`] (the members'
//! `kv.redb`) and a [`wal::File`] (their write-ahead log's files).
//! [`SimFile::after_crash`] is the file a restarted member finds: the synced
//! image only — every write since the last sync is lost, exactly the failure
//! an acknowledge-before-fsync bug cannot survive. Syncs copy only the pages
//! written since the previous sync.
//!
//! A [`SimDir`] is the WAL's directory ([`wal::Dir`]). What a power cut
//! leaves of it ([`SimDir::after_crash`]):
//! - directory entries as of the last `sync_dir`: a file created or renamed
//!   since is gone (or back under its old name), a file removed since is
//!   back — the strictest POSIX reading, which the WAL must survive;
//! - each surviving file's synced image, plus torn writes
//!   ([`SimFile::after_crash_torn`], seeded): of the bytes appended past the
//!   synced length, a random prefix survives, or the written length survives
//!   with the data only up to a sector boundary and zeros after it (the size
//!   reached the disk, the data did not);
//!   an unsynced overwrite of an already synced page survives whole, not at
//!   all, or as a prefix of the page.

use std::collections::{BTreeMap, BTreeSet};
use std::io;
use std::sync::{Arc, Mutex};

use rand::rngs::StdRng;
use rand::Rng;
use redb::StorageBackend;

/// Granularity of dirty tracking, bytes.
const PAGE_BYTES: u64 = 4096;
/// Unit a torn write keeps or loses whole, bytes (as `wal::SECTOR_BYTES`).
const SECTOR_BYTES: u64 = wal::SECTOR_BYTES;

#[derive(Debug, Default)]
struct Images {
    /// What reads return: every write so far.
    visible: Vec<u8>,
    /// What survives a crash: the file as of the last sync.
    synced: Vec<u8>,
    /// Pages of `visible` written since the last sync.
    dirty: BTreeSet<u64>,
    syncs: u64,
}

/// One simulated file. Clones share it.
#[derive(Debug, Clone, Default)]
pub struct SimFile(Arc<Mutex<Images>>);

impl SimFile {
    pub fn new() -> Self {
        Self::default()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Images> {
        self.0.lock().expect("sim disk poisoned")
    }

    /// The file a member restarted after a power cut finds: the synced image
    /// only, as a new file (the old one may still be written by the dead
    /// member's leftover tasks; nothing of that reaches the new file).
    pub fn after_crash(&self) -> SimFile {
        let synced = self.lock().synced.clone();
        SimFile(Arc::new(Mutex::new(Images {
            visible: synced.clone(),
            synced,
            dirty: BTreeSet::new(),
            syncs: 0,
        })))
    }

    /// The file after a power cut with torn writes (see the module docs),
    /// chosen by `rng`.
    pub fn after_crash_torn(&self, rng: &mut StdRng) -> SimFile {
        let img = self.lock();
        let mut out = img.synced.clone();
        // Unsynced overwrites of synced pages: whole, none, or a prefix.
        for &p in img.dirty.iter() {
            let start = (p * PAGE_BYTES) as usize;
            let end = (start + PAGE_BYTES as usize)
                .min(out.len())
                .min(img.visible.len());
            if start >= end {
                continue;
            }
            let keep = match rng.gen_range(0..3) {
                0 => 0,
                1 => end - start,
                _ => rng.gen_range(0..=end - start),
            };
            out[start..start + keep].copy_from_slice(&img.visible[start..start + keep]);
        }
        // Unsynced appends: a prefix, maybe then zeros to the written length.
        if img.visible.len() > out.len() {
            let base = out.len();
            let extra = img.visible.len() - base;
            let keep = rng.gen_range(0..=extra);
            if keep < extra && rng.gen_bool(0.5) {
                // The size reached the disk, the data only up to a sector
                // boundary (sectors are written whole or not at all).
                let zero_from = ((base + keep) as u64 / SECTOR_BYTES * SECTOR_BYTES)
                    .max((base as u64).div_ceil(SECTOR_BYTES) * SECTOR_BYTES)
                    as usize;
                if zero_from < img.visible.len() {
                    out.extend_from_slice(&img.visible[base..zero_from]);
                    out.resize(img.visible.len(), 0);
                } else {
                    out.extend_from_slice(&img.visible[base..base + keep]);
                }
            } else {
                out.extend_from_slice(&img.visible[base..base + keep]);
            }
        }
        SimFile(Arc::new(Mutex::new(Images {
            visible: out.clone(),
            synced: out,
            dirty: BTreeSet::new(),
            syncs: 0,
        })))
    }

    /// Bytes written but not yet synced (lost by a crash now).
    pub fn unsynced_pages(&self) -> usize {
        self.lock().dirty.len()
    }

    /// Syncs so far.
    pub fn syncs(&self) -> u64 {
        self.lock().syncs
    }
}

fn out_of_range(what: &str, offset: u64, len: usize, file_len: usize) -> io::Error {
    io::Error::new(
        io::ErrorKind::UnexpectedEof,
        format!(
            "sim disk: {what} of {len} bytes at {offset} beyond end of file ({file_len} bytes)"
        ),
    )
}

impl StorageBackend for SimFile {
    fn len(&self) -> Result<u64, io::Error> {
        Ok(self.lock().visible.len() as u64)
    }

    fn read(&self, offset: u64, out: &mut [u8]) -> Result<(), io::Error> {
        let img = self.lock();
        let start = offset as usize;
        let end = start
            .checked_add(out.len())
            .filter(|&e| e <= img.visible.len());
        let Some(end) = end else {
            return Err(out_of_range("read", offset, out.len(), img.visible.len()));
        };
        out.copy_from_slice(&img.visible[start..end]);
        Ok(())
    }

    fn set_len(&self, len: u64) -> Result<(), io::Error> {
        let mut img = self.lock();
        let old = img.visible.len() as u64;
        img.visible.resize(len as usize, 0);
        // Growing zero-fills new pages; both grow and shrink change what a sync persists.
        let (lo, hi) = (old.min(len), old.max(len));
        for p in lo / PAGE_BYTES..hi.div_ceil(PAGE_BYTES) {
            img.dirty.insert(p);
        }
        Ok(())
    }

    fn sync_data(&self) -> Result<(), io::Error> {
        let mut img = self.lock();
        let Images {
            visible,
            synced,
            dirty,
            syncs,
        } = &mut *img;
        synced.resize(visible.len(), 0);
        for &p in dirty.iter() {
            let start = (p * PAGE_BYTES) as usize;
            if start >= visible.len() {
                continue;
            }
            let end = (start + PAGE_BYTES as usize).min(visible.len());
            synced[start..end].copy_from_slice(&visible[start..end]);
        }
        dirty.clear();
        *syncs += 1;
        Ok(())
    }

    fn write(&self, offset: u64, data: &[u8]) -> Result<(), io::Error> {
        let mut img = self.lock();
        let start = offset as usize;
        let end = start + data.len();
        if end > img.visible.len() {
            // redb sets the length before writing; a write past the end is a bug in the caller.
            return Err(out_of_range("write", offset, data.len(), img.visible.len()));
        }
        img.visible[start..end].copy_from_slice(data);
        if !data.is_empty() {
            for p in offset / PAGE_BYTES..=(end as u64 - 1) / PAGE_BYTES {
                img.dirty.insert(p);
            }
        }
        Ok(())
    }
}

impl wal::File for SimFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        StorageBackend::read(self, offset, buf)
    }

    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        let end = offset + data.len() as u64;
        if end > StorageBackend::len(self)? {
            StorageBackend::set_len(self, end)?;
        }
        StorageBackend::write(self, offset, data)
    }

    fn sync_data(&self) -> io::Result<()> {
        StorageBackend::sync_data(self)
    }

    fn len(&self) -> io::Result<u64> {
        StorageBackend::len(self)
    }

    fn truncate(&self, len: u64) -> io::Result<()> {
        StorageBackend::set_len(self, len)
    }
}

#[derive(Debug, Default)]
struct DirState {
    /// What the process sees.
    visible: BTreeMap<String, SimFile>,
    /// The entries as of the last `sync_dir`: what a power cut leaves.
    durable: BTreeMap<String, SimFile>,
    dir_syncs: u64,
}

/// One simulated directory (the WAL's). Clones share it.
#[derive(Debug, Clone, Default)]
pub struct SimDir {
    state: Arc<Mutex<DirState>>,
    /// Names it in messages, e.g. `sim://n1/wal`.
    label: String,
}

fn not_found(name: &str) -> io::Error {
    io::Error::new(
        io::ErrorKind::NotFound,
        format!("sim disk: no file {name:?}"),
    )
}

impl SimDir {
    pub fn new(label: &str) -> Self {
        SimDir {
            state: Arc::default(),
            label: label.to_string(),
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, DirState> {
        self.state.lock().expect("sim dir poisoned")
    }

    /// The directory a member restarted after a power cut finds (module
    /// docs), torn writes chosen by `rng`; new files, so the dead member's
    /// leftover tasks cannot reach them.
    pub fn after_crash(&self, rng: &mut StdRng) -> SimDir {
        let durable: BTreeMap<String, SimFile> = self
            .lock()
            .durable
            .iter()
            .map(|(n, f)| (n.clone(), f.after_crash_torn(rng)))
            .collect();
        SimDir {
            state: Arc::new(Mutex::new(DirState {
                visible: durable.clone(),
                durable,
                dir_syncs: 0,
            })),
            label: self.label.clone(),
        }
    }

    /// The file named `name`, as the process sees it (tests).
    pub fn file(&self, name: &str) -> Option<SimFile> {
        self.lock().visible.get(name).cloned()
    }

    /// Directory syncs so far.
    pub fn dir_syncs(&self) -> u64 {
        self.lock().dir_syncs
    }

    /// Data syncs of every file so far (files removed since not counted).
    pub fn data_syncs(&self) -> u64 {
        self.lock().visible.values().map(|f| f.syncs()).sum()
    }
}

impl wal::Dir for SimDir {
    fn list(&self) -> io::Result<Vec<String>> {
        Ok(self.lock().visible.keys().cloned().collect())
    }

    fn create(&self, name: &str) -> io::Result<Arc<dyn wal::File>> {
        let f = SimFile::new();
        self.lock().visible.insert(name.to_string(), f.clone());
        Ok(Arc::new(f))
    }

    fn open(&self, name: &str) -> io::Result<Arc<dyn wal::File>> {
        let f = self.lock().visible.get(name).cloned();
        Ok(Arc::new(f.ok_or_else(|| not_found(name))?))
    }

    fn remove(&self, name: &str) -> io::Result<()> {
        self.lock()
            .visible
            .remove(name)
            .map(drop)
            .ok_or_else(|| not_found(name))
    }

    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        let mut d = self.lock();
        let f = d.visible.remove(from).ok_or_else(|| not_found(from))?;
        d.visible.insert(to.to_string(), f);
        Ok(())
    }

    fn sync_dir(&self) -> io::Result<()> {
        let mut d = self.lock();
        d.durable = d.visible.clone();
        d.dir_syncs += 1;
        Ok(())
    }

    fn describe(&self, name: &str) -> String {
        format!("{}/{name}", self.label)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use redb::ReadableDatabase;

    #[test]
    fn a_crash_keeps_exactly_what_was_synced() {
        let f = SimFile::new();
        f.set_len(10_000).unwrap();
        f.write(0, b"durable").unwrap();
        f.sync_data().unwrap();
        f.write(0, b"VOLATIL").unwrap();
        f.write(9_000, b"tail").unwrap();
        let mut buf = [0u8; 7];
        f.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"VOLATIL");
        let after = f.after_crash();
        after.read(0, &mut buf).unwrap();
        assert_eq!(&buf, b"durable");
        let mut tail = [1u8; 4];
        after.read(9_000, &mut tail).unwrap();
        assert_eq!(tail, [0; 4]);
        assert!(after.read(9_999, &mut [0u8; 2]).is_err());
    }

    #[test]
    fn a_power_cut_keeps_directory_entries_as_of_the_last_dir_sync() {
        use rand::SeedableRng;
        use wal::Dir;
        let d = SimDir::new("sim://t/wal");
        let kept = d.create("kept").unwrap();
        kept.write_at(0, b"synced").unwrap();
        kept.sync_data().unwrap();
        d.create("doomed").unwrap();
        d.sync_dir().unwrap();
        // After the directory sync: a new file, a removal, a rename.
        d.create("new").unwrap().sync_data().unwrap();
        d.remove("doomed").unwrap();
        d.rename("kept", "renamed").unwrap();
        let mut rng = StdRng::seed_from_u64(1);
        let after = d.after_crash(&mut rng);
        let mut names = after.list().unwrap();
        names.sort();
        assert_eq!(names, ["doomed", "kept"]);
        let mut buf = [0u8; 6];
        after.open("kept").unwrap().read_at(0, &mut buf).unwrap();
        assert_eq!(&buf, b"synced");
    }

    #[test]
    fn unsynced_appends_survive_as_a_prefix_or_zero_filled_from_a_sector() {
        use rand::SeedableRng;
        use wal::File;
        let f = SimFile::new();
        f.write_at(0, &[7u8; 100]).unwrap();
        File::sync_data(&f).unwrap();
        f.write_at(100, &[9u8; 3000]).unwrap();
        let (mut prefixes, mut zero_filled) = (0, 0);
        for seed in 0..200 {
            let after = f.after_crash_torn(&mut StdRng::seed_from_u64(seed));
            let len = File::len(&after).unwrap() as usize;
            let mut bytes = vec![0u8; len];
            after.read_at(0, &mut bytes).unwrap();
            assert!(
                len >= 100 && bytes[..100] == [7u8; 100],
                "synced bytes kept"
            );
            let tail = &bytes[100..];
            let zeros_from = tail.iter().rposition(|&b| b != 0).map_or(0, |p| p + 1) + 100;
            assert!(tail[..zeros_from - 100].iter().all(|&b| b == 9));
            if len == 3100 && zeros_from < len {
                assert_eq!(
                    zeros_from as u64 % SECTOR_BYTES,
                    0,
                    "zeros start at a sector"
                );
                zero_filled += 1;
            } else {
                prefixes += 1;
            }
        }
        assert!(
            prefixes > 20 && zero_filled > 20,
            "{prefixes} {zero_filled}"
        );
    }

    #[test]
    fn an_unsynced_length_change_is_lost_too() {
        let f = SimFile::new();
        f.set_len(4096).unwrap();
        f.sync_data().unwrap();
        f.set_len(20_000).unwrap();
        assert_eq!(f.after_crash().len().unwrap(), 4096);
    }

    #[test]
    fn redb_on_the_sim_disk_loses_only_unsynced_commits() {
        const T: redb::TableDefinition<u64, u64> = redb::TableDefinition::new("t");
        let f = SimFile::new();
        let db = redb::Builder::new().create_with_backend(f.clone()).unwrap();
        let w = db.begin_write().unwrap();
        w.open_table(T).unwrap().insert(1, 10).unwrap();
        w.commit().unwrap();
        let mut w = db.begin_write().unwrap();
        w.set_durability(redb::Durability::None).unwrap();
        w.open_table(T).unwrap().insert(2, 20).unwrap();
        w.commit().unwrap();
        let image = f.after_crash();
        drop(db);
        let db = redb::Builder::new().create_with_backend(image).unwrap();
        let r = db.begin_read().unwrap();
        let t = r.open_table(T).unwrap();
        assert_eq!(t.get(1).unwrap().map(|v| v.value()), Some(10));
        assert_eq!(
            t.get(2).unwrap().map(|v| v.value()),
            None,
            "a non-durable commit survived a crash"
        );
    }
}

//! The simulated disk: a redb [`StorageBackend`] in memory that knows what
//! has been synced.
//!
//! A [`SimFile`] holds two images of one file: what the process sees
//! (every write, at once) and what would survive a power cut (the state as of
//! the last `sync_data`). [`SimFile::after_crash`] is the file a restarted
//! member finds: the synced image only — every write since the last sync is
//! lost, exactly the failure an acknowledge-before-fsync bug cannot survive.
//! Syncs copy only the pages written since the previous sync.

use std::collections::BTreeSet;
use std::io;
use std::sync::{Arc, Mutex};

use redb::StorageBackend;

/// Granularity of dirty tracking, bytes.
const PAGE_BYTES: u64 = 4096;

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

//! The file-system seam: the WAL does all its I/O through [`Dir`] and
//! [`File`], so production runs it on `std::fs` ([`FsDir`]) and the
//! simulator on its in-memory disk (which decides what a power cut keeps).

use std::fmt::Debug;
use std::io;
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// One open file of a [`Dir`]. Offsets are bytes from the start.
pub trait File: Send + Sync + Debug {
    /// Fill `buf` from `offset`; an error if the file ends before.
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()>;
    /// Write `data` at `offset`, growing the file if it ends before.
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()>;
    /// Make every write so far (and the length) durable: `fdatasync`.
    fn sync_data(&self) -> io::Result<()>;
    /// Current length, bytes.
    fn len(&self) -> io::Result<u64>;
    /// Whether the file holds no byte.
    fn is_empty(&self) -> io::Result<bool> {
        Ok(self.len()? == 0)
    }
    /// Cut (or zero-extend) the file to `len` bytes; durable after `sync_data`.
    fn truncate(&self, len: u64) -> io::Result<()>;
}

/// A directory holding the WAL's files. Names are plain file names.
///
/// Creating, renaming and removing a file are durable only after
/// [`Dir::sync_dir`] (as on POSIX file systems); the WAL never relies on
/// one of them before it has synced the directory.
pub trait Dir: Send + Sync + Debug {
    /// Names of the files in the directory (any order).
    fn list(&self) -> io::Result<Vec<String>>;
    /// Create `name` empty (replacing a file of that name).
    fn create(&self, name: &str) -> io::Result<Arc<dyn File>>;
    /// Open an existing file for reading and writing.
    fn open(&self, name: &str) -> io::Result<Arc<dyn File>>;
    fn remove(&self, name: &str) -> io::Result<()>;
    fn rename(&self, from: &str, to: &str) -> io::Result<()>;
    /// Make creations, renames and removals so far durable (`fsync` of the directory).
    fn sync_dir(&self) -> io::Result<()>;
    /// How to name `name` to a person (a path), for errors and log lines.
    fn describe(&self, name: &str) -> String;
}

/// A real directory (production).
#[derive(Debug, Clone)]
pub struct FsDir {
    path: PathBuf,
}

impl FsDir {
    /// The directory at `path`, created (with its parents) if missing.
    pub fn create_all(path: &Path) -> io::Result<FsDir> {
        std::fs::create_dir_all(path)?;
        Ok(FsDir {
            path: path.to_path_buf(),
        })
    }

    pub fn path(&self) -> &Path {
        &self.path
    }
}

#[derive(Debug)]
struct FsFile(std::fs::File);

impl File for FsFile {
    fn read_at(&self, offset: u64, buf: &mut [u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::read_exact_at(&self.0, buf, offset)
    }
    fn write_at(&self, offset: u64, data: &[u8]) -> io::Result<()> {
        std::os::unix::fs::FileExt::write_all_at(&self.0, data, offset)
    }
    fn sync_data(&self) -> io::Result<()> {
        self.0.sync_data()
    }
    fn len(&self) -> io::Result<u64> {
        Ok(self.0.metadata()?.len())
    }
    fn truncate(&self, len: u64) -> io::Result<()> {
        self.0.set_len(len)
    }
}

impl Dir for FsDir {
    fn list(&self) -> io::Result<Vec<String>> {
        let mut out = Vec::new();
        for e in std::fs::read_dir(&self.path)? {
            let e = e?;
            if e.file_type()?.is_file() {
                if let Some(n) = e.file_name().to_str() {
                    out.push(n.to_string());
                }
            }
        }
        Ok(out)
    }
    fn create(&self, name: &str) -> io::Result<Arc<dyn File>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(self.path.join(name))?;
        Ok(Arc::new(FsFile(f)))
    }
    fn open(&self, name: &str) -> io::Result<Arc<dyn File>> {
        let f = std::fs::OpenOptions::new()
            .read(true)
            .write(true)
            .open(self.path.join(name))?;
        Ok(Arc::new(FsFile(f)))
    }
    fn remove(&self, name: &str) -> io::Result<()> {
        std::fs::remove_file(self.path.join(name))
    }
    fn rename(&self, from: &str, to: &str) -> io::Result<()> {
        std::fs::rename(self.path.join(from), self.path.join(to))
    }
    fn sync_dir(&self) -> io::Result<()> {
        std::fs::File::open(&self.path)?.sync_all()
    }
    fn describe(&self, name: &str) -> String {
        self.path.join(name).display().to_string()
    }
}

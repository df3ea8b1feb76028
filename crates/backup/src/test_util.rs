//! Helpers shared by the crate's unit tests.

use std::io::{self, Read};

/// A reader over `.0` that gives at most `.1` bytes per read (streams cut at
/// every possible boundary).
pub(crate) struct Stepped<'a>(pub &'a [u8], pub usize);

impl Read for Stepped<'_> {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = buf.len().min(self.1).min(self.0.len());
        buf[..n].copy_from_slice(&self.0[..n]);
        self.0 = &self.0[n..];
        Ok(n)
    }
}

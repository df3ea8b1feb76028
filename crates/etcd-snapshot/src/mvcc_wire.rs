//! Phalanx's own Maintenance.Snapshot wire format, for Phalanx's backups.
//!
//! `etcdctl snapshot save` gets an etcd snapshot (bbolt + SHA-256) from a member. A
//! Phalanx backup does not need bbolt: it stores the mvcc snapshot stream, so building a
//! bbolt file on the member and converting it back on the backup side is wasted work
//! (most of a backup's time at 1 M keys). A client that sends the gRPC metadata
//! [`MVCC_FORMAT_METADATA_KEY`]` = `[`MVCC_FORMAT_METADATA_VALUE`] with its Snapshot
//! request gets the member's mvcc snapshot stream instead, produced while it is sent
//! (one read transaction, bounded memory), followed by etcd's trailer as
//! [`TrailerWriter`] writes it:
//!
//! ```text
//! mvcc snapshot stream (magic, version, records, end marker, count, CRC32)
//! zero padding so that stream + padding + 8 is a multiple of 512 bytes
//! u64 LE   length of the mvcc stream
//! sha256   of everything above
//! ```
//!
//! Version 2 ([`MVCC_FORMAT_V2_METADATA_VALUE`], what backups ask for) is the bare mvcc
//! snapshot stream with no trailer: its end marker already carries the record count
//! and the CRC32 of everything before it, which the backup side verifies, and every
//! chunk the backup stores is addressed by its own SHA-256. The SHA-256 trailer cost a
//! full pass over the stream on each side (about a tenth of a backup's CPU at 1 M keys)
//! and guarded nothing the CRC32 and the transport do not.
//!
//! A member that does not know the metadata value (an older Phalanx, or etcd) ignores
//! it and streams an etcd snapshot; the backup side recognises either by their first
//! bytes.

use sha2::{Digest, Sha256};

use crate::convert::TRAILER_ALIGN_BYTES;

/// gRPC metadata key asking a Phalanx member for its mvcc snapshot stream.
pub const MVCC_FORMAT_METADATA_KEY: &str = "phalanx-snapshot-format";
/// The value of [`MVCC_FORMAT_METADATA_KEY`] naming the mvcc stream with etcd's
/// trailer (version 1; still served, for older backup clients).
pub const MVCC_FORMAT_METADATA_VALUE: &str = "mvcc-v1";
/// The value of [`MVCC_FORMAT_METADATA_KEY`] naming the bare mvcc stream, without a
/// trailer (version 2).
pub const MVCC_FORMAT_V2_METADATA_VALUE: &str = "mvcc-v2";

/// Accumulates the SHA-256 and length of the bytes sent, then yields the trailer.
#[derive(Default, Clone)]
pub struct TrailerWriter {
    sha: Sha256,
    len: u64,
}

impl TrailerWriter {
    pub fn new() -> Self {
        Self::default()
    }

    /// Account for `bytes`, sent before the trailer.
    pub fn update(&mut self, bytes: &[u8]) {
        self.sha.update(bytes);
        self.len += bytes.len() as u64;
    }

    /// Bytes passed to [`TrailerWriter::update`] so far.
    pub fn payload_bytes(&self) -> u64 {
        self.len
    }

    /// The trailer: padding, payload length, SHA-256 of payload + padding + length.
    pub fn finish(mut self) -> Vec<u8> {
        let padded = (self.len + 8).div_ceil(TRAILER_ALIGN_BYTES) * TRAILER_ALIGN_BYTES;
        let mut t = vec![0u8; (padded - 8 - self.len) as usize];
        t.extend_from_slice(&self.len.to_le_bytes());
        self.sha.update(&t);
        t.extend_from_slice(&self.sha.finalize());
        t
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn trailer_pads_to_alignment_and_hashes_everything_before_it() {
        for len in [0usize, 1, 503, 504, 505, 512, 100_000] {
            let payload = vec![7u8; len];
            let mut w = TrailerWriter::new();
            w.update(&payload[..len / 2]);
            w.update(&payload[len / 2..]);
            assert_eq!(w.payload_bytes(), len as u64);
            let t = w.finish();
            let total = len + t.len();
            assert_eq!(total as u64 % TRAILER_ALIGN_BYTES, 32, "len {len}");
            let body_end = t.len() - 32;
            assert_eq!(
                u64::from_le_bytes(t[body_end - 8..body_end].try_into().unwrap()),
                len as u64
            );
            let mut all = payload.clone();
            all.extend_from_slice(&t[..body_end]);
            assert_eq!(Sha256::digest(&all).as_slice(), &t[body_end..]);
        }
    }
}

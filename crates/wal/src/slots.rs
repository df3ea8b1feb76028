//! A small value kept crash-safely in two alternating checksummed slots.
//!
//! Layout: two slots of [`SLOT_BYTES`] each (separate 4 KiB pages, so a torn
//! write of one can never damage the other). A slot is
//! `magic u32 ‖ seq u64 ‖ len u32 ‖ crc32(magic‖seq‖len‖payload) u32 ‖ payload`,
//! little-endian. Write number `seq` goes to slot `seq % 2`; reading takes the
//! valid slot with the highest `seq`. A write torn by a power cut leaves the
//! other slot, the previous value, intact. A durable write is synced before
//! the next write can touch the other slot, so the last durable value always
//! survives.
//!
//! The file is created as `<name>.tmp` with slot 0 holding an empty value
//! (seq 0), synced, renamed to `<name>` and the directory synced: a file of
//! that name always has a valid slot.

use std::sync::Arc;

use crate::storage::{Dir, File};
use crate::WalError;

/// Bytes per slot (one page).
pub const SLOT_BYTES: usize = 4096;
const SLOT_MAGIC: u32 = 0x5048_534c; // "PHSL"
const SLOT_HEADER_BYTES: usize = 4 + 8 + 4 + 4;
/// Largest value a slot holds.
pub const MAX_SLOT_PAYLOAD_BYTES: usize = SLOT_BYTES - SLOT_HEADER_BYTES;

/// A value in two alternating slots (see the module docs).
#[derive(Debug)]
pub struct SlotFile {
    file: Arc<dyn File>,
    label: String,
    seq: u64,
    /// Syncs of this file so far (for tests and metrics).
    syncs: u64,
}

fn encode_slot(seq: u64, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(SLOT_BYTES);
    out.extend_from_slice(&SLOT_MAGIC.to_le_bytes());
    out.extend_from_slice(&seq.to_le_bytes());
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    let mut h = crc32fast::Hasher::new();
    h.update(&out);
    h.update(payload);
    out.extend_from_slice(&h.finalize().to_le_bytes());
    out.extend_from_slice(payload);
    out.resize(SLOT_BYTES, 0);
    out
}

/// `Some((seq, payload))` if the slot is valid.
fn decode_slot(bytes: &[u8]) -> Option<(u64, Vec<u8>)> {
    if bytes.len() < SLOT_HEADER_BYTES {
        return None;
    }
    let magic = u32::from_le_bytes(bytes[0..4].try_into().ok()?);
    let seq = u64::from_le_bytes(bytes[4..12].try_into().ok()?);
    let len = u32::from_le_bytes(bytes[12..16].try_into().ok()?) as usize;
    let crc = u32::from_le_bytes(bytes[16..20].try_into().ok()?);
    if magic != SLOT_MAGIC || len > bytes.len() - SLOT_HEADER_BYTES {
        return None;
    }
    let payload = &bytes[SLOT_HEADER_BYTES..SLOT_HEADER_BYTES + len];
    let mut h = crc32fast::Hasher::new();
    h.update(&bytes[0..16]);
    h.update(payload);
    (h.finalize() == crc).then(|| (seq, payload.to_vec()))
}

impl SlotFile {
    /// Open `name` in `dir`, creating it (empty value) if missing. Returns
    /// the file and its value (`None`: nothing written yet).
    pub fn open(dir: &dyn Dir, name: &str) -> Result<(SlotFile, Option<Vec<u8>>), WalError> {
        let label = dir.describe(name);
        let io = |op: &'static str, name: &str| {
            let file = dir.describe(name);
            move |source| WalError::Io { op, file, source }
        };
        let names = dir.list().map_err(io("listing", ""))?;
        let tmp = format!("{name}.tmp");
        if !names.iter().any(|n| n == name) {
            // A crash before the rename leaves only the temporary file.
            let f = dir.create(&tmp).map_err(io("creating", &tmp))?;
            f.write_at(0, &encode_slot(0, &[]))
                .map_err(io("writing", &tmp))?;
            f.sync_data().map_err(io("syncing", &tmp))?;
            dir.rename(&tmp, name).map_err(io("renaming", &tmp))?;
            dir.sync_dir()
                .map_err(io("syncing the directory of", name))?;
        } else if names.contains(&tmp) {
            let _ = dir.remove(&tmp);
        }
        let file = dir.open(name).map_err(io("opening", name))?;
        let len = file.len().map_err(io("reading", name))? as usize;
        let mut buf = vec![0u8; len.min(2 * SLOT_BYTES)];
        file.read_at(0, &mut buf).map_err(io("reading", name))?;
        let slots: Vec<Option<(u64, Vec<u8>)>> = (0..2)
            .map(|i| {
                let start = i * SLOT_BYTES;
                (start < buf.len())
                    .then(|| decode_slot(&buf[start..(start + SLOT_BYTES).min(buf.len())]))
                    .flatten()
            })
            .collect();
        let best = slots.into_iter().flatten().max_by_key(|(seq, _)| *seq);
        let Some((seq, payload)) = best else {
            return Err(WalError::Corrupt {
                file: label,
                offset: 0,
                detail: "neither of its two checksummed slots is valid".into(),
            });
        };
        let value = (seq > 0).then_some(payload);
        Ok((
            SlotFile {
                file,
                label,
                seq,
                syncs: 0,
            },
            value,
        ))
    }

    /// Write `payload` as the new value; with `durable`, synced before
    /// returning. A non-durable value may be lost by a power cut (an older
    /// one is then read), never torn into garbage. Two non-durable writes in
    /// a row overwrite both slots unsynced, so keep a value that must stay
    /// durable in a file that only ever gets durable writes.
    pub fn write(&mut self, payload: &[u8], durable: bool) -> Result<(), WalError> {
        if payload.len() > MAX_SLOT_PAYLOAD_BYTES {
            return Err(WalError::TooLarge {
                file: self.label.clone(),
                bytes: payload.len(),
                limit: MAX_SLOT_PAYLOAD_BYTES,
            });
        }
        let seq = self.seq + 1;
        let io = |op: &'static str, file: &str| {
            let file = file.to_string();
            move |source| WalError::Io { op, file, source }
        };
        self.file
            .write_at((seq % 2) * SLOT_BYTES as u64, &encode_slot(seq, payload))
            .map_err(io("writing", &self.label))?;
        if durable {
            self.file.sync_data().map_err(io("syncing", &self.label))?;
            self.syncs += 1;
        }
        self.seq = seq;
        Ok(())
    }

    /// `fdatasync`s of this file so far.
    pub fn syncs(&self) -> u64 {
        self.syncs
    }
}

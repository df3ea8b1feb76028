//! The WAL on real files: append/sync/reopen, a torn tail cut at every byte
//! offset of the last record, damage in the middle named by file and offset,
//! truncate/purge/segment roll, one fdatasync per group commit, and the
//! slot file's crash safety.

use std::path::Path;
use std::sync::Arc;

use wal::{FsDir, SlotFile, Wal, WalError, WalOptions, SEGMENT_HEADER_BYTES};

fn open(path: &Path, options: WalOptions) -> (Wal, wal::Recovery) {
    let dir = Arc::new(FsDir::create_all(path).unwrap());
    Wal::open(dir, options, None).unwrap()
}

fn data(i: u64) -> Vec<u8> {
    format!("entry {i} ")
        .repeat(1 + (i as usize % 5))
        .into_bytes()
}

fn write_n(path: &Path, from: u64, n: u64, options: WalOptions) -> Wal {
    let (mut w, _) = open(path, options);
    let records: Vec<(u64, Vec<u8>)> = (from..from + n).map(|i| (i, data(i))).collect();
    w.append(records.iter().map(|(i, d)| (*i, d.as_slice())))
        .unwrap();
    w.sync().unwrap();
    w
}

fn only_segment(path: &Path) -> std::path::PathBuf {
    let mut segs: Vec<_> = std::fs::read_dir(path)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "wal"))
        .collect();
    segs.sort();
    segs.pop().unwrap()
}

#[test]
fn appends_survive_reopen_and_read_back() {
    let d = tempfile::tempdir().unwrap();
    drop(write_n(d.path(), 1, 50, WalOptions::default()));
    let (w, rec) = open(d.path(), WalOptions::default());
    assert!(rec.torn.is_none());
    assert_eq!((w.first_index(), w.last_index()), (Some(1), Some(50)));
    for i in 1..=50 {
        assert_eq!(w.read(i).unwrap(), data(i));
    }
    assert!(matches!(w.read(51), Err(WalError::Missing { .. })));
}

#[test]
fn one_group_commit_is_one_fdatasync() {
    let d = tempfile::tempdir().unwrap();
    let (mut w, _) = open(d.path(), WalOptions::default());
    // The first group also creates the segment: its header is synced and
    // the directory too, before the group's own sync.
    let batch: Vec<(u64, Vec<u8>)> = (1..=100).map(|i| (i, data(i))).collect();
    w.append(batch.iter().map(|(i, d)| (*i, d.as_slice())))
        .unwrap();
    w.sync().unwrap();
    assert_eq!((w.data_syncs(), w.dir_syncs()), (2, 1));
    for group in 0..10u64 {
        let batch: Vec<(u64, Vec<u8>)> = (0..20)
            .map(|k| 101 + group * 20 + k)
            .map(|i| (i, data(i)))
            .collect();
        for (i, d) in &batch {
            w.append([(*i, d.as_slice())]).unwrap();
        }
        w.sync().unwrap();
    }
    assert_eq!(
        (w.data_syncs(), w.dir_syncs()),
        (12, 1),
        "each group commit must cost exactly one fdatasync"
    );
}

/// Data bytes of the last record in the torn-write tests: spans a sector boundary.
const BIG_RECORD_BYTES: usize = 700;

/// Five small records and a last one spanning a sector boundary.
fn write_with_big_last(path: &Path) -> (std::path::PathBuf, Vec<u8>, usize) {
    let (mut w, _) = open(path, WalOptions::default());
    let big: Vec<u8> = (0..BIG_RECORD_BYTES as u32)
        .map(|i| (i % 250) as u8 + 1)
        .collect();
    let recs: Vec<(u64, Vec<u8>)> = (1..=5).map(|i| (i, data(i))).chain([(6, big)]).collect();
    w.append(recs.iter().map(|(i, d)| (*i, d.as_slice())))
        .unwrap();
    w.sync().unwrap();
    drop(w);
    let seg = only_segment(path);
    let full = std::fs::read(&seg).unwrap();
    let last_start = full.len() - (16 + BIG_RECORD_BYTES);
    (seg, full, last_start)
}

#[test]
fn a_torn_last_record_is_dropped_at_every_byte_offset() {
    let d = tempfile::tempdir().unwrap();
    let (seg, full, last_start) = write_with_big_last(d.path());
    let sector = wal::SECTOR_BYTES as usize;
    for cut in last_start..full.len() {
        // Cut short at `cut`; or the full length with zeros from the
        // first sector boundary at or after `cut` (the size reached the
        // disk, the data did not).
        let zero_from = cut.div_ceil(sector) * sector;
        let variants = [Some(cut), (zero_from < full.len()).then_some(zero_from)];
        for (zero_fill, at) in [false, true].into_iter().zip(variants) {
            let Some(at) = at else { continue };
            let t = tempfile::tempdir().unwrap();
            let mut bytes = full[..at].to_vec();
            if zero_fill {
                bytes.resize(full.len(), 0);
            }
            std::fs::write(t.path().join(seg.file_name().unwrap()), &bytes).unwrap();
            let (w, rec) = open(t.path(), WalOptions::default());
            assert_eq!(w.last_index(), Some(5), "cut at {at} zero_fill={zero_fill}");
            if at == last_start && !zero_fill {
                assert!(rec.torn.is_none(), "a clean cut is not torn");
                continue;
            }
            let torn = rec.torn.expect("torn tail reported");
            assert_eq!(torn.offset, last_start as u64);
            assert_eq!(torn.bytes, (bytes.len() - last_start) as u64);
            assert_eq!(torn.last_good_index, Some(5));
            assert_eq!(
                std::fs::metadata(t.path().join(seg.file_name().unwrap()))
                    .unwrap()
                    .len(),
                last_start as u64,
                "the torn bytes are truncated away"
            );
            drop(w);
            if at % 61 != 0 {
                continue;
            }
            // Appending after recovery continues at 6, and reopening is clean
            // (checked at a spread of offsets; each costs a few fsyncs).
            let (mut w, _) = open(t.path(), WalOptions::default());
            w.append([(6, b"again".as_slice())]).unwrap();
            w.sync().unwrap();
            drop(w);
            let (w, rec) = open(t.path(), WalOptions::default());
            assert!(rec.torn.is_none());
            assert_eq!(w.read(6).unwrap(), b"again");
        }
    }
}

#[test]
fn random_bytes_over_the_last_record_are_damage_not_a_torn_write() {
    let d = tempfile::tempdir().unwrap();
    let (seg, mut full, last_start) = write_with_big_last(d.path());
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(3);
    rng.fill_bytes(&mut full[last_start + 100..]);
    std::fs::write(&seg, &full).unwrap();
    let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
    let err = Wal::open(dir, WalOptions::default(), None).unwrap_err();
    assert!(
        matches!(&err, WalError::Corrupt { offset, .. } if *offset == last_start as u64),
        "{err}"
    );
    assert_eq!(
        std::fs::read(&seg).unwrap(),
        full,
        "damaged data left alone"
    );
}

#[test]
fn a_segment_emptied_or_with_a_damaged_header_is_damage() {
    for damage in [0usize, 5, 40] {
        let d = tempfile::tempdir().unwrap();
        drop(write_n(d.path(), 1, 5, WalOptions::default()));
        let seg = only_segment(d.path());
        let mut bytes = std::fs::read(&seg).unwrap();
        if damage == 0 {
            bytes.clear();
        } else {
            bytes[damage % 32] ^= 1;
        }
        std::fs::write(&seg, &bytes).unwrap();
        let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
        let err = Wal::open(dir, WalOptions::default(), None).unwrap_err();
        assert!(
            matches!(&err, WalError::Corrupt { offset: 0, file, .. } if file.ends_with(".wal")),
            "{err}"
        );
    }
}

#[test]
fn a_segment_whose_creation_was_cut_short_is_removed() {
    let d = tempfile::tempdir().unwrap();
    drop(write_n(d.path(), 1, 5, WalOptions::default()));
    let tmp = d.path().join("00000000000000000006.wal.tmp");
    std::fs::write(&tmp, b"PHX").unwrap();
    let (w, _) = open(d.path(), WalOptions::default());
    assert_eq!(w.last_index(), Some(5));
    assert!(!tmp.exists());
}

#[test]
fn the_planted_bug_accepts_a_torn_record_as_whole() {
    let d = tempfile::tempdir().unwrap();
    let (seg, mut full, last_start) = write_with_big_last(d.path());
    let sector = wal::SECTOR_BYTES as usize;
    let zero_from = (last_start + 100).div_ceil(sector) * sector;
    assert!(zero_from < full.len());
    full[zero_from..].fill(0);
    std::fs::write(&seg, &full).unwrap();
    let buggy = WalOptions {
        unsafe_accept_torn_records: true,
        ..WalOptions::default()
    };
    let (w, rec) = open(d.path(), buggy);
    assert_eq!(rec.torn_records_accepted, 1);
    assert_eq!(w.last_index(), Some(6));
    assert!(
        w.read(6).unwrap().ends_with(&[0, 0, 0]),
        "the accepted record is damaged"
    );
    drop(w);
    let (w, rec) = open(d.path(), WalOptions::default());
    assert_eq!(w.last_index(), Some(5));
    assert!(rec.torn.is_some());
}

#[test]
fn damage_in_the_middle_names_the_file_and_offset() {
    let d = tempfile::tempdir().unwrap();
    drop(write_n(d.path(), 1, 10, WalOptions::default()));
    let seg = only_segment(d.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    // Record 3's offset: header + two records.
    let off3 = SEGMENT_HEADER_BYTES as usize + (1..=2).map(|i| 16 + data(i).len()).sum::<usize>();
    bytes[off3 + 20] ^= 0x40;
    std::fs::write(&seg, &bytes).unwrap();
    let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
    let err = Wal::open(dir, WalOptions::default(), None).unwrap_err();
    match &err {
        WalError::Corrupt { file, offset, .. } => {
            assert_eq!(*offset, off3 as u64);
            assert!(file.ends_with(".wal"), "{file}");
        }
        other => panic!("expected Corrupt, got {other}"),
    }
    let msg = err.to_string();
    assert!(
        msg.contains(&format!("byte offset {off3}")) && msg.contains("member remove"),
        "{msg}"
    );
    // Nothing was truncated: the damage is left for a person to look at.
    assert_eq!(std::fs::read(&seg).unwrap(), bytes);
}

#[test]
fn a_damaged_length_in_the_middle_is_not_mistaken_for_a_torn_tail() {
    let d = tempfile::tempdir().unwrap();
    drop(write_n(d.path(), 1, 10, WalOptions::default()));
    let seg = only_segment(d.path());
    let mut bytes = std::fs::read(&seg).unwrap();
    let off = SEGMENT_HEADER_BYTES as usize;
    bytes[off..off + 4].copy_from_slice(&u32::MAX.to_le_bytes());
    std::fs::write(&seg, &bytes).unwrap();
    let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
    let err = Wal::open(dir, WalOptions::default(), None).unwrap_err();
    assert!(
        matches!(err, WalError::Corrupt { offset, .. } if offset == off as u64),
        "{err}"
    );
}

fn small_segments() -> WalOptions {
    WalOptions {
        segment_bytes: 512,
        ..WalOptions::default()
    }
}

#[test]
fn segments_roll_and_damage_in_a_non_last_segment_stops_the_log() {
    let d = tempfile::tempdir().unwrap();
    let w = write_n(d.path(), 1, 100, small_segments());
    let segments = w.segment_count();
    assert!(segments > 3, "only {segments} segments");
    drop(w);
    let (w, _) = open(d.path(), small_segments());
    assert_eq!(w.segment_count(), segments);
    for i in 1..=100 {
        assert_eq!(w.read(i).unwrap(), data(i));
    }
    drop(w);
    let mut segs: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    // Cut the tail of the first segment: not the last one, so not a torn write.
    let first = &segs[0];
    let len = std::fs::metadata(first).unwrap().len();
    std::fs::OpenOptions::new()
        .write(true)
        .open(first)
        .unwrap()
        .set_len(len - 3)
        .unwrap();
    let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
    let err = Wal::open(dir, small_segments(), None).unwrap_err();
    let msg = err.to_string();
    assert!(
        msg.contains(&first.display().to_string()) && msg.contains("not the last"),
        "{msg}"
    );
}

#[test]
fn a_missing_middle_segment_is_a_gap() {
    let d = tempfile::tempdir().unwrap();
    drop(write_n(d.path(), 1, 100, small_segments()));
    let mut segs: Vec<_> = std::fs::read_dir(d.path())
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    segs.sort();
    std::fs::remove_file(&segs[1]).unwrap();
    let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
    let err = Wal::open(dir, small_segments(), None).unwrap_err();
    assert!(err.to_string().contains("gap"), "{err}");
}

#[test]
fn truncate_drops_the_suffix_across_segments_durably() {
    let d = tempfile::tempdir().unwrap();
    let mut w = write_n(d.path(), 1, 100, small_segments());
    w.truncate_from(37).unwrap();
    assert_eq!(w.last_index(), Some(36));
    w.append([(37, b"new 37".as_slice()), (38, b"new 38".as_slice())])
        .unwrap();
    w.sync().unwrap();
    drop(w);
    let (w, rec) = open(d.path(), small_segments());
    assert!(rec.torn.is_none());
    assert_eq!(w.last_index(), Some(38));
    assert_eq!(w.read(37).unwrap(), b"new 37");
    assert_eq!(w.read(36).unwrap(), data(36));
    drop(w);
    // Truncating everything leaves an empty log that accepts any index.
    let (mut w, _) = open(d.path(), small_segments());
    w.truncate_from(1).unwrap();
    assert_eq!(w.last_index(), None);
    w.append([(5, b"five".as_slice())]).unwrap();
    w.sync().unwrap();
    drop(w);
    let (w, _) = open(d.path(), small_segments());
    assert_eq!((w.first_index(), w.last_index()), (Some(5), Some(5)));
}

#[test]
fn purge_drops_whole_segments_and_survives_an_interrupted_purge() {
    let d = tempfile::tempdir().unwrap();
    let mut w = write_n(d.path(), 1, 100, small_segments());
    let before = w.segment_count();
    w.purge_upto(50).unwrap();
    let first = w.first_index().unwrap();
    assert!(first <= 51 && first > 1, "first {first}");
    assert!(w.segment_count() < before);
    for i in first..=100 {
        assert_eq!(w.read(i).unwrap(), data(i));
    }
    // Purging past the end (a snapshot installed beyond the log) empties it.
    w.purge_upto(500).unwrap();
    assert_eq!(w.last_index(), None);
    w.append([(501, b"after snapshot".as_slice())]).unwrap();
    w.sync().unwrap();
    drop(w);
    let (w, _) = open(d.path(), small_segments());
    assert_eq!((w.first_index(), w.last_index()), (Some(501), Some(501)));

    // An interrupted purge: the owner recorded purged=60, segments remain.
    let d = tempfile::tempdir().unwrap();
    let w = write_n(d.path(), 1, 100, small_segments());
    let segs = w.segment_count();
    drop(w);
    let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
    let (w, rec) = Wal::open(dir, small_segments(), Some(60)).unwrap();
    assert!(rec.stale_segments_removed > 0);
    assert!(w.segment_count() < segs);
    assert!(w.first_index().unwrap() <= 61);
    assert_eq!(w.last_index(), Some(100));
}

#[test]
fn out_of_order_appends_are_refused() {
    let d = tempfile::tempdir().unwrap();
    let mut w = write_n(d.path(), 1, 3, WalOptions::default());
    let err = w.append([(7, b"x".as_slice())]).unwrap_err();
    assert!(
        matches!(
            err,
            WalError::OutOfOrder {
                index: 7,
                last: Some(3),
                ..
            }
        ),
        "{err}"
    );
}

#[test]
fn slot_file_keeps_the_last_durable_value_through_a_torn_write() {
    let d = tempfile::tempdir().unwrap();
    let dir = FsDir::create_all(d.path()).unwrap();
    let (mut s, v) = SlotFile::open(&dir, "meta").unwrap();
    assert_eq!(v, None);
    s.write(b"vote term 1", true).unwrap();
    s.write(b"vote term 2", true).unwrap();
    assert_eq!(s.syncs(), 2);
    drop(s);
    let (_, v) = SlotFile::open(&dir, "meta").unwrap();
    assert_eq!(v.as_deref(), Some(b"vote term 2".as_slice()));
    // Tear the newer slot (write 2 went to slot 0): the older value remains.
    let path = d.path().join("meta");
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[30..40].fill(0xAB);
    std::fs::write(&path, &bytes).unwrap();
    let (mut s, v) = SlotFile::open(&dir, "meta").unwrap();
    assert_eq!(v.as_deref(), Some(b"vote term 1".as_slice()));
    // The next write goes over the torn slot, not the good one.
    s.write(b"vote term 3", true).unwrap();
    drop(s);
    let (_, v) = SlotFile::open(&dir, "meta").unwrap();
    assert_eq!(v.as_deref(), Some(b"vote term 3".as_slice()));
    // Both slots damaged: refused, naming the file.
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[0..8].fill(0xCD);
    bytes[4096..4104].fill(0xCD);
    std::fs::write(&path, &bytes).unwrap();
    let err = SlotFile::open(&dir, "meta").unwrap_err();
    assert!(
        err.to_string().contains(&path.display().to_string()),
        "{err}"
    );
}

#[test]
fn random_operations_match_a_model_across_reopens() {
    use rand::{Rng, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(7);
    let d = tempfile::tempdir().unwrap();
    let mut model: Vec<(u64, Vec<u8>)> = Vec::new();
    let mut purged = 0u64;
    let (mut w, _) = open(d.path(), small_segments());
    for step in 0..400 {
        match rng.gen_range(0..10) {
            0..=5 => {
                let next = model.last().map(|(i, _)| i + 1).unwrap_or(purged + 1);
                let n = rng.gen_range(1..6);
                let recs: Vec<(u64, Vec<u8>)> = (next..next + n)
                    .map(|i| (i, vec![(i % 251) as u8; rng.gen_range(0..80)]))
                    .collect();
                w.append(recs.iter().map(|(i, d)| (*i, d.as_slice())))
                    .unwrap();
                w.sync().unwrap();
                model.extend(recs);
            }
            6 if !model.is_empty() => {
                let at = model[rng.gen_range(0..model.len())].0;
                w.truncate_from(at).unwrap();
                model.retain(|(i, _)| *i < at);
            }
            7 if !model.is_empty() => {
                let upto = model[rng.gen_range(0..model.len())].0;
                w.purge_upto(upto).unwrap();
                purged = purged.max(upto);
                model.retain(|(i, _)| *i > upto);
            }
            _ => {
                drop(w);
                let dir = Arc::new(FsDir::create_all(d.path()).unwrap());
                let (nw, rec) = Wal::open(dir, small_segments(), Some(purged)).unwrap();
                assert!(rec.torn.is_none(), "step {step}");
                w = nw;
            }
        }
        // Purged records may stay in a segment that also holds later ones.
        assert_eq!(
            w.last_index().filter(|&l| l > purged),
            model.last().map(|(i, _)| *i),
            "step {step}"
        );
        for (i, d) in &model {
            assert_eq!(&w.read(*i).unwrap(), d, "step {step} index {i}");
        }
    }
}

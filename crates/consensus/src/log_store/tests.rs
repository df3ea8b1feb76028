//! The log store against openraft's storage conformance suite, and the
//! in-place upgrade of a `raft.redb` written in the format of the release
//! before the write-ahead log (by [`legacy::write`], the same code that
//! release stored its log with).

use std::path::Path;
use std::sync::Arc;

use openraft::storage::{RaftLogReader, RaftLogStorage};
use openraft::testing::{StoreBuilder, Suite};
use openraft::{CommittedLeaderId, EntryPayload};

use super::legacy::{self, LegacyLog};
use super::*;
use crate::runtime::MemberClock;
use crate::{Applier, Lessor};

struct Builder;

impl StoreBuilder<TypeConfig, LogStore, Applier, tempfile::TempDir> for Builder {
    async fn build(&self) -> Result<(tempfile::TempDir, LogStore, Applier), StorageError> {
        let dir = tempfile::tempdir().unwrap();
        let member = dir.path().join("member");
        std::fs::create_dir_all(&member).unwrap();
        let log = LogStore::open_with(
            &member.join("raft.redb"),
            LogStoreOptions {
                // Small segments: the suite's purges and truncations cross them.
                segment_bytes: 256,
                ..LogStoreOptions::default()
            },
        )
        .unwrap();
        let store = Arc::new(mvcc::Store::open(&member.join("kv.redb")).unwrap());
        let lessor = Arc::new(Lessor::new(MemberClock::new()));
        Ok((dir, log, Applier::new(store, lessor)))
    }
}

#[test]
fn openraft_storage_suite_passes() {
    Suite::test_all(Builder).unwrap();
}

fn log_id(term: u64, index: u64) -> LogId {
    LogId::new(CommittedLeaderId::new(term, 1), index)
}

fn blank(term: u64, index: u64) -> Entry {
    Entry {
        log_id: log_id(term, index),
        payload: EntryPayload::Blank,
    }
}

fn old_log() -> LegacyLog {
    LegacyLog {
        entries: (5..=40).map(|i| blank(1 + i / 10, i)).collect(),
        vote: Some(Vote::new_committed(4, 1)),
        committed: Some(log_id(3, 33)),
        purged: Some(log_id(1, 4)),
    }
}

async fn assert_holds(log: &mut LogStore, old: &LegacyLog) {
    let state = log.get_log_state().await.unwrap();
    assert_eq!(state.last_purged_log_id, old.purged);
    assert_eq!(
        state.last_log_id,
        Some(*old.entries.last().unwrap().get_log_id())
    );
    let got = log.try_get_log_entries(0..100).await.unwrap();
    let want: Vec<LogId> = old.entries.iter().map(|e| *e.get_log_id()).collect();
    assert_eq!(
        got.iter().map(|e| *e.get_log_id()).collect::<Vec<_>>(),
        want
    );
    let vote = log.read_vote().await.unwrap().unwrap();
    assert_eq!(vote.leader_id(), old.vote.unwrap().leader_id());
    assert_eq!(log.read_committed().await.unwrap(), old.committed);
}

fn member_dir() -> (tempfile::TempDir, std::path::PathBuf) {
    let dir = tempfile::tempdir().unwrap();
    let member = dir.path().join("member");
    std::fs::create_dir_all(&member).unwrap();
    (dir, member)
}

#[tokio::test]
async fn a_raft_redb_of_the_previous_release_is_upgraded_in_place() {
    let (_d, member) = member_dir();
    let legacy_path = member.join("raft.redb");
    let old = old_log();
    legacy::write(&legacy_path, &old).unwrap();
    let mut log = LogStore::open(&legacy_path, false).unwrap();
    assert!(!legacy_path.exists(), "raft.redb removed after the upgrade");
    assert!(member.join(WAL_DIR_NAME).is_dir());
    assert!(!member.join(UPGRADE_DIR_NAME).exists());
    assert_holds(&mut log, &old).await;
    drop(log);
    // And again from the WAL alone.
    let mut log = LogStore::open(&legacy_path, false).unwrap();
    assert_holds(&mut log, &old).await;
}

#[tokio::test]
async fn an_upgrade_cut_short_before_its_commit_point_is_redone() {
    let (_d, member) = member_dir();
    let legacy_path = member.join("raft.redb");
    let old = old_log();
    legacy::write(&legacy_path, &old).unwrap();
    // A crash mid-upgrade: a partial WAL in the temporary dir, with a torn segment.
    let tmp = member.join(UPGRADE_DIR_NAME);
    std::fs::create_dir_all(&tmp).unwrap();
    std::fs::write(tmp.join("00000000000000000005.wal"), b"PHXWAL01 torn").unwrap();
    let mut log = LogStore::open(&legacy_path, false).unwrap();
    assert!(!tmp.exists() && !legacy_path.exists());
    assert_holds(&mut log, &old).await;
}

#[tokio::test]
async fn an_upgrade_cut_short_after_its_commit_point_keeps_the_wal() {
    let (_d, member) = member_dir();
    let legacy_path = member.join("raft.redb");
    let old = old_log();
    legacy::write(&legacy_path, &old).unwrap();
    drop(LogStore::open(&legacy_path, false).unwrap());
    // The crash came after the rename, before raft.redb was removed: a
    // (now stale) raft.redb next to the complete WAL. The WAL wins.
    let stale = LegacyLog {
        entries: vec![blank(1, 5)],
        ..LegacyLog::default()
    };
    legacy::write(&legacy_path, &stale).unwrap();
    let mut log = LogStore::open(&legacy_path, false).unwrap();
    assert!(!legacy_path.exists());
    assert_holds(&mut log, &old).await;
}

#[tokio::test]
async fn a_damaged_raft_redb_is_refused_and_left_alone() {
    let (_d, member) = member_dir();
    let legacy_path = member.join("raft.redb");
    std::fs::write(&legacy_path, vec![0x5a; 64 * 1024]).unwrap();
    let err = LogStore::open(&legacy_path, false).err().unwrap();
    let msg = err.to_string();
    assert!(
        msg.contains(&legacy_path.display().to_string()) && msg.contains("re-add"),
        "{msg}"
    );
    assert!(legacy_path.exists());
    assert!(!member.join(WAL_DIR_NAME).exists());
}

#[tokio::test]
async fn a_vote_survives_reopen_and_is_never_restored_committed() {
    let (_d, member) = member_dir();
    let path = member.join("raft.redb");
    let mut log = LogStore::open(&path, false).unwrap();
    assert!(!log.durable_state().unwrap().has_vote);
    log.save_vote(&Vote::new_committed(7, 2)).await.unwrap();
    log.save_committed(Some(log_id(7, 3))).await.unwrap();
    drop(log);
    let mut log = LogStore::open(&path, false).unwrap();
    let v = log.read_vote().await.unwrap().unwrap();
    assert_eq!(v.leader_id().term, 7);
    assert!(!v.is_committed());
    assert!(log.durable_state().unwrap().has_vote);
    // Committed 3 names entries the (empty) log does not hold: clamped.
    assert_eq!(log.read_committed().await.unwrap(), None);
}

#[test]
fn legacy_round_trip_is_exact() {
    let (_d, member) = member_dir();
    let p = member.join("raft.redb");
    let old = old_log();
    legacy::write(&p, &old).unwrap();
    let back = legacy::read(Path::new(&p)).unwrap();
    assert_eq!(back.entries, old.entries);
    assert_eq!(back.vote, old.vote);
    assert_eq!(back.committed, old.committed);
    assert_eq!(back.purged, old.purged);
}

//! A torn write at the tail of a real member's write-ahead log, on real
//! `phalanx node` processes: the leader is killed (-9) and its last WAL
//! record is torn the way a power cut tears an unsynced write (the file's
//! length reached the disk, its data only up to a sector boundary). On
//! restart it must drop the record with a warning naming the file, the
//! offset and the last good index, catch up from the leader, and agree with
//! the other members (HashKV, and the value read back from the victim itself).
//!
//! With the planted bug `torn-record-accepted` (recovery takes the torn
//! record as whole) the same check must fail: shown by the second test.

mod support;

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use support::{http_get, wait_for, Cluster};

/// Bytes of the value whose record is torn: spans several sectors.
const BIG_VALUE_BYTES: usize = 6000;
/// WAL sector size (`wal::SECTOR_BYTES`): a torn write keeps whole sectors.
const SECTOR_BYTES: u64 = 512;
/// Bytes of the torn record kept intact before the zeros start.
const KEPT_PREFIX_BYTES: u64 = 700;

fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap()
}

fn big_value() -> Vec<u8> {
    (0..BIG_VALUE_BYTES)
        .map(|i| b'a' + (i % 26) as u8)
        .collect()
}

/// The last segment of a member's WAL.
fn last_segment(data_dir: &Path) -> PathBuf {
    let dir = data_dir.join("member").join("wal");
    let mut segs: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|x| x == "wal"))
        .collect();
    segs.sort();
    segs.pop()
        .unwrap_or_else(|| panic!("no segment in {}", dir.display()))
}

/// Tear the last record of `seg` (which must hold `needle`): keep its
/// first bytes, zeros from the next sector boundary to the end of the file.
/// Returns the record's offset.
fn tear_last_record(seg: &Path, needle: &[u8]) -> u64 {
    let mut bytes = std::fs::read(seg).unwrap();
    // Walk the frames: len u32, crc u32, payload.
    let mut at = 32usize;
    let mut last = None;
    while at + 8 <= bytes.len() {
        let len = u32::from_le_bytes(bytes[at..at + 4].try_into().unwrap()) as usize;
        if at + 8 + len > bytes.len() {
            break;
        }
        last = Some((at, len));
        at += 8 + len;
    }
    let (start, len) = last.expect("a record in the last segment");
    let payload = &bytes[start + 8..start + 8 + len];
    assert!(
        payload.windows(64).any(|w| w == &needle[..64]),
        "the last record of {} is not the big put ({len} bytes)",
        seg.display()
    );
    let zero_from = (start as u64 + 8 + KEPT_PREFIX_BYTES).div_ceil(SECTOR_BYTES) * SECTOR_BYTES;
    assert!(zero_from < (start + 8 + len) as u64);
    bytes[zero_from as usize..].fill(0);
    std::fs::write(seg, &bytes).unwrap();
    start as u64
}

/// What the restarted member did.
#[derive(Debug)]
struct Outcome {
    /// Its log says which torn write it dropped.
    torn_logged: bool,
    /// It exited instead of rejoining (with its log).
    refused: Option<String>,
    /// HashKV of the three members at one revision.
    hashes: Vec<u32>,
    /// the victim itself serves the torn key's full value.
    value_back: bool,
}

impl Outcome {
    fn check(&self) -> Result<(), String> {
        if let Some(log) = &self.refused {
            return Err(format!("the victim did not rejoin:\n{log}"));
        }
        if !self.torn_logged {
            return Err("the victim did not log the torn write it dropped".into());
        }
        if !self.hashes.windows(2).all(|w| w[0] == w[1]) {
            return Err(format!("HashKV differs across members: {:?}", self.hashes));
        }
        if !self.value_back {
            return Err("the victim serves a different value for the torn key".into());
        }
        Ok(())
    }
}

/// Serializable get of `key` from one member: its revision and the value.
async fn local_get(url: &str, key: &str) -> Result<(i64, Vec<u8>), String> {
    let mut cl = etcd_client::Client::connect([url], None)
        .await
        .map_err(|e| e.to_string())?;
    let r = cl
        .get(
            key,
            Some(etcd_client::GetOptions::new().with_serializable()),
        )
        .await
        .map_err(|e| e.to_string())?;
    let rev = r.header().ok_or("no header")?.revision();
    Ok((
        rev,
        r.kvs()
            .first()
            .map(|kv| kv.value().to_vec())
            .unwrap_or_default(),
    ))
}

fn scenario(planted: Option<&str>) -> Outcome {
    let mut c = Cluster::start(3, &[]);
    let big = big_value();
    let rt = rt();
    rt.block_on(async {
        let mut cl = etcd_client::Client::connect(c.endpoint_list(), None)
            .await
            .unwrap();
        for i in 0..20 {
            cl.put(format!("k{i}"), format!("v{i}"), None)
                .await
                .unwrap();
        }
        cl.put("big", big.clone(), None).await.unwrap();
    });
    // The leader is the victim: it has applied the big put, and the member
    // elected after it starts replicating to it afresh (openraft's leader
    // would stop — "follower log reversion" — if a follower it had seen
    // hold an entry came back without it in the same term; a real torn
    // write only ever drops records that were never synced, so never
    // reported held).
    let t = c.wait_leader();
    let victim_url = c.members[t].client_url();
    wait_for(
        "the leader to apply the big put",
        Duration::from_secs(20),
        || {
            rt.block_on(local_get(&victim_url, "big"))
                .ok()
                .filter(|(_, v)| *v == big)
                .map(|_| ())
        },
    );
    c.members[t].kill9();
    let seg = last_segment(&c.members[t].data_dir);
    let offset = tear_last_record(&seg, &big);

    if let Some(bug) = planted {
        c.members[t]
            .extra_args
            .extend(["--unsafe-planted-bug".to_string(), bug.to_string()]);
    }
    let before = c.members[t].log_text().len();
    c.members[t].spawn(&c.token.clone());
    let metrics = c.members[t].metrics_port;
    let exited = {
        let child = c.members[t].child.as_mut().unwrap();
        wait_for(
            "the victim to rejoin or exit",
            Duration::from_secs(30),
            || {
                if matches!(http_get(metrics, "/health"), Some((200, _))) {
                    return Some(None);
                }
                child.try_wait().unwrap().map(Some)
            },
        )
    };
    let log = c.members[t].log_text()[before..].to_string();
    eprintln!("the victim after restart:\n{log}");
    let torn_logged = log.contains("dropping a torn write")
        && log.contains(&seg.display().to_string())
        && log.contains(&format!("byte offset {offset}"))
        && log.contains("last good index");
    if let Some(status) = exited {
        c.members[t].child = None;
        return Outcome {
            torn_logged,
            refused: Some(format!("exit {status:?}:\n{log}")),
            hashes: Vec::new(),
            value_back: false,
        };
    }
    // Every member at the leader's revision, then HashKV of each.
    let compared: Result<(Vec<u32>, bool), String> = rt.block_on(async {
        let eps = c.endpoint_list();
        let mut cl = etcd_client::Client::connect(eps.clone(), None)
            .await
            .map_err(|e| e.to_string())?;
        // A write after the restart, so every member has a revision to reach.
        let put = cl
            .put("after", "restart", None)
            .await
            .map_err(|e| format!("put after the restart: {e}"))?;
        let rev = put.header().ok_or("no header")?.revision();
        let mut hashes = Vec::new();
        for ep in &eps {
            let deadline = Instant::now() + Duration::from_secs(20);
            loop {
                let got = local_get(ep, "after").await;
                if got.as_ref().is_ok_and(|(r, _)| *r >= rev) {
                    break;
                }
                if Instant::now() > deadline {
                    return Err(format!(
                        "{ep} never reached revision {rev}: last answer {got:?}"
                    ));
                }
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
            let mut one = etcd_client::Client::connect([ep.clone()], None)
                .await
                .map_err(|e| format!("{ep}: {e}"))?;
            let h = one
                .hash_kv(rev)
                .await
                .map_err(|e| format!("{ep}: HashKV: {e}"))?;
            hashes.push(h.hash());
        }
        let value_back = local_get(&victim_url, "big")
            .await
            .is_ok_and(|(_, v)| v == big);
        Ok((hashes, value_back))
    });
    match compared {
        Ok((hashes, value_back)) => Outcome {
            torn_logged,
            refused: None,
            hashes,
            value_back,
        },
        Err(e) => {
            let running: Vec<bool> = c.members.iter_mut().map(|m| m.is_running()).collect();
            for (m, up) in c.members.iter().zip(&running) {
                if !up {
                    eprintln!("{} stopped; its log:\n{}", m.name, m.log_text());
                }
            }
            Outcome {
                torn_logged,
                refused: Some(format!(
                    "{e} (members running: {running:?}); the victim's log since its restart:\n{}",
                    &c.members[t].log_text()[before..]
                )),
                hashes: Vec::new(),
                value_back: false,
            }
        }
    }
}

#[test]
fn a_torn_wal_tail_is_dropped_with_a_warning_and_the_member_catches_up() {
    let outcome = scenario(None);
    eprintln!("{outcome:?}");
    if let Err(e) = outcome.check() {
        panic!("{e}");
    }
}

#[test]
fn planted_torn_record_accepted_fails_the_check() {
    let outcome = scenario(Some("torn-record-accepted"));
    eprintln!("{outcome:?}");
    let err = outcome
        .check()
        .expect_err("with torn records accepted as whole the check still passed");
    eprintln!("caught: {err}");
    // Not only the missing warning: the accepted record's damaged command
    // was applied, so the member's data differs from its peers'.
    assert!(
        outcome.refused.is_some()
            || !outcome.value_back
            || !outcome.hashes.windows(2).all(|w| w[0] == w[1]),
        "the torn record was accepted, yet the member's data agrees: {outcome:?}"
    );
}

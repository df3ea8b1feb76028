//! [`LocalCluster`]: a cluster of child `phalanx node` processes on free
//! loopback ports with data in a temporary directory, started with
//! `--enable-fault-injection` so the drill can partition and delay them, and
//! owned by the drill so it can SIGKILL, restart, SIGSTOP and SIGCONT them.
//! Dropping it stops every member (SIGCONT first, then SIGKILL).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{admin, DrillError};

/// How long a (re)started member may take to answer `/health`, in ms.
pub const MEMBER_START_TIMEOUT_MS: u64 = 30_000;

/// Poll interval while waiting for members, in ms.
pub const POLL_INTERVAL_MS: u64 = 50;

/// One member process.
#[derive(Debug)]
pub struct LocalMember {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
    pub admin_port: u16,
    pub data_dir: PathBuf,
    pub log: PathBuf,
    pub child: Option<Child>,
    pub paused: bool,
    /// `--gateway-listen` port, when the members run gateways.
    pub gateway_port: Option<u16>,
}

impl LocalMember {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
    pub fn gateway_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway_port.map(|p| ([127, 0, 0, 1], p).into())
    }
}

/// A local cluster of child processes.
#[derive(Debug)]
pub struct LocalCluster {
    _dir: tempfile::TempDir,
    exe: PathBuf,
    token: String,
    initial_cluster: String,
    extra_args: Vec<String>,
    pub members: Vec<LocalMember>,
}

/// A free port for a member or backend to listen on; see [`crate::ports`].
pub(crate) fn free_port() -> Result<u16, DrillError> {
    crate::ports::free_local_port()
        .map_err(|e| DrillError::Cluster(format!("finding a free port: {e}")))
}

/// A child process's log, opened for appending (it survives restarts), as
/// two handles: one for its stdout, one for its stderr.
pub(crate) fn open_child_log(
    path: &std::path::Path,
) -> Result<(std::fs::File, std::fs::File), DrillError> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(path)
        .map_err(|e| DrillError::Io {
            what: format!("opening {}", path.display()),
            source: e,
        })?;
    let log2 = log.try_clone().map_err(|e| DrillError::Io {
        what: format!("duplicating the handle of {}", path.display()),
        source: e,
    })?;
    Ok((log, log2))
}

/// Send `sig` (a name such as `STOP`) to `pid` with kill(1).
pub fn signal(pid: u32, sig: &str) -> Result<(), DrillError> {
    let st = Command::new("kill")
        .arg(format!("-{sig}"))
        .arg(pid.to_string())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .status()
        .map_err(|e| DrillError::Cluster(format!("running kill -{sig} {pid}: {e}")))?;
    if !st.success() {
        return Err(DrillError::Cluster(format!(
            "kill -{sig} {pid} failed ({st})"
        )));
    }
    Ok(())
}

impl LocalCluster {
    /// Start `n` members (logs in `log_dir`) and wait until all are healthy.
    /// With `gateway_key`, every member also runs a store-backed gateway
    /// (`--gateway-listen` on a free port, `--gateway-config-key`).
    pub async fn start(
        n: usize,
        exe: &Path,
        log_dir: &Path,
        planted_bug: Option<&str>,
        gateway_key: Option<&str>,
    ) -> Result<LocalCluster, DrillError> {
        let dir = tempfile::Builder::new()
            .prefix("phalanx-drill-")
            .tempdir()
            .map_err(|e| {
                DrillError::Cluster(format!("creating a temporary data directory: {e}"))
            })?;
        std::fs::create_dir_all(log_dir).map_err(|e| DrillError::Io {
            what: format!("creating {}", log_dir.display()),
            source: e,
        })?;
        let mut members = Vec::new();
        for i in 1..=n {
            members.push(LocalMember {
                name: format!("n{i}"),
                client_port: free_port()?,
                peer_port: free_port()?,
                admin_port: free_port()?,
                data_dir: dir.path().join(format!("n{i}")),
                log: log_dir.join(format!("n{i}.log")),
                child: None,
                paused: false,
                gateway_port: if gateway_key.is_some() {
                    Some(free_port()?)
                } else {
                    None
                },
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut extra_args = vec!["--enable-fault-injection".to_string()];
        if let Some(bug) = planted_bug {
            extra_args.push("--unsafe-planted-bug".into());
            extra_args.push(bug.into());
        }
        if let Some(key) = gateway_key {
            extra_args.push("--gateway-config-key".into());
            extra_args.push(key.into());
        }
        let mut c = LocalCluster {
            _dir: dir,
            exe: exe.to_path_buf(),
            token: format!("drill-{}-{}", std::process::id(), members[0].client_port),
            initial_cluster,
            extra_args,
            members,
        };
        for i in 0..n {
            c.spawn(i)?;
        }
        for i in 0..n {
            c.wait_healthy(i).await?;
        }
        Ok(c)
    }

    /// Start member `i` (again).
    pub fn spawn(&mut self, i: usize) -> Result<(), DrillError> {
        let m = &mut self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        let (log, log2) = open_child_log(&m.log)?;
        let gateway: Vec<String> = m
            .gateway_port
            .map(|p| vec!["--gateway-listen".into(), format!("127.0.0.1:{p}")])
            .unwrap_or_default();
        let child = Command::new(&self.exe)
            .arg("node")
            .args(["--name", &m.name])
            .arg("--data-dir")
            .arg(&m.data_dir)
            .args(["--listen-client-urls", &m.client_url()])
            .args(["--advertise-client-urls", &m.client_url()])
            .args(["--listen-peer-urls", &m.peer_url()])
            .args(["--initial-advertise-peer-urls", &m.peer_url()])
            .args(["--listen-metrics-urls", &m.admin_url()])
            .args(["--initial-cluster", &self.initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", &self.token])
            .args(&self.extra_args)
            .args(&gateway)
            .stdin(Stdio::null())
            .stdout(log)
            .stderr(log2)
            .spawn()
            .map_err(|e| {
                DrillError::Cluster(format!("starting {} node: {e}", self.exe.display()))
            })?;
        m.child = Some(child);
        m.paused = false;
        Ok(())
    }

    /// SIGKILL member `i` and reap it.
    pub fn kill(&mut self, i: usize) {
        let m = &mut self.members[i];
        if let Some(mut c) = m.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
        m.paused = false;
    }

    pub fn pid(&self, i: usize) -> Option<u32> {
        self.members[i].child.as_ref().map(|c| c.id())
    }

    pub fn pause(&mut self, i: usize) -> Result<(), DrillError> {
        let pid = self.pid(i).ok_or_else(|| {
            DrillError::Cluster(format!("member {} is not running", self.members[i].name))
        })?;
        signal(pid, "STOP")?;
        self.members[i].paused = true;
        Ok(())
    }

    pub fn resume(&mut self, i: usize) -> Result<(), DrillError> {
        if let Some(pid) = self.pid(i) {
            signal(pid, "CONT")?;
        }
        self.members[i].paused = false;
        Ok(())
    }

    pub fn running(&self, i: usize) -> bool {
        self.members[i].child.is_some()
    }

    pub fn client_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.client_url()).collect()
    }

    pub fn admin_urls(&self) -> Vec<String> {
        self.members.iter().map(|m| m.admin_url()).collect()
    }

    pub fn names(&self) -> Vec<String> {
        self.members.iter().map(|m| m.name.clone()).collect()
    }

    /// Wait until member `i` answers `/health` with 200 (it serves a
    /// linearizable read, so this implies a leader it can reach).
    pub async fn wait_healthy(&mut self, i: usize) -> Result<(), DrillError> {
        let deadline = Instant::now() + Duration::from_millis(MEMBER_START_TIMEOUT_MS);
        let url = self.members[i].admin_url();
        loop {
            if let Ok((200, _)) = admin::request(&url, "GET", "/health", None).await {
                return Ok(());
            }
            if let Some(c) = self.members[i].child.as_mut() {
                if let Ok(Some(st)) = c.try_wait() {
                    self.members[i].child = None;
                    return Err(DrillError::Cluster(format!(
                        "member {} exited ({st}) while starting; see {}",
                        self.members[i].name,
                        self.members[i].log.display()
                    )));
                }
            }
            if Instant::now() > deadline {
                return Err(DrillError::Cluster(format!(
                    "member {} not healthy after {MEMBER_START_TIMEOUT_MS} ms; see {}",
                    self.members[i].name,
                    self.members[i].log.display()
                )));
            }
            tokio::time::sleep(Duration::from_millis(POLL_INTERVAL_MS)).await;
        }
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            if self.members[i].paused {
                let _ = self.resume(i);
            }
            self.kill(i);
        }
    }
}

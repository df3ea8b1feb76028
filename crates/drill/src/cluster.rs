//! [`LocalCluster`]: the one launcher of local clusters — child `phalanx
//! node` processes on free loopback ports — used by the drill (`--local`),
//! `phalanx demo` and the phalanx tests (through [`spawn_node`], the one
//! place that writes a member's command line). The drill starts members
//! with `--enable-fault-injection` so it can partition and delay them, and
//! owns them so it can SIGKILL, restart, SIGSTOP and SIGCONT them.
//!
//! Every child this module (or [`crate::backends`]) starts dies with its
//! launcher, however the launcher dies (SIGKILL included): see
//! [`exit_with_parent`]. Dropping a [`LocalCluster`] stops every member
//! (SIGCONT first, then SIGKILL); [`LocalCluster::stop`] stops them cleanly
//! (SIGTERM, then SIGKILL after a grace period).

use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

use rustix::process::{Pid, Signal};

use crate::{admin, DrillError};

/// How long a (re)started member may take to answer `/health`, in ms.
pub const MEMBER_START_TIMEOUT_MS: u64 = 30_000;

/// Poll interval while waiting for members, in ms.
pub const POLL_INTERVAL_MS: u64 = 50;

/// Lines of a child's log quoted when it exits unexpectedly.
pub const LOG_TAIL_LINES: usize = 15;

/// Set by a launcher in a child's environment to its own pid: the child
/// asks the kernel to SIGKILL it when the launcher dies
/// ([`exit_with_parent_if_asked`]).
pub const EXIT_WITH_PARENT_ENV: &str = "PHALANX_EXIT_WITH_PARENT";

/// Make the child that `cmd` starts die with this process: it gets
/// [`EXIT_WITH_PARENT_ENV`], which `phalanx` acts on at start-up. Cleanup
/// on drop or on a caught signal cannot cover SIGKILL (or a crash), and a
/// leftover member keeps its ports and data directory busy.
///
/// Caveat: Linux delivers the parent-death signal when the *thread* that
/// spawned the child exits, not the process. Spawn from a thread that lives
/// as long as the children should: the demo and the drill spawn from the
/// main thread (their async code runs in `block_on` there, and restarts run
/// on the same future), tests from the test's thread, which outlives the
/// cluster it owns.
pub fn exit_with_parent(cmd: &mut Command) -> &mut Command {
    cmd.env(EXIT_WITH_PARENT_ENV, std::process::id().to_string())
}

/// Child side of [`exit_with_parent`], run first thing by `phalanx`: when
/// [`EXIT_WITH_PARENT_ENV`] names a pid, arrange to be SIGKILLed when the
/// parent dies (Linux `PR_SET_PDEATHSIG`), then check that the parent is
/// still that pid — it may have died before the request, and then no signal
/// will ever come. The variable is removed so that a process this one
/// starts does not inherit a request meant for this one.
pub fn exit_with_parent_if_asked() -> Result<(), DrillError> {
    let Some(raw) = std::env::var_os(EXIT_WITH_PARENT_ENV) else {
        return Ok(());
    };
    // Called before any thread is started, so changing the environment
    // races with nothing.
    std::env::remove_var(EXIT_WITH_PARENT_ENV);
    let parent: i32 = raw.to_str().and_then(|s| s.parse().ok()).ok_or_else(|| {
        DrillError::Usage(format!(
            "{EXIT_WITH_PARENT_ENV}={raw:?}: expected the launcher's pid"
        ))
    })?;
    #[cfg(any(target_os = "linux", target_os = "android"))]
    rustix::process::set_parent_process_death_signal(Some(Signal::KILL)).map_err(|e| {
        DrillError::Io {
            what: "asking for a parent-death signal (PR_SET_PDEATHSIG)".into(),
            source: e.into(),
        }
    })?;
    if rustix::process::getppid().map(Pid::as_raw_pid) != Some(parent) {
        return Err(DrillError::Cluster(format!(
            "the launching process (pid {parent}) has already exited"
        )));
    }
    Ok(())
}

/// Send `sig` to `pid`.
pub fn send_signal(pid: u32, sig: Signal) -> std::io::Result<()> {
    let pid = i32::try_from(pid)
        .ok()
        .and_then(Pid::from_raw)
        .ok_or_else(|| std::io::Error::other(format!("{pid} is not a process id")))?;
    rustix::process::kill_process(pid, sig).map_err(Into::into)
}

/// Send `sig` (a name: `STOP`, `CONT`, `TERM`, `KILL`, `INT` or `HUP`) to `pid`.
pub fn signal(pid: u32, sig: &str) -> Result<(), DrillError> {
    let s = match sig {
        "STOP" => Signal::STOP,
        "CONT" => Signal::CONT,
        "TERM" => Signal::TERM,
        "KILL" => Signal::KILL,
        "INT" => Signal::INT,
        "HUP" => Signal::HUP,
        other => return Err(DrillError::Cluster(format!("unknown signal {other:?}"))),
    };
    send_signal(pid, s).map_err(|e| DrillError::Cluster(format!("kill -{sig} {pid}: {e}")))
}

/// The last `lines` lines of a child's log.
pub fn log_tail(path: &Path, lines: usize) -> String {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    let all: Vec<&str> = text.lines().collect();
    all[all.len().saturating_sub(lines)..].join("\n")
}

/// A child process that exited on its own.
#[derive(Debug)]
pub struct Exited {
    pub name: String,
    pub pid: u32,
    pub status: ExitStatus,
    pub log: PathBuf,
    /// The last [`LOG_TAIL_LINES`] lines of its log.
    pub log_tail: String,
}

impl std::fmt::Display for Exited {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} (pid {}) exited: {}; the end of {}:\n{}",
            self.name,
            self.pid,
            self.status,
            self.log.display(),
            self.log_tail
        )
    }
}

/// If `child` has exited, take it out of `slot` and describe it.
pub(crate) fn reap(slot: &mut Option<Child>, name: &str, log: &Path) -> Option<Exited> {
    let c = slot.as_mut()?;
    let status = c.try_wait().ok().flatten()?;
    let pid = c.id();
    *slot = None;
    Some(Exited {
        name: name.to_string(),
        pid,
        status,
        log: log.to_path_buf(),
        log_tail: log_tail(log, LOG_TAIL_LINES),
    })
}

/// Stop children cleanly: SIGCONT (a stopped process cannot act on
/// SIGTERM) and SIGTERM to each, then SIGKILL whatever still runs after
/// `grace`; every child is reaped.
pub(crate) fn stop_gracefully(children: Vec<Child>, grace: Duration) {
    for c in &children {
        let _ = send_signal(c.id(), Signal::CONT);
        let _ = send_signal(c.id(), Signal::TERM);
    }
    let deadline = Instant::now() + grace;
    for mut c in children {
        while Instant::now() < deadline && matches!(c.try_wait(), Ok(None)) {
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

/// One `phalanx node` command line: the one place a member's flags are
/// written, for the drill, the demo and the phalanx tests alike.
#[derive(Debug, Clone, Copy)]
pub struct NodeSpec<'a> {
    pub name: &'a str,
    pub data_dir: &'a Path,
    pub client_port: u16,
    pub peer_port: u16,
    /// `--listen-metrics-urls`: `/metrics`, `/health`, `/member`, `/fault`.
    pub metrics_port: u16,
    /// `http`, or `https` for a member whose client TLS flags are in
    /// `extra_args`.
    pub client_scheme: &'a str,
    /// `http`, or `https` for a member whose peer TLS flags are in
    /// `extra_args`. Separate from `client_scheme` because either side may
    /// run TLS alone.
    pub peer_scheme: &'a str,
    /// URLs served besides the advertised client URL (`--listen-client-urls`
    /// takes them all), e.g. a plain listener next to a TLS one.
    pub extra_listen_client_urls: &'a [String],
    /// `--initial-cluster`.
    pub initial_cluster: &'a str,
    /// `new` or `existing`.
    pub initial_cluster_state: &'a str,
    pub token: &'a str,
    /// Further flags.
    pub extra_args: &'a [String],
    /// Further environment variables.
    pub env: &'a [(String, String)],
    /// stdout and stderr, appended to (the log survives restarts).
    pub log: &'a Path,
}

impl NodeSpec<'_> {
    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.client_scheme, self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.peer_scheme, self.peer_port)
    }
}

/// Start `exe node` as `spec` says, dying with this thread
/// ([`exit_with_parent`]).
pub fn spawn_node(exe: &Path, spec: &NodeSpec<'_>) -> Result<Child, DrillError> {
    let (log, log2) = open_child_log(spec.log)?;
    let client = spec.client_url();
    let peer = spec.peer_url();
    let mut listen_client = vec![client.clone()];
    listen_client.extend_from_slice(spec.extra_listen_client_urls);
    let mut cmd = Command::new(exe);
    cmd.arg("node")
        .args(["--name", spec.name])
        .arg("--data-dir")
        .arg(spec.data_dir)
        .args(["--listen-client-urls", &listen_client.join(",")])
        .args(["--advertise-client-urls", &client])
        .args(["--listen-peer-urls", &peer])
        .args(["--initial-advertise-peer-urls", &peer])
        .args([
            "--listen-metrics-urls",
            &format!("http://127.0.0.1:{}", spec.metrics_port),
        ])
        .args(["--initial-cluster", spec.initial_cluster])
        .args(["--initial-cluster-state", spec.initial_cluster_state])
        .args(["--initial-cluster-token", spec.token])
        .args(spec.extra_args)
        .envs(spec.env.iter().map(|(k, v)| (k, v)))
        .stdin(Stdio::null())
        .stdout(log)
        .stderr(log2);
    exit_with_parent(&mut cmd)
        .spawn()
        .map_err(|e| DrillError::Cluster(format!("starting {} node: {e}", exe.display())))
}

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
    /// `--gateway-admin-listen` port, when asked for.
    pub gateway_admin_port: Option<u16>,
    /// Client and peer ports serve TLS (`https://` URLs).
    pub tls: bool,
}

impl LocalMember {
    fn scheme(&self) -> &'static str {
        if self.tls {
            "https"
        } else {
            "http"
        }
    }
    pub fn client_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.client_port)
    }
    pub fn peer_url(&self) -> String {
        format!("{}://127.0.0.1:{}", self.scheme(), self.peer_port)
    }
    pub fn admin_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.admin_port)
    }
    pub fn gateway_addr(&self) -> Option<std::net::SocketAddr> {
        self.gateway_port.map(|p| ([127, 0, 0, 1], p).into())
    }
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(|c| c.id())
    }
}

/// How to start a [`LocalCluster`].
#[derive(Debug, Clone)]
pub struct ClusterOptions {
    pub members: usize,
    /// The `phalanx` binary.
    pub exe: PathBuf,
    /// Member logs go to `<log_dir>/<name>.log` (created if missing).
    pub log_dir: PathBuf,
    /// Members keep their data in `<data_dir>/<name>`; `None`: a temporary
    /// directory, deleted on drop.
    pub data_dir: Option<PathBuf>,
    /// `--enable-fault-injection` (the drill's `/fault` API).
    pub fault_injection: bool,
    /// `--unsafe-planted-bug` (tests of the drill only).
    pub planted_bug: Option<String>,
    /// Run a store-backed gateway on every member (`--gateway-listen` on a free port).
    pub gateways: bool,
    /// With `gateways`: also `--gateway-admin-listen` on a free port.
    pub gateway_admin: bool,
    /// With `gateways`: `--gateway-config-key` (default: the members' own default).
    pub gateway_config_key: Option<String>,
    /// `--initial-cluster-token` prefix (the launcher's pid and a port follow).
    pub token_prefix: String,
    /// How long [`LocalCluster::launch`] waits for every member to be healthy.
    pub start_timeout: Duration,
    /// Client and peer TLS with these certificates, and auth enabled once
    /// the members are up ([`crate::secure`]); the admin (metrics) port
    /// stays plain http on loopback.
    pub secure: Option<crate::secure::SecureFiles>,
}

impl ClusterOptions {
    /// `members` members of `exe`, logs in `log_dir`, data in a temporary
    /// directory, no fault injection, no gateways.
    pub fn new(members: usize, exe: &Path, log_dir: &Path) -> ClusterOptions {
        ClusterOptions {
            members,
            exe: exe.to_path_buf(),
            log_dir: log_dir.to_path_buf(),
            data_dir: None,
            fault_injection: false,
            planted_bug: None,
            gateways: false,
            gateway_admin: false,
            gateway_config_key: None,
            token_prefix: "local".into(),
            start_timeout: Duration::from_millis(MEMBER_START_TIMEOUT_MS),
            secure: None,
        }
    }
}

/// A local cluster of child processes.
#[derive(Debug)]
pub struct LocalCluster {
    /// The temporary data directory, when the options named none.
    _tmp: Option<tempfile::TempDir>,
    exe: PathBuf,
    token: String,
    initial_cluster: String,
    extra_args: Vec<String>,
    start_timeout: Duration,
    pub members: Vec<LocalMember>,
    /// The TLS files and passwords, for a secure cluster.
    pub secure: Option<Box<crate::secure::SecureFiles>>,
}

/// A free port for a member or backend to listen on; see [`crate::ports`].
pub(crate) fn free_port() -> Result<u16, DrillError> {
    crate::ports::free_local_port()
        .map_err(|e| DrillError::Cluster(format!("finding a free port: {e}")))
}

/// `dir`, created if missing.
pub(crate) fn create_dir(dir: &Path) -> Result<(), DrillError> {
    std::fs::create_dir_all(dir).map_err(|e| DrillError::Io {
        what: format!("creating {}", dir.display()),
        source: e,
    })
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

impl LocalCluster {
    /// The drill's cluster: `n` members with fault injection (logs in
    /// `log_dir`, data in a temporary directory), healthy on return. With
    /// `gateway_key`, every member also runs a store-backed gateway
    /// (`--gateway-listen` on a free port, `--gateway-config-key`).
    pub async fn start(
        n: usize,
        exe: &Path,
        log_dir: &Path,
        planted_bug: Option<&str>,
        gateway_key: Option<&str>,
        secure: Option<crate::secure::SecureFiles>,
    ) -> Result<LocalCluster, DrillError> {
        let mut o = ClusterOptions::new(n, exe, log_dir);
        o.secure = secure;
        o.fault_injection = true;
        o.planted_bug = planted_bug.map(Into::into);
        o.gateways = gateway_key.is_some();
        o.gateway_config_key = gateway_key.map(Into::into);
        o.token_prefix = "drill".into();
        Self::launch(o).await
    }

    /// Start a cluster as `o` says and wait until every member is healthy.
    pub async fn launch(o: ClusterOptions) -> Result<LocalCluster, DrillError> {
        if o.members == 0 {
            return Err(DrillError::Usage(
                "a cluster needs at least one member".into(),
            ));
        }
        let tmp = match &o.data_dir {
            Some(_) => None,
            None => Some(
                tempfile::Builder::new()
                    .prefix("phalanx-cluster-")
                    .tempdir()
                    .map_err(|e| DrillError::Io {
                        what: "creating a temporary data directory".into(),
                        source: e,
                    })?,
            ),
        };
        let data_root = match (&o.data_dir, &tmp) {
            (Some(d), _) => d.clone(),
            (None, Some(t)) => t.path().to_path_buf(),
            (None, None) => unreachable!("a temporary directory is made when none is named"),
        };
        create_dir(&data_root)?;
        create_dir(&o.log_dir)?;
        let optional_port = |wanted: bool| wanted.then(free_port).transpose();
        let mut members = Vec::new();
        for i in 1..=o.members {
            let name = format!("n{i}");
            members.push(LocalMember {
                client_port: free_port()?,
                peer_port: free_port()?,
                admin_port: free_port()?,
                data_dir: data_root.join(&name),
                log: o.log_dir.join(format!("{name}.log")),
                child: None,
                paused: false,
                gateway_port: optional_port(o.gateways)?,
                gateway_admin_port: optional_port(o.gateways && o.gateway_admin)?,
                tls: o.secure.is_some(),
                name,
            });
        }
        let initial_cluster = members
            .iter()
            .map(|m| format!("{}={}", m.name, m.peer_url()))
            .collect::<Vec<_>>()
            .join(",");
        let mut extra_args = Vec::new();
        if o.fault_injection {
            extra_args.push("--enable-fault-injection".to_string());
        }
        if let Some(bug) = &o.planted_bug {
            extra_args.push("--unsafe-planted-bug".into());
            extra_args.push(bug.clone());
        }
        if let (true, Some(key)) = (o.gateways, &o.gateway_config_key) {
            extra_args.push("--gateway-config-key".into());
            extra_args.push(key.clone());
        }
        if let Some(s) = &o.secure {
            extra_args.extend(s.member_args());
        }
        let mut c = LocalCluster {
            _tmp: tmp,
            exe: o.exe,
            token: format!(
                "{}-{}-{}",
                o.token_prefix,
                std::process::id(),
                members[0].client_port
            ),
            initial_cluster,
            extra_args,
            start_timeout: o.start_timeout,
            members,
            secure: o.secure.map(Box::new),
        };
        for i in 0..o.members {
            c.spawn(i)?;
        }
        for i in 0..o.members {
            c.wait_healthy(i).await?;
        }
        if let Some(s) = &c.secure {
            s.enable_auth(&c.client_urls()).await?;
        }
        Ok(c)
    }

    /// Start member `i` (again).
    pub fn spawn(&mut self, i: usize) -> Result<(), DrillError> {
        let m = &mut self.members[i];
        if m.child.is_some() {
            return Ok(());
        }
        let mut args = self.extra_args.clone();
        if let Some(p) = m.gateway_port {
            args.extend(["--gateway-listen".into(), format!("127.0.0.1:{p}")]);
        }
        if let Some(p) = m.gateway_admin_port {
            args.extend(["--gateway-admin-listen".into(), format!("127.0.0.1:{p}")]);
        }
        let child = spawn_node(
            &self.exe,
            &NodeSpec {
                name: &m.name,
                data_dir: &m.data_dir,
                client_port: m.client_port,
                peer_port: m.peer_port,
                metrics_port: m.admin_port,
                client_scheme: m.scheme(),
                peer_scheme: m.scheme(),
                extra_listen_client_urls: &[],
                initial_cluster: &self.initial_cluster,
                initial_cluster_state: "new",
                token: &self.token,
                extra_args: &args,
                env: &[],
                log: &m.log,
            },
        )?;
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
        self.members[i].pid()
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

    /// Members that exited on their own since the last call (a member
    /// stopped through [`LocalCluster::kill`] is not reported).
    pub fn reap_exited(&mut self) -> Vec<Exited> {
        self.members
            .iter_mut()
            .filter_map(|m| reap(&mut m.child, &m.name, &m.log))
            .collect()
    }

    /// Stop every member cleanly: SIGTERM, SIGKILL after `grace`.
    pub fn stop(&mut self, grace: Duration) {
        let children = self
            .members
            .iter_mut()
            .filter_map(|m| {
                m.paused = false;
                m.child.take()
            })
            .collect();
        stop_gracefully(children, grace);
    }

    /// Wait until member `i` answers `/health` with 200 (it serves a
    /// linearizable read, so this implies a leader it can reach).
    pub async fn wait_healthy(&mut self, i: usize) -> Result<(), DrillError> {
        let deadline = Instant::now() + self.start_timeout;
        let url = self.members[i].admin_url();
        loop {
            if let Ok((200, _)) = admin::request(&url, "GET", "/health", None).await {
                return Ok(());
            }
            let m = &mut self.members[i];
            if let Some(e) = reap(&mut m.child, &m.name, &m.log) {
                return Err(DrillError::Cluster(format!("while starting, member {e}")));
            }
            if m.child.is_none() {
                // Exited and reaped elsewhere (or never started): no wait
                // can make it healthy.
                return Err(DrillError::Cluster(format!(
                    "member {} is not running; the end of {}:\n{}",
                    m.name,
                    m.log.display(),
                    log_tail(&m.log, LOG_TAIL_LINES)
                )));
            }
            if Instant::now() > deadline {
                return Err(DrillError::Cluster(format!(
                    "member {} not healthy after {:?}; see {}",
                    m.name,
                    self.start_timeout,
                    m.log.display()
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn signals_reach_a_child_by_name() {
        let mut c = Command::new("sleep").arg("30").spawn().unwrap();
        signal(c.id(), "STOP").unwrap();
        signal(c.id(), "CONT").unwrap();
        signal(c.id(), "TERM").unwrap();
        let st = c.wait().unwrap();
        assert_eq!(std::os::unix::process::ExitStatusExt::signal(&st), Some(15));
        assert!(signal(c.id(), "BOGUS").is_err());
    }

    #[test]
    fn an_exited_child_is_reported_once_with_its_log_tail() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("x.log");
        std::fs::write(&log, "one\ntwo\nthree\n").unwrap();
        let mut slot = Some(Command::new("true").spawn().unwrap());
        let deadline = Instant::now() + Duration::from_secs(10);
        let e = loop {
            if let Some(e) = reap(&mut slot, "x", &log) {
                break e;
            }
            assert!(Instant::now() < deadline, "`true` did not exit");
            std::thread::sleep(Duration::from_millis(POLL_INTERVAL_MS));
        };
        assert!(e.status.success());
        assert_eq!(e.log_tail, "one\ntwo\nthree");
        assert!(slot.is_none());
        assert!(reap(&mut slot, "x", &log).is_none());
        assert_eq!(log_tail(&log, 2), "two\nthree");
    }
}

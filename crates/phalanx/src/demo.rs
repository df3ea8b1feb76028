//! `phalanx demo`: a local 3-member cluster in one command. Each member is a
//! real `phalanx node` child process (so you can `kill -9` one and watch the
//! cluster carry on); the demo prints the endpoints and commands to try, and
//! stops the members on Ctrl-C / SIGTERM.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use anyhow::{bail, Context};
use clap::Args;

#[derive(Args, Debug, Clone)]
pub struct DemoArgs {
    /// Number of members.
    #[arg(long, default_value_t = 3)]
    pub members: usize,
    /// Where the members keep their data (default: a fresh temporary directory).
    #[arg(long)]
    pub data_dir: Option<PathBuf>,
    /// How long to wait for the cluster to become ready, in seconds.
    #[arg(long, default_value_t = 30)]
    pub ready_timeout_secs: u64,
}

fn free_port() -> anyhow::Result<u16> {
    Ok(TcpListener::bind("127.0.0.1:0")?.local_addr()?.port())
}

fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect_timeout(&addr.parse().ok()?, Duration::from_millis(300)).ok()?;
    s.set_read_timeout(Some(Duration::from_millis(2500))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut buf = String::new();
    s.read_to_string(&mut buf).ok()?;
    buf.split_whitespace().nth(1)?.parse().ok()
}

struct Members(Vec<Child>);
impl Drop for Members {
    fn drop(&mut self) {
        for c in &mut self.0 {
            // SIGTERM first so members shut down cleanly; then make sure.
            unsafe_kill(c.id() as i32, 15);
        }
        let deadline = Instant::now() + Duration::from_secs(5);
        for c in &mut self.0 {
            while Instant::now() < deadline {
                if let Ok(Some(_)) = c.try_wait() {
                    break;
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

fn unsafe_kill(pid: i32, sig: i32) {
    let _ = Command::new("kill").arg(format!("-{sig}")).arg(pid.to_string()).status();
}

pub fn run(args: DemoArgs) -> anyhow::Result<()> {
    if args.members == 0 || args.members > 9 {
        bail!("--members must be between 1 and 9");
    }
    let base = match &args.data_dir {
        Some(d) => d.clone(),
        None => std::env::temp_dir().join(format!("phalanx-demo-{}", std::process::id())),
    };
    std::fs::create_dir_all(&base).with_context(|| format!("creating {}", base.display()))?;
    let exe = std::env::current_exe().context("locating the phalanx binary")?;

    struct Plan {
        name: String,
        client: u16,
        peer: u16,
        metrics: u16,
    }
    let mut plans = Vec::new();
    for i in 1..=args.members {
        plans.push(Plan { name: format!("n{i}"), client: free_port()?, peer: free_port()?, metrics: free_port()? });
    }
    let initial_cluster: Vec<String> = plans.iter().map(|p| format!("{}=http://127.0.0.1:{}", p.name, p.peer)).collect();
    let initial_cluster = initial_cluster.join(",");

    let mut members = Members(Vec::new());
    for p in &plans {
        let log = std::fs::File::create(base.join(format!("{}.log", p.name)))?;
        let child = Command::new(&exe)
            .arg("node")
            .args(["--name", &p.name])
            .arg("--data-dir")
            .arg(base.join(&p.name))
            .args(["--listen-client-urls", &format!("http://127.0.0.1:{}", p.client)])
            .args(["--advertise-client-urls", &format!("http://127.0.0.1:{}", p.client)])
            .args(["--listen-peer-urls", &format!("http://127.0.0.1:{}", p.peer)])
            .args(["--initial-advertise-peer-urls", &format!("http://127.0.0.1:{}", p.peer)])
            .args(["--listen-metrics-urls", &format!("http://127.0.0.1:{}", p.metrics)])
            .args(["--initial-cluster", &initial_cluster])
            .args(["--initial-cluster-state", "new"])
            .args(["--initial-cluster-token", "phalanx-demo"])
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("starting member {}", p.name))?;
        members.0.push(child);
    }

    let deadline = Instant::now() + Duration::from_secs(args.ready_timeout_secs);
    for p in &plans {
        let addr = format!("127.0.0.1:{}", p.metrics);
        while http_get_status(&addr, "/health") != Some(200) {
            if Instant::now() > deadline {
                bail!("member {} did not become healthy within {} s; see {}", p.name, args.ready_timeout_secs, base.join(format!("{}.log", p.name)).display());
            }
            for c in &mut members.0 {
                if let Ok(Some(status)) = c.try_wait() {
                    bail!("a member exited early ({status}); see the logs in {}", base.display());
                }
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    let endpoints: Vec<String> = plans.iter().map(|p| format!("http://127.0.0.1:{}", p.client)).collect();
    let endpoints = endpoints.join(",");
    println!("Phalanx demo: {} members are up.", plans.len());
    for (p, c) in plans.iter().zip(&members.0) {
        println!(
            "  {}  pid {:<7} client http://127.0.0.1:{}  peer http://127.0.0.1:{}  metrics http://127.0.0.1:{}/metrics",
            p.name,
            c.id(),
            p.client,
            p.peer,
            p.metrics
        );
    }
    println!("ENDPOINTS={endpoints}");
    println!();
    println!("Try:");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} put greeting hello");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} get greeting");
    println!("  ETCDCTL_API=3 etcdctl --endpoints={endpoints} endpoint status -w table");
    println!("  kill -9 <pid of the leader>   # the others elect a new leader within a second");
    println!("Data and logs: {}", base.display());
    println!("Press Ctrl-C to stop.");
    std::io::stdout().flush()?;

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    rt.block_on(async {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
        tokio::select! {
            _ = tokio::signal::ctrl_c() => {},
            _ = term.recv() => {},
        }
        anyhow::Ok(())
    })?;
    println!("stopping members");
    drop(members);
    if args.data_dir.is_none() {
        let _ = std::fs::remove_dir_all(&base);
    }
    Ok(())
}

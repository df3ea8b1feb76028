//! Foreign servers the tests run for real — Prometheus, Alertmanager,
//! aiosmtpd, moto's S3 — on free ports with their own data directories,
//! killed with the test; and a recording HTTP receiver.

use std::io::{Read, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::{free_port, http_get, wait_for};

/// Python of the test virtualenv that `.ci/install` creates
/// (`PHALANX_TEST_VENV`, default /opt/phalanx-test-venv; aiosmtpd and
/// moto[server] in it).
pub fn test_python() -> PathBuf {
    let venv =
        std::env::var("PHALANX_TEST_VENV").unwrap_or_else(|_| "/opt/phalanx-test-venv".into());
    let p = Path::new(&venv).join("bin/python3");
    assert!(
        p.exists(),
        "{} is missing: run `bash .ci/install` (creates the test virtualenv with aiosmtpd and moto[server])",
        p.display()
    );
    p
}

/// A Debian binary the test needs, or a clear reason why it is missing.
pub fn debian_bin(path: &str, package: &str) -> &'static str {
    assert!(
        Path::new(path).exists(),
        "{path} is missing: run `bash .ci/install` (installs Debian's {package} package)"
    );
    Box::leak(path.to_string().into_boxed_str())
}

/// A foreign server process: started under `setpriv --pdeathsig KILL` so it
/// dies with the test's thread even if the test binary is killed; killed on drop.
pub struct Proc {
    pub name: String,
    pub child: Option<Child>,
    pub log: PathBuf,
}

impl Proc {
    /// Start `program args`, its output appended to `log` (a restarted
    /// server keeps the earlier run's log).
    pub fn start(name: &str, program: &str, args: &[String], log: PathBuf) -> Proc {
        let out = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .unwrap();
        let child = Command::new("/usr/bin/setpriv")
            .arg("--pdeathsig")
            .arg("KILL")
            .arg("--")
            .arg(program)
            .args(args)
            .stdin(Stdio::null())
            .stdout(out.try_clone().unwrap())
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("starting {name} ({program}): {e}"));
        Proc {
            name: name.into(),
            child: Some(child),
            log,
        }
    }

    pub fn log_text(&self) -> String {
        std::fs::read_to_string(&self.log).unwrap_or_default()
    }

    /// Panics with the log when the process has exited.
    pub fn assert_running(&mut self) {
        if let Some(c) = &mut self.child {
            if let Ok(Some(st)) = c.try_wait() {
                panic!("{} exited ({st}):\n{}", self.name, self.log_text());
            }
        }
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().map(|c| c.id()).unwrap_or(0)
    }

    /// SIGKILL the process and reap it.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        self.kill();
    }
}

/// One request the recorder received.
#[derive(Clone, Debug)]
pub struct Recorded {
    pub at: Instant,
    pub path: String,
    pub body: serde_json::Value,
}

/// A recording HTTP server: every POST's path and JSON body, with its
/// arrival time; answers `status`.
pub struct Recorder {
    pub port: u16,
    pub posts: Arc<Mutex<Vec<Recorded>>>,
}

/// Bound on reading one request of the recorder.
pub const RECORDER_READ_TIMEOUT: Duration = Duration::from_secs(5);

impl Recorder {
    pub fn start(status: u16) -> Recorder {
        let l = TcpListener::bind("127.0.0.1:0").unwrap();
        let port = l.local_addr().unwrap().port();
        let posts = Arc::new(Mutex::new(Vec::new()));
        let p = posts.clone();
        std::thread::spawn(move || {
            for stream in l.incoming() {
                let Ok(mut s) = stream else { continue };
                let p = p.clone();
                std::thread::spawn(move || {
                    let _ = s.set_read_timeout(Some(RECORDER_READ_TIMEOUT));
                    let mut buf = Vec::new();
                    let mut chunk = [0u8; 8192];
                    loop {
                        let Ok(n) = s.read(&mut chunk) else { return };
                        if n == 0 {
                            return;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(h) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..h]).to_string();
                        let len: usize = head
                            .to_lowercase()
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .and_then(|v| v.trim().parse().ok())
                            .unwrap_or(0);
                        if buf.len() < h + 4 + len {
                            continue;
                        }
                        let path = head.split_whitespace().nth(1).unwrap_or("").to_string();
                        let body = serde_json::from_slice(&buf[h + 4..h + 4 + len])
                            .unwrap_or(serde_json::Value::Null);
                        p.lock().unwrap().push(Recorded {
                            at: Instant::now(),
                            path,
                            body,
                        });
                        let _ = s.write_all(
                            format!("HTTP/1.1 {status} X\r\ncontent-length: 0\r\nconnection: close\r\n\r\n")
                                .as_bytes(),
                        );
                        return;
                    }
                });
            }
        });
        Recorder { port, posts }
    }

    pub fn all(&self) -> Vec<Recorded> {
        self.posts.lock().unwrap().clone()
    }
}

/// A real Alertmanager (Debian's prometheus-alertmanager) with its own data
/// dir, clustering off, a route to a receiver that does nothing.
pub fn start_alertmanager(dir: &Path) -> (Proc, u16) {
    let bin = debian_bin(
        "/usr/bin/prometheus-alertmanager",
        "prometheus-alertmanager",
    );
    let port = free_port();
    let data = dir.join("alertmanager-data");
    std::fs::create_dir_all(&data).unwrap();
    let cfg = dir.join("alertmanager-upstream.yml");
    std::fs::write(
        &cfg,
        "route:\n  receiver: blackhole\n  group_wait: 0s\nreceivers:\n- name: blackhole\n",
    )
    .unwrap();
    let mut p = Proc::start(
        "alertmanager",
        bin,
        &[
            format!("--config.file={}", cfg.display()),
            format!("--storage.path={}", data.display()),
            format!("--web.listen-address=127.0.0.1:{port}"),
            "--cluster.listen-address=".into(),
        ],
        dir.join("alertmanager.log"),
    );
    wait_for("Alertmanager ready", Duration::from_secs(30), || {
        p.assert_running();
        matches!(http_get(port, "/-/ready"), Some((200, _))).then_some(())
    });
    (p, port)
}

/// moto's S3 server (from the test virtualenv) on `port`, log appended to
/// `log`; killed when dropped.
pub struct Moto {
    pub proc: Proc,
    pub port: u16,
    pub log: PathBuf,
}

impl Moto {
    /// Start moto and wait until it listens (it may take long to import).
    pub fn start(log: &Path, port: u16) -> Moto {
        let proc = Proc::start(
            "moto's S3 server",
            test_python().to_str().unwrap(),
            &[
                "-m".into(),
                "moto.server".into(),
                "-H".into(),
                "127.0.0.1".into(),
                "-p".into(),
                port.to_string(),
            ],
            log.to_path_buf(),
        );
        let mut moto = Moto {
            proc,
            port,
            log: log.to_path_buf(),
        };
        wait_for(
            "moto's S3 server listening",
            Duration::from_secs(60),
            || {
                moto.proc.assert_running();
                TcpStream::connect(("127.0.0.1", port)).ok().map(|_| ())
            },
        );
        moto
    }

    pub fn endpoint(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    pub fn create_bucket(&self, bucket: &str) {
        let out = Command::new(test_python())
            .args([
                "-c",
                &format!(
                    "import boto3; boto3.client('s3', endpoint_url='{}', region_name='us-east-1', aws_access_key_id='test', aws_secret_access_key='test').create_bucket(Bucket='{bucket}')",
                    self.endpoint()
                ),
            ])
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "create bucket {bucket}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }

    /// SIGKILL moto (a destination that fails mid-backup).
    pub fn kill(&mut self) {
        self.proc.kill();
    }
}

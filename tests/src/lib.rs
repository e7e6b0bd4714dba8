//! Harness for the end-to-end tests: starts the real binaries on free loopback ports,
//! with a temporary data directory each, and stops them by PID.
//!
//! The binaries are found next to the test executable's `target/<profile>/` directory;
//! `make test` builds them first (`cargo build --workspace --bins`).

use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

use sha2::{Digest, Sha256};

/// Path of a workspace binary (`upload-server`, `uploader`) built for this profile.
pub fn bin_path(name: &str) -> PathBuf {
    let exe = std::env::current_exe().expect("test executable path");
    // target/<profile>/deps/<test-binary>
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile> directory");
    let path = dir.join(name);
    assert!(
        path.exists(),
        "{} is missing: run `cargo build --workspace --bins` (make test does)",
        path.display()
    );
    path
}

/// A running `upload-server` process. Killed (SIGKILL) on drop.
pub struct Server {
    child: Option<Child>,
    /// Address it listens on.
    pub addr: String,
    /// `http`, or `https` when started with a certificate.
    pub scheme: String,
    /// Its data directory.
    pub data_dir: PathBuf,
    /// Extra arguments it was started with (reused by [`Server::restart`]).
    pub args: Vec<String>,
    /// Extra environment variables it was started with (reused by [`Server::restart`]).
    env: Vec<(String, String)>,
    logs: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
}

impl Server {
    /// Starts a server on a free port with a fresh temporary data directory.
    pub fn start(args: &[&str]) -> (Server, tempfile::TempDir) {
        let dir = tempfile::tempdir().expect("temp dir");
        let server = Server::start_in(dir.path(), args);
        (server, dir)
    }

    /// Starts a server on a free port over `data_dir`.
    pub fn start_in(data_dir: &Path, args: &[&str]) -> Server {
        Self::spawn(
            data_dir,
            args.iter().map(|s| s.to_string()).collect(),
            Vec::new(),
            "127.0.0.1:0",
        )
    }

    fn spawn(
        data_dir: &Path,
        args: Vec<String>,
        env: Vec<(String, String)>,
        listen: &str,
    ) -> Server {
        let mut child = Command::new(bin_path("upload-server"))
            .arg("--listen")
            .arg(listen)
            .arg("--data-dir")
            .arg(data_dir)
            .args(&args)
            .envs(env.iter().map(|(k, v)| (k, v)))
            .env("RUST_LOG", "info")
            .env_remove("UPLOAD_SERVER_LISTEN")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn upload-server");
        let logs = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn std::io::Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    // `listening on http://ADDR` (or `https://` with TLS).
                    if let Some(url) = line.split("listening on ").nth(1) {
                        let url: String = url
                            .chars()
                            .take_while(|c| !c.is_whitespace() && *c != '"')
                            .collect();
                        if let Some((scheme, addr)) = url.split_once("://") {
                            let _ = tx.send((scheme.to_string(), addr.to_string()));
                        }
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        let (scheme, addr) = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(a) => a,
            Err(_) => {
                let _ = child.kill();
                panic!(
                    "upload-server did not report its address; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        Server {
            child: Some(child),
            addr,
            scheme,
            data_dir: data_dir.to_path_buf(),
            args,
            env,
            logs,
        }
    }

    /// Base URL, e.g. `http://127.0.0.1:PORT` (`https://` with TLS).
    pub fn url(&self) -> String {
        format!("{}://{}", self.scheme, self.addr)
    }

    /// PID of the server process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Everything the server logged so far.
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// SIGKILL, as a crash would.
    pub fn kill9(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal (e.g. "TERM") and waits for the exit status.
    pub fn signal_and_wait(&mut self, sig: &str) -> std::process::ExitStatus {
        let mut c = self.child.take().expect("running");
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(c.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success());
        c.wait().expect("wait")
    }

    /// Starts a new server on the same data directory, address and arguments.
    pub fn restart(&mut self) {
        self.kill9();
        let listen = self.addr.clone();
        // The port may take a moment to be free again after a kill.
        for _ in 0..50 {
            if std::net::TcpListener::bind(&listen).is_ok() {
                break;
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let new = Self::spawn(
            &self.data_dir.clone(),
            self.args.clone(),
            self.env.clone(),
            &listen,
        );
        *self = new;
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        self.kill9();
        // A failing test shows what the server said.
        if std::thread::panicking() {
            eprintln!("--- upload-server logs ---\n{}\n--- end ---", self.logs());
        }
    }
}

/// Deterministic pseudo-random bytes, so a failing test can be replayed.
pub fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    use rand::{RngCore, SeedableRng};
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let mut v = vec![0u8; len];
    rng.fill_bytes(&mut v);
    v
}

/// SHA-256 as lowercase hex.
pub fn sha256_hex(bytes: &[u8]) -> String {
    hex::encode(Sha256::digest(bytes))
}

/// Writes `bytes` to a new file in `dir` and returns its path.
pub fn write_file(dir: &Path, name: &str, bytes: &[u8]) -> PathBuf {
    let p = dir.join(name);
    std::fs::write(&p, bytes).expect("write test file");
    p
}

// Helpers for the server tests (tests/tests/e2e/server/).
impl Server {
    /// Sends a signal (e.g. "TERM") without waiting; see [`Server::wait_exit`].
    pub fn send_signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Waits at most `timeout` for the process to exit; panics (with the logs) if it
    /// does not.
    pub fn wait_exit(&mut self, timeout: Duration) -> std::process::ExitStatus {
        let deadline = std::time::Instant::now() + timeout;
        let child = self.child.as_mut().expect("running");
        loop {
            if let Some(status) = child.try_wait().expect("try_wait") {
                self.child = None;
                return status;
            }
            if std::time::Instant::now() > deadline {
                panic!(
                    "upload-server did not exit within {timeout:?}; logs:\n{}",
                    self.logs()
                );
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}
pub mod fixture;
pub mod fs_replay;
pub mod http;
pub mod ietf;
pub mod nginx;
pub mod proxy;
pub mod s3;
pub mod sigv4;
pub mod tls;
pub mod tus;
pub mod webclients;

// Servers with extra environment variables (tests/tests/e2e/s3.rs: `AWS_*` for S3 storage).
impl Server {
    /// [`Server::start_in`] with extra environment variables for the process, e.g. the
    /// `AWS_*` credentials of an S3-compatible store ([`s3::S3Server::aws_env`]);
    /// [`Server::restart`] keeps them.
    pub fn start_with_env(data_dir: &Path, args: &[&str], env: &[(&str, String)]) -> Server {
        Self::spawn(
            data_dir,
            args.iter().map(|s| s.to_string()).collect(),
            env.iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect(),
            "127.0.0.1:0",
        )
    }
}

/// Where the reliability tests leave their figures for `make torture` (`bench/torture.sh`).
fn torture_dir() -> Option<PathBuf> {
    let out = webclients::repo_root().join("target").join("torture");
    std::fs::create_dir_all(out.join("tally")).ok()?;
    Some(out)
}

/// Writes one scenario's figures table (markdown) as `target/torture/{name}.md`.
pub fn torture_report(name: &str, markdown: &str) {
    if let Some(out) = torture_dir() {
        let _ = std::fs::write(out.join(format!("{name}.md")), markdown);
    }
}

/// Records how many faults or racing requests a test tried, as one row of the torture
/// table's "faults and races" section: `target/torture/tally/{key}.txt` holds
/// `kind|what|count`, where kind is `fault` or `race`.
pub fn tally(key: &str, kind: &str, what: &str, count: u64) {
    if let Some(out) = torture_dir() {
        let _ = std::fs::write(
            out.join("tally").join(format!("{key}.txt")),
            format!("{kind}|{what}|{count}\n"),
        );
    }
}

//! Harness for tests that need a real S3-compatible server.
//!
//! The server is moto (in-memory, Python) served by `scripts/s3-server/launcher.py`,
//! which puts one global lock around every request so that conditional creates
//! (`If-None-Match: *`) are atomic, and turns moto's 500 for an unknown or aborted
//! multipart upload id into S3's `404 NoSuchUpload`. It runs from a venv that
//! `scripts/s3-server/run.sh install` makes under `target/tools/s3-venv` (`make test`
//! does it); [`s3_available`] tells whether it is there.
//!
//! Each [`S3Server`] is its own process on a free loopback port with its own empty
//! state, killed when dropped (and exiting by itself if the test process dies).
//!
//! Requests need no valid signature, but moto treats a request *without* an
//! `Authorization` header as anonymous and answers 403 to reads of existing objects
//! (and to a losing conditional create). [`S3Server::client`] sends a dummy
//! [`ANY_AUTHORIZATION`] header with every request; `object_store` signs with whatever
//! credentials it is given ([`S3Server::aws_env`]).

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{mpsc, Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// A syntactically valid SigV4 `Authorization` value that moto accepts (it does not
/// check signatures) and that routes the request to its S3 backend.
pub const ANY_AUTHORIZATION: &str = "AWS4-HMAC-SHA256 \
     Credential=test/20250101/us-east-1/s3/aws4_request, \
     SignedHeaders=host, Signature=0000";

/// Environment variable that turns a missing venv from a skip into a test failure
/// (`make test` sets it, so CI cannot pass by skipping).
pub const REQUIRED_ENV: &str = "S3_REQUIRED";

/// Root of the repository (the parent of the `tests` crate).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// Directory holding the venv (`S3_TOOLS_DIR`, as for `run.sh`, or `<repo>/target/tools`).
fn tools_dir() -> PathBuf {
    match std::env::var_os("S3_TOOLS_DIR") {
        Some(dir) => PathBuf::from(dir),
        None => repo_root().join("target").join("tools"),
    }
}

/// The venv's Python interpreter.
pub fn venv_python() -> PathBuf {
    tools_dir().join("s3-venv").join("bin").join("python")
}

/// `scripts/s3-server/launcher.py`.
pub fn launcher_path() -> PathBuf {
    repo_root()
        .join("scripts")
        .join("s3-server")
        .join("launcher.py")
}

/// Whether the S3 test server can be started: the venv exists and its install finished
/// (`scripts/s3-server/run.sh install`).
pub fn s3_available() -> bool {
    venv_python().exists() && tools_dir().join("s3-venv").join(".installed").exists()
}

/// A running S3-compatible server (moto behind the launcher). Killed on drop.
pub struct S3Server {
    /// Base URL, e.g. `http://127.0.0.1:PORT` (path-style addressing: `/{bucket}/{key}`).
    pub endpoint: String,
    /// Its loopback address, `127.0.0.1:PORT`.
    pub addr: String,
    child: Option<Child>,
    client: reqwest::Client,
    logs: Arc<Mutex<Vec<String>>>,
}

impl S3Server {
    /// Starts a server on a free loopback port and waits until it accepts requests.
    ///
    /// Panics if the venv is missing (see [`s3_available`], [`S3Server::start_or_skip`])
    /// or if the server does not report its address within 30 s.
    pub fn start() -> S3Server {
        S3Server::start_with_args(&[])
    }

    /// [`S3Server::start`] with extra launcher arguments, e.g.
    /// `["--switch-interval", "1e-6"]` to make thread switches (and so races) frequent.
    pub fn start_with_args(args: &[&str]) -> S3Server {
        assert!(
            s3_available(),
            "the S3 test server is not installed: run `bash scripts/s3-server/run.sh install` \
             (`make test` does)"
        );
        let mut child = Command::new(venv_python())
            .arg(launcher_path())
            .args(["--port", "0", "--quiet", "--exit-with-parent"])
            .args(args)
            .env("PYTHONDONTWRITEBYTECODE", "1")
            .env("PYTHONUNBUFFERED", "1")
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .expect("spawn the S3 launcher");
        let logs = Arc::new(Mutex::new(Vec::new()));
        let (tx, rx) = mpsc::channel();
        for pipe in [
            Box::new(child.stdout.take().expect("stdout")) as Box<dyn Read + Send>,
            Box::new(child.stderr.take().expect("stderr")),
        ] {
            let tx = tx.clone();
            let logs = logs.clone();
            std::thread::spawn(move || {
                for line in BufReader::new(pipe).lines().map_while(Result::ok) {
                    if let Some(addr) = line.strip_prefix("listening on http://") {
                        let _ = tx.send(addr.trim().to_string());
                    }
                    logs.lock().unwrap().push(line);
                }
            });
        }
        drop(tx);
        let addr = match rx.recv_timeout(Duration::from_secs(30)) {
            Ok(addr) => addr,
            Err(_) => {
                let _ = child.kill();
                let _ = child.wait();
                panic!(
                    "the S3 launcher did not report its address; logs:\n{}",
                    logs.lock().unwrap().join("\n")
                );
            }
        };
        let client = any_client();
        S3Server {
            endpoint: format!("http://{addr}"),
            addr,
            child: Some(child),
            client,
            logs,
        }
    }

    /// Starts a server if the venv is installed. If it is not, prints why `test` is
    /// skipped and returns `None`, unless `S3_REQUIRED=1` is set, in which case it
    /// panics (so that `make test` and CI cannot pass by skipping).
    pub fn start_or_skip(test: &str) -> Option<S3Server> {
        S3Server::start_with_args_or_skip(test, &[])
    }

    /// [`S3Server::start_or_skip`] with extra launcher arguments.
    pub fn start_with_args_or_skip(test: &str, args: &[&str]) -> Option<S3Server> {
        if s3_available() {
            return Some(S3Server::start_with_args(args));
        }
        let hint = "install it with `bash scripts/s3-server/run.sh install` (`make test` does)";
        if std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "1") {
            panic!("{test}: the S3 test server is required ({REQUIRED_ENV}=1) but missing: {hint}");
        }
        eprintln!("SKIPPED {test}: the S3 test server is not installed; {hint}");
        None
    }

    /// One server shared by every test of this test binary (each test then works in a
    /// bucket of its own, [`S3Server::new_bucket`]), started on first use and gone with
    /// the process. `None` (with a message) when the venv is missing, unless
    /// `S3_REQUIRED=1`, in which case it panics as [`S3Server::start_or_skip`] does.
    pub fn shared_or_skip(test: &str) -> Option<&'static S3Server> {
        static SHARED: OnceLock<S3Server> = OnceLock::new();
        if let Some(s3) = SHARED.get() {
            return Some(s3);
        }
        let started = S3Server::start_or_skip(test)?;
        // A racing test may have started one too: the loser's is dropped (killed).
        Some(SHARED.get_or_init(|| started))
    }

    /// Creates a bucket with a name no other call in this process used, and returns it.
    /// Uses a client of its own, so that it works from any test's runtime.
    pub async fn new_bucket(&self) -> String {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let name = format!("test-{}", NEXT.fetch_add(1, Ordering::Relaxed));
        let resp = any_client()
            .put(self.url(&format!("/{name}")))
            .send()
            .await
            .expect("PUT bucket");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "create bucket {name}: {body}");
        name
    }

    /// Removes a bucket and everything in it, freeing the server's memory
    /// (`POST /_launcher/drop-bucket/{name}`). Blocking, so that it can run in `Drop`;
    /// returns whether the bucket existed.
    pub fn drop_bucket(&self, name: &str) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(30)));
        let req = format!(
            "POST /_launcher/drop-bucket/{name} HTTP/1.1\r\nHost: {}\r\nContent-Length: 0\r\n\
             Connection: close\r\n\r\n",
            self.addr
        );
        if stream.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut resp = String::new();
        let _ = stream.read_to_string(&mut resp);
        resp.starts_with("HTTP/1.1 204") || resp.starts_with("HTTP/1.0 204")
    }

    /// `endpoint` + `path` (`path` starts with `/`, e.g. `/bucket/key?uploads`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint, path)
    }

    /// An HTTP client that sends [`ANY_AUTHORIZATION`] with every request.
    pub fn client(&self) -> &reqwest::Client {
        &self.client
    }

    /// PID of the launcher process.
    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// What the launcher printed so far (requests are not logged; errors are).
    pub fn logs(&self) -> String {
        self.logs.lock().unwrap().join("\n")
    }

    /// Creates a bucket (`PUT /{name}`); panics unless the server answers 200.
    pub async fn create_bucket(&self, name: &str) {
        let resp = self
            .client
            .put(self.url(&format!("/{name}")))
            .send()
            .await
            .expect("PUT bucket");
        let status = resp.status();
        let body = resp.text().await.unwrap_or_default();
        assert_eq!(status, 200, "create bucket {name}: {body}");
    }

    /// Empties the server: every bucket, object and multipart upload
    /// (moto's `POST /moto-api/reset`, run under the launcher's lock).
    pub async fn reset(&self) {
        let resp = self
            .client
            .post(self.url("/moto-api/reset"))
            .send()
            .await
            .expect("POST /moto-api/reset");
        assert_eq!(resp.status(), 200, "reset");
    }

    /// Environment for a process that reaches this server through `object_store`'s
    /// `AmazonS3Builder::from_env()` (any credentials work; plain HTTP allowed).
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", "test".to_string()),
            ("AWS_SECRET_ACCESS_KEY", "test".to_string()),
            ("AWS_REGION", "us-east-1".to_string()),
            ("AWS_DEFAULT_REGION", "us-east-1".to_string()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    /// Takes the server down while keeping its state: new connections are refused and
    /// requests on open connections get 503. Returns once connecting fails.
    pub fn go_down(&self) {
        self.signal("USR1");
        self.poll_until("the listener to close", |s| !s.answers_health());
    }

    /// Brings the server back on the same port after [`S3Server::go_down`], with the
    /// same buckets and objects. Returns once it answers.
    pub fn come_up(&self) {
        self.signal("USR2");
        self.poll_until("the listener to reopen", |s| s.answers_health());
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.pid().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} failed");
    }

    /// Bounded polling (10 s) of an observable condition.
    fn poll_until(&self, what: &str, cond: impl Fn(&S3Server) -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; logs:\n{}",
                self.logs()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// Whether `GET /_launcher/health` on a new connection answers 200.
    fn answers_health(&self) -> bool {
        let Ok(mut stream) = TcpStream::connect(&self.addr) else {
            return false;
        };
        let _ = stream.set_read_timeout(Some(Duration::from_secs(2)));
        let req = format!(
            "GET /_launcher/health HTTP/1.1\r\nHost: {}\r\nConnection: close\r\n\r\n",
            self.addr
        );
        if stream.write_all(req.as_bytes()).is_err() {
            return false;
        }
        let mut resp = String::new();
        let _ = stream.read_to_string(&mut resp);
        resp.starts_with("HTTP/1.1 200") || resp.starts_with("HTTP/1.0 200")
    }
}

/// An HTTP client that sends [`ANY_AUTHORIZATION`] with every request.
fn any_client() -> reqwest::Client {
    let mut headers = reqwest::header::HeaderMap::new();
    headers.insert(
        reqwest::header::AUTHORIZATION,
        reqwest::header::HeaderValue::from_static(ANY_AUTHORIZATION),
    );
    reqwest::Client::builder()
        .default_headers(headers)
        .no_proxy()
        .build()
        .expect("reqwest client")
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

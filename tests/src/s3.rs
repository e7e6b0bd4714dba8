//! Harness for tests that need a real S3 server: Ceph RGW on a one-node Ceph cluster,
//! installed and run by `scripts/ceph/run.sh` (a Debian sid chroot under `target/tools`).
//!
//! One store serves the whole test binary. `make test` starts it before the tests and
//! stops it after them; run by hand, the first test that needs it finds it running
//! (`make ceph-start`) or starts it and stops it when the test process exits. Each test
//! works in buckets of its own ([`S3Server::start_or_skip`], [`S3Server::new_bucket`]),
//! so tests run in parallel on one store and never see each other's objects.
//!
//! A test that takes its store down (kill, restart, SIGSTOP) gets a gateway of its own
//! ([`S3Server::with_gateway_or_skip`]): one more `radosgw` process on its own port,
//! attached to the same cluster. A gateway keeps no state, so killing it loses nothing
//! and the other tests' gateway is untouched.
//!
//! RGW checks signatures: raw requests go through [`S3Client`], which signs them
//! (SigV4) with the test user's keys; `upload-server` gets the same keys from
//! [`S3Server::aws_env`]. Store requests are counted by operation from RGW's ops log
//! ([`S3Server::requests`]).

use std::collections::{BTreeMap, HashMap};
use std::net::{TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Mutex, OnceLock};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

pub use crate::sigv4::{Credentials, S3Client};

/// Environment variable that turns a missing store from a skip into a test failure
/// (`make test` sets it, so CI cannot pass by skipping).
pub const REQUIRED_ENV: &str = "S3_REQUIRED";

/// Root of the repository (the parent of the `tests` crate).
fn repo_root() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("repository root")
        .to_path_buf()
}

/// `scripts/ceph/run.sh`.
pub fn run_sh() -> PathBuf {
    repo_root().join("scripts").join("ceph").join("run.sh")
}

/// Runs `run.sh ARGS`; its stdout on success, stdout and stderr on failure.
fn run(args: &[&str]) -> Result<String, (Option<i32>, String)> {
    let out = Command::new("bash")
        .arg(run_sh())
        .args(args)
        .stdin(Stdio::null())
        .output()
        .expect("run scripts/ceph/run.sh");
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    if out.status.success() {
        Ok(stdout)
    } else {
        let stderr = String::from_utf8_lossy(&out.stderr);
        Err((out.status.code(), format!("{stdout}{stderr}")))
    }
}

/// `NAME=value` lines.
fn assignments(text: &str) -> HashMap<String, String> {
    text.lines()
        .filter_map(|l| l.split_once('='))
        .map(|(k, v)| (k.trim().to_string(), v.trim().to_string()))
        .collect()
}

/// Whether the store is installed or running (`scripts/ceph/run.sh install`).
pub fn s3_available() -> bool {
    run(&["installed"]).is_ok() || run(&["env"]).is_ok()
}

/// The running store of this checkout: its main gateway, keys and state directory.
#[derive(Debug)]
pub struct Store {
    /// The main gateway, `http://127.0.0.1:PORT`.
    pub endpoint: String,
    pub credentials: Credentials,
}

/// Why there is no store.
enum Unavailable {
    NotInstalled,
    StartFailed(String),
}

impl Store {
    fn from_env(text: &str) -> Store {
        let vars = assignments(text);
        let get = |k: &str| {
            vars.get(k)
                .unwrap_or_else(|| panic!("run.sh env printed no {k}: {text}"))
                .clone()
        };
        Store {
            endpoint: get("S3_ENDPOINT"),
            credentials: Credentials {
                access_key: get("AWS_ACCESS_KEY_ID"),
                secret_key: get("AWS_SECRET_ACCESS_KEY"),
                region: get("AWS_REGION"),
            },
        }
    }

    /// The running store; started if it is installed but not running, and then stopped
    /// (by `run.sh stop`, by PID) when this process exits.
    fn get() -> Result<&'static Store, &'static Unavailable> {
        static STORE: OnceLock<Result<Store, Unavailable>> = OnceLock::new();
        STORE
            .get_or_init(|| {
                if let Ok(env) = run(&["env"]) {
                    return Ok(Store::from_env(&env));
                }
                if run(&["installed"]).is_err() {
                    return Err(Unavailable::NotInstalled);
                }
                eprintln!("starting the S3 store (scripts/ceph/run.sh start) for this test run");
                match run(&["start"]) {
                    Ok(env) => {
                        stop_when_this_process_exits();
                        Ok(Store::from_env(&env))
                    }
                    Err((_, out)) => Err(Unavailable::StartFailed(out)),
                }
            })
            .as_ref()
    }
}

/// A watcher that runs `run.sh stop` once this process is gone.
fn stop_when_this_process_exits() {
    let script = "while kill -0 \"$0\" 2>/dev/null; do sleep 1; done; exec bash \"$1\" stop";
    let spawned = Command::new("setsid")
        .args(["sh", "-c", script])
        .arg(std::process::id().to_string())
        .arg(run_sh())
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn();
    if let Err(e) = spawned {
        eprintln!("could not watch this process to stop the S3 store afterwards ({e}): run `make ceph-stop`");
    }
}

/// The store, or `None` (with `SKIPPED test: …`) when it is not installed, unless
/// `S3_REQUIRED=1`. A store that is installed but fails to start is always a failure.
fn store_or_skip(test: &str) -> Option<&'static Store> {
    match Store::get() {
        Ok(store) => Some(store),
        Err(Unavailable::StartFailed(out)) => panic!("{test}: the S3 store did not start:\n{out}"),
        Err(Unavailable::NotInstalled) => {
            let hint = "install it with `make ceph-install` (`make test` does)";
            if std::env::var(REQUIRED_ENV).is_ok_and(|v| v == "1") {
                panic!(
                    "{test}: the S3 store is required ({REQUIRED_ENV}=1) but not installed: {hint}"
                );
            }
            eprintln!("SKIPPED {test}: the S3 store (Ceph RGW) is not installed; {hint}");
            None
        }
    }
}

/// A bucket name no other test, process or earlier run used (S3's rules: 3–63 lowercase
/// letters, digits and hyphens).
fn unique_bucket_name() -> String {
    static RUN: OnceLock<String> = OnceLock::new();
    static NEXT: AtomicU64 = AtomicU64::new(0);
    let run = RUN.get_or_init(|| format!("{:08x}", rand::random::<u32>()));
    format!("test-{run}-{}", NEXT.fetch_add(1, Ordering::Relaxed))
}

/// Runs `fut` to completion on a runtime of its own in another thread: callable from
/// sync code, from `Drop`, and from inside a test's runtime.
fn block_on<T: Send + 'static>(fut: impl std::future::Future<Output = T> + Send + 'static) -> T {
    std::thread::spawn(move || {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("tokio runtime")
            .block_on(fut)
    })
    .join()
    .expect("S3 helper thread")
}

/// A `radosgw` of a test's own, on its own port, attached to the shared cluster.
struct Gateway {
    port: u16,
    child: Child,
}

impl Gateway {
    /// Starts it (on `port`, or a free one) and waits until it answers. A free port is
    /// only free when it was chosen: if another process takes it first, radosgw cannot
    /// bind and exits, and the gateway starts again on another.
    fn start(port: Option<u16>) -> Gateway {
        for _ in 0..3 {
            let port = port.unwrap_or_else(free_port);
            let child = Command::new("bash")
                .arg(run_sh())
                .args(["gateway", "--foreground", &port.to_string()])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("spawn run.sh gateway");
            let mut gateway = Gateway { port, child };
            let deadline = Instant::now() + Duration::from_secs(60);
            while Instant::now() < deadline {
                if let Ok(Some(_)) = gateway.child.try_wait() {
                    break;
                }
                if is_rgw(&gateway.addr()) {
                    return gateway;
                }
                std::thread::sleep(Duration::from_millis(20));
            }
            gateway.kill();
        }
        panic!("the test's radosgw did not start (three ports tried); see target/tools/ceph/log/")
    }

    fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(format!("-{sig}"))
            .arg(self.child.id().to_string())
            .status()
            .expect("kill");
        assert!(ok.success(), "kill -{sig} {} failed", self.child.id());
    }

    /// SIGKILL (radosgw may hang on SIGTERM; it keeps no state) and reap.
    fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let state = std::env::var_os("CEPH_STATE")
            .map(PathBuf::from)
            .unwrap_or_else(|| repo_root().join("target/tools/ceph"));
        let pidfile = state.join(format!("gw-{}.pid", self.port));
        let _ = std::fs::remove_file(pidfile);
    }

    fn wait_until(&mut self, what: &str, limit: Duration, mut cond: impl FnMut(&mut Self) -> bool) {
        let deadline = Instant::now() + limit;
        while !cond(self) {
            assert!(
                Instant::now() < deadline,
                "timed out after {limit:?} waiting for the test's radosgw (port {}): {what}",
                self.port
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Gateway {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Whether a radosgw answers at `addr`: its answer carries `x-amz-request-id`, so that
/// another process on the port (one that took it first) is not taken for it.
fn is_rgw(addr: &str) -> bool {
    use std::io::{Read, Write};
    let Ok(mut s) = TcpStream::connect(addr) else {
        return false;
    };
    let _ = s.set_read_timeout(Some(Duration::from_secs(2)));
    let _ = s.set_write_timeout(Some(Duration::from_secs(2)));
    if s.write_all(b"GET / HTTP/1.0\r\n\r\n").is_err() {
        return false;
    }
    let mut head = Vec::new();
    let _ = s.take(4096).read_to_end(&mut head);
    String::from_utf8_lossy(&head)
        .to_ascii_lowercase()
        .contains("x-amz-request-id")
}

/// A free loopback port (bound, then released for the gateway to bind).
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("free port")
        .port()
}

/// Store requests by S3 operation (`UploadPart`, `PutObject`, `CopyObject`, …), from
/// RGW's ops log.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Requests {
    pub by_operation: BTreeMap<String, u64>,
    pub total: u64,
    /// Bytes copied inside the store (CopyObject, UploadPartCopy).
    pub copied_bytes: u64,
}

impl Requests {
    /// How many requests of `operation`.
    pub fn count(&self, operation: &str) -> u64 {
        self.by_operation.get(operation).copied().unwrap_or(0)
    }
}

/// A test's view of the S3 store: a gateway (the shared one or its own) and, for
/// [`S3Server::start_or_skip`], a bucket of its own, emptied and removed on drop.
pub struct S3Server {
    /// Base URL of the gateway, `http://127.0.0.1:PORT` (path-style: `/{bucket}/{key}`).
    pub endpoint: String,
    /// Its loopback address, `127.0.0.1:PORT`.
    pub addr: String,
    store: &'static Store,
    bucket: Option<String>,
    gateway: Option<Mutex<Gateway>>,
    client: S3Client,
}

impl S3Server {
    fn on(store: &'static Store, gateway: Option<Gateway>, bucket: bool) -> S3Server {
        let endpoint = match &gateway {
            Some(g) => format!("http://{}", g.addr()),
            None => store.endpoint.clone(),
        };
        let mut s3 = S3Server {
            addr: endpoint.trim_start_matches("http://").to_string(),
            endpoint,
            store,
            bucket: None,
            gateway: gateway.map(Mutex::new),
            client: S3Client::new(store.credentials.clone()),
        };
        if bucket {
            let name = unique_bucket_name();
            let (client, url) = (s3.client.clone(), s3.url(&format!("/{name}")));
            block_on(async move { create(&client, &url).await });
            s3.bucket = Some(name);
        }
        s3
    }

    /// The store with a new empty bucket of this test's ([`S3Server::bucket`]), on the
    /// shared gateway. `None` (with a message) when the store is not installed, unless
    /// `S3_REQUIRED=1`, in which case it panics.
    pub fn start_or_skip(test: &str) -> Option<S3Server> {
        Some(S3Server::on(store_or_skip(test)?, None, true))
    }

    /// [`S3Server::start_or_skip`] with a gateway of the test's own, which it may take
    /// down ([`S3Server::go_down`], [`S3Server::hang`]) without touching other tests.
    pub fn with_gateway_or_skip(test: &str) -> Option<S3Server> {
        let store = store_or_skip(test)?;
        Some(S3Server::on(store, Some(Gateway::start(None)), true))
    }

    /// The shared gateway, for tests that make their buckets with
    /// [`S3Server::new_bucket`] and drop them with [`S3Server::drop_bucket`].
    pub fn shared_or_skip(test: &str) -> Option<&'static S3Server> {
        static SHARED: OnceLock<S3Server> = OnceLock::new();
        let store = store_or_skip(test)?;
        Some(SHARED.get_or_init(|| S3Server::on(store, None, false)))
    }

    /// The bucket made for this test by [`S3Server::start_or_skip`].
    pub fn bucket(&self) -> &str {
        self.bucket
            .as_deref()
            .expect("this S3Server has no bucket of its own: use new_bucket")
    }

    /// Creates a bucket with a name used nowhere else, and returns the name.
    pub async fn new_bucket(&self) -> String {
        let name = unique_bucket_name();
        self.create_bucket(&name).await;
        name
    }

    /// Creates a bucket (`PUT /{name}`); panics unless the store answers 200.
    pub async fn create_bucket(&self, name: &str) {
        create(&self.client, &self.url(&format!("/{name}"))).await;
    }

    /// Aborts the bucket's multipart uploads, deletes its objects and the bucket, through
    /// the shared gateway (this test's own may be down). Blocking, so that it can run in
    /// `Drop`; returns whether the bucket is gone.
    pub fn drop_bucket(&self, name: &str) -> bool {
        let client = self.client.clone();
        let base = format!("{}/{name}", self.store.endpoint);
        block_on(async move { empty_and_delete(&client, &base).await })
    }

    /// `endpoint` + `path` (`path` starts with `/`, e.g. `/bucket/key?uploads`).
    pub fn url(&self, path: &str) -> String {
        format!("{}{}", self.endpoint, path)
    }

    /// A client whose requests are signed with the test user's keys.
    pub fn client(&self) -> &S3Client {
        &self.client
    }

    /// Environment for a process that reaches this store through `object_store`'s
    /// `AmazonS3Builder::from_env()`: the test user's keys, this gateway, plain HTTP.
    pub fn aws_env(&self) -> Vec<(&'static str, String)> {
        let c = &self.store.credentials;
        vec![
            ("AWS_ACCESS_KEY_ID", c.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", c.secret_key.clone()),
            ("AWS_REGION", c.region.clone()),
            ("AWS_DEFAULT_REGION", c.region.clone()),
            ("AWS_ENDPOINT", self.endpoint.clone()),
            ("AWS_ALLOW_HTTP", "true".to_string()),
        ]
    }

    fn gateway(&self) -> std::sync::MutexGuard<'_, Gateway> {
        self.gateway
            .as_ref()
            .expect("this test shares its gateway: use S3Server::with_gateway_or_skip")
            .lock()
            .unwrap()
    }

    /// PID of the test's own `radosgw`.
    pub fn pid(&self) -> u32 {
        self.gateway().child.id()
    }

    /// Takes the test's gateway down (SIGKILL): new connections are refused, open ones
    /// are reset; the cluster keeps every object. Returns once connecting fails.
    pub fn go_down(&self) {
        let mut g = self.gateway();
        g.kill();
        g.wait_until("its port to close", Duration::from_secs(10), |g| {
            TcpStream::connect(g.addr()).is_err()
        });
    }

    /// Starts the test's gateway again on the same port after [`S3Server::go_down`].
    /// Returns once it answers.
    pub fn come_up(&self) {
        let mut g = self.gateway();
        let port = g.port;
        // The old one is reaped; replacing it drops nothing that runs.
        *g = Gateway::start(Some(port));
    }

    /// Stops the test's gateway with SIGSTOP: it keeps its port and connections but
    /// answers nothing, as a hung store does.
    pub fn hang(&self) {
        self.gateway().signal("STOP");
    }

    /// Lets a gateway stopped by [`S3Server::hang`] run again (SIGCONT).
    pub fn resume(&self) {
        self.gateway().signal("CONT");
    }

    /// The store's requests for `bucket` that started at or after `since`, by
    /// operation. Every request answered before this call is counted (a marker request
    /// is sent through each gateway and awaited in the logs first).
    pub fn requests(&self, bucket: &str, since: SystemTime) -> Requests {
        let since = since
            .duration_since(UNIX_EPOCH)
            .expect("time after 1970")
            .as_secs_f64();
        let out = run(&[
            "requests",
            "--json",
            "--bucket",
            bucket,
            "--since",
            &format!("{since:.6}"),
        ])
        .unwrap_or_else(|(_, out)| panic!("run.sh requests: {out}"));
        let v: serde_json::Value = serde_json::from_str(out.trim())
            .unwrap_or_else(|e| panic!("run.sh requests printed {out:?}: {e}"));
        let by_operation = v["operations"]
            .as_object()
            .expect("operations")
            .iter()
            .map(|(k, n)| (k.clone(), n.as_u64().unwrap_or(0)))
            .collect();
        Requests {
            by_operation,
            total: v["total"].as_u64().unwrap_or(0),
            copied_bytes: v["copied_bytes"].as_u64().unwrap_or(0),
        }
    }
}

impl Drop for S3Server {
    fn drop(&mut self) {
        if let Some(g) = self.gateway.take() {
            drop(g.into_inner());
        }
        if let Some(bucket) = self.bucket.take() {
            self.drop_bucket(&bucket);
        }
    }
}

async fn create(client: &S3Client, url: &str) {
    let resp = client.put(url).send().await.expect("CreateBucket");
    let status = resp.status();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, 200, "create bucket {url}: {body}");
}

/// Every text of `<tag>…</tag>` in an XML document, unescaped.
fn xml_texts(xml: &str, tag: &str) -> Vec<String> {
    let (open, close) = (format!("<{tag}>"), format!("</{tag}>"));
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(
            after[..end]
                .replace("&lt;", "<")
                .replace("&gt;", ">")
                .replace("&quot;", "\"")
                .replace("&apos;", "'")
                .replace("&amp;", "&"),
        );
        rest = &after[end + close.len()..];
    }
    out
}

fn encode_key(key: &str) -> String {
    key.split('/')
        .map(|s| {
            percent_encoding::utf8_percent_encode(s, percent_encoding::NON_ALPHANUMERIC).to_string()
        })
        .collect::<Vec<_>>()
        .join("/")
}

async fn get_text(client: &S3Client, url: &str) -> Option<String> {
    let resp = client.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.text().await.ok()
}

/// Empties and deletes the bucket at `base` (`http://host:port/bucket`).
async fn empty_and_delete(client: &S3Client, base: &str) -> bool {
    // Multipart uploads first: a completion racing the sweep then fails instead of
    // publishing into a bucket being emptied.
    for _ in 0..100 {
        let Some(body) = get_text(client, &format!("{base}?uploads")).await else {
            return false;
        };
        let uploads: Vec<(String, String)> = xml_texts(&body, "Upload")
            .iter()
            .filter_map(|u| Some((xml_texts(u, "Key").pop()?, xml_texts(u, "UploadId").pop()?)))
            .collect();
        if uploads.is_empty() {
            break;
        }
        for (key, id) in uploads {
            let url = format!("{base}/{}?uploadId={id}", encode_key(&key));
            let _ = client.delete(url).send().await;
        }
    }
    for _ in 0..1000 {
        let Some(body) = get_text(client, &format!("{base}?list-type=2")).await else {
            return false;
        };
        let keys = xml_texts(&body, "Key");
        if keys.is_empty() {
            break;
        }
        for key in keys {
            let _ = client
                .delete(format!("{base}/{}", encode_key(&key)))
                .send()
                .await;
        }
    }
    matches!(client.delete(base).send().await, Ok(r) if r.status().is_success())
}

//! Shared helpers of the server tests: the storage fixture (each test binary runs the same
//! tests on local disk or on S3, see [`start`]), a typed client over the native API,
//! problem document checks, raw-socket requests for the cases reqwest cannot produce
//! (stalls, disconnects), and bounded polling.

use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use common::api::{ChunkReceipt, Problem, UploadStatus};
use common::{Sha256Digest, UploadId};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::s3::S3Server;
use tests::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// Where the servers of a test binary keep uploads: `server` tests them on local disk,
/// `server_s3` the same tests on S3 (the shared Ceph store, a bucket per test).
/// Each binary names its storage in a `STORAGE` constant at its root.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[allow(dead_code)] // each test binary names one of them
pub enum Storage {
    /// `--data-dir` on local disk.
    Local,
    /// `--storage s3` on a fresh bucket of the binary's shared S3 test server.
    S3,
}

/// S3's smallest part, hence the smallest chunk but the last.
const S3_MIN_CHUNK: usize = 5 * MIB;

/// Starts an `upload-server` with `args` on this binary's storage ([`super::STORAGE`]):
/// `let (server, store) = start!(&[...]);`. On S3 the test returns early (skipped, with a
/// message) when the S3 test server is not installed, unless `S3_REQUIRED=1`.
macro_rules! start {
    ($args:expr) => {
        match super::support::start_server(module_path!(), $args).await {
            Some(started) => started,
            None => return,
        }
    };
}
pub(crate) use start;

/// See [`start!`]: the server and its [`Store`], or `None` when S3 is not available.
pub async fn start_server(test: &str, args: &[&str]) -> Option<(Server, Store)> {
    let dir = tempfile::tempdir().expect("temp dir");
    match super::STORAGE {
        Storage::Local => {
            let server = Server::start_in(dir.path(), args);
            let url = server.url();
            Some((
                server,
                Store {
                    storage: Storage::Local,
                    dir,
                    s3: None,
                    server: url,
                },
            ))
        }
        Storage::S3 => {
            let s3 = S3Server::shared_or_skip(test)?;
            let bucket = s3.new_bucket().await;
            let mut all = vec![
                "--storage",
                "s3",
                "--s3-bucket",
                &bucket,
                "--s3-endpoint",
                &s3.endpoint,
                "--s3-allow-http",
                "--s3-region",
                "us-east-1",
            ];
            all.extend_from_slice(args);
            let server = Server::start_with_env(dir.path(), &all, &s3.aws_env());
            let url = server.url();
            Some((
                server,
                Store {
                    storage: Storage::S3,
                    dir,
                    s3: Some((s3, bucket)),
                    server: url,
                },
            ))
        }
    }
}

/// One test's storage, and what the test may look at inside it. On S3 its bucket is
/// emptied and removed when it is dropped.
pub struct Store {
    /// Which storage.
    pub storage: Storage,
    /// The server's data directory (on S3 it holds nothing of the uploads).
    pub dir: tempfile::TempDir,
    s3: Option<(&'static S3Server, String)>,
    /// The server's base URL (it stays the same across restarts).
    server: String,
}

impl Store {
    /// The `storage` name in `GET /v1`.
    pub fn name(&self) -> &'static str {
        match self.storage {
            Storage::Local => "local",
            Storage::S3 => "s3",
        }
    }

    /// Records how many racing or duplicate requests a test tried, per backend, for the
    /// torture table.
    pub fn tally_races(&self, key: &str, what: &str, count: u64) {
        tests::tally(
            &format!("race-{}-{key}", self.name()),
            "race",
            &format!("{what} ({})", self.name()),
            count,
        );
    }

    /// The chunk size a test uses where it would use `local` on local disk: on S3 the
    /// smallest part S3 takes (5 MiB), so tests there keep their chunk counts small.
    pub fn chunk(&self, local: usize) -> usize {
        match self.storage {
            Storage::Local => local,
            Storage::S3 => S3_MIN_CHUNK,
        }
    }

    /// How many chunks a test sends where it would send `local` on local disk: at most 4
    /// on S3, where chunks are 5 MiB.
    pub fn count(&self, local: usize) -> usize {
        match self.storage {
            Storage::Local => local,
            Storage::S3 => local.min(4),
        }
    }

    fn bucket(&self) -> (&'static S3Server, &str) {
        let (s3, bucket) = self.s3.as_ref().expect("an S3 store");
        (s3, bucket.as_str())
    }

    /// Keys of the test's bucket under `prefix` (ListObjectsV2, one page).
    async fn keys(&self, prefix: &str) -> Vec<String> {
        let (s3, bucket) = self.bucket();
        let resp = s3
            .client()
            .get(s3.url(&format!("/{bucket}?list-type=2&prefix={prefix}")))
            .send()
            .await
            .expect("ListObjectsV2");
        assert_eq!(resp.status(), StatusCode::OK);
        let body = resp.text().await.expect("listing");
        assert!(!body.contains("<IsTruncated>true</IsTruncated>"), "{body}");
        body.split("<Key>")
            .skip(1)
            .filter_map(|k| k.split("</Key>").next())
            .map(str::to_string)
            .collect()
    }

    /// Whether `key` is an object of the test's bucket.
    async fn object_exists(&self, key: &str) -> bool {
        let (s3, bucket) = self.bucket();
        let resp = s3
            .client()
            .head(s3.url(&format!("/{bucket}/{key}")))
            .send()
            .await
            .expect("HeadObject");
        match resp.status() {
            StatusCode::OK => true,
            StatusCode::NOT_FOUND => false,
            other => panic!("HEAD {key}: {other}"),
        }
    }

    /// Uploads stored, tombstones included.
    pub async fn upload_count(&self) -> usize {
        match self.storage {
            Storage::Local => upload_dirs(self.dir.path()),
            Storage::S3 => self
                .keys("uploads/")
                .await
                .iter()
                .filter(|k| k.ends_with("/record.json"))
                .count(),
        }
    }

    /// Idempotency keys claimed.
    pub async fn idempotency_count(&self) -> usize {
        match self.storage {
            Storage::Local => std::fs::read_dir(self.dir.path().join("idempotency"))
                .map(|rd| rd.flatten().count())
                .unwrap_or(0),
            Storage::S3 => self.keys("idempotency/").await.len(),
        }
    }

    /// Whether any bytes or chunk receipts of upload `id` are stored (before or after
    /// completion): the data file and journal on disk; on S3 the multipart upload, its
    /// chunk objects (claims, spills, pieces) or the published file.
    pub async fn has_bytes(&self, id: UploadId) -> bool {
        match self.storage {
            Storage::Local => ["data", "chunks.journal", "content"]
                .iter()
                .any(|name| upload_file(self.dir.path(), id, name).exists()),
            Storage::S3 => {
                let (s3, bucket) = self.bucket();
                let file = format!("files/{id}");
                let resp = s3
                    .client()
                    .get(s3.url(&format!("/{bucket}?uploads&prefix={file}")))
                    .send()
                    .await
                    .expect("ListMultipartUploads");
                let body = resp.text().await.expect("listing");
                body.contains("<UploadId>")
                    || !self.keys(&format!("uploads/{id}/chunks/")).await.is_empty()
                    || self.object_exists(&file).await
            }
        }
    }

    /// Whether the completed file of upload `id` is stored.
    pub async fn has_content(&self, id: UploadId) -> bool {
        match self.storage {
            Storage::Local => upload_file(self.dir.path(), id, "content").exists(),
            Storage::S3 => self.object_exists(&format!("files/{id}")).await,
        }
    }

    /// Whether the server is storing chunk `index` of `id` (not yet acknowledged), whose
    /// bytes from the chunk's start are `first`: on disk they are in the data file at
    /// `offset`; on S3, where a part cannot be seen before it is joined, the chunk is not
    /// claimed, the server handles a request besides this look, and it has begun more
    /// parts (its `upload_store_requests_total{op="upload_part"}`) than the upload has
    /// claimed chunks.
    pub async fn writing(&self, id: UploadId, index: u64, offset: u64, first: &[u8]) -> bool {
        match self.storage {
            Storage::Local => data_holds(self.dir.path(), id, offset, first),
            Storage::S3 => {
                let Ok(resp) = client()
                    .get(format!("{}/metrics", self.server))
                    .send()
                    .await
                else {
                    return false;
                };
                let text = resp.text().await.unwrap_or_default();
                let series = |name: &str| {
                    text.lines()
                        .find_map(|l| l.strip_prefix(name)?.trim().parse::<f64>().ok())
                        .unwrap_or(0.0)
                };
                let parts = series(r#"upload_store_requests_total{op="upload_part"}"#);
                let in_flight = series("upload_http_requests_in_flight");
                let chunks = format!("uploads/{id}/chunks/");
                let claims: Vec<String> = self
                    .keys(&chunks)
                    .await
                    .into_iter()
                    .filter(|k| {
                        k.strip_prefix(&chunks)
                            .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
                    })
                    .collect();
                in_flight >= 2.0
                    && parts > claims.len() as f64
                    && !claims.contains(&format!("{chunks}{index:05}"))
            }
        }
    }
}

impl Drop for Store {
    fn drop(&mut self) {
        if let Some((s3, bucket)) = &self.s3 {
            s3.drop_bucket(bucket);
        }
    }
}

/// A client that never goes through a proxy and never waits forever. It keeps connections
/// alive, as real clients do.
pub fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// SHA-256 of `bytes` as a digest value.
pub fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

/// The upload API bound to one server.
pub struct Api {
    pub http: Client,
    pub base: String,
}

impl Api {
    pub fn new(server: &Server) -> Self {
        Self {
            http: client(),
            base: server.url(),
        }
    }

    pub fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    pub fn upload_url(&self, id: impl std::fmt::Display) -> String {
        self.url(&format!("/v1/uploads/{id}"))
    }

    pub fn chunk_url(&self, id: impl std::fmt::Display, index: impl std::fmt::Display) -> String {
        self.url(&format!("/v1/uploads/{id}/chunks/{index}"))
    }

    /// `POST /v1/uploads` with a raw JSON body.
    pub async fn create_raw(&self, body: &str) -> Response {
        self.http
            .post(self.url("/v1/uploads"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST /v1/uploads")
    }

    /// Creates an upload and checks the 201 answer and its `Location`.
    pub async fn create(&self, body: Value) -> UploadStatus {
        let resp = self.create_raw(&body.to_string()).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "create {body}");
        let location = header(resp.headers(), "location");
        let status: UploadStatus = resp.json().await.expect("status JSON");
        assert_eq!(location, format!("/v1/uploads/{}", status.id));
        assert_eq!(status.state, common::api::UploadState::Uploading);
        assert_eq!(status.received_bytes, 0);
        status
    }

    /// `PUT` one chunk with a `Content-Length` and, when `with_digest`, its
    /// `Content-Digest`.
    pub async fn put(&self, id: UploadId, index: u64, bytes: &[u8], with_digest: bool) -> Response {
        let mut req = self
            .http
            .put(self.chunk_url(id, index))
            .body(bytes.to_vec());
        if with_digest {
            req = req.header("content-digest", digest(bytes).to_header());
        }
        req.send().await.expect("PUT chunk")
    }

    /// Stores one chunk and checks its receipt (201 for a new chunk).
    pub async fn put_ok(&self, id: UploadId, index: u64, bytes: &[u8]) {
        let resp = self.put(id, index, bytes, true).await;
        assert_eq!(resp.status(), StatusCode::CREATED, "PUT chunk {index}");
        let receipt: ChunkReceipt = resp.json().await.expect("receipt JSON");
        assert_eq!(receipt.index, index);
        assert_eq!(receipt.size, bytes.len() as u64);
        assert_eq!(receipt.sha256, digest(bytes));
    }

    /// [`Api::put_ok`], after waiting out 503 answers as a client honouring `Retry-After`
    /// does (at most 30 s): on S3 the store may be briefly away.
    pub async fn put_ok_retrying(&self, id: UploadId, index: u64, bytes: &[u8]) {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let resp = self.put(id, index, bytes, true).await;
            if resp.status() != StatusCode::SERVICE_UNAVAILABLE {
                assert_eq!(resp.status(), StatusCode::CREATED, "PUT chunk {index}");
                let receipt: ChunkReceipt = resp.json().await.expect("receipt JSON");
                assert_eq!(receipt.sha256, digest(bytes));
                return;
            }
            let wait: u64 = header(resp.headers(), "retry-after")
                .parse()
                .expect("Retry-After seconds");
            assert!(Instant::now() < deadline, "chunk {index}: 503 for 30 s");
            tokio::time::sleep(Duration::from_secs(wait.clamp(1, 5))).await;
        }
    }

    /// Sends every chunk of `file` in index order.
    pub async fn put_all(&self, id: UploadId, file: &[u8], chunk_size: usize) {
        for (i, c) in file.chunks(chunk_size).enumerate() {
            self.put_ok(id, i as u64, c).await;
        }
    }

    pub async fn status_resp(&self, id: impl std::fmt::Display) -> Response {
        self.http
            .get(self.upload_url(id))
            .send()
            .await
            .expect("GET status")
    }

    /// The status document (asserting 200).
    pub async fn status(&self, id: UploadId) -> UploadStatus {
        let resp = self.status_resp(id).await;
        assert_eq!(resp.status(), StatusCode::OK, "GET status of {id}");
        resp.json().await.expect("status JSON")
    }

    /// `POST .../complete` with an optional body.
    pub async fn complete(&self, id: UploadId, body: Option<Value>) -> Response {
        let mut req = self
            .http
            .post(self.url(&format!("/v1/uploads/{id}/complete")));
        if let Some(b) = body {
            req = req
                .header(CONTENT_TYPE, "application/json")
                .body(b.to_string());
        }
        req.send().await.expect("POST complete")
    }

    pub async fn content(&self, id: UploadId) -> Response {
        self.http
            .get(self.url(&format!("/v1/uploads/{id}/content")))
            .send()
            .await
            .expect("GET content")
    }

    /// Downloads a completed upload and checks it is exactly `expected`.
    pub async fn assert_content(&self, id: UploadId, expected: &[u8]) {
        let resp = self.content(id).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(resp.headers(), "content-length"),
            expected.len().to_string()
        );
        assert_eq!(
            header(resp.headers(), "etag"),
            format!("\"{}\"", tests::sha256_hex(expected))
        );
        let body = resp.bytes().await.expect("content body");
        assert_eq!(body.len(), expected.len());
        assert_eq!(tests::sha256_hex(&body), tests::sha256_hex(expected));
        assert!(body == expected, "downloaded bytes differ");
    }
}

/// A header as text (panics when absent).
pub fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {headers:?}"))
        .to_str()
        .expect("ASCII header")
        .to_string()
}

/// Checks an RFC 9457 answer: the status, the media type, and every member, and returns
/// the document.
pub async fn problem(resp: Response, status: u16) -> Problem {
    let got = resp.status();
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string());
    assert!(
        resp.headers().contains_key("x-request-id"),
        "no X-Request-ID on an error"
    );
    let text = resp.text().await.expect("problem body");
    assert_eq!(got.as_u16(), status, "status; body: {text}");
    assert_eq!(
        ctype.as_deref(),
        Some(common::PROBLEM_JSON),
        "content type; body: {text}"
    );
    let raw: Value = serde_json::from_str(&text).expect("problem JSON");
    for member in ["type", "title", "status", "detail"] {
        assert!(
            raw.get(member).is_some(),
            "problem without {member}: {text}"
        );
    }
    let p: Problem = serde_json::from_value(raw).expect("problem document");
    assert_eq!(p.status, status, "{text}");
    assert!(
        !p.kind.is_empty() && !p.title.is_empty() && !p.detail.is_empty(),
        "{text}"
    );
    p
}

/// Number of upload directories in the server's data directory.
pub fn upload_dirs(data_dir: &Path) -> usize {
    match std::fs::read_dir(data_dir.join("uploads")) {
        Ok(rd) => rd.flatten().count(),
        Err(_) => 0,
    }
}

/// `DATA/uploads/{id}/{name}`.
pub fn upload_file(data_dir: &Path, id: UploadId, name: &str) -> PathBuf {
    data_dir.join("uploads").join(id.to_string()).join(name)
}

/// Whether the server has already written `expected` at `offset` of the upload's `data`
/// file: proof that a chunk request is being handled, though not acknowledged.
pub fn data_holds(data_dir: &Path, id: UploadId, offset: u64, expected: &[u8]) -> bool {
    use std::os::unix::fs::FileExt;
    let Ok(f) = std::fs::File::open(upload_file(data_dir, id, "data")) else {
        return false;
    };
    let mut buf = vec![0u8; expected.len()];
    f.read_exact_at(&mut buf, offset).is_ok() && buf == expected
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
pub async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
where
    F: FnMut() -> Fut,
    Fut: Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if cond().await {
            return;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {limit:?} waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Opens a connection and sends a `PUT` head for a chunk of `content_length` bytes followed
/// by `body`, leaving the connection open so that the caller can stall or drop it.
pub async fn raw_put(
    server: &Server,
    id: UploadId,
    index: u64,
    content_length: usize,
    body: &[u8],
) -> TcpStream {
    let mut s = TcpStream::connect(&server.addr).await.expect("connect");
    let head = format!(
        "PUT /v1/uploads/{id}/chunks/{index} HTTP/1.1\r\nHost: {}\r\nContent-Length: {content_length}\r\n\r\n",
        server.addr
    );
    s.write_all(head.as_bytes()).await.expect("write head");
    s.write_all(body).await.expect("write body");
    s.flush().await.expect("flush");
    s
}

/// Waits until the server's logs (which arrive through a pipe) include everything it
/// logged before answering a fresh request, then returns them.
pub async fn synced_logs(api: &Api, server: &Server) -> String {
    let marker = format!("log-sync-{}", UploadId::new_random());
    let resp = api
        .http
        .get(api.url("/healthz"))
        .header("x-request-id", &marker)
        .send()
        .await
        .expect("GET /healthz");
    assert_eq!(resp.status(), StatusCode::OK);
    wait_until(Duration::from_secs(10), "the marker log line", || async {
        server.logs().contains(&marker)
    })
    .await;
    server.logs()
}

/// Rounds of a race test: `RACE_ROUNDS` when set (`make torture` raises it), else `default`.
pub fn race_rounds(default: u64) -> u64 {
    std::env::var("RACE_ROUNDS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(default)
}

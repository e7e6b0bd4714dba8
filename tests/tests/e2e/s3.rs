//! End-to-end tests of `upload-server --storage s3` against a real S3 server (Ceph RGW,
//! see `tests::s3`).
//!
//! Each test gets a bucket of its own on the shared store (and, where it takes the store
//! down, a gateway of its own) and one or more `upload-server` processes on it, speaks the native API to them, and checks
//! the bucket's objects and multipart uploads directly with raw S3 requests. The object
//! layout is the one documented in `storage/src/backend/s3.rs`:
//! `uploads/{id}/record.json`, `uploads/{id}/chunks/{index:05}/…`, `uploads/{id}/hash.json`,
//! `uploads/{id}/staging` (the multipart upload's key), `files/{id}`, `idempotency/…`.
//!
//! S3 parts are at least 5 MiB (but the last), so uploads here use 5 MiB chunks; files
//! stay small (≤ ~26 MiB per test).
//!
//! Skipped (with a message) when the S3 test server is not installed, unless
//! `S3_REQUIRED=1`. Build the binaries first (`cargo build -p server`; `make test` does).

use std::future::Future;
use std::time::{Duration, Instant};

use bytes::Bytes;
use common::api::{ChunkReceipt, Problem, UploadState, UploadStatus};
use common::{Sha256Digest, UploadId};
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Client, Response, StatusCode};
use serde_json::{json, Value};
use sha2::{Digest, Sha256};
use tests::s3::S3Server;
use tests::{random_bytes, sha256_hex, Server};
use tokio::io::AsyncWriteExt;

const MIB: usize = 1 << 20;
/// The smallest chunk S3 allows (every part but the last).
const CS: usize = 5 * MIB;

// ---------------------------------------------------------------------------------------
// Set-up: an S3 server with a bucket, upload servers on it.
// ---------------------------------------------------------------------------------------

/// The S3 store with a bucket of the test's own, or `None` when the test is skipped.
async fn s3_or_skip(test: &str) -> Option<S3Server> {
    S3Server::start_or_skip(test)
}

/// [`s3_or_skip`] with a gateway of the test's own, for tests that take the store down.
async fn s3_with_gateway_or_skip(test: &str) -> Option<S3Server> {
    S3Server::with_gateway_or_skip(test)
}

/// An `upload-server` on the test bucket, with `extra` flags.
fn upload_server(s3: &S3Server, extra: &[&str]) -> (Server, tempfile::TempDir) {
    upload_server_via(s3, &s3.endpoint, extra)
}

/// An `upload-server` on the test bucket reached at `endpoint` (e.g. a fault proxy).
fn upload_server_via(s3: &S3Server, endpoint: &str, extra: &[&str]) -> (Server, tempfile::TempDir) {
    let dir = tempfile::tempdir().expect("temp dir");
    let mut args = vec![
        "--storage",
        "s3",
        "--s3-bucket",
        s3.bucket(),
        "--s3-endpoint",
        endpoint,
        "--s3-allow-http",
        "--s3-region",
        "us-east-1",
    ];
    args.extend_from_slice(extra);
    let env: Vec<(&str, String)> = s3.aws_env();
    let server = Server::start_with_env(dir.path(), &args, &env);
    (server, dir)
}

// ---------------------------------------------------------------------------------------
// Raw S3 requests: what the bucket holds.
// ---------------------------------------------------------------------------------------

/// Every text of `<tag>…</tag>` in an XML document, in order.
fn xml_all(xml: &str, tag: &str) -> Vec<String> {
    let open = format!("<{tag}>");
    let close = format!("</{tag}>");
    let mut out = Vec::new();
    let mut rest = xml;
    while let Some(start) = rest.find(&open) {
        let after = &rest[start + open.len()..];
        let Some(end) = after.find(&close) else { break };
        out.push(after[..end].to_string());
        rest = &after[end + close.len()..];
    }
    out
}

async fn s3_get_text(s3: &S3Server, path: &str) -> String {
    let resp = s3
        .client()
        .get(s3.url(path))
        .send()
        .await
        .unwrap_or_else(|e| panic!("GET {path}: {e}"));
    let status = resp.status();
    let body = resp.text().await.expect("S3 body");
    assert_eq!(status, StatusCode::OK, "GET {path}: {body}");
    body
}

/// Keys under `prefix` (ListObjectsV2), sorted.
async fn list_keys(s3: &S3Server, prefix: &str) -> Vec<String> {
    let body = s3_get_text(s3, &format!("/{}?list-type=2&prefix={prefix}", s3.bucket())).await;
    assert!(
        !body.contains("<IsTruncated>true</IsTruncated>"),
        "listing truncated: {body}"
    );
    let mut keys = xml_all(&body, "Key");
    keys.sort();
    keys
}

/// The chunk receipts of an upload (not the per-chunk `claim` and `lease` objects).
async fn receipt_keys(s3: &S3Server, id: UploadId) -> Vec<String> {
    list_keys(s3, &chunks_prefix(id))
        .await
        .into_iter()
        .filter(|k| {
            !k.ends_with("/claim") && !k.ends_with("/lease") && !k.ends_with("/append-lease")
        })
        .collect()
}

/// Keys of the multipart uploads in progress under `prefix` (ListMultipartUploads).
async fn multipart_uploads(s3: &S3Server, prefix: &str) -> Vec<String> {
    let body = s3_get_text(s3, &format!("/{}?uploads&prefix={prefix}", s3.bucket())).await;
    xml_all(&body, "Upload")
        .iter()
        .flat_map(|u| xml_all(u, "Key"))
        .collect()
}

/// `GET /{bucket}/{key}`: status and bytes.
async fn get_object(s3: &S3Server, key: &str) -> (StatusCode, Bytes) {
    let resp = s3
        .client()
        .get(s3.url(&format!("/{}/{key}", s3.bucket())))
        .send()
        .await
        .expect("GetObject");
    (resp.status(), resp.bytes().await.expect("object body"))
}

fn staging_key(id: UploadId) -> String {
    format!("uploads/{id}/staging")
}

fn file_key(id: UploadId) -> String {
    format!("files/{id}")
}

fn chunks_prefix(id: UploadId) -> String {
    format!("uploads/{id}/chunks/")
}

// ---------------------------------------------------------------------------------------
// The native API (copied in part from tests/tests/server/support.rs).
// ---------------------------------------------------------------------------------------

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

fn digest(bytes: &[u8]) -> Sha256Digest {
    Sha256Digest(Sha256::digest(bytes).into())
}

#[derive(Clone)]
struct Api {
    http: Client,
    base: String,
}

impl Api {
    fn new(server: &Server) -> Self {
        Self {
            http: client(),
            base: server.url(),
        }
    }

    fn url(&self, path: &str) -> String {
        format!("{}{path}", self.base)
    }

    fn upload_url(&self, id: UploadId) -> String {
        self.url(&format!("/v1/uploads/{id}"))
    }

    async fn create(&self, body: Value) -> UploadStatus {
        let resp = self
            .http
            .post(self.url("/v1/uploads"))
            .header(CONTENT_TYPE, "application/json")
            .body(body.to_string())
            .send()
            .await
            .expect("POST /v1/uploads");
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(code, StatusCode::CREATED, "create {body}: {text}");
        let status: UploadStatus = serde_json::from_str(&text).expect("status JSON");
        assert_eq!(status.state, UploadState::Uploading);
        assert_eq!(status.received_bytes, 0);
        status
    }

    async fn put(&self, id: UploadId, index: u64, bytes: Bytes) -> Response {
        self.http
            .put(self.url(&format!("/v1/uploads/{id}/chunks/{index}")))
            .header("content-digest", digest(&bytes).to_header())
            .body(bytes)
            .send()
            .await
            .expect("PUT chunk")
    }

    /// Stores one new chunk and checks its receipt (201).
    async fn put_ok(&self, id: UploadId, index: u64, bytes: Bytes) {
        let len = bytes.len() as u64;
        let sha = digest(&bytes);
        // 503 + Retry-After means "being written elsewhere, or the store is briefly away":
        // retry, as clients do (bounded).
        let deadline = Instant::now() + Duration::from_secs(40);
        let (code, text) = loop {
            let resp = self.put(id, index, bytes.clone()).await;
            let code = resp.status();
            let text = resp.text().await.unwrap_or_default();
            if code != StatusCode::SERVICE_UNAVAILABLE || Instant::now() > deadline {
                break (code, text);
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        };
        assert_eq!(code, StatusCode::CREATED, "PUT chunk {index}: {text}");
        let receipt: ChunkReceipt = serde_json::from_str(&text).expect("receipt JSON");
        assert_eq!(receipt.index, index);
        assert_eq!(receipt.size, len);
        assert_eq!(receipt.sha256, sha);
    }

    async fn status_resp(&self, id: UploadId) -> Response {
        self.http
            .get(self.upload_url(id))
            .send()
            .await
            .expect("GET status")
    }

    async fn status(&self, id: UploadId) -> UploadStatus {
        let resp = self.status_resp(id).await;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(code, StatusCode::OK, "GET status of {id}: {text}");
        serde_json::from_str(&text).expect("status JSON")
    }

    async fn complete(&self, id: UploadId, body: Option<Value>) -> Response {
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

    /// Completes and checks the 200 answer and its SHA-256.
    async fn complete_ok(&self, id: UploadId, file: &[u8]) -> UploadStatus {
        let resp = self.complete(id, None).await;
        let code = resp.status();
        let text = resp.text().await.unwrap_or_default();
        assert_eq!(code, StatusCode::OK, "complete {id}: {text}");
        let st: UploadStatus = serde_json::from_str(&text).expect("status JSON");
        assert_eq!(st.state, UploadState::Completed);
        assert_eq!(st.sha256, Some(digest(file)));
        assert_eq!(st.received_bytes, file.len() as u64);
        st
    }

    async fn content(&self, id: UploadId, range: Option<&str>) -> Response {
        let mut req = self
            .http
            .get(self.url(&format!("/v1/uploads/{id}/content")));
        if let Some(r) = range {
            req = req.header("range", r);
        }
        req.send().await.expect("GET content")
    }

    /// Downloads a completed upload and checks it is exactly `expected`.
    async fn assert_content(&self, id: UploadId, expected: &[u8]) {
        let resp = self.content(id, None).await;
        assert_eq!(resp.status(), StatusCode::OK);
        assert_eq!(
            header(resp.headers(), "content-length"),
            expected.len().to_string()
        );
        assert_eq!(
            header(resp.headers(), "etag"),
            format!("\"{}\"", sha256_hex(expected))
        );
        let body = resp.bytes().await.expect("content body");
        assert_eq!(body.len(), expected.len());
        assert!(body == expected, "downloaded bytes differ");
    }

    async fn delete(&self, id: UploadId) -> Response {
        self.http
            .delete(self.upload_url(id))
            .send()
            .await
            .expect("DELETE upload")
    }
}

fn header(headers: &HeaderMap, name: &str) -> String {
    headers
        .get(name)
        .unwrap_or_else(|| panic!("missing header {name}: {headers:?}"))
        .to_str()
        .expect("ASCII header")
        .to_string()
}

/// Checks an RFC 9457 answer (status, media type) and returns the document.
async fn problem(resp: Response, status: u16) -> Problem {
    let got = resp.status();
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let text = resp.text().await.expect("problem body");
    assert_eq!(got.as_u16(), status, "status; body: {text}");
    assert_eq!(
        ctype.as_deref(),
        Some(common::PROBLEM_JSON),
        "content type; body: {text}"
    );
    let p: Problem = serde_json::from_str(&text).expect("problem document");
    assert_eq!(p.status, status, "{text}");
    p
}

/// Polls `cond` every 20 ms until it holds; panics with `what` after `limit`.
async fn wait_until<F, Fut>(limit: Duration, what: &str, mut cond: F)
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

/// The server's logs once they include everything it logged before answering a fresh
/// request (logs arrive through a pipe).
async fn synced_logs(server: &Server) -> String {
    let marker = format!("log-sync-{}", UploadId::new_random());
    let resp = client()
        .get(format!("{}/healthz", server.url()))
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

/// The "upload completed" log lines of upload `id`.
fn completed_lines(logs: &str, id: UploadId) -> Vec<String> {
    let id = id.to_string();
    logs.lines()
        .filter(|l| l.contains("upload completed") && l.contains(&id))
        .map(str::to_string)
        .collect()
}

/// The number after `name=` in a log line.
fn log_field(line: &str, name: &str) -> u64 {
    let pat = format!("{name}=");
    let at = line
        .find(&pat)
        .unwrap_or_else(|| panic!("no {name} in {line}"));
    line[at + pat.len()..]
        .chars()
        .take_while(char::is_ascii_digit)
        .collect::<String>()
        .parse()
        .unwrap_or_else(|_| panic!("{name} is not a number in {line}"))
}

/// The chunks of `file` as cheap slices.
fn chunks_of(file: &Bytes) -> Vec<Bytes> {
    (0..file.len().div_ceil(CS))
        .map(|i| file.slice(i * CS..((i + 1) * CS).min(file.len())))
        .collect()
}

/// Bytes written by a process so far (`wchar` of `/proc/PID/io`): socket writes count.
fn bytes_written(pid: u32) -> u64 {
    let io = std::fs::read_to_string(format!("/proc/{pid}/io")).expect("/proc/PID/io");
    io.lines()
        .find_map(|l| l.strip_prefix("wchar: "))
        .and_then(|v| v.trim().parse().ok())
        .expect("wchar")
}

// ---------------------------------------------------------------------------------------
// 1. Native round trip.
// ---------------------------------------------------------------------------------------

/// Five 5 MiB chunks and a short last one, sent in parallel out of order with
/// `Content-Digest`; retries, conflicts, a premature complete, completion, download with
/// ranges; the bucket then holds `files/{id}` and no staging object nor multipart upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn round_trip_with_parallel_out_of_order_chunks() {
    let Some(s3) = s3_or_skip("round_trip_with_parallel_out_of_order_chunks").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);

    let caps: Value = api
        .http
        .get(api.url("/v1"))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert_eq!(caps["storage"], "s3");
    assert_eq!(caps["chunk_size"]["min"], CS as u64);
    assert_eq!(caps["max_chunks"], 10_000);

    let file = Bytes::from(random_bytes(5 * CS + 123_457, 1));
    let chunks = chunks_of(&file);
    assert_eq!(chunks.len(), 6);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS, "filename": "round.bin"}))
        .await;
    let id = st.id;
    assert_eq!(st.chunk_count, 6);
    assert_eq!(multipart_uploads(&s3, &staging_key(id)).await.len(), 1);
    assert!(list_keys(&s3, &format!("uploads/{id}/record.json"))
        .await
        .contains(&format!("uploads/{id}/record.json")));

    // Chunk 0 only: a premature complete lists what is missing.
    api.put_ok(id, 0, chunks[0].clone()).await;
    let p = problem(api.complete(id, None).await, 409).await;
    assert_eq!(p.missing, Some(vec![[1, 5]]));
    let now = api.status(id).await;
    assert_eq!(now.state, UploadState::Uploading);
    assert_eq!(now.missing, vec![[1, 5]]);
    assert_eq!(now.received_bytes, CS as u64);

    // 5, 4, 2 in parallel; then 1 and 3 are the missing ones.
    let mut tasks = tokio::task::JoinSet::new();
    for i in [5usize, 4, 2] {
        let api = api.clone();
        let c = chunks[i].clone();
        tasks.spawn(async move { api.put_ok(id, i as u64, c).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }
    let now = api.status(id).await;
    assert_eq!(now.missing, vec![[1, 1], [3, 3]]);
    assert_eq!(now.received_bytes, (3 * CS + 123_457) as u64);
    // One receipt object per stored chunk.
    assert_eq!(receipt_keys(&s3, id).await.len(), 4);

    let mut tasks = tokio::task::JoinSet::new();
    for i in [3usize, 1] {
        let api = api.clone();
        let c = chunks[i].clone();
        tasks.spawn(async move { api.put_ok(id, i as u64, c).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }

    // A retry with the same bytes: 200 and the same receipt. Other bytes: 409.
    let resp = api.put(id, 5, chunks[5].clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let receipt: ChunkReceipt = resp.json().await.unwrap();
    assert_eq!(receipt.sha256, digest(&chunks[5]));
    let mut other = chunks[5].to_vec();
    other[7] ^= 0xff;
    problem(api.put(id, 5, Bytes::from(other)).await, 409).await;
    assert_eq!(receipt_keys(&s3, id).await.len(), 6);

    let st = api.complete_ok(id, &file).await;
    assert_eq!(st.missing, Vec::<[u64; 2]>::new());
    api.assert_content(id, &file).await;

    // Ranges.
    let resp = api.content(id, Some("bytes=5242870-5242889")).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(
        header(resp.headers(), "content-range"),
        format!("bytes 5242870-5242889/{}", file.len())
    );
    assert_eq!(
        resp.bytes().await.unwrap(),
        file.slice(5_242_870..5_242_890)
    );
    let resp = api.content(id, Some("bytes=-100")).await;
    assert_eq!(resp.status(), StatusCode::PARTIAL_CONTENT);
    assert_eq!(resp.bytes().await.unwrap(), file.slice(file.len() - 100..));

    // The bucket: the verified file at files/{id}, no staging object, no multipart upload.
    let (code, published) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(published.len(), file.len());
    assert_eq!(sha256_hex(&published), sha256_hex(&file));
    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
    assert_eq!(
        list_keys(&s3, &staging_key(id)).await,
        Vec::<String>::new(),
        "staging object left"
    );
    assert_eq!(
        multipart_uploads(&s3, &format!("uploads/{id}/")).await,
        Vec::<String>::new()
    );

    // Completing again answers the same.
    api.complete_ok(id, &file).await;
}

// ---------------------------------------------------------------------------------------
// 2. Failed verification.
// ---------------------------------------------------------------------------------------

/// A wrong SHA-256 at completion: 422, failed, nothing at `files/{id}`, the multipart
/// upload aborted and the chunk receipts removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn wrong_sha256_publishes_nothing_and_aborts_the_multipart_upload() {
    let Some(s3) =
        s3_or_skip("wrong_sha256_publishes_nothing_and_aborts_the_multipart_upload").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(CS + 1000, 2));
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;
    for (i, c) in chunks_of(&file).into_iter().enumerate() {
        api.put_ok(id, i as u64, c).await;
    }
    let wrong = sha256_hex(b"something else");
    let p = problem(api.complete(id, Some(json!({"sha256": wrong}))).await, 422).await;
    assert_eq!(p.expected_sha256.unwrap().to_hex(), wrong);
    assert_eq!(p.actual_sha256.unwrap(), digest(&file));
    let failed = api.status(id).await;
    assert_eq!(failed.state, UploadState::Failed);
    problem(api.content(id, None).await, 409).await;
    problem(api.complete(id, None).await, 422).await;

    let (code, _) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::NOT_FOUND, "a failed upload was published");
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
    assert_eq!(
        multipart_uploads(&s3, &format!("uploads/{id}/")).await,
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    assert_eq!(
        list_keys(&s3, &chunks_prefix(id)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list_keys(&s3, &format!("uploads/{id}/")).await,
        vec![format!("uploads/{id}/record.json")],
        "only the failed record stays"
    );
}

// ---------------------------------------------------------------------------------------
// 3. Cancel.
// ---------------------------------------------------------------------------------------

/// Cancel: 204, then 410 for everything; the multipart upload is aborted and no chunk
/// receipt is left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn cancel_aborts_the_multipart_upload() {
    let Some(s3) = s3_or_skip("cancel_aborts_the_multipart_upload").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(2 * CS + 10, 3));
    let chunks = chunks_of(&file);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;
    api.put_ok(id, 0, chunks[0].clone()).await;
    api.put_ok(id, 2, chunks[2].clone()).await;
    assert_eq!(receipt_keys(&s3, id).await.len(), 2);
    assert_eq!(
        multipart_uploads(&s3, &format!("uploads/{id}/")).await,
        vec![staging_key(id)]
    );

    let resp = api.delete(id).await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    problem(api.status_resp(id).await, 410).await;
    problem(api.delete(id).await, 410).await;
    problem(api.put(id, 1, chunks[1].clone()).await, 410).await;
    // (complete → 410: see `complete_answers_at_once_with_chunks_ahead_of_the_prefix`.)

    assert_eq!(
        multipart_uploads(&s3, &format!("uploads/{id}/")).await,
        Vec::<String>::new(),
        "multipart upload not aborted"
    );
    assert_eq!(
        list_keys(&s3, &chunks_prefix(id)).await,
        Vec::<String>::new()
    );
    assert_eq!(
        list_keys(&s3, &format!("uploads/{id}/")).await,
        vec![format!("uploads/{id}/record.json")],
        "only the tombstone record stays"
    );
    assert_eq!(list_keys(&s3, "files/").await, Vec::<String>::new());
}

// ---------------------------------------------------------------------------------------
// 4. Three servers on one bucket.
// ---------------------------------------------------------------------------------------

/// Three `upload-server` processes on one bucket: chunks round-robin in parallel, the
/// same status from each, `kill -9` of one while it streams a chunk to the store, the rest
/// through the other two, a fresh third instance, then three simultaneous completes: one
/// completion, the right SHA-256, one object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn three_servers_share_one_bucket() {
    let Some(s3) = s3_or_skip("three_servers_share_one_bucket").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (mut c, _dc) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(4 * CS + 777_777, 4));
    let chunks = chunks_of(&file);
    assert_eq!(chunks.len(), 5);

    let apis = [Api::new(&a), Api::new(&b), Api::new(&c)];
    let st = apis[1]
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;

    // Chunks 2, 1, 0 round-robin over the three, in parallel.
    let mut tasks = tokio::task::JoinSet::new();
    for (n, i) in [2usize, 1, 0].into_iter().enumerate() {
        let api = apis[n % 3].clone();
        let chunk = chunks[i].clone();
        tasks.spawn(async move { api.put_ok(id, i as u64, chunk).await });
    }
    while let Some(r) = tasks.join_next().await {
        r.expect("chunk task");
    }
    let seen = [
        apis[0].status(id).await,
        apis[1].status(id).await,
        apis[2].status(id).await,
    ];
    assert_eq!(seen[0], seen[1], "status from A and B differ");
    assert_eq!(seen[0], seen[2], "status from A and C differ");
    assert_eq!(seen[0].received_bytes, 3 * CS as u64);
    assert_eq!(seen[0].missing, vec![[3, 4]]);

    // C dies while it streams chunk 3 to the store: the chunk is not acknowledged.
    let written_before = bytes_written(c.pid());
    let mut conn = tokio::net::TcpStream::connect(&c.addr).await.unwrap();
    let head = format!(
        "PUT /v1/uploads/{id}/chunks/3 HTTP/1.1\r\nHost: {}\r\nContent-Length: {CS}\r\n\r\n",
        c.addr
    );
    conn.write_all(head.as_bytes()).await.unwrap();
    conn.write_all(&chunks[3][..3 * MIB]).await.unwrap();
    conn.flush().await.unwrap();
    let pid = c.pid();
    wait_until(
        Duration::from_secs(10),
        "C to stream 2 MiB of chunk 3 to the store",
        || async { bytes_written(pid) >= written_before + 2 * MIB as u64 },
    )
    .await;
    c.kill9();
    drop(conn);
    let after_kill = apis[0].status(id).await;
    assert_eq!(after_kill.missing, vec![[3, 4]], "a chunk C never finished");
    assert_eq!(after_kill.received_bytes, 3 * CS as u64);

    // The rest through A and B, in parallel.
    let (r3, r4) = tokio::join!(
        apis[0].put_ok(id, 3, chunks[3].clone()),
        apis[1].put_ok(id, 4, chunks[4].clone()),
    );
    let ((), ()) = (r3, r4);

    // A fresh third instance; the status is the same from all three.
    let (c2, _dc2) = upload_server(&s3, &[]);
    let apis = [apis[0].clone(), apis[1].clone(), Api::new(&c2)];
    let seen = [
        apis[0].status(id).await,
        apis[1].status(id).await,
        apis[2].status(id).await,
    ];
    assert_eq!(seen[0], seen[1]);
    assert_eq!(seen[0], seen[2]);
    assert_eq!(seen[0].received_bytes, file.len() as u64);
    assert!(seen[0].missing.is_empty(), "{:?}", seen[0].missing);

    // Three simultaneous completes.
    let answers = futures_util::future::join_all(apis.iter().map(|api| async move {
        let resp = api.complete(id, None).await;
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        (code, text)
    }))
    .await;
    for (code, text) in &answers {
        assert!(
            *code == 200 || *code == 202,
            "complete answered {code}: {text}"
        );
    }
    eprintln!(
        "three completes answered {:?}",
        answers.iter().map(|(c, _)| *c).collect::<Vec<_>>()
    );
    assert!(
        answers.iter().any(|(code, _)| *code == 200),
        "no complete answered 200: {answers:?}"
    );
    for api in &apis {
        wait_until(
            Duration::from_secs(20),
            "the upload to be completed",
            || {
                let api = api.clone();
                async move { api.status(id).await.state == UploadState::Completed }
            },
        )
        .await;
        let st = api.status(id).await;
        assert_eq!(st.sha256, Some(digest(&file)));
    }
    let servers = [&a, &b, &c2];
    let mut lines = Vec::new();
    for s in servers {
        lines.extend(completed_lines(&synced_logs(s).await, id));
    }
    lines.extend(completed_lines(&c.logs(), id));
    assert_eq!(lines.len(), 1, "completions: {lines:#?}");

    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
    let (code, published) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(sha256_hex(&published), sha256_hex(&file));
    assert_eq!(
        multipart_uploads(&s3, &format!("uploads/{id}/")).await,
        Vec::<String>::new()
    );
    apis[2].assert_content(id, &file).await;
}

/// Two servers race on one chunk with different bytes: one outcome. Exactly one request
/// is acknowledged (201), the other gets 409, the status names the winner's bytes, and
/// completion publishes the winner's bytes. Several rounds (one-chunk uploads of 1000
/// bytes), anomalies reported together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_servers_race_on_one_chunk_with_different_bytes() {
    let Some(s3) = s3_or_skip("two_servers_race_on_one_chunk_with_different_bytes").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let apis = [Api::new(&a), Api::new(&b)];
    const ROUNDS: u64 = 12;
    let mut anomalies = Vec::new();
    let mut codes_seen = std::collections::BTreeMap::new();
    for round in 0..ROUNDS {
        let x = Bytes::from(random_bytes(1000, 100 + 2 * round));
        let y = Bytes::from(random_bytes(1000, 101 + 2 * round));
        let st = apis[0].create(json!({"size": 1000})).await;
        let id = st.id;
        // A racer told 503 ("being written elsewhere") retries, as clients do, until it
        // gets a final answer.
        let put_final = |api: &Api, bytes: Bytes| {
            let api = api.clone();
            async move {
                let deadline = Instant::now() + Duration::from_secs(40);
                loop {
                    let code = api.put(id, 0, bytes.clone()).await.status().as_u16();
                    if code != 503 || Instant::now() > deadline {
                        return code;
                    }
                    tokio::time::sleep(Duration::from_millis(200)).await;
                }
            }
        };
        let codes = tokio::join!(
            put_final(&apis[0], x.clone()),
            put_final(&apis[1], y.clone())
        );
        *codes_seen.entry(codes).or_insert(0) += 1;
        let winner = match codes {
            (201, 409) => Some(&x),
            (409, 201) => Some(&y),
            _ => None,
        };
        let Some(winner) = winner else {
            anomalies.push(format!("round {round}: PUT answers {codes:?} (A, B)"));
            continue;
        };
        let st = apis[1].status(id).await;
        if st.received_bytes != 1000 || !st.missing.is_empty() {
            anomalies.push(format!("round {round}: status {st:?}"));
            continue;
        }
        let resp = apis[(round % 2) as usize].complete(id, None).await;
        let code = resp.status().as_u16();
        let text = resp.text().await.unwrap_or_default();
        if code != 200 {
            let again = apis[0].complete(id, None).await.status().as_u16();
            let later = apis[0].status(id).await;
            let cause = [&a, &b]
                .iter()
                .flat_map(|s| {
                    s.logs()
                        .lines()
                        .filter(|l| l.contains(&id.to_string()) && l.contains("refused"))
                        .map(|l| {
                            let at = l.find("Server returned").unwrap_or(0);
                            l[at..].chars().take(60).collect::<String>()
                        })
                        .collect::<Vec<_>>()
                })
                .next()
                .unwrap_or_default();
            anomalies.push(format!(
                "round {round}: PUT answers {codes:?}, complete answered {code}, then {again}; \
                 state now {:?}; log: {cause}",
                later.state
            ));
            continue;
        }
        let done: UploadStatus = serde_json::from_str(&text).expect("status JSON");
        if done.sha256 != Some(digest(winner)) {
            anomalies.push(format!(
                "round {round}: PUT answers {codes:?}, completed with {:?}, the acknowledged \
                 bytes are {}",
                done.sha256,
                digest(winner)
            ));
            continue;
        }
        let body = apis[0].content(id, None).await.bytes().await.unwrap();
        if body != *winner {
            anomalies.push(format!(
                "round {round}: content is not the acknowledged bytes"
            ));
        }
    }
    eprintln!("chunk race: (A, B) answers over {ROUNDS} rounds: {codes_seen:?}");
    assert!(
        anomalies.is_empty(),
        "{} of {ROUNDS} rounds went wrong:\n{}",
        anomalies.len(),
        anomalies.join("\n")
    );
}

// ---------------------------------------------------------------------------------------
// 5. Expiry.
// ---------------------------------------------------------------------------------------

/// `--upload-ttl 2s`: an idle upload becomes 410, its multipart upload is aborted and its
/// chunk receipts are removed.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn expiry_aborts_the_multipart_upload() {
    let Some(s3) = s3_or_skip("expiry_aborts_the_multipart_upload").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &["--upload-ttl", "2s"]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(CS + 5, 5));
    let chunks = chunks_of(&file);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;
    api.put_ok(id, 0, chunks[0].clone()).await;
    assert_eq!(receipt_keys(&s3, id).await.len(), 1);
    assert_eq!(
        multipart_uploads(&s3, &format!("uploads/{id}/")).await,
        vec![staging_key(id)]
    );
    let started = Instant::now();

    wait_until(
        Duration::from_secs(20),
        "the upload to expire (410)",
        || {
            let api = api.clone();
            async move { api.status_resp(id).await.status() == StatusCode::GONE }
        },
    )
    .await;
    let expired_after = started.elapsed();
    assert!(
        expired_after >= Duration::from_secs(1),
        "expired after only {expired_after:?}"
    );
    // The record turns into a tombstone first, then the bytes go.
    wait_until(
        Duration::from_secs(10),
        "the multipart upload to be aborted",
        || async {
            multipart_uploads(&s3, &format!("uploads/{id}/"))
                .await
                .is_empty()
        },
    )
    .await;
    // The upload's objects go one after another: wait until only the tombstone is left.
    wait_until(
        Duration::from_secs(10),
        "every object but the tombstone record to go",
        || async { list_keys(&s3, &format!("uploads/{id}/")).await.len() == 1 },
    )
    .await;
    assert_eq!(
        list_keys(&s3, &format!("uploads/{id}/")).await,
        vec![format!("uploads/{id}/record.json")],
        "only the tombstone record stays"
    );
    problem(api.put(id, 1, chunks[1].clone()).await, 410).await;
    // Logged once the sweep's discard returned, which may be after the last object went.
    wait_until(Duration::from_secs(10), "the expiry log line", || async {
        synced_logs(&server)
            .await
            .lines()
            .any(|l| l.contains("upload expired") && l.contains(&id.to_string()))
    })
    .await;
    eprintln!("expiry: 410 after {expired_after:?} (ttl 2s)");
}

// ---------------------------------------------------------------------------------------
// 6. Bytes read back at completion.
// ---------------------------------------------------------------------------------------

/// Sends `order` of `chunks` one after the other through `api`.
async fn put_in_order(api: &Api, id: UploadId, chunks: &[Bytes], order: &[usize]) {
    for &i in order {
        api.put_ok(id, i as u64, chunks[i].clone()).await;
    }
}

/// The ETag of the published object of `id`: a multipart copy's ends in `-{parts}`.
async fn published_etag(s3: &S3Server, id: UploadId) -> String {
    let head = s3
        .client()
        .head(s3.url(&format!("/{}/{}", s3.bucket(), file_key(id))))
        .send()
        .await
        .unwrap();
    assert_eq!(head.status(), StatusCode::OK, "files/{id} is there");
    header(head.headers(), "etag").trim_matches('"').to_string()
}

/// Completes `id` on `server`, checks the content, and returns `read_back_at_completion`
/// from its "upload completed" log line.
async fn complete_and_read_back(server: &Server, id: UploadId, file: &[u8]) -> u64 {
    let api = Api::new(server);
    api.complete_ok(id, file).await;
    let lines = completed_lines(&synced_logs(server).await, id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    api.assert_content(id, file).await;
    log_field(&lines[0], "read_back_at_completion")
}

/// Bytes read back from the store at completion (the `read_back_at_completion` field of
/// the "upload completed" log line): none for an in-order upload on one connection, none
/// in reverse order either (chunks ahead of the hashed prefix keep their bytes until their
/// turn), and, when the process keeping them dies (`kill -9`), exactly the chunks it kept,
/// with the right SHA-256 all the same.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn read_back_at_completion() {
    let Some(s3) = s3_or_skip("read_back_at_completion").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let api = Api::new(&a);
    let size = 2 * CS + 4321;
    let mut figures = Vec::new();

    // In order, one connection.
    let file = Bytes::from(random_bytes(size, 6));
    let chunks = chunks_of(&file);
    let id = api.create(json!({"size": size, "chunk_size": CS})).await.id;
    put_in_order(&api, id, &chunks, &[0, 1, 2]).await;
    let n = complete_and_read_back(&a, id, &file).await;
    figures.push(("in order", n));
    assert_eq!(n, 0, "in order");

    // Reverse order, one connection.
    let file = Bytes::from(random_bytes(size, 7));
    let chunks = chunks_of(&file);
    let id = api.create(json!({"size": size, "chunk_size": CS})).await.id;
    put_in_order(&api, id, &chunks, &[2, 1, 0]).await;
    let n = complete_and_read_back(&a, id, &file).await;
    figures.push(("reverse", n));
    assert!(n <= (size - CS) as u64, "reverse: {n}");

    // Chunks 2 and 1 through B, which dies keeping them; chunk 0 through A.
    let (mut b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(size, 8));
    let chunks = chunks_of(&file);
    let id = api.create(json!({"size": size, "chunk_size": CS})).await.id;
    put_in_order(&Api::new(&b), id, &chunks, &[2, 1]).await;
    b.kill9();
    put_in_order(&api, id, &chunks, &[0]).await;
    let n = complete_and_read_back(&a, id, &file).await;
    figures.push(("reverse, keeper killed", n));
    assert_eq!(n, (size - CS) as u64, "chunks 1 and 2 are read back");

    eprintln!("read back at completion ({size} bytes, {CS} B chunks): {figures:?}");
}

// ---------------------------------------------------------------------------------------
// 7. Idempotency-Key.
// ---------------------------------------------------------------------------------------

async fn create_with_key(api: &Api, key: &str, body: &Value) -> (u16, String) {
    let resp = api
        .http
        .post(api.url("/v1/uploads"))
        .header(CONTENT_TYPE, "application/json")
        .header("idempotency-key", key)
        .body(body.to_string())
        .send()
        .await
        .expect("POST /v1/uploads");
    let code = resp.status().as_u16();
    (code, resp.text().await.unwrap_or_default())
}

fn id_of(text: &str) -> UploadId {
    serde_json::from_str::<UploadStatus>(text)
        .unwrap_or_else(|e| panic!("{e}: {text}"))
        .id
}

/// Same key and body: 200 with the same id (from either of two servers); another body:
/// 422, nothing created.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn idempotency_key_on_s3() {
    let Some(s3) = s3_or_skip("idempotency_key_on_s3").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let (api_a, api_b) = (Api::new(&a), Api::new(&b));
    let body = json!({"size": 1000, "filename": "a.txt"});

    let (code, text) = create_with_key(&api_a, "key-1", &body).await;
    assert_eq!(code, 201, "{text}");
    let first = id_of(&text);
    for api in [&api_a, &api_b] {
        let (code, text) = create_with_key(api, "key-1", &body).await;
        assert_eq!(code, 200, "{text}");
        assert_eq!(id_of(&text), first);
    }
    let other = json!({"size": 1001, "filename": "a.txt"});
    let resp = api_b
        .http
        .post(api_b.url("/v1/uploads"))
        .header(CONTENT_TYPE, "application/json")
        .header("idempotency-key", "key-1")
        .body(other.to_string())
        .send()
        .await
        .unwrap();
    problem(resp, 422).await;

    // One upload, one multipart upload, one claim in the bucket.
    assert_eq!(
        list_keys(&s3, "uploads/").await,
        vec![format!("uploads/{first}/record.json")]
    );
    assert_eq!(
        multipart_uploads(&s3, "uploads/").await,
        vec![staging_key(first)]
    );
    let claims = list_keys(&s3, "idempotency/").await;
    assert_eq!(claims.len(), 1, "{claims:?}");
    assert!(claims[0].ends_with(".json"), "{claims:?}");
    assert!(
        !claims[0].contains("key-1"),
        "the key itself is not in the name"
    );

    // The upload behind the key works.
    let file = random_bytes(1000, 8);
    api_b.put_ok(first, 0, Bytes::from(file.clone())).await;
    api_a.complete_ok(first, &file).await;
}

/// Concurrent creates under one new key, spread over two servers: one upload, every
/// answer 200/201 with its id, and one multipart upload in the bucket. A race shows only
/// sometimes, so several rounds run and the anomalies of all are reported together.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_idempotent_creates_on_two_servers() {
    let Some(s3) = s3_or_skip("concurrent_idempotent_creates_on_two_servers").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let apis = [Api::new(&a), Api::new(&b)];
    let body = json!({"size": 1000, "filename": "a.txt"});
    const ROUNDS: usize = 20;
    let mut anomalies = Vec::new();
    for round in 0..ROUNDS {
        let key = format!("race-{round}");
        let answers = futures_util::future::join_all(
            (0..8).map(|n| create_with_key(&apis[n % 2], &key, &body)),
        )
        .await;
        let created = answers.iter().filter(|(c, _)| *c == 201).count();
        let ids: Vec<UploadId> = answers
            .iter()
            .filter(|(c, _)| *c == 200 || *c == 201)
            .map(|(_, t)| id_of(t))
            .collect();
        assert!(!ids.is_empty(), "round {round}: {answers:#?}");
        let others: Vec<&(u16, String)> = answers
            .iter()
            .filter(|(c, _)| *c != 200 && *c != 201)
            .collect();
        let multiparts = multipart_uploads(&s3, &format!("uploads/{}/", ids[0])).await;
        if created != 1
            || !others.is_empty()
            || ids.iter().any(|i| *i != ids[0])
            || multiparts.len() != 1
        {
            anomalies.push(format!(
                "round {round}: {created} × 201, other answers {others:?}, ids {:?}, \
                 {} multipart uploads for {}",
                ids.iter().collect::<std::collections::BTreeSet<_>>(),
                multiparts.len(),
                ids[0]
            ));
        }
    }
    assert!(
        anomalies.is_empty(),
        "{} of {ROUNDS} rounds went wrong:\n{}",
        anomalies.len(),
        anomalies.join("\n")
    );
    assert_eq!(list_keys(&s3, "idempotency/").await.len(), ROUNDS);
    assert_eq!(multipart_uploads(&s3, "uploads/").await.len(), ROUNDS);
}

// ---------------------------------------------------------------------------------------
// 8. Store outage.
// ---------------------------------------------------------------------------------------

/// The S3 server goes down mid-upload: a chunk PUT fails with a server error within
/// seconds (not after object_store's default 180 s of retries), `/readyz` is 503,
/// nothing acknowledged is lost, and once the store is back the upload completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_outage_mid_upload() {
    let Some(s3) = s3_with_gateway_or_skip("store_outage_mid_upload").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(2 * CS + 999, 9));
    let chunks = chunks_of(&file);
    let st = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await;
    let id = st.id;
    api.put_ok(id, 0, chunks[0].clone()).await;

    s3.go_down();
    let t = Instant::now();
    let resp = api.put(id, 1, chunks[1].clone()).await;
    let put_elapsed = t.elapsed();
    let put_code = resp.status().as_u16();
    let retry_after = resp
        .headers()
        .get("retry-after")
        .map(|v| v.to_str().unwrap_or("").to_string());
    let ctype = resp
        .headers()
        .get(CONTENT_TYPE)
        .map(|v| v.to_str().unwrap_or("").to_string());
    let text = resp.text().await.unwrap_or_default();
    assert!(
        put_code == 500 || put_code == 503,
        "chunk PUT during the outage answered {put_code}: {text}"
    );
    assert_eq!(ctype.as_deref(), Some(common::PROBLEM_JSON), "{text}");
    assert!(
        put_elapsed < Duration::from_secs(15),
        "chunk PUT during the outage took {put_elapsed:?}"
    );

    let t = Instant::now();
    let resp = api.status_resp(id).await;
    let status_elapsed = t.elapsed();
    let status_code = resp.status().as_u16();
    assert!(
        status_code == 500 || status_code == 503,
        "status during the outage answered {status_code}"
    );

    let t = Instant::now();
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    let readyz_elapsed = t.elapsed();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    eprintln!(
        "outage: chunk PUT {put_code} in {put_elapsed:?} (Retry-After {retry_after:?}); \
         status {status_code} in {status_elapsed:?}; readyz 503 in {readyz_elapsed:?}"
    );

    s3.come_up();
    wait_until(Duration::from_secs(10), "/readyz to be 200 again", || {
        let api = api.clone();
        async move {
            api.http
                .get(api.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    // Chunk 0 (acknowledged) is still there; chunk 1 (refused) is not.
    let now = api.status(id).await;
    assert_eq!(now.state, UploadState::Uploading);
    assert_eq!(now.received_bytes, CS as u64);
    assert_eq!(now.missing, vec![[1, 2]]);
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.put_ok(id, 2, chunks[2].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
}

/// While the store keeps failing, a circuit breaker answers at once (within a second)
/// with 503 + `Retry-After` (problem+json), `/readyz` is 503, and it closes by itself once
/// the store is back. Requests before it opens are reported (they answer 500 or 503).
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_outage_opens_the_circuit_breaker() {
    let Some(s3) = s3_with_gateway_or_skip("store_outage_opens_the_circuit_breaker").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(CS + 1, 10));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    api.put_ok(id, 0, chunks[0].clone()).await;
    s3.go_down();
    let down = Instant::now();
    // Until the breaker opens: each request waits out the store client's retries.
    let mut before = Vec::new();
    loop {
        let t = Instant::now();
        let resp = api.status_resp(id).await;
        let code = resp.status().as_u16();
        let retry_after = resp.headers().contains_key("retry-after");
        before.push((code, retry_after, t.elapsed()));
        assert!(
            code == 500 || code == 503,
            "status during the outage: {code}"
        );
        if code == 503 && retry_after {
            break;
        }
        assert!(before.len() <= 10, "the breaker never opened: {before:?}");
    }
    let opened_after = down.elapsed();
    // Open: every request is answered at once.
    for _ in 0..3 {
        let t = Instant::now();
        let resp = api.put(id, 1, chunks[1].clone()).await;
        let elapsed = t.elapsed();
        let retry_after = header(resp.headers(), "retry-after");
        assert!(
            retry_after
                .parse::<u64>()
                .is_ok_and(|s| (1..=60).contains(&s)),
            "Retry-After {retry_after}"
        );
        problem(resp, 503).await;
        assert!(elapsed < Duration::from_secs(1), "took {elapsed:?}");
    }
    let resp = api.http.get(api.url("/readyz")).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::SERVICE_UNAVAILABLE);
    eprintln!(
        "breaker: answers before it opened (code, Retry-After, time) {before:?}; \
         open after {opened_after:?}"
    );

    s3.come_up();
    let up = Instant::now();
    wait_until(Duration::from_secs(15), "the breaker to close", || {
        let api = api.clone();
        async move {
            api.http
                .get(api.url("/readyz"))
                .send()
                .await
                .is_ok_and(|r| r.status() == StatusCode::OK)
        }
    })
    .await;
    eprintln!(
        "breaker: closed {:?} after the store came back",
        up.elapsed()
    );
    let now = api.status(id).await;
    assert_eq!(now.received_bytes, CS as u64, "chunk 0 kept");
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
}

/// A complete that cannot succeed answers at once, even with chunks ahead of the hashed
/// prefix kept in memory waiting for their turn: chunks missing → 409, cancelled → 410.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn complete_answers_at_once_with_chunks_ahead_of_the_prefix() {
    let Some(s3) = s3_or_skip("complete_answers_at_once_with_chunks_ahead_of_the_prefix").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(2 * CS + 10, 11));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    api.put_ok(id, 2, chunks[2].clone()).await;

    let t = Instant::now();
    let p = problem(api.complete(id, None).await, 409).await;
    let premature = t.elapsed();
    assert_eq!(p.missing, Some(vec![[0, 1]]));
    assert!(
        premature < Duration::from_secs(2),
        "premature complete took {premature:?}"
    );

    assert_eq!(api.delete(id).await.status(), StatusCode::NO_CONTENT);
    let t = Instant::now();
    problem(api.complete(id, None).await, 410).await;
    let cancelled = t.elapsed();
    assert!(
        cancelled < Duration::from_secs(2),
        "complete after cancel took {cancelled:?}"
    );
}

/// Faults at the store, injected by a proxy between `upload-server` and the S3 server
/// (seeded): UploadPart requests reset mid-body, stalled, answered 503, or completed with
/// the answer dropped (the part is stored but the server never hears it); then the same
/// on every request at a lower rate, CompleteMultipartUpload and the conditional writes
/// included; then CompleteMultipartUpload alone, its answer dropped after the store joined
/// the parts, every time (the server's retries are answered no better; the client's retry
/// of the completion finds the joined object there). A client that retries what it is told to retry finishes every upload with
/// the right SHA-256 and one published object; nothing acknowledged goes missing.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn store_faults_are_survived() {
    use tests::proxy::{Fault, Faults, Proxy};
    let Some(s3) = s3_or_skip("store_faults_are_survived").await else {
        return;
    };
    let scenarios = [
        (
            "UploadPart",
            "partNumber=",
            vec![
                Fault::Reset,
                Fault::Stall,
                Fault::Unavailable,
                Fault::DropResponse,
            ],
            0.3,
        ),
        (
            "every request",
            "/",
            vec![Fault::Reset, Fault::Unavailable, Fault::DropResponse],
            0.08,
        ),
        // Only CompleteMultipartUpload has this in its URL (UploadPart's query begins
        // with its part number; ListParts and aborts are not sent on this path).
        (
            "CompleteMultipartUpload, stored but its answer dropped",
            "staging?uploadId=",
            vec![Fault::DropResponse],
            1.0,
        ),
    ];
    for (n, (what, matching, kinds, rate)) in scenarios.into_iter().enumerate() {
        let proxy = Proxy::start(
            s3.endpoint.trim_start_matches("http://"),
            Faults {
                rate,
                matching: matching.into(),
                kinds,
                seed: 900 + n as u64,
                stall_hold: Duration::from_secs(2),
                tamper_complete: false,
            },
        );
        let (server, _dir) = upload_server_via(&s3, &proxy.url(), &[]);
        let api = Api::new(&server);
        for round in 0..3u64 {
            let file = Bytes::from(random_bytes(3 * CS + 4321, 70 + 10 * n as u64 + round));
            let chunks = chunks_of(&file);
            // Creating is retried too: its record write may meet a fault.
            let id = retry(what, "create", || async {
                let resp = api
                    .http
                    .post(api.url("/v1/uploads"))
                    .header("idempotency-key", format!("faults-{n}-{round}"))
                    .json(&json!({"size": file.len(), "chunk_size": CS}))
                    .send()
                    .await
                    .ok()?;
                if !resp.status().is_success() {
                    return None;
                }
                let st: UploadStatus = resp.json().await.ok()?;
                Some(st.id)
            })
            .await;
            for (i, chunk) in chunks.iter().enumerate() {
                retry(what, "chunk", || async {
                    let resp = api
                        .http
                        .put(api.url(&format!("/v1/uploads/{id}/chunks/{i}")))
                        .header("content-digest", digest(chunk).to_header())
                        .body(chunk.clone())
                        .send()
                        .await
                        .ok()?;
                    let code = resp.status();
                    assert!(
                        code.is_success() || code.is_server_error(),
                        "{what}: chunk {i} answered {code}: {}",
                        resp.text().await.unwrap_or_default()
                    );
                    code.is_success().then_some(())
                })
                .await;
                // Acknowledged means stored: the status says so at once.
                let st = retry(what, "status", || async {
                    let resp = api.status_resp(id).await;
                    if !resp.status().is_success() {
                        return None;
                    }
                    resp.json::<UploadStatus>().await.ok()
                })
                .await;
                assert!(
                    !common::ranges::iter_ranges(&st.missing).any(|m| m == i as u64),
                    "{what}: acknowledged chunk {i} is missing: {:?}",
                    st.missing
                );
            }
            let done = retry(what, "complete", || async {
                let resp = api.complete(id, None).await;
                let code = resp.status();
                let st: UploadStatus = match code.as_u16() {
                    200 | 202 => resp.json().await.ok()?,
                    500..=599 => return None,
                    _ => panic!(
                        "{what}: complete answered {code}: {}",
                        resp.text().await.unwrap_or_default()
                    ),
                };
                (st.state == UploadState::Completed).then_some(st)
            })
            .await;
            assert_eq!(done.sha256, Some(digest(&file)), "{what}");
            let body = retry(what, "download", || async {
                let resp = api.content(id, None).await;
                if !resp.status().is_success() {
                    return None;
                }
                resp.bytes().await.ok()
            })
            .await;
            assert!(body == file, "{what}: downloaded bytes differ");
            assert!(
                list_keys(&s3, "files/").await.contains(&file_key(id)),
                "{what}: no published object"
            );
        }
        let faults = proxy.stats().faults();
        eprintln!("store faults ({what}): {faults} injected");
        assert!(faults >= 3, "{what}: only {faults} faults were injected");
        tests::tally(
            &format!("s3-store-faults-{n}"),
            "fault",
            &format!("S3 store ({what})"),
            faults,
        );
    }
}

/// Calls `attempt` until it gives `Some` (at most 60 s, 200 ms apart): a client retrying
/// 5xx answers and broken connections.
async fn retry<T, F, Fut>(what: &str, step: &str, mut attempt: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        if let Some(v) = attempt().await {
            return v;
        }
        assert!(Instant::now() < deadline, "{what}: {step} kept failing");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// The store down for 10 s in the middle of a CLI upload: meanwhile the server
/// refuses requests with a 5xx instead of hanging, the CLI keeps retrying (honouring
/// `Retry-After`), and once the store is back the same upload completes with the right
/// SHA-256 and exactly one published object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_cli_outlasts_the_store_down_for_ten_seconds() {
    use std::io::BufRead;
    let Some(s3) = s3_with_gateway_or_skip("the_cli_outlasts_the_store_down_for_ten_seconds").await
    else {
        return;
    };
    let (server, dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = random_bytes(8 * CS + 123, 77);
    let path = dir.path().join("file.bin");
    std::fs::write(&path, &file).unwrap();
    let mut cmd = std::process::Command::new(tests::bin_path("uploader"));
    for (k, _) in std::env::vars() {
        if k.starts_with("UPLOADER_") {
            cmd.env_remove(k);
        }
    }
    let mut child = cmd
        .env("UPLOADER_STATE_DIR", dir.path().join("cli-state"))
        .args(["--server", &server.url(), "--json", "upload", "-j", "2"])
        .args([
            "--chunk-size",
            "5MiB",
            "--retries",
            "100",
            "--retry-max-delay",
            "1s",
        ])
        .arg(&path)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("spawn uploader");
    let stdout = child.stdout.take().unwrap();
    let (tx, events) = std::sync::mpsc::channel::<Value>();
    std::thread::spawn(move || {
        for line in std::io::BufReader::new(stdout)
            .lines()
            .map_while(Result::ok)
        {
            if let Ok(v) = serde_json::from_str(&line) {
                if tx.send(v).is_err() {
                    break;
                }
            }
        }
    });
    // Down once the first chunk is acknowledged.
    let mut id = None;
    let mut seen = Vec::new();
    loop {
        let v = events
            .recv_timeout(Duration::from_secs(60))
            .expect("the CLI reports progress");
        if let Some(i) = v["id"].as_str() {
            id = Some(i.parse::<UploadId>().unwrap());
        }
        let progressed = v["event"] == "progress" && v["bytes"].as_u64().unwrap_or(0) > 0;
        seen.push(v);
        if progressed {
            break;
        }
    }
    let id = id.expect("the CLI named its upload");
    s3.go_down();
    let down = Instant::now();
    let during = api.status_resp(id).await.status();
    assert!(
        during.is_server_error(),
        "status with the store down answered {during}"
    );
    // The outage lasts 10 s: this sleep is the fault's duration, not a synchronisation.
    tokio::time::sleep(Duration::from_secs(10).saturating_sub(down.elapsed())).await;
    s3.come_up();
    let out = tokio::task::spawn_blocking(move || child.wait_with_output())
        .await
        .unwrap()
        .unwrap();
    // The reader ends at the CLI's end of output.
    seen.extend(events.iter());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "the CLI failed ({}): {stderr}\n{:?}",
        out.status,
        seen.iter().rev().take(5).collect::<Vec<_>>()
    );
    let done = seen
        .iter()
        .find(|v| v["event"] == "completed")
        .unwrap_or_else(|| panic!("no completed event: {seen:?}"));
    assert_eq!(done["sha256"], sha256_hex(&file).as_str());
    let retries = seen.iter().filter(|v| v["event"] == "retry").count();
    assert!(retries > 0, "the outage caused no retry");
    eprintln!("store down 10 s: the CLI retried {retries} times and finished");
    assert_eq!(list_keys(&s3, "files/").await, vec![file_key(id)]);
    api.assert_content(id, &file).await;
    tests::tally(
        "s3-store-down",
        "fault",
        "S3 store down for 10 s during a CLI upload (requests it failed and the CLI retried)",
        retries as u64,
    );
}

/// A writer that dies after claiming its chunk but before releasing the chunk's lease
/// leaves the lease behind until it expires; a retry of that stored chunk (its answer was
/// lost with the writer) must still be answered at once as a retry (200), not refused
/// until the lease expires. Found by the three-server crash loop.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_retry_of_a_stored_chunk_ignores_a_lease_left_behind() {
    let Some(s3) = s3_or_skip("a_retry_of_a_stored_chunk_ignores_a_lease_left_behind").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(CS + 17, 78));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    api.put_ok(id, 0, chunks[0].clone()).await;
    // The lease of a writer on another process that will never come back, far from expiry.
    let until = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
        + 3600;
    let lease = format!("/{}/{}00000/lease", s3.bucket(), chunks_prefix(id));
    let put = s3
        .client()
        .put(s3.url(&lease))
        .body(format!("dead-process-write {until}"))
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    let retry = api.put(id, 0, chunks[0].clone()).await;
    assert_eq!(
        retry.status(),
        StatusCode::OK,
        "a retry of the stored chunk"
    );
    // Other bytes for it are still a conflict, not a "retry soon".
    let other = Bytes::from(random_bytes(CS, 79));
    assert_eq!(api.put(id, 0, other).await.status(), StatusCode::CONFLICT);
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
}

/// The multipart upload id an upload's record names.
async fn multipart_id(s3: &S3Server, id: UploadId) -> String {
    let (code, record) = get_object(s3, &format!("uploads/{id}/record.json")).await;
    assert_eq!(code, StatusCode::OK);
    let record: Value = serde_json::from_slice(&record).unwrap();
    record["multipart_id"].as_str().unwrap().to_string()
}

/// The part number that chunk `index`'s claim names (the last field of its receipt name).
async fn claimed_part_number(s3: &S3Server, id: UploadId, index: u64) -> u64 {
    let (code, claim) = get_object(s3, &format!("{}{index:05}/claim", chunks_prefix(id))).await;
    assert_eq!(code, StatusCode::OK, "chunk {index} is claimed");
    let claim = String::from_utf8(claim.to_vec()).unwrap();
    claim.rsplit('.').next().unwrap().parse().unwrap()
}

/// An UploadPart straight to the store, as another writer would send it.
async fn upload_part(
    s3: &S3Server,
    id: UploadId,
    multipart: &str,
    number: u64,
    bytes: Vec<u8>,
) -> Response {
    s3.client()
        .put(s3.url(&format!(
            "/{}/{}?partNumber={number}&uploadId={multipart}",
            s3.bucket(),
            staging_key(id)
        )))
        .body(bytes)
        .send()
        .await
        .unwrap()
}

/// A writer that outlived its lease: its server stalled over 15 s waiting for the store's
/// answer to its UploadPart, so the lease expired, another server took the chunk over and
/// was acknowledged, and only then did the stalled part land (here: an expired lease of
/// generation 0 put in the bucket, the chunk sent through the server, then a part with
/// other bytes sent straight to the store with the first generation's number). The
/// takeover wrote a part number of its own, so the late part is dropped by the join: the
/// upload completes at once with the acknowledged bytes, and nothing is sent again.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_landing_after_its_lease_was_taken_over_changes_nothing() {
    let Some(s3) =
        s3_or_skip("a_part_landing_after_its_lease_was_taken_over_changes_nothing").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(2 * CS + 5, 82));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    let lease = format!("/{}/{}00001/lease", s3.bucket(), chunks_prefix(id));
    let put = s3
        .client()
        .put(s3.url(&lease))
        .body("stalled-process-write 1 0")
        .send()
        .await
        .unwrap();
    assert!(put.status().is_success(), "{}", put.status());
    for (i, c) in chunks.iter().enumerate() {
        api.put_ok(id, i as u64, c.clone()).await;
    }
    let multipart = multipart_id(&s3, id).await;
    let taken_over = claimed_part_number(&s3, id, 1).await;
    let stalled = taken_over - 1;
    assert!(
        stalled > claimed_part_number(&s3, id, 0).await,
        "chunk 1's part numbers come after chunk 0's"
    );
    let late = upload_part(&s3, id, &multipart, stalled, random_bytes(CS, 83)).await;
    assert!(late.status().is_success(), "{}", late.status());
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
}

/// A part that no longer holds the bytes its receipt names (rewritten in the store from
/// outside, as a writer that outlived its lease would where a chunk has one part number
/// only; here the part is overwritten directly in the store): completion finds it when the
/// store refuses to join the parts, forgets that chunk and answers 409 with it missing,
/// instead of failing the upload; once the client sends it again, the upload completes
/// with the right SHA-256.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_part_overwritten_after_its_receipt_is_sent_again_not_fatal() {
    let Some(s3) = s3_or_skip("a_part_overwritten_after_its_receipt_is_sent_again_not_fatal").await
    else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(2 * CS + 5, 80));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    for (i, c) in chunks.iter().enumerate() {
        api.put_ok(id, i as u64, c.clone()).await;
    }
    let multipart = multipart_id(&s3, id).await;
    let part = claimed_part_number(&s3, id, 1).await;
    let late = upload_part(&s3, id, &multipart, part, random_bytes(CS, 81)).await;
    assert!(late.status().is_success(), "{}", late.status());
    let refused = api.complete(id, None).await;
    let p = problem(refused, 409).await;
    assert_eq!(p.missing, Some(vec![[1, 1]]), "{p:?}");
    let st = api.status(id).await;
    assert_eq!(st.state, UploadState::Uploading);
    assert_eq!(st.missing, vec![[1, 1]]);
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
}

/// A file larger than one CopyObject may copy (5 GiB on S3; lowered here to two chunks
/// with `--s3-max-copy-size`) is published by a multipart copy, in parts of that size:
/// the published object is whole (a multipart ETag of 2 parts, where the staging object
/// joined 3 chunks), reads back byte for byte, and no multipart upload is left behind.
/// The chunks go last first, with no memory to keep them until their turn
/// (`--hash-ahead-memory 0`), so the hash reads them back from the staging object.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_file_over_the_copy_limit_is_published_in_parts() {
    let Some(s3) = s3_or_skip("a_file_over_the_copy_limit_is_published_in_parts").await else {
        return;
    };
    let limit = (2 * CS).to_string();
    let (server, _dir) = upload_server(
        &s3,
        &["--s3-max-copy-size", &limit, "--hash-ahead-memory", "0"],
    );
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(2 * CS + 333, 84));
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    put_in_order(&api, id, &chunks_of(&file), &[2, 1, 0]).await;
    assert_eq!(
        complete_and_read_back(&server, id, &file).await,
        (CS + 333) as u64,
        "chunks 1 and 2 are read back"
    );
    let etag = published_etag(&s3, id).await;
    assert!(etag.ends_with("-2"), "ETag {etag}");
    let (code, published) = get_object(&s3, &file_key(id)).await;
    assert_eq!(code, StatusCode::OK);
    assert!(published == file, "the published object differs");
    api.assert_content(id, &file).await;
    assert_eq!(multipart_uploads(&s3, "").await, Vec::<String>::new());
    assert!(!list_keys(&s3, "uploads/").await.contains(&staging_key(id)));
}

/// Begins a multipart upload at `key` straight in the store, as a server that died right
/// after would leave it.
async fn begin_multipart(s3: &S3Server, key: &str) {
    let resp = s3
        .client()
        .post(s3.url(&format!("/{}/{key}?uploads", s3.bucket())))
        .send()
        .await
        .expect("CreateMultipartUpload");
    assert!(resp.status().is_success(), "CreateMultipartUpload {key}");
}

/// Multipart uploads that no upload names are aborted by the sweep once older than
/// `--s3-leftover-grace` (here 1 s, counted from when the server first saw them: moto
/// reports one `Initiated` date, in 2010, for every upload; `--upload-ttl 10s` makes the
/// sweep run every 2.5 s): one begun for an upload whose record was never
/// written (a create that died between its two requests) and one left by a publishing
/// copy in parts that stopped. A live upload's multipart upload stays, and the upload
/// completes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_sweep_aborts_multipart_uploads_nothing_names() {
    let Some(s3) = s3_or_skip("the_sweep_aborts_multipart_uploads_nothing_names").await else {
        return;
    };
    let (never_recorded, stopped_copy) = (UploadId::new_random(), UploadId::new_random());
    begin_multipart(&s3, &staging_key(never_recorded)).await;
    begin_multipart(&s3, &file_key(stopped_copy)).await;
    let mut begun = multipart_uploads(&s3, "").await;
    begun.sort();
    assert_eq!(begun.len(), 2, "{begun:?}");

    let (server, _dir) = upload_server(&s3, &["--s3-leftover-grace", "1s", "--upload-ttl", "10s"]);
    let api = Api::new(&server);
    let file = Bytes::from(random_bytes(CS + 7, 91));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    api.put_ok(id, 0, chunks[0].clone()).await;
    wait_until(
        Duration::from_secs(20),
        "the two leftovers to be aborted",
        || async { multipart_uploads(&s3, "").await == vec![staging_key(id)] },
    )
    .await;
    api.put_ok(id, 1, chunks[1].clone()).await;
    api.complete_ok(id, &file).await;
    api.assert_content(id, &file).await;
    let logs = synced_logs(&server).await;
    let aborted: Vec<&str> = logs
        .lines()
        .filter(|l| l.contains("aborted a multipart upload nothing names"))
        .collect();
    assert_eq!(aborted.len(), 2, "{aborted:#?}");
    for key in [staging_key(never_recorded), file_key(stopped_copy)] {
        assert!(
            aborted.iter().any(|l| l.contains(&key)),
            "{key} not among {aborted:#?}"
        );
    }
}

// ---------------------------------------------------------------------------------------
// tus (in-order appends) on S3: short appends held as pieces until a part can be written.
// ---------------------------------------------------------------------------------------

const OCTETS: &str = "application/offset+octet-stream";

/// `POST /files/` with `Upload-Length`: the upload's path.
async fn tus_create(server: &Server, len: usize) -> String {
    let resp = client()
        .post(format!("{}/files/", server.url()))
        .header("tus-resumable", "1.0.0")
        .header("upload-length", len.to_string())
        .send()
        .await
        .expect("tus POST");
    assert_eq!(resp.status(), StatusCode::CREATED);
    header(resp.headers(), "location")
}

/// A tus PATCH of `body` at `offset`.
fn tus_patch(server: &Server, path: &str, offset: u64) -> reqwest::RequestBuilder {
    client()
        .patch(format!("{}{path}", server.url()))
        .header("tus-resumable", "1.0.0")
        .header("upload-offset", offset.to_string())
        .header(CONTENT_TYPE, OCTETS)
}

/// `Upload-Offset` of a tus PATCH answered 204.
async fn tus_patched(resp: Response) -> u64 {
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = resp.text().await.unwrap_or_default();
    assert_eq!(status, StatusCode::NO_CONTENT, "PATCH: {body}");
    header(&headers, "upload-offset").parse().unwrap()
}

/// `Upload-Offset` from a tus HEAD.
async fn tus_offset(server: &Server, path: &str) -> u64 {
    let resp = client()
        .head(format!("{}{path}", server.url()))
        .header("tus-resumable", "1.0.0")
        .send()
        .await
        .expect("tus HEAD");
    assert_eq!(resp.status(), StatusCode::OK);
    header(resp.headers(), "upload-offset").parse().unwrap()
}

/// A tus PATCH of `file[offset..offset + len]` to `server`, answered 204: the new offset.
async fn tus_send(server: &Server, path: &str, file: &Bytes, offset: u64, len: u64) -> u64 {
    let body = file.slice(offset as usize..(offset + len) as usize);
    tus_patched(
        tus_patch(server, path, offset)
            .body(body)
            .send()
            .await
            .unwrap(),
    )
    .await
}

/// Upload `id` is completed on `server` with `file`'s SHA-256, and serves `file`.
async fn assert_completed(server: &Server, id: UploadId, file: &Bytes) -> UploadStatus {
    let api = Api::new(server);
    let st = api.status(id).await;
    assert_eq!(st.state, UploadState::Completed);
    assert_eq!(st.sha256, Some(digest(file)));
    api.assert_content(id, file).await;
    st
}

fn tus_id(path: &str) -> UploadId {
    path.rsplit('/').next().unwrap().parse().unwrap()
}

/// The piece objects of an upload (short appends held until their chunk is whole).
async fn piece_keys(s3: &S3Server, id: UploadId) -> Vec<String> {
    list_keys(s3, &chunks_prefix(id))
        .await
        .into_iter()
        .filter(|k| k.contains("/pieces/"))
        .collect()
}

/// Uneven tus appends (100 kB, 3 MB, 7 MB across a chunk's end, 1 byte, …) on S3, sent
/// alternately to two servers on one bucket, one of which is killed (`kill -9`) after an
/// acknowledged short append: each answer's offset is what the other server's HEAD says,
/// the short appends are held as pieces of the partial chunk only (a chunk's pieces go
/// once its part is written), and the upload completes through the survivor with the
/// right SHA-256, content and no piece left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_uneven_appends_across_two_servers_and_a_kill() {
    let Some(s3) = s3_or_skip("tus_uneven_appends_across_two_servers_and_a_kill").await else {
        return;
    };
    let (mut a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(20_000_123, 95));
    let path = tus_create(&a, file.len()).await;
    let id = tus_id(&path);
    let cs = Api::new(&a).status(id).await.chunk_size;
    assert_eq!(cs, 8 << 20, "the default chunk size for 20 MB");
    let mut offset = 0u64;
    let sizes = [100_000u64, 3_000_000, 7_000_000, 1];
    for (n, len) in sizes.into_iter().enumerate() {
        let (to, other) = if n % 2 == 0 { (&a, &b) } else { (&b, &a) };
        let now = tus_send(to, &path, &file, offset, len).await;
        assert_eq!(now, offset + len, "PATCH {n}");
        offset = now;
        assert_eq!(
            tus_offset(other, &path).await,
            offset,
            "HEAD after PATCH {n}"
        );
    }
    // 10,100,001 bytes: chunk 0 is a part, chunk 1 holds 1,711,393 bytes in two pieces.
    let pieces = piece_keys(&s3, id).await;
    assert_eq!(pieces.len(), 2, "{pieces:#?}");
    assert!(
        pieces.iter().all(|k| k.contains("/chunks/00001/pieces/")),
        "{pieces:#?}"
    );
    let receipts: Vec<String> = receipt_keys(&s3, id)
        .await
        .into_iter()
        .filter(|k| !k.contains("/pieces/"))
        .collect();
    assert_eq!(receipts.len(), 1, "chunk 0's receipt: {receipts:#?}");
    a.kill9();
    let st = Api::new(&b).status(id).await;
    assert_eq!(st.received_bytes, offset);
    for len in [8_000_000u64, file.len() as u64 - offset - 8_000_000] {
        offset = tus_send(&b, &path, &file, offset, len).await;
    }
    assert_eq!(offset, file.len() as u64);
    assert_completed(&b, id, &file).await;
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
    assert_eq!(multipart_uploads(&s3, "").await, Vec::<String>::new());
}

/// A tus PATCH whose body is cut mid-way (it promised the whole file and broke off after
/// 9 MB): the chunk it finished (a part) is kept, the part it was streaming when cut is
/// not, so the offset is exactly the chunk's end; the rest then completes the upload.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_patch_cut_short_keeps_its_whole_chunks() {
    let Some(s3) = s3_or_skip("tus_patch_cut_short_keeps_its_whole_chunks").await else {
        return;
    };
    let (server, _dir) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(12_000_123, 96));
    let path = tus_create(&server, file.len()).await;
    let id = tus_id(&path);
    let sent = file.slice(..9_000_000);
    let pieces = futures_util::stream::iter([
        Ok::<Bytes, std::io::Error>(sent.slice(..4_000_000)),
        Ok(sent.slice(4_000_000..)),
        Err(std::io::Error::other("the client went away")),
    ]);
    let cut = tus_patch(&server, &path, 0)
        .header(reqwest::header::CONTENT_LENGTH, file.len())
        .body(reqwest::Body::wrap_stream(pieces))
        .send()
        .await;
    assert!(cut.is_err(), "a body cut short gets no answer: {cut:?}");
    // The server notices the cut on its own time: wait until it stored what it keeps.
    wait_until(
        Duration::from_secs(20),
        "the cut append's bytes to be committed",
        || async {
            let keys = receipt_keys(&s3, id).await;
            keys.iter().filter(|k| !k.contains("/pieces/")).count() == 1
        },
    )
    .await;
    let offset = tus_offset(&server, &path).await;
    assert_eq!(offset, 8 << 20, "chunk 0 kept, chunk 1's cut part not");
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
    let logs = synced_logs(&server).await;
    assert!(
        logs.contains("a body cut short: its last chunk's bytes must come again")
            && !logs.contains("no bytes held"),
        "the cut append was not settled as expected:\n{logs}"
    );
    let done = tus_send(&server, &path, &file, offset, file.len() as u64 - offset).await;
    assert_eq!(done, file.len() as u64);
    assert_completed(&server, id, &file).await;
}

/// One appender per upload across servers: while a PATCH is streaming through one
/// server, a PATCH of the same upload on another gets 423 Locked and stores nothing; once
/// the first ends, the next PATCH is taken at once (the lease was released, not left to
/// expire). A PATCH refused for its checksum (460) stores nothing and leaves the upload
/// free for the retry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_appends_take_turns_across_servers() {
    let Some(s3) = s3_or_skip("tus_appends_take_turns_across_servers").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(3_000_000, 97));
    let path = tus_create(&a, file.len()).await;
    let id = tus_id(&path);
    let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(2);
    let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
        rx.recv().await.map(|b| (b, rx))
    }));
    let first = tokio::spawn(
        tus_patch(&a, &path, 0)
            .header(reqwest::header::CONTENT_LENGTH, 1_000_000)
            .body(body)
            .send(),
    );
    tx.send(Ok(file.slice(..500_000))).await.unwrap();
    let lease_key = format!("uploads/{id}/chunks/append-lease");
    wait_until(
        Duration::from_secs(20),
        "server A to hold the upload's append lease",
        || async {
            let (code, lease) = get_object(&s3, &lease_key).await;
            code == StatusCode::OK && !lease.starts_with(b"released")
        },
    )
    .await;
    let locked = tus_patch(&b, &path, 0)
        .body(file.slice(..1_000))
        .send()
        .await
        .unwrap();
    assert_eq!(locked.status(), StatusCode::LOCKED);
    tx.send(Ok(file.slice(500_000..1_000_000))).await.unwrap();
    drop(tx);
    assert_eq!(tus_patched(first.await.unwrap().unwrap()).await, 1_000_000);
    assert_eq!(piece_keys(&s3, id).await.len(), 1, "one piece, A's");

    // A wrong Upload-Checksum: 460, nothing stored, and the retry is not locked out.
    let next = file.slice(1_000_000..2_000_000);
    let wrong = tus_patch(&b, &path, 1_000_000)
        .header(
            "upload-checksum",
            format!("sha256 {}", b64(&Sha256::digest(b"other bytes"))),
        )
        .body(next.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(wrong.status().as_u16(), 460);
    assert_eq!(tus_offset(&a, &path).await, 1_000_000);
    let right = tus_patch(&b, &path, 1_000_000)
        .header(
            "upload-checksum",
            format!("sha256 {}", b64(&Sha256::digest(&next))),
        )
        .body(next)
        .send()
        .await
        .unwrap();
    assert_eq!(tus_patched(right).await, 2_000_000);
    let done = tus_send(&a, &path, &file, 2_000_000, file.len() as u64 - 2_000_000).await;
    assert_eq!(done, file.len() as u64);
    assert_completed(&a, id, &file).await;
}

fn b64(bytes: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// A tus upload whose length is said only with its last PATCH (creation-defer-length) on
/// S3: every append is held as pieces of its (large) chunk, and once the length is known
/// the last chunk's part is written from its pieces, checked against their hash chain:
/// the upload completes with the right SHA-256 and no piece left.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_deferred_length_on_s3() {
    let Some(s3) = s3_or_skip("tus_deferred_length_on_s3").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(6_500_001, 98));
    let resp = client()
        .post(format!("{}/files/", a.url()))
        .header("tus-resumable", "1.0.0")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = header(resp.headers(), "location");
    let id = tus_id(&path);
    let first = tus_send(&a, &path, &file, 0, 4_000_000).await;
    assert_eq!(first, 4_000_000);
    assert_eq!(piece_keys(&s3, id).await.len(), 1);
    let last = tus_patch(&b, &path, first)
        .header("upload-length", file.len().to_string())
        .body(file.slice(4_000_000..))
        .send()
        .await
        .unwrap();
    assert_eq!(tus_patched(last).await, file.len() as u64);
    let st = assert_completed(&a, id, &file).await;
    assert_eq!(st.size, file.len() as u64);
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
}

/// The IETF resumable-upload draft on S3: an upload created with its first bytes and no
/// length, appended to unevenly (`application/partial-upload`) through two servers, and
/// completed by the append that says `Upload-Complete: ?1`: the right SHA-256 and content.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ietf_appends_on_s3() {
    let Some(s3) = s3_or_skip("ietf_appends_on_s3").await else {
        return;
    };
    let (a, _da) = upload_server(&s3, &[]);
    let (b, _db) = upload_server(&s3, &[]);
    let file = Bytes::from(random_bytes(9_000_007, 99));
    let ietf = |server: &Server, method: reqwest::Method, path: &str| {
        client()
            .request(method, format!("{}{path}", server.url()))
            .header("upload-draft-interop-version", "8")
    };
    let resp = ietf(&a, reqwest::Method::POST, "/uploads/")
        .header("upload-complete", "?0")
        .body(file.slice(..1_000))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let path = header(resp.headers(), "location");
    let mut at = 1_000usize;
    for (n, len) in [65_537usize, 6_000_000, 777].into_iter().enumerate() {
        let to = if n % 2 == 0 { &b } else { &a };
        let resp = ietf(to, reqwest::Method::PATCH, &path)
            .header(CONTENT_TYPE, "application/partial-upload")
            .header("upload-offset", at.to_string())
            .header("upload-complete", "?0")
            .body(file.slice(at..at + len))
            .send()
            .await
            .unwrap();
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "append {n}");
        at += len;
        assert_eq!(header(resp.headers(), "upload-offset"), at.to_string());
    }
    let resp = ietf(&b, reqwest::Method::PATCH, &path)
        .header(CONTENT_TYPE, "application/partial-upload")
        .header("upload-offset", at.to_string())
        .header("upload-complete", "?1")
        .body(file.slice(at..))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(resp.headers(), "upload-complete"), "?1");
    let id: UploadId = path.rsplit('/').next().unwrap().parse().unwrap();
    assert_completed(&a, id, &file).await;
    assert_eq!(piece_keys(&s3, id).await, Vec::<String>::new());
}

/// tus appends on S3 while the store refuses every request for the whole-file hash
/// midstate (`hash.json`, 503 from a fault proxy): the appends go on without the in-flight
/// hash once its midstate is lost, and the completion reads the file back to hash it:
/// the right SHA-256 all the same. (Before, every append after the first was refused.)
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn tus_on_s3_survives_a_lost_hash_midstate() {
    use tests::proxy::{Fault, Faults, Proxy};
    let Some(s3) = s3_or_skip("tus_on_s3_survives_a_lost_hash_midstate").await else {
        return;
    };
    let proxy = Proxy::start(
        s3.endpoint.trim_start_matches("http://"),
        Faults {
            rate: 1.0,
            matching: "/hash.json".into(),
            kinds: vec![Fault::Unavailable],
            seed: 940,
            stall_hold: Duration::from_secs(2),
            tamper_complete: false,
        },
    );
    let (server, _dir) = upload_server_via(&s3, &proxy.url(), &[]);
    let file = Bytes::from(random_bytes(10_000_003, 941));
    let path = tus_create(&server, file.len()).await;
    let id = tus_id(&path);
    let mut offset = 0u64;
    for len in [2_000_000u64, 7_000_000, 1_000_003] {
        offset = tus_send(&server, &path, &file, offset, len).await;
    }
    assert_eq!(offset, file.len() as u64);
    assert_completed(&server, id, &file).await;
    let lines = completed_lines(&synced_logs(&server).await, id);
    assert_eq!(lines.len(), 1, "{lines:#?}");
    // No midstate could be read either: the completion hashed the whole file back.
    assert_eq!(
        log_field(&lines[0], "read_back_at_completion"),
        file.len() as u64
    );
    assert!(
        proxy.stats().faults() >= 3,
        "hash.json requests were refused"
    );
}

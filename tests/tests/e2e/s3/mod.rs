//! End-to-end tests of `upload-server --storage s3` against a real S3 server (Ceph RGW,
//! see `tests::s3`).
//!
//! Each test gets a bucket of its own on the shared store (and, where it takes the store
//! down, a gateway of its own) and one or more `upload-server` processes on it, speaks the
//! native API (or tus, or the IETF draft) to them, and checks the bucket's objects,
//! multipart uploads and the store's request log directly with raw S3 requests. The object
//! layout is the one documented in `storage/src/backend/s3/mod.rs`:
//! `uploads/{id}/record.json`; per chunk its claim `uploads/{id}/chunks/{index:05}` (JSON:
//! size, sha256, part, etag, the whole-file midstate after it or `spilled`), its spill
//! `…/{index:05}.{part}.{etag}.spill`, the pieces of a partly appended chunk
//! `…/{index:05}.pieces/{start:012}.{len}.{chunk midstate}.{file midstate}` and the append
//! lease `…/chunks/append-lease`; `files/{id}`, the multipart upload's key (chunk `i` is
//! part `i + 1`), where the file appears only once verified; `idempotency/…`.
//!
//! S3 parts are at least 5 MiB (but the last), so uploads here use 5 MiB chunks; files
//! stay small (≤ ~26 MiB per test, ≤ 81 MiB for the request counts).
//!
//! Skipped (with a message) when the S3 test server is not installed, unless
//! `S3_REQUIRED=1`. Build the binaries first (`cargo build -p server`; `make test` does).

mod hung;
mod native;
mod outage;
mod parts;
mod peers;
mod publication;
mod requests;
mod tus;

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

/// The claims of an upload's chunks (`…/chunks/{index:05}`): one per acknowledged chunk.
async fn claim_keys(s3: &S3Server, id: UploadId) -> Vec<String> {
    let prefix = chunks_prefix(id);
    list_keys(s3, &prefix)
        .await
        .into_iter()
        .filter(|k| {
            k.strip_prefix(&prefix)
                .is_some_and(|n| n.len() == 5 && n.bytes().all(|b| b.is_ascii_digit()))
        })
        .collect()
}

/// The spilled chunks of an upload (`…/chunks/{index:05}.{part}.{etag}.spill`).
async fn spill_keys(s3: &S3Server, id: UploadId) -> Vec<String> {
    list_keys(s3, &chunks_prefix(id))
        .await
        .into_iter()
        .filter(|k| k.ends_with(".spill"))
        .collect()
}

/// Chunk `index`'s claim, as stored.
async fn claim(s3: &S3Server, id: UploadId, index: u64) -> Value {
    let (code, body) = get_object(s3, &format!("{}{index:05}", chunks_prefix(id))).await;
    assert_eq!(code, StatusCode::OK, "chunk {index} of {id} is claimed");
    serde_json::from_slice(&body).expect("claim JSON")
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

/// A server's `/metrics` (the Prometheus text).
async fn metrics_text(server: &Server) -> String {
    client()
        .get(format!("{}/metrics", server.url()))
        .send()
        .await
        .expect("GET /metrics")
        .text()
        .await
        .unwrap_or_default()
}

/// The value of a series in a server's `/metrics`, 0 when absent.
async fn metric(server: &Server, series: &str) -> f64 {
    metrics_text(server)
        .await
        .lines()
        .find_map(|l| l.strip_prefix(series)?.trim().parse().ok())
        .unwrap_or(0.0)
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

/// A file of `len` random bytes from `seed`, its chunks of [`CS`], and an upload created
/// for it through `api`.
async fn created(api: &Api, len: usize, seed: u64) -> (Bytes, Vec<Bytes>, UploadId) {
    let file = Bytes::from(random_bytes(len, seed));
    let chunks = chunks_of(&file);
    let id = api
        .create(json!({"size": file.len(), "chunk_size": CS}))
        .await
        .id;
    (file, chunks, id)
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

/// Sends `order` of `chunks` one after the other through `api`.
async fn put_in_order(api: &Api, id: UploadId, chunks: &[Bytes], order: &[usize]) {
    for &i in order {
        api.put_ok(id, i as u64, chunks[i].clone()).await;
    }
}

/// The ETag of the published object of `id`: a joined multipart upload's ends in `-{parts}`.
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

//! Shared helpers of the server tests: the storage fixture (the suite runs on local disk
//! and on S3, see [`start!`]; `tests::fixture`), a typed client over the native API,
//! problem document checks, and raw-socket requests for the cases reqwest cannot produce
//! (stalls, disconnects).

use std::time::{Duration, Instant};

use common::api::{ChunkReceipt, Problem, UploadStatus};
use common::UploadId;
use reqwest::header::{HeaderMap, CONTENT_TYPE};
use reqwest::{Client, Response, StatusCode};
use serde_json::Value;
use tests::Server;
use tokio::io::AsyncWriteExt;
use tokio::net::TcpStream;

pub const KIB: usize = 1 << 10;
pub const MIB: usize = 1 << 20;

/// Starts an `upload-server` with `args` on this suite's storage ([`super::STORAGE`]):
/// `let (server, store) = start!(&[...]);` (see [`tests::start_or_skip!`]).
macro_rules! start {
    ($args:expr) => {
        tests::start_or_skip!(super::STORAGE, $args)
    };
}
pub(crate) use start;

#[allow(unused_imports)] // each test module uses some
pub use tests::fixture::{data_holds, upload_dirs, upload_file, Storage, Store};
pub use tests::http::{client, digest, wait_until};

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
    /// does (at most 30 s): on S3 a chunk that a killed server was sending stays leased
    /// to it for a few seconds.
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

/// A body sent in `parts`, with chunked transfer encoding (no `Content-Length`).
pub fn stream_body(parts: Vec<Vec<u8>>) -> reqwest::Body {
    let stream = futures_util::stream::iter(
        parts
            .into_iter()
            .map(|p| Ok::<_, std::io::Error>(bytes::Bytes::from(p))),
    );
    reqwest::Body::wrap_stream(stream)
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

//! A raw tus 1.0 client for the conformance tests: every request says `Tus-Resumable:
//! 1.0.0`, and the preambles the tests share (create an upload, append to it, read its
//! offsets back, check it through the native API) are one call each, asserting what the
//! protocol promises on the way.

use base64::Engine;
use bytes::Bytes;
use common::api::{UploadState, UploadStatus};
use common::UploadId;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use tokio::sync::mpsc::Sender;
use tokio::task::JoinHandle;

use crate::http::{client, get_native, header, header_opt, header_u64};
use crate::{sha256_hex, Server};

/// The protocol version this server speaks and every request names.
pub const VERSION: &str = "1.0.0";
/// The media type of a PATCH body.
pub const OCTETS: &str = "application/offset+octet-stream";

/// `bytes` in base64, as `Upload-Metadata` and `Upload-Checksum` carry them.
pub fn b64(bytes: &[u8]) -> String {
    base64::engine::general_purpose::STANDARD.encode(bytes)
}

/// The upload id of a tus path (`/files/{id}`).
pub fn upload_id(path: &str) -> UploadId {
    path.trim_start_matches("/files/")
        .parse()
        .expect("an upload id")
}

/// A tus client of one server, at its `/files/` endpoint.
pub struct Tus {
    pub http: Client,
    pub base: String,
}

impl Tus {
    pub fn new(server: &Server) -> Self {
        Self {
            http: client(),
            base: server.url(),
        }
    }

    /// A request to `path` with `Tus-Resumable`.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("tus-resumable", VERSION)
    }

    /// A creation request (`POST /files/`) with no headers of its own yet.
    pub fn post(&self) -> RequestBuilder {
        self.req(Method::POST, "/files/")
    }

    /// A PATCH to `path` at `offset` with the tus media type and no body yet.
    pub fn append(&self, path: &str, offset: usize) -> RequestBuilder {
        self.req(Method::PATCH, path)
            .header("content-type", OCTETS)
            .header("upload-offset", offset.to_string())
    }

    /// PATCHes `body` at `offset`.
    pub async fn patch(&self, path: &str, offset: usize, body: Vec<u8>) -> Response {
        self.append(path, offset)
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// PATCHes `body` at `offset` and asserts it was taken: 204, with the offset it
    /// ends at and `Tus-Resumable`.
    pub async fn patch_ok(&self, path: &str, offset: usize, body: &[u8]) -> Response {
        let end = offset + body.len();
        let resp = self.patch(path, offset, body.to_vec()).await;
        assert_eq!(
            resp.status(),
            StatusCode::NO_CONTENT,
            "PATCH {offset}..{end}: {resp:?}"
        );
        assert_eq!(header_u64(&resp, "upload-offset"), end as u64, "{resp:?}");
        assert_eq!(header(&resp, "tus-resumable"), VERSION);
        resp
    }

    /// A PATCH that also says `Upload-Length: length`.
    pub async fn patch_declaring(
        &self,
        path: &str,
        offset: usize,
        length: usize,
        body: Vec<u8>,
    ) -> Response {
        self.append(path, offset)
            .header("upload-length", length.to_string())
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// Asserts that `resp` created an upload (201, `Tus-Resumable`, a `/files/` path) and
    /// returns its path.
    pub fn created(resp: &Response) -> String {
        assert_eq!(resp.status(), StatusCode::CREATED, "{resp:?}");
        assert_eq!(header(resp, "tus-resumable"), VERSION);
        let loc = header(resp, "location");
        assert!(loc.starts_with("/files/"), "{loc}");
        loc
    }

    /// Creates an upload of `len` bytes (with `metadata` unless empty) and returns its
    /// path (`/files/{id}`).
    pub async fn create(&self, len: usize, metadata: &str) -> String {
        let mut r = self.post().header("upload-length", len.to_string());
        if !metadata.is_empty() {
            r = r.header("upload-metadata", metadata);
        }
        Self::created(&r.send().await.expect("POST"))
    }

    /// Creates an upload with `Upload-Defer-Length: 1` and no body; returns its path.
    pub async fn create_deferred(&self) -> String {
        let resp = self
            .post()
            .header("upload-defer-length", "1")
            .send()
            .await
            .expect("POST");
        assert!(resp.headers().get("upload-length").is_none(), "{resp:?}");
        Self::created(&resp)
    }

    /// creation-with-upload: creates an upload of `length` bytes (deferred when `None`)
    /// with `first` in the POST, asserts the offset it answers is the end of `first`, and
    /// returns its path.
    pub async fn create_with(&self, length: Option<usize>, first: &[u8]) -> String {
        let r = match length {
            Some(len) => self.post().header("upload-length", len.to_string()),
            None => self.post().header("upload-defer-length", "1"),
        };
        let resp = r
            .header("content-type", OCTETS)
            .body(first.to_vec())
            .send()
            .await
            .expect("POST");
        let loc = Self::created(&resp);
        assert_eq!(header_u64(&resp, "upload-offset"), first.len() as u64);
        loc
    }

    /// `HEAD` of `path`.
    pub async fn head(&self, path: &str) -> Response {
        self.req(Method::HEAD, path).send().await.expect("HEAD")
    }

    /// `HEAD`: (Upload-Offset, Upload-Length, Upload-Defer-Length), the last two if sent.
    pub async fn lengths(&self, path: &str) -> (u64, Option<u64>, Option<String>) {
        let resp = self.head(path).await;
        assert_eq!(resp.status(), StatusCode::OK);
        (
            header_u64(&resp, "upload-offset"),
            header_opt(&resp, "upload-length").map(|v| v.parse().expect("length")),
            header_opt(&resp, "upload-defer-length"),
        )
    }

    /// `HEAD`: the Upload-Offset.
    pub async fn offset(&self, path: &str) -> u64 {
        let resp = self.head(path).await;
        assert_eq!(resp.status(), StatusCode::OK);
        header_u64(&resp, "upload-offset")
    }

    /// The native API's status of the upload at tus `path`.
    pub async fn native(&self, path: &str) -> UploadStatus {
        let id = path.trim_start_matches("/files/");
        let resp = get_native(&self.http, &self.base, id, "").await;
        assert_eq!(resp.status(), StatusCode::OK);
        resp.json().await.expect("status json")
    }

    /// SHA-256 (hex) of the content the native API serves for tus `path`.
    pub async fn content_sha(&self, path: &str) -> String {
        let id = path.trim_start_matches("/files/");
        let resp = get_native(&self.http, &self.base, id, "/content").await;
        sha256_hex(&resp.bytes().await.expect("content body"))
    }

    /// The upload at `path` is completed natively with exactly `bytes`: its state, size
    /// and SHA-256, and the content served. Returns its status.
    pub async fn assert_completed(&self, path: &str, bytes: &[u8]) -> UploadStatus {
        let status = self.native(path).await;
        assert_eq!(status.state, UploadState::Completed, "{status:?}");
        assert_eq!(status.size, bytes.len() as u64, "{status:?}");
        let sha = status
            .sha256
            .as_ref()
            .expect("a completed upload's SHA-256");
        assert_eq!(sha.to_hex(), sha256_hex(bytes));
        assert_eq!(self.content_sha(path).await, sha256_hex(bytes));
        status
    }

    /// Starts a PATCH at offset 0 of `content_length` bytes whose body is fed by the
    /// returned sender, so that a test decides when its bytes arrive.
    pub fn slow_patch(
        &self,
        path: &str,
        content_length: usize,
    ) -> (
        Sender<Result<Bytes, std::io::Error>>,
        JoinHandle<reqwest::Result<Response>>,
    ) {
        let (tx, rx) = tokio::sync::mpsc::channel::<Result<Bytes, std::io::Error>>(1);
        let body = reqwest::Body::wrap_stream(futures_util::stream::unfold(rx, |mut rx| async {
            rx.recv().await.map(|b| (b, rx))
        }));
        let req = self
            .append(path, 0)
            .header("content-length", content_length.to_string())
            .body(body)
            .send();
        (tx, tokio::spawn(req))
    }
}

//! A raw client of the IETF resumable-upload draft (draft-ietf-httpbis-resumable-upload)
//! at `/uploads/` for the conformance tests: every request names an interop version, and
//! the preambles the tests share (create an upload with its first part, append, read the
//! offset back, check a problem type, check the upload through the native API) are one
//! call each, asserting what the draft promises on the way.

use base64::Engine;
use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use sha2::Digest;

use crate::http::{client, get_native, header, header_opt, header_u64};
use crate::{sha256_hex, Server};

/// The media type of an append's body.
pub const PARTIAL: &str = "application/partial-upload";
/// Where the draft's problem types live.
pub const TYPES: &str = "https://iana.org/assignments/http-problem-types#";
/// The interop version of the current draft, which requests name unless they say other.
pub const INTEROP: &str = "8";

/// A structured-field boolean, as `Upload-Complete` carries it.
pub fn sf_bool(complete: bool) -> &'static str {
    if complete {
        "?1"
    } else {
        "?0"
    }
}

/// A `Repr-Digest` (or `Content-Digest`) value of `bytes`: their SHA-256.
pub fn repr_digest(bytes: &[u8]) -> String {
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
    )
}

/// The RFC 9457 problem `resp` carries (asserting its media type).
pub async fn problem(resp: Response) -> Value {
    assert_eq!(header(&resp, "content-type"), "application/problem+json");
    resp.json().await.expect("problem JSON")
}

/// Asserts that `resp` is `status` with the draft's problem type `name` (and the same
/// status in the problem); returns the problem.
pub async fn assert_problem(resp: Response, status: StatusCode, name: &str) -> Value {
    assert_eq!(resp.status(), status, "{resp:?}");
    let p = problem(resp).await;
    assert_eq!(p["type"], format!("{TYPES}{name}"), "{p}");
    assert_eq!(p["status"], status.as_u16(), "{p}");
    p
}

/// The upload id of an upload path (`/uploads/{id}`).
fn upload_id(path: &str) -> &str {
    path.trim_start_matches("/uploads/")
}

/// A client of one server's IETF endpoint.
pub struct Ietf {
    pub http: Client,
    pub base: String,
}

impl Ietf {
    pub fn new(server: &Server) -> Self {
        Self {
            http: client(),
            base: server.url(),
        }
    }

    /// A request to `path` in the current interop version.
    pub fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_v(method, path, INTEROP)
    }

    /// A request that says it speaks interop version `v`.
    pub fn req_v(&self, method: Method, path: &str, v: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("upload-draft-interop-version", v)
    }

    /// An append to `path` at `offset` (with `Upload-Complete`, the draft's media type)
    /// in interop version `v`, with no body yet.
    pub fn append_v(&self, path: &str, offset: usize, complete: bool, v: &str) -> RequestBuilder {
        self.req_v(Method::PATCH, path, v)
            .header("content-type", PARTIAL)
            .header("upload-offset", offset.to_string())
            .header("upload-complete", sf_bool(complete))
    }

    /// [`Ietf::append_v`] in the current interop version.
    pub fn append(&self, path: &str, offset: usize, complete: bool) -> RequestBuilder {
        self.append_v(path, offset, complete, INTEROP)
    }

    /// `POST /uploads/` with `Upload-Complete`, `Upload-Length` if given, and the body.
    pub async fn create(&self, complete: bool, length: Option<usize>, body: Vec<u8>) -> Response {
        let mut r = self
            .req(Method::POST, "/uploads/")
            .header("upload-complete", sf_bool(complete));
        if let Some(len) = length {
            r = r.header("upload-length", len.to_string());
        }
        r.body(body).send().await.expect("POST")
    }

    /// Asserts that `resp` created an incomplete upload holding `first` (201, `?0`, the
    /// offset) and returns its path (`/uploads/{id}`).
    fn started(resp: &Response, first: &[u8]) -> String {
        assert_eq!(resp.status(), StatusCode::CREATED, "{resp:?}");
        assert_eq!(header(resp, "upload-complete"), "?0");
        assert_eq!(header_u64(resp, "upload-offset"), first.len() as u64);
        let loc = header(resp, "location");
        assert!(loc.starts_with("/uploads/"), "{loc}");
        loc
    }

    /// Creates an incomplete upload of `len` bytes with `first` as its first part; returns
    /// its path.
    pub async fn start(&self, len: usize, first: &[u8]) -> String {
        let resp = self.create(false, Some(len), first.to_vec()).await;
        Self::started(&resp, first)
    }

    /// Creates an incomplete upload with no length and `first` as its first part; returns
    /// its path.
    pub async fn start_unknown(&self, first: &[u8]) -> String {
        let resp = self.create(false, None, first.to_vec()).await;
        assert!(resp.headers().get("upload-length").is_none(), "{resp:?}");
        Self::started(&resp, first)
    }

    /// Appends `body` at `offset`.
    pub async fn patch(
        &self,
        path: &str,
        offset: usize,
        complete: bool,
        body: Vec<u8>,
    ) -> Response {
        self.append(path, offset, complete)
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// An append that also says `Upload-Length`.
    pub async fn patch_declaring(
        &self,
        path: &str,
        offset: usize,
        complete: bool,
        length: usize,
        body: Vec<u8>,
    ) -> Response {
        self.append(path, offset, complete)
            .header("upload-length", length.to_string())
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// Appends the rest of `bytes` from `offset` with `Upload-Complete: ?1`, asserts the
    /// answer (200, `?1`, the offset at the end) and that the upload is completed natively
    /// with exactly `bytes`; returns its native status.
    pub async fn finish(&self, path: &str, offset: usize, bytes: &[u8]) -> Value {
        let resp = self
            .patch(path, offset, true, bytes[offset..].to_vec())
            .await;
        assert_eq!(resp.status(), StatusCode::OK, "{resp:?}");
        assert_eq!(header(&resp, "upload-complete"), "?1");
        assert_eq!(header_u64(&resp, "upload-offset"), bytes.len() as u64);
        self.assert_completed(path, bytes).await
    }

    /// `HEAD`: (Upload-Offset, Upload-Complete), asserting it is not cached and says the
    /// limits.
    pub async fn head(&self, path: &str) -> (u64, String) {
        let resp = self.req(Method::HEAD, path).send().await.expect("HEAD");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{resp:?}");
        assert_eq!(header(&resp, "cache-control"), "no-store");
        assert!(header(&resp, "upload-limit").contains("max-size="));
        (
            header_u64(&resp, "upload-offset"),
            header(&resp, "upload-complete"),
        )
    }

    /// `HEAD`: (Upload-Offset, Upload-Complete, Upload-Length if sent).
    pub async fn head_length(&self, path: &str) -> (u64, String, Option<u64>) {
        let resp = self.req(Method::HEAD, path).send().await.expect("HEAD");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{resp:?}");
        let length = header_opt(&resp, "upload-length").map(|v| v.parse().expect("integer"));
        (
            header_u64(&resp, "upload-offset"),
            header(&resp, "upload-complete"),
            length,
        )
    }

    /// The status code of a `HEAD` of `path`.
    pub async fn head_status(&self, path: &str) -> StatusCode {
        self.req(Method::HEAD, path)
            .send()
            .await
            .expect("HEAD")
            .status()
    }

    /// `GET /v1/uploads/{id}` of an IETF upload path (status, JSON).
    pub async fn native(&self, path: &str) -> (StatusCode, Value) {
        let resp = get_native(&self.http, &self.base, upload_id(path), "").await;
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    /// `GET /v1/uploads/{id}/content` of an IETF upload path (status, bytes).
    pub async fn content(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let resp = get_native(&self.http, &self.base, upload_id(path), "/content").await;
        let status = resp.status();
        (status, resp.bytes().await.expect("content").to_vec())
    }

    /// The upload at `path` is completed natively with exactly `bytes`; returns its status.
    pub async fn assert_completed(&self, path: &str, bytes: &[u8]) -> Value {
        let (code, status) = self.native(path).await;
        assert_eq!(code, StatusCode::OK, "{status}");
        assert_eq!(status["state"], "completed", "{status}");
        assert_eq!(status["size"], bytes.len() as u64, "{status}");
        assert_eq!(status["sha256"], sha256_hex(bytes).as_str(), "{status}");
        let (code, content) = self.content(path).await;
        assert_eq!(code, StatusCode::OK);
        assert_eq!(sha256_hex(&content), sha256_hex(bytes));
        status
    }
}

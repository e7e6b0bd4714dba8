//! IETF Resumable Uploads for HTTP (draft-ietf-httpbis-resumable-upload) at `/uploads/`,
//! against the real `upload-server` process: raw HTTP flows for creation, appends, offset
//! retrieval, cancellation, the draft's problem types, `Repr-Digest` and a restart
//! mid-upload; then tus-js-client's `ietf-draft-05` and `ietf-draft-03` protocols. Every
//! upload is checked again through the native API (`GET /v1/uploads/{id}` and its content).

use std::time::Duration;

use reqwest::{Client, Method, RequestBuilder, Response, StatusCode};
use serde_json::Value;
use tests::webclients::{self, DriverResult};
use tests::{random_bytes, sha256_hex, write_file, Server};

/// Starts a server on this suite's storage (`super::STORAGE`: local disk or S3).
macro_rules! start {
    ($args:expr) => {
        tests::start_or_skip!(super::STORAGE, $args)
    };
}

const MIB: usize = 1 << 20;
const PARTIAL: &str = "application/partial-upload";
const TYPES: &str = "https://iana.org/assignments/http-problem-types#";

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn header(resp: &Response, name: &str) -> String {
    resp.headers()
        .get(name)
        .unwrap_or_else(|| panic!("no {name} in {resp:?}"))
        .to_str()
        .expect("ASCII header")
        .to_string()
}

fn num(resp: &Response, name: &str) -> u64 {
    header(resp, name).parse().expect("integer header")
}

fn repr_digest(bytes: &[u8]) -> String {
    use base64::Engine;
    use sha2::Digest;
    format!(
        "sha-256=:{}:",
        base64::engine::general_purpose::STANDARD.encode(sha2::Sha256::digest(bytes))
    )
}

struct Ietf {
    http: Client,
    base: String,
}

impl Ietf {
    fn new(server: &Server) -> Self {
        Self {
            http: client(),
            base: server.url(),
        }
    }

    fn req(&self, method: Method, path: &str) -> RequestBuilder {
        self.req_v(method, path, "8")
    }

    /// A request that says it speaks interop version `v`.
    fn req_v(&self, method: Method, path: &str, v: &str) -> RequestBuilder {
        self.http
            .request(method, format!("{}{path}", self.base))
            .header("upload-draft-interop-version", v)
    }

    /// `POST /uploads/` with `Upload-Complete` and the body.
    async fn create(&self, complete: bool, length: Option<usize>, body: Vec<u8>) -> Response {
        let mut r = self
            .req(Method::POST, "/uploads/")
            .header("upload-complete", if complete { "?1" } else { "?0" });
        if let Some(len) = length {
            r = r.header("upload-length", len.to_string());
        }
        r.body(body).send().await.expect("POST")
    }

    /// Creates an incomplete upload of `len` bytes with `first` as its first part; returns
    /// its path (`/uploads/{id}`).
    async fn start(&self, len: usize, first: &[u8]) -> String {
        let resp = self.create(false, Some(len), first.to_vec()).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "upload-complete"), "?0");
        assert_eq!(num(&resp, "upload-offset"), first.len() as u64);
        let loc = header(&resp, "location");
        assert!(loc.starts_with("/uploads/"), "{loc}");
        loc
    }

    async fn patch(&self, path: &str, offset: usize, complete: bool, body: Vec<u8>) -> Response {
        self.req(Method::PATCH, path)
            .header("content-type", PARTIAL)
            .header("upload-offset", offset.to_string())
            .header("upload-complete", if complete { "?1" } else { "?0" })
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// `HEAD`: (Upload-Offset, Upload-Complete).
    async fn head(&self, path: &str) -> (u64, String) {
        let resp = self.req(Method::HEAD, path).send().await.expect("HEAD");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{resp:?}");
        assert_eq!(header(&resp, "cache-control"), "no-store");
        assert!(header(&resp, "upload-limit").contains("max-size="));
        (
            num(&resp, "upload-offset"),
            header(&resp, "upload-complete"),
        )
    }

    /// `HEAD`: (Upload-Offset, Upload-Complete, Upload-Length if sent).
    async fn head_length(&self, path: &str) -> (u64, String, Option<u64>) {
        let resp = self.req(Method::HEAD, path).send().await.expect("HEAD");
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "{resp:?}");
        let length = resp
            .headers()
            .get("upload-length")
            .map(|v| v.to_str().expect("ASCII").parse().expect("integer"));
        (
            num(&resp, "upload-offset"),
            header(&resp, "upload-complete"),
            length,
        )
    }

    /// An append (`Upload-Complete: ?1` when `complete`) that also says `Upload-Length`.
    async fn patch_declaring(
        &self,
        path: &str,
        offset: usize,
        complete: bool,
        length: usize,
        body: Vec<u8>,
    ) -> Response {
        self.req(Method::PATCH, path)
            .header("content-type", PARTIAL)
            .header("upload-offset", offset.to_string())
            .header("upload-complete", if complete { "?1" } else { "?0" })
            .header("upload-length", length.to_string())
            .body(body)
            .send()
            .await
            .expect("PATCH")
    }

    /// Creates an incomplete upload with no length and `first` as its first part; returns
    /// its path.
    async fn start_unknown(&self, first: &[u8]) -> String {
        let resp = self.create(false, None, first.to_vec()).await;
        assert_eq!(resp.status(), StatusCode::CREATED);
        assert_eq!(header(&resp, "upload-complete"), "?0");
        assert_eq!(num(&resp, "upload-offset"), first.len() as u64);
        assert!(resp.headers().get("upload-length").is_none(), "{resp:?}");
        let loc = header(&resp, "location");
        assert!(loc.starts_with("/uploads/"), "{loc}");
        loc
    }

    async fn head_status(&self, path: &str) -> StatusCode {
        self.req(Method::HEAD, path)
            .send()
            .await
            .expect("HEAD")
            .status()
    }

    /// `GET /v1/uploads/{id}` of an IETF upload path (status, JSON).
    async fn native(&self, path: &str) -> (StatusCode, Value) {
        let id = path.trim_start_matches("/uploads/");
        let resp = self
            .http
            .get(format!("{}/v1/uploads/{id}", self.base))
            .send()
            .await
            .expect("GET status");
        let status = resp.status();
        (status, resp.json().await.unwrap_or(Value::Null))
    }

    async fn content(&self, path: &str) -> (StatusCode, Vec<u8>) {
        let id = path.trim_start_matches("/uploads/");
        let resp = self
            .http
            .get(format!("{}/v1/uploads/{id}/content", self.base))
            .send()
            .await
            .expect("GET content");
        let status = resp.status();
        (status, resp.bytes().await.expect("content").to_vec())
    }

    /// The upload at `path` is completed natively with exactly `bytes`.
    async fn assert_completed(&self, path: &str, bytes: &[u8]) -> Value {
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

async fn problem(resp: Response) -> Value {
    assert_eq!(header(&resp, "content-type"), "application/problem+json");
    resp.json().await.expect("problem JSON")
}

#[tokio::test]
async fn create_complete_in_one_request() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(300_001, 1);
    let resp = c
        .req(Method::POST, "/uploads")
        .header("upload-complete", "?1")
        .header(
            "content-disposition",
            "inline; filename=\"plain.bin\"; filename*=UTF-8''r%C3%A9sum%C3%A9.bin",
        )
        .header("content-type", "image/png")
        .body(bytes.clone())
        .send()
        .await
        .expect("POST");
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(num(&resp, "upload-offset"), bytes.len() as u64);
    assert_eq!(header(&resp, "repr-digest"), repr_digest(&bytes));
    assert!(header(&resp, "upload-limit").starts_with("max-size="));
    let loc = header(&resp, "location");
    let id = loc.strip_prefix("/uploads/").expect("location").to_string();
    assert_eq!(
        header(&resp, "content-location"),
        format!("/v1/uploads/{id}")
    );
    let body: Value = resp.json().await.expect("status JSON");
    assert_eq!(body["id"], id.as_str());
    assert_eq!(body["state"], "completed");
    assert_eq!(body["sha256"], sha256_hex(&bytes).as_str());

    let status = c.assert_completed(&loc, &bytes).await;
    assert_eq!(status["filename"], "résumé.bin", "{status}");
    assert_eq!(status["metadata"]["filetype"], "image/png", "{status}");
    assert_eq!(c.head(&loc).await, (bytes.len() as u64, "?1".into()));

    // An empty file, complete at creation.
    let resp = c.create(true, None, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    let loc = header(&resp, "location");
    c.assert_completed(&loc, &[]).await;

    // OPTIONS says appends are welcome and what the limits are.
    let resp = c.req(Method::OPTIONS, "/uploads/").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(header(&resp, "accept-patch"), PARTIAL);
    assert!(header(&resp, "upload-limit").starts_with("max-size="));
}

#[tokio::test]
async fn create_incomplete_then_uneven_appends_then_complete() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    // Past the 8 MiB chunk size, so appends straddle a chunk boundary.
    let bytes = random_bytes(9 * MIB + 4_321, 2);
    let first = 1_000;
    let resp = c
        .create(false, Some(bytes.len()), bytes[..first].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-complete"), "?0");
    assert_eq!(num(&resp, "upload-offset"), first as u64);
    assert_eq!(num(&resp, "upload-length"), bytes.len() as u64);
    let limit = header(&resp, "upload-limit");
    assert!(
        limit.contains("max-size=") && limit.contains("max-age="),
        "{limit}"
    );
    let loc = header(&resp, "location");
    assert_eq!(c.head(&loc).await, (first as u64, "?0".into()));

    let mut at = first;
    for len in [1, 65_537, 8 * MIB - 3, 777] {
        let resp = c.patch(&loc, at, false, bytes[at..at + len].to_vec()).await;
        assert_eq!(
            resp.status(),
            StatusCode::NO_CONTENT,
            "append of {len} at {at}"
        );
        at += len;
        assert_eq!(num(&resp, "upload-offset"), at as u64);
        assert_eq!(header(&resp, "upload-complete"), "?0");
        assert_eq!(c.head(&loc).await, (at as u64, "?0".into()));
    }
    let (code, status) = c.native(&loc).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "uploading");
    assert_eq!(status["received_bytes"], at as u64, "{status}");

    let resp = c.patch(&loc, at, true, bytes[at..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(num(&resp, "upload-offset"), bytes.len() as u64);
    assert_eq!(header(&resp, "repr-digest"), repr_digest(&bytes));
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["state"], "completed");
    c.assert_completed(&loc, &bytes).await;
    assert_eq!(c.head(&loc).await, (bytes.len() as u64, "?1".into()));
}

#[tokio::test]
async fn offset_mismatch_is_409_with_expected_and_provided_offsets() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(1_000, 3);
    let loc = c.start(bytes.len(), &bytes[..100]).await;
    let resp = c.patch(&loc, 150, false, bytes[150..200].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(num(&resp, "upload-offset"), 100);
    let p = problem(resp).await;
    assert_eq!(
        p["type"],
        format!("{TYPES}mismatching-upload-offset"),
        "{p}"
    );
    assert_eq!(p["status"], 409);
    assert_eq!(p["expected-offset"], 100, "{p}");
    assert_eq!(p["provided-offset"], 150, "{p}");
    // Behind the offset is a mismatch too; nothing was appended either time.
    let resp = c.patch(&loc, 50, false, bytes[50..200].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::CONFLICT);
    assert_eq!(problem(resp).await["provided-offset"], 50);
    assert_eq!(c.head(&loc).await, (100, "?0".into()));
    let resp = c.patch(&loc, 100, true, bytes[100..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;
}

#[tokio::test]
async fn appending_to_a_completed_upload_is_refused() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(2_000, 4);
    // Created with ?0, but the whole length arrives: the upload is complete.
    let resp = c.create(false, Some(bytes.len()), bytes.clone()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    let loc = header(&resp, "location");
    assert_eq!(c.head(&loc).await, (2_000, "?1".into()));

    // An empty append that does not complete: completed-upload.
    let resp = c.patch(&loc, 2_000, false, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}completed-upload")
    );
    // A non-empty one: in the current draft an inconsistent length ...
    let resp = c.patch(&loc, 2_000, false, vec![1, 2, 3]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}inconsistent-upload-length")
    );
    // ... and completed-upload for draft -05 clients (interop version 6).
    let resp = c
        .req_v(Method::PATCH, &loc, "6")
        .header("content-type", PARTIAL)
        .header("upload-offset", "2000")
        .header("upload-complete", "?1")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}completed-upload")
    );
    // The client's own empty completing append is answered like the completing request.
    let resp = c.patch(&loc, 2_000, true, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    c.assert_completed(&loc, &bytes).await;
}

#[tokio::test]
async fn inconsistent_lengths_are_refused_and_append_nothing() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    // Upload-Length against the length a completing creation implies.
    let resp = c.create(true, Some(10), vec![7u8; 5]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let p = problem(resp).await;
    assert_eq!(
        p["type"],
        format!("{TYPES}inconsistent-upload-length"),
        "{p}"
    );
    // A first part longer than the length.
    let resp = c.create(false, Some(4), vec![7u8; 5]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);

    let bytes = random_bytes(1_000, 5);
    let loc = c.start(1_000, &bytes[..400]).await;
    // Completing with too few bytes, past the length, or another Upload-Length.
    let resp = c.patch(&loc, 400, true, bytes[400..900].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}inconsistent-upload-length")
    );
    let resp = c.patch(&loc, 400, false, vec![0u8; 601]).await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}inconsistent-upload-length")
    );
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "400")
        .header("upload-complete", "?0")
        .header("upload-length", "999")
        .body(bytes[400..500].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.head(&loc).await, (400, "?0".into()));
    let resp = c.patch(&loc, 400, true, bytes[400..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;
}

/// An upload created with no length: HEAD says no `Upload-Length` and the native status
/// `length_deferred`; appends go on; the append with `Upload-Complete: ?1` says where it
/// ends, which is the length, and completes it with the right SHA-256. A second upload
/// learns its length from an `Upload-Length` on an append, after which another length is
/// the draft's inconsistent-upload-length and appends nothing.
#[tokio::test]
async fn a_length_unknown_at_creation_is_learnt_from_the_appends() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(700_003, 31);
    let resp = c.create(false, None, bytes[..200_000].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    assert!(resp.headers().get("upload-length").is_none());
    let loc = header(&resp, "location");
    assert_eq!(c.head(&loc).await, (200_000, "?0".into()));
    let head = c.req(Method::HEAD, &loc).send().await.unwrap();
    assert!(head.headers().get("upload-length").is_none());
    let (_, status) = c.native(&loc).await;
    assert_eq!(status["length_deferred"], true, "{status}");
    let resp = c
        .patch(&loc, 200_000, false, bytes[200_000..500_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let resp = c
        .patch(&loc, 500_000, true, bytes[500_000..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(num(&resp, "upload-length"), bytes.len() as u64);
    let status = c.assert_completed(&loc, &bytes).await;
    assert!(status.get("length_deferred").is_none(), "{status}");

    let resp = c.create(false, None, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = header(&resp, "location");
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "0")
        .header("upload-complete", "?0")
        .header("upload-length", bytes.len().to_string())
        .body(bytes[..100_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    let head = c.req(Method::HEAD, &loc).send().await.unwrap();
    assert_eq!(num(&head, "upload-length"), bytes.len() as u64);
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "100000")
        .header("upload-complete", "?0")
        .header("upload-length", (bytes.len() + 1).to_string())
        .body(bytes[100_000..200_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}inconsistent-upload-length")
    );
    assert_eq!(c.head(&loc).await, (100_000, "?0".into()));
    let resp = c
        .patch(&loc, 100_000, true, bytes[100_000..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;
}

/// Created with `Upload-Complete: ?0`, no length and no body: the answer and HEAD say
/// `?0`, the offset and no `Upload-Length`, the native status `length_deferred` and
/// uploading; appends in several requests (across 8 MiB chunks, with a ceiling that gives
/// them) keep it so; the `?1` append says the length, where it ends, and completes it with
/// the right SHA-256; HEAD then says `?1` and `Upload-Length`. An append of nothing with
/// `?1` completes another upload at its offset, and an empty file at 0.
#[tokio::test]
async fn an_upload_without_a_length_is_completed_by_its_last_append() {
    let (server, _store) = start!(&["--max-upload-size", "32GiB"]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(17 * MIB + 5, 32);
    let len = bytes.len();
    let loc = c.start_unknown(&[]).await;
    assert_eq!(c.head_length(&loc).await, (0, "?0".into(), None));
    let (_, status) = c.native(&loc).await;
    assert_eq!(status["length_deferred"], true, "{status}");
    assert_eq!(status["state"], "uploading", "{status}");
    assert_eq!(status["size"], 32u64 << 30, "{status}");
    assert_eq!(status["chunk_size"], 8 * MIB as u64, "{status}");
    let mut at = 0;
    for end in [MIB, 8 * MIB + 3, 16 * MIB] {
        let resp = c.patch(&loc, at, false, bytes[at..end].to_vec()).await;
        assert_eq!(resp.status(), StatusCode::NO_CONTENT, "append {at}..{end}");
        assert_eq!(num(&resp, "upload-offset"), end as u64);
        assert_eq!(header(&resp, "upload-complete"), "?0");
        assert!(resp.headers().get("upload-length").is_none(), "{resp:?}");
        at = end;
        assert_eq!(c.head_length(&loc).await, (at as u64, "?0".into(), None));
        let (_, status) = c.native(&loc).await;
        assert_eq!(status["length_deferred"], true, "{status}");
        assert_eq!(status["received_bytes"], at as u64, "{status}");
    }
    let resp = c.patch(&loc, at, true, bytes[at..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(num(&resp, "upload-offset"), len as u64);
    assert_eq!(num(&resp, "upload-length"), len as u64);
    assert_eq!(header(&resp, "repr-digest"), repr_digest(&bytes));
    let status = c.assert_completed(&loc, &bytes).await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(status["chunk_count"], 3, "{status}");
    assert_eq!(
        c.head_length(&loc).await,
        (len as u64, "?1".into(), Some(len as u64))
    );

    // An empty completing append: the length is the offset.
    let loc = c.start_unknown(&bytes[..300_000]).await;
    let resp = c.patch(&loc, 300_000, true, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(num(&resp, "upload-length"), 300_000);
    c.assert_completed(&loc, &bytes[..300_000]).await;
    // An empty file.
    let loc = c.start_unknown(&[]).await;
    let resp = c.patch(&loc, 0, true, Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &[]).await;
    assert_eq!(c.head_length(&loc).await, (0, "?1".into(), Some(0)));
}

/// `Upload-Length` on an append of an upload created without one: below where the append
/// would end it is inconsistent-upload-length and the length stays unknown; otherwise it is
/// the length from then on (HEAD and the native status say so, the upload goes on); the
/// same value again is accepted, another is inconsistent-upload-length, a `?1` append that
/// ends elsewhere too, and neither appends anything; the `?1` append that ends there
/// completes it with the right SHA-256.
#[tokio::test]
async fn upload_length_on_an_append_is_said_once() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(5_000, 33);
    let loc = c.start_unknown(&bytes[..1_000]).await;
    let inconsistent = format!("{TYPES}inconsistent-upload-length");

    let resp = c
        .patch_declaring(&loc, 1_000, false, 1_500, bytes[1_000..2_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem(resp).await["type"], inconsistent.as_str());
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));

    let resp = c
        .patch_declaring(&loc, 1_000, false, 5_000, bytes[1_000..2_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(num(&resp, "upload-offset"), 2_000);
    assert_eq!(header(&resp, "upload-complete"), "?0");
    assert_eq!(c.head_length(&loc).await, (2_000, "?0".into(), Some(5_000)));
    let (_, status) = c.native(&loc).await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(status["size"], 5_000, "{status}");
    assert_eq!(status["state"], "uploading", "{status}");

    let resp = c
        .patch_declaring(&loc, 2_000, false, 5_000, bytes[2_000..3_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    for other in [4_999, 5_001] {
        let resp = c
            .patch_declaring(&loc, 3_000, false, other, bytes[3_000..4_000].to_vec())
            .await;
        assert_eq!(
            resp.status(),
            StatusCode::BAD_REQUEST,
            "Upload-Length {other}"
        );
        assert_eq!(problem(resp).await["type"], inconsistent.as_str());
    }
    let resp = c
        .patch(&loc, 3_000, true, bytes[3_000..4_000].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(problem(resp).await["type"], inconsistent.as_str());
    assert_eq!(c.head_length(&loc).await, (3_000, "?0".into(), Some(5_000)));

    let resp = c
        .patch_declaring(&loc, 3_000, true, 5_000, bytes[3_000..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    c.assert_completed(&loc, &bytes).await;
}

/// A refused append says no length: neither a `?1` append whose `Upload-Length` is not
/// where it ends (inconsistent-upload-length) nor an append whose `Content-Digest` does not
/// match its body leaves an `Upload-Length` behind on an upload created without one; the
/// upload then completes with a consistent `?1` append.
#[tokio::test]
async fn a_refused_append_says_no_length() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(3_000, 34);
    let loc = c.start_unknown(&bytes[..1_000]).await;
    let resp = c
        .patch_declaring(&loc, 1_000, true, 10_000, bytes[1_000..].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(
        problem(resp).await["type"],
        format!("{TYPES}inconsistent-upload-length")
    );
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "1000")
        .header("upload-complete", "?0")
        .header("upload-length", "10000")
        .header("content-digest", repr_digest(b"other"))
        .body(bytes[1_000..2_000].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));
    let (_, status) = c.native(&loc).await;
    assert_eq!(status["length_deferred"], true, "{status}");

    let resp = c.patch(&loc, 1_000, true, bytes[1_000..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;
}

/// An upload created without a length may grow to `--max-upload-size` and no further: an
/// append past it is 413 with the `Upload-Limit`, as a creation past it is, and appends
/// nothing; one that ends at the limit with `?1` completes it.
#[tokio::test]
async fn an_append_past_the_limit_of_an_unknown_length_is_413() {
    let (server, _store) = start!(&["--max-upload-size", "1MiB"]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(MIB, 35);
    let loc = c.start_unknown(&bytes[..1_000]).await;
    let resp = c.patch(&loc, 1_000, false, vec![0u8; MIB]).await;
    let code = resp.status();
    let limit = resp
        .headers()
        .get("upload-limit")
        .map(|v| v.to_str().unwrap().to_string());
    let body = resp.text().await.unwrap();
    assert_eq!(code, StatusCode::PAYLOAD_TOO_LARGE, "{body}");
    assert!(
        limit
            .as_deref()
            .unwrap_or("")
            .contains(&format!("max-size={MIB}")),
        "{limit:?}"
    );
    assert_eq!(c.head_length(&loc).await, (1_000, "?0".into(), None));
    let resp = c.patch(&loc, 1_000, true, bytes[1_000..].to_vec()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;
}

#[tokio::test]
async fn requests_the_endpoint_does_not_take() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    // No Upload-Complete; an interop version this server does not speak.
    let resp = c
        .req(Method::POST, "/uploads/")
        .header("upload-length", "5")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    let resp = c
        .http
        .post(format!("{}/uploads/", c.base))
        .header("upload-draft-interop-version", "3")
        .header("upload-complete", "?1")
        .body("hello")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert!(problem(resp).await["detail"]
        .as_str()
        .unwrap()
        .contains("5, 6, 7, 8"));
    // Larger than --max-upload-size: 413 with the limit.
    let resp = c.create(false, Some(1 << 41), Vec::new()).await;
    assert_eq!(resp.status(), StatusCode::PAYLOAD_TOO_LARGE);
    assert_eq!(
        header(&resp, "upload-limit"),
        format!("max-size={}", 1u64 << 40)
    );
    // Appends must be application/partial-upload (draft -03 clients send no type).
    let loc = c.start(10, b"abc").await;
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", "3")
        .header("upload-complete", "?0")
        .body("de")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNSUPPORTED_MEDIA_TYPE);
    let resp = c
        .req_v(Method::PATCH, &loc, "5")
        .header("upload-offset", "3")
        .header("upload-complete", "?0")
        .body("de")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(num(&resp, "upload-offset"), 5);
    // A Content-Digest that does not match the body: 400, nothing appended.
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "5")
        .header("upload-complete", "?0")
        .header("content-digest", repr_digest(b"other"))
        .body("fg")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::BAD_REQUEST);
    assert_eq!(c.head(&loc).await, (5, "?0".into()));
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "5")
        .header("upload-complete", "?0")
        .header("content-digest", repr_digest(b"fg"))
        .body("fg")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(num(&resp, "upload-offset"), 7);
    // An id that is not one, and an unknown one.
    assert_eq!(c.head_status("/uploads/nope").await, StatusCode::NOT_FOUND);
    assert_eq!(
        c.head_status("/uploads/00000000-0000-4000-8000-000000000000")
            .await,
        StatusCode::NOT_FOUND
    );
}

#[tokio::test]
async fn delete_cancels_the_upload() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let loc = c.start(1_000, &[9u8; 300]).await;
    let resp = c.req(Method::DELETE, &loc).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    assert_eq!(c.head_status(&loc).await, StatusCode::GONE);
    let resp = c.patch(&loc, 300, false, vec![1u8; 10]).await;
    assert_eq!(resp.status(), StatusCode::GONE);
    assert_eq!(c.native(&loc).await.0, StatusCode::GONE);
    assert_eq!(c.content(&loc).await.0, StatusCode::GONE);
}

#[tokio::test]
async fn repr_digest_is_verified_against_the_whole_file() {
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(200_000, 6);
    let wrong = repr_digest(b"something else");

    // Right, at creation.
    let resp = c
        .req(Method::POST, "/uploads/")
        .header("upload-complete", "?0")
        .header("upload-length", bytes.len().to_string())
        .header("repr-digest", repr_digest(&bytes))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let loc = header(&resp, "location");
    assert_eq!(
        c.native(&loc).await.1["sha256"],
        sha256_hex(&bytes).as_str()
    );
    let resp = c.patch(&loc, 0, true, bytes.clone()).await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;

    // Wrong, at creation: the domain fails the upload and never serves it.
    let resp = c
        .req(Method::POST, "/uploads/")
        .header("upload-complete", "?1")
        .header("repr-digest", &wrong)
        .body(bytes.clone())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    let loc = header(&resp, "location");
    let p = problem(resp).await;
    assert_eq!(p["actual_sha256"], sha256_hex(&bytes).as_str(), "{p}");
    let (code, status) = c.native(&loc).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "failed", "{status}");
    assert_ne!(c.content(&loc).await.0, StatusCode::OK);
    assert_eq!(c.head_status(&loc).await, StatusCode::GONE);

    // Right, on the completing append only.
    let loc = c.start(bytes.len(), &bytes[..1_000]).await;
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "1000")
        .header("upload-complete", "?1")
        .header("repr-digest", repr_digest(&bytes))
        .body(bytes[1_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;

    // Wrong, on the completing append only: refused, and the upload is removed.
    let loc = c.start(bytes.len(), &bytes[..1_000]).await;
    let resp = c
        .req(Method::PATCH, &loc)
        .header("content-type", PARTIAL)
        .header("upload-offset", "1000")
        .header("upload-complete", "?1")
        .header("repr-digest", &wrong)
        .body(bytes[1_000..].to_vec())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), StatusCode::UNPROCESSABLE_ENTITY);
    assert_eq!(header(&resp, "upload-complete"), "?1");
    assert_eq!(
        problem(resp).await["actual_sha256"],
        sha256_hex(&bytes).as_str()
    );
    assert_eq!(c.content(&loc).await.0, StatusCode::GONE);
    assert_eq!(c.head_status(&loc).await, StatusCode::GONE);
}

#[tokio::test]
async fn a_restart_mid_upload_resumes_from_head() {
    let (mut server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(5 * MIB + 3, 7);
    let loc = c.start(bytes.len(), &bytes[..MIB + 7]).await;
    let at = MIB + 7;
    let resp = c
        .patch(&loc, at, false, bytes[at..at + 2 * MIB].to_vec())
        .await;
    assert_eq!(resp.status(), StatusCode::NO_CONTENT);
    server.restart();
    let c = Ietf::new(&server);
    let (offset, complete) = c.head(&loc).await;
    assert_eq!((offset, complete.as_str()), ((3 * MIB + 7) as u64, "?0"));
    let resp = c
        .patch(
            &loc,
            offset as usize,
            true,
            bytes[offset as usize..].to_vec(),
        )
        .await;
    assert_eq!(resp.status(), StatusCode::OK);
    c.assert_completed(&loc, &bytes).await;
}

// tus-js-client 4.3.1 with its IETF draft protocols.

async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("driver thread")
}

fn requests(r: &DriverResult, method: &str) -> u64 {
    r.get("requests")[method].as_u64().unwrap_or(0)
}

/// The upload path (`/uploads/{id}`) of a tus-js-client upload URL.
fn path_of(server: &Server, url: &str) -> String {
    let path = url
        .strip_prefix(&server.url())
        .unwrap_or_else(|| panic!("{url} is not on {}", server.url()));
    assert!(path.starts_with("/uploads/"), "{url}");
    path.to_string()
}

async fn tusjs_single(protocol: &'static str, seed: u64) {
    let name = format!("tusjs_{protocol}_single_upload");
    if !webclients::available_or_skip(&name) {
        return;
    }
    let (server, _store) = start!(&[]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_bytes(9 * MIB + 123, seed);
    let file = write_file(dir.path(), "ietf.bin", &bytes)
        .display()
        .to_string();
    let ep = format!("{}/uploads/", server.url());
    let r = blocking(move || {
        webclients::tusjs(&[
            "--endpoint",
            &ep,
            "--file",
            &file,
            "--protocol",
            protocol,
            "--chunk-size",
            "4194304",
        ])
    })
    .await;
    r.assert_ok();
    assert_eq!(r.str("protocol"), protocol, "{r}");
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), 3, "{r}");
    let c = Ietf::new(&server);
    let loc = path_of(&server, r.str("url"));
    let status = c.assert_completed(&loc, &bytes).await;
    // Upload-Metadata (tus's form, which tus-js-client sends in every protocol).
    assert_eq!(status["filename"], "ietf.bin", "{status}");
}

#[tokio::test]
async fn tusjs_ietf_draft_05_single_upload() {
    tusjs_single("ietf-draft-05", 11).await;
}

#[tokio::test]
async fn tusjs_ietf_draft_03_single_upload() {
    tusjs_single("ietf-draft-03", 12).await;
}

#[tokio::test]
async fn tusjs_ietf_draft_05_interrupted_upload_resumes() {
    if !webclients::available_or_skip("tusjs_ietf_draft_05_interrupted_upload_resumes") {
        return;
    }
    let (server, _store) = start!(&[]);
    let dir = tempfile::tempdir().unwrap();
    let len = 16 * MIB + 1_000;
    let bytes = random_bytes(len, 13);
    let file = write_file(dir.path(), "resumed.bin", &bytes)
        .display()
        .to_string();
    let store = dir.path().join("urls.json").display().to_string();
    let ep = format!("{}/uploads/", server.url());
    let r = blocking(move || {
        webclients::tusjs(&[
            "--endpoint",
            &ep,
            "--file",
            &file,
            "--protocol",
            "ietf-draft-05",
            "--chunk-size",
            "4194304",
            "--interrupt-at",
            "0.4",
            "--url-store",
            &store,
        ])
    })
    .await;
    eprintln!("tus-js-client ietf-draft-05 interrupt+resume: {}", r.json);
    r.assert_ok();
    assert_eq!(r.u64("previous_uploads_found"), 1, "{r}");
    assert_eq!(r.str("first_url"), r.str("url"), "{r}");
    let resumed = r.u64("resumed_offset");
    assert!(
        resumed >= 4 * MIB as u64 && resumed <= r.u64("aborted_after_sent") && resumed < len as u64,
        "resumed at {resumed}: {r}"
    );
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "HEAD"), 1, "{r}");
    let c = Ietf::new(&server);
    let loc = path_of(&server, r.str("url"));
    c.assert_completed(&loc, &bytes).await;
}

/// tus-js-client's `ietf-draft-05` with `uploadLengthDeferred` and a stream source (a plain
/// Readable, whose size it does not know): it creates the upload with `Upload-Complete: ?0`
/// and no length, appends 4 MiB parts, and its last append (`?1`, with `Upload-Length`)
/// completes it; the native status has the file's SHA-256. (The length is no multiple of
/// the part size: tus-js-client 4.3.1's stream source never finishes one that is.)
#[tokio::test]
async fn tusjs_ietf_draft_05_stream_with_its_length_deferred() {
    if !webclients::available_or_skip("tusjs_ietf_draft_05_stream_with_its_length_deferred") {
        return;
    }
    let (server, _store) = start!(&[]);
    let dir = tempfile::tempdir().unwrap();
    let bytes = random_bytes(9 * MIB + 4_567, 14);
    let file = write_file(dir.path(), "unknown.bin", &bytes)
        .display()
        .to_string();
    let ep = format!("{}/uploads/", server.url());
    let r = blocking(move || {
        webclients::tusjs(&[
            "--endpoint",
            &ep,
            "--file",
            &file,
            "--protocol",
            "ietf-draft-05",
            "--chunk-size",
            "4194304",
            "--defer-length",
            "--stream",
        ])
    })
    .await;
    r.assert_ok();
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), 3, "{r}");
    let c = Ietf::new(&server);
    let loc = path_of(&server, r.str("url"));
    let status = c.assert_completed(&loc, &bytes).await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(status["filename"], "unknown.bin", "{status}");
}

/// Reads from `conn` until `buf` holds a full response head (`\r\n\r\n`) and returns that
/// head, leaving what follows it in `buf`.
async fn read_head(conn: &mut tokio::net::TcpStream, buf: &mut Vec<u8>) -> String {
    use tokio::io::AsyncReadExt;
    loop {
        if let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") {
            let head: Vec<u8> = buf.drain(..end + 4).collect();
            return String::from_utf8(head).expect("ASCII head");
        }
        let mut chunk = [0u8; 4096];
        let n = tokio::time::timeout(Duration::from_secs(20), conn.read(&mut chunk))
            .await
            .expect("a response head within 20 s")
            .expect("read");
        assert!(
            n > 0,
            "connection closed; got so far: {:?}",
            String::from_utf8_lossy(buf)
        );
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// The value of header `name` in a raw response head.
fn head_value(head: &str, name: &str) -> Option<String> {
    head.lines().find_map(|l| {
        let (k, v) = l.split_once(':')?;
        k.eq_ignore_ascii_case(name).then(|| v.trim().to_string())
    })
}

/// `104 Upload Resumption Supported` over raw HTTP/1.1: a creation request whose body is
/// held back after its first half is answered 104, with the upload's `Location`,
/// `Upload-Limit` and interop version, before the body ends; the upload it names
/// exists meanwhile (seen from another connection), and the final response (200, after
/// the rest) names the same upload, which completes with the right SHA-256.
#[tokio::test]
async fn creation_is_answered_104_before_its_body_ends() {
    use tokio::io::AsyncWriteExt;
    let (server, _store) = start!(&[]);
    let c = Ietf::new(&server);
    let bytes = random_bytes(3 * MIB + 11, 104);
    let addr = server.url().trim_start_matches("http://").to_string();
    let mut conn = tokio::net::TcpStream::connect(&addr).await.unwrap();
    let request = format!(
        "POST /uploads/ HTTP/1.1\r\nhost: {addr}\r\nupload-draft-interop-version: 8\r\n\
         upload-complete: ?1\r\ncontent-length: {}\r\n\r\n",
        bytes.len()
    );
    conn.write_all(request.as_bytes()).await.unwrap();
    let half = bytes.len() / 2;
    conn.write_all(&bytes[..half]).await.unwrap();
    let mut buf = Vec::new();
    let interim = read_head(&mut conn, &mut buf).await;
    assert!(
        interim.starts_with("HTTP/1.1 104 Upload Resumption Supported\r\n"),
        "{interim}"
    );
    let loc = head_value(&interim, "location").expect("104 names the upload");
    assert!(loc.starts_with("/uploads/"), "{loc}");
    assert!(
        head_value(&interim, "upload-limit").is_some_and(|l| l.contains("max-size=")),
        "{interim}"
    );
    assert_eq!(
        head_value(&interim, "upload-draft-interop-version").as_deref(),
        Some("8")
    );
    // The upload exists while its creation's body is still on its way.
    let (code, status) = c.native(&loc).await;
    assert_eq!(code, StatusCode::OK);
    assert_eq!(status["state"], "uploading");
    conn.write_all(&bytes[half..]).await.unwrap();
    let last = read_head(&mut conn, &mut buf).await;
    assert!(last.starts_with("HTTP/1.1 200 "), "{last}");
    assert_eq!(head_value(&last, "upload-complete").as_deref(), Some("?1"));
    assert_eq!(head_value(&last, "location").as_deref(), Some(loc.as_str()));
    c.assert_completed(&loc, &bytes).await;
}

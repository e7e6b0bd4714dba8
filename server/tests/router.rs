//! The HTTP contract, in process: requests go through the whole router (authentication,
//! rate limits, tus headers, error rendering) to the real domain core over local disk in a
//! temporary directory, without a socket. For what a socket adds (timeouts, connection
//! limits, 1xx responses, real clients), see the end-to-end tests in `tests/`.
//!
//! The assertions come from the protocols: tus 1.0 (<https://tus.io/protocols/resumable-upload>),
//! the IETF resumable-upload draft and RFC 9457.

use std::sync::atomic::AtomicBool;
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use base64::Engine;
use server::auth::Auth;
use server::rate_limit::RateLimit;
use server::AppState;
use storage::{LocalBackend, Uploads, UploadsConfig};
use tower::ServiceExt;

/// The whole application over a fresh data directory (kept alive by the returned guard).
async fn app_with(config: UploadsConfig) -> (Router, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let backend = Arc::new(LocalBackend::open(dir.path()).unwrap());
    let uploads = Uploads::open(backend, config).await.unwrap();
    let state = AppState {
        uploads,
        shutting_down: Arc::new(AtomicBool::new(false)),
        body_timeout: Duration::from_secs(5),
        tus_path: "/files/".into(),
        auth: Auth::new(None, None).unwrap(),
        admin_owners: Arc::new(Vec::new()),
        metrics: None,
        rate_limit: RateLimit::new(0, 0),
        peers: None,
    };
    (server::app(state, &[]), dir)
}

async fn app() -> (Router, tempfile::TempDir) {
    app_with(UploadsConfig::default()).await
}

/// An answer: status, headers and body.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Answer {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }

    fn number(&self, name: &str) -> u64 {
        self.header(name)
            .unwrap_or_else(|| panic!("no {name} in {:?}", self.headers))
            .parse()
            .unwrap()
    }

    fn json(&self) -> serde_json::Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("{e}: {}", String::from_utf8_lossy(&self.body)))
    }
}

async fn send(app: &Router, req: Request<Body>) -> Answer {
    let resp = app.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), 1 << 24)
        .await
        .unwrap()
        .to_vec();
    Answer {
        status,
        headers,
        body,
    }
}

/// A tus request (with `Tus-Resumable: 1.0.0`).
fn tus(method: Method, uri: &str, headers: &[(&str, &str)], body: &[u8]) -> Request<Body> {
    let mut b = Request::builder()
        .method(method.clone())
        .uri(uri)
        .header("tus-resumable", "1.0.0");
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    if !body.is_empty() || method == Method::PATCH {
        b = b
            .header("content-type", "application/offset+octet-stream")
            .header("content-length", body.len());
    }
    b.body(Body::from(body.to_vec())).unwrap()
}

/// Creates a tus upload; returns its path.
async fn tus_create(app: &Router, headers: &[(&str, &str)]) -> String {
    let a = send(app, tus(Method::POST, "/files/", headers, b"")).await;
    assert_eq!(a.status, StatusCode::CREATED);
    a.header("location").unwrap().to_string()
}

async fn tus_patch(app: &Router, path: &str, offset: u64, body: &[u8]) -> Answer {
    let offset = offset.to_string();
    send(
        app,
        tus(Method::PATCH, path, &[("upload-offset", &offset)], body),
    )
    .await
}

async fn tus_offset(app: &Router, path: &str) -> Answer {
    send(app, tus(Method::HEAD, path, &[], b"")).await
}

/// tus 1.0, "X-HTTP-Method-Override": the Server MUST interpret it as the request's method.
#[tokio::test]
async fn tus_method_override_is_interpreted() {
    let (app, _dir) = app().await;
    let path = tus_create(&app, &[("upload-length", "10")]).await;
    let mut req = tus(Method::POST, &path, &[("upload-offset", "0")], b"hello");
    req.headers_mut()
        .insert("x-http-method-override", "PATCH".parse().unwrap());
    let a = send(&app, req).await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.number("upload-offset"), 5);
    assert_eq!(tus_offset(&app, &path).await.number("upload-offset"), 5);

    let mut req = tus(Method::POST, &path, &[], b"");
    req.headers_mut()
        .insert("x-http-method-override", "DELETE".parse().unwrap());
    assert_eq!(send(&app, req).await.status, StatusCode::NO_CONTENT);
    let gone = tus_offset(&app, &path).await.status;
    assert!(
        gone == StatusCode::GONE || gone == StatusCode::NOT_FOUND,
        "terminated: {gone}"
    );
}

/// tus 1.0: a request the server refuses does not change the upload. A deferred-length
/// PATCH whose `Upload-Length` exceeds `Tus-Max-Size` is 413 and appends nothing.
#[tokio::test]
async fn a_refused_patch_changes_nothing() {
    let (app, _dir) = app_with(UploadsConfig {
        max_upload_size: 1 << 20,
        ..UploadsConfig::default()
    })
    .await;
    let path = tus_create(&app, &[("upload-defer-length", "1")]).await;
    assert_eq!(
        tus_patch(&app, &path, 0, b"abcdef").await.status,
        StatusCode::NO_CONTENT
    );
    let too_long = ((1u64 << 20) + 1).to_string();
    let a = send(
        &app,
        tus(
            Method::PATCH,
            &path,
            &[("upload-offset", "6"), ("upload-length", &too_long)],
            b"ghijklmn",
        ),
    )
    .await;
    assert_eq!(a.status, StatusCode::PAYLOAD_TOO_LARGE);
    let head = tus_offset(&app, &path).await;
    assert_eq!(head.number("upload-offset"), 6, "nothing appended");
    assert_eq!(
        head.header("upload-defer-length"),
        Some("1"),
        "no length said"
    );
}

/// tus 1.0, concatenation: "The Server MUST respond with the 403 Forbidden status to PATCH
/// requests against a final upload URL", and `Upload-Concat` is answered as it was sent.
#[tokio::test]
async fn a_final_upload_takes_no_patch_and_says_its_parts_as_sent() {
    let (app, _dir) = app().await;
    let mut parts = Vec::new();
    for bytes in [&b"abc"[..], b"defg"] {
        let len = bytes.len().to_string();
        let path = tus_create(
            &app,
            &[("upload-length", &len), ("upload-concat", "partial")],
        )
        .await;
        assert_eq!(
            tus_patch(&app, &path, 0, bytes).await.status,
            StatusCode::NO_CONTENT
        );
        parts.push(format!("https://uploads.example{path}"));
    }
    let concat = format!("final;{}", parts.join(" "));
    let final_path = tus_create(&app, &[("upload-concat", &concat)]).await;
    let head = tus_offset(&app, &final_path).await;
    assert_eq!(head.header("upload-concat"), Some(concat.as_str()));
    assert_eq!(head.number("upload-offset"), 7);
    assert_eq!(head.number("upload-length"), 7);
    let a = tus_patch(&app, &final_path, 7, b"x").await;
    assert_eq!(a.status, StatusCode::FORBIDDEN);
    assert_eq!(a.header("tus-resumable"), Some("1.0.0"));
    assert_eq!(
        tus_offset(&app, &final_path).await.number("upload-offset"),
        7
    );
}

/// A final upload names each part once: a short header cannot make the server copy a
/// part over and over.
#[tokio::test]
async fn a_final_upload_names_each_part_once() {
    let (app, _dir) = app().await;
    let path = tus_create(
        &app,
        &[("upload-length", "3"), ("upload-concat", "partial")],
    )
    .await;
    assert_eq!(
        tus_patch(&app, &path, 0, b"abc").await.status,
        StatusCode::NO_CONTENT
    );
    let concat = format!("final;{path} {path}");
    let a = send(
        &app,
        tus(Method::POST, "/files/", &[("upload-concat", &concat)], b""),
    )
    .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

/// tus 1.0: an empty PATCH at the offset of a completed upload is answered 204 with that
/// offset; a PATCH at another offset is 409.
#[tokio::test]
async fn an_empty_patch_at_the_end_of_a_completed_upload_is_204() {
    let (app, _dir) = app().await;
    let path = tus_create(&app, &[("upload-length", "5")]).await;
    assert_eq!(
        tus_patch(&app, &path, 0, b"hello").await.status,
        StatusCode::NO_CONTENT
    );
    let a = tus_patch(&app, &path, 5, b"").await;
    assert_eq!(a.status, StatusCode::NO_CONTENT);
    assert_eq!(a.number("upload-offset"), 5);
    assert_eq!(
        tus_patch(&app, &path, 3, b"").await.status,
        StatusCode::CONFLICT
    );
}

/// tus 1.0: "The Tus-Resumable header MUST be included in every request and response
/// except for OPTIONS requests": the router's 405 and the 404 of an id that cannot be
/// one carry it too.
#[tokio::test]
async fn every_tus_answer_carries_tus_resumable() {
    let (app, _dir) = app().await;
    let path = tus_create(&app, &[("upload-length", "5")]).await;
    let a = send(&app, tus(Method::GET, &path, &[], b"")).await;
    assert_eq!(a.status, StatusCode::METHOD_NOT_ALLOWED);
    assert_eq!(a.header("tus-resumable"), Some("1.0.0"));
    let a = send(&app, tus(Method::HEAD, "/files/not-an-id", &[], b"")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("tus-resumable"), Some("1.0.0"));
    let a = send(&app, tus(Method::PATCH, "/files/a/b", &[], b"")).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("tus-resumable"), Some("1.0.0"));
    // Not on the native API.
    let a = send(&app, tus(Method::GET, "/v1/uploads/nope", &[], b"")).await;
    assert_eq!(a.header("tus-resumable"), None);
}

/// tus 1.0, checksum extension: a mismatch is `460 Checksum Mismatch` and nothing is
/// appended.
#[tokio::test]
async fn a_checksum_mismatch_is_460_and_appends_nothing() {
    let (app, _dir) = app().await;
    let path = tus_create(&app, &[("upload-length", "5")]).await;
    let wrong = format!(
        "sha1 {}",
        base64::engine::general_purpose::STANDARD.encode([0u8; 20])
    );
    let a = send(
        &app,
        tus(
            Method::PATCH,
            &path,
            &[("upload-offset", "0"), ("upload-checksum", &wrong)],
            b"hello",
        ),
    )
    .await;
    assert_eq!(a.status.as_u16(), 460);
    assert_eq!(tus_offset(&app, &path).await.number("upload-offset"), 0);
}

/// An IETF append at the wrong offset: 409 with the registered problem type and the
/// offsets (draft, "Offset Mismatch"), and `Upload-Offset` saying where to resume.
#[tokio::test]
async fn an_ietf_offset_mismatch_is_the_registered_problem() {
    let (app, _dir) = app().await;
    let create = Request::builder()
        .method(Method::POST)
        .uri("/uploads/")
        .header("upload-complete", "?0")
        .header("upload-length", "10")
        .header("content-length", "4")
        .body(Body::from("abcd"))
        .unwrap();
    let a = send(&app, create).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let path = a.header("location").unwrap().to_string();
    let append = Request::builder()
        .method(Method::PATCH)
        .uri(&path)
        .header("content-type", "application/partial-upload")
        .header("upload-offset", "2")
        .header("upload-complete", "?0")
        .header("content-length", "3")
        .body(Body::from("xyz"))
        .unwrap();
    let a = send(&app, append).await;
    assert_eq!(a.status, StatusCode::CONFLICT);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    assert_eq!(a.number("upload-offset"), 4);
    let p = a.json();
    assert_eq!(
        p["type"],
        "https://iana.org/assignments/http-problem-types#mismatching-upload-offset"
    );
    assert_eq!(p["expected-offset"], 4);
    assert_eq!(p["provided-offset"], 2);
}

/// RFC 9457 on the native API: an unknown upload is a problem document with a type, a
/// title, the status and a detail.
#[tokio::test]
async fn native_errors_are_problem_documents() {
    let (app, _dir) = app().await;
    let id = uuid_like();
    let req = Request::builder()
        .uri(format!("/v1/uploads/{id}"))
        .body(Body::empty())
        .unwrap();
    let a = send(&app, req).await;
    assert_eq!(a.status, StatusCode::NOT_FOUND);
    assert_eq!(a.header("content-type"), Some("application/problem+json"));
    let p = a.json();
    assert_eq!(p["status"], 404);
    assert!(p["type"].as_str().unwrap().starts_with("/problems/"));
    assert!(!p["title"].as_str().unwrap().is_empty());
    assert!(!p["detail"].as_str().unwrap().is_empty());
}

fn uuid_like() -> String {
    "6f1c4d2a-8e3b-4c5d-9a7f-0b1e2d3c4f5a".into()
}

/// Uploads `bytes` over the native API in one chunk; returns the upload's id.
async fn native_upload(app: &Router, bytes: &[u8]) -> String {
    let create = Request::builder()
        .method(Method::POST)
        .uri("/v1/uploads")
        .header("content-type", "application/json")
        .body(Body::from(format!("{{\"size\": {}}}", bytes.len())))
        .unwrap();
    let a = send(app, create).await;
    assert_eq!(a.status, StatusCode::CREATED);
    let id = a.json()["id"].as_str().unwrap().to_string();
    let put = Request::builder()
        .method(Method::PUT)
        .uri(format!("/v1/uploads/{id}/chunks/0"))
        .body(Body::from(bytes.to_vec()))
        .unwrap();
    assert_eq!(send(app, put).await.status, StatusCode::CREATED);
    let complete = Request::builder()
        .method(Method::POST)
        .uri(format!("/v1/uploads/{id}/complete"))
        .body(Body::empty())
        .unwrap();
    assert_eq!(send(app, complete).await.status, StatusCode::OK);
    id
}

async fn download(app: &Router, id: &str, headers: &[(&str, &str)]) -> Answer {
    let mut b = Request::builder().uri(format!("/v1/uploads/{id}/content"));
    for (k, v) in headers {
        b = b.header(*k, *v);
    }
    send(app, b.body(Body::empty()).unwrap()).await
}

/// RFC 9110 §14: a suffix range longer than the file is the whole file (206); a range
/// past the end is 416 with `Content-Range: bytes */size`; `If-Range` with another ETag
/// gets the whole file (200); several ranges may be answered with the whole file.
#[tokio::test]
async fn downloads_answer_ranges_as_rfc_9110_says() {
    let (app, _dir) = app().await;
    let file = b"0123456789";
    let id = native_upload(&app, file).await;
    let a = download(&app, &id, &[("range", "bytes=-500")]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    assert_eq!(a.header("content-range"), Some("bytes 0-9/10"));
    assert_eq!(a.body, file);
    let a = download(&app, &id, &[("range", "bytes=2-4")]).await;
    assert_eq!(
        (a.status, a.body.as_slice()),
        (StatusCode::PARTIAL_CONTENT, &b"234"[..])
    );
    let a = download(&app, &id, &[("range", "bytes=10-")]).await;
    assert_eq!(a.status, StatusCode::RANGE_NOT_SATISFIABLE);
    assert_eq!(a.header("content-range"), Some("bytes */10"));
    let etag = download(&app, &id, &[])
        .await
        .header("etag")
        .unwrap()
        .to_string();
    let a = download(
        &app,
        &id,
        &[("range", "bytes=2-4"), ("if-range", "\"other\"")],
    )
    .await;
    assert_eq!((a.status, a.body.as_slice()), (StatusCode::OK, &file[..]));
    let a = download(&app, &id, &[("range", "bytes=2-4"), ("if-range", &etag)]).await;
    assert_eq!(a.status, StatusCode::PARTIAL_CONTENT);
    let a = download(&app, &id, &[("range", "bytes=0-1,4-5")]).await;
    assert!(
        a.status == StatusCode::OK && a.body == file || a.status == StatusCode::PARTIAL_CONTENT,
        "{}",
        a.status
    );
}

/// RFC 9110 §13.1.2: `If-None-Match` uses the weak comparison, so `W/"<etag>"` matches
/// and the answer is 304 with the ETag.
#[tokio::test]
async fn if_none_match_compares_weakly() {
    let (app, _dir) = app().await;
    let id = native_upload(&app, b"abc").await;
    let etag = download(&app, &id, &[])
        .await
        .header("etag")
        .unwrap()
        .to_string();
    for tag in [etag.clone(), format!("W/{etag}"), "\"x\", *".into()] {
        let a = download(&app, &id, &[("if-none-match", &tag)]).await;
        assert_eq!(a.status, StatusCode::NOT_MODIFIED, "{tag}");
        assert_eq!(a.header("etag"), Some(etag.as_str()));
    }
    let a = download(&app, &id, &[("if-none-match", "\"other\"")]).await;
    assert_eq!(a.status, StatusCode::OK);
}

//! Real, unmodified tus clients against our server's tus endpoint (`/files/`), issue 6
//! "Tests with real clients": tus-js-client in Node, tuspy, and Uppy (@uppy/core +
//! @uppy/tus) in headless Chromium. The drivers live in `scripts/webclients/`.
//!
//! Each test starts its own `upload-server`, runs a driver as a child process with a
//! timeout, checks the driver's JSON, and then checks the same upload through the native
//! API: `GET /v1/uploads/{id}` (state, SHA-256, size, filename and metadata) and the SHA-256
//! of `GET /v1/uploads/{id}/content`.
//!
//! Skipped (with `SKIPPED …` on stderr) when the clients are not installed, unless
//! `WEBCLIENTS_REQUIRED=1` (`make test`), which makes that a failure.
//!
//! tus-js-client and tuspy also upload to a server on S3 storage (`--storage s3`, a bucket of
//! the binary's shared S3 test server), where short appends are held as piece objects until
//! their chunk is whole; those tests also skip (or fail under `S3_REQUIRED=1`) when the S3
//! test server is not installed.
//!
//! tus-js-client's IETF draft protocols are tested in `ietf.rs`.

use std::path::Path;
use std::time::Duration;

use reqwest::{Client, StatusCode};
use serde_json::Value;
use tests::webclients::{self, DriverResult};
use tests::{random_bytes, sha256_hex, write_file, Server};

const MIB: usize = 1 << 20;

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("reqwest client")
}

/// A server that browsers on any origin may call.
fn start_server() -> (Server, tempfile::TempDir) {
    Server::start(&["--cors-origin", "*"])
}

fn endpoint(server: &Server) -> String {
    format!("{}/files/", server.url())
}

/// Runs a blocking driver call off the async runtime.
async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> T {
    tokio::task::spawn_blocking(f).await.expect("driver thread")
}

/// tus-js-client uploading `file` to `server`'s tus endpoint, with `args` beside
/// `--endpoint` and `--file`, run off the async runtime.
async fn tusjs_upload(server: &Server, file: &str, args: &[&str]) -> DriverResult {
    let mut all = vec![
        "--endpoint".to_string(),
        endpoint(server),
        "--file".into(),
        file.into(),
    ];
    all.extend(args.iter().map(|a| a.to_string()));
    blocking(move || webclients::tusjs(&all.iter().map(String::as_str).collect::<Vec<_>>())).await
}

/// The upload id in a tus upload URL, which must be `<server>/files/<id>`.
fn upload_id(server: &Server, url: &str) -> String {
    let prefix = endpoint(server);
    let id = url
        .strip_prefix(&prefix)
        .unwrap_or_else(|| panic!("upload URL {url} is not under {prefix}"));
    assert!(
        !id.is_empty() && !id.contains('/') && !id.contains('?'),
        "upload URL {url} does not end in an upload id"
    );
    id.to_string()
}

/// `GET /v1/uploads/{id}` as JSON.
async fn native_status(http: &Client, server: &Server, id: &str) -> Value {
    let resp = http
        .get(format!("{}/v1/uploads/{id}", server.url()))
        .send()
        .await
        .expect("GET /v1/uploads/{id}");
    assert_eq!(resp.status(), StatusCode::OK, "native status of {id}");
    resp.json().await.expect("status JSON")
}

/// The upload behind the tus `url` is complete in the native API with exactly `bytes`:
/// state, SHA-256, size, filename (from `Upload-Metadata`) and the content's SHA-256.
/// Returns the native status.
async fn assert_completed_natively(
    server: &Server,
    url: &str,
    bytes: &[u8],
    filename: &str,
) -> Value {
    let http = client();
    let id = upload_id(server, url);
    let sha = sha256_hex(bytes);
    let status = native_status(&http, server, &id).await;
    assert_eq!(status["id"], id.as_str(), "{status}");
    assert_eq!(status["state"], "completed", "{status}");
    assert_eq!(status["sha256"], sha.as_str(), "{status}");
    assert_eq!(status["size"], bytes.len() as u64, "{status}");
    assert_eq!(status["received_bytes"], bytes.len() as u64, "{status}");
    assert_eq!(status["missing"], serde_json::json!([]), "{status}");
    assert_eq!(status["filename"], filename, "{status}");
    assert_eq!(status["metadata"]["filename"], filename, "{status}");

    let resp = http
        .get(format!("{}/v1/uploads/{id}/content", server.url()))
        .send()
        .await
        .expect("GET content");
    assert_eq!(resp.status(), StatusCode::OK, "content of {id}");
    let content = resp.bytes().await.expect("content body");
    assert_eq!(content.len(), bytes.len(), "content length of {id}");
    assert_eq!(sha256_hex(&content), sha, "content SHA-256 of {id}");
    status
}

/// tus `HEAD` of an upload URL: (status, Upload-Offset, Upload-Length).
async fn tus_head(url: &str) -> (StatusCode, Option<u64>, Option<u64>) {
    let resp = client()
        .head(url)
        .header("Tus-Resumable", "1.0.0")
        .send()
        .await
        .expect("HEAD");
    let num = |name: &str| {
        resp.headers()
            .get(name)
            .and_then(|v| v.to_str().ok())
            .and_then(|v| v.parse().ok())
    };
    (resp.status(), num("upload-offset"), num("upload-length"))
}

/// A test file of `len` random bytes named `name` in `dir`.
fn test_file(dir: &Path, name: &str, len: usize, seed: u64) -> (Vec<u8>, String) {
    let bytes = random_bytes(len, seed);
    let path = write_file(dir, name, &bytes);
    (bytes, path.display().to_string())
}

fn requests(result: &DriverResult, method: &str) -> u64 {
    result.get("requests")[method].as_u64().unwrap_or(0)
}

#[tokio::test]
async fn tusjs_single_upload_in_8mib_chunks() {
    if !webclients::available_or_skip("tusjs_single_upload_in_8mib_chunks") {
        return;
    }
    let (server, _data) = start_server();
    let dir = tempfile::tempdir().unwrap();
    // Not a multiple of the chunk size: two full 8 MiB PATCHes and a short last one.
    let len = 2 * 8 * MIB + 12_345;
    let (bytes, file) = test_file(dir.path(), "upload.bin", len, 1);
    // A filename with a space and non-ASCII letters, carried base64 in Upload-Metadata.
    let filename = "rapport été 2026.bin";
    let r = tusjs_upload(
        &server,
        &file,
        &[
            "--chunk-size",
            "8388608",
            "--metadata",
            &format!("filename={filename}"),
        ],
    )
    .await;
    r.assert_ok();
    assert_eq!(r.str("mode"), "single", "{r}");
    assert_eq!(r.u64("bytes"), len as u64, "{r}");
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), 3, "{r}");
    let status = assert_completed_natively(&server, r.str("url"), &bytes, filename).await;
    assert_eq!(
        status["metadata"]["filetype"], "application/octet-stream",
        "{status}"
    );
}

/// tus-js-client with `uploadLengthDeferred`: the upload is created with
/// `Upload-Defer-Length: 1`, streamed in 5 MiB PATCHes, and the last one says the length;
/// the native status shows it completed with the file's SHA-256.
#[tokio::test]
async fn tusjs_upload_with_its_length_deferred() {
    if !webclients::available_or_skip("tusjs_upload_with_its_length_deferred") {
        return;
    }
    let (server, _data) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let len = 3 * 5 * MIB + 4_321;
    let (bytes, file) = test_file(dir.path(), "deferred.bin", len, 7);
    let r = tusjs_upload(
        &server,
        &file,
        &[
            "--chunk-size",
            "5242880",
            "--defer-length",
            "--metadata",
            "filename=deferred.bin",
        ],
    )
    .await;
    r.assert_ok();
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert!(requests(&r, "PATCH") >= 4, "{r}");
    let status = assert_completed_natively(&server, r.str("url"), &bytes, "deferred.bin").await;
    assert!(status.get("length_deferred").is_none(), "{status}");
}

/// tus-js-client with `uploadLengthDeferred` and a stream source (a plain Readable, whose
/// size it does not know: the case the option is for): `Upload-Defer-Length: 1` at creation,
/// 5 MiB PATCHes, and the last one, short, says the length; the native status shows it
/// completed with the file's SHA-256 and no `length_deferred`. (The length is no multiple of
/// the chunk size: tus-js-client 4.3.1's stream source waits forever for more data after a
/// stream that ends at a chunk boundary, and never sends the last PATCH.)
#[tokio::test]
async fn tusjs_stream_with_its_length_deferred() {
    if !webclients::available_or_skip("tusjs_stream_with_its_length_deferred") {
        return;
    }
    let (server, _data) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let len = 2 * 5 * MIB + 54_321;
    let (bytes, file) = test_file(dir.path(), "streamed.bin", len, 8);
    let r = tusjs_upload(
        &server,
        &file,
        &["--chunk-size", "5242880", "--defer-length", "--stream"],
    )
    .await;
    r.assert_ok();
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_eq!(requests(&r, "POST"), 1, "{r}");
    assert_eq!(requests(&r, "PATCH"), 3, "{r}");
    let status = assert_completed_natively(&server, r.str("url"), &bytes, "streamed.bin").await;
    assert!(status.get("length_deferred").is_none(), "{status}");
    assert_eq!(
        tus_head(r.str("url")).await,
        (StatusCode::OK, Some(len as u64), Some(len as u64))
    );
}

#[tokio::test]
async fn tusjs_parallel_uploads_are_concatenated_into_one_verified_file() {
    if !webclients::available_or_skip(
        "tusjs_parallel_uploads_are_concatenated_into_one_verified_file",
    ) {
        return;
    }
    let (server, _data) = start_server();
    tusjs_parallel_upload(&server).await;
}

/// tus-js-client with `parallelUploads: 4` (four partial uploads of ~3 MiB, then a final
/// one concatenating them) of a 12 MiB file to `server`, checked through the native API.
/// Returns the final upload's URL.
async fn tusjs_parallel_upload(server: &Server) -> String {
    let dir = tempfile::tempdir().unwrap();
    let len = 12 * MIB + 777;
    let (bytes, file) = test_file(dir.path(), "parallel.bin", len, 7);
    let filename = "parallel.bin";
    let r = tusjs_upload(
        server,
        &file,
        &[
            "--parallel",
            "4",
            "--chunk-size",
            "4194304",
            "--metadata",
            &format!("filename={filename}"),
        ],
    )
    .await;
    r.assert_ok();
    assert_eq!(r.str("mode"), "parallel", "{r}");
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    // Four partial uploads and one final one.
    assert_eq!(requests(&r, "POST"), 5, "{r}");
    assert_completed_natively(server, r.str("url"), &bytes, filename).await;
    r.str("url").to_string()
}

#[tokio::test]
async fn tusjs_interrupted_upload_resumes_from_its_fingerprint_store() {
    if !webclients::available_or_skip("tusjs_interrupted_upload_resumes_from_its_fingerprint_store")
    {
        return;
    }
    let (server, _data) = start_server();
    tusjs_interrupted_upload_resumes(&server).await;
}

/// tus-js-client uploads a 16 MiB file to `server` in 4 MiB PATCHes, aborts once 40% is
/// sent, and a new `Upload` finds the URL in its `FileUrlStorage` by fingerprint and
/// resumes it (HEAD, then the rest); checked through the native API. Returns the URL.
async fn tusjs_interrupted_upload_resumes(server: &Server) -> String {
    let dir = tempfile::tempdir().unwrap();
    let len = 16 * MIB + 1_000;
    let (bytes, file) = test_file(dir.path(), "resumed.bin", len, 2);
    let store = dir.path().join("tus-urls.json").display().to_string();
    // 4 MiB chunks, aborted once 40% is sent (during the second PATCH), then a new Upload
    // finds the URL in the FileUrlStorage by fingerprint and resumes it.
    let r = tusjs_upload(
        server,
        &file,
        &[
            "--chunk-size",
            "4194304",
            "--interrupt-at",
            "0.4",
            "--url-store",
            &store,
        ],
    )
    .await;
    // Shown with --nocapture: whether the resume met a 423/409 (retried by tus-js-client).
    eprintln!("tus-js-client interrupt+resume: {}", r.json);
    r.assert_ok();
    assert_eq!(r.str("mode"), "interrupt-resume", "{r}");
    assert_eq!(r.u64("previous_uploads_found"), 1, "{r}");
    assert_eq!(
        r.str("first_url"),
        r.str("url"),
        "resumed the same upload: {r}"
    );
    let resumed = r.u64("resumed_offset");
    let aborted_after = r.u64("aborted_after_sent");
    // The first 4 MiB PATCH was acknowledged before the abort, so the server has at least
    // that; it cannot have more than the client had sent.
    assert!(
        resumed >= 4 * MIB as u64 && resumed <= aborted_after && resumed < len as u64,
        "resumed at {resumed} (aborted after {aborted_after} of {len}): {r}"
    );
    assert_eq!(requests(&r, "POST"), 1, "one upload was created: {r}");
    assert_eq!(
        requests(&r, "HEAD"),
        1,
        "the resume asked for the offset: {r}"
    );
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_completed_natively(server, r.str("url"), &bytes, "resumed.bin").await;
    // removeFingerprintOnSuccess: the store no longer lists the finished upload.
    let stored = std::fs::read_to_string(&store).unwrap_or_default();
    assert!(
        !stored.contains(r.str("url")),
        "the finished upload is still in the fingerprint store: {stored}"
    );
    r.str("url").to_string()
}

#[tokio::test]
async fn tusjs_checksum_mismatch_is_460_and_appends_nothing() {
    if !webclients::available_or_skip("tusjs_checksum_mismatch_is_460_and_appends_nothing") {
        return;
    }
    let (server, _data) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let len = 6 * MIB + 7;
    let (_bytes, file) = test_file(dir.path(), "bad-checksum.bin", len, 3);
    let r = tusjs_upload(
        &server,
        &file,
        &["--chunk-size", "4194304", "--checksum-mismatch"],
    )
    .await;
    // The driver is ok only if it saw 460 and then offset 0; check both ourselves too.
    r.assert_ok();
    assert_eq!(
        r.str("sent_checksum"),
        "sha1 2jmj7l5rSw0yVb/vlWAYkK/YBwk=",
        "{r}"
    );
    assert_eq!(r.u64("status"), 460, "{r}");
    assert_eq!(r.u64("offset_after"), 0, "{r}");
    assert_eq!(requests(&r, "PATCH"), 1, "no retry after a 460: {r}");
    let problem: Value = serde_json::from_str(r.str("response_body"))
        .unwrap_or_else(|e| panic!("460 body is not JSON ({e}): {r}"));
    assert_eq!(problem["status"], 460, "{problem}");
    assert_eq!(problem["type"], "/problems/checksum-mismatch", "{problem}");

    let url = r.str("url");
    let id = upload_id(&server, url);
    let (status, offset, length) = tus_head(url).await;
    assert_eq!(status, StatusCode::OK, "HEAD {url}");
    assert_eq!(offset, Some(0), "HEAD {url}: nothing appended");
    assert_eq!(length, Some(len as u64), "HEAD {url}");
    let native = native_status(&client(), &server, &id).await;
    assert_eq!(native["state"], "uploading", "{native}");
    assert_eq!(native["received_bytes"], 0, "{native}");
    assert_eq!(native["size"], len as u64, "{native}");
    assert!(native.get("sha256").is_none_or(Value::is_null), "{native}");
}

#[tokio::test]
async fn tuspy_upload_with_sha256_upload_checksum() {
    if !webclients::available_or_skip("tuspy_upload_with_sha256_upload_checksum") {
        return;
    }
    let (server, _data) = start_server();
    tuspy_upload_with_sha256_checksums(&server).await;
}

/// tuspy uploads a 10 MiB file to `server` in PATCHes of 3,000,000 bytes (not aligned with
/// the server's chunks), each with `Upload-Checksum: sha256 …`; checked through the native
/// API. Returns the upload URL.
async fn tuspy_upload_with_sha256_checksums(server: &Server) -> String {
    let dir = tempfile::tempdir().unwrap();
    let len = 10 * MIB + 3;
    let chunk = 3_000_000usize; // not aligned with the server's chunks
    let (bytes, file) = test_file(dir.path(), "tuspy-checksum.bin", len, 4);
    let ep = endpoint(server);
    let r = blocking(move || {
        webclients::tuspy(&[
            "--endpoint",
            &ep,
            "--file",
            &file,
            "--checksum",
            "--checksum-algorithm",
            "sha256",
            "--chunk-size",
            &chunk.to_string(),
        ])
    })
    .await;
    r.assert_ok();
    assert_eq!(r.str("mode"), "single", "{r}");
    assert_eq!(r.str("checksum"), "sha256", "{r}");
    assert_eq!(r.get("complete"), &Value::Bool(true), "{r}");
    assert_eq!(r.u64("offset"), len as u64, "{r}");
    assert_eq!(r.u64("chunks_sent"), len.div_ceil(chunk) as u64, "{r}");
    assert_eq!(r.str("sha256"), sha256_hex(&bytes), "{r}");
    assert_completed_natively(server, r.str("url"), &bytes, "tuspy-checksum.bin").await;
    r.str("url").to_string()
}

#[tokio::test]
async fn tuspy_stops_after_two_chunks_then_resumes_from_the_stored_url() {
    if !webclients::available_or_skip(
        "tuspy_stops_after_two_chunks_then_resumes_from_the_stored_url",
    ) {
        return;
    }
    let (server, _data) = start_server();
    let dir = tempfile::tempdir().unwrap();
    let len = 10 * MIB + 5;
    let (bytes, file) = test_file(dir.path(), "tuspy-resume.bin", len, 5);
    let ep = endpoint(&server);
    // First process: create, send two 4 MiB chunks (with tuspy's default sha1 checksums), stop.
    let first = {
        let (ep, file) = (ep.clone(), file.clone());
        blocking(move || {
            webclients::tuspy(&[
                "--endpoint",
                &ep,
                "--file",
                &file,
                "--checksum",
                "--chunk-size",
                "4194304",
                "--stop-after-chunks",
                "2",
            ])
        })
        .await
    };
    first.assert_ok();
    assert_eq!(first.str("mode"), "partial", "{first}");
    assert_eq!(first.str("checksum"), "sha1", "{first}");
    assert_eq!(first.get("complete"), &Value::Bool(false), "{first}");
    assert_eq!(first.u64("chunks_sent"), 2, "{first}");
    assert_eq!(first.u64("offset"), 8 * MIB as u64, "{first}");
    let url = first.str("url").to_string();
    let id = upload_id(&server, &url);
    let (status, offset, length) = tus_head(&url).await;
    assert_eq!(
        (status, offset, length),
        (StatusCode::OK, Some(8 * MIB as u64), Some(len as u64)),
        "HEAD {url} between the two processes"
    );
    let native = native_status(&client(), &server, &id).await;
    assert_eq!(native["state"], "uploading", "{native}");

    // Second process: resume from the stored URL (HEAD for the offset, then the rest).
    let r = {
        let url = url.clone();
        blocking(move || {
            webclients::tuspy(&[
                "--endpoint",
                &ep,
                "--file",
                &file,
                "--checksum",
                "--chunk-size",
                "4194304",
                "--resume-url",
                &url,
            ])
        })
        .await
    };
    r.assert_ok();
    assert_eq!(r.str("mode"), "resume", "{r}");
    assert_eq!(r.str("url"), url, "{r}");
    assert_eq!(r.u64("resumed_offset"), 8 * MIB as u64, "{r}");
    assert_eq!(r.get("complete"), &Value::Bool(true), "{r}");
    assert_eq!(r.u64("offset"), len as u64, "{r}");
    assert_eq!(r.u64("chunks_sent"), 1, "only the rest was sent: {r}");
    assert_completed_natively(&server, &url, &bytes, "tuspy-resume.bin").await;
}

// ---------------------------------------------------------------------------------------
// The same clients against `upload-server --storage s3`: tus appends of any length are
// held as "piece" objects (`uploads/{id}/chunks/{index:05}/pieces/…`) until their chunk (an
// S3 multipart part, at least 5 MiB; 8 MiB by default) is whole, then written as its part
// and the pieces removed. Concatenation (parallelUploads) appends the parts' bytes the same
// way. The shared S3 store (`S3Server::shared_or_skip`), a bucket per test.
// ---------------------------------------------------------------------------------------

/// The server's chunk size when a tus client names none.
mod s3;
mod uppy;

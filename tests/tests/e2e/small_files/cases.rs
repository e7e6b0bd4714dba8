//! A file sent whole in its creating request, against the real server: created, checked
//! against its RFC 9530 `Content-Digest`, completed and served in one round trip; a wrong
//! digest, a body without `Content-Length` or one too large stores nothing and is an RFC
//! 9457 problem; a repeat under the same `Idempotency-Key` answers the first upload; the
//! CLI sends a folder of small files one request a file.

use std::time::Duration;

use base64::Engine;
use reqwest::{Client, RequestBuilder, StatusCode};
use serde_json::Value;
use sha2::{Digest, Sha256};
use tests::{random_bytes, Server};

macro_rules! start {
    ($args:expr) => {
        tests::start_or_skip!(super::STORAGE, $args)
    };
}

const REL: &str = common::relpath::RELATIVE_PATH_KEY;

fn client() -> Client {
    Client::builder()
        .no_proxy()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

fn digest_header(bytes: &[u8]) -> String {
    let b64 = base64::engine::general_purpose::STANDARD;
    format!("sha-256=:{}:", b64.encode(Sha256::digest(bytes)))
}

/// `POST /v1/uploads` with `bytes` as the file, its digest, a name and a relative path.
fn post_whole(server: &Server, bytes: &[u8], digest_of: &[u8]) -> RequestBuilder {
    let b64 = base64::engine::general_purpose::STANDARD;
    client()
        .post(format!("{}/v1/uploads", server.url()))
        .header("content-type", "application/octet-stream")
        .header("content-digest", digest_header(digest_of))
        .header(
            "content-disposition",
            "attachment; filename*=UTF-8''r%C3%A9sum%C3%A9.bin",
        )
        .header(
            "upload-metadata",
            format!("{REL} {}", b64.encode("docs/résumé.bin")),
        )
        .body(bytes.to_vec())
}

async fn listed(server: &Server) -> Vec<Value> {
    let body: Value = client()
        .get(format!("{}/v1/uploads", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    body["uploads"].as_array().unwrap().clone()
}

async fn assert_problem(resp: reqwest::Response, status: StatusCode) -> Value {
    assert_eq!(resp.status(), status);
    let ctype = resp.headers()["content-type"].to_str().unwrap().to_string();
    assert!(ctype.starts_with("application/problem+json"), "{ctype}");
    let body: Value = resp.json().await.unwrap();
    assert_eq!(body["status"], status.as_u16(), "{body}");
    body
}

#[tokio::test]
async fn a_file_in_one_request_is_stored_verified_and_served() {
    let (server, _store) = start!(&[]);
    let caps: Value = client()
        .get(format!("{}/v1", server.url()))
        .send()
        .await
        .unwrap()
        .json()
        .await
        .unwrap();
    assert!(
        caps["one_request_max"].as_u64().unwrap() >= 1 << 20,
        "{caps}"
    );

    let bytes = random_bytes(100_000, 3);
    let resp = post_whole(&server, &bytes, &bytes).send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let location = resp.headers()["location"].to_str().unwrap().to_string();
    let st: Value = resp.json().await.unwrap();
    assert_eq!(st["state"], "completed");
    assert_eq!(st["size"], 100_000);
    assert_eq!(st["received_bytes"], 100_000);
    assert_eq!(st["sha256"], tests::sha256_hex(&bytes));
    assert_eq!(st["filename"], "résumé.bin");
    assert_eq!(st["metadata"][REL], "docs/résumé.bin");
    assert!(location.ends_with(st["id"].as_str().unwrap()), "{location}");
    let content = client()
        .get(format!("{}{location}/content", server.url()))
        .send()
        .await
        .unwrap();
    assert_eq!(content.status(), StatusCode::OK);
    assert_eq!(content.bytes().await.unwrap().as_ref(), bytes.as_slice());
    // An empty file too.
    let resp = post_whole(&server, b"", b"").send().await.unwrap();
    assert_eq!(resp.status(), StatusCode::CREATED);
    let st: Value = resp.json().await.unwrap();
    assert_eq!(
        (st["state"].as_str(), st["size"].as_u64()),
        (Some("completed"), Some(0))
    );
    assert_eq!(listed(&server).await.len(), 2);
}

#[tokio::test]
async fn bad_bodies_store_nothing() {
    let (server, _store) = start!(&["--max-upload-size", "1MiB"]);
    let bytes = random_bytes(50_000, 4);
    // Bytes that are not the ones the digest names.
    let resp = post_whole(&server, &bytes, b"other").send().await.unwrap();
    assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    // No Content-Length: a body of unknown length cannot be told from a cut one.
    let stream = futures_util::stream::iter(vec![Ok::<_, std::io::Error>(bytes.clone())]);
    let resp = post_whole(&server, &[], &bytes)
        .body(reqwest::Body::wrap_stream(stream))
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::LENGTH_REQUIRED).await;
    // Above the largest upload.
    let big = random_bytes(2 << 20, 5);
    let resp = post_whole(&server, &big, &big).send().await.unwrap();
    assert_problem(resp, StatusCode::PAYLOAD_TOO_LARGE).await;
    assert!(listed(&server).await.is_empty());
}

#[tokio::test]
async fn a_repeat_under_the_same_key_answers_the_first_upload() {
    let (server, _store) = start!(&[]);
    let bytes = random_bytes(20_000, 6);
    let send = || {
        post_whole(&server, &bytes, &bytes)
            .header("idempotency-key", "one-file-1")
            .send()
    };
    let first = send().await.unwrap();
    assert_eq!(first.status(), StatusCode::CREATED);
    let first: Value = first.json().await.unwrap();
    let again = send().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], first["id"]);
    assert_eq!(listed(&server).await.len(), 1);
    // The same key with other bytes is another request: refused.
    let other = random_bytes(20_000, 7);
    let resp = post_whole(&server, &other, &other)
        .header("idempotency-key", "one-file-1")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
}

/// A request refused (its bytes are not the ones its digest names) stores nothing and
/// leaves its `Idempotency-Key` free: the client's next try under the key, with the right
/// digest, is stored, and a repeat of that answers it.
#[tokio::test]
async fn a_refused_request_gives_its_key_up() {
    let (server, _store) = start!(&[]);
    let bytes = random_bytes(30_000, 8);
    let resp = post_whole(&server, &bytes, b"not these bytes")
        .header("idempotency-key", "refused-1")
        .send()
        .await
        .unwrap();
    assert_problem(resp, StatusCode::UNPROCESSABLE_ENTITY).await;
    assert!(listed(&server).await.is_empty());
    let retry = || {
        post_whole(&server, &bytes, &bytes)
            .header("idempotency-key", "refused-1")
            .send()
    };
    let stored = retry().await.unwrap();
    assert_eq!(stored.status(), StatusCode::CREATED);
    let stored: Value = stored.json().await.unwrap();
    assert_eq!(stored["state"], "completed");
    assert_eq!(stored["sha256"], tests::sha256_hex(&bytes));
    let again = retry().await.unwrap();
    assert_eq!(again.status(), StatusCode::OK);
    let again: Value = again.json().await.unwrap();
    assert_eq!(again["id"], stored["id"]);
    assert_eq!(listed(&server).await.len(), 1);
}

#[tokio::test]
async fn the_cli_sends_a_small_file_in_one_request() {
    let (server, _store) = start!(&[]);
    let work = tempfile::tempdir().unwrap();
    let tree = work.path().join("tree");
    std::fs::create_dir_all(tree.join("sub")).unwrap();
    let mut files = Vec::new();
    for i in 0..12 {
        let rel = if i % 3 == 0 {
            format!("sub/s{i}.bin")
        } else {
            format!("f{i}.bin")
        };
        let bytes = random_bytes(16 << 10, 100 + i);
        std::fs::write(tree.join(&rel), &bytes).unwrap();
        files.push((rel, bytes));
    }
    let state = tempfile::tempdir().unwrap();
    let out = std::process::Command::new(tests::bin_path("uploader"))
        .env("UPLOADER_STATE_DIR", state.path())
        .args([
            "--server",
            &server.url(),
            "-q",
            "upload",
            "--transfers",
            "4",
        ])
        .arg(&tree)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    let stdout = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success(),
        "{stdout}{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert_eq!(stdout.lines().count(), files.len(), "{stdout}");
    // Each file is on the server, completed, at its path, with its bytes.
    let uploads = listed(&server).await;
    assert_eq!(uploads.len(), files.len());
    for (rel, bytes) in &files {
        let st = uploads
            .iter()
            .find(|u| {
                u["metadata"][REL]
                    .as_str()
                    .is_some_and(|p| p.ends_with(rel.as_str()))
            })
            .unwrap_or_else(|| panic!("{rel} is not listed"));
        assert_eq!(st["state"], "completed");
        assert_eq!(st["sha256"], tests::sha256_hex(bytes));
        let got = client()
            .get(format!(
                "{}/v1/uploads/{}/content",
                server.url(),
                st["id"].as_str().unwrap()
            ))
            .send()
            .await
            .unwrap()
            .bytes()
            .await
            .unwrap();
        assert_eq!(got.as_ref(), bytes.as_slice(), "{rel}");
    }
    // One request a file: no chunk and no completion was sent.
    let logs = server.logs();
    let requests = |method: &str, path_part: &str| {
        logs.lines()
            .filter(|l| l.contains("access_log"))
            .filter(|l| l.contains(&format!("method={method}")) && l.contains(path_part))
            .count()
    };
    assert_eq!(requests("POST", "path=/v1/uploads "), files.len(), "{logs}");
    assert_eq!(requests("PUT", "/chunks/"), 0);
    assert_eq!(requests("POST", "/complete"), 0);
    // A second run finds every file uploaded and sends nothing.
    let again = std::process::Command::new(tests::bin_path("uploader"))
        .env("UPLOADER_STATE_DIR", state.path())
        .args(["--server", &server.url(), "-q", "upload"])
        .arg(&tree)
        .stdin(std::process::Stdio::null())
        .output()
        .unwrap();
    assert!(again.status.success());
    assert_eq!(listed(&server).await.len(), files.len());
}

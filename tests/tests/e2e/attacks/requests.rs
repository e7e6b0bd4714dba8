//! Short requests that used to cost the server far more than the client (a final tus
//! upload naming one part thousands of times), leave uploads behind (a tus creation whose
//! body failed), overflow a length check, or break HTTP/1.0.

use std::time::Duration;

use reqwest::StatusCode;
use tests::{random_bytes, Server};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::*;

/// Sends `request` on a new connection and reads the answer until the server closes it
/// (at most 10 s).
async fn raw(server: &Server, request: &[u8]) -> String {
    let mut conn = TcpStream::connect(&server.addr).await.unwrap();
    conn.write_all(request).await.unwrap();
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(10), conn.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

fn tus(api: &Api, method: Method, path: &str) -> RequestBuilder {
    api.req(method, path).header("tus-resumable", "1.0.0")
}

/// A final upload naming one 1 MiB part 8,000 times in a 5.6 KB header used to make the
/// server write and hash 8 GiB; each part may be named once.
#[tokio::test]
async fn a_final_upload_names_each_part_once() {
    let (server, data) = Server::start(&[]);
    let api = Api::new(&server);
    let part = tus(&api, Method::POST, "/files/")
        .header("upload-concat", "partial")
        .header("upload-length", MIB.to_string())
        .header("content-type", "application/offset+octet-stream")
        .body(random_bytes(MIB, 7))
        .send()
        .await
        .unwrap();
    assert_eq!(part.status(), StatusCode::CREATED);
    let path = part.headers()["location"].to_str().unwrap().to_string();
    let list = format!("final;{}", vec![path.as_str(); 8000].join(" "));
    let r = tus(&api, Method::POST, "/files/")
        .header("upload-concat", list)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::BAD_REQUEST);
    let uploads = std::fs::read_dir(data.path().join("uploads"))
        .unwrap()
        .count();
    assert_eq!(uploads, 1, "no final upload was made");
}

/// A tus creation-with-upload whose body fails answers without `Location`: its client
/// cannot resume it, so it must not stay and hold the owner's quota for a day.
#[tokio::test]
async fn a_failed_creation_with_upload_leaves_nothing_open() {
    let (server, _data) = Server::start(&["--max-open-uploads", "1"]);
    let api = Api::new(&server);
    let r = tus(&api, Method::POST, "/files/")
        .header("upload-length", "100")
        .header("content-type", "application/offset+octet-stream")
        .header("upload-checksum", "sha1 AAAAAAAAAAAAAAAAAAAAAAAAAAA=")
        .body(vec![1u8; 100])
        .send()
        .await
        .unwrap();
    assert_eq!(r.status().as_u16(), 460);
    assert!(r.headers().get("location").is_none());
    // The owner's one open upload is free again.
    api.create(10, 65536).await;
}

/// Lengths near `u64::MAX`: an IETF append whose `Content-Length` completes the upload
/// (`current + body`) and a tus PATCH past the end used to overflow (a panic in debug
/// builds, a skipped check in release). They are refused, and the server stays up.
#[tokio::test]
async fn lengths_near_the_u64_limit_are_refused() {
    let (server, _data) = Server::start(&[]);
    let api = Api::new(&server);
    let created = api
        .req(Method::POST, "/uploads/")
        .header("upload-draft-interop-version", "8")
        .header("upload-complete", "?0")
        .body(vec![1u8; 10])
        .send()
        .await
        .unwrap();
    assert_eq!(created.status(), StatusCode::CREATED);
    let path = created.headers()["location"].to_str().unwrap().to_string();
    let answer = raw(
        &server,
        format!(
            "PATCH {path} HTTP/1.1\r\nHost: {}\r\nUpload-Draft-Interop-Version: 8\r\n\
             Content-Type: application/partial-upload\r\nUpload-Offset: 10\r\n\
             Upload-Complete: ?1\r\nContent-Length: {}\r\nConnection: close\r\n\r\nxx",
            server.addr,
            u64::MAX - 5
        )
        .as_bytes(),
    )
    .await;
    assert!(
        answer.starts_with("HTTP/1.1 400") || answer.starts_with("HTTP/1.1 413"),
        "{answer}"
    );
    let deferred = tus(&api, Method::POST, "/files/")
        .header("upload-defer-length", "1")
        .send()
        .await
        .unwrap();
    let path = deferred.headers()["location"].to_str().unwrap().to_string();
    let r = tus(&api, Method::PATCH, &path)
        .header("content-type", "application/offset+octet-stream")
        .header("upload-offset", u64::MAX.to_string())
        .header("upload-length", u64::MAX.to_string())
        .body("abc")
        .send()
        .await
        .unwrap();
    assert!(r.status().is_client_error(), "{}", r.status());
    let health = api.req(Method::GET, "/healthz").send().await.unwrap();
    assert_eq!(health.status(), StatusCode::OK);
}

/// RFC 9110 forbids 1xx answers to HTTP/1.0 clients: an IETF creation over HTTP/1.0 gets
/// its final answer only.
#[tokio::test]
async fn http_1_0_gets_no_interim_answer() {
    let (server, _data) = Server::start(&[]);
    let answer = raw(
        &server,
        format!(
            "POST /uploads/ HTTP/1.0\r\nHost: {}\r\nUpload-Draft-Interop-Version: 8\r\n\
             Upload-Complete: ?1\r\nContent-Length: 5\r\n\r\nhello",
            server.addr
        )
        .as_bytes(),
    )
    .await;
    assert!(!answer.contains(" 104 "), "{answer}");
    assert!(
        answer.starts_with("HTTP/1.0 200") || answer.starts_with("HTTP/1.1 200"),
        "{answer}"
    );
}
